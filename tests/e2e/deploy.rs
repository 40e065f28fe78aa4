//! The bare-metal deployment files: the systemd unit passes `systemd-analyze verify`, and the
//! command lines it runs are ones `meshd` accepts.

use std::process::Command;

use crate::support::{meshd_bin, prefix};

#[test]
fn the_systemd_unit_verifies_and_its_commands_parse() {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../meshd/systemd/meshd.service"
    ))
    .unwrap();
    let dir = std::env::temp_dir().join(prefix("unit"));
    std::fs::create_dir_all(&dir).unwrap();
    struct Dir(std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let dir = Dir(dir);
    // verify checks that the binaries exist: point the unit at the one cargo built.
    let bin = meshd_bin().display().to_string();
    let path = dir.0.join("meshd.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/meshd", &bin)).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "{stderr}");

    // Every meshd command line of the unit parses (run with --help, so nothing starts).
    for line in unit.lines() {
        let Some(cmd) = ["ExecStartPre=", "ExecStart="]
            .iter()
            .find_map(|k| line.strip_prefix(k))
        else {
            continue;
        };
        let args: Vec<&str> = cmd.split_whitespace().skip(1).collect();
        let out = Command::new(meshd_bin())
            .args(&args)
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

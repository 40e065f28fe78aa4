//! The recipes of `docs/interop.md` for hosts without meshd (a kernel VXLAN host, a wireguard-go
//! or kernel WireGuard host), run word for word.
//!
//! Each recipe is a `sh` block of docs/interop.md between `<!-- recipe: NAME -->` and
//! `<!-- /recipe -->`. The lab compiles docs/interop.md in and runs the block as it stands, with
//! `sh -eu` in the host's namespace, the variables the document names set in its environment,
//! and the `meshd` under test first on the `PATH` (the recipes call `meshd psk` and
//! `meshd vtep-mac`). So the document and what the interop tests do cannot drift apart: edit a
//! command there and the tests run the edited command.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};

const DOC: &str = include_str!("../../docs/interop.md");

/// The commands of the recipe `name` in docs/interop.md.
pub fn block(name: &str) -> Result<&'static str> {
    let start = format!("<!-- recipe: {name} -->");
    let (_, rest) = DOC
        .split_once(&start)
        .with_context(|| format!("docs/interop.md has no `{start}`"))?;
    let (inside, _) = rest
        .split_once("<!-- /recipe -->")
        .with_context(|| format!("docs/interop.md: recipe `{name}` has no `<!-- /recipe -->`"))?;
    let code = inside
        .trim()
        .strip_prefix("```sh\n")
        .and_then(|c| c.strip_suffix("```"))
        .with_context(|| format!("docs/interop.md: recipe `{name}` is not one ```sh block"))?;
    Ok(code)
}

/// Run recipe `name` in namespace `ns` with `vars` set, `meshd_bin`'s directory first on the
/// `PATH`. Fails with the script and what it printed.
pub fn run(ns: &str, name: &str, vars: &[(&str, String)], meshd_bin: &Path) -> Result<()> {
    let script = block(name)?;
    let system = std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    let path = match meshd_bin.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => format!("{}:{system}", dir.display()),
        None => system,
    };
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "sh", "-euc", script])
        .env("PATH", path)
        .envs(vars.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .context("running sh in a namespace (ip netns exec)")?;
    if !out.status.success() {
        let vars: Vec<String> = vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
        bail!(
            "recipe `{name}` (docs/interop.md) failed in {ns} ({}):\n{script}\n{}{}",
            vars.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// Every recipe the lab runs is in docs/interop.md, and calls the commands it promises.
    #[test]
    fn the_doc_holds_every_recipe() {
        for name in [
            "kernel-vxlan-host",
            "kernel-vxlan-veth",
            "kernel-vxlan-peer",
            "wireguard-host",
            "wireguard-peer",
        ] {
            let code = block(name).unwrap();
            assert!(!code.trim().is_empty(), "{name}");
            assert!(!code.contains("```"), "{name}: {code}");
        }
        assert!(block("wireguard-peer").unwrap().contains("meshd psk"));
        assert!(block("kernel-vxlan-host")
            .unwrap()
            .contains("meshd vtep-mac"));
        assert!(block("kernel-vxlan-peer")
            .unwrap()
            .contains("meshd vtep-mac"));
        assert!(block("kernel-vxlan-veth")
            .unwrap()
            .contains("ethtool -K vxlan0 tx off"));
        assert!(block("no-such-recipe").is_err());
    }
}

//! The `meshd-cni` binary: read the environment and stdin, run the verb, print the result.
//!
//! Success prints the result (ADD, VERSION) or nothing, and exits 0; failure prints the CNI
//! error object on stdout and exits 1, with a one-line log on stderr.

use std::io::{Read, Write};
use std::process::ExitCode;

use anyhow::Context;
use meshd_cni::config::{sniff_version, MAX_CONFIG_BYTES};
use meshd_cni::env::Env;

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    // One byte more than we accept, so an oversized config is seen and refused, not truncated.
    let limit = u64::try_from(MAX_CONFIG_BYTES + 1).unwrap_or(u64::MAX);
    let read = std::io::stdin().take(limit).read_to_end(&mut stdin);
    let outcome = match read {
        Ok(_) => {
            Env::from_lookup(|k| std::env::var(k).ok()).and_then(|env| meshd_cni::run(&env, &stdin))
        }
        Err(source) => Err(meshd_cni::error::Error::Io {
            what: "reading stdin".into(),
            source,
        }),
    };
    let (out, code) = match outcome {
        Ok(Some(v)) => (Some(v), ExitCode::SUCCESS),
        Ok(None) => (None, ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("meshd-cni: {e}");
            (Some(e.to_json(sniff_version(&stdin))), ExitCode::FAILURE)
        }
    };
    if let Some(v) = out {
        if let Err(e) = print(&v) {
            eprintln!("meshd-cni: {e:#}");
            return ExitCode::FAILURE;
        }
    }
    code
}

fn print(v: &serde_json::Value) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer(&mut stdout, v).context("writing result to stdout")?;
    stdout
        .write_all(b"\n")
        .context("writing result to stdout")?;
    Ok(())
}

//! `meshd ping`'s command line.

use anyhow::{Context, Result};
use std::path::PathBuf;

use super::{Options, MIN_SIZE};

/// `meshd ping`'s arguments: its flags, and the environment for the run directory.
#[derive(clap::Args)]
pub struct Args {
    /// A node's name, or an address in another node's subnet (a pod's).
    pub target: String,
    /// Probes to send.
    #[arg(short = 'c', long, default_value_t = 3)]
    pub count: u32,
    /// Each probe's size as an IPv4 packet, in bytes, sent with DF set: the pod MTU tests
    /// whether a full-sized pod packet gets through.
    #[arg(short = 's', long, default_value_t = 84,
          value_parser = clap::value_parser!(u16).range(i64::from(MIN_SIZE)..))]
    pub size: u16,
    /// Seconds between probes.
    #[arg(short = 'i', long, default_value_t = 1.0)]
    pub interval: f64,
    /// Seconds to wait for the last reply.
    #[arg(short = 'W', long, default_value_t = 2.0)]
    pub wait: f64,
    /// Wait for a direct path to the target first, up to --direct-within seconds. (Every path
    /// is direct until relaying through members lands: then this waits out a relayed one.)
    #[arg(long)]
    pub until_direct: bool,
    #[arg(long, default_value_t = 30.0)]
    pub direct_within: f64,
    #[arg(long, env = "MESHD_RUN_DIR", default_value = "/run/meshd")]
    pub run_dir: PathBuf,
}

impl Args {
    /// The options these arguments ask for.
    pub fn options(&self) -> Result<Options> {
        let secs = |x: f64, what: &str| {
            std::time::Duration::try_from_secs_f64(x)
                .with_context(|| format!("{what} must be a number of seconds"))
        };
        Ok(Options {
            target: self.target.clone(),
            count: self.count.max(1),
            size: self.size,
            interval: secs(self.interval, "--interval")?,
            wait: secs(self.wait, "--wait")?,
            until_direct: match self.until_direct {
                true => Some(secs(self.direct_within, "--direct-within")?),
                false => None,
            },
            run_dir: self.run_dir.clone(),
        })
    }
}

//! The `meshd` command: the daemon, its status client, host cleanup, and `meshd lab` (which runs
//! the `meshd-lab` binary).

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use meshd::config::cli::{ConfigArgs, RunArgs};
use meshd::config::Config;

#[derive(Parser)]
#[command(
    name = "meshd",
    version,
    about = "Userspace overlay mesh for container clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once at start-up: a `run` with a flag for every config key may be large.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run the node daemon.
    Run(RunArgs),
    /// Show this node's status: tiers in use, peers, counters, drops.
    Status {
        #[arg(long, env = "MESHD_RUN_DIR", default_value = "/run/meshd")]
        run_dir: PathBuf,
        /// Print the raw JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Print a new WireGuard private key (base64, as `wg genkey` does).
    Keygen,
    /// Read a private key on stdin and print its public key (as `wg pubkey` does).
    Pubkey,
    /// Print a new cluster secret (base64). Store it mode 0600: `meshd secret > FILE`.
    Secret,
    /// Remove everything meshd created on this host (bridge, TUN device, runtime files).
    Cleanup(ConfigArgs),
    /// A local cluster in network namespaces, for trying meshd out.
    ///
    /// Runs the `meshd-lab` binary next to this one with the arguments that follow, so
    /// `meshd lab up --help` shows the lab's own help.
    #[command(disable_help_flag = true)]
    Lab {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("meshd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run(args) => {
            let cfg = args.load()?;
            if args.check_config {
                // The secrets too: an operator checks an edited secret file before a SIGHUP.
                if cfg.encryption == meshd::config::Encryption::Wireguard || cfg.gossip_enabled() {
                    let ring = cfg.cluster_keyring()?;
                    let ids = meshd::daemon::secrets::ids_text(&ring.ids());
                    println!("cluster secrets: {} (the first seals)", ids.join(", "));
                }
                println!("configuration is valid");
                return Ok(());
            }
            init_logging(&cfg.log_level);
            runtime()?.block_on(meshd::daemon::run(cfg))
        }
        Command::Status { run_dir, json } => {
            let s = meshd::status::query(&run_dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print!("{}", meshd::status::render(&s));
            }
            Ok(())
        }
        Command::Keygen => {
            println!("{}", *meshd_crypto::PrivateKey::generate().to_base64());
            Ok(())
        }
        Command::Pubkey => {
            use std::io::Read;
            let mut text = zeroize::Zeroizing::new(String::new());
            std::io::stdin()
                .take(1024)
                .read_to_string(&mut text)
                .context("reading a private key on stdin")?;
            let key = meshd_crypto::PrivateKey::from_base64(&text)
                .context("stdin is not a WireGuard private key")?;
            println!("{}", key.public_key());
            Ok(())
        }
        Command::Secret => {
            println!("{}", *meshd_crypto::ClusterSecret::generate().to_base64());
            Ok(())
        }
        Command::Cleanup(args) => {
            let cfg = match &args.config {
                Some(p) => Config::from_file(p)?,
                None => Config::default(),
            };
            runtime()?.block_on(meshd::daemon::cleanup(&cfg))
        }
        Command::Lab { args } => exec_lab(&args),
    }
}

/// Replace this process with the `meshd-lab` binary next to it: the lab is a crate of its own,
/// never linked into the daemon, and `meshd lab ...` stays the command users type.
fn exec_lab(args: &[OsString]) -> Result<()> {
    use std::os::unix::process::CommandExt;
    let bin = std::env::current_exe()
        .context("finding the meshd binary")?
        .with_file_name("meshd-lab");
    if !bin.is_file() {
        anyhow::bail!(
            "meshd lab needs the meshd-lab binary next to meshd ({} is missing): \
             cargo build --release",
            bin.display()
        );
    }
    // argv[0] names the command as the user typed it, for the lab's usage lines.
    let err = std::process::Command::new(&bin)
        .arg0("meshd lab")
        .args(args)
        .exec();
    Err(err).with_context(|| format!("running {}", bin.display()))
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the control-plane runtime")
}

fn init_logging(level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lab_args(argv: &[&str]) -> Option<Vec<OsString>> {
        match Cli::try_parse_from(argv).ok()?.command {
            Command::Lab { args } => Some(args),
            _ => None,
        }
    }

    #[test]
    fn lab_arguments_pass_through_unchanged() {
        let argv = [
            "meshd",
            "lab",
            "up",
            "--help",
            "--prefix",
            "x",
            "--meshd-arg=--no-udp-gso",
        ];
        let rest = argv[2..].iter().map(OsString::from).collect();
        assert_eq!(lab_args(&argv), Some(rest));
        assert_eq!(
            lab_args(&["meshd", "lab", "--help"]),
            Some(vec!["--help".into()])
        );
        assert_eq!(lab_args(&["meshd", "lab"]), Some(vec![]));
    }
}

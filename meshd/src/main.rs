//! The `meshd` command: the daemon, its status client, host cleanup, and the local lab.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
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
    Lab {
        #[command(subcommand)]
        command: meshd::lab::LabCommand,
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
                    let ids = meshd::secrets::ids_text(&ring.ids());
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
        Command::Lab { command } => meshd::lab::main(command),
    }
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

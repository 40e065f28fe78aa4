//! The `meshd` command: the daemon, its status client, host cleanup, and `meshd lab` (which runs
//! the `meshd-lab` binary).

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

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

#[derive(Args)]
struct ConfigArgs {
    /// Configuration file (TOML).
    #[arg(long, short, env = "MESHD_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// Validate the configuration (and read the cluster secrets) and exit without touching
    /// the host.
    #[arg(long)]
    check_config: bool,
    #[arg(long, env = "MESHD_NODE_NAME")]
    node_name: Option<String>,
    /// Underlay address other nodes reach this one at.
    #[arg(long, env = "MESHD_ADDRESS")]
    address: Option<std::net::IpAddr>,
    /// This node's pod subnet.
    #[arg(long, env = "MESHD_SUBNET")]
    subnet: Option<ipnet::Ipv4Net>,
    /// Gossip seed `host:port` to join through (repeatable; MESHD_JOIN takes a comma-separated
    /// list). Added to the config's `seeds`; turns gossip on.
    #[arg(long = "join", env = "MESHD_JOIN", value_delimiter = ',')]
    join: Vec<String>,
    /// UDP port of the gossip socket.
    #[arg(long, env = "MESHD_GOSSIP_PORT")]
    gossip_port: Option<u16>,
    #[arg(long, env = "MESHD_RUN_DIR")]
    run_dir: Option<PathBuf>,
    #[arg(long, env = "MESHD_STATE_DIR")]
    state_dir: Option<PathBuf>,
    #[arg(long, env = "MESHD_LOG_LEVEL")]
    log_level: Option<String>,
    #[arg(long, env = "MESHD_QUEUES")]
    queues: Option<usize>,
    /// `wireguard` (the default) or `none` (cleartext VXLAN, trusted networks only).
    #[arg(long, env = "MESHD_ENCRYPTION")]
    encryption: Option<meshd::config::Encryption>,
    /// File holding the cluster secret (mode 0600). MESHD_CLUSTER_SECRET may carry the secret
    /// itself instead.
    #[arg(long, env = "MESHD_CLUSTER_SECRET_FILE")]
    cluster_secret_file: Option<PathBuf>,
    /// Do not use multi-queue TUN even where the kernel has it.
    #[arg(long, env = "MESHD_NO_MULTI_QUEUE")]
    no_multi_queue: bool,
    /// Do not use TUN TSO/GRO offload (virtio-net header).
    #[arg(long, env = "MESHD_NO_TUN_OFFLOAD")]
    no_tun_offload: bool,
    /// Do not send with UDP GSO.
    #[arg(long, env = "MESHD_NO_UDP_GSO")]
    no_udp_gso: bool,
    /// Do not receive with UDP GRO.
    #[arg(long, env = "MESHD_NO_UDP_GRO")]
    no_udp_gro: bool,
}

impl RunArgs {
    fn load(&self) -> Result<Config> {
        let mut c = match &self.config.config {
            Some(p) => Config::from_file(p)?,
            None => Config::default(),
        };
        if let Some(v) = &self.node_name {
            c.node_name = v.clone();
        }
        if self.address.is_some() {
            c.address = self.address;
        }
        if self.subnet.is_some() {
            c.subnet = self.subnet;
        }
        for seed in &self.join {
            if !c.seeds.contains(seed) {
                c.seeds.push(seed.clone());
            }
        }
        if let Some(v) = self.gossip_port {
            c.gossip.port = v;
        }
        if let Some(v) = &self.run_dir {
            c.run_dir = v.clone();
        }
        if let Some(v) = &self.state_dir {
            c.state_dir = v.clone();
        }
        if let Some(v) = &self.log_level {
            c.log_level = v.clone();
        }
        if let Some(v) = self.queues {
            c.queues = v;
        }
        if let Some(v) = self.encryption {
            c.encryption = v;
        }
        if let Some(v) = &self.cluster_secret_file {
            c.cluster_secret_file = Some(v.clone());
        }
        c.tiers.multi_queue &= !self.no_multi_queue;
        c.tiers.tun_offload &= !self.no_tun_offload;
        c.tiers.udp_gso &= !self.no_udp_gso;
        c.tiers.udp_gro &= !self.no_udp_gro;
        c.validate()?;
        Ok(c)
    }
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

//! The `meshd` command: the daemon, its status client, keys and secrets, what a host without
//! meshd needs to join (`psk`, `vtep-mac`), host cleanup, and `meshd lab` (which runs the
//! `meshd-lab` binary).

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
        #[arg(long, conflicts_with_all = ["dot", "all"])]
        json: bool,
        /// Print the whole mesh as this node sees it (every node, every pair with each end's
        /// path, from the members' gossiped path summaries) as a Graphviz graph:
        /// `meshd status --dot | dot -Tsvg > mesh.svg`.
        #[arg(long, conflicts_with = "all")]
        dot: bool,
        /// Print every pair of the mesh as this node sees it, a line per end's report.
        #[arg(long)]
        all: bool,
    },
    /// Send echo probes through the overlay to NODE's bridge address (or to a pod's address):
    /// per reply the round trip and the path it took, then a summary. Exits non-zero, with the
    /// likely reason, when nothing came back.
    Ping(meshd::ping::Args),
    /// Forget the gossip signing key NODE is bound to, on this node and, through gossip, on
    /// every member: for a node reinstalled without its state directory (its old key gone),
    /// which the cluster refuses until then. NODE binds to the next key it signs with after
    /// 10 s, unless NODE is alive with its old key, which then keeps it.
    Forget {
        /// The node's name.
        node: String,
        #[arg(long, env = "MESHD_RUN_DIR", default_value = "/run/meshd")]
        run_dir: PathBuf,
    },
    /// Print a new WireGuard private key (base64, as `wg genkey` does).
    Keygen,
    /// Read a private key on stdin and print its public key (as `wg pubkey` does).
    Pubkey,
    /// Print a new cluster secret (base64). Store it mode 0600: `meshd secret > FILE`.
    Secret,
    /// Print the WireGuard preshared key meshd uses with a static peer (base64, for
    /// `wg set DEV peer KEY preshared-key FILE`): how a wireguard-go or kernel WireGuard host
    /// joins (docs/interop.md: "A WireGuard host without meshd").
    Psk(PskArgs),
    /// Print the VTEP MAC of the node called NAME, the MAC a kernel VXLAN device of that node
    /// must have (docs/interop.md: "A kernel VXLAN host without meshd").
    VtepMac {
        /// The node's name (`node-name`).
        name: String,
    },
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

/// `meshd status`: the node's status, or the whole mesh as it sees it (`--dot`, `--all`).
fn status(run_dir: &std::path::Path, json: bool, dot: bool, all: bool) -> Result<()> {
    let s = meshd::status::query(run_dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s)?);
    } else if dot || all {
        // The members' summaries come over the control socket, which runs with gossip.
        let summaries = match (&s.members, meshd::control::summaries(run_dir)) {
            (_, Ok(held)) => held,
            (None, Err(_)) => Vec::new(),
            (Some(_), Err(e)) => {
                eprintln!("meshd: the members' path summaries are not available ({e:#}): only this node's pairs are shown");
                Vec::new()
            }
        };
        let m = meshd::status::Mesh::build(&s, &summaries, std::time::SystemTime::now());
        let text = match dot {
            true => meshd::status::graph::dot(&m),
            false => meshd::status::graph::table(&m),
        };
        print!("{text}");
    } else {
        print!("{}", meshd::status::render(&s));
    }
    Ok(())
}

/// `meshd psk`: the secrets as `meshd run` reads them (the file's `cluster-secret-file`,
/// these flags, or `MESHD_CLUSTER_SECRET`), and this node's key from its state directory
/// unless `--public-key` gives it.
#[derive(clap::Args)]
struct PskArgs {
    #[command(flatten)]
    config: ConfigArgs,
    /// The other end's WireGuard public key (base64, as `wg pubkey` prints it).
    #[arg(long)]
    peer: meshd_crypto::PublicKey,
    /// This end's public key, instead of the one of `<state-dir>/node.key`: the preshared key
    /// of a pair is the same from either end.
    #[arg(long)]
    public_key: Option<meshd_crypto::PublicKey>,
    /// File holding the cluster secret (mode 0600).
    #[arg(long, env = "MESHD_CLUSTER_SECRET_FILE")]
    cluster_secret_file: Option<PathBuf>,
    /// Where this node's key is (`node.key`).
    #[arg(long, env = "MESHD_STATE_DIR")]
    state_dir: Option<PathBuf>,
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
                // What `run` checks before it touches the host, secrets included: an operator
                // checks an edited secret file before a SIGHUP.
                return runtime()?.block_on(meshd::daemon::preflight::check_config(&cfg));
            }
            let set_log_level = init_logging(&cfg.log_level, cfg.log_format);
            let live = meshd::daemon::reload::Live {
                load: Box::new(move || args.load()),
                set_log_level: Box::new(set_log_level),
            };
            runtime()?.block_on(meshd::daemon::run(cfg, live))
        }
        Command::Status {
            run_dir,
            json,
            dot,
            all,
        } => status(&run_dir, json, dot, all),
        Command::Ping(args) => meshd::ping::run(&args.options()?, &mut std::io::stdout()),
        Command::Forget { node, run_dir } => {
            println!("{}", meshd::control::forget(&run_dir, &node)?);
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
        Command::Psk(args) => psk(&args),
        Command::VtepMac { name } => {
            println!("{}", meshd::wire::vtep_mac(&name));
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

fn psk(args: &PskArgs) -> Result<()> {
    let mut cfg = match &args.config.config {
        Some(p) => Config::from_file(p)?,
        None => Config::default(),
    };
    if let Some(f) = &args.cluster_secret_file {
        cfg.cluster_secret_file = Some(f.clone());
    }
    if let Some(d) = &args.state_dir {
        cfg.state_dir = d.clone();
    }
    let ring = cfg.cluster_keyring()?;
    let local = match args.public_key {
        Some(k) => k,
        None => match meshd::daemon::preflight::node_key(&cfg, false)? {
            Some((key, _)) => key.public_key(),
            None => anyhow::bail!(
                "no node key at {}: `meshd run` creates it on first start; or give this end's \
                 public key with --public-key",
                cfg.node_key_path().display()
            ),
        },
    };
    if local == args.peer {
        anyhow::bail!("--peer is this end's own public key: give the other end's");
    }
    let pair = meshd::peers::wireguard::static_pair_key(&ring, &local, &args.peer);
    println!("{}", *pair.psk_base64());
    Ok(())
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
            "meshd lab needs the meshd-lab binary next to meshd ({} is missing): build the \
             whole workspace (`cargo build --release`, or `cargo build -p meshd-lab` for a debug \
             build)",
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

/// Logs go to stderr, as text (in colour only when that is a terminal: a log file or the
/// journal gets no escape codes) or one JSON object per line. Returns what sets a new filter
/// (`log-level`, on SIGHUP).
fn init_logging(
    level: &str,
    format: meshd::config::LogFormat,
) -> impl Fn(&str) -> Result<()> + Send + Sync + 'static {
    use std::io::IsTerminal;
    use tracing_subscriber::prelude::*;
    use tracing_subscriber::{fmt, reload, EnvFilter};
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let text = (format == meshd::config::LogFormat::Text).then(|| {
        fmt::layer()
            .with_target(false)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
    });
    let json = (format == meshd::config::LogFormat::Json).then(|| {
        fmt::layer()
            .json()
            .with_target(false)
            .with_writer(std::io::stderr)
    });
    tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json)
        .init();
    move |level: &str| {
        let filter = EnvFilter::try_new(level)
            .with_context(|| format!("`{level}` is not a tracing filter"))?;
        handle.reload(filter).context("replacing the log filter")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn lab_args(argv: &[&str]) -> Option<Vec<OsString>> {
        match Cli::try_parse_from(argv).ok()?.command {
            Command::Lab { args } => Some(args),
            _ => None,
        }
    }

    #[test]
    fn psk_takes_keys_and_refuses_what_is_not_one() {
        let key = meshd_crypto::PrivateKey::generate()
            .public_key()
            .to_base64();
        let cli = Cli::try_parse_from(["meshd", "psk", "--peer", &key, "--public-key", &key]);
        assert!(matches!(
            cli.map(|c| c.command),
            Ok(Command::Psk(a)) if Some(a.peer) == a.public_key
        ));
        let e = Cli::try_parse_from(["meshd", "psk", "--peer", "abc"])
            .err()
            .unwrap();
        assert!(e.to_string().contains("--peer"), "{e}");
        assert!(e.to_string().contains("found 3 characters"), "{e}");
        assert!(Cli::try_parse_from(["meshd", "vtep-mac"]).is_err());
    }

    #[test]
    fn forget_takes_a_name_and_refuses_what_is_none_before_connecting() {
        let cli = Cli::try_parse_from(["meshd", "forget", "n-2", "--run-dir", "/nonexistent"]);
        let (node, run_dir) = match cli.map(|c| c.command) {
            Ok(Command::Forget { node, run_dir }) => (node, run_dir),
            _ => (String::new(), PathBuf::new()),
        };
        assert_eq!(node, "n-2");
        let err = format!(
            "{:#}",
            meshd::control::forget(&run_dir, "a\u{1b}[2J").unwrap_err()
        );
        assert!(
            err.contains("not a node name") && !err.contains('\u{1b}'),
            "{err}"
        );
        let err = format!("{:#}", meshd::control::forget(&run_dir, &node).unwrap_err());
        assert!(
            err.contains("control.sock") && err.contains("is meshd running"),
            "{err}"
        );
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

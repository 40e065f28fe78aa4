//! What `meshd run` checks before it changes anything on the host, and so what
//! `meshd run --check-config` checks beyond [`Config::validate`]: the cluster secrets, that
//! `address` (cleartext) and `listen-address` belong to this host, and the node key.
//!
//! Both commands go through [`check`], so a configuration the check accepts does not fail
//! those checks at start, and a refusal reads the same from either. It creates nothing: a
//! node key that does not exist yet is reported as such (`run` creates it), not made.

use anyhow::{Context, Result};
use meshd_crypto::{KeyFileStatus, Keyring, PrivateKey};

use crate::config::{Config, ConfigError, Encryption};
use crate::host::Host;

/// Everything `run` checks before it touches the host, in its order; the cluster secrets it
/// read, when the configuration needs them.
pub(crate) async fn check(cfg: &Config, host: &Host) -> Result<Option<Keyring>> {
    let ring = keyring(cfg)?;
    address(cfg, host).await?;
    if cfg.encryption == Encryption::Wireguard {
        node_key(cfg, false)?;
    }
    if cfg.gossip_enabled() {
        super::secrets::signing_key(cfg, false)?;
    }
    Ok(ring)
}

/// The cluster secrets, when this configuration needs them (WireGuard seals with them, gossip
/// too); `None` for cleartext static peers.
fn keyring(cfg: &Config) -> Result<Option<Keyring>> {
    if cfg.encryption == Encryption::Wireguard || cfg.gossip_enabled() {
        Ok(Some(cfg.cluster_keyring()?))
    } else {
        Ok(None)
    }
}

/// Fails unless `listen-address` (when set) is assigned to an interface of this host: the
/// sockets bind to it. `address` is what other nodes send to: in encrypted mode it may be an
/// address this host does not have (a cloud VM behind a 1:1 NAT advertises its public one);
/// in cleartext mode the kernel paths send from it, so it must be assigned.
async fn address(cfg: &Config, host: &Host) -> Result<()> {
    if let Some(listen) = cfg.listen_address {
        if !host.has_address(listen).await? {
            return Err(ConfigError {
                key: "listen-address".into(),
                reason: format!(
                    "{listen} is not assigned to any interface of this host (`ip addr` lists them): meshd binds its sockets to it"
                ),
            }
            .into());
        }
    }
    let address = cfg.address.context("no address")?;
    if host.has_address(address).await? {
        return Ok(());
    }
    if cfg.encryption == Encryption::Wireguard {
        tracing::info!(%address, "`address` is not assigned here: advertised as this node's public address (behind a 1:1 NAT, say); the sockets listen on every address unless `listen-address` says otherwise");
        return Ok(());
    }
    Err(ConfigError {
        key: "address".into(),
        reason: format!(
            "{address} is not assigned to any interface of this host (`ip addr` lists them): \
             in cleartext mode the kernel paths send from it and the other nodes send to it"
        ),
    }
    .into())
}

/// The node key under `state-dir`: read with every check (a key that is no file, is open to
/// others or does not parse is refused), and, when `create`, made on first start. `None`: no
/// key yet and `create` is false.
pub fn node_key(cfg: &Config, create: bool) -> Result<Option<(PrivateKey, KeyFileStatus)>> {
    let path = cfg.node_key_path();
    let key = if create {
        meshd_crypto::load_or_create_private_key(&path).map(Some)
    } else {
        meshd_crypto::read_private_key(&path).map(|k| k.map(|k| (k, KeyFileStatus::Loaded)))
    };
    // The error names the file; the context says what it is for.
    key.context("loading the node key")
}

/// `meshd run --check-config`: everything `run` checks before touching the host, and what
/// it found, on stdout.
pub async fn check_config(cfg: &Config) -> Result<()> {
    // The address `run` would use, found the same way.
    let (address, how) = super::underlay::address(cfg).await?;
    let cfg = &Config {
        address: Some(address),
        ..cfg.clone()
    };
    if let Some(ring) = check(cfg, &Host::connect()?).await? {
        let ids = super::secrets::ids_text(&ring.ids());
        println!("cluster secrets: {} (the first seals)", ids.join(", "));
    }
    println!("address: {address} ({how}) is on this host");
    if cfg.encryption == Encryption::Wireguard {
        let path = cfg.node_key_path();
        match node_key(cfg, false)? {
            Some((key, _)) => println!(
                "node key: {} (public key {})",
                path.display(),
                key.public_key()
            ),
            None => println!(
                "node key: {} does not exist yet; `meshd run` creates it",
                path.display()
            ),
        }
    }
    if cfg.gossip_enabled() {
        let path = super::secrets::signing_key_path(cfg);
        match super::secrets::signing_key(cfg, false)? {
            Some((key, _)) => println!(
                "gossip signing key: {} (public key {})",
                path.display(),
                meshd_gossip::short_key(&key.public())
            ),
            None => println!(
                "gossip signing key: {} does not exist yet; `meshd run` creates it",
                path.display()
            ),
        }
    }
    println!("configuration is valid");
    Ok(())
}

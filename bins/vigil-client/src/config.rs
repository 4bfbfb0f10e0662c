//! The settings: the TOML config file, and [`resolve`], which merges it
//! with the flags and environment into a [`ClientConfig`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use serde::Deserialize;
use vigil_auth::{Fingerprint, Identity};
use vigil_client::{BreakCommand, ClientConfig, CommandSettings, ProgramHandler, ProgramSpec};
use vigil_command::{Authorities, ModuleKeys, ModuleTrust, ReplayGuard, Verifier, VersionStore};

use crate::cli::Cli;

/// The TOML file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    server: Option<String>,
    proxy: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    server_fingerprint: Option<String>,
    authorities: Option<PathBuf>,
    module_keys: Option<PathBuf>,
    heartbeat_key: Option<String>,
    /// Every server's heartbeat key, in a cluster (beside `heartbeat_key`).
    heartbeat_keys: Option<Vec<String>>,
    /// The servers of a cluster, each with its pins (instead of `server`
    /// and `server_fingerprint`).
    servers: Option<Vec<ServerEntry>>,
    agent_id: Option<String>,
    tree_path: Option<Vec<String>>,
    state_dir: Option<PathBuf>,
    failsafe_timeout: Option<f64>,
    heartbeat_freshness: Option<crate::cli::Freshness>,
    heartbeat_max_age: Option<f64>,
    ping_interval: Option<f64>,
    liveness_timeout: Option<f64>,
    command_timeout: Option<f64>,
    /// Command name -> program, for the built-in handler.
    #[serde(default)]
    commands: BTreeMap<String, ProgramSpec>,
    /// Run in order when the failsafe fires.
    #[serde(default)]
    break_commands: Vec<BreakCommand>,
}

/// One `[[servers]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServerEntry {
    /// `HOST:PORT` or `wss://HOST:PORT/vigil`.
    address: String,
    /// The fingerprints its key may have (a key being rotated: both).
    fingerprints: Vec<String>,
}

/// A comma-separated list, each item trimmed, none empty.
fn list(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn pin(text: &str) -> anyhow::Result<Fingerprint> {
    text.parse()
        .with_context(|| format!("bad server fingerprint {text:?} (64 hex digits)"))
}

/// The servers to connect to, each with its pins: from the flags (lists
/// paired by position), else `[[servers]]`, else `server` and
/// `server_fingerprint`.
fn servers(cli: &Cli, file: &FileConfig) -> anyhow::Result<Vec<vigil_client::ServerEndpoint>> {
    let flags = (cli.server.as_deref(), cli.server_fingerprint.as_deref());
    if let (None, None) = flags
        && let Some(entries) = &file.servers
    {
        anyhow::ensure!(
            file.server.is_none() && file.server_fingerprint.is_none(),
            "the config file has both [[servers]] and server/server_fingerprint: give one"
        );
        anyhow::ensure!(!entries.is_empty(), "[[servers]] is empty");
        return entries
            .iter()
            .map(|e| {
                anyhow::ensure!(
                    !e.fingerprints.is_empty(),
                    "server {:?} in [[servers]] has no fingerprints",
                    e.address
                );
                Ok(vigil_client::ServerEndpoint {
                    address: e.address.clone(),
                    pins: e
                        .fingerprints
                        .iter()
                        .map(|f| pin(f))
                        .collect::<Result<_, _>>()?,
                })
            })
            .collect();
    }
    let addresses = list(
        &flags
            .0
            .map(str::to_owned)
            .or(file.server.clone())
            .unwrap_or_else(|| "127.0.0.1:8443".into()),
    );
    let pins = list(
        &flags
            .1
            .map(str::to_owned)
            .or(file.server_fingerprint.clone())
            .context(
                "no server fingerprint: give --server-fingerprint, VIGIL_SERVER_FINGERPRINT \
         or server_fingerprint in the config file",
            )?,
    );
    anyhow::ensure!(!addresses.is_empty(), "no server address");
    anyhow::ensure!(
        addresses.len() == pins.len(),
        "{} server addresses but {} fingerprints: give one fingerprint per server, in the same order",
        addresses.len(),
        pins.len()
    );
    addresses
        .into_iter()
        .zip(pins)
        .map(|(address, p)| {
            Ok(vigil_client::ServerEndpoint {
                address,
                pins: vec![pin(&p)?],
            })
        })
        .collect()
}

/// Checks a server address; whether it is a WebSocket URL.
fn check_address(server: &str) -> anyhow::Result<Option<vigil_ws::WsUrl>> {
    if vigil_ws::WsUrl::is_websocket(server) {
        return Ok(Some(server.parse::<vigil_ws::WsUrl>()?));
    }
    anyhow::ensure!(
        server
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()),
        "server address {server:?} is neither HOST:PORT nor wss://HOST:PORT/vigil"
    );
    Ok(None)
}

fn load_file(path: &Path) -> anyhow::Result<FileConfig> {
    vigil_auth::check_permissions(path, "config file")?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
}

pub(crate) fn resolve(cli: &Cli) -> anyhow::Result<ClientConfig> {
    let (file, base) = match &cli.config {
        Some(path) => (
            load_file(path)?,
            path.parent().map(Path::to_path_buf).unwrap_or_default(),
        ),
        None => (FileConfig::default(), PathBuf::new()),
    };
    let from_file = |p: Option<PathBuf>| p.map(|p| base.join(p));
    let mut endpoints = servers(cli, &file)?;
    let mut websocket = None;
    for e in &endpoints {
        let ws = check_address(&e.address)?;
        if e.address == endpoints[0].address {
            websocket = ws;
        }
    }
    let first = endpoints.remove(0);
    let server = first.address.clone();
    let proxy = match cli.proxy.clone().or(file.proxy) {
        Some(p) if p.trim().eq_ignore_ascii_case("none") => None,
        Some(p) => {
            anyhow::ensure!(
                websocket.is_some(),
                "a proxy is for a wss:// server; {server:?} is the main port, reached straight"
            );
            Some(p.parse::<vigil_ws::Proxy>()?)
        }
        None => match &websocket {
            Some(url) => {
                let var = |names: [&str; 2]| names.iter().find_map(|n| std::env::var(n).ok());
                vigil_ws::Proxy::for_host(
                    var(["HTTPS_PROXY", "https_proxy"]).as_deref(),
                    var(["NO_PROXY", "no_proxy"]).as_deref(),
                    url.host(),
                )
                .context("the proxy in HTTPS_PROXY")?
            }
            None => None,
        },
    };
    let cert = cli
        .cert
        .clone()
        .or(from_file(file.cert))
        .unwrap_or_else(|| "client.crt".into());
    let key = cli
        .key
        .clone()
        .or(from_file(file.key))
        .unwrap_or_else(|| "client.key".into());
    let identity = Identity::load(&cert, &key).context("cannot load the client identity")?;
    let (pin, more_pins) = first
        .pins
        .split_first()
        .map(|(p, rest)| (*p, rest.to_vec()))
        .context("the first server has no fingerprint")?;
    let mut config = ClientConfig::new(server, identity, pin);
    config.server_pins = more_pins;
    config.failover = endpoints;
    config.proxy = proxy;
    if !config.failover.is_empty() {
        tracing::info!(
            servers = config.failover.len() + 1,
            "failover: when the connection to a server is lost, another is tried"
        );
    }
    if let Some(s) = cli.ping_interval.or(file.ping_interval) {
        config.ping_interval = seconds("ping_interval", s)?;
    }
    if let Some(s) = cli.liveness_timeout.or(file.liveness_timeout) {
        config.liveness_timeout = seconds("liveness_timeout", s)?;
    }

    let tree_path = vigil_proto::tree_path_of(cli.tree_path.as_deref(), file.tree_path.clone())
        .map_err(anyhow::Error::msg)?;
    // Made (mode 0700) only when something keeps state in it.
    let state_dir_path = cli
        .state_dir
        .clone()
        .or(from_file(file.state_dir.clone()))
        .unwrap_or_else(|| "vigil-client-state".into());
    let state_dir = || -> anyhow::Result<PathBuf> {
        vigil_auth::create_private_dir(&state_dir_path)
            .context("cannot create the state directory")?;
        vigil_auth::check_permissions(&state_dir_path, "state directory")?;
        Ok(state_dir_path.clone())
    };
    if let Some(path) = cli
        .module_keys
        .clone()
        .or(from_file(file.module_keys.clone()))
    {
        vigil_auth::check_permissions(&path, "module keys file")?;
        let keys = ModuleKeys::load(&path)
            .with_context(|| format!("cannot load the module keys {}", path.display()))?;
        let versions_path = state_dir()?.join("module-versions.json");
        let versions = VersionStore::open(&versions_path).with_context(|| {
            format!(
                "cannot open the module version marks {}",
                versions_path.display()
            )
        })?;
        tracing::info!(
            keys = keys.len(),
            "module manifests required: a module is trusted only with a manifest signed by a module key"
        );
        config.module_trust = Some(ModuleTrust {
            keys,
            versions: Arc::new(versions),
        });
    }
    let authorities = cli.authorities.clone().or(from_file(file.authorities));
    if let Some(path) = authorities {
        vigil_auth::check_permissions(&path, "authorities file")?;
        let authorities = Authorities::load(&path)
            .with_context(|| format!("cannot load the authorities file {}", path.display()))?;
        let mut keys = match &cli.heartbeat_key {
            Some(flag) => list(flag),
            None => {
                let mut keys: Vec<String> = file.heartbeat_key.iter().cloned().collect();
                keys.extend(file.heartbeat_keys.iter().flatten().cloned());
                keys
            }
        }
        .into_iter()
        .map(|k| {
            vigil_command::decode_public_key(k.trim()).with_context(|| {
                format!("bad heartbeat key {k:?} (expected base64 of a 32-byte Ed25519 public key)")
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(
            !keys.is_empty(),
            "--authorities needs the server's heartbeat key: give --heartbeat-key, \
             VIGIL_HEARTBEAT_KEY or heartbeat_key in the config file"
        );
        let heartbeat_key = keys.remove(0);
        let agent_id = cli
            .agent_id
            .clone()
            .or(file.agent_id)
            .unwrap_or_else(|| config.identity.fingerprint().to_hex());
        let replay_path = state_dir()?.join("replay.log");
        let guard = ReplayGuard::open(&replay_path, std::time::SystemTime::now())
            .with_context(|| format!("cannot open the replay guard {}", replay_path.display()))?;
        let mut verifier = Verifier::new(authorities)
            .with_supported_types([vigil_client::RUN, vigil_client::SHUTDOWN_NOW])
            .with_own_agent_id(agent_id.clone())
            .with_replay_guard(Arc::new(guard));
        if let Some(path) = &tree_path {
            verifier = verifier.with_own_tree_path(path.clone());
        }
        config.hello = Some(vigil_proto::Hello {
            agent_id: Some(agent_id.clone()),
            tree_path: tree_path.clone().unwrap_or_default(),
        });
        let handler = ProgramHandler::new(file.commands);
        let mut settings = CommandSettings::new(verifier, heartbeat_key, Arc::new(handler))
            .context("cannot take commands with this server key")?;
        anyhow::ensure!(
            keys.iter().all(|k| !k.is_weak()),
            "a heartbeat key is weak (anyone could sign the heartbeats that keep the failsafe quiet)"
        );
        settings.other_heartbeat_keys = keys;
        if let Some(s) = cli.failsafe_timeout.or(file.failsafe_timeout) {
            settings.failsafe_timeout = seconds("failsafe_timeout", s)?;
        }
        let max_age = match cli.heartbeat_max_age.or(file.heartbeat_max_age) {
            Some(s) => seconds("heartbeat_max_age", s)?,
            None => vigil_command::NonceVerifier::DEFAULT_MAX_AGE,
        };
        settings.heartbeat_freshness = match cli
            .heartbeat_freshness
            .or(file.heartbeat_freshness)
            .unwrap_or(crate::cli::Freshness::Nonce)
        {
            crate::cli::Freshness::Nonce => vigil_client::HeartbeatFreshness::Nonce { max_age },
            crate::cli::Freshness::Clock => vigil_client::HeartbeatFreshness::Clock,
        };
        if let Some(s) = file.command_timeout {
            settings.command_timeout = seconds("command_timeout", s)?;
        }
        settings.break_commands = file.break_commands;
        tracing::info!(
            agent_id,
            failsafe_timeout = ?settings.failsafe_timeout,
            heartbeat_freshness = ?settings.heartbeat_freshness,
            break_commands = settings.break_commands.len(),
            "signed commands enabled"
        );
        config.commands = Some(settings);
    } else if !file.commands.is_empty() || !file.break_commands.is_empty() {
        anyhow::bail!("commands and break_commands need an authorities file (--authorities)");
    }
    Ok(config)
}

fn seconds(name: &str, value: f64) -> anyhow::Result<std::time::Duration> {
    std::time::Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{name} must be a positive number of seconds, got {value}"))
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("vigil-client").chain(args.iter().copied()))
            .expect("flags")
    }

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn servers_and_fingerprints_pair_by_position() {
        let c = cli(&[
            "--server",
            "10.0.0.1:8443, 10.0.0.2:8443",
            "--server-fingerprint",
            &format!("{A},{B}"),
        ]);
        let got = servers(&c, &FileConfig::default()).expect("servers");
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].address, "10.0.0.2:8443");
        assert_eq!(got[1].pins, vec![B.parse::<Fingerprint>().expect("hex")]);
        let c = cli(&[
            "--server",
            "10.0.0.1:8443,10.0.0.2:8443",
            "--server-fingerprint",
            A,
        ]);
        let err = servers(&c, &FileConfig::default()).expect_err("one pin for two");
        assert!(
            err.to_string()
                .contains("2 server addresses but 1 fingerprints"),
            "{err}"
        );
    }

    #[test]
    fn a_servers_table_gives_each_server_its_pins_and_excludes_the_single_form() {
        let file: FileConfig = toml::from_str(&format!(
            "[[servers]]\naddress = \"a:1\"\nfingerprints = [\"{A}\", \"{B}\"]\n\n[[servers]]\naddress = \"b:2\"\nfingerprints = [\"{B}\"]\n"
        ))
        .expect("toml");
        let got = servers(&cli(&[]), &file).expect("servers");
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].pins.len(), 2, "a key being rotated");
        let both: FileConfig = toml::from_str(&format!(
            "server_fingerprint = \"{A}\"\n[[servers]]\naddress = \"a:1\"\nfingerprints = [\"{A}\"]\n"
        ))
        .expect("toml");
        let err = servers(&cli(&[]), &both).expect_err("both forms");
        assert!(err.to_string().contains("give one"), "{err}");
        let empty: FileConfig =
            toml::from_str("[[servers]]\naddress = \"a:1\"\nfingerprints = []\n").expect("toml");
        assert!(servers(&cli(&[]), &empty).is_err());
    }
}

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
    let server = cli
        .server
        .clone()
        .or(file.server)
        .unwrap_or_else(|| "127.0.0.1:8443".into());
    let websocket = if vigil_ws::WsUrl::is_websocket(&server) {
        Some(server.parse::<vigil_ws::WsUrl>()?)
    } else {
        anyhow::ensure!(
            server
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()),
            "server address {server:?} is neither HOST:PORT nor wss://HOST:PORT/vigil"
        );
        None
    };
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
    let pin = cli
        .server_fingerprint
        .clone()
        .or(file.server_fingerprint)
        .context(
            "no server fingerprint: give --server-fingerprint, VIGIL_SERVER_FINGERPRINT \
             or server_fingerprint in the config file",
        )?;
    let pin: Fingerprint = pin.parse().context("bad server fingerprint")?;
    let identity = Identity::load(&cert, &key).context("cannot load the client identity")?;
    let mut config = ClientConfig::new(server, identity, pin);
    config.proxy = proxy;
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
        let heartbeat_key = cli.heartbeat_key.clone().or(file.heartbeat_key).context(
            "--authorities needs the server's heartbeat key: give --heartbeat-key, \
             VIGIL_HEARTBEAT_KEY or heartbeat_key in the config file",
        )?;
        let heartbeat_key = vigil_command::decode_public_key(heartbeat_key.trim())
            .context("bad heartbeat key (expected base64 of a 32-byte Ed25519 public key)")?;
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

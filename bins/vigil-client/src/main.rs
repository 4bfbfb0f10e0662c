//! `vigil-client`: connect to a pinned vigil server and stay connected.
//!
//! Reads flags, `VIGIL_*` environment variables and an optional TOML file
//! (in that order of precedence), then runs [`vigil_client::Client`] until
//! SIGINT or SIGTERM, or runs one command against the server.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use vigil_auth::{Fingerprint, Identity};
use vigil_client::{
    BreakCommand, Client, ClientConfig, CommandSettings, Connection, ProgramHandler, ProgramSpec,
    RunOutcome,
};
use vigil_command::{Authorities, ReplayGuard, Verifier};

const AFTER_HELP: &str = "\
Precedence: command-line flags, then VIGIL_* environment variables, then the
--config file, then the defaults shown. Relative paths in the config file are
relative to the file's directory.

The server is trusted only if its key has the --server-fingerprint given
(the hex SHA-256 that `vigilctl fingerprint server.crt` prints). The server,
in turn, admits this client only if its own fingerprint is in the server's
trusted-keys.json.

Commands: with --authorities, the client accepts Ed25519-signed commands
from the keys listed there (each for the command types it lists), checks
freshness, target and replay, runs RUN commands through the programs in the
config file's [commands.NAME] tables, and acknowledges each with its result
or the reason it was refused. Its failsafe runs the [[break_commands]] when
no verified heartbeat or command arrives for --failsafe-timeout seconds.
An authorized SHUTDOWN_NOW runs the break commands, then exits 0.

Logging: VIGIL_LOG (or RUST_LOG) sets the filter, e.g. VIGIL_LOG=debug.

Exit status: 0 on success, after SIGINT/SIGTERM or SHUTDOWN_NOW, 1 if a one-shot command
failed (server unreachable, certificate refused), 2 for bad usage or
configuration.";

/// Connect to a vigil server over pinned mutual TLS.
#[derive(Debug, Parser)]
#[command(version, about, after_help = AFTER_HELP)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "VIGIL_CONFIG", value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// Server address [default: 127.0.0.1:8443].
    #[arg(long, env = "VIGIL_SERVER", value_name = "HOST:PORT", global = true)]
    server: Option<String>,
    /// Client certificate, PEM [default: client.crt].
    #[arg(long, env = "VIGIL_CERT", value_name = "FILE", global = true)]
    cert: Option<PathBuf>,
    /// Client private key, PEM [default: client.key].
    #[arg(long, env = "VIGIL_KEY", value_name = "FILE", global = true)]
    key: Option<PathBuf>,
    /// SHA-256 fingerprint (hex) the server's key must have. Required.
    #[arg(
        long,
        env = "VIGIL_SERVER_FINGERPRINT",
        value_name = "HEX",
        global = true
    )]
    server_fingerprint: Option<String>,
    /// Authorities file: the Ed25519 keys whose signed commands this client
    /// accepts, and the command types each may issue. Without it, every
    /// command is refused and there is no failsafe.
    #[arg(long, env = "VIGIL_AUTHORITIES", value_name = "FILE", global = true)]
    authorities: Option<PathBuf>,
    /// The server's authority public key (base64), which signs heartbeats.
    /// Required with --authorities.
    #[arg(
        long,
        env = "VIGIL_HEARTBEAT_KEY",
        value_name = "BASE64",
        global = true
    )]
    heartbeat_key: Option<String>,
    /// This agent's id, matched against a command's target_agent_id
    /// [default: this client's key fingerprint].
    #[arg(long, env = "VIGIL_AGENT_ID", value_name = "ID", global = true)]
    agent_id: Option<String>,
    /// This agent's place in the agent tree, root first, entries separated
    /// by `/` (e.g. fleet-a/rack-3/web-1). A command scoped by
    /// target_tree_path runs here only if that path leads to this place
    /// (is a prefix of it); without a tree path, every scoped command is
    /// refused. Told to the server, which routes scoped commands by it.
    #[arg(long, env = "VIGIL_TREE_PATH", value_name = "PATH", global = true)]
    tree_path: Option<String>,
    /// Directory for state that must survive a restart (the replay guard)
    /// [default: vigil-client-state].
    #[arg(long, env = "VIGIL_STATE_DIR", value_name = "DIR", global = true)]
    state_dir: Option<PathBuf>,
    /// Seconds without a verified heartbeat or command before the failsafe
    /// runs the break commands [default: 15].
    #[arg(
        long,
        env = "VIGIL_FAILSAFE_TIMEOUT",
        value_name = "SECS",
        global = true
    )]
    failsafe_timeout: Option<f64>,
    /// Seconds without sending after which the client pings, so that the
    /// server's idle timeout never closes a live client [default: 30].
    #[arg(long, env = "VIGIL_PING_INTERVAL", value_name = "SECS", global = true)]
    ping_interval: Option<f64>,
    /// Seconds of silence from the server (no heartbeat, no answer) after
    /// which the connection is given up and made again; it notices a path
    /// that went silent [default: 75].
    #[arg(
        long,
        env = "VIGIL_LIVENESS_TIMEOUT",
        value_name = "SECS",
        global = true
    )]
    liveness_timeout: Option<f64>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Stay connected: sync, follow broadcasts, reconnect with backoff (the default).
    Run,
    /// Connect once, list the server's modules as JSON, and exit.
    Sync,
    /// Connect once, verify a module's bytes, run it with ARGS, print its
    /// result and exit (non-zero if anything fails).
    Exec {
        /// Module file name on the server, e.g. hello.so.
        module: String,
        /// Arguments, joined with spaces into the module's argument string.
        args: Vec<String>,
    },
}

/// The TOML file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    server: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    server_fingerprint: Option<String>,
    authorities: Option<PathBuf>,
    heartbeat_key: Option<String>,
    agent_id: Option<String>,
    tree_path: Option<Vec<String>>,
    state_dir: Option<PathBuf>,
    failsafe_timeout: Option<f64>,
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

fn resolve(cli: &Cli) -> anyhow::Result<ClientConfig> {
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
    anyhow::ensure!(
        server
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok()),
        "server address {server:?} is not HOST:PORT"
    );
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
    if let Some(s) = cli.ping_interval.or(file.ping_interval) {
        config.ping_interval = seconds("ping_interval", s)?;
    }
    if let Some(s) = cli.liveness_timeout.or(file.liveness_timeout) {
        config.liveness_timeout = seconds("liveness_timeout", s)?;
    }

    let tree_path = vigil_proto::tree_path_of(cli.tree_path.as_deref(), file.tree_path.clone())
        .map_err(anyhow::Error::msg)?;
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
        let state_dir = cli
            .state_dir
            .clone()
            .or(from_file(file.state_dir))
            .unwrap_or_else(|| "vigil-client-state".into());
        vigil_auth::create_private_dir(&state_dir).context("cannot create the state directory")?;
        vigil_auth::check_permissions(&state_dir, "state directory")?;
        let replay_path = state_dir.join("replay.log");
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
        let mut settings = CommandSettings::new(verifier, heartbeat_key, Arc::new(handler));
        if let Some(s) = cli.failsafe_timeout.or(file.failsafe_timeout) {
            settings.failsafe_timeout = seconds("failsafe_timeout", s)?;
        }
        if let Some(s) = file.command_timeout {
            settings.command_timeout = seconds("command_timeout", s)?;
        }
        settings.break_commands = file.break_commands;
        tracing::info!(
            agent_id,
            failsafe_timeout = ?settings.failsafe_timeout,
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

/// Logs to stderr, with line breaks and control characters in logged
/// text escaped (attacker-chosen text cannot forge a line).
fn init_logging() {
    let filter = std::env::var("VIGIL_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    vigil_log::init(&filter);
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

async fn run(config: ClientConfig) -> anyhow::Result<()> {
    tracing::info!(
        server = %config.server,
        pin = %config.server_fingerprint,
        client = %config.identity.fingerprint(),
        "vigil client starting"
    );
    let client = Client::new(config);
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            wait_for_signal().await;
            tracing::info!("signal received, disconnecting");
            stop.cancel();
        }
    });
    if let RunOutcome::Shutdown { command_id } = client.run(stop).await {
        tracing::warn!(command_id, "shut down by an authorized SHUTDOWN_NOW");
    }
    Ok(())
}

async fn sync(config: ClientConfig) -> anyhow::Result<()> {
    let conn = Connection::connect(&config).await?;
    let modules = conn.sync().await?;
    let json = serde_json::to_string_pretty(&modules)?;
    println!("{json}");
    conn.close();
    Ok(())
}

async fn exec(config: ClientConfig, module: &str, args: &str) -> anyhow::Result<()> {
    let conn = Connection::connect(&config).await?;
    let modules = conn.sync().await?;
    let Some(listed) = modules.iter().find(|m| m.name == module) else {
        let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
        anyhow::bail!(
            "the server has no module {module:?} (it has: {})",
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        );
    };
    let verified = conn.verify(module, Some(&listed.sum)).await?;
    tracing::info!(module, sum = %verified.sum, size = verified.size, "module verified");
    let result = conn.exec(module, args, &verified.sum).await?;
    println!("{result}");
    conn.close();
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let config = match resolve(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vigil-client: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vigil-client: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let command = cli.command.unwrap_or(Command::Run);
    let result = match command {
        Command::Run => runtime.block_on(run(config)),
        Command::Sync => runtime.block_on(sync(config)),
        Command::Exec { module, args } => runtime.block_on(exec(config, &module, &args.join(" "))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil-client: {e:#}");
            ExitCode::FAILURE
        }
    }
}

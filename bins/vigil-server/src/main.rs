//! `vigil-server`: serve pinned mutual-TLS clients.
//!
//! Reads flags, `VIGIL_*` environment variables and an optional TOML file
//! (in that order of precedence), loads the identity and the trust file,
//! and runs [`vigil_server::Server`] until SIGINT or SIGTERM.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use serde::Deserialize;
use vigil_auth::{Identity, TrustStore};
use vigil_modules::{ModuleRegistry, RegistryConfig};
use vigil_server::{Authority, HttpConfig, HttpServer, Server, ServerConfig};

const AFTER_HELP: &str = "\
Precedence: command-line flags, then VIGIL_* environment variables, then the
--config file, then the defaults shown. Relative paths in the config file are
relative to the file's directory.

Modules: every *.so at the top of the --mods directory is loaded at start;
files closed after writing, renamed in or removed are followed at once, and
every connected client is told. Deploy by writing a temporary name and
renaming it into place.

Trust: only clients whose key fingerprint is listed in the trust file
({\"trusted_fingerprints\": [\"<sha256 hex>\", ...]}) can connect. Edits take
effect at once; removing a fingerprint closes that client's sessions.

Logging: VIGIL_LOG (or RUST_LOG) sets the filter, e.g. VIGIL_LOG=debug.

Exit status: 0 after a clean shutdown, 1 if the server could not listen or
failed while running,
2 for bad usage or configuration (unreadable certificate, key or trust file).";

/// Serve vigil clients over pinned mutual TLS.
#[derive(Debug, Parser)]
#[command(version, about, after_help = AFTER_HELP)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "VIGIL_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1].
    #[arg(long, env = "VIGIL_INTERFACE", value_name = "IP")]
    interface: Option<IpAddr>,
    /// Port to listen on [default: 8443].
    #[arg(long, env = "VIGIL_PORT")]
    port: Option<u16>,
    /// Server certificate, PEM [default: server.crt].
    #[arg(long, env = "VIGIL_CERT", value_name = "FILE")]
    cert: Option<PathBuf>,
    /// Server private key, PEM [default: server.key].
    #[arg(long, env = "VIGIL_KEY", value_name = "FILE")]
    key: Option<PathBuf>,
    /// Trusted client fingerprints [default: trusted-keys.json].
    #[arg(long, env = "VIGIL_TRUSTED_KEYS", value_name = "FILE")]
    trusted_keys: Option<PathBuf>,
    /// Directory of module dylibs (*.so), watched for changes [default: mods].
    #[arg(long, env = "VIGIL_MODS", value_name = "DIR")]
    mods: Option<PathBuf>,
    /// Seconds a module run may take before the client gets an error [default: 10].
    #[arg(long, env = "VIGIL_EXEC_TIMEOUT", value_name = "SECS")]
    exec_timeout: Option<f64>,
    /// Ed25519 authority key (base64 of its 32-byte seed) that signs
    /// heartbeats and the server's own commands. Without it no heartbeats
    /// are sent and clients' failsafes fire.
    #[arg(long, env = "VIGIL_AUTHORITY_KEY", value_name = "FILE")]
    authority_key: Option<PathBuf>,
    /// The id the server signs as (`wa_id`) [default: vigil-server].
    #[arg(long, env = "VIGIL_AUTHORITY_ID", value_name = "ID")]
    authority_id: Option<String>,
    /// Seconds between heartbeats; at most half the clients' failsafe
    /// timeout [default: 5].
    #[arg(long, env = "VIGIL_HEARTBEAT_INTERVAL", value_name = "SECS")]
    heartbeat_interval: Option<f64>,
    /// Address of the REST API [default: 127.0.0.1].
    #[arg(long, env = "VIGIL_HTTP_INTERFACE", value_name = "IP")]
    http_interface: Option<IpAddr>,
    /// Port of the REST API [default: 8080].
    #[arg(long, env = "VIGIL_HTTP_PORT")]
    http_port: Option<u16>,
    /// Directory for the server's state: the REST API token (made on first
    /// start, mode 0600), the audit log, the relay replay guard
    /// [default: vigil-data].
    #[arg(long, env = "VIGIL_DATA_DIR", value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Bearer token for the REST API, instead of the one in the data dir.
    #[arg(
        long,
        env = "VIGIL_API_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    api_token: Option<String>,
    /// Authorities whose signed commands the server relays
    /// (`POST /v1/commands`) and whose SHUTDOWN_NOW it obeys
    /// (`POST /emergency/shutdown`); the same format as the client's.
    #[arg(long, env = "VIGIL_AUTHORITIES", value_name = "FILE")]
    authorities: Option<PathBuf>,
    /// This server's own agent id, for an emergency shutdown aimed at it
    /// [default: its key fingerprint].
    #[arg(long, env = "VIGIL_AGENT_ID", value_name = "ID")]
    agent_id: Option<String>,
    /// Most connections at once, counting handshakes [default: 16384].
    #[arg(long, env = "VIGIL_MAX_CONNECTIONS", value_name = "N")]
    max_connections: Option<usize>,
    /// Seconds a peer has to finish the TLS handshake [default: 10].
    #[arg(long, env = "VIGIL_HANDSHAKE_TIMEOUT", value_name = "SECS")]
    handshake_timeout: Option<f64>,
    /// Seconds a client may stay silent before it is disconnected [default: 90].
    #[arg(long, env = "VIGIL_IDLE_TIMEOUT", value_name = "SECS")]
    idle_timeout: Option<f64>,
    /// KiB queued for one client (heartbeats, broadcasts, commands) before
    /// it is disconnected as a slow consumer [default: 256].
    #[arg(long, env = "VIGIL_MAX_OUTBOUND_KIB", value_name = "KIB")]
    max_outbound_kib: Option<usize>,
    /// Seconds a client may leave the server's writes blocked before it is
    /// disconnected as a slow consumer [default: 30].
    #[arg(long, env = "VIGIL_WRITE_STALL_TIMEOUT", value_name = "SECS")]
    write_stall_timeout: Option<f64>,
    /// Seconds a REST client has to send a request's head, then its body
    /// [default: 10].
    #[arg(long, env = "VIGIL_HTTP_READ_TIMEOUT", value_name = "SECS")]
    http_read_timeout: Option<f64>,
    /// Most REST connections at once; when they run out, the one that has
    /// waited longest for a request gives way [default: 1024].
    #[arg(long, env = "VIGIL_HTTP_MAX_CONNECTIONS", value_name = "N")]
    http_max_connections: Option<usize>,
    /// REST connections from one address that may wait for a request at
    /// once; past it, that address's oldest gives way [default: 64].
    #[arg(long, env = "VIGIL_HTTP_MAX_WAITING_PER_SOURCE", value_name = "N")]
    http_max_waiting_per_source: Option<usize>,
    /// TLS handshakes in progress from one address; past it, that
    /// address's oldest gives way [default: 256].
    #[arg(long, env = "VIGIL_MAX_HANDSHAKES_PER_SOURCE", value_name = "N")]
    max_handshakes_per_source: Option<usize>,
    /// Most commands written to one client and not yet answered; the rest
    /// wait at the server (up to --max-outbound-kib), past which a command
    /// is not queued (queue_full) [default: 64].
    #[arg(long, env = "VIGIL_COMMAND_WINDOW", value_name = "N")]
    command_window: Option<usize>,
    /// Seconds a client has to answer a command; past it the command's
    /// outcome is "unanswered" [default: 600].
    #[arg(long, env = "VIGIL_ACK_TIMEOUT", value_name = "SECS")]
    ack_timeout: Option<f64>,
    /// This server's place in the agent tree, root first, entries separated
    /// by `/`: an emergency shutdown scoped to a subtree stops the server
    /// only if this place is in it [default: none, the root].
    #[arg(long, env = "VIGIL_TREE_PATH", value_name = "PATH")]
    tree_path: Option<String>,
    /// KiB after which the audit log's open segment is sealed and a new one
    /// started; a start reads only the open segment whole [default: 16384].
    #[arg(long, env = "VIGIL_AUDIT_SEGMENT_KIB", value_name = "KIB")]
    audit_segment_kib: Option<u64>,
    /// Hours after which the open segment is sealed [default: 24].
    #[arg(long, env = "VIGIL_AUDIT_SEGMENT_HOURS", value_name = "HOURS")]
    audit_segment_hours: Option<f64>,
    /// Sealed audit segments kept; older ones are deleted, and the chain
    /// records which (0: keep every one) [default: 256].
    #[arg(long, env = "VIGIL_AUDIT_KEEP_SEGMENTS", value_name = "N")]
    audit_keep_segments: Option<usize>,
    /// Sealed audit segments older than this many days are deleted the same
    /// way [default: none, no age limit].
    #[arg(long, env = "VIGIL_AUDIT_KEEP_DAYS", value_name = "DAYS")]
    audit_keep_days: Option<f64>,
    /// KiB the audit log holds in reserve (in audit.jsonl.reserve) so that
    /// an authorized SHUTDOWN_NOW is recorded and carried out when the disk
    /// is otherwise full (0: none) [default: 1024].
    #[arg(long, env = "VIGIL_AUDIT_RESERVE_KIB", value_name = "KIB")]
    audit_reserve_kib: Option<u64>,
    /// Seconds between the audit records that count refused unauthenticated
    /// traffic (refusals.summary); meanwhile only the first refusal of each
    /// source is recorded on its own [default: 60].
    #[arg(long, env = "VIGIL_REFUSAL_SUMMARY_INTERVAL", value_name = "SECS")]
    refusal_summary_interval: Option<f64>,
}

/// The TOML file: the same settings as the flags.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    interface: Option<IpAddr>,
    port: Option<u16>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    trusted_keys: Option<PathBuf>,
    mods: Option<PathBuf>,
    exec_timeout: Option<f64>,
    authority_key: Option<PathBuf>,
    authority_id: Option<String>,
    heartbeat_interval: Option<f64>,
    http_interface: Option<IpAddr>,
    http_port: Option<u16>,
    data_dir: Option<PathBuf>,
    api_token: Option<String>,
    authorities: Option<PathBuf>,
    agent_id: Option<String>,
    max_connections: Option<usize>,
    handshake_timeout: Option<f64>,
    idle_timeout: Option<f64>,
    max_outbound_kib: Option<usize>,
    write_stall_timeout: Option<f64>,
    http_read_timeout: Option<f64>,
    http_max_connections: Option<usize>,
    http_max_waiting_per_source: Option<usize>,
    max_handshakes_per_source: Option<usize>,
    command_window: Option<usize>,
    ack_timeout: Option<f64>,
    tree_path: Option<Vec<String>>,
    audit_segment_kib: Option<u64>,
    audit_segment_hours: Option<f64>,
    audit_keep_segments: Option<usize>,
    audit_keep_days: Option<f64>,
    audit_reserve_kib: Option<u64>,
    refusal_summary_interval: Option<f64>,
}

fn load_file(path: &Path) -> anyhow::Result<FileConfig> {
    vigil_auth::check_permissions(path, "config file")?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("config file {}", path.display()))
}

/// Reads the REST API token, or makes one (32 random bytes, hex) readable
/// by the owner only.
fn load_or_make_token(path: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            vigil_auth::check_key_permissions(path, "API token file")?;
            let token = text.trim().to_owned();
            anyhow::ensure!(
                !token.is_empty(),
                "the API token file {} is empty",
                path.display()
            );
            Ok(token)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            getrandom::fill(&mut bytes)
                .map_err(|e| anyhow::anyhow!("no randomness for the API token: {e}"))?;
            let token: String = hex::encode(bytes);
            vigil_auth::write_file(path, format!("{token}\n").as_bytes(), 0o600, false)?;
            tracing::info!(path = %path.display(), "made a new REST API token");
            Ok(token)
        }
        Err(e) => Err(anyhow::anyhow!(
            "cannot read the API token {}: {e}",
            path.display()
        )),
    }
}

/// Reads an Ed25519 signing key: base64 of its 32-byte seed, as
/// `vigilctl init` and `vigilctl keygen` write it.
fn load_signing_key(path: &Path) -> anyhow::Result<vigil_command::SigningKey> {
    vigil_auth::check_key_permissions(path, "authority key")?;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read authority key {}", path.display()))?;
    vigil_command::decode_signing_key(text.trim()).with_context(|| {
        format!(
            "authority key {}: expected base64 of a 32-byte Ed25519 seed",
            path.display()
        )
    })
}

fn seconds(name: &str, value: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(value)
        .ok()
        .filter(|d| !d.is_zero())
        .with_context(|| format!("{name} must be a positive number of seconds, got {value}"))
}

/// What must stay alive while the server runs.
struct Watches {
    _trust: Option<vigil_auth::TrustWatcher>,
    _mods: vigil_modules::ModuleWatcher,
}

/// Flags and environment over file over defaults.
fn resolve(cli: Cli) -> anyhow::Result<(ServerConfig, HttpConfig, Watches)> {
    let (file, base) = match &cli.config {
        Some(path) => (
            load_file(path)?,
            path.parent().map(Path::to_path_buf).unwrap_or_default(),
        ),
        None => (FileConfig::default(), PathBuf::new()),
    };
    let from_file = |p: Option<PathBuf>| p.map(|p| base.join(p));
    let cert = cli
        .cert
        .or(from_file(file.cert))
        .unwrap_or_else(|| "server.crt".into());
    let key = cli
        .key
        .or(from_file(file.key))
        .unwrap_or_else(|| "server.key".into());
    let trusted = cli
        .trusted_keys
        .or(from_file(file.trusted_keys))
        .unwrap_or_else(|| "trusted-keys.json".into());
    let interface = cli
        .interface
        .or(file.interface)
        .unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let port = cli.port.or(file.port).unwrap_or(vigil_server::DEFAULT_PORT);

    let mods = cli
        .mods
        .or(from_file(file.mods))
        .unwrap_or_else(|| "mods".into());

    let authority_key = cli.authority_key.or(from_file(file.authority_key));
    let authority_id = cli
        .authority_id
        .or(file.authority_id)
        .unwrap_or_else(|| vigil_server::DEFAULT_AUTHORITY_ID.to_owned());

    let identity = Identity::load(&cert, &key).context("cannot load the server identity")?;
    let trust = TrustStore::load(&trusted).context("cannot load the trust file")?;
    let watcher = match trust.watch() {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, "trust file changes will not be noticed");
            None
        }
    };
    vigil_auth::check_permissions(&mods, "mods directory")?;
    let mut registry_config = RegistryConfig::new(&mods);
    if let Some(s) = cli.exec_timeout.or(file.exec_timeout) {
        registry_config.exec_timeout = seconds("exec_timeout", s)?;
    }
    let registry = ModuleRegistry::open(registry_config).with_context(|| {
        format!(
            "cannot open the module directory (create {} or pass --mods DIR)",
            mods.display()
        )
    })?;
    let mods_watch = registry
        .watch()
        .context("cannot watch the module directory")?;
    let mut config = ServerConfig::new(SocketAddr::new(interface, port), identity, trust);
    config.modules = Some(registry);
    if let Some(path) = authority_key {
        let key = load_signing_key(&path)?;
        tracing::info!(
            id = %authority_id,
            public_key = %vigil_command::encode_public_key(&key.verifying_key()),
            "authority key loaded"
        );
        config.authority = Some(Authority {
            key,
            id: authority_id,
        });
    }
    if let Some(s) = cli.heartbeat_interval.or(file.heartbeat_interval) {
        config.heartbeat_interval = seconds("heartbeat_interval", s)?;
    }
    if let Some(n) = cli.max_connections.or(file.max_connections) {
        anyhow::ensure!(n > 0, "max_connections must be at least 1");
        config.max_connections = n;
    }
    if let Some(n) = cli
        .max_handshakes_per_source
        .or(file.max_handshakes_per_source)
    {
        anyhow::ensure!(n > 0, "max_handshakes_per_source must be at least 1");
        config.max_handshakes_per_source = n;
    }
    if let Some(s) = cli.handshake_timeout.or(file.handshake_timeout) {
        config.handshake_timeout = seconds("handshake_timeout", s)?;
    }
    if let Some(s) = cli.idle_timeout.or(file.idle_timeout) {
        config.idle_timeout = seconds("idle_timeout", s)?;
    }
    if let Some(kib) = cli.max_outbound_kib.or(file.max_outbound_kib) {
        anyhow::ensure!(kib > 0, "max_outbound_kib must be at least 1");
        config.max_outbound_bytes = kib.saturating_mul(1024);
    }
    if let Some(s) = cli.write_stall_timeout.or(file.write_stall_timeout) {
        config.write_stall_timeout = seconds("write_stall_timeout", s)?;
    }
    if let Some(n) = cli.command_window.or(file.command_window) {
        anyhow::ensure!(n > 0, "command_window must be at least 1");
        config.command_window = n;
    }
    if let Some(s) = cli.ack_timeout.or(file.ack_timeout) {
        config.ack_timeout = seconds("ack_timeout", s)?;
    }
    if let Some(path) = vigil_proto::tree_path_of(cli.tree_path.as_deref(), file.tree_path)
        .map_err(anyhow::Error::msg)?
    {
        config.tree_path = path;
    }
    // State: token, audit log, replay guard.
    let data_dir = cli
        .data_dir
        .or(from_file(file.data_dir))
        .unwrap_or_else(|| "vigil-data".into());
    vigil_auth::create_private_dir(&data_dir).context("cannot create the data directory")?;
    vigil_auth::check_permissions(&data_dir, "data directory")?;
    let token = match cli.api_token.or(file.api_token) {
        Some(t) => t,
        None => load_or_make_token(&data_dir.join("api-token"))?,
    };
    let audit_path = data_dir.join("audit.jsonl");
    let mut audit_options = vigil_audit::AuditOptions::default();
    if let Some(kib) = cli.audit_segment_kib.or(file.audit_segment_kib) {
        anyhow::ensure!(kib >= 4, "audit_segment_kib must be at least 4");
        audit_options.segment_max_bytes = kib.saturating_mul(1024);
    }
    if let Some(h) = cli.audit_segment_hours.or(file.audit_segment_hours) {
        audit_options.segment_max_age = Some(seconds("audit_segment_hours", h * 3600.0)?);
    }
    if let Some(n) = cli.audit_keep_segments.or(file.audit_keep_segments) {
        audit_options.keep_segments = (n > 0).then_some(n);
    }
    if let Some(d) = cli.audit_keep_days.or(file.audit_keep_days) {
        audit_options.keep_age = Some(seconds("audit_keep_days", d * 86_400.0)?);
    }
    if let Some(kib) = cli.audit_reserve_kib.or(file.audit_reserve_kib) {
        audit_options.reserve_bytes = kib.saturating_mul(1024);
    }
    let audit = vigil_audit::AuditLog::open(&audit_path, audit_options)
        .with_context(|| format!("cannot open the audit log {}", audit_path.display()))?;
    let opened = audit.open_report();
    tracing::info!(
        path = %audit_path.display(),
        records = opened.records,
        sealed_segments = opened.sealed_segments,
        first_seq = opened.first_seq,
        next_seq = opened.next_seq,
        reserve_bytes = opened.reserve_bytes,
        "audit log open (records: of the open segment, read whole; sealed segments: heads checked)"
    );
    if let Some(s) = cli
        .refusal_summary_interval
        .or(file.refusal_summary_interval)
    {
        config.refusal_summary_interval = seconds("refusal_summary_interval", s)?;
    }
    config.audit = Some(audit);
    if let Some(id) = cli.agent_id.or(file.agent_id) {
        config.agent_id = id;
    }
    let http_listen = SocketAddr::new(
        cli.http_interface
            .or(file.http_interface)
            .unwrap_or(IpAddr::from([127, 0, 0, 1])),
        cli.http_port
            .or(file.http_port)
            .unwrap_or(vigil_server::DEFAULT_HTTP_PORT),
    );
    let mut http = HttpConfig::new(http_listen, token);
    if let Some(s) = cli.http_read_timeout.or(file.http_read_timeout) {
        http.read_timeout = seconds("http_read_timeout", s)?;
    }
    if let Some(n) = cli.http_max_connections.or(file.http_max_connections) {
        anyhow::ensure!(n > 0, "http_max_connections must be at least 1");
        http.max_connections = n;
    }
    if let Some(n) = cli
        .http_max_waiting_per_source
        .or(file.http_max_waiting_per_source)
    {
        anyhow::ensure!(n > 0, "http_max_waiting_per_source must be at least 1");
        http.max_waiting_per_source = n;
    }
    if let Some(path) = cli.authorities.or(from_file(file.authorities)) {
        vigil_auth::check_permissions(&path, "authorities file")?;
        let authorities = vigil_command::Authorities::load(&path)
            .with_context(|| format!("cannot load the authorities file {}", path.display()))?;
        let replay_path = data_dir.join("relay-replay.log");
        let guard = vigil_command::ReplayGuard::open(&replay_path, std::time::SystemTime::now())
            .with_context(|| format!("cannot open the replay guard {}", replay_path.display()))?;
        http.relay = Some(vigil_server::Relay::new(
            authorities,
            std::sync::Arc::new(guard),
        ));
    }

    Ok((
        config,
        http,
        Watches {
            _trust: watcher,
            _mods: mods_watch,
        },
    ))
}

/// Logs to stderr, with line breaks and control characters in logged
/// text escaped (attacker-chosen text cannot forge a line).
fn init_logging() {
    let filter = std::env::var("VIGIL_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    vigil_log::init(&filter);
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers, only the process's death stops us.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

async fn serve(config: ServerConfig, http: HttpConfig) -> anyhow::Result<()> {
    let server = Server::bind(config).await?;
    let handle = server.handle();
    let api = HttpServer::bind(http, handle.clone()).await?;
    tokio::spawn(async move {
        let signal = wait_for_signal().await;
        tracing::info!(signal, "shutting down (send it again to exit at once)");
        handle.shutdown();
        wait_for_signal().await;
        std::process::exit(130);
    });
    let closing = server.handle();
    ignore_file_size_signal();
    let (served, ()) = tokio::join!(server.run(), api.run());
    closing
        .close_audit()
        .await
        .context("closing the audit log")?;
    served?;
    Ok(())
}

/// A write past a file-size limit (`ulimit -f`, systemd's `LimitFSIZE`)
/// raises SIGXFSZ, which kills the process by default. With a handler the
/// write fails with `EFBIG` instead: the audit log fails closed (the REST
/// API answers 503) and recovers once the limit is raised.
fn ignore_file_size_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::from_raw(rustix::process::Signal::XFSZ.as_raw())) {
        Ok(mut signals) => {
            tokio::spawn(async move {
                while signals.recv().await.is_some() {
                    tracing::warn!("a write passed the file-size limit (SIGXFSZ)");
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot handle SIGXFSZ"),
    }
}

/// Raises the open-file limit to the hard limit: every client is a socket.
fn raise_fd_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let Some(hard) = limit.maximum else {
        return;
    };
    if limit.current == Some(hard) {
        return;
    }
    let raised = rustix::process::Rlimit {
        current: Some(hard),
        maximum: Some(hard),
    };
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::debug!(limit = hard, "raised the open-file limit to the hard limit"),
        Err(e) => {
            tracing::warn!(error = %e, soft = ?limit.current, "cannot raise the open-file limit")
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    raise_fd_limit();
    let (config, http, _watches) = match resolve(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vigil-server: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vigil-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(serve(config, http));
    // A module run that hangs cannot be stopped; do not wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! The command line: flags, their `VIGIL_*` environment variables, the
//! subcommands and the help text.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

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

WebSocket: --server wss://HOST:PORT/vigil speaks the same frames as WebSocket
text messages, inside the same pinned mutual TLS, for networks that pass only
HTTPS. It goes through an HTTP CONNECT proxy given by --proxy, or else by
HTTPS_PROXY (unless NO_PROXY names the host); credentials go in the proxy
address, http://user:password@proxy:3128. The proxy sees where the tunnel goes,
never what is in it.

Logging: VIGIL_LOG (or RUST_LOG) sets the filter, e.g. VIGIL_LOG=debug.

Exit status: 0 on success, after SIGINT/SIGTERM or SHUTDOWN_NOW, 1 if a one-shot command
failed (server unreachable, certificate refused), 2 for bad usage or
configuration.";

/// Connect to a vigil server over pinned mutual TLS.
#[derive(Debug, Parser)]
#[command(version, about, after_help = AFTER_HELP)]
pub(crate) struct Cli {
    /// Log lines as text, or as one JSON object per line (for log
    /// pipelines; stable field names: session, client, command_id,
    /// audit_seq).
    #[arg(
        long,
        env = "VIGIL_LOG_FORMAT",
        value_name = "text|json",
        default_value = "text",
        global = true
    )]
    pub(crate) log_format: vigil_log::Format,
    /// TOML configuration file.
    #[arg(long, env = "VIGIL_CONFIG", value_name = "FILE", global = true)]
    pub(crate) config: Option<PathBuf>,
    /// Server address: HOST:PORT of its main port, or wss://HOST:PORT/vigil
    /// for its WebSocket transport [default: 127.0.0.1:8443]. Several,
    /// comma-separated, for the servers of a cluster: the client connects
    /// to the first and, when a connection is lost, tries another (each
    /// with the fingerprint at the same place in --server-fingerprint).
    #[arg(
        long,
        env = "VIGIL_SERVER",
        value_name = "HOST:PORT|wss://HOST:PORT/vigil",
        global = true
    )]
    pub(crate) server: Option<String>,
    /// HTTP CONNECT proxy for a wss:// server, http://[USER:PASSWORD@]HOST:PORT
    /// [default: HTTPS_PROXY, unless NO_PROXY names the server; none for a
    /// HOST:PORT server]. "none" goes straight even if HTTPS_PROXY is set.
    #[arg(long, env = "VIGIL_PROXY", value_name = "URL", global = true)]
    pub(crate) proxy: Option<String>,
    /// Client certificate, PEM [default: client.crt].
    #[arg(long, env = "VIGIL_CERT", value_name = "FILE", global = true)]
    pub(crate) cert: Option<PathBuf>,
    /// Client private key, PEM [default: client.key].
    #[arg(long, env = "VIGIL_KEY", value_name = "FILE", global = true)]
    pub(crate) key: Option<PathBuf>,
    /// SHA-256 fingerprint (hex) the server's key must have. Required. With
    /// several servers, one per server, comma-separated, in the same order
    /// (the config file's [[servers]] also takes several pins per server).
    #[arg(
        long,
        env = "VIGIL_SERVER_FINGERPRINT",
        value_name = "HEX",
        global = true
    )]
    pub(crate) server_fingerprint: Option<String>,
    /// Authorities file: the Ed25519 keys whose signed commands this client
    /// accepts, and the command types each may issue. Without it, every
    /// command is refused and there is no failsafe.
    #[arg(long, env = "VIGIL_AUTHORITIES", value_name = "FILE", global = true)]
    pub(crate) authorities: Option<PathBuf>,
    /// The server's authority public key (base64), which signs heartbeats.
    /// Required with --authorities. In a cluster, every server's key,
    /// comma-separated: a heartbeat signed by any of them feeds the
    /// failsafe.
    #[arg(
        long,
        env = "VIGIL_HEARTBEAT_KEY",
        value_name = "BASE64",
        global = true
    )]
    pub(crate) heartbeat_key: Option<String>,
    /// This agent's id, matched against a command's target_agent_id
    /// [default: this client's key fingerprint].
    #[arg(long, env = "VIGIL_AGENT_ID", value_name = "ID", global = true)]
    pub(crate) agent_id: Option<String>,
    /// This agent's place in the agent tree, root first, entries separated
    /// by `/` (e.g. fleet-a/rack-3/web-1). A command scoped by
    /// target_tree_path runs here only if that path leads to this place
    /// (is a prefix of it); without a tree path, every scoped command is
    /// refused. Told to the server, which routes scoped commands by it.
    #[arg(long, env = "VIGIL_TREE_PATH", value_name = "PATH", global = true)]
    pub(crate) tree_path: Option<String>,
    /// Module keys file (JSON, as the server's --module-keys): with it, a
    /// module is trusted, and may run, only if its signed manifest verifies
    /// for the bytes the server sent, names it, is within its window, and
    /// is not of a version below the highest trusted before (kept in the
    /// state directory, module-versions.json).
    #[arg(long, env = "VIGIL_MODULE_KEYS", value_name = "FILE", global = true)]
    pub(crate) module_keys: Option<PathBuf>,
    /// Directory for state that must survive a restart (the replay guard,
    /// the module version marks) [default: vigil-client-state].
    #[arg(long, env = "VIGIL_STATE_DIR", value_name = "DIR", global = true)]
    pub(crate) state_dir: Option<PathBuf>,
    /// Seconds without a verified heartbeat or command before the failsafe
    /// runs the break commands [default: 15].
    #[arg(
        long,
        env = "VIGIL_FAILSAFE_TIMEOUT",
        value_name = "SECS",
        global = true
    )]
    pub(crate) failsafe_timeout: Option<f64>,
    /// How a heartbeat is judged fresh: `nonce` (it must cover a nonce this
    /// client sent recently, on its own monotonic clock: no shared clock is
    /// needed) or `clock` (its `sent_at` must be within 30 s of this
    /// machine's clock, for servers older than nonce heartbeats)
    /// [default: nonce].
    #[arg(
        long,
        env = "VIGIL_HEARTBEAT_FRESHNESS",
        value_name = "MODE",
        global = true
    )]
    pub(crate) heartbeat_freshness: Option<Freshness>,
    /// With nonce freshness: the oldest nonce a heartbeat may cover, in
    /// seconds; more than the server's heartbeat interval plus a round
    /// trip [default: 15].
    #[arg(
        long,
        env = "VIGIL_HEARTBEAT_MAX_AGE",
        value_name = "SECS",
        global = true
    )]
    pub(crate) heartbeat_max_age: Option<f64>,
    /// Seconds without sending after which the client pings, so that the
    /// server's idle timeout never closes a live client [default: 30].
    #[arg(long, env = "VIGIL_PING_INTERVAL", value_name = "SECS", global = true)]
    pub(crate) ping_interval: Option<f64>,
    /// Seconds of silence from the server (no heartbeat, no answer) after
    /// which the connection is given up and made again; it notices a path
    /// that went silent [default: 75].
    #[arg(
        long,
        env = "VIGIL_LIVENESS_TIMEOUT",
        value_name = "SECS",
        global = true
    )]
    pub(crate) liveness_timeout: Option<f64>,
    #[command(subcommand)]
    pub(crate) command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
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

/// `--heartbeat-freshness`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Freshness {
    /// The heartbeat covers a nonce this client sent recently.
    Nonce,
    /// The heartbeat's wall-clock time is near this machine's.
    Clock,
}

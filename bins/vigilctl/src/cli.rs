//! The command line: the subcommands, their flags and the help text.

use std::net::IpAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::api::{self, ApiArgs};
use crate::sign::CommandFlags;

const AFTER_HELP: &str = "\
REST API subcommands (send, relay, clients, modules, command) take --api
(VIGIL_API, default http://127.0.0.1:8080) and a bearer token: --token, else
--token-file, else --data-dir's api-token, else VIGIL_API_TOKEN, else
VIGIL_API_TOKEN_FILE, else the api-token in VIGIL_DATA_DIR or vigil-data (the
server's default data directory). Flags win over the environment. For a server
started from `vigilctl init DIR`, the token is in DIR/server-data/api-token.

Exit status: 0 on success, 1 if the command failed (for REST calls: the
server's answer was not 2xx, and its detail is printed), 2 for bad usage.

Logging: VIGIL_LOG (or RUST_LOG) sets the filter; the demo is quiet unless it is set.";

/// Manage vigil identities and keys, sign and send commands, check audit
/// logs, and try vigil end to end.
#[derive(Debug, Parser)]
#[command(version, about, after_help = AFTER_HELP)]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
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
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Write a server identity, a client identity, a trusted-keys.json that
    /// trusts the client, and configs for both that pin each other.
    Init {
        /// Directory to write into (created if missing).
        dir: PathBuf,
        /// Address the server will listen on.
        #[arg(long, default_value = "127.0.0.1")]
        interface: IpAddr,
        /// Port the server will listen on.
        #[arg(long, default_value_t = 8443)]
        port: u16,
        /// Port of the server's REST API.
        #[arg(long, default_value_t = 8080)]
        http_port: u16,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
        /// Put the mods directory, the server's data (audit log, API token)
        /// and the client's state under this absolute directory instead of
        /// beside the configs: for a service, whose configuration directory
        /// is read-only (e.g. `vigilctl init /etc/vigil --var-dir
        /// /var/lib/vigil`).
        #[arg(long, value_name = "DIR")]
        var_dir: Option<PathBuf>,
    },
    /// Print the SHA-256 fingerprint of a certificate's public key, the same
    /// hex as `openssl x509 -in CERT -pubkey -noout | openssl pkey -pubin
    /// -outform der | sha256sum`.
    Fingerprint {
        /// PEM certificate files.
        #[arg(required = true)]
        certs: Vec<PathBuf>,
    },
    /// Run a server and a client on loopback with fresh identities and show,
    /// step by step, what vigil does.
    Demo,
    /// Send a command through the server (`POST /send`): the server signs a
    /// RUN command with its authority key, records it in its audit log and
    /// delivers it; the client runs it through the program its config maps
    /// the name to.
    ///
    /// Prints the server's JSON answer. Without --wait, that is 202 and the
    /// clients it was sent to; with --wait, each client's result. Exits 1
    /// when the answer is not 2xx (printing the server's detail), and with
    /// --wait also when a client did not report `done` in time.
    #[command(after_help = REST_HELP)]
    Send {
        /// The command name, as the client's [commands.NAME] tables know it.
        command: String,
        /// Arguments, as JSON (the program gets them on stdin and in
        /// VIGIL_ARGS).
        #[arg(long, value_name = "JSON")]
        args: Option<String>,
        /// Send to this client only (its key fingerprint, as `vigilctl
        /// clients` lists it) [default: every connected client].
        #[arg(long, value_name = "ID")]
        client: Option<String>,
        /// Wait up to SECS (at most 60) for the clients' results.
        #[arg(long, value_name = "SECS")]
        wait: Option<f64>,
        /// Why: signed into the command and recorded in the audit log.
        #[arg(long, value_name = "TEXT")]
        reason: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Sign a command offline with an authority key and print it as one
    /// line of JSON (nothing is sent; no network).
    ///
    /// Either from flags (--wa-id and the fields), or from FILE, a JSON
    /// unsigned command: {"command_type", "wa_id", "reason", and optionally
    /// "command_id", "issued_at", "expires_at", "target_agent_id",
    /// "target_tree_path", "parent_command_id", "relay_chain", "command",
    /// "args"}; a missing command_id or issued_at is filled in (a new id,
    /// now). The signature is CIRIS's: Ed25519 over Python's
    /// json.dumps(sign_data, sort_keys=True). Receivers accept it for 5
    /// minutes after issued_at; hand it to `vigilctl relay` within that.
    #[command(
        after_help = "Example:\n  vigilctl sign --key operator.key --wa-id wa_operator \\\n      --command uptime --reason 'check load' > cmd.json\n  vigilctl relay cmd.json --wait 10"
    )]
    Sign {
        /// The signing key: base64 of a 32-byte Ed25519 seed (`vigilctl
        /// keygen`, or operator.key from `vigilctl init`).
        #[arg(long, value_name = "FILE")]
        key: PathBuf,
        /// An unsigned command file to sign (`-` for standard input),
        /// instead of the flags.
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
        #[command(flatten)]
        fields: CommandFlags,
    },
    /// Post a command signed elsewhere (`vigilctl sign`) to the server
    /// (`POST /v1/commands`), which checks it against its authorities file
    /// and relays it to the clients byte for byte.
    ///
    /// Exits 1 when the server refuses it (forged, stale, replayed, key not
    /// enrolled...), printing its detail, and with --wait also when a client
    /// did not report `done` in time.
    #[command(after_help = REST_HELP)]
    Relay {
        /// The signed command, JSON (`-` for standard input).
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Wait up to SECS (at most 60) for the clients' results.
        #[arg(long, value_name = "SECS")]
        wait: Option<f64>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Build, sign and post a SHUTDOWN_NOW command to the server's CIRIS
    /// emergency endpoint (`POST /emergency/shutdown`; no token: the
    /// signature is the authentication), and print the answer.
    ///
    /// --target is an agent id: the server's own (its --agent-id, default
    /// its key fingerprint) stops the server; a connected client's
    /// fingerprint relays the shutdown to that client only; none relays it
    /// to every client and then stops the server. The key must be enrolled
    /// for SHUTDOWN_NOW in the server's authorities file. Exits 1 when the
    /// answer is not 200, printing the server's detail.
    #[command(name = "emergency-shutdown")]
    Emergency(EmergencyArgs),
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// List the connected clients (`GET /v1/clients`).
    #[command(after_help = REST_HELP)]
    Clients {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// List the modules the server has loaded (`GET /v1/modules`).
    #[command(after_help = REST_HELP)]
    Modules {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Show what became of a recent command, per client
    /// (`GET /v1/commands/ID`).
    #[command(name = "command", after_help = REST_HELP)]
    Status {
        /// The command id, as `send` and `relay` print it.
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Make a new Ed25519 authority key: write it (base64 of its seed, mode
    /// 0600) and print its public key and the authorities.json entry that
    /// enrols it.
    Keygen {
        /// Where to write the key.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// The authority id (`wa_id`) it signs as; receivers then refuse it
        /// under any other id [default: none, any wa_id].
        #[arg(long, value_name = "ID")]
        id: Option<String>,
        /// The command types it may issue, comma-separated.
        #[arg(
            long,
            value_name = "TYPES",
            value_delimiter = ',',
            default_value = "RUN"
        )]
        commands: Vec<String>,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Offline module keys and signed module manifests: `keygen` makes a
    /// module key, `sign` writes FILE.manifest beside a module. A server or
    /// client given the module keys (--module-keys) loads or trusts only
    /// modules whose manifest verifies. See docs/modules.md.
    Module {
        #[command(subcommand)]
        command: ModuleCommand,
    },
    /// Measure `POST /send` against a running server with one or more
    /// clients connected: N keep-alive connections send as fast as
    /// answers come back; prints requests/s and latency percentiles. See
    /// docs/benchmarks.md.
    #[command(hide = true)]
    BenchSend {
        /// Concurrent keep-alive connections.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Seconds of warm-up, not counted.
        #[arg(long, default_value_t = 1.0, value_name = "SECS")]
        warmup: f64,
        /// Seconds measured.
        #[arg(long, default_value_t = 5.0, value_name = "SECS")]
        duration: f64,
        /// The command name sent. A name the client has no program for
        /// keeps process spawning out of the figure (the client refuses it
        /// cheaply after verifying it).
        #[arg(long, default_value = "bench")]
        command: String,
        /// Arguments, as JSON.
        #[arg(long, value_name = "JSON")]
        args: Option<String>,
        /// Send to this client only.
        #[arg(long, value_name = "ID")]
        client: Option<String>,
        #[command(flatten)]
        api: ApiArgs,
    },
}

const REST_HELP: &str = "\
Token: --token, else --token-file, else --data-dir's api-token, else
VIGIL_API_TOKEN, else VIGIL_API_TOKEN_FILE, else the api-token in
VIGIL_DATA_DIR or vigil-data. For a server started from `vigilctl init DIR`,
the token is in DIR/server-data/api-token.";

/// `vigilctl emergency-shutdown`.
#[derive(Debug, clap::Args)]
pub(crate) struct EmergencyArgs {
    /// The signing key, enrolled for SHUTDOWN_NOW in the server's
    /// authorities file.
    #[arg(long, value_name = "FILE")]
    pub(crate) key: PathBuf,
    /// The authority id to sign as.
    #[arg(long, value_name = "ID")]
    pub(crate) wa_id: String,
    /// The agent to shut down (see above) [default: every client, then the
    /// server].
    #[arg(long, value_name = "ID")]
    pub(crate) target: Option<String>,
    /// Why: signed and recorded.
    #[arg(
        long,
        value_name = "TEXT",
        default_value = "emergency shutdown (vigilctl)"
    )]
    pub(crate) reason: String,
    /// Base URL of the server's REST API (plain HTTP).
    #[arg(long, env = "VIGIL_API", default_value = api::DEFAULT_API, value_name = "URL")]
    pub(crate) api: String,
}

#[derive(Debug, Subcommand)]
pub(crate) enum ModuleCommand {
    /// Make a new Ed25519 module key: write it (base64 of its seed, mode
    /// 0600) and print its key id (the hex SHA-256 of its public key) and a
    /// module keys file that lists it.
    ///
    /// A module key is not a command key: keep it offline, away from the
    /// server, and list only its public key in the module keys file that
    /// the server and the clients are given (--module-keys).
    #[command(
        after_help = "Example:\n  vigilctl module keygen --out module.key --keys-file module-keys.json"
    )]
    Keygen {
        /// Where to write the key.
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Also add its public key to this module keys file (made if
        /// missing; the keys already listed stay).
        #[arg(long, value_name = "FILE")]
        keys_file: Option<PathBuf>,
        /// Replace an existing key file.
        #[arg(long)]
        force: bool,
    },
    /// Sign a module: write FILE.manifest beside it, naming the module, its
    /// version, its SHA-256 and size, its target and ABI, the window in
    /// which it is valid, and the key id, signed with the module key.
    ///
    /// Deploy the module and its manifest into the mods directory as NAME
    /// and NAME.manifest. A server with --module-keys loads it only if the
    /// manifest verifies for its bytes and the version is not below one it
    /// loaded before; a client with module keys trusts it only on the same
    /// terms. Sign again, with a higher --version, for every new build, and
    /// before --expires comes.
    #[command(
        after_help = "Example:\n  cp target/release/libhello.so dist/hello.so\n  vigilctl module sign --key module.key --version 3 --expires 90d dist/hello.so\n  # dist/hello.so.manifest is written; deploy both files to mods/"
    )]
    Sign(crate::module::SignArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum AuditCommand {
    /// Check an audit log's hash chain from its first line: prints the
    /// records checked and the last seq and hash; on the first broken,
    /// missing or incomplete record, prints its line number, its seq and
    /// what is wrong, and exits 1.
    Verify {
        /// The log, e.g. DATA_DIR/audit.jsonl.
        file: PathBuf,
    },
}

/// Logs to stderr, with line breaks and control characters in logged
/// text escaped (attacker-chosen text cannot forge a line).
pub(crate) fn init_logging(default: &str, format: vigil_log::Format) {
    let filter = std::env::var("VIGIL_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.into());
    vigil_log::init(&filter, format);
}

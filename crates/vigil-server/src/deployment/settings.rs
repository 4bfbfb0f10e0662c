//! [`Settings`]: every setting of a deployment, each optional, as the
//! command line, the environment and a TOML file give them.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::DeploymentError;

/// Every setting of a [`Deployment`](crate::Deployment), each optional:
/// what is left out takes the default named in its description.
///
/// The same struct is read from a TOML file ([`Settings::from_file`]) and,
/// with the `cli` feature, from flags and `VIGIL_*` environment variables
/// (it derives `clap::Args`); [`Settings::or`] layers one over another.
/// Nothing is checked until [`Deployment::build`](crate::Deployment::build).
#[derive(Debug, Clone, Default, Deserialize)]
#[cfg_attr(feature = "cli", derive(clap::Args))]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Settings {
    /// Address to listen on [default: 127.0.0.1].
    #[cfg_attr(feature = "cli", arg(long, env = "VIGIL_INTERFACE", value_name = "IP"))]
    pub interface: Option<IpAddr>,
    /// Port to listen on [default: 8443].
    #[cfg_attr(feature = "cli", arg(long, env = "VIGIL_PORT"))]
    pub port: Option<u16>,
    /// Port of the WebSocket transport, on the same interface: clients
    /// connect to wss://HOST:PORT/vigil, through HTTP proxies if need be,
    /// with the same pinned mutual TLS [default: none, not served].
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VIGIL_WSS_PORT", value_name = "PORT")
    )]
    pub wss_port: Option<u16>,
    /// NATS URLs of the cluster to join (nats://HOST:PORT, comma-separated
    /// or repeated; TLS either way): commands from any server of the
    /// cluster reach its clients, and /v1/clients lists the whole fleet
    /// [default: none, this server alone].
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VIGIL_CLUSTER", value_name = "URL", value_delimiter = ',')
    )]
    pub cluster: Option<Vec<String>>,
    /// Fingerprints (SHA-256 of the key, hex) of the NATS nodes' keys:
    /// the only NATS nodes this server talks to (comma-separated or
    /// repeated; needed with --cluster).
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            env = "VIGIL_CLUSTER_PINS",
            value_name = "FINGERPRINT",
            value_delimiter = ','
        )
    )]
    pub cluster_pins: Option<Vec<vigil_auth::Fingerprint>>,
    /// Seconds this server's cluster membership lasts unless renewed (it
    /// renews every third of it): its clients count as attached nowhere
    /// this long after it dies [default: 15].
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VIGIL_CLUSTER_LEASE", value_name = "SECS")
    )]
    pub cluster_lease: Option<f64>,
    /// Server certificate, PEM [default: server.crt].
    #[cfg_attr(feature = "cli", arg(long, env = "VIGIL_CERT", value_name = "FILE"))]
    pub cert: Option<PathBuf>,
    /// Server private key, PEM [default: server.key].
    #[cfg_attr(feature = "cli", arg(long, env = "VIGIL_KEY", value_name = "FILE"))]
    pub key: Option<PathBuf>,
    /// Trusted client fingerprints [default: trusted-keys.json].
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VIGIL_TRUSTED_KEYS", value_name = "FILE")
    )]
    pub trusted_keys: Option<PathBuf>,
    /// Directory of module dylibs (*.so), watched for changes [default: mods].
    #[cfg_attr(feature = "cli", arg(long, env = "VIGIL_MODS", value_name = "DIR"))]
    pub mods: Option<PathBuf>,
    /// Module keys file (JSON, `{"module_keys": [...]}`, see docs/modules.md):
    /// with it, a module is loaded only if its signed manifest
    /// (`<module>.manifest`, beside it) verifies for its bytes, and never
    /// in a version below one loaded before (remembered in the data
    /// directory, module-versions.json) [default: none, manifests are not
    /// read].
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VIGIL_MODULE_KEYS", value_name = "FILE")
    )]
    pub module_keys: Option<PathBuf>,
    /// The module host program, which runs each module in a sandboxed
    /// process [default: vigil-module-host beside this program].
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VIGIL_MODULE_HOST", value_name = "FILE")
    )]
    pub module_host: Option<PathBuf>,
    /// MiB of address space each module's host may use, unless its
    /// `[sandbox."<module>"]` table says otherwise [default: 1024].
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VIGIL_MODULE_MEMORY_MIB", value_name = "MIB")
    )]
    pub module_memory_mib: Option<u64>,
    /// What named modules may do instead of the default sandbox (TOML
    /// only: `[sandbox."hello.so"]` with `memory_mib`, `open_files`,
    /// `network`, `write_paths`; see docs/modules.md).
    #[cfg_attr(feature = "cli", arg(skip))]
    pub sandbox: Option<std::collections::BTreeMap<String, vigil_modules::SandboxPolicy>>,
    /// Seconds a module run may take before the client gets an error [default: 10].
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VIGIL_EXEC_TIMEOUT", value_name = "SECS")
    )]
    pub exec_timeout: Option<f64>,
    /// Ed25519 authority key (base64 of its 32-byte seed) that signs
    /// heartbeats and the server's own commands. Without it no heartbeats
    /// are sent and clients' failsafes fire.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VIGIL_AUTHORITY_KEY", value_name = "FILE")
    )]
    pub authority_key: Option<PathBuf>,
    /// The id the server signs as (`wa_id`) [default: vigil-server].
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VIGIL_AUTHORITY_ID", value_name = "ID")
    )]
    pub authority_id: Option<String>,
    /// Seconds between heartbeats; at most half the clients' failsafe
    /// timeout [default: 5].
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VIGIL_HEARTBEAT_INTERVAL", value_name = "SECS")
    )]
    pub heartbeat_interval: Option<f64>,
    /// Address of the REST API [default: 127.0.0.1].
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VIGIL_HTTP_INTERFACE", value_name = "IP")
    )]
    pub http_interface: Option<IpAddr>,
    /// Port of the REST API [default: 8080].
    #[cfg_attr(feature = "cli", arg(long, env = "VIGIL_HTTP_PORT"))]
    pub http_port: Option<u16>,
    /// Directory for the server's state: the REST API token (made on first
    /// start, mode 0600), the audit log, the relay replay guard, the module
    /// version marks [default: vigil-data].
    #[cfg_attr(feature = "cli", arg(long, env = "VIGIL_DATA_DIR", value_name = "DIR"))]
    pub data_dir: Option<PathBuf>,
    /// Bearer token for the REST API, instead of the one in the data dir.
    #[cfg_attr(
        feature = "cli",
        arg(
            long,
            env = "VIGIL_API_TOKEN",
            value_name = "TOKEN",
            hide_env_values = true
        )
    )]
    pub api_token: Option<String>,
    /// Authorities whose signed commands the server relays
    /// (`POST /v1/commands`) and whose SHUTDOWN_NOW it obeys
    /// (`POST /emergency/shutdown`); the same format as the client's.
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VIGIL_AUTHORITIES", value_name = "FILE")
    )]
    pub authorities: Option<PathBuf>,
    /// This server's own agent id, for an emergency shutdown aimed at it
    /// [default: its key fingerprint].
    #[cfg_attr(feature = "cli", arg(long, env = "VIGIL_AGENT_ID", value_name = "ID"))]
    pub agent_id: Option<String>,
    /// Most connections at once, counting handshakes [default: 16384].
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VIGIL_MAX_CONNECTIONS", value_name = "N")
    )]
    pub max_connections: Option<usize>,
    /// Seconds a peer has to finish the TLS handshake [default: 10].
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VIGIL_HANDSHAKE_TIMEOUT", value_name = "SECS")
    )]
    pub handshake_timeout: Option<f64>,
    /// Seconds a client may stay silent before it is disconnected [default: 90].
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VIGIL_IDLE_TIMEOUT", value_name = "SECS")
    )]
    pub idle_timeout: Option<f64>,
    /// KiB queued for one client (heartbeats, broadcasts, commands) before
    /// it is disconnected as a slow consumer [default: 256].
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VIGIL_MAX_OUTBOUND_KIB", value_name = "KIB")
    )]
    pub max_outbound_kib: Option<usize>,
    /// Seconds a client may leave the server's writes blocked before it is
    /// disconnected as a slow consumer [default: 30].
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VIGIL_WRITE_STALL_TIMEOUT", value_name = "SECS")
    )]
    pub write_stall_timeout: Option<f64>,
    /// Seconds a REST client has to send a request's head, then its body
    /// [default: 10].
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VIGIL_HTTP_READ_TIMEOUT", value_name = "SECS")
    )]
    pub http_read_timeout: Option<f64>,
    /// Most REST connections at once; when they run out, the one that has
    /// waited longest for a request gives way [default: 1024].
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VIGIL_HTTP_MAX_CONNECTIONS", value_name = "N")
    )]
    pub http_max_connections: Option<usize>,
    /// REST connections from one address that may wait for a request at
    /// once; past it, that address's oldest gives way [default: 64].
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VIGIL_HTTP_MAX_WAITING_PER_SOURCE", value_name = "N")
    )]
    pub http_max_waiting_per_source: Option<usize>,
    /// TLS handshakes in progress from one address; past it, that
    /// address's oldest gives way [default: 256].
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VIGIL_MAX_HANDSHAKES_PER_SOURCE", value_name = "N")
    )]
    pub max_handshakes_per_source: Option<usize>,
    /// Most commands written to one client and not yet answered; the rest
    /// wait at the server (up to --max-outbound-kib), past which a command
    /// is not queued (queue_full) [default: 64].
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VIGIL_COMMAND_WINDOW", value_name = "N")
    )]
    pub command_window: Option<usize>,
    /// Seconds a client has to answer a command; past it the command's
    /// outcome is "unanswered" [default: 600].
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VIGIL_ACK_TIMEOUT", value_name = "SECS")
    )]
    pub ack_timeout: Option<f64>,
    /// This server's place in the agent tree, root first, entries separated
    /// by `/` (in a TOML file, also a list): an emergency shutdown scoped
    /// to a subtree stops the server only if this place is in it
    /// [default: none, the root].
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VIGIL_TREE_PATH", value_name = "PATH")
    )]
    pub tree_path: Option<TreePath>,
    /// KiB after which the audit log's open segment is sealed and a new one
    /// started; a start reads only the open segment whole [default: 16384].
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VIGIL_AUDIT_SEGMENT_KIB", value_name = "KIB")
    )]
    pub audit_segment_kib: Option<u64>,
    /// Hours after which the open segment is sealed [default: 24].
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VIGIL_AUDIT_SEGMENT_HOURS", value_name = "HOURS")
    )]
    pub audit_segment_hours: Option<f64>,
    /// Sealed audit segments kept; older ones are deleted, and the chain
    /// records which (0: keep every one) [default: 256].
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VIGIL_AUDIT_KEEP_SEGMENTS", value_name = "N")
    )]
    pub audit_keep_segments: Option<usize>,
    /// Sealed audit segments older than this many days are deleted the same
    /// way [default: none, no age limit].
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VIGIL_AUDIT_KEEP_DAYS", value_name = "DAYS")
    )]
    pub audit_keep_days: Option<f64>,
    /// KiB the audit log holds in reserve (in audit.jsonl.reserve) so that
    /// an authorized SHUTDOWN_NOW is recorded and carried out when the disk
    /// is otherwise full (0: none) [default: 1024].
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VIGIL_AUDIT_RESERVE_KIB", value_name = "KIB")
    )]
    pub audit_reserve_kib: Option<u64>,
    /// Seconds between the audit records that count refused unauthenticated
    /// traffic (refusals.summary); meanwhile only the first refusal of each
    /// source is recorded on its own [default: 60].
    #[cfg_attr(
        feature = "cli",
        arg(long, env = "VIGIL_REFUSAL_SUMMARY_INTERVAL", value_name = "SECS")
    )]
    pub refusal_summary_interval: Option<f64>,
}

/// A place in the agent tree, root first: `a/b/c` on the command line, a
/// string or a list of strings in a TOML file. Checked when the deployment
/// is built.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "TreePathForm")]
pub struct TreePath(pub Vec<String>);

#[derive(Deserialize)]
#[serde(untagged)]
enum TreePathForm {
    Text(String),
    List(Vec<String>),
}

impl From<TreePathForm> for TreePath {
    fn from(form: TreePathForm) -> TreePath {
        match form {
            TreePathForm::Text(text) => TreePath::from_text(&text),
            TreePathForm::List(list) => TreePath(list),
        }
    }
}

impl TreePath {
    fn from_text(text: &str) -> TreePath {
        TreePath(
            text.split('/')
                .filter(|p| !p.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }
}

impl std::str::FromStr for TreePath {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<TreePath, Self::Err> {
        Ok(TreePath::from_text(text))
    }
}

/// `ours.or(theirs)` for each field, in one place.
macro_rules! layer {
    ($upper:ident, $lower:ident: $($field:ident),* $(,)?) => {
        Settings { $($field: $upper.$field.or($lower.$field)),* }
    };
}

/// Each path field, in one place.
macro_rules! paths {
    ($settings:ident: $($field:ident),* $(,)?) => {
        [$(&mut $settings.$field),*]
    };
}

impl Settings {
    /// Reads a TOML file of settings (unknown keys are refused), after
    /// checking that others cannot write it. Relative paths in it are made
    /// relative to the file's directory.
    pub fn from_file(path: &Path) -> Result<Settings, DeploymentError> {
        vigil_auth::check_permissions(path, "config file")
            .map_err(|e| DeploymentError::file(path, "config file", e))?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| DeploymentError::file(path, "cannot read config file", e))?;
        let mut settings: Settings =
            toml::from_str(&text).map_err(|e| DeploymentError::file(path, "config file", e))?;
        let base = path.parent().unwrap_or(Path::new(""));
        for p in
            paths!(settings: cert, key, trusted_keys, mods, module_keys, module_host, authority_key, data_dir, authorities)
                .into_iter()
                .flatten()
        {
            *p = base.join(&*p);
        }
        for policy in settings.sandbox.iter_mut().flat_map(|s| s.values_mut()) {
            for p in &mut policy.write_paths {
                *p = base.join(&*p);
            }
        }
        Ok(settings)
    }

    /// These settings, with what they leave out taken from `lower`.
    pub fn or(self, lower: Settings) -> Settings {
        let upper = self;
        layer!(upper, lower:
            interface, port, wss_port, cluster, cluster_pins, cluster_lease, cert, key, trusted_keys, mods, module_keys, module_host,
            module_memory_mib, sandbox, exec_timeout,
            authority_key, authority_id, heartbeat_interval, http_interface,
            http_port, data_dir, api_token, authorities, agent_id,
            max_connections, handshake_timeout, idle_timeout, max_outbound_kib,
            write_stall_timeout, http_read_timeout, http_max_connections,
            http_max_waiting_per_source, max_handshakes_per_source,
            command_window, ack_timeout, tree_path, audit_segment_kib,
            audit_segment_hours, audit_keep_segments, audit_keep_days,
            audit_reserve_kib, refusal_summary_interval,
        )
    }
}

//! Server settings.

use std::net::SocketAddr;
use std::time::Duration;

use vigil_auth::{Fingerprint, Identity, TrustStore};
use vigil_modules::ModuleRegistry;
use vigil_proto::Limits;

/// Default port, as VeriPy's.
pub const DEFAULT_PORT: u16 = 8443;
/// Default time a peer has to finish the TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time a session may stay silent before it is closed. Clients ping
/// well within it.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Default cap on connections, counting those still in the handshake.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// Default cap on TLS handshakes in progress from one source address.
pub const DEFAULT_MAX_HANDSHAKES_PER_SOURCE: usize = 256;
/// Default bytes queued for one client (heartbeats, broadcasts, commands)
/// before it counts as a slow consumer and is disconnected: about 370
/// commands or 650 heartbeats.
pub const DEFAULT_MAX_OUTBOUND_BYTES: usize = 256 * 1024;
/// Default time a client may leave the server's writes blocked (it does
/// not read) before it counts as a slow consumer and is disconnected.
pub const DEFAULT_WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// Default time given to sessions to finish when the server shuts down.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Default time between heartbeats: a third of FailsafeAPI's 15 s failsafe
/// timeout, so that one lost beat does not fire a client's failsafe.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// Default most commands written to one client and not yet answered; the
/// rest wait in the server's queue for that client.
pub const DEFAULT_COMMAND_WINDOW: usize = 64;
/// Default time a client has to answer a command it was sent; past it the
/// command's outcome is `unanswered`.
pub const DEFAULT_ACK_TIMEOUT: Duration = Duration::from_secs(10 * 60);

/// Default time between two `refusals.summary` audit records.
pub const DEFAULT_REFUSAL_SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// Default `wa_id` of the server's authority key.
pub const DEFAULT_AUTHORITY_ID: &str = "vigil-server";

/// Default number of module runs in flight for one session (each a batch
/// of the calls that arrived together, run one after another).
pub const DEFAULT_MAX_EXECS_PER_SESSION: usize = 32;

/// Everything a [`Server`](crate::Server) needs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// Address to listen on for mTLS clients.
    pub listen: SocketAddr,
    /// Address of the WebSocket transport, if it is served: the same
    /// pinned mutual TLS, then an upgrade on `/vigil` (see
    /// [`vigil_ws`]). Its sessions are the same as the main port's.
    pub wss_listen: Option<SocketAddr>,
    /// The server's certificate and key.
    pub identity: Identity,
    /// Trusted client fingerprints; changes take effect at once.
    pub trust: TrustStore,
    /// Frame size limits.
    pub limits: Limits,
    /// Time a peer has to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time a session may stay silent before it is closed.
    pub idle_timeout: Duration,
    /// Most connections at once, counting those in the handshake. When
    /// they run out, the oldest handshake in progress gives way to a new
    /// connection; only when every connection is a session is a new one
    /// refused.
    pub max_connections: usize,
    /// Most TLS handshakes in progress from one source address; past it,
    /// that source's oldest handshake gives way.
    pub max_handshakes_per_source: usize,
    /// Bytes queued for one client before it is disconnected as too slow.
    /// A module sent in answer to `mod:verify` does not count (it is
    /// shared by every reply); at most two such answers wait per client.
    pub max_outbound_bytes: usize,
    /// Time the client may leave writes blocked before it is disconnected
    /// as too slow.
    pub write_stall_timeout: Duration,
    /// Time sessions get to finish at shutdown.
    pub drain_timeout: Duration,
    /// The modules served, if any; without a registry `mod:sync` lists
    /// nothing.
    pub modules: Option<ModuleRegistry>,
    /// Module runs in flight per session; more requests wait. Calls that
    /// arrive together run as one batch, one after another, on one thread.
    pub max_execs_per_session: usize,
    /// The server's Ed25519 authority: signs heartbeats and the commands
    /// it issues itself. Without it, no heartbeats are sent.
    pub authority: Option<Authority>,
    /// Time between heartbeats; at most half the clients' failsafe timeout.
    pub heartbeat_interval: Duration,
    /// The audit log. Commands are recorded before they are sent, and not
    /// sent if they cannot be recorded. [`Server::bind`](crate::Server::bind)
    /// refuses a configuration without one unless
    /// [`ServerConfig::dangerous`] allowed it.
    pub audit: Option<vigil_audit::AuditLog>,
    /// The server's own agent id, for CIRIS `target_agent_id` (default: its
    /// key fingerprint in hex).
    pub agent_id: String,
    /// The server's own place in the agent tree (default: none, the root):
    /// an emergency shutdown scoped to a subtree stops the server only if
    /// this path is in it.
    pub tree_path: Vec<String>,
    /// Most commands written to one client and not yet answered; the rest
    /// wait at the server, in a queue bounded by `max_outbound_bytes`, past
    /// which a command is not queued (`queue_full`). Emergency commands
    /// and heartbeats do not wait for it.
    pub command_window: usize,
    /// Time a client has to answer a command; past it the command's
    /// outcome is `unanswered`.
    pub ack_timeout: Duration,
    /// How often the counts of refused unauthenticated traffic (TLS
    /// handshakes, emergency attempts) are written as one
    /// `refusals.summary` audit record; in each such window only the first
    /// refusal of each source, a few dozen at most, is recorded on its own.
    pub refusal_summary_interval: Duration,
    /// The cluster to join over NATS (default: none, a server alone).
    pub cluster: Option<ClusterSettings>,
    /// What checks a `SHUTDOWN_NOW` another server of the cluster sends to
    /// everyone (or to a subtree holding this server) before this server
    /// stops for it: the emergency authorities of the REST API's relay
    /// (default: none; the command still reaches this server's clients,
    /// which check it themselves, and the server stays up).
    pub emergency_relay: Option<crate::Relay>,
    /// Set only through [`ServerConfig::dangerous`].
    pub(crate) unaudited: bool,
}

/// How a server joins a cluster: the NATS nodes it connects to (over TLS,
/// presenting its own identity) and the fingerprints of their keys.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClusterSettings {
    /// NATS URLs (`nats://host:port`).
    pub urls: Vec<String>,
    /// The NATS nodes' key fingerprints.
    pub pins: Vec<Fingerprint>,
    /// How long the server's membership lasts unless renewed (see
    /// [`vigil_cluster::DEFAULT_LEASE`]).
    pub lease: Duration,
}

impl ClusterSettings {
    /// NATS at `urls`, whose nodes hold the keys of `pins`, with the
    /// default lease.
    pub fn new(urls: Vec<String>, pins: Vec<Fingerprint>) -> ClusterSettings {
        ClusterSettings {
            urls,
            pins,
            lease: vigil_cluster::DEFAULT_LEASE,
        }
    }
}

/// The server's signing key and the id it signs as (`wa_id`).
#[derive(Clone)]
pub struct Authority {
    /// The Ed25519 signing key.
    pub key: vigil_command::SigningKey,
    /// The id commands carry as `wa_id`; clients enrol the key under it.
    pub id: String,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("id", &self.id)
            .field(
                "public_key",
                &vigil_command::encode_public_key(&self.key.verifying_key()),
            )
            .finish_non_exhaustive()
    }
}

impl ServerConfig {
    /// Settings with defaults for everything but the address, the identity
    /// and the trust store.
    pub fn new(listen: SocketAddr, identity: Identity, trust: TrustStore) -> Self {
        let agent_id = identity.fingerprint().to_hex();
        ServerConfig {
            listen,
            wss_listen: None,
            identity,
            trust,
            limits: Limits::default(),
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_handshakes_per_source: DEFAULT_MAX_HANDSHAKES_PER_SOURCE,
            max_outbound_bytes: DEFAULT_MAX_OUTBOUND_BYTES,
            write_stall_timeout: DEFAULT_WRITE_STALL_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            modules: None,
            max_execs_per_session: DEFAULT_MAX_EXECS_PER_SESSION,
            authority: None,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            audit: None,
            agent_id,
            tree_path: Vec::new(),
            command_window: DEFAULT_COMMAND_WINDOW,
            ack_timeout: DEFAULT_ACK_TIMEOUT,
            refusal_summary_interval: DEFAULT_REFUSAL_SUMMARY_INTERVAL,
            cluster: None,
            emergency_relay: None,
            unaudited: false,
        }
    }

    /// Settings that take a risk the server otherwise refuses, each named
    /// for what it gives up (as `rustls`' `dangerous()`).
    pub fn dangerous(&mut self) -> DangerousServerConfig<'_> {
        DangerousServerConfig { config: self }
    }
}

/// What [`ServerConfig::dangerous`] allows.
#[derive(Debug)]
pub struct DangerousServerConfig<'a> {
    config: &'a mut ServerConfig,
}

impl DangerousServerConfig<'_> {
    /// Runs without an audit log: nothing the server does or is asked to
    /// do is recorded, and the REST API's routes that send commands answer
    /// 503. For tests and benchmarks of the transport alone.
    pub fn run_without_audit_log(&mut self) -> &mut Self {
        self.config.unaudited = true;
        self
    }
}

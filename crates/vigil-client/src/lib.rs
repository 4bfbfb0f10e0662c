//! The vigil client as a library.
//!
//! [`Connection`] is one pinned mutual-TLS connection to a server: it
//! matches responses to requests by REF, delivers broadcasts separately,
//! pings when idle and notices a server that went silent. [`Client`] keeps
//! a connection up: it connects, syncs, reports what it learns as
//! [`ClientEvent`]s, and reconnects with exponential backoff and jitter when
//! the connection drops.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use vigil_auth::Identity;
//! use vigil_client::{ClientConfig, Connection};
//!
//! let identity = Identity::load("client.crt".as_ref(), "client.key".as_ref())?;
//! let pin = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".parse()?;
//! let config = ClientConfig::new("127.0.0.1:8443", identity, pin);
//! let conn = Connection::connect(&config).await?;
//! for module in conn.sync().await? {
//!     println!("{} {}", module.name, module.sum);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! A client that takes signed commands runs them through a
//! [`CommandHandler`]; [`handler_fn`] makes one from a closure, and what it
//! needs is re-exported here. The failsafe fires when verified heartbeats
//! or commands stop for its timeout. A heartbeat counts when it covers a
//! nonce this client sent recently, timed on its monotonic clock
//! ([`HeartbeatFreshness`]), so the failsafe does not depend on the
//! client's clock agreeing with the server's; the offset it measures is
//! logged and reported. `cargo run -p vigil-server --example
//! embedded` runs this against an embedded server.
//!
//! ```no_run
//! # async fn demo(identity: vigil_client::Identity, pin: vigil_client::Fingerprint,
//! #     authorities: vigil_client::Authorities, server_key: vigil_client::VerifyingKey)
//! #     -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use vigil_client::*;
//!
//! let verifier = Verifier::new(authorities)
//!     .with_own_agent_id(pin.to_hex())
//!     .with_replay_guard(Arc::new(ReplayGuard::open("replay.log", std::time::SystemTime::now())?));
//! let handler = handler_fn(|command: String, _args: Value| async move {
//!     Ok(Value::String(format!("ran {command}")))
//! });
//! let mut config = ClientConfig::new("127.0.0.1:8443", identity, pin);
//! config.commands = Some(CommandSettings::new(verifier, server_key, Arc::new(handler))?);
//! let outcome = Client::new(config).run(CancellationToken::new()).await;
//! println!("{outcome:?}");
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod commands;
mod connection;
mod error;
mod handler;
mod supervisor;

use std::time::Duration;

pub use commands::{
    CommandSettings, DEFAULT_COMMAND_TIMEOUT, HeartbeatFreshness, RUN, SHUTDOWN_NOW,
};
pub use connection::{COMMAND_QUEUE, Connection, Pushed, PushedBody};
pub use error::ClientError;
pub use handler::{
    BreakCommand, CommandHandler, FnHandler, ProgramHandler, ProgramSpec, handler_fn,
};
// What a client with its own handler needs, without naming six crates.
pub use futures_util::future::BoxFuture;
pub use serde_json::Value;
pub use supervisor::{Backoff, Client, ClientEvent, RunOutcome, Stuck};
pub use tokio_util::sync::CancellationToken;
pub use vigil_auth::{Fingerprint, Identity};
pub use vigil_command::{
    Authorities, AuthorityKey, ModuleKeys, ModuleTrust, ReplayGuard, Verifier, VerifyingKey,
    VersionStore, decode_public_key,
};
use vigil_proto::Limits;

/// Default time to connect and to complete the handshake.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time to wait for a response.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Default idle time after which the client pings.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(30);
/// Default silence from the server after which the connection is given up.
pub const DEFAULT_LIVENESS_TIMEOUT: Duration = Duration::from_secs(75);

/// Everything a client needs to reach a server.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The server: `HOST:PORT` of its main port, or `wss://HOST:PORT/vigil`
    /// for its WebSocket transport (the same frames and the same pinned
    /// mutual TLS, through HTTP proxies).
    pub server: String,
    /// An HTTP `CONNECT` proxy to reach the server through (`None`:
    /// straight). The pinned TLS runs inside the tunnel, end to end. Not
    /// read from the environment here: the binary takes `HTTPS_PROXY`.
    pub proxy: Option<vigil_ws::Proxy>,
    /// This client's certificate and key.
    pub identity: Identity,
    /// The fingerprint the server's key must have.
    pub server_fingerprint: Fingerprint,
    /// Other fingerprints the server's key may have (a key being rotated:
    /// pin the new one beside the old, then drop the old).
    pub server_pins: Vec<Fingerprint>,
    /// The other servers of its cluster, each with its pins: when the
    /// connection to one is lost, the client tries another (see
    /// [`Client`]).
    pub failover: Vec<ServerEndpoint>,
    /// Frame size limits.
    pub limits: Limits,
    /// Time to connect and to complete the handshake.
    pub connect_timeout: Duration,
    /// Time to wait for a response.
    pub request_timeout: Duration,
    /// Idle time after which the client pings the server.
    pub ping_interval: Duration,
    /// Silence from the server after which the connection is given up; it
    /// must be longer than `ping_interval` plus a round trip.
    pub liveness_timeout: Duration,
    /// Reconnect delays.
    pub backoff: Backoff,
    /// Signed commands, heartbeats and the failsafe; `None` for a client
    /// that takes no commands (every command is refused).
    pub commands: Option<CommandSettings>,
    /// Where this client stands (agent id, tree path), said to the server
    /// right after connecting (`sys:hello`) so that it can route commands
    /// aimed at an agent id or a subtree here. `None`: the server routes
    /// to this client by fingerprint only.
    pub hello: Option<vigil_proto::Hello>,
    /// Pinned module keys and the version marks: when set, a module is
    /// trusted (and may run) only if the manifest that comes with its
    /// bytes verifies for them, names it, is within its window and is not
    /// of a version below the highest trusted before; the mark is raised
    /// only then. `None`: modules are checked by their sum alone.
    pub module_trust: Option<ModuleTrust>,
}

impl ClientConfig {
    /// Settings with defaults for everything but the server, the identity
    /// and the pin.
    pub fn new(
        server: impl Into<String>,
        identity: Identity,
        server_fingerprint: Fingerprint,
    ) -> Self {
        ClientConfig {
            server: server.into(),
            proxy: None,
            identity,
            server_fingerprint,
            server_pins: Vec::new(),
            failover: Vec::new(),
            limits: Limits::default(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            ping_interval: DEFAULT_PING_INTERVAL,
            liveness_timeout: DEFAULT_LIVENESS_TIMEOUT,
            backoff: Backoff::default(),
            commands: None,
            hello: None,
            module_trust: None,
        }
    }

    /// The pins of `server`: `server_fingerprint`, then `server_pins`.
    pub fn pins(&self) -> Vec<Fingerprint> {
        let mut pins = vec![self.server_fingerprint];
        pins.extend(
            self.server_pins
                .iter()
                .filter(|p| **p != self.server_fingerprint),
        );
        pins
    }

    /// Every server this client may connect to: `server`, then
    /// `failover`.
    pub fn endpoints(&self) -> Vec<ServerEndpoint> {
        let mut all = vec![ServerEndpoint {
            address: self.server.clone(),
            pins: self.pins(),
        }];
        all.extend(self.failover.iter().cloned());
        all
    }

    /// This configuration aimed at `endpoint` (its address and pins).
    /// `None` for an endpoint without a pin.
    pub fn for_endpoint(&self, endpoint: &ServerEndpoint) -> Option<ClientConfig> {
        let (first, rest) = endpoint.pins.split_first()?;
        let mut config = self.clone();
        config.server = endpoint.address.clone();
        config.server_fingerprint = *first;
        config.server_pins = rest.to_vec();
        config.failover = Vec::new();
        Some(config)
    }
}

/// A server a client may connect to: `HOST:PORT` or `wss://HOST:PORT/vigil`,
/// and the fingerprints its key may have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerEndpoint {
    /// Where it listens.
    pub address: String,
    /// The fingerprints its key may have (at least one).
    pub pins: Vec<Fingerprint>,
}

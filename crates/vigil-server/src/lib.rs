//! The vigil server as a library.
//!
//! A [`Server`] accepts mutual-TLS clients that it knows only by the
//! fingerprint of their key (see [`vigil_auth`]), and serves the vigil
//! protocol ([`vigil_proto`]) on each connection. Every frame is answered:
//! a request with its response, anything malformed or not understood with
//! an `err` frame. Handshakes and silent sessions are bounded in time, the
//! number of connections is capped, and a client whose fingerprint is
//! removed from the trust file loses its session at once.
//!
//! A [`Deployment`] is the one composition root: it owns the server, the
//! REST API ([`HttpServer`]), the trust and module watchers and the audit
//! log, built from one validated [`Settings`] (a TOML file, flags, or
//! fields set in code) or from a [`ServerConfig`] assembled by hand. The
//! binary `vigil-server` only reads flags into [`Settings`] and runs a
//! deployment; other programs embed one the same way:
//!
//! ```no_run
//! # async fn demo() -> Result<(), vigil_server::DeploymentError> {
//! use vigil_server::{Deployment, Settings};
//!
//! let settings = Settings::from_file("server.toml".as_ref())?;
//! let running = Deployment::build(settings)?.start().await?;
//! println!("clients pin {}", running.fingerprint());
//! let handle = running.handle();
//! tokio::spawn(async move {
//!     let _ = tokio::signal::ctrl_c().await;
//!     handle.shutdown();
//! });
//! running.run().await?;
//! # Ok(())
//! # }
//! ```
#![deny(missing_docs)]

mod admission;
mod audit;
mod config;
mod delivery;
mod deployment;
mod http;
mod outbound;
mod record;
mod refusals;
mod route;
mod server;
mod text;

pub use config::{
    Authority, ClusterSettings, DEFAULT_ACK_TIMEOUT, DEFAULT_AUTHORITY_ID, DEFAULT_COMMAND_WINDOW,
    DEFAULT_DRAIN_TIMEOUT, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_EXECS_PER_SESSION,
    DEFAULT_MAX_HANDSHAKES_PER_SOURCE, DEFAULT_MAX_OUTBOUND_BYTES, DEFAULT_PORT,
    DEFAULT_REFUSAL_SUMMARY_INTERVAL, DEFAULT_WRITE_STALL_TIMEOUT, DangerousServerConfig,
    ServerConfig,
};
pub use delivery::{ClientOutcome, Delivery, DeliveryReport, Outcome, Target};
pub use deployment::{Deployment, DeploymentError, Running, Settings, TreePath};
pub use http::{
    DEFAULT_HTTP_PORT, DEFAULT_HTTP_WAITING_PER_SOURCE, DEFAULT_MAX_BODY,
    DEFAULT_MAX_HTTP_CONNECTIONS, DEFAULT_READ_TIMEOUT, HttpConfig, HttpServer, MAX_WAIT,
};
pub use record::{CommandRecord, TargetState};
pub use server::{Counter, Fault, Part, Relay, Server, ServerHandle, ServerStats, Unresponsive};
pub use server::{SessionInfo, Transport};

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Auth(#[from] vigil_auth::AuthError),
    /// The server has no authority key, so it cannot sign.
    #[error("the server has no authority key (--authority-key): it cannot sign commands")]
    NoAuthority,
    /// A command could not be signed.
    #[error("cannot sign the command: {0}")]
    Sign(String),
    /// The command asked for is not one clients would accept (a field
    /// too long, arguments that cannot be signed).
    #[error("bad command: {0}")]
    BadCommand(String),
    /// The configuration has no audit log and did not say it may run
    /// without one ([`ServerConfig::dangerous`]).
    #[error(
        "the server has no audit log: give it one, or allow running without one with ServerConfig::dangerous()"
    )]
    NoAuditLog,
    /// The cluster link could not be set up (a bad NATS URL, no pin).
    #[error("cannot join the cluster: {0}")]
    Cluster(String),
    /// The audit log could not record the action, so it was not taken.
    #[error("the audit log cannot record this, so it was not done: {0}")]
    // Its text is in the message (REST answers show it), so it is not a
    // `source` as well: a printed chain would say it twice.
    Audit(vigil_audit::AuditError),
}

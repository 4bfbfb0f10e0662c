//! The error type of this crate.

use std::sync::Arc;

use vigil_auth::PeerRejected;
use vigil_proto::ErrorBody;

/// What went wrong talking to a server. Cheap to clone.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The TCP connection could not be made.
    #[error("cannot connect to {server}: {source}")]
    Connect {
        /// The server address.
        server: String,
        /// The OS error.
        source: Arc<std::io::Error>,
    },
    /// The server's address is neither `HOST:PORT` nor `wss://...`.
    #[error("{0}")]
    Address(String),
    /// The HTTP proxy could not be used, or refused the tunnel.
    #[error(transparent)]
    Proxy(Arc<vigil_ws::ProxyError>),
    /// The WebSocket upgrade was refused or broke off.
    #[error(transparent)]
    WebSocket(Arc<vigil_ws::UpgradeError>),
    /// The server refused this client's certificate (a TLS alert on the
    /// first read after the handshake).
    #[error(
        "the server refused our certificate (TLS alert: {alert}); is this client's fingerprint in the server's trusted-keys.json?"
    )]
    CertificateRefused {
        /// The alert the server sent.
        alert: String,
    },
    /// The server's key is not the pinned one.
    #[error("refusing the server: {0}")]
    WrongServer(PeerRejected),
    /// TLS failed for another reason.
    #[error("TLS: {0}")]
    Tls(Arc<std::io::Error>),
    /// An operation took too long.
    #[error("timed out waiting for the {0}")]
    Timeout(&'static str),
    /// The connection ended.
    #[error("disconnected: {0}")]
    Disconnected(String),
    /// The server answered with an `err` frame.
    #[error("server error {0}")]
    Server(ErrorBody),
    /// A module's bytes did not match its announced sum: it is not trusted.
    #[error("module {module:?} failed verification: {detail}")]
    Integrity {
        /// The module.
        module: String,
        /// What did not match.
        detail: String,
    },
    /// A module's manifest was refused (with module keys configured): the
    /// module is not trusted and does not run.
    #[error("module {module:?} refused, {code}: {detail}")]
    Manifest {
        /// The module.
        module: String,
        /// The refusal's stable code (`manifest_rollback`, ...:
        /// `vigil_command::ManifestRefusal::code`).
        code: &'static str,
        /// Why, for a person.
        detail: String,
    },
    /// The module is not in the table of verified modules.
    #[error("module {0:?} is not verified by this client (unknown, or its verification failed)")]
    NotTrusted(String),
    /// There is no live connection right now.
    #[error("not connected to the server")]
    NotConnected,
    /// The server sent something this client does not expect.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server key given for heartbeats is a weak (small-order) key:
    /// anyone could sign heartbeats that verify under it.
    #[error("the heartbeat key is weak: anyone could forge heartbeats that verify under it")]
    WeakHeartbeatKey,
    /// The command verifier has no replay guard, so a recorded command
    /// could be sent again and run again.
    #[error(
        "the command verifier has no replay guard: give it one (ReplayGuard::open, or ReplayGuard::in_memory for ids kept in memory only)"
    )]
    NoReplayGuard,
    /// The failsafe could not be armed (a zero or too large timeout, no
    /// tokio runtime).
    #[error("the failsafe cannot be armed: {0}")]
    Failsafe(#[source] vigil_failsafe::FailsafeError),
    /// The identity or pin could not be turned into a TLS configuration.
    #[error(transparent)]
    Auth(Arc<vigil_auth::AuthError>),
}

impl From<vigil_auth::AuthError> for ClientError {
    fn from(e: vigil_auth::AuthError) -> Self {
        ClientError::Auth(Arc::new(e))
    }
}

impl From<vigil_ws::UpgradeError> for ClientError {
    fn from(e: vigil_ws::UpgradeError) -> Self {
        // A refused certificate shows as the upgrade's first read failing.
        match e.into_io() {
            Ok(io) => ClientError::from_io(io),
            Err(e) => ClientError::WebSocket(Arc::new(e)),
        }
    }
}

impl ClientError {
    /// Classifies an I/O error from the TLS stream.
    pub(crate) fn from_io(e: std::io::Error) -> ClientError {
        if let Some(alert) = vigil_auth::refused_certificate_alert(&e) {
            return ClientError::CertificateRefused {
                alert: format!("{alert:?}"),
            };
        }
        if let Some(rejected) = vigil_auth::wrong_server(&e) {
            return ClientError::WrongServer(rejected);
        }
        if e.get_ref()
            .is_some_and(|inner| inner.is::<vigil_auth::rustls::Error>())
        {
            return ClientError::Tls(Arc::new(e));
        }
        match e.kind() {
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::BrokenPipe
            | std::io::ErrorKind::ConnectionAborted => ClientError::Disconnected(e.to_string()),
            _ => ClientError::Tls(Arc::new(e)),
        }
    }

    /// Whether retrying cannot help without a change of configuration on
    /// one side or the other (the reconnect loop retries anyway, more slowly).
    pub fn is_trust_problem(&self) -> bool {
        matches!(
            self,
            ClientError::CertificateRefused { .. } | ClientError::WrongServer(_)
        )
    }
}

//! What a [`Client`](crate::Client) reports while it runs.

use std::net::SocketAddr;
use std::time::Duration;

use vigil_auth::Fingerprint;
use vigil_proto::{Ack, ModuleInfo, ServerMessage};

use crate::ClientError;

/// What a [`Client`] reports while it runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ClientEvent {
    /// Connected and admitted by the server.
    Connected {
        /// The server's address.
        peer: SocketAddr,
        /// The server's fingerprint.
        server: Fingerprint,
    },
    /// The server listed its modules.
    Synced {
        /// The modules.
        modules: Vec<ModuleInfo>,
    },
    /// The server broadcast a message.
    Broadcast(ServerMessage),
    /// A module's bytes were fetched and matched their sum: it may run.
    ModuleTrusted(ModuleInfo),
    /// A module failed verification: it will not run.
    ModuleRejected {
        /// The module.
        module: String,
        /// Why.
        reason: ClientError,
    },
    /// The server unloaded a module: it is forgotten.
    ModuleForgotten {
        /// The module.
        module: String,
    },
    /// A command failed verification and was refused (nothing ran).
    CommandRefused {
        /// Its id, if it could be read.
        command_id: Option<String>,
        /// Machine-readable reason.
        code: vigil_proto::AckCode,
        /// The reason, for a person.
        detail: String,
    },
    /// A verified command ran; this is the acknowledgement sent.
    CommandRan(Ack),
    /// The clock offset from the server, measured by a fresh nonce
    /// heartbeat, changed by more than a second (or was measured first).
    ClockSkew {
        /// The server's clock minus this client's, in milliseconds.
        skew_ms: i64,
    },
    /// A heartbeat failed verification (the failsafe was not fed).
    HeartbeatRefused {
        /// Why.
        reason: String,
    },
    /// The failsafe fired; the break commands ran with these outcomes.
    FailsafeFired {
        /// How long no verified message had arrived.
        silent_for: Duration,
        /// Each break command's outcome.
        outcomes: Vec<vigil_proto::BreakOutcome>,
    },
    /// Verified messages are back after the failsafe fired.
    FailsafeRearmed {
        /// How long the outage lasted.
        outage: Duration,
    },
    /// An authorized `SHUTDOWN_NOW` arrived; [`Client::run`] returns.
    ShutdownRequested {
        /// The command's id.
        command_id: String,
    },
    /// The connection failed or ended.
    Disconnected {
        /// Why.
        reason: ClientError,
    },
    /// Waiting before the next attempt.
    Retrying {
        /// Attempt number, from 1.
        attempt: u32,
        /// How long until it.
        delay: Duration,
    },
}

//! Delivering signed commands to clients and tracking each delivery to its
//! acknowledgement.
//!
//! A command is encoded once, as `cmd:exec:<ref>` with one REF for the whole
//! delivery, and queued to every targeted session. Each session's `cmd:ack`
//! with that REF resolves that session's entry; a session that ends first
//! resolves it as disconnected.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::oneshot;
use vigil_auth::Fingerprint;
use vigil_proto::Ack;

/// Which clients a command goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// Every connected client.
    All,
    /// The clients with these key fingerprints (each of their sessions).
    Clients(Vec<Fingerprint>),
}

/// What became of a command at one client.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The client answered.
    Acked(Ack),
    /// No session of this client was connected.
    NotConnected,
    /// The client's outbound queue was full; it was disconnected as a slow
    /// consumer and did not get the command.
    QueueFull,
    /// The session ended before it answered.
    Disconnected,
    /// No answer within the wait.
    Pending,
}

/// One client's entry in a [`DeliveryReport`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientOutcome {
    /// The client's key fingerprint.
    pub client: Fingerprint,
    /// The session it was sent on (0 if none).
    pub session: u64,
    /// What happened.
    pub outcome: Outcome,
}

/// Every targeted client's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryReport {
    /// The command's id.
    pub command_id: String,
    /// The REF the command was sent with.
    pub reference: String,
    /// One entry per targeted session, plus one per targeted client that was
    /// not connected.
    pub outcomes: Vec<ClientOutcome>,
}

/// A command on its way; [`Delivery::wait`] collects the answers.
#[derive(Debug)]
pub struct Delivery {
    pub(crate) command_id: String,
    pub(crate) reference: String,
    pub(crate) waiting: Vec<(Fingerprint, u64, oneshot::Receiver<Ack>)>,
    pub(crate) done: Vec<ClientOutcome>,
}

impl Delivery {
    /// The command's id.
    pub fn command_id(&self) -> &str {
        &self.command_id
    }

    /// The clients (fingerprint, session) the command was queued for.
    pub fn queued(&self) -> Vec<(Fingerprint, u64)> {
        self.waiting.iter().map(|(fp, s, _)| (*fp, *s)).collect()
    }

    /// Outcomes known at once (not connected, queue full).
    pub fn immediate(&self) -> &[ClientOutcome] {
        &self.done
    }

    /// How many sessions the command was queued for.
    pub fn sent(&self) -> usize {
        self.waiting.len()
    }

    /// Waits up to `timeout` for every session's acknowledgement.
    pub async fn wait(self, timeout: Duration) -> DeliveryReport {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut outcomes = self.done;
        for (client, session, rx) in self.waiting {
            let outcome = match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(ack)) => Outcome::Acked(ack),
                Ok(Err(_)) => Outcome::Disconnected,
                Err(_) => Outcome::Pending,
            };
            outcomes.push(ClientOutcome {
                client,
                session,
                outcome,
            });
        }
        DeliveryReport {
            command_id: self.command_id,
            reference: self.reference,
            outcomes,
        }
    }
}

type PendingMap = HashMap<(u64, String), (String, oneshot::Sender<Ack>)>;

/// Deliveries waiting for acknowledgements, by (session, REF), with the
/// command id each is for.
#[derive(Debug, Default)]
pub(crate) struct Pending(Mutex<PendingMap>);

impl Pending {
    fn map(&self) -> MutexGuard<'_, PendingMap> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn insert(
        &self,
        session: u64,
        reference: &str,
        command_id: &str,
    ) -> oneshot::Receiver<Ack> {
        let (tx, rx) = oneshot::channel();
        self.map()
            .insert((session, reference.to_owned()), (command_id.to_owned(), tx));
        rx
    }

    /// Resolves a delivery, if one waits under that REF on that session
    /// and the ack names its command; false otherwise (nothing changes).
    pub(crate) fn resolve(&self, session: u64, reference: &str, ack: Ack) -> bool {
        let mut map = self.map();
        let key = (session, reference.to_owned());
        let matches = map
            .get(&key)
            .is_some_and(|(id, _)| ack.command_id.as_deref() == Some(id.as_str()));
        if !matches {
            return false;
        }
        match map.remove(&key) {
            Some((_, tx)) => {
                let _ = tx.send(ack);
                true
            }
            None => false,
        }
    }

    /// Drops every delivery waiting on a session that ended.
    pub(crate) fn forget_session(&self, session: u64) {
        self.map().retain(|(s, _), _| *s != session);
    }

    pub(crate) fn remove(&self, session: u64, reference: &str) {
        self.map().remove(&(session, reference.to_owned()));
    }
}

/// The `command_id` of a signed command's JSON object, for logs.
pub(crate) fn command_id_of(body: &Map<String, Value>) -> String {
    body.get("command_id")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

//! Delivering signed commands to clients and tracking each delivery to its
//! acknowledgements.
//!
//! A command is encoded once, as `cmd:exec:<ref>` with one REF for the whole
//! delivery, and queued to every targeted session together with a handle
//! on its slot in the delivery's [`Tracker`] ([`Awaited`]). A session that
//! writes the command keeps the handle until the client answers; its
//! `cmd:ack` with that REF and that command id settles its slot, and
//! nothing else can: an ack counts only on the session the command was
//! delivered to. A session that ends first settles its slots as
//! disconnected. Nothing in this is global: an ack costs a lookup among its
//! own session's unanswered commands and one slot update.

use std::time::Duration;

use serde_json::{Map, Value};
use vigil_auth::Fingerprint;
use vigil_proto::{Ack, AckStatus};

/// The REST API's name for an ack's status.
pub(crate) fn ack_status(status: AckStatus) -> &'static str {
    match status {
        AckStatus::Done => "done",
        AckStatus::Failed => "failed",
        AckStatus::Refused => "refused",
    }
}

mod tracker;

pub(crate) use tracker::{ACK_AUDIT_DELAY, AckGroup, Awaited, Forward, Tracker, to_wire};

/// Which clients a command goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Target {
    /// Every connected client.
    All,
    /// The clients with these key fingerprints (each of their sessions).
    Clients(Vec<Fingerprint>),
    /// The clients that said (`sys:hello`) they stand in the subtree at
    /// this path (their tree path starts with it).
    Subtree(Vec<String>),
}

/// What became of a command at one client.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The client answered.
    Acked(Ack),
    /// No session of this client was connected.
    NotConnected,
    /// The command was not queued: the client's queue for commands was
    /// full (it answers more slowly than commands come), or it had stopped
    /// reading altogether (then it was disconnected as a slow consumer).
    QueueFull,
    /// The session ended before it answered.
    Disconnected,
    /// No answer within the wait.
    Pending,
    /// The client left too many commands unanswered; the server stopped
    /// waiting for this one.
    Unanswered,
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
    pub(crate) tracker: std::sync::Arc<Tracker>,
    /// Outcomes known when the command was queued.
    pub(crate) immediate: Vec<ClientOutcome>,
    /// Sessions the command was queued for.
    pub(crate) queued: Vec<(Fingerprint, u64)>,
}

impl Delivery {
    /// The command's id.
    pub fn command_id(&self) -> &str {
        &self.tracker.command_id
    }

    /// The clients (fingerprint, session) the command was queued for.
    pub fn queued(&self) -> Vec<(Fingerprint, u64)> {
        self.queued.clone()
    }

    /// Outcomes known at once (not connected, queue full).
    pub fn immediate(&self) -> &[ClientOutcome] {
        &self.immediate
    }

    /// How many sessions the command was queued for.
    pub fn sent(&self) -> usize {
        self.queued.len()
    }

    /// Waits up to `timeout` for every session's acknowledgement; a session
    /// that has not answered by then is [`Outcome::Pending`].
    pub async fn wait(self, timeout: Duration) -> DeliveryReport {
        self.settle(timeout).await.report()
    }

    /// Waits up to `timeout` for every acknowledgement; returns the
    /// tracker to read the outcomes from.
    pub(crate) async fn settle(self, timeout: Duration) -> std::sync::Arc<Tracker> {
        let deadline = tokio::time::Instant::now() + timeout;
        let tracker = &self.tracker;
        loop {
            let settled = tracker.settled.notified();
            tokio::pin!(settled);
            settled.as_mut().enable();
            if tracker.open() == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                break;
            }
        }
        self.tracker
    }
}

/// The `command_id` of a signed command's JSON object, for logs.
pub(crate) fn command_id_of(body: &Map<String, Value>) -> String {
    body.get("command_id")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;
    use vigil_proto::AckStatus;

    use super::*;

    fn fp(n: u8) -> Fingerprint {
        Fingerprint::from_bytes([n; 32])
    }

    fn done() -> Ack {
        Ack {
            command_id: Some("c1".into()),
            status: AckStatus::Done,
            code: None,
            detail: String::new(),
            result: None,
        }
    }

    /// A delivery queued to sessions 11 and 12, with client 3 not connected.
    fn delivery() -> Delivery {
        let tracker = Arc::new(Tracker::new(
            "c1".into(),
            "d7".into(),
            vec![
                (fp(1), 11, None),
                (fp(2), 12, None),
                (fp(3), 0, Some(Outcome::NotConnected)),
            ],
        ));
        Delivery {
            tracker,
            immediate: vec![ClientOutcome {
                client: fp(3),
                session: 0,
                outcome: Outcome::NotConnected,
            }],
            queued: vec![(fp(1), 11), (fp(2), 12)],
        }
    }

    #[test]
    fn a_delivery_says_what_it_was_queued_for() {
        let d = delivery();
        assert_eq!(d.command_id(), "c1");
        assert_eq!(d.sent(), 2);
        assert_eq!(d.queued(), vec![(fp(1), 11), (fp(2), 12)]);
        assert_eq!(d.immediate().len(), 1);
        assert_eq!(d.immediate()[0].outcome, Outcome::NotConnected);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_returns_once_every_slot_is_settled() {
        let d = delivery();
        let tracker = d.tracker.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert!(tracker.acknowledge(0, 11, done()).counted);
            tokio::time::sleep(Duration::from_secs(1)).await;
            assert!(tracker.settle(1, 12, Outcome::Disconnected).is_none());
        });
        let start = tokio::time::Instant::now();
        let report = d.wait(Duration::from_secs(600)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        assert_eq!(report.command_id, "c1");
        assert_eq!(report.reference, "d7");
        let outcomes: Vec<_> = report.outcomes.into_iter().map(|o| o.outcome).collect();
        assert_eq!(
            outcomes,
            vec![
                Outcome::Acked(done()),
                Outcome::Disconnected,
                Outcome::NotConnected
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_session_that_has_not_answered_by_the_timeout_is_pending() {
        let d = delivery();
        assert!(d.tracker.acknowledge(1, 12, done()).counted);
        let start = tokio::time::Instant::now();
        let report = d.wait(Duration::from_secs(5)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        let outcomes: Vec<_> = report.outcomes.into_iter().map(|o| o.outcome).collect();
        assert_eq!(
            outcomes,
            vec![
                Outcome::Pending,
                Outcome::Acked(done()),
                Outcome::NotConnected
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn wait_on_a_settled_delivery_returns_at_once() {
        let d = delivery();
        assert!(d.tracker.settle(0, 11, Outcome::Unanswered).is_none());
        assert!(d.tracker.settle(1, 12, Outcome::Disconnected).is_none());
        let start = tokio::time::Instant::now();
        let tracker = d.settle(Duration::from_secs(600)).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert_eq!(tracker.open(), 0);
    }

    #[test]
    fn command_id_of_reads_the_field_or_gives_empty() {
        let body = |v: Value| v.as_object().cloned().expect("an object");
        assert_eq!(command_id_of(&body(json!({"command_id": "c9"}))), "c9");
        assert_eq!(command_id_of(&body(json!({"command_id": 9}))), "");
        assert_eq!(command_id_of(&body(json!({}))), "");
    }
}

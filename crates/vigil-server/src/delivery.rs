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

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::Notify;
use vigil_auth::Fingerprint;
use vigil_proto::{Ack, AckStatus};

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

/// How a slot stands, in 16 bytes: a fan-out to thousands keeps one per
/// client, mostly plain `done` acks, which need no allocation.
#[derive(Debug, Clone)]
enum SlotState {
    Pending,
    Done,
    Acked(Box<Ack>),
    NotConnected,
    QueueFull,
    Disconnected,
    Unanswered,
}

impl SlotState {
    /// The REST API's name for it (acks with details are named by their
    /// status by the caller).
    fn status(&self) -> &'static str {
        match self {
            SlotState::Pending => "pending",
            SlotState::Done => "done",
            SlotState::Acked(ack) => crate::record::ack_status(ack.status),
            SlotState::NotConnected => "not_connected",
            SlotState::QueueFull => "queue_full",
            SlotState::Disconnected => "disconnected",
            SlotState::Unanswered => "unanswered",
        }
    }

    /// The state for a settled outcome.
    fn settled(outcome: Outcome) -> SlotState {
        match outcome {
            Outcome::Acked(ack) => SlotState::Acked(Box::new(ack)),
            Outcome::NotConnected => SlotState::NotConnected,
            Outcome::QueueFull => SlotState::QueueFull,
            Outcome::Disconnected => SlotState::Disconnected,
            Outcome::Unanswered => SlotState::Unanswered,
            Outcome::Pending => SlotState::Pending,
        }
    }
}

#[derive(Debug, Clone)]
struct Slot {
    // 56 bytes in all.
    client: Fingerprint,
    session: u64,
    state: SlotState,
}

/// What an acknowledgement adds to the audit log: acks are recorded in
/// groups, one record per delivery and group.
#[derive(Debug, Clone)]
pub(crate) struct AckEntry {
    client: Fingerprint,
    status: AckStatus,
    code: Option<String>,
    detail: String,
}

impl AckEntry {
    /// Whether the ack says only `done`.
    fn is_plain_done(&self) -> bool {
        self.status == AckStatus::Done && self.code.is_none() && self.detail.is_empty()
    }

    fn json(&self) -> Value {
        let mut map = Map::new();
        map.insert("client".into(), Value::String(self.client.to_hex()));
        map.insert(
            "status".into(),
            serde_json::to_value(self.status).unwrap_or(Value::Null),
        );
        if let Some(code) = &self.code {
            map.insert("code".into(), Value::String(code.clone()));
        }
        if !self.detail.is_empty() {
            map.insert("detail".into(), Value::String(self.detail.clone()));
        }
        Value::Object(map)
    }
}

/// Acknowledgements of one delivery, for one audit record.
#[derive(Debug)]
pub(crate) struct AckGroup {
    command_id: String,
    acks: Vec<AckEntry>,
}

impl AckGroup {
    /// The details of its `command.acknowledged` record: the clients that
    /// answered a plain `done` in `done`, every other answer in `answers`.
    pub(crate) fn details(&self) -> Value {
        let mut done = Vec::new();
        let mut answers = Vec::new();
        for ack in &self.acks {
            if ack.is_plain_done() {
                done.push(Value::String(ack.client.to_hex()));
            } else {
                answers.push(ack.json());
            }
        }
        let mut map = Map::new();
        map.insert("command_id".into(), Value::String(self.command_id.clone()));
        if !done.is_empty() {
            map.insert("done".into(), Value::Array(done));
        }
        if !answers.is_empty() {
            map.insert("answers".into(), Value::Array(answers));
        }
        Value::Object(map)
    }
}

/// Most acks in one audit record.
pub(crate) const ACKS_PER_RECORD: usize = 512;
/// Longest an ack waits for its group's audit record.
pub(crate) const ACK_AUDIT_DELAY: Duration = Duration::from_millis(200);

#[derive(Debug)]
struct TrackState {
    /// One per targeted session, then one per targeted client that was
    /// not connected (session 0).
    slots: Vec<Slot>,
    open: usize,
    /// Acks not yet written to the audit log.
    unaudited: Vec<AckEntry>,
}

/// One delivery's bookkeeping, shared by the sessions it was queued to,
/// the waiter and the command log.
#[derive(Debug)]
pub(crate) struct Tracker {
    pub(crate) command_id: String,
    pub(crate) reference: String,
    state: Mutex<TrackState>,
    settled: Notify,
}

/// A session's claim on its slot of a delivery: what it keeps until the
/// client answers.
#[derive(Debug, Clone)]
pub(crate) struct Awaited {
    pub(crate) tracker: std::sync::Arc<Tracker>,
    pub(crate) slot: u32,
}

impl Awaited {
    pub(crate) fn acknowledge(&self, session: u64, ack: Ack) -> AckEffects {
        self.tracker.acknowledge(self.slot, session, ack)
    }

    pub(crate) fn settle(&self, session: u64, outcome: Outcome) -> Option<AckGroup> {
        self.tracker.settle(self.slot, session, outcome)
    }
}

/// What settling an ack asks of the caller.
#[derive(Debug, Default)]
pub(crate) struct AckEffects {
    /// Whether the ack matched a pending slot (and counted).
    pub(crate) counted: bool,
    /// Acks to write as one audit record now.
    pub(crate) audit_now: Option<AckGroup>,
    /// Whether to schedule [`Tracker::take_audit`] after
    /// [`ACK_AUDIT_DELAY`] (the first ack of a new group).
    pub(crate) audit_later: bool,
}

impl Tracker {
    /// A tracker for these slots: `(client, session, outcome)`, where
    /// `None` is a session still to answer. Slot `i` is the `i`th.
    pub(crate) fn new(
        command_id: String,
        reference: String,
        slots: Vec<(Fingerprint, u64, Option<Outcome>)>,
    ) -> Tracker {
        let open = slots.iter().filter(|(_, _, o)| o.is_none()).count();
        let slots = slots
            .into_iter()
            .map(|(client, session, outcome)| Slot {
                client,
                session,
                state: match outcome {
                    None => SlotState::Pending,
                    Some(o) => SlotState::settled(o),
                },
            })
            .collect();
        Tracker {
            command_id,
            reference,
            state: Mutex::new(TrackState {
                slots,
                open,
                unaudited: Vec::new(),
            }),
            settled: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, TrackState> {
        // Each update leaves the state consistent before anything can panic.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Slots still waiting for an answer.
    pub(crate) fn open(&self) -> usize {
        self.lock().open
    }

    /// How many clients this delivery tracks.
    pub(crate) fn len(&self) -> usize {
        self.lock().slots.len()
    }

    /// Slot `slot`, if it is `session`'s.
    fn slot_mut(state: &mut TrackState, slot: u32, session: u64) -> Option<&mut Slot> {
        state
            .slots
            .get_mut(usize::try_from(slot).ok()?)
            .filter(|s| s.session == session)
    }

    fn close_slot(&self, state: &mut TrackState) {
        state.open = state.open.saturating_sub(1);
        if state.open == 0 {
            self.settled.notify_waiters();
        }
    }

    /// Settles `session`'s slot with the client's answer, if the slot is
    /// still pending and the ack names this delivery's command.
    pub(crate) fn acknowledge(&self, slot: u32, session: u64, ack: Ack) -> AckEffects {
        if ack.command_id.as_deref() != Some(self.command_id.as_str()) {
            return AckEffects::default();
        }
        let mut state = self.lock();
        let Some(slot) = Self::slot_mut(&mut state, slot, session) else {
            return AckEffects::default();
        };
        if !matches!(slot.state, SlotState::Pending) {
            return AckEffects::default();
        }
        let client = slot.client;
        let entry = AckEntry {
            client,
            status: ack.status,
            code: ack.code.clone(),
            detail: crate::session::truncate(&ack.detail, 1024),
        };
        slot.state = if ack.status == AckStatus::Done
            && ack.code.is_none()
            && ack.detail.is_empty()
            && ack.result.is_none()
        {
            SlotState::Done
        } else {
            SlotState::Acked(Box::new(ack))
        };
        self.close_slot(&mut state);
        let first = state.unaudited.is_empty();
        state.unaudited.push(entry);
        let mut effects = AckEffects {
            counted: true,
            ..AckEffects::default()
        };
        if state.open == 0 || state.unaudited.len() >= ACKS_PER_RECORD {
            effects.audit_now = self.audit_record(&mut state);
        } else {
            effects.audit_later = first;
        }
        effects
    }

    /// Settles `session`'s slot, if still pending, with `outcome` (the
    /// session ended, or stopped waiting). Returns the acks to audit if
    /// this was the last open slot.
    pub(crate) fn settle(&self, slot: u32, session: u64, outcome: Outcome) -> Option<AckGroup> {
        let mut state = self.lock();
        let slot = Self::slot_mut(&mut state, slot, session)?;
        if !matches!(slot.state, SlotState::Pending) {
            return None;
        }
        slot.state = SlotState::settled(outcome);
        self.close_slot(&mut state);
        if state.open == 0 {
            self.audit_record(&mut state)
        } else {
            None
        }
    }

    /// The acks not yet audited.
    pub(crate) fn take_audit(&self) -> Option<AckGroup> {
        self.audit_record(&mut self.lock())
    }

    /// Takes the acks not yet audited; the record is made by the caller,
    /// outside the lock.
    fn audit_record(&self, state: &mut TrackState) -> Option<AckGroup> {
        if state.unaudited.is_empty() {
            return None;
        }
        Some(AckGroup {
            command_id: self.command_id.clone(),
            acks: std::mem::take(&mut state.unaudited),
        })
    }

    fn outcome_of(&self, state: &SlotState) -> Outcome {
        match state {
            SlotState::Pending => Outcome::Pending,
            SlotState::Done => Outcome::Acked(Ack {
                command_id: Some(self.command_id.clone()),
                status: AckStatus::Done,
                code: None,
                detail: String::new(),
                result: None,
            }),
            SlotState::Acked(ack) => Outcome::Acked((**ack).clone()),
            SlotState::NotConnected => Outcome::NotConnected,
            SlotState::QueueFull => Outcome::QueueFull,
            SlotState::Disconnected => Outcome::Disconnected,
            SlotState::Unanswered => Outcome::Unanswered,
        }
    }

    /// `{"command_id", "results": [...]}` with one row per slot, as the
    /// REST API answers it: written straight from the slots, without a
    /// report or a JSON tree in between (a fan-out has thousands).
    pub(crate) fn results_json(&self) -> Vec<u8> {
        #[derive(serde::Serialize)]
        struct Row<'a> {
            client: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            code: Option<&'a str>,
            #[serde(skip_serializing_if = "str::is_empty")]
            detail: &'a str,
            #[serde(skip_serializing_if = "Option::is_none")]
            result: Option<&'a Value>,
            status: &'static str,
        }
        let state = self.lock();
        let mut out = Vec::with_capacity(64 + state.slots.len() * 96);
        out.extend_from_slice(b"{\"command_id\":");
        // Writing to a Vec cannot fail; the rows hold only strings.
        let _ = serde_json::to_writer(&mut out, &self.command_id);
        out.extend_from_slice(b",\"results\":[");
        let mut hex = [0u8; 64];
        for (i, slot) in state.slots.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            let client = slot.client.hex_in(&mut hex);
            let row = match &slot.state {
                SlotState::Acked(ack) => Row {
                    client,
                    code: ack.code.as_deref(),
                    detail: &ack.detail,
                    result: ack.result.as_ref(),
                    status: crate::record::ack_status(ack.status),
                },
                other => Row {
                    client,
                    code: None,
                    detail: "",
                    result: None,
                    status: other.status(),
                },
            };
            let _ = serde_json::to_writer(&mut out, &row);
        }
        out.extend_from_slice(b"]}");
        out
    }

    /// Every slot's outcome so far.
    pub(crate) fn report(&self) -> DeliveryReport {
        let state = self.lock();
        let outcomes = state
            .slots
            .iter()
            .map(|s| ClientOutcome {
                client: s.client,
                session: s.session,
                outcome: self.outcome_of(&s.state),
            })
            .collect();
        DeliveryReport {
            command_id: self.command_id.clone(),
            reference: self.reference.clone(),
            outcomes,
        }
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
    use super::*;

    #[test]
    fn a_slot_stays_small() {
        // The command log keeps up to 200,000 of them.
        assert!(std::mem::size_of::<Slot>() <= 56);
    }
}

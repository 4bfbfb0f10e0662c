//! One delivery's bookkeeping: a [`Tracker`] with one slot per targeted
//! session (or client not connected), the sessions' handles on their slots
//! ([`Awaited`]), and the acknowledgements kept for the audit log, written
//! in groups ([`AckGroup`]): one record per delivery and group.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::Notify;
use vigil_auth::Fingerprint;
use vigil_proto::{Ack, AckCode, AckStatus};

use super::{ClientOutcome, DeliveryReport, Outcome};

mod remote;

use remote::RemotePart;
pub(crate) use remote::{Forward, to_wire};

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
            SlotState::Acked(ack) => super::ack_status(ack.status),
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
    code: Option<AckCode>,
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
            map.insert("code".into(), Value::String(code.to_string()));
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
    /// The clients on other servers of the cluster, for a delivery that
    /// went to some.
    remote: Option<Box<RemotePart>>,
}

/// One delivery's bookkeeping, shared by the sessions it was queued to,
/// the waiter and the command log.
#[derive(Debug)]
pub(crate) struct Tracker {
    pub(crate) command_id: String,
    pub(crate) reference: String,
    state: Mutex<TrackState>,
    /// Notified when the last open slot closes.
    pub(super) settled: Notify,
    /// For a command another server issued: where each outcome is
    /// reported.
    forward: Option<Forward>,
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
                remote: None,
            }),
            settled: Notify::new(),
            forward: None,
        }
    }

    /// As [`Tracker::new`], for a command another server issued: each
    /// outcome, as it settles, is reported to it.
    pub(crate) fn forwarded(
        command_id: String,
        reference: String,
        slots: Vec<(Fingerprint, u64, Option<Outcome>)>,
        forward: Forward,
    ) -> Tracker {
        Tracker {
            forward: Some(forward),
            ..Tracker::new(command_id, reference, slots)
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
        let Some(index) = Self::slot_mut(&mut state, slot, session).map(|_| slot as usize) else {
            return AckEffects::default();
        };
        self.ack_slot(&mut state, index, ack)
    }

    /// Settles slot `index` with an answer, if it is pending.
    fn ack_slot(&self, state: &mut TrackState, index: usize, ack: Ack) -> AckEffects {
        let Some(slot) = state.slots.get_mut(index) else {
            return AckEffects::default();
        };
        if !matches!(slot.state, SlotState::Pending) {
            return AckEffects::default();
        }
        let client = slot.client;
        let session = slot.session;
        if let Some(forward) = &self.forward {
            forward.settled(client, session, &Outcome::Acked(ack.clone()));
        }
        let entry = AckEntry {
            client,
            status: ack.status,
            code: ack.code.clone(),
            detail: crate::text::truncate(&ack.detail, 1024),
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
        self.close_slot(state);
        let first = state.unaudited.is_empty();
        state.unaudited.push(entry);
        let mut effects = AckEffects {
            counted: true,
            ..AckEffects::default()
        };
        if state.open == 0 || state.unaudited.len() >= ACKS_PER_RECORD {
            effects.audit_now = self.audit_record(state);
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
        Self::slot_mut(&mut state, slot, session)?;
        self.settle_slot(&mut state, slot as usize, outcome)
    }

    /// Settles slot `index`, if pending, with an outcome other than an
    /// answer.
    fn settle_slot(
        &self,
        state: &mut TrackState,
        index: usize,
        outcome: Outcome,
    ) -> Option<AckGroup> {
        let slot = state.slots.get_mut(index)?;
        if !matches!(slot.state, SlotState::Pending) {
            return None;
        }
        if let Some(forward) = &self.forward {
            forward.settled(slot.client, slot.session, &outcome);
        }
        slot.state = SlotState::settled(outcome);
        self.close_slot(state);
        if state.open == 0 {
            self.audit_record(state)
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
                    code: ack.code.as_ref().map(AckCode::as_str),
                    detail: &ack.detail,
                    result: ack.result.as_ref(),
                    status: super::ack_status(ack.status),
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fp(n: u8) -> Fingerprint {
        Fingerprint::from_bytes([n; 32])
    }

    fn ack(command_id: &str, status: AckStatus) -> Ack {
        Ack {
            command_id: Some(command_id.to_owned()),
            status,
            code: None,
            detail: String::new(),
            result: None,
        }
    }

    fn refused(command_id: &str, code: &str, detail: &str) -> Ack {
        Ack {
            code: Some(AckCode::parse(code)),
            detail: detail.to_owned(),
            ..ack(command_id, AckStatus::Refused)
        }
    }

    /// A delivery of `c1` (REF `d1`) to `n` sessions: slot `i` is session
    /// `100 + i` of client `fp(i)`.
    fn tracker(n: u8) -> Tracker {
        let slots = (0..n).map(|i| (fp(i), 100 + u64::from(i), None)).collect();
        Tracker::new("c1".into(), "d1".into(), slots)
    }

    fn outcomes(t: &Tracker) -> Vec<Outcome> {
        t.report().outcomes.into_iter().map(|o| o.outcome).collect()
    }

    fn done_outcome() -> Outcome {
        Outcome::Acked(ack("c1", AckStatus::Done))
    }

    #[test]
    fn a_slot_stays_small() {
        // The command log keeps up to 200,000 of them.
        assert!(std::mem::size_of::<Slot>() <= 56);
    }

    #[test]
    fn a_new_tracker_counts_open_and_settled_slots() {
        let t = Tracker::new(
            "c1".into(),
            "d1".into(),
            vec![
                (fp(1), 11, None),
                (fp(2), 12, None),
                (fp(3), 0, Some(Outcome::NotConnected)),
                (fp(4), 14, Some(Outcome::QueueFull)),
            ],
        );
        assert_eq!(t.len(), 4);
        assert_eq!(t.open(), 2);
        let report = t.report();
        assert_eq!(report.command_id, "c1");
        assert_eq!(report.reference, "d1");
        assert_eq!(
            report.outcomes,
            vec![
                ClientOutcome {
                    client: fp(1),
                    session: 11,
                    outcome: Outcome::Pending
                },
                ClientOutcome {
                    client: fp(2),
                    session: 12,
                    outcome: Outcome::Pending
                },
                ClientOutcome {
                    client: fp(3),
                    session: 0,
                    outcome: Outcome::NotConnected
                },
                ClientOutcome {
                    client: fp(4),
                    session: 14,
                    outcome: Outcome::QueueFull
                },
            ]
        );
    }

    #[test]
    fn acks_settle_their_slots_and_the_first_schedules_the_audit() {
        let t = tracker(3);
        let first = t.acknowledge(0, 100, ack("c1", AckStatus::Done));
        assert!(first.counted);
        assert!(first.audit_later, "the first ack of a group schedules it");
        assert!(first.audit_now.is_none());
        assert_eq!(t.open(), 2);
        let second = t.acknowledge(2, 102, refused("c1", "stale", "too old"));
        assert!(second.counted);
        assert!(!second.audit_later, "the group is already scheduled");
        assert!(second.audit_now.is_none());
        assert_eq!(t.open(), 1);
        assert_eq!(t.len(), 3);
        assert_eq!(
            outcomes(&t),
            vec![
                done_outcome(),
                Outcome::Pending,
                Outcome::Acked(refused("c1", "stale", "too old")),
            ]
        );
    }

    #[test]
    fn a_second_ack_from_the_same_session_is_ignored() {
        let t = tracker(2);
        assert!(
            t.acknowledge(0, 100, refused("c1", "stale", "too old"))
                .counted
        );
        let again = t.acknowledge(0, 100, ack("c1", AckStatus::Done));
        assert!(!again.counted);
        assert!(!again.audit_later);
        assert!(again.audit_now.is_none());
        assert_eq!(t.open(), 1);
        assert_eq!(
            outcomes(&t)[0],
            Outcome::Acked(refused("c1", "stale", "too old"))
        );
        // Only the first answer is audited.
        let group = t.take_audit().expect("one ack to audit");
        assert_eq!(group.acks.len(), 1);
    }

    #[test]
    fn an_ack_for_a_slot_the_session_does_not_hold_is_ignored() {
        let t = tracker(2);
        // Slot 0 is session 100's, not session 101's.
        assert!(!t.acknowledge(0, 101, ack("c1", AckStatus::Done)).counted);
        // No such slot.
        assert!(!t.acknowledge(7, 100, ack("c1", AckStatus::Done)).counted);
        assert!(
            !t.acknowledge(u32::MAX, 100, ack("c1", AckStatus::Done))
                .counted
        );
        assert_eq!(t.open(), 2);
        assert_eq!(outcomes(&t), vec![Outcome::Pending, Outcome::Pending]);
        assert!(t.take_audit().is_none());
    }

    #[test]
    fn an_ack_for_another_command_is_ignored() {
        let t = tracker(1);
        assert!(!t.acknowledge(0, 100, ack("c2", AckStatus::Done)).counted);
        let unparsed = Ack {
            command_id: None,
            ..ack("c1", AckStatus::Refused)
        };
        assert!(!t.acknowledge(0, 100, unparsed).counted);
        assert_eq!(t.open(), 1);
        assert_eq!(outcomes(&t), vec![Outcome::Pending]);
    }

    #[test]
    fn settle_closes_a_pending_slot_only() {
        let t = tracker(4);
        assert!(t.acknowledge(0, 100, ack("c1", AckStatus::Done)).counted);
        // Not the session's slot: nothing changes.
        assert!(t.settle(1, 100, Outcome::Disconnected).is_none());
        assert_eq!(t.open(), 3);
        assert!(t.settle(1, 101, Outcome::Disconnected).is_none());
        assert!(t.settle(2, 102, Outcome::Unanswered).is_none());
        assert_eq!(t.open(), 1);
        // An answered or settled slot stays as it is.
        assert!(t.settle(0, 100, Outcome::Disconnected).is_none());
        assert!(t.settle(1, 101, Outcome::Unanswered).is_none());
        assert_eq!(t.open(), 1);
        assert_eq!(
            outcomes(&t),
            vec![
                done_outcome(),
                Outcome::Disconnected,
                Outcome::Unanswered,
                Outcome::Pending,
            ]
        );
        // The last slot to close hands over the acks not yet audited.
        let group = t
            .settle(3, 103, Outcome::Disconnected)
            .expect("the last slot closes the group");
        assert_eq!(t.open(), 0);
        assert_eq!(
            group.details(),
            json!({"command_id": "c1", "done": [fp(0).to_hex()]})
        );
        assert!(t.take_audit().is_none(), "the group was taken");
    }

    #[test]
    fn settling_the_last_slot_without_acks_audits_nothing() {
        let t = tracker(2);
        assert!(t.settle(0, 100, Outcome::Disconnected).is_none());
        assert!(t.settle(1, 101, Outcome::Unanswered).is_none());
        assert_eq!(t.open(), 0);
        assert!(t.take_audit().is_none());
    }

    #[test]
    fn the_last_ack_is_audited_at_once() {
        let t = tracker(2);
        let first = t.acknowledge(0, 100, ack("c1", AckStatus::Done));
        assert!(first.audit_later);
        let last = t.acknowledge(1, 101, ack("c1", AckStatus::Failed));
        assert!(last.counted);
        assert!(!last.audit_later);
        let group = last.audit_now.expect("the last ack closes the group");
        assert_eq!(
            group.details(),
            json!({
                "command_id": "c1",
                "done": [fp(0).to_hex()],
                "answers": [{"client": fp(1).to_hex(), "status": "failed"}],
            })
        );
        assert_eq!(t.open(), 0);
        assert!(t.take_audit().is_none());
    }

    #[test]
    fn take_audit_takes_each_group_once() {
        let t = tracker(3);
        let with_result = Ack {
            result: Some(json!({"rows": 3})),
            ..ack("c1", AckStatus::Done)
        };
        assert!(t.acknowledge(0, 100, ack("c1", AckStatus::Done)).counted);
        assert!(t.acknowledge(1, 101, with_result.clone()).counted);
        let group = t.take_audit().expect("two acks");
        assert_eq!(
            group.details(),
            json!({"command_id": "c1", "done": [fp(0).to_hex(), fp(1).to_hex()]}),
            "a done with a result is still a plain done for the audit"
        );
        assert!(t.take_audit().is_none(), "taken once");
        // The next ack starts a new group, scheduled again.
        let e = t.acknowledge(2, 102, refused("c1", "stale", "old"));
        let rest = e.audit_now.expect("the last ack closes the group");
        assert_eq!(
            rest.details(),
            json!({
                "command_id": "c1",
                "answers": [{"client": fp(2).to_hex(), "status": "refused", "code": "stale", "detail": "old"}],
            })
        );
        // The report keeps the result the audit leaves out.
        assert_eq!(outcomes(&t)[1], Outcome::Acked(with_result));
    }

    #[test]
    fn a_group_taken_after_the_delay_lists_every_kind_of_answer() {
        let t = tracker(5);
        let answers = [
            ack("c1", AckStatus::Done),
            Ack {
                detail: "ran twice".into(),
                ..ack("c1", AckStatus::Done)
            },
            Ack {
                detail: "boom".into(),
                ..ack("c1", AckStatus::Failed)
            },
            refused("c1", "stale", ""),
        ];
        for (slot, a) in (0u32..).zip(answers) {
            assert!(t.acknowledge(slot, 100 + u64::from(slot), a).counted);
        }
        assert_eq!(t.open(), 1);
        let group = t.take_audit().expect("four acks");
        assert_eq!(
            group.details(),
            json!({
                "command_id": "c1",
                "done": [fp(0).to_hex()],
                "answers": [
                    {"client": fp(1).to_hex(), "status": "done", "detail": "ran twice"},
                    {"client": fp(2).to_hex(), "status": "failed", "detail": "boom"},
                    {"client": fp(3).to_hex(), "status": "refused", "code": "stale"},
                ],
            })
        );
    }

    #[test]
    fn an_audit_record_holds_at_most_acks_per_record() {
        let n = ACKS_PER_RECORD + 2;
        let slots = (0..n)
            .map(|i| (fp((i % 251) as u8), i as u64 + 1, None))
            .collect();
        let t = Tracker::new("c1".into(), "d1".into(), slots);
        let session = |slot: usize| slot as u64 + 1;
        for slot in 0..ACKS_PER_RECORD - 1 {
            let e = t.acknowledge(slot as u32, session(slot), ack("c1", AckStatus::Done));
            assert!(e.counted);
            assert!(e.audit_now.is_none(), "ack {slot} waits for its group");
            assert_eq!(e.audit_later, slot == 0);
        }
        let full = t.acknowledge(
            (ACKS_PER_RECORD - 1) as u32,
            session(ACKS_PER_RECORD - 1),
            ack("c1", AckStatus::Done),
        );
        let group = full.audit_now.expect("a full group is written at once");
        assert_eq!(group.acks.len(), ACKS_PER_RECORD);
        assert_eq!(
            group.details()["done"].as_array().map(Vec::len),
            Some(ACKS_PER_RECORD)
        );
        assert!(!full.audit_later);
        // The next ack starts a new group.
        let next = t.acknowledge(
            ACKS_PER_RECORD as u32,
            session(ACKS_PER_RECORD),
            ack("c1", AckStatus::Done),
        );
        assert!(next.audit_now.is_none());
        assert!(next.audit_later);
        assert_eq!(t.open(), 1);
        assert_eq!(t.take_audit().map(|g| g.acks.len()), Some(1));
    }

    #[test]
    fn a_long_detail_is_cut_in_the_audit_but_kept_in_the_report() {
        let t = tracker(2);
        let long = "x".repeat(3000);
        let failed = Ack {
            detail: long.clone(),
            ..ack("c1", AckStatus::Failed)
        };
        assert!(t.acknowledge(0, 100, failed.clone()).counted);
        let details = t.take_audit().expect("one ack").details();
        let cut = details["answers"][0]["detail"].as_str().expect("detail");
        assert_eq!(cut, format!("{}…", "x".repeat(1024)));
        assert_eq!(outcomes(&t)[0], Outcome::Acked(failed));
    }

    #[test]
    fn results_json_has_one_row_per_slot() {
        let t = Tracker::new(
            "c\"1".into(),
            "d1".into(),
            vec![
                (fp(0), 100, None),
                (fp(1), 101, None),
                (fp(2), 102, None),
                (fp(3), 103, None),
                (fp(4), 104, None),
                (fp(5), 105, None),
                (fp(6), 0, Some(Outcome::NotConnected)),
                (fp(7), 107, Some(Outcome::QueueFull)),
            ],
        );
        let id = "c\"1";
        assert!(t.acknowledge(1, 101, ack(id, AckStatus::Done)).counted);
        let with_result = Ack {
            result: Some(json!({"rows": 3})),
            ..ack(id, AckStatus::Done)
        };
        assert!(t.acknowledge(2, 102, with_result).counted);
        assert!(
            t.acknowledge(3, 103, refused(id, "stale", "too old"))
                .counted
        );
        assert!(t.settle(4, 104, Outcome::Disconnected).is_none());
        assert!(t.settle(5, 105, Outcome::Unanswered).is_none());
        let bytes = t.results_json();
        let value: Value = serde_json::from_slice(&bytes).expect("valid JSON");
        assert_eq!(
            value,
            json!({
                "command_id": "c\"1",
                "results": [
                    {"client": fp(0).to_hex(), "status": "pending"},
                    {"client": fp(1).to_hex(), "status": "done"},
                    {"client": fp(2).to_hex(), "result": {"rows": 3}, "status": "done"},
                    {"client": fp(3).to_hex(), "code": "stale", "detail": "too old", "status": "refused"},
                    {"client": fp(4).to_hex(), "status": "disconnected"},
                    {"client": fp(5).to_hex(), "status": "unanswered"},
                    {"client": fp(6).to_hex(), "status": "not_connected"},
                    {"client": fp(7).to_hex(), "status": "queue_full"},
                ],
            })
        );
        // Written as the REST API answers it: compact, in this order.
        let text = String::from_utf8(bytes).expect("UTF-8");
        assert!(text.starts_with("{\"command_id\":\"c\\\"1\",\"results\":[{\"client\":\""));
        assert!(text.contains(&format!(
            "{{\"client\":\"{}\",\"code\":\"stale\",\"detail\":\"too old\",\"status\":\"refused\"}}",
            fp(3).to_hex()
        )));
        assert!(text.ends_with("\"status\":\"queue_full\"}]}"));
    }

    #[test]
    fn results_json_of_no_slots_is_an_empty_list() {
        let t = Tracker::new("c1".into(), "d1".into(), Vec::new());
        assert_eq!(t.len(), 0);
        assert_eq!(t.open(), 0);
        assert_eq!(t.results_json(), b"{\"command_id\":\"c1\",\"results\":[]}");
    }

    #[test]
    fn awaited_acts_on_its_own_slot() {
        let t = std::sync::Arc::new(tracker(2));
        let second = Awaited {
            tracker: t.clone(),
            slot: 1,
        };
        assert!(!second.acknowledge(100, ack("c1", AckStatus::Done)).counted);
        assert!(second.acknowledge(101, ack("c1", AckStatus::Done)).counted);
        let first = Awaited {
            tracker: t.clone(),
            slot: 0,
        };
        let group = first
            .settle(100, Outcome::Disconnected)
            .expect("the last slot hands over the acks");
        assert_eq!(group.acks.len(), 1);
        assert_eq!(outcomes(&t), vec![Outcome::Disconnected, done_outcome()]);
    }
}

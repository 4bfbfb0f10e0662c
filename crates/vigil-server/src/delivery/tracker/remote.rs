//! The part of a delivery that crosses the cluster.
//!
//! On the issuing server, a delivery's tracker holds a slot for each
//! client another server holds ([`RemotePart`]): made from the cluster's
//! presence when the command is sent, settled by what the holding servers
//! report back ([`Tracker::remote_report`]), and settled as disconnected
//! by [`Tracker::sweep`] when a holding server stops holding a lease (it
//! was killed, or left) or never answered. Nothing settles a remote slot
//! as done but a client's ack, reported by the server that holds it.
//!
//! A broadcast also waits for each live server's [`Report::Accepted`]
//! (each counts as one open slot until it comes): a server may hold
//! clients that attached after the issuing server looked, and their slots
//! are added as it names them.
//!
//! On the holding server, a delivery made for another server's command
//! has a [`Forward`]: each outcome, as it settles, is reported to the
//! issuing server.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use vigil_auth::Fingerprint;
use vigil_cluster::routing::{self, Report, Settled};
use vigil_proto::Ack;

use super::{AckGroup, Slot, SlotState, TrackState, Tracker};
use crate::delivery::Outcome;

/// Where a holding server reports the outcomes of another server's
/// command.
#[derive(Debug)]
pub(crate) struct Forward {
    pub(crate) cluster: vigil_cluster::Cluster,
    /// The issuing server.
    pub(crate) origin: Fingerprint,
    /// Its REF for the delivery.
    pub(crate) reference: String,
}

impl Forward {
    pub(super) fn settled(&self, client: Fingerprint, session: u64, outcome: &Outcome) {
        self.cluster.report(
            self.origin,
            Report::Settled {
                reference: self.reference.clone(),
                server: self.cluster.fingerprint(),
                settled: vec![Settled {
                    client,
                    session,
                    outcome: to_wire(outcome),
                }],
            },
        );
    }
}

/// An outcome as the cluster carries it.
pub(crate) fn to_wire(outcome: &Outcome) -> routing::Outcome {
    match outcome {
        Outcome::Acked(ack) => routing::Outcome::Acked {
            ack: serde_json::to_value(ack).unwrap_or_default(),
        },
        Outcome::NotConnected => routing::Outcome::NotConnected,
        Outcome::QueueFull => routing::Outcome::QueueFull,
        // A slot is never reported pending; an outcome no one knows
        // counts as a session that ended without answering.
        Outcome::Disconnected | Outcome::Pending => routing::Outcome::Disconnected,
        Outcome::Unanswered => routing::Outcome::Unanswered,
    }
}

/// An outcome the cluster carried; `None` for an ack that is not one.
fn from_wire(outcome: routing::Outcome) -> Option<Outcome> {
    Some(match outcome {
        routing::Outcome::Acked { ack } => Outcome::Acked(serde_json::from_value::<Ack>(ack).ok()?),
        routing::Outcome::NotConnected => Outcome::NotConnected,
        routing::Outcome::QueueFull => Outcome::QueueFull,
        routing::Outcome::Disconnected => Outcome::Disconnected,
        routing::Outcome::Unanswered => Outcome::Unanswered,
    })
}

#[derive(Debug, Clone, Copy)]
struct Holder {
    server: Fingerprint,
    /// Whether that server said it queued the command for the client.
    accepted: bool,
}

/// The clients of a delivery that other servers hold.
#[derive(Debug)]
pub(crate) struct RemotePart {
    by_client: HashMap<Fingerprint, u32>,
    holders: HashMap<u32, Holder>,
    /// Servers whose [`Report::Accepted`] of a broadcast has not come.
    awaiting: HashSet<Fingerprint>,
    broadcast: bool,
    issued: Instant,
}

/// What applying a report or a sweep asks of the caller.
#[derive(Debug, Default)]
pub(crate) struct RemoteEffects {
    /// Ack groups to write to the audit log now.
    pub(crate) audit_now: Vec<AckGroup>,
    /// Whether to take the audit after the delay (the first acks of a
    /// group came).
    pub(crate) audit_later: bool,
}

/// A new pending slot for a remote client; its index.
fn push_slot(
    state: &mut TrackState,
    part: &mut RemotePart,
    client: Fingerprint,
    session: u64,
) -> Option<u32> {
    let index = u32::try_from(state.slots.len()).ok()?;
    state.slots.push(Slot {
        client,
        session,
        state: SlotState::Pending,
    });
    state.open += 1;
    part.by_client.insert(client, index);
    Some(index)
}

impl Tracker {
    /// Adds slots for clients other servers hold: `(client, session,
    /// server)` as presence says, for a command sent to them. For a
    /// broadcast, `awaiting` are the live servers whose word on which of
    /// their clients it was queued for is awaited.
    pub(crate) fn add_remote(
        &self,
        slots: Vec<(Fingerprint, u64, Fingerprint)>,
        broadcast: bool,
        awaiting: Vec<Fingerprint>,
    ) {
        let mut state = self.lock();
        let mut part = RemotePart {
            by_client: HashMap::with_capacity(slots.len()),
            holders: HashMap::with_capacity(slots.len()),
            awaiting: awaiting.into_iter().collect(),
            broadcast,
            issued: Instant::now(),
        };
        for (client, session, server) in slots {
            let Some(index) = push_slot(&mut state, &mut part, client, session) else {
                break;
            };
            part.holders.insert(
                index,
                Holder {
                    server,
                    accepted: false,
                },
            );
        }
        state.open += part.awaiting.len();
        state.remote = Some(Box::new(part));
    }

    /// Applies what a holding server reports.
    pub(crate) fn remote_report(&self, report: Report) -> RemoteEffects {
        let mut effects = RemoteEffects::default();
        let mut state = self.lock();
        let Some(mut part) = state.remote.take() else {
            return effects;
        };
        match report {
            Report::Accepted {
                server,
                queued,
                settled,
                ..
            } => {
                if part.awaiting.remove(&server) {
                    self.close_slot(&mut state);
                }
                let mut named: HashSet<Fingerprint> = HashSet::new();
                for (client, session) in queued {
                    named.insert(client);
                    if let Some(index) = self.remote_slot(&mut state, &mut part, client, session)
                        && let Some(slot) = state.slots.get_mut(index)
                        && matches!(slot.state, SlotState::Pending)
                    {
                        slot.session = session;
                        part.holders.insert(
                            index as u32,
                            Holder {
                                server,
                                accepted: true,
                            },
                        );
                    }
                }
                for s in settled {
                    named.insert(s.client);
                    self.remote_outcome(&mut state, &mut part, server, s, &mut effects);
                }
                if part.broadcast {
                    // Clients presence placed on this server that it did
                    // not name: they left it before the command came.
                    let gone: Vec<usize> = part
                        .holders
                        .iter()
                        .filter(|(i, h)| {
                            h.server == server
                                && !h.accepted
                                && state
                                    .slots
                                    .get(**i as usize)
                                    .is_some_and(|s| !named.contains(&s.client))
                        })
                        .map(|(i, _)| *i as usize)
                        .collect();
                    for index in gone {
                        if let Some(g) = self.settle_slot(&mut state, index, Outcome::NotConnected)
                        {
                            effects.audit_now.push(g);
                        }
                    }
                }
            }
            Report::Settled {
                server, settled, ..
            } => {
                for s in settled {
                    self.remote_outcome(&mut state, &mut part, server, s, &mut effects);
                }
            }
        }
        state.remote = Some(part);
        if state.open == 0
            && let Some(g) = self.audit_record(&mut state)
        {
            effects.audit_now.push(g);
        }
        effects
    }

    /// The slot of a remote client; for a broadcast, a new one for a
    /// client presence had not shown (it attached since). A slot settled
    /// as not connected is opened again: the client was found after all.
    fn remote_slot(
        &self,
        state: &mut TrackState,
        part: &mut RemotePart,
        client: Fingerprint,
        session: u64,
    ) -> Option<usize> {
        if let Some(&index) = part.by_client.get(&client) {
            let slot = state.slots.get_mut(index as usize)?;
            if matches!(slot.state, SlotState::NotConnected) {
                slot.state = SlotState::Pending;
                state.open += 1;
            }
            return Some(index as usize);
        }
        if !part.broadcast {
            return None;
        }
        push_slot(state, part, client, session).map(|i| i as usize)
    }

    fn remote_outcome(
        &self,
        state: &mut TrackState,
        part: &mut RemotePart,
        server: Fingerprint,
        settled: Settled,
        effects: &mut RemoteEffects,
    ) {
        let Some(outcome) = from_wire(settled.outcome) else {
            tracing::warn!(client = %settled.client, server = %server, "a reported ack that is not one: ignored");
            return;
        };
        let not_connected = outcome == Outcome::NotConnected;
        let index = if not_connected {
            // Not there: only a slot still waiting for that server hears it.
            match part.by_client.get(&settled.client) {
                Some(&i) => i as usize,
                None => return,
            }
        } else {
            match self.remote_slot(state, part, settled.client, settled.session) {
                Some(i) => i,
                None => return,
            }
        };
        let Ok(key) = u32::try_from(index) else {
            return;
        };
        let holder = part.holders.get(&key).copied();
        if not_connected && holder.is_some_and(|h| h.accepted && h.server != server) {
            // Another server holds it now.
            return;
        }
        if let Some(slot) = state.slots.get_mut(index) {
            slot.session = settled.session;
        }
        part.holders.insert(
            key,
            Holder {
                server,
                accepted: !not_connected,
            },
        );
        match outcome {
            Outcome::Acked(ack) => {
                if ack.command_id.as_deref() != Some(self.command_id.as_str()) {
                    return;
                }
                let e = self.ack_slot(state, index, ack);
                effects.audit_now.extend(e.audit_now);
                effects.audit_later |= e.audit_later;
            }
            other => {
                if let Some(g) = self.settle_slot(state, index, other) {
                    effects.audit_now.push(g);
                }
            }
        }
    }

    /// Settles as disconnected what can no longer be answered: the slots
    /// of a server that no longer holds a lease (`is_live`), and, past
    /// `accept_within` from the send, the slots no server said it queued
    /// the command for. A broadcast stops waiting for such servers too.
    pub(crate) fn sweep(
        &self,
        is_live: impl Fn(&Fingerprint) -> bool,
        accept_within: Duration,
    ) -> Vec<AckGroup> {
        let mut groups = Vec::new();
        let mut state = self.lock();
        let Some(mut part) = state.remote.take() else {
            return groups;
        };
        let late = part.issued.elapsed() > accept_within;
        let silent: Vec<Fingerprint> = part
            .awaiting
            .iter()
            .filter(|s| late || !is_live(s))
            .copied()
            .collect();
        for server in &silent {
            if part.awaiting.remove(server) {
                tracing::warn!(server = %server, command_id = %self.command_id, "a server of the cluster did not say it received the command: its clients' outcomes are disconnected");
                self.close_slot(&mut state);
            }
        }
        let lost: Vec<usize> = part
            .holders
            .iter()
            .filter(|(i, h)| {
                state
                    .slots
                    .get(**i as usize)
                    .is_some_and(|s| matches!(s.state, SlotState::Pending))
                    && if h.accepted {
                        !is_live(&h.server)
                    } else {
                        late || !is_live(&h.server)
                    }
            })
            .map(|(i, _)| *i as usize)
            .collect();
        for index in lost {
            if let Some(g) = self.settle_slot(&mut state, index, Outcome::Disconnected) {
                groups.push(g);
            }
        }
        state.remote = Some(part);
        if state.open == 0
            && let Some(g) = self.audit_record(&mut state)
        {
            groups.push(g);
        }
        groups
    }
}

#[cfg(test)]
mod tests {
    use vigil_proto::AckStatus;

    use super::*;

    fn fp(n: u8) -> Fingerprint {
        Fingerprint::from_bytes([n; 32])
    }

    fn done() -> routing::Outcome {
        routing::Outcome::Acked {
            ack: serde_json::json!({"command_id": "c1", "status": "done"}),
        }
    }

    fn settled(client: u8, session: u64, outcome: routing::Outcome) -> Settled {
        Settled {
            client: fp(client),
            session,
            outcome,
        }
    }

    fn statuses(t: &Tracker) -> Vec<(Fingerprint, Outcome)> {
        t.report()
            .outcomes
            .into_iter()
            .map(|o| (o.client, o.outcome))
            .collect()
    }

    fn is_done(o: &Outcome) -> bool {
        matches!(o, Outcome::Acked(a) if a.status == AckStatus::Done)
    }

    #[test]
    fn a_remote_slot_is_done_only_when_its_holder_reports_the_clients_ack() {
        let t = Tracker::new("c1".into(), "d1".into(), vec![]);
        t.add_remote(vec![(fp(1), 5, fp(100))], false, vec![]);
        assert_eq!(t.open(), 1);
        t.remote_report(Report::Accepted {
            reference: "d1".into(),
            server: fp(100),
            queued: vec![(fp(1), 5)],
            settled: vec![],
        });
        assert_eq!(t.open(), 1, "queued is not answered");
        // An ack for another command does not count.
        t.remote_report(Report::Settled {
            reference: "d1".into(),
            server: fp(100),
            settled: vec![settled(
                1,
                5,
                routing::Outcome::Acked {
                    ack: serde_json::json!({"command_id": "other", "status": "done"}),
                },
            )],
        });
        assert_eq!(t.open(), 1);
        let effects = t.remote_report(Report::Settled {
            reference: "d1".into(),
            server: fp(100),
            settled: vec![settled(1, 5, done())],
        });
        assert_eq!(t.open(), 0);
        assert_eq!(effects.audit_now.len(), 1, "the last ack is audited");
        assert!(is_done(&statuses(&t)[0].1));
    }

    #[test]
    fn a_broadcast_waits_for_every_live_server_and_adds_the_clients_they_name() {
        let t = Tracker::new("c1".into(), "d1".into(), vec![]);
        // Presence: client 1 on server 100, client 2 on server 101.
        t.add_remote(
            vec![(fp(1), 5, fp(100)), (fp(2), 6, fp(101))],
            true,
            vec![fp(100), fp(101)],
        );
        assert_eq!(t.open(), 4);
        // Server 100 holds 1 and a client 3 presence had not shown yet.
        t.remote_report(Report::Accepted {
            reference: "d1".into(),
            server: fp(100),
            queued: vec![(fp(1), 5), (fp(3), 9)],
            settled: vec![],
        });
        assert_eq!(t.open(), 4, "one awaited server answered, one client added");
        // Server 101 no longer holds client 2.
        t.remote_report(Report::Accepted {
            reference: "d1".into(),
            server: fp(101),
            queued: vec![],
            settled: vec![],
        });
        assert_eq!(t.open(), 2);
        let got = statuses(&t);
        assert_eq!(got[1], (fp(2), Outcome::NotConnected));
        t.remote_report(Report::Settled {
            reference: "d1".into(),
            server: fp(100),
            settled: vec![settled(1, 5, done()), settled(3, 9, done())],
        });
        assert_eq!(t.open(), 0);
        let got = statuses(&t);
        assert_eq!(got.len(), 3);
        assert!(is_done(&got[0].1) && is_done(&got[2].1));
    }

    #[test]
    fn a_client_another_server_names_later_is_not_left_not_connected() {
        let t = Tracker::new("c1".into(), "d1".into(), vec![]);
        t.add_remote(vec![(fp(1), 5, fp(100))], true, vec![fp(100), fp(101)]);
        // It left server 100 ...
        t.remote_report(Report::Accepted {
            reference: "d1".into(),
            server: fp(100),
            queued: vec![],
            settled: vec![],
        });
        assert_eq!(statuses(&t)[0].1, Outcome::NotConnected);
        // ... for server 101, which queued it there.
        t.remote_report(Report::Accepted {
            reference: "d1".into(),
            server: fp(101),
            queued: vec![(fp(1), 12)],
            settled: vec![],
        });
        assert_eq!(t.open(), 1);
        assert_eq!(statuses(&t)[0].1, Outcome::Pending);
        t.remote_report(Report::Settled {
            reference: "d1".into(),
            server: fp(101),
            settled: vec![settled(1, 12, done())],
        });
        assert_eq!(t.open(), 0);
    }

    #[test]
    fn the_slots_of_a_server_that_dies_are_disconnected_never_done() {
        let t = Tracker::new("c1".into(), "d1".into(), vec![]);
        t.add_remote(
            vec![(fp(1), 5, fp(100)), (fp(2), 6, fp(101))],
            false,
            vec![],
        );
        t.remote_report(Report::Accepted {
            reference: "d1".into(),
            server: fp(100),
            queued: vec![(fp(1), 5)],
            settled: vec![],
        });
        t.remote_report(Report::Accepted {
            reference: "d1".into(),
            server: fp(101),
            queued: vec![(fp(2), 6)],
            settled: vec![],
        });
        // Server 100 is gone; 101 is alive.
        let live = |s: &Fingerprint| *s == fp(101);
        t.sweep(live, Duration::from_secs(60));
        let got = statuses(&t);
        assert_eq!(got[0].1, Outcome::Disconnected);
        assert_eq!(got[1].1, Outcome::Pending);
        // A late report from the dead server changes nothing.
        t.remote_report(Report::Settled {
            reference: "d1".into(),
            server: fp(100),
            settled: vec![settled(1, 5, done())],
        });
        assert_eq!(statuses(&t)[0].1, Outcome::Disconnected);
        assert_eq!(t.open(), 1);
    }

    #[test]
    fn a_targeted_client_no_server_took_is_disconnected_after_the_accept_time() {
        let t = Tracker::new("c1".into(), "d1".into(), vec![]);
        t.add_remote(vec![(fp(1), 5, fp(100))], false, vec![]);
        t.sweep(|_| true, Duration::from_secs(60));
        assert_eq!(t.open(), 1, "not late yet");
        t.sweep(|_| true, Duration::ZERO);
        assert_eq!(t.open(), 0);
        assert_eq!(statuses(&t)[0].1, Outcome::Disconnected);
    }
}

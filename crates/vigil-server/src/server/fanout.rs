//! The fan-out seam: the one place that finds which sessions a message
//! reaches and queues it for them. Target resolution
//! ([`crate::route`]), deliveries (`deliver`, `relay_checked`,
//! `send_command`), broadcasts and heartbeats all go through these
//! methods, and nothing in the REST code reads the session registry to
//! send; a cluster replaces what is here with the same methods over the
//! sessions of every server.

use super::*;
use crate::delivery::{Awaited, ClientOutcome, Delivery, Outcome, Target, Tracker};
use std::collections::HashSet;

impl ServerHandle {
    /// The fingerprints of the connected clients `wanted` picks, once each.
    pub(crate) fn matching_clients(
        &self,
        wanted: impl Fn(&SessionHandle) -> bool,
    ) -> Vec<Fingerprint> {
        let mut found: Vec<Fingerprint> = self
            .shared
            .sessions()
            .values()
            .filter(|h| wanted(h))
            .map(|h| h.info.fingerprint)
            .collect();
        found.sort_unstable();
        found.dedup();
        found
    }

    /// Whether a client with this fingerprint has a live session.
    pub fn is_connected(&self, client: &Fingerprint) -> bool {
        self.shared
            .sessions()
            .values()
            .any(|h| h.info.fingerprint == *client)
    }

    pub(super) fn send_to_all(&self, bytes: &Bytes) -> usize {
        let handles: Vec<(u64, Fingerprint, crate::outbound::SharedOutbound)> = self
            .shared
            .sessions()
            .values()
            .map(|h| (h.info.id, h.info.fingerprint, h.out.clone()))
            .collect();
        let mut queued = 0;
        for (id, fp, out) in handles {
            let item = Item {
                bytes: bytes.clone(),
                delivery: None,
                lane: Lane::Control,
            };
            if self.shared.push(id, &fp, &out, item).is_ok() {
                queued += 1;
            }
        }
        queued
    }

    /// The agent id a client said in `sys:hello`, if it has a session and
    /// said one.
    pub(crate) fn agent_id_of(&self, client: &Fingerprint) -> Option<String> {
        self.shared
            .sessions()
            .values()
            .find(|h| h.info.fingerprint == *client)
            .and_then(|h| h.agent_id().map(str::to_owned))
    }

    /// Queues the frame `encode` makes (given its REF) for every session
    /// `target` reaches, with a [`Tracker`] slot for each, and one
    /// `not connected` slot for each targeted client without a session.
    pub(super) fn deliver_payload(
        &self,
        command_id: String,
        target: &Target,
        lane: Lane,
        encode: impl FnOnce(&str) -> Bytes,
    ) -> Delivery {
        let started = Instant::now();
        let n = self.shared.next_delivery.fetch_add(1, Ordering::Relaxed);
        let reference = format!("d{n}");
        let bytes = encode(&reference);
        let wanted: Option<HashSet<Fingerprint>> = match target {
            Target::Clients(list) => Some(list.iter().copied().collect()),
            _ => None,
        };
        // Which sessions get it, decided under the lock; queued after, so
        // that every session's tracker slot exists before its ack can.
        let targets: Vec<(Fingerprint, u64, crate::outbound::SharedOutbound)> = self
            .shared
            .sessions()
            .values()
            .filter(|h| match target {
                Target::Subtree(path) => h.within(path),
                _ => wanted
                    .as_ref()
                    .is_none_or(|w| w.contains(&h.info.fingerprint)),
            })
            .map(|h| (h.info.fingerprint, h.info.id, h.out.clone()))
            .collect();
        let reached: HashSet<Fingerprint> = targets.iter().map(|(fp, _, _)| *fp).collect();
        let mut slots: Vec<(Fingerprint, u64, Option<Outcome>)> =
            targets.iter().map(|(fp, id, _)| (*fp, *id, None)).collect();
        let mut immediate = Vec::new();
        for fp in wanted.into_iter().flatten() {
            if !reached.contains(&fp) {
                slots.push((fp, 0, Some(Outcome::NotConnected)));
                immediate.push(ClientOutcome {
                    client: fp,
                    session: 0,
                    outcome: Outcome::NotConnected,
                });
            }
        }
        let tracker = Arc::new(Tracker::new(command_id, reference, slots));
        let mut queued = Vec::with_capacity(targets.len());
        for (slot, (fp, id, out)) in (0u32..).zip(targets) {
            let awaited = Awaited {
                tracker: tracker.clone(),
                slot,
            };
            let item = Item {
                bytes: bytes.clone(),
                delivery: Some(awaited.clone()),
                lane,
            };
            let outcome = match self.shared.push(id, &fp, &out, item) {
                Ok(()) => {
                    self.shared.stats.commands_sent.inc();
                    queued.push((fp, id));
                    continue;
                }
                Err(Refused::Full | Refused::Busy) => Outcome::QueueFull,
                Err(Refused::Closed) => Outcome::Disconnected,
            };
            // Nothing to audit: no ack was recorded on this slot.
            let _ = awaited.settle(id, outcome.clone());
            immediate.push(ClientOutcome {
                client: fp,
                session: id,
                outcome,
            });
        }
        self.shared
            .latencies
            .fanout
            .observe(started.elapsed().as_secs_f64());
        tracing::info!(
            command_id = %tracker.command_id,
            reference = %tracker.reference,
            sessions = queued.len(),
            "command delivered"
        );
        Delivery {
            tracker,
            immediate,
            queued,
        }
    }
}

//! The fan-out seam: the one place that finds which sessions a message
//! reaches and queues it for them. Target resolution
//! ([`crate::route`]), deliveries (`deliver`, `relay_checked`,
//! `send_command`), broadcasts and heartbeats all go through these
//! methods, and nothing in the REST code reads the session registry to
//! send; a cluster replaces what is here with the same methods over the
//! sessions of every server.

use super::*;
use crate::delivery::{Awaited, ClientOutcome, Delivery, Forward, Outcome, Target, Tracker};
use std::collections::HashSet;
use vigil_cluster::Scope;

/// Whose clients a delivery reaches.
pub(crate) enum Reach {
    /// This server's, and in a cluster the other servers' too.
    Cluster,
    /// This server's only: a command another server issued, whose
    /// outcomes are reported to it.
    Forwarded(Forward),
}

/// `cmd:exec:<REF> <raw>` and a line break: a signed command as a frame.
fn frame(reference: &str, raw: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(raw.len() + reference.len() + 10);
    out.extend_from_slice(b"cmd:exec:");
    out.extend_from_slice(reference.as_bytes());
    out.push(b' ');
    out.extend_from_slice(raw);
    out.push(b'\n');
    Bytes::from(out)
}

impl ServerHandle {
    /// The fingerprints of the clients `wanted` picks, once each: this
    /// server's, and in a cluster the other servers' (while the link is
    /// ready).
    pub(crate) fn matching_clients(
        &self,
        wanted: impl Fn(&crate::route::Candidate<'_>) -> bool,
    ) -> Vec<Fingerprint> {
        let mut found: Vec<Fingerprint> = self
            .shared
            .sessions()
            .values()
            .filter(|h| wanted(&h.candidate()))
            .map(|h| h.info.fingerprint)
            .collect();
        if let Some(cluster) = self.shared.cluster() {
            found.extend(
                cluster
                    .remotes()
                    .iter()
                    .filter(|r| {
                        wanted(&crate::route::Candidate {
                            fingerprint: &r.client,
                            agent_id: r.presence.agent_id.as_deref(),
                            tree_path: r.presence.tree_path.as_deref(),
                        })
                    })
                    .map(|r| r.client),
            );
        }
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

    /// The agent id a client said in `sys:hello`, if it has a session
    /// (here, or in a cluster on another server) and said one.
    pub(crate) fn agent_id_of(&self, client: &Fingerprint) -> Option<String> {
        let here = self
            .shared
            .sessions()
            .values()
            .find(|h| h.info.fingerprint == *client)
            .map(|h| h.agent_id().map(str::to_owned));
        match here {
            Some(said) => said,
            None => match self.shared.cluster().map(|c| c.locate(client)) {
                Some(vigil_cluster::Location::Remote(r)) => r.presence.agent_id,
                _ => None,
            },
        }
    }

    /// Queues `raw` (a signed command's JSON, one line), framed as
    /// `cmd:exec:<REF>`, for every session `target` reaches, with a
    /// [`Tracker`] slot for each, and one `not connected` slot for each
    /// targeted client without a session. In a cluster (`reach` is
    /// [`Reach::Cluster`]), the clients of the other servers are reached
    /// too: see [`ServerHandle::send_to_cluster`].
    pub(super) fn deliver_payload(
        &self,
        command_id: String,
        raw: &[u8],
        target: &Target,
        lane: Lane,
        reach: Reach,
    ) -> Delivery {
        let started = Instant::now();
        let n = self.shared.next_delivery.fetch_add(1, Ordering::Relaxed);
        let reference = format!("d{n}");
        let bytes = frame(&reference, raw);
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
        let cluster = match &reach {
            Reach::Cluster => self.shared.cluster(),
            Reach::Forwarded(_) => None,
        };
        let cluster = match cluster {
            Some(c) if !c.is_ready() => {
                // Named clients were placed by `resolve` (503 while the
                // link is down); a broadcast goes on with what is here.
                if !matches!(target, Target::Clients(_)) {
                    tracing::warn!(command_id = %command_id, "the cluster link is not ready: this command reaches this server's clients only");
                }
                None
            }
            other => other,
        };
        let mut slots: Vec<(Fingerprint, u64, Option<Outcome>)> =
            targets.iter().map(|(fp, id, _)| (*fp, *id, None)).collect();
        let mut immediate = Vec::new();
        let mut elsewhere = Vec::new();
        for fp in wanted.into_iter().flatten() {
            if reached.contains(&fp) {
                continue;
            }
            if let Some(vigil_cluster::Location::Remote(r)) = cluster.map(|c| c.locate(&fp)) {
                elsewhere.push((fp, r.presence.session, r.presence.server));
                continue;
            }
            slots.push((fp, 0, Some(Outcome::NotConnected)));
            immediate.push(ClientOutcome {
                client: fp,
                session: 0,
                outcome: Outcome::NotConnected,
            });
        }
        let tracker = Arc::new(match reach {
            Reach::Cluster => Tracker::new(command_id, reference, slots),
            Reach::Forwarded(forward) => Tracker::forwarded(command_id, reference, slots, forward),
        });
        let mut queued = Vec::with_capacity(targets.len());
        if let Some(cluster) = cluster {
            queued = self.send_to_cluster(cluster, &tracker, target, elsewhere, raw);
        }
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

impl ServerHandle {
    /// The cluster's part of a delivery: slots for the clients the other
    /// servers hold (`elsewhere` for a delivery to named clients; every
    /// remote client, or those in the subtree, for a broadcast), the
    /// tracker registered for their servers' reports, and the command
    /// published on their subjects. Returns the remote clients it was
    /// sent to, with their sessions as presence has them.
    fn send_to_cluster(
        &self,
        cluster: &vigil_cluster::Cluster,
        tracker: &Arc<Tracker>,
        target: &Target,
        elsewhere: Vec<(Fingerprint, u64, Fingerprint)>,
        raw: &[u8],
    ) -> Vec<(Fingerprint, u64)> {
        let (slots, scopes, awaiting) = match target {
            Target::Clients(_) => {
                let scopes: Vec<Scope> = elsewhere
                    .iter()
                    .map(|(fp, _, _)| Scope::Client(*fp))
                    .collect();
                (elsewhere, scopes, Vec::new())
            }
            Target::All | Target::Subtree(_) => {
                let awaiting = cluster.other_servers();
                if awaiting.is_empty() {
                    return Vec::new();
                }
                let slots = cluster
                    .remotes()
                    .into_iter()
                    .filter(|r| match target {
                        Target::Subtree(path) => r
                            .presence
                            .tree_path
                            .as_ref()
                            .is_some_and(|p| !p.is_empty() && p.starts_with(path)),
                        _ => true,
                    })
                    .map(|r| (r.client, r.presence.session, r.presence.server))
                    .collect();
                let scope = match target {
                    Target::Subtree(path) => Scope::Subtree(path.clone()),
                    _ => Scope::All,
                };
                (slots, vec![scope], awaiting)
            }
        };
        if scopes.is_empty() {
            return Vec::new();
        }
        let sent: Vec<(Fingerprint, u64)> = slots.iter().map(|(fp, s, _)| (*fp, *s)).collect();
        tracker.add_remote(slots, !matches!(target, Target::Clients(_)), awaiting);
        self.shared.routed.insert(tracker.clone());
        let command = Bytes::copy_from_slice(raw);
        for scope in scopes {
            if !cluster.send(&tracker.reference, scope, command.clone()) {
                tracing::warn!(command_id = %tracker.command_id, "the cluster link went down while sending: the other servers' clients are settled as disconnected");
            }
        }
        sent
    }
}

//! Signed heartbeats: one signature per beat for every client.
//!
//! A client that sends nonces (`hb:nonce`) gets a `vigil-heartbeat-v2`
//! beat: the server builds a Merkle tree over the latest nonce of every
//! such client, signs the root once, and sends each its own leaf's path
//! (`vigil_command::SignedBatch`). A client that sends none (an older
//! client, or one set to clock freshness) gets the `vigil-heartbeat-v1`
//! beat, signed once for all of them. Either way the signatures per beat
//! do not grow with the number of clients.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;
use serde_json::Value;
use vigil_auth::Fingerprint;
use vigil_command::{Nonce, SignedBatch, Timestamp};
use vigil_proto::ServerMessage;

use super::session;
use super::{Item, Lane, Shared};
use crate::outbound::SharedOutbound;

/// What the server knows of one client's heartbeats.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct BeatSlot {
    /// The latest nonce the client sent; every beat covers it until the
    /// client sends another.
    pub(crate) nonce: Option<Nonce>,
    /// The clock offset the client last said it measured.
    pub(crate) skew_ms: Option<i64>,
}

/// Offsets a client may report, at most (±10 years): the client's word,
/// shown to operators, so that one client cannot make the fleet-wide
/// gauge meaningless.
const MAX_SKEW_MS: i64 = 10 * 366 * 24 * 3600 * 1000;

impl BeatSlot {
    /// Takes a client's `hb:nonce`: the nonce the next beats cover, and the
    /// offset it said, if any (bounded).
    pub(crate) fn record(&mut self, nonce: Nonce, skew_ms: Option<i64>) {
        self.nonce = Some(nonce);
        if let Some(s) = skew_ms {
            self.skew_ms = Some(s.clamp(-MAX_SKEW_MS, MAX_SKEW_MS));
        }
    }
}

/// A session's [`BeatSlot`], shared by the session and the heartbeat task.
pub(crate) type SharedBeat = Arc<Mutex<BeatSlot>>;

pub(crate) fn lock_beat(beat: &SharedBeat) -> MutexGuard<'_, BeatSlot> {
    beat.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

struct Target {
    id: u64,
    fingerprint: Fingerprint,
    out: SharedOutbound,
}

/// Signs one heartbeat per interval and sends it to every client.
pub(super) async fn heartbeats(shared: Arc<Shared>, authority: crate::Authority) {
    // The epoch changes at every start: the time in microseconds, so that
    // a later start has a larger epoch (clock clients compare them by
    // `sent_at`); random if the clock is before 1970, so that two starts
    // never share one (a nonce client would refuse the second start's
    // beats until its `seq` passed the first's).
    let epoch = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .and_then(|d| u64::try_from(d.as_micros()).ok())
        .filter(|e| *e != 0)
        .unwrap_or_else(|| {
            let mut bytes = [0u8; 8];
            let _ = getrandom::fill(&mut bytes);
            u64::from_le_bytes(bytes)
        });
    let mut ticker = tokio::time::interval(shared.config.heartbeat_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq: u64 = 0;
    tracing::info!(epoch, interval = ?shared.config.heartbeat_interval, "sending signed heartbeats");
    let pulse = &shared.liveness.heartbeats;
    let mut questions = pulse.listen();
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = shared.liveness.faults.heartbeats_frozen.cancelled() => {
                // Stuck as a hung task would be, until shutdown.
                shared.shutdown.cancelled().await;
                return;
            }
            Ok(()) = questions.changed() => {
                pulse.answer(&mut questions);
                continue;
            }
            _ = ticker.tick() => {}
        }
        seq += 1;
        let Ok(sent_at) = Timestamp::from_system_time(SystemTime::now()) else {
            tracing::error!("the clock is out of range: heartbeat skipped");
            continue;
        };
        // Off the runtime's workers: at 19,000 clients the tree and the
        // frames take about 50 ms, which would hold up sessions.
        let (task_shared, key) = (shared.clone(), authority.key.clone());
        let done =
            tokio::task::spawn_blocking(move || beat_once(&task_shared, &key, epoch, seq, sent_at))
                .await;
        let Ok((sent, covered)) = done else {
            tracing::error!(
                heartbeat_seq = seq,
                "the heartbeat task failed: beat skipped"
            );
            continue;
        };
        shared.stats.heartbeats.inc();
        tracing::trace!(
            heartbeat_seq = seq,
            clients = sent,
            nonces = covered,
            "heartbeat"
        );
    }
}

/// Sends beat `seq` to every session: returns how many it was queued for
/// and how many of those got a nonce beat.
fn beat_once(
    shared: &Shared,
    key: &vigil_command::SigningKey,
    epoch: u64,
    seq: u64,
    sent_at: Timestamp,
) -> (usize, usize) {
    let mut nonced: Vec<(Target, Nonce)> = Vec::new();
    let mut clocked: Vec<Target> = Vec::new();
    for h in shared.sessions().values() {
        let target = Target {
            id: h.info.id,
            fingerprint: h.info.fingerprint,
            out: h.out.clone(),
        };
        match lock_beat(&h.beat).nonce {
            Some(nonce) => nonced.push((target, nonce)),
            None => clocked.push(target),
        }
    }
    let reference = format!("hb{seq}");
    let mut queued = 0;
    if !clocked.is_empty() {
        let beat = vigil_command::Heartbeat {
            epoch,
            seq,
            sent_at,
        }
        .sign(key);
        if let Ok(Value::Object(body)) = serde_json::to_value(&beat) {
            let bytes = session::encode(&ServerMessage::Heartbeat(body), &reference);
            for t in &clocked {
                queued += usize::from(push(shared, t, bytes.clone()));
            }
        }
    }
    let (targets, nonces): (Vec<Target>, Vec<Nonce>) = nonced.into_iter().unzip();
    let covered = targets.len();
    if let Some(batch) = SignedBatch::sign(key, epoch, seq, sent_at, nonces) {
        for (i, t) in targets.iter().enumerate() {
            // Written directly: the payload is the beat's JSON object.
            let Some(Ok(json)) = batch.for_leaf(i).map(|b| serde_json::to_string(&b)) else {
                continue;
            };
            let bytes = Bytes::from(format!("hb:beat:{reference} {json}\n"));
            queued += usize::from(push(shared, t, bytes));
        }
    }
    (queued, covered)
}

fn push(shared: &Shared, t: &Target, bytes: Bytes) -> bool {
    let item = Item {
        bytes,
        delivery: None,
        lane: Lane::Control,
    };
    shared.push(t.id, &t.fingerprint, &t.out, item).is_ok()
}

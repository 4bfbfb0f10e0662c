//! The server's counters, read by `/metrics` and the tests.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Counters kept by the server.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ServerStats {
    /// TCP connections accepted.
    pub accepted: Counter,
    /// Connections dropped at once because the limit was reached and every
    /// connection was a session (none was waiting to be shed).
    pub refused_at_limit: Counter,
    /// Connections still in their TLS handshake that were closed to make
    /// room for a newer one (the limit was reached, or their source had
    /// too many handshakes in progress).
    pub shed: Counter,
    /// Handshakes completed.
    pub handshakes_ok: Counter,
    /// Handshakes that failed (untrusted key, bad TLS, timeout).
    pub handshakes_failed: Counter,
    /// Frames answered with an error because they were malformed or not understood.
    pub bad_frames: Counter,
    /// Sessions closed because the client's queue was full.
    pub slow_consumers: Counter,
    /// Commands queued to a session.
    pub commands_sent: Counter,
    /// Commands not queued because the client's command queue was full
    /// (it answers more slowly than they come): their outcome is
    /// `queue_full`.
    pub commands_queue_full: Counter,
    /// Acknowledgements by outcome.
    pub acks_done: Counter,
    /// Acknowledgements saying the command ran and failed.
    pub acks_failed: Counter,
    /// Acknowledgements saying the client refused the command.
    pub acks_refused: Counter,
    /// Sessions closed because their client attached to another server
    /// of the cluster since.
    pub sessions_displaced: Counter,
    /// Failsafe transitions reported by clients.
    pub failsafe_reports: Counter,
    /// Heartbeats sent (one signature each, shared by every client).
    pub heartbeats: Counter,
    /// Modules loaded.
    pub module_loaded: Counter,
    /// Modules reloaded.
    pub module_reloaded: Counter,
    /// Modules unloaded.
    pub module_unloaded: Counter,
    /// Module files rejected.
    pub module_rejected: Counter,
    /// Audit records dropped because too many were waiting (handshake
    /// refusals, acknowledgements; never commands, which are refused
    /// instead).
    pub audit_dropped: Counter,
    /// Refused TLS handshakes (a stranger's key, no key, not TLS, too
    /// slow, a revoked key).
    pub refused_handshakes: Counter,
    /// Refused emergency shutdown attempts (malformed, forged, stale,
    /// replayed...).
    pub refused_emergency: Counter,
    /// Sessions that came over the WebSocket transport (upgrades accepted).
    pub websocket_sessions: Counter,
    /// WebSocket upgrades refused: another path than `/vigil` (404).
    pub websocket_wrong_path: Counter,
    /// WebSocket upgrades refused: the `vigil.v1` subprotocol not offered (400).
    pub websocket_subprotocol: Counter,
    /// WebSocket upgrades that were not one (not HTTP, not an upgrade, cut
    /// short or too slow).
    pub websocket_bad_upgrade: Counter,
    /// WebSocket sessions closed for what the frame grammar cannot carry
    /// (binary, oversized, a newline in a message), by kind.
    pub websocket_violations: std::sync::Arc<vigil_ws::Violations>,
    /// Refusals recorded one by one (the rest are only counted, in
    /// `refusals.summary` records).
    pub refusals_recorded: Counter,
}

/// Latency histograms, in seconds: 0.25 ms to about 8 s, doubling.
#[derive(Debug, Clone)]
pub(crate) struct Latencies {
    /// Resolving a delivery's targets and queueing it for every one.
    pub(crate) fanout: Histogram,
    /// A module call, from its frame read to its answer queued.
    pub(crate) exec: Histogram,
    /// A `/send` request, from its body read to its answer (with `?wait`,
    /// the wait included).
    pub(crate) send: Histogram,
}

impl Default for Latencies {
    fn default() -> Self {
        let buckets = || Histogram::new(exponential_buckets(0.000_25, 2.0, 16));
        Latencies {
            fanout: buckets(),
            exec: buckets(),
            send: buckets(),
        }
    }
}

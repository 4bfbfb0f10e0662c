//! Liveness: the parts of a server that a hung server stops answering,
//! asked by a supervisor (the binary's systemd watchdog) before it says
//! the server is alive.
//!
//! Each long-lived loop (the accept loop, the heartbeat task) listens on
//! a [`Pulse`] beside its own work and answers every question between two
//! turns; a loop stuck inside a turn (a lock never released, a blocking
//! call, an injected freeze) answers none. The audit writer is asked
//! through its own queue ([`vigil_audit::AuditLog::probe`]), so a writer
//! stuck in a write or a sync on a hung disk answers none either.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::watch;

/// One loop's questions and answers: a question is a number, the answer
/// the same number once the loop got to it.
#[derive(Debug)]
pub(crate) struct Pulse {
    asked: watch::Sender<u64>,
    answered: watch::Sender<u64>,
    /// Whether the loop runs (a question to a loop not started yet, or
    /// one the configuration leaves out, is not a failure to answer).
    running: AtomicBool,
}

impl Default for Pulse {
    fn default() -> Self {
        Pulse {
            asked: watch::channel(0).0,
            answered: watch::channel(0).0,
            running: AtomicBool::new(false),
        }
    }
}

impl Pulse {
    /// For the loop: the questions to answer. Marks it running.
    pub(crate) fn listen(&self) -> watch::Receiver<u64> {
        self.running.store(true, Ordering::SeqCst);
        self.asked.subscribe()
    }

    /// For the loop: answers the latest question `questions` holds.
    pub(crate) fn answer(&self, questions: &mut watch::Receiver<u64>) {
        let n = *questions.borrow_and_update();
        self.answered.send_replace(n);
    }

    /// Whether the loop was started.
    pub(crate) fn running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// Asks, and waits at most `within` for the answer.
    pub(crate) async fn ask(&self, within: Duration) -> bool {
        let mut n = 0;
        self.asked.send_modify(|asked| {
            *asked += 1;
            n = *asked;
        });
        let mut answers = self.answered.subscribe();
        matches!(
            tokio::time::timeout(within, answers.wait_for(|a| *a >= n)).await,
            Ok(Ok(_))
        )
    }
}

/// The parts of a server that [`ServerHandle::check_alive`] asks.
///
/// [`ServerHandle::check_alive`]: super::ServerHandle::check_alive
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Part {
    /// The loop that accepts connections on both ports.
    AcceptLoop,
    /// The task that signs and sends heartbeats.
    Heartbeats,
    /// The thread that writes the audit log.
    AuditWriter,
}

impl Part {
    /// Its name in logs and in the service status: `accept_loop`,
    /// `heartbeats`, `audit_writer`.
    pub fn as_str(self) -> &'static str {
        match self {
            Part::AcceptLoop => "accept_loop",
            Part::Heartbeats => "heartbeats",
            Part::AuditWriter => "audit_writer",
        }
    }
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parts that did not answer in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not answering within {within:?}: {}", list(.parts))]
pub struct Unresponsive {
    /// The parts that did not answer.
    pub parts: Vec<Part>,
    /// How long each was given.
    pub within: Duration,
}

fn list(parts: &[Part]) -> String {
    parts
        .iter()
        .map(|p| p.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A fault to inject into a running server, to test what supervises it
/// (the systemd watchdog): see [`ServerHandle::inject_fault`].
///
/// [`ServerHandle::inject_fault`]: super::ServerHandle::inject_fault
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// The accept loop stops: no connection is accepted and no liveness
    /// question answered, until shutdown.
    FreezeAcceptLoop,
    /// The heartbeat task stops: no heartbeat is sent and no liveness
    /// question answered, until shutdown (clients' failsafes will fire).
    FreezeHeartbeats,
}

/// The faults injected so far.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    pub(crate) accept_frozen: tokio_util::sync::CancellationToken,
    pub(crate) heartbeats_frozen: tokio_util::sync::CancellationToken,
}

/// The pulses of one server.
#[derive(Debug, Default)]
pub(crate) struct Liveness {
    pub(crate) accept: Pulse,
    pub(crate) heartbeats: Pulse,
    pub(crate) faults: Faults,
}

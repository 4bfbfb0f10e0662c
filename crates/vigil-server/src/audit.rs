//! The server's audit log, and its recovery after a failure.
//!
//! [`vigil_audit::AuditLog`] fails closed: after a write or sync fails it
//! refuses every record until the log is opened again, because only a
//! fresh open re-reads the file and knows what is really on disk. The
//! server does that open itself: the first record after a failure (at most
//! once a second) reopens the log, which re-checks the chain and continues
//! it from what the file holds. While the fault lasts (a full disk, a file
//! system remounted read-only), records keep failing and the REST API keeps
//! answering 503; once it clears, service resumes without a restart.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use vigil_audit::{AuditError, AuditLog, AuditOptions, Receipt};

/// Least time between two reopen attempts.
const REOPEN_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct State {
    log: AuditLog,
    last_attempt: Option<Instant>,
}

/// An audit log that reopens itself after a failure.
#[derive(Debug)]
pub(crate) struct Audit {
    path: PathBuf,
    state: Mutex<State>,
}

impl Audit {
    pub(crate) fn new(log: AuditLog) -> Audit {
        Audit {
            path: log.path().to_owned(),
            state: Mutex::new(State {
                log,
                last_attempt: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The log to append to now, and whether it stopped after a failure
    /// and a reopen is due.
    fn current(&self) -> (AuditLog, bool) {
        let mut state = self.lock();
        let stopped = state.log.failure().is_some();
        let due = stopped
            && state
                .last_attempt
                .is_none_or(|t| t.elapsed() >= REOPEN_EVERY);
        if due {
            state.last_attempt = Some(Instant::now());
        }
        (state.log.clone(), due)
    }

    /// Appends a record and waits until it is durable; after a failure,
    /// reopens the log first (see the module docs).
    pub(crate) async fn append(&self, kind: &str, details: Value) -> Result<Receipt, AuditError> {
        let (log, reopen) = self.current();
        let log = if reopen {
            self.reopen().await.unwrap_or(log)
        } else {
            log
        };
        log.append(kind, details).await
    }

    /// Opens the log again; on success it replaces the stopped one.
    async fn reopen(&self) -> Option<AuditLog> {
        let path = self.path.clone();
        let options: AuditOptions = self.lock().log.options().clone();
        let opened = tokio::task::spawn_blocking(move || AuditLog::open(&path, options)).await;
        match opened {
            Ok(Ok(log)) => {
                let report = log.open_report();
                tracing::warn!(
                    path = %self.path.display(),
                    next_seq = report.next_seq,
                    torn_tail = report.torn_tail.is_some(),
                    "audit log reopened after a failure: records continue"
                );
                self.lock().log = log.clone();
                Some(log)
            }
            Ok(Err(e)) => {
                tracing::error!(path = %self.path.display(), error = %e, "audit log still cannot be reopened");
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "reopening the audit log panicked");
                None
            }
        }
    }

    /// Stops the log: what was acknowledged is on disk already.
    pub(crate) async fn close(&self) -> Result<(), AuditError> {
        let log = self.lock().log.clone();
        log.close().await
    }
}

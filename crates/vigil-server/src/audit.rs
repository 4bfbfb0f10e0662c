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
//!
//! Essential records (an authorized emergency shutdown) always try a
//! reopen first, and may use the log's reserve: a full disk does not stop
//! them. The wrapper also remembers how the last write went, for
//! `/health` and `/metrics`.

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
    /// Why the last write failed, and since when; `None` once one works.
    problem: Option<AuditProblem>,
}

/// Why the audit log cannot record now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuditProblem {
    /// A stable reason: `disk_full`, `file_size_limit`, `read_only`,
    /// `io_error`.
    pub(crate) reason: &'static str,
    /// The error, for a person.
    pub(crate) detail: String,
    /// When it started.
    pub(crate) since: std::time::SystemTime,
}

/// How the audit log stands, for `/health` and `/metrics`.
#[derive(Debug, Clone)]
pub(crate) struct AuditHealth {
    pub(crate) problem: Option<AuditProblem>,
    /// Bytes held in reserve for essential records.
    pub(crate) reserve_bytes: u64,
    /// The reserve asked for.
    pub(crate) reserve_wanted: u64,
    /// Free bytes on the audit log's file system, if known.
    pub(crate) free_bytes: Option<u64>,
    /// Sealed segments kept, at the last open.
    pub(crate) sealed_segments: u64,
}

/// The stable reason of a failed append.
fn reason_of(e: &AuditError) -> &'static str {
    let Some(failure) = e.failure() else {
        return "io_error";
    };
    if failure.is_disk_full() {
        return "disk_full";
    }
    match failure.source.raw_os_error() {
        Some(code) if code == rustix::io::Errno::FBIG.raw_os_error() => "file_size_limit",
        Some(code)
            if code == rustix::io::Errno::ROFS.raw_os_error()
                || code == rustix::io::Errno::PERM.raw_os_error()
                || code == rustix::io::Errno::ACCESS.raw_os_error() =>
        {
            "read_only"
        }
        _ => "io_error",
    }
}

/// Logs a written record with its `audit_seq`: at info level for a
/// command issued or withdrawn (one line per command, which ties its
/// `command_id` to its place in the chain), at debug for the rest.
fn log_record(kind: &str, command_id: Option<&str>, audit_seq: u64) {
    if info_record(kind) {
        tracing::info!(kind, command_id, audit_seq, "audit record written");
    } else {
        tracing::debug!(kind, command_id, audit_seq, "audit record written");
    }
}

fn info_record(kind: &str) -> bool {
    matches!(kind, "command.issued" | "command.withdrawn")
}

/// Whether [`log_record`] writes a line for `kind` (so its command id is
/// worth reading).
fn logs_record(kind: &str) -> bool {
    info_record(kind) || tracing::enabled!(tracing::Level::DEBUG)
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
                problem: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The log to append to now, and whether it stopped after a failure
    /// and a reopen is due (always, for an essential record).
    fn current(&self, essential: bool) -> (AuditLog, bool) {
        let mut state = self.lock();
        let stopped = state.log.failure().is_some();
        let due = stopped
            && (essential
                || state
                    .last_attempt
                    .is_none_or(|t| t.elapsed() >= REOPEN_EVERY));
        if due {
            state.last_attempt = Some(Instant::now());
        }
        (state.log.clone(), due)
    }

    /// Appends a record and waits until it is durable; after a failure,
    /// reopens the log first (see the module docs).
    pub(crate) async fn append(&self, kind: &str, details: Value) -> Result<Receipt, AuditError> {
        self.append_as(kind, details, false).await
    }

    /// As [`Audit::append`], for a record that may use the log's reserve
    /// when the disk is full, and that tries a reopen at once.
    pub(crate) async fn append_essential(
        &self,
        kind: &str,
        details: Value,
    ) -> Result<Receipt, AuditError> {
        self.append_as(kind, details, true).await
    }

    async fn append_as(
        &self,
        kind: &str,
        details: Value,
        essential: bool,
    ) -> Result<Receipt, AuditError> {
        let details_id = logs_record(kind)
            .then(|| details.get("command_id").and_then(Value::as_str))
            .flatten()
            .map(str::to_owned);
        let (log, reopen) = self.current(essential);
        let log = if reopen {
            self.reopen().await.unwrap_or(log)
        } else {
            log
        };
        let result = if essential {
            log.append_essential(kind, details).await
        } else {
            log.append(kind, details).await
        };
        if let Ok(receipt) = &result {
            log_record(kind, details_id.as_deref(), receipt.seq);
        }
        let mut state = self.lock();
        match &result {
            Ok(_) => state.problem = None,
            Err(e) if e.failure().is_some() => {
                let reason = reason_of(e);
                if state.problem.as_ref().is_none_or(|p| p.reason != reason) {
                    state.problem = Some(AuditProblem {
                        reason,
                        detail: e.to_string(),
                        since: std::time::SystemTime::now(),
                    });
                }
            }
            // The record itself was refused (too large, bad kind): the log
            // is as it was.
            Err(_) => {}
        }
        result
    }

    /// How the log stands.
    pub(crate) fn health(&self) -> AuditHealth {
        let state = self.lock();
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        let free_bytes = rustix::fs::statvfs(&dir)
            .ok()
            .map(|st| st.f_bavail.saturating_mul(st.f_frsize));
        AuditHealth {
            problem: state.problem.clone(),
            reserve_bytes: state.log.stats().reserve_bytes,
            reserve_wanted: state.log.options().reserve_bytes,
            free_bytes,
            sealed_segments: {
                let stats = state.log.stats();
                (state.log.open_report().sealed_segments + stats.segments_sealed)
                    .saturating_sub(stats.segments_deleted)
            },
        }
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

    /// Whether the log's writer answers (see [`AuditLog::probe`]). A log
    /// that stopped after a failure answers `Ok`: its writer is gone, not
    /// stuck, and the next record reopens it.
    pub(crate) async fn probe(&self) -> Result<(), AuditError> {
        let log = self.lock().log.clone();
        match log.probe().await {
            Err(AuditError::Poisoned { .. }) => Ok(()),
            other => other,
        }
    }

    /// Stops the log: what was acknowledged is on disk already.
    pub(crate) async fn close(&self) -> Result<(), AuditError> {
        let log = self.lock().log.clone();
        log.close().await
    }
}

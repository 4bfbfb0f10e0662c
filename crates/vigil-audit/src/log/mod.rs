//! [`AuditLog`]: its public API (options, reports, receipts, appending,
//! closing) and the state its handles share with the writer thread.
//!
//! How the work is cut: [`open`](AuditLog::open) with its recovery is in
//! `open`, the writer thread and its group commit in `writer`, sealing
//! and retention in `rotate`, the disk reserve in `reserve`.

mod open;
mod reserve;
mod rotate;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::error::{AuditError, Failure};
use crate::hash::RecordHash;
use crate::problem::Problem;
use crate::record::encode_object;
use crate::sink::FaultInjection;

/// Default for [`AuditOptions::max_record_bytes`]: 64 KiB.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 64 << 10;

/// Default for [`AuditOptions::queue_capacity`].
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;

/// Longest accepted record kind, in bytes.
pub const MAX_KIND_BYTES: usize = 128;

/// Default for [`AuditOptions::segment_max_bytes`]: 16 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 16 << 20;
/// Default for [`AuditOptions::segment_max_age`]: a day.
pub const DEFAULT_SEGMENT_AGE: Duration = Duration::from_secs(24 * 60 * 60);
/// Default for [`AuditOptions::keep_segments`].
pub const DEFAULT_KEEP_SEGMENTS: usize = 256;
/// Default for [`AuditOptions::reserve_bytes`]: 1 MiB.
pub const DEFAULT_RESERVE_BYTES: u64 = 1 << 20;

/// An upper bound on the bytes a line takes beyond its kind and its
/// encoded details: the fixed member names, a 20-digit seq, the time, two
/// hashes and the newline.
const RECORD_OVERHEAD: usize = 235;

/// How [`AuditLog::open`] treats a chain that is broken before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnCorruption {
    /// Refuse to open: [`AuditError::Corrupt`] says where the chain breaks.
    #[default]
    Refuse,
    /// Open anyway and append after everything the file holds: the next
    /// seq is one more than the highest seq any line claims, and the next
    /// `prev` is the `hash` stated by the last complete line that states
    /// one. The break stays in the file (so [`verify`](crate::verify)
    /// still reports it) and is in [`OpenReport::problem`].
    Continue,
}

/// Settings for [`AuditLog::open`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AuditOptions {
    /// Create the file when it does not exist (default `true`).
    pub create: bool,
    /// What to do with a chain that breaks before its end (default
    /// [`OnCorruption::Refuse`]).
    pub on_corruption: OnCorruption,
    /// Longest record, as encoded with its newline (default
    /// [`DEFAULT_MAX_RECORD_BYTES`]); capped at
    /// [`MAX_LINE_BYTES`](crate::MAX_LINE_BYTES). A longer record is
    /// refused by [`AuditLog::append`] with [`AuditError::RecordTooLarge`].
    pub max_record_bytes: usize,
    /// Records waiting for the writer before
    /// [`append`](AuditLog::append) waits for room (default
    /// [`DEFAULT_QUEUE_CAPACITY`]). It is also the most records one batch
    /// (one write and one sync) takes. Queued memory is at most
    /// `queue_capacity × max_record_bytes`.
    pub queue_capacity: usize,
    /// Makes the file's writes or syncs fail on purpose, to test the
    /// fail-closed path. Only with the `test-util` feature: see
    /// [`FaultInjection`].
    #[cfg(feature = "test-util")]
    pub fault_injection: Option<FaultInjection>,
    /// The open segment is sealed, and a new one started, before a batch
    /// would take it past this size (default [`DEFAULT_SEGMENT_BYTES`]).
    /// Opening reads only the open segment whole, so this bounds the time
    /// an open takes, whatever the log's history.
    pub segment_max_bytes: u64,
    /// ... or once its first record is older than this (default
    /// [`DEFAULT_SEGMENT_AGE`]; `None`: no age limit).
    pub segment_max_age: Option<Duration>,
    /// At most this many sealed segments are kept; older ones are deleted,
    /// after a record of the chain says which (default
    /// [`DEFAULT_KEEP_SEGMENTS`]; `None`: keep every one).
    pub keep_segments: Option<usize>,
    /// Sealed segments sealed longer ago than this are deleted the same way
    /// (default `None`: no age limit).
    pub keep_age: Option<Duration>,
    /// Bytes held in reserve, in `<log>.reserve`, for records appended with
    /// [`AuditLog::append_essential`]: when the disk is full, the reserve
    /// is released so that they are still written (default
    /// [`DEFAULT_RESERVE_BYTES`]; 0: no reserve).
    pub reserve_bytes: u64,
}

impl AuditOptions {
    /// The faults to inject: none without the `test-util` feature.
    pub(crate) fn faults(&self) -> Option<FaultInjection> {
        #[cfg(feature = "test-util")]
        return self.fault_injection.clone();
        #[cfg(not(feature = "test-util"))]
        None
    }
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            create: true,
            on_corruption: OnCorruption::Refuse,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            #[cfg(feature = "test-util")]
            fault_injection: None,
            segment_max_bytes: DEFAULT_SEGMENT_BYTES,
            segment_max_age: Some(DEFAULT_SEGMENT_AGE),
            keep_segments: Some(DEFAULT_KEEP_SEGMENTS),
            keep_age: None,
            reserve_bytes: DEFAULT_RESERVE_BYTES,
        }
    }
}

/// Proof that a record is in the log and synced to disk.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Receipt {
    /// The record's seq.
    pub seq: u64,
    /// The record's hash (the next record's `prev`).
    pub hash: RecordHash,
}

/// What [`AuditLog::open`] found in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpenReport {
    /// Whether the file was created by this open.
    pub created: bool,
    /// Records of the open segment that passed every check, from its first
    /// line on (with [`OnCorruption::Continue`], those before the break).
    /// Sealed segments are not read whole at open: their heads are checked.
    pub records: u64,
    /// Sealed segments kept (their heads were checked).
    pub sealed_segments: u64,
    /// The seq of the first record kept (1 unless old segments were
    /// deleted).
    pub first_seq: u64,
    /// Bytes held in reserve for essential records.
    pub reserve_bytes: u64,
    /// The seq the next record gets.
    pub next_seq: u64,
    /// The `prev` the next record gets.
    pub prev: RecordHash,
    /// An unterminated last line that was cut off.
    pub torn_tail: Option<TornTail>,
    /// Where the chain breaks, when it was opened anyway
    /// ([`OnCorruption::Continue`]).
    pub problem: Option<Problem>,
}

/// An unterminated last line cut off by [`AuditLog::open`].
///
/// The writer acknowledges a record only after its whole line, newline
/// included, is synced, so such a line was never acknowledged: it is the
/// trace of a crash or a failed write.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TornTail {
    /// Where the cut bytes began in the log (the log's new length).
    pub offset: u64,
    /// How many bytes were cut.
    pub len: u64,
    /// The file that keeps them: the log's name with `.torn` added. Each
    /// cut appends one JSON line to it: `time`, `offset`, `len`,
    /// `after_seq` (the seq of the record before), and `bytes_hex`.
    pub saved_to: PathBuf,
}

/// Counters of a log since it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct AuditStats {
    /// Records acknowledged.
    pub records: u64,
    /// Batches written (each one write and one sync).
    pub batches: u64,
    /// Successful `fdatasync` calls.
    pub syncs: u64,
    /// Bytes acknowledged.
    pub bytes: u64,
    /// Records in the largest batch.
    pub largest_batch: u64,
    /// Segments sealed.
    pub segments_sealed: u64,
    /// Sealed segments deleted by retention.
    pub segments_deleted: u64,
    /// Bytes held in reserve now (0 once released).
    pub reserve_bytes: u64,
}

/// An open, append-only, hash-chained audit log.
///
/// Cheap to clone; every clone appends to the same log, from any task or
/// thread. See the [crate docs](crate) for the format and the guarantees.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Handle>,
}

struct Handle {
    path: PathBuf,
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    max_record_bytes: usize,
    report: OpenReport,
    options: AuditOptions,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.inner.path)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// State the writer shares with the handles.
#[derive(Default)]
struct Shared {
    /// Set once, by the writer, when a write fails.
    poison: OnceLock<Failure>,
    closed: AtomicBool,
    records: AtomicU64,
    batches: AtomicU64,
    syncs: AtomicU64,
    bytes: AtomicU64,
    largest_batch: AtomicU64,
    segments_sealed: AtomicU64,
    segments_deleted: AtomicU64,
    reserve_bytes: AtomicU64,
}

enum Msg {
    Append(Pending),
    Close(oneshot::Sender<()>),
    /// Answered once the writer has committed what was queued before it.
    Probe(oneshot::Sender<()>),
}

struct Pending {
    kind: String,
    /// Canonical JSON, encoded by the caller's task.
    details: String,
    /// May use the reserve.
    essential: bool,
    reply: oneshot::Sender<Result<Receipt, AuditError>>,
}

impl AuditLog {
    /// Appends a record and returns once it is written and synced
    /// (`fdatasync`) to disk.
    ///
    /// `kind` names the event (`"command.issued"`): 1 to
    /// [`MAX_KIND_BYTES`] ASCII letters, digits, `.`, `_` or `-`.
    /// `details` must be a JSON object.
    ///
    /// Records from concurrent callers share syncs: the writer takes every
    /// record queued while it was busy, writes them at once, syncs once and
    /// acknowledges them all. Records get their seq in the order the
    /// writer receives them.
    ///
    /// Dropping the future does not withdraw the record: once queued, it
    /// may still be written.
    ///
    /// # Errors
    ///
    /// Any error means the record was **not** acknowledged.
    /// [`AuditError::InvalidKind`], [`AuditError::DetailsNotObject`] and
    /// [`AuditError::RecordTooLarge`] refuse the record itself;
    /// [`AuditError::Failed`] says the write or sync failed (the log then
    /// refuses everything with [`AuditError::Poisoned`] until it is
    /// opened again); [`AuditError::Closed`] after [`close`](Self::close).
    pub async fn append(&self, kind: &str, details: Value) -> Result<Receipt, AuditError> {
        self.append_as(kind, details, false).await
    }

    /// As [`append`](Self::append), for a record that must be written even
    /// when the disk is otherwise full: if a write fails for want of
    /// space, the log releases its reserve ([`AuditOptions::reserve_bytes`])
    /// and tries again. For the few records that stand between an
    /// authorized emergency action and its being carried out.
    ///
    /// # Errors
    ///
    /// As [`append`](Self::append).
    pub async fn append_essential(
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
        check_kind(kind)?;
        let map = match details {
            Value::Object(map) => map,
            other => {
                return Err(AuditError::DetailsNotObject {
                    found: json_type(&other),
                });
            }
        };
        let mut encoded = String::new();
        encode_object(&map, &mut encoded);
        let size = RECORD_OVERHEAD + kind.len() + encoded.len();
        if size > self.inner.max_record_bytes {
            return Err(AuditError::RecordTooLarge {
                size,
                limit: self.inner.max_record_bytes,
            });
        }
        if let Some(refusal) = self.refusal() {
            return Err(refusal);
        }
        let (reply, answer) = oneshot::channel();
        let msg = Msg::Append(Pending {
            kind: kind.to_owned(),
            details: encoded,
            essential,
            reply,
        });
        if self.inner.tx.send(msg).await.is_err() {
            return Err(self.stopped());
        }
        answer.await.unwrap_or_else(|_| Err(self.stopped()))
    }

    /// Stops the log: records queued before this call are written and
    /// acknowledged as usual, later ones get [`AuditError::Closed`], and
    /// the file and its lock are released before this returns. Closing a
    /// closed log does nothing.
    ///
    /// Every acknowledged record is already on disk, so closing is not
    /// needed for durability; dropping every clone of the log stops it
    /// too, but the writer lets go of the file a moment later rather than
    /// at once: close first to open the log again right away.
    ///
    /// # Errors
    ///
    /// [`AuditError::Poisoned`] when the log had stopped after a failure.
    pub async fn close(&self) -> Result<(), AuditError> {
        let (tx, rx) = oneshot::channel();
        if self.inner.tx.send(Msg::Close(tx)).await.is_ok() {
            // Answered (or dropped) once the file is released.
            let _ = rx.await;
        }
        match self.inner.shared.poison.get() {
            Some(failure) => Err(AuditError::Poisoned {
                path: self.inner.path.clone(),
                failure: failure.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Resolves once the writer thread has taken everything queued before
    /// this call and committed it (or, with nothing queued, at once): a
    /// liveness check that a writer stuck in a write or a sync does not
    /// answer. A service watchdog asks it, with a deadline of its own.
    ///
    /// # Errors
    ///
    /// As [`close`](Self::close) for a log that has stopped after a
    /// failure ([`AuditError::Poisoned`]) or been closed
    /// ([`AuditError::Closed`]): its writer is gone, not stuck.
    pub async fn probe(&self) -> Result<(), AuditError> {
        if let Some(refusal) = self.refusal() {
            return Err(refusal);
        }
        let (tx, rx) = oneshot::channel();
        if self.inner.tx.send(Msg::Probe(tx)).await.is_err() {
            return Err(self.stopped());
        }
        rx.await.map_err(|_| self.stopped())
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The options the log was opened with (to open it again the same
    /// way).
    pub fn options(&self) -> &AuditOptions {
        &self.inner.options
    }

    /// What opening the file found.
    pub fn open_report(&self) -> &OpenReport {
        &self.inner.report
    }

    /// Counters since the log was opened.
    pub fn stats(&self) -> AuditStats {
        let s = &self.inner.shared;
        AuditStats {
            records: s.records.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
            syncs: s.syncs.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
            largest_batch: s.largest_batch.load(Ordering::Relaxed),
            segments_sealed: s.segments_sealed.load(Ordering::Relaxed),
            segments_deleted: s.segments_deleted.load(Ordering::Relaxed),
            reserve_bytes: s.reserve_bytes.load(Ordering::Relaxed),
        }
    }

    /// The failure that stopped the log, if one did.
    pub fn failure(&self) -> Option<&Failure> {
        self.inner.shared.poison.get()
    }

    /// The error for a log that takes no more records, if it is one.
    fn refusal(&self) -> Option<AuditError> {
        let shared = &self.inner.shared;
        if let Some(failure) = shared.poison.get() {
            return Some(AuditError::Poisoned {
                path: self.inner.path.clone(),
                failure: failure.clone(),
            });
        }
        shared
            .closed
            .load(Ordering::SeqCst)
            .then(|| AuditError::Closed {
                path: self.inner.path.clone(),
            })
    }

    /// The error for a writer that has gone away.
    fn stopped(&self) -> AuditError {
        self.refusal().unwrap_or_else(|| AuditError::Closed {
            path: self.inner.path.clone(),
        })
    }
}

fn check_kind(kind: &str) -> Result<(), AuditError> {
    let reason = if kind.is_empty() {
        "empty"
    } else if kind.len() > MAX_KIND_BYTES {
        "longer than 128 bytes"
    } else if !kind
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        "only ASCII letters, digits, '.', '_' and '-' are allowed"
    } else {
        return Ok(());
    };
    Err(AuditError::InvalidKind {
        kind: kind.to_owned(),
        reason,
    })
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::SystemTime;

    use crate::record::{encode_body, finish_line, format_time};

    #[test]
    fn record_overhead_is_exact_for_the_longest_seq() {
        let (kind, details) = ("command.issued", r#"{"a":1}"#);
        let mut line = String::new();
        let time = format_time(SystemTime::now());
        encode_body(u64::MAX, &time, kind, details, &RecordHash::ZERO, &mut line);
        finish_line(&mut line);
        assert_eq!(line.len(), RECORD_OVERHEAD + kind.len() + details.len());
    }
}

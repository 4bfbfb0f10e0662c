//! The error types of this crate.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::problem::Problem;

/// What went wrong while opening, appending to, closing or verifying a log.
///
/// Every variant that concerns a file names it. For [`AuditLog::append`],
/// any error means the record was **not** acknowledged: treat it as not
/// recorded (and, by the audit rule, do not carry out what it describes).
///
/// [`AuditLog::append`]: crate::AuditLog::append
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// A file operation failed while opening or reading a log.
    #[error("audit log {path}: cannot {action}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done ("open", "read", "create", ...).
        action: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// The path exists but is not a regular file (a directory, a device
    /// such as `/dev/full`, a FIFO).
    #[error("audit log {path}: not a regular file")]
    NotRegularFile {
        /// The path.
        path: PathBuf,
    },
    /// Another open [`AuditLog`](crate::AuditLog), in this process or
    /// another, holds the file's lock.
    #[error("audit log {path} is already open for writing elsewhere")]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// The file does not exist and
    /// [`AuditOptions::create`](crate::AuditOptions::create) is off.
    #[error("audit log {path} does not exist")]
    NotFound {
        /// The file.
        path: PathBuf,
    },
    /// The chain is broken before its end; the log was not opened.
    /// [`OnCorruption::Continue`](crate::OnCorruption::Continue) opens it
    /// anyway.
    #[error("audit log {path} is broken at {problem}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The first broken or missing record.
        problem: Box<Problem>,
    },
    /// A sealed segment's head (its first or last record, its seal) is
    /// broken, or a segment is missing between two others; the log was not
    /// opened. (Its records in between are checked by
    /// [`verify`](crate::verify), not at open.)
    #[error("audit log segment {path}: {reason}")]
    BrokenSegment {
        /// The segment.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The record, encoded, is longer than
    /// [`AuditOptions::max_record_bytes`](crate::AuditOptions::max_record_bytes).
    #[error("audit record of {size} bytes exceeds the limit of {limit} bytes")]
    RecordTooLarge {
        /// The encoded size, newline included.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The kind is empty, too long, or uses characters other than ASCII
    /// letters, digits, `.`, `_` and `-`.
    #[error("invalid audit record kind {kind:?}: {reason}")]
    InvalidKind {
        /// The kind given.
        kind: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The details are not a JSON object.
    #[error("audit record details must be a JSON object, not {found}")]
    DetailsNotObject {
        /// The JSON type given ("array", "string", ...).
        found: &'static str,
    },
    /// The record could not be written durably and was not acknowledged.
    /// The log now refuses further records: see [`AuditError::Poisoned`].
    #[error("audit log {path}: record not recorded: {failure}")]
    Failed {
        /// The file.
        path: PathBuf,
        /// What failed.
        failure: Failure,
    },
    /// An earlier write or sync failed, so the log refuses every record
    /// until it is opened again (which re-reads and re-checks the file).
    #[error(
        "audit log {path} refuses records since an earlier failure ({failure}); open it again to go on"
    )]
    Poisoned {
        /// The file.
        path: PathBuf,
        /// The failure that stopped the log.
        failure: Failure,
    },
    /// The log was closed.
    #[error("audit log {path} is closed")]
    Closed {
        /// The file.
        path: PathBuf,
    },
}

impl Failure {
    /// Whether the disk (or the quota) is full: `ENOSPC` or `EDQUOT`.
    pub fn is_disk_full(&self) -> bool {
        is_no_space(&self.source)
    }
}

/// Whether `e` is `ENOSPC` or `EDQUOT`.
pub(crate) fn is_no_space(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(code) if code == rustix::io::Errno::NOSPC.raw_os_error()
            || code == rustix::io::Errno::DQUOT.raw_os_error()
    )
}

impl AuditError {
    /// The write-path failure behind this error, if it is one
    /// ([`AuditError::Failed`], [`AuditError::Poisoned`]).
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            AuditError::Failed { failure, .. } | AuditError::Poisoned { failure, .. } => {
                Some(failure)
            }
            _ => None,
        }
    }

    pub(crate) fn io(path: &Path, action: &'static str, source: io::Error) -> AuditError {
        AuditError::Io {
            path: path.to_owned(),
            action,
            source,
        }
    }
}

/// A write-path failure: what failed, the OS error, and whether the file
/// was cut back to its last acknowledged length.
///
/// Shared by every record of the batch it failed, and kept by the log to
/// explain later refusals; cloning it is cheap.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Failure {
    /// The step that failed.
    pub stage: FailureStage,
    /// The OS error (or the injected one, see
    /// [`FaultInjection`](crate::FaultInjection)).
    pub source: Arc<io::Error>,
    /// Whether the file was cut back to the end of the last acknowledged
    /// record and that was synced. When `false`, the file may hold some or
    /// all of the failed batch: never a record that is missing, but
    /// possibly records that were not acknowledged, and possibly a torn
    /// last line that the next open cuts off.
    pub restored: bool,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.stage, self.source)?;
        if !self.restored {
            f.write_str(" (the file could not be cut back to its last acknowledged length)")?;
        }
        Ok(())
    }
}

impl std::error::Error for Failure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// The step of the write path that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureStage {
    /// Writing the batch's lines (a full disk, an I/O error).
    Write,
    /// `fdatasync` of the file.
    Sync,
    /// After the sync, the path no longer names the file being written: it
    /// was removed or replaced, so what was written cannot be found by
    /// anyone reading the path.
    FileGone,
    /// Sealing the open segment and starting the next one (renaming,
    /// creating or syncing a file), or deleting old segments. The seal is
    /// in the file when this fails; opening the log again finishes the
    /// rotation.
    Rotate,
}

impl fmt::Display for FailureStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureStage::Write => "write failed",
            FailureStage::Sync => "fsync failed",
            FailureStage::FileGone => "the log file was removed or replaced",
            FailureStage::Rotate => "starting a new segment failed",
        })
    }
}

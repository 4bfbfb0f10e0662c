//! What `verify` and `open` report about a broken log: [`Problem`], its
//! [`ProblemKind`], and the line limit they apply.

use std::fmt;

use crate::hash::RecordHash;

/// The longest line this crate writes or reads, newline included: 16 MiB.
///
/// [`AuditOptions::max_record_bytes`](crate::AuditOptions::max_record_bytes)
/// cannot be set higher, so a longer line was not written by this crate.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// The first broken or missing record in a log, and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Problem {
    /// Line number, from 1.
    pub line: u64,
    /// Byte offset of the start of that line.
    pub offset: u64,
    /// The seq this line should have had.
    pub expected_seq: u64,
    /// The seq the line claims, when it could be read.
    pub seq: Option<u64>,
    /// What is wrong.
    pub kind: ProblemKind,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}", self.line)?;
        if let Some(seq) = self.seq {
            write!(f, " (seq {seq})")?;
        }
        write!(
            f,
            ", where seq {} was expected: {}",
            self.expected_seq, self.kind
        )
    }
}

/// What is wrong with a line.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// The file ends inside this line (no final newline): a write that
    /// was cut short, as by a crash.
    Incomplete,
    /// The line is longer than [`MAX_LINE_BYTES`].
    LineTooLong,
    /// Not a record: bad UTF-8 or JSON, a missing, extra or mistyped field.
    Malformed {
        /// Why.
        reason: String,
    },
    /// The `hash` field is not the SHA-256 of the line's body: the record
    /// was changed after it was written.
    HashMismatch {
        /// The `hash` the line holds.
        stored: RecordHash,
        /// The hash of the line's body.
        computed: RecordHash,
    },
    /// The line's hash matches, but the line is not in the canonical form
    /// this crate writes (member order, spacing, escapes or number format):
    /// it was written by something else.
    NotCanonical,
    /// The seq is higher than the one expected: records are missing (or
    /// out of order).
    SeqGap {
        /// The seq expected here.
        expected: u64,
        /// The seq found.
        found: u64,
    },
    /// The seq is lower than the one expected: a record is repeated (or out
    /// of order).
    SeqRepeat {
        /// The seq expected here.
        expected: u64,
        /// The seq found.
        found: u64,
    },
    /// `prev` is not the hash of the record before: a record before this
    /// one was replaced.
    PrevMismatch {
        /// The previous record's hash.
        expected: RecordHash,
        /// The `prev` the line holds.
        found: RecordHash,
    },
    /// A sealed segment does not end with its seal, or its seal does not
    /// match its name or the seals before it.
    BadSeal {
        /// What is wrong.
        reason: String,
    },
    /// The first record kept is not the first of the chain, and no
    /// retention record says that the segments before it were deleted:
    /// history was removed unrecorded.
    HistoryDeleted {
        /// The seq of the first record kept.
        first_seq: u64,
    },
}

impl fmt::Display for ProblemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProblemKind::Incomplete => {
                f.write_str("incomplete last line (no newline): a write was cut short")
            }
            ProblemKind::LineTooLong => write!(f, "line longer than {MAX_LINE_BYTES} bytes"),
            ProblemKind::Malformed { reason } => write!(f, "malformed record: {reason}"),
            ProblemKind::HashMismatch { stored, computed } => write!(
                f,
                "hash mismatch: the line says {stored}, its content hashes to {computed}"
            ),
            ProblemKind::NotCanonical => f.write_str("not in canonical form"),
            ProblemKind::SeqGap { expected, found } => {
                write!(f, "seq gap: found {found}, expected {expected}")
            }
            ProblemKind::SeqRepeat { expected, found } => {
                write!(
                    f,
                    "seq repeated or out of order: found {found}, expected {expected}"
                )
            }
            ProblemKind::PrevMismatch { expected, found } => write!(
                f,
                "prev mismatch: the line says {found}, the previous record's hash is {expected}"
            ),
            ProblemKind::BadSeal { reason } => write!(f, "bad seal: {reason}"),
            ProblemKind::HistoryDeleted { first_seq } => write!(
                f,
                "the records before seq {first_seq} are gone, and no retention record says they were deleted"
            ),
        }
    }
}

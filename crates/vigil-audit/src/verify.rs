//! Checking a whole log: [`verify`], and the scan that [`AuditLog::open`]
//! shares with it.
//!
//! [`AuditLog::open`]: crate::AuditLog::open

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;

use crate::AuditError;
use crate::record::{LineError, RecordHash, parse_line};

/// The longest line this crate writes or reads, newline included: 16 MiB.
///
/// [`AuditOptions::max_record_bytes`](crate::AuditOptions::max_record_bytes)
/// cannot be set higher, so a longer line was not written by this crate.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VerifyReport {
    /// Records that passed every check, from the first line on.
    pub records: u64,
    /// The seq of the last record that passed (0 when none did).
    pub last_seq: u64,
    /// The hash of the last record that passed ([`RecordHash::ZERO`] when
    /// none did). Kept somewhere else, it anchors the chain: records up to
    /// here cannot then be rewritten unnoticed.
    pub last_hash: RecordHash,
    /// The first line that is broken or out of place; `None` when the whole
    /// file is a valid chain.
    pub problem: Option<Problem>,
}

impl VerifyReport {
    /// Whether the whole file is a valid chain.
    pub fn is_ok(&self) -> bool {
        self.problem.is_none()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.problem {
            None => write!(
                f,
                "ok: {} records, last seq {}, last hash {}",
                self.records, self.last_seq, self.last_hash
            ),
            Some(p) => write!(
                f,
                "broken: {p}; {} records before it are valid (last seq {}, last hash {})",
                self.records, self.last_seq, self.last_hash
            ),
        }
    }
}

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
        }
    }
}

/// Checks a whole log file and reports the first broken or missing record.
///
/// Every line must be a record in canonical form whose `hash` matches its
/// content, whose `seq` is one more than the line before's (1 for the
/// first), and whose `prev` is the line before's `hash` (zeros for the
/// first). The check stops at the first line that fails; the report says
/// how many records before it are valid.
///
/// Reads the file once, a line at a time: memory stays below
/// [`MAX_LINE_BYTES`] whatever the file holds. It takes no lock, so it can
/// run beside a live writer; it may then see the writer's last line
/// half-written and report it [`ProblemKind::Incomplete`].
///
/// # Errors
///
/// [`AuditError::Io`] when the file cannot be opened or read. Problems
/// with the content are not errors: they are in the report.
pub fn verify(path: impl AsRef<Path>) -> Result<VerifyReport, AuditError> {
    let path = path.as_ref();
    let file = File::open(path).map_err(|e| AuditError::io(path, "open", e))?;
    verify_reader(file).map_err(|e| AuditError::io(path, "read", e))
}

/// [`verify`] on a log read from `reader` (a pipe, a copy in memory).
///
/// # Errors
///
/// Only when reading fails; problems with the content are in the report.
pub fn verify_reader(reader: impl io::Read) -> io::Result<VerifyReport> {
    let scan = scan(BufReader::with_capacity(1 << 16, reader), true)?;
    Ok(VerifyReport {
        records: scan.records,
        last_seq: scan.last_seq,
        last_hash: scan.last_hash,
        problem: scan.problem,
    })
}

/// The result of reading a log from its start.
#[derive(Debug)]
pub(crate) struct Scan {
    /// Records that passed, from the first line.
    pub(crate) records: u64,
    pub(crate) last_seq: u64,
    pub(crate) last_hash: RecordHash,
    /// Byte offset just after the last record that passed.
    pub(crate) good_end: u64,
    /// The first problem.
    pub(crate) problem: Option<Problem>,
    /// Set when the scan went on past the first problem: the highest seq
    /// any line claims, and the hash of the last complete line that
    /// states one.
    pub(crate) claimed_seq: u64,
    pub(crate) claimed_hash: Option<RecordHash>,
    /// Byte offset just after the last complete (newline-ended) line.
    pub(crate) complete_end: u64,
    /// Total bytes read.
    pub(crate) end: u64,
}

/// One line as read: complete (ended by a newline) or the file's
/// unterminated end.
struct RawLine {
    offset: u64,
    complete: bool,
    /// `None` when the line was longer than [`MAX_LINE_BYTES`] (its bytes
    /// were skipped, not kept).
    bytes: Option<Vec<u8>>,
}

/// Reads the next line, keeping at most [`MAX_LINE_BYTES`] of it.
fn next_line(reader: &mut impl BufRead, offset: &mut u64) -> io::Result<Option<RawLine>> {
    let start = *offset;
    let mut bytes = Some(Vec::new());
    let mut seen = 0usize;
    loop {
        let buf = match reader.fill_buf() {
            Ok(buf) => buf,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            if seen == 0 {
                return Ok(None);
            }
            return Ok(Some(RawLine {
                offset: start,
                complete: false,
                bytes,
            }));
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], Some(i + 1)),
            None => (buf, None),
        };
        seen += chunk.len();
        if seen + 1 > MAX_LINE_BYTES {
            bytes = None;
        } else if let Some(b) = bytes.as_mut() {
            b.extend_from_slice(chunk);
        }
        let used = done.unwrap_or(buf.len());
        reader.consume(used);
        *offset += used as u64;
        if done.is_some() {
            return Ok(Some(RawLine {
                offset: start,
                complete: true,
                bytes,
            }));
        }
    }
}

/// Reads a log from its start and checks the chain.
///
/// With `stop_at_problem`, reading stops at the first problem (as
/// [`verify`] wants); otherwise it goes on to the end, noting the highest
/// seq claimed and the last hash stated, so that a log opened in spite of a
/// break can continue after everything it holds.
pub(crate) fn scan(mut reader: impl BufRead, stop_at_problem: bool) -> io::Result<Scan> {
    let mut s = Scan {
        records: 0,
        last_seq: 0,
        last_hash: RecordHash::ZERO,
        good_end: 0,
        problem: None,
        claimed_seq: 0,
        claimed_hash: None,
        complete_end: 0,
        end: 0,
    };
    let mut offset = 0u64;
    let mut line_no = 0u64;
    while let Some(raw) = next_line(&mut reader, &mut offset)? {
        line_no += 1;
        if raw.complete {
            s.complete_end = offset;
        }
        let expected_seq = s.last_seq.saturating_add(1);
        let checked = check(&raw, expected_seq, &s.last_hash);
        match checked {
            Ok((seq, hash)) if s.problem.is_none() => {
                s.records += 1;
                s.last_seq = seq;
                s.last_hash = hash;
                s.good_end = offset;
                s.claimed_seq = seq;
                s.claimed_hash = Some(hash);
            }
            Ok((seq, hash)) => {
                // A valid-looking record after a break.
                s.claimed_seq = s.claimed_seq.max(seq);
                s.claimed_hash = Some(hash);
            }
            Err(e) => {
                let LineError { seq, hash, kind } = *e;
                if let Some(seq) = seq {
                    s.claimed_seq = s.claimed_seq.max(seq);
                }
                if raw.complete && hash.is_some() {
                    s.claimed_hash = hash;
                }
                if s.problem.is_none() {
                    s.problem = Some(Problem {
                        line: line_no,
                        offset: raw.offset,
                        expected_seq,
                        seq,
                        kind,
                    });
                    if stop_at_problem {
                        break;
                    }
                }
            }
        }
    }
    s.end = offset;
    Ok(s)
}

/// Checks one line against the chain so far. On success: its seq and
/// hash. On failure: why, with the seq and hash it claims when readable.
fn check(
    raw: &RawLine,
    expected_seq: u64,
    prev: &RecordHash,
) -> Result<(u64, RecordHash), Box<LineError>> {
    let fail = |seq, hash, kind| Err(Box::new(LineError { seq, hash, kind }));
    let Some(bytes) = raw.bytes.as_deref() else {
        return fail(None, None, ProblemKind::LineTooLong);
    };
    if !raw.complete {
        // Even a line that parses is not a record until its newline is
        // written: the writer never acknowledges one without it.
        let seq = parse_line(bytes).ok().map(|p| p.seq);
        return fail(seq, None, ProblemKind::Incomplete);
    }
    let parsed = parse_line(bytes)?;
    let (seq, hash) = (Some(parsed.seq), Some(parsed.hash));
    if parsed.seq > expected_seq {
        return fail(
            seq,
            hash,
            ProblemKind::SeqGap {
                expected: expected_seq,
                found: parsed.seq,
            },
        );
    }
    if parsed.seq < expected_seq {
        return fail(
            seq,
            hash,
            ProblemKind::SeqRepeat {
                expected: expected_seq,
                found: parsed.seq,
            },
        );
    }
    if parsed.prev != *prev {
        return fail(
            seq,
            hash,
            ProblemKind::PrevMismatch {
                expected: *prev,
                found: parsed.prev,
            },
        );
    }
    Ok((parsed.seq, parsed.hash))
}

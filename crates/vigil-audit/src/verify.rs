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
    /// The seq of the first record kept: 1, unless sealed segments were
    /// deleted (retention), as a record of the chain says.
    pub first_seq: u64,
    /// Files read: the sealed segments kept, and the open one.
    pub segments: u64,
    /// The file the problem is in (its line numbers are that file's), when
    /// there is one.
    pub file: Option<std::path::PathBuf>,
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
            None => {
                write!(
                    f,
                    "ok: {} records in {} file{}, last seq {}, last hash {}",
                    self.records,
                    self.segments,
                    if self.segments == 1 { "" } else { "s" },
                    self.last_seq,
                    self.last_hash
                )?;
                if self.first_seq > 1 {
                    write!(
                        f,
                        " (records before seq {} were deleted, as the chain records)",
                        self.first_seq
                    )?;
                }
                Ok(())
            }
            Some(p) => {
                f.write_str("broken: ")?;
                if let Some(file) = &self.file {
                    write!(f, "{}: ", file.display())?;
                }
                write!(
                    f,
                    "{p}; {} records before it are valid (last seq {}, last hash {})",
                    self.records, self.last_seq, self.last_hash
                )
            }
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

/// Checks a whole log, every segment it keeps, and reports the first broken
/// or missing record.
///
/// `path` is the log's path (its open segment); its sealed segments
/// (`<path>.<first>-<last>`, see the crate docs) are read first, in order,
/// then the open one. Every line must be a record in canonical form whose
/// `hash` matches its content, whose `seq` is one more than the line
/// before's (1 for the first of the chain), and whose `prev` is the line
/// before's `hash` (zeros for the first), across files as within them.
/// Every sealed segment must end with its seal. When the first record kept
/// is not the first of the chain, a retention record of the chain must
/// say that the segments before it were deleted, ending with that
/// record's `prev`. The check stops at the first line that fails; the
/// report says how many records before it are valid, and in which file it
/// is.
///
/// Reads each file once, a line at a time: memory stays below
/// [`MAX_LINE_BYTES`] whatever the log holds. It takes no lock, so it can
/// run beside a live writer; it may then see the writer's last line
/// half-written and report it [`ProblemKind::Incomplete`].
///
/// # Errors
///
/// [`AuditError::Io`] when a file cannot be opened or read (also when
/// the log has no file at all). Problems with the content are not errors:
/// they are in the report.
pub fn verify(path: impl AsRef<Path>) -> Result<VerifyReport, AuditError> {
    let path = path.as_ref();
    let sealed =
        crate::segment::list(path).map_err(|e| AuditError::io(path, "list the segments of", e))?;
    let mut files: Vec<(std::path::PathBuf, Option<crate::segment::SealedFile>)> = sealed
        .into_iter()
        .map(|f| (f.path.clone(), Some(f)))
        .collect();
    if path.exists() || files.is_empty() {
        files.push((path.to_owned(), None));
    }
    let mut report = VerifyReport {
        records: 0,
        first_seq: 1,
        segments: 0,
        file: None,
        last_seq: 0,
        last_hash: RecordHash::ZERO,
        problem: None,
    };
    let mut start: Option<(u64, RecordHash)> = None;
    let mut deleted: Vec<(u64, RecordHash)> = Vec::new();
    let mut boundary: Option<(u64, RecordHash)> = None;
    for (file_path, sealed) in files {
        let file = File::open(&file_path).map_err(|e| AuditError::io(&file_path, "open", e))?;
        report.segments += 1;
        let (after_seq, after_hash) = match start {
            Some(s) => s,
            None => {
                // The first file kept: the chain starts at its first line,
                // at genesis unless history was deleted.
                match crate::segment::first_line(&file_path)
                    .ok()
                    .flatten()
                    .and_then(|l| crate::record::parse_line(&l).ok())
                {
                    Some(first) if !(first.seq == 1 && first.prev == RecordHash::ZERO) => {
                        boundary = Some((first.seq, first.prev));
                        report.first_seq = first.seq;
                        (first.seq - 1, first.prev)
                    }
                    _ => (0, RecordHash::ZERO),
                }
            }
        };
        let scanned = scan_from(
            BufReader::with_capacity(1 << 16, file),
            true,
            after_seq,
            after_hash,
        )
        .map_err(|e| AuditError::io(&file_path, "read", e))?;
        report.records += scanned.records;
        report.last_seq = scanned.last_seq;
        report.last_hash = scanned.last_hash;
        for special in &scanned.specials {
            if special.kind == crate::segment::RETENTION_KIND {
                deleted.extend(crate::segment::deleted_by(&special.details));
            }
        }
        if let Some(problem) = scanned.problem {
            report.problem = Some(problem);
            report.file = Some(file_path);
            return Ok(report);
        }
        if let Some(sealed) = &sealed {
            let seal = scanned
                .specials
                .last()
                .filter(|s| s.seq == scanned.last_seq);
            let reason = match seal {
                _ if scanned.records == 0 => Some("the segment is empty".to_owned()),
                Some(s) if s.kind == crate::segment::SEAL_KIND => {
                    let first = s
                        .details
                        .get("first_seq")
                        .and_then(serde_json::Value::as_u64);
                    if s.seq != sealed.last {
                        Some(format!(
                            "its name says it ends at seq {}, it ends at {}",
                            sealed.last, s.seq
                        ))
                    } else if first != Some(sealed.first) || after_seq + 1 != sealed.first {
                        Some(format!(
                            "its name and seal say it starts at seq {}, the chain at {}",
                            sealed.first,
                            after_seq + 1
                        ))
                    } else {
                        None
                    }
                }
                _ => Some("it does not end with its seal".to_owned()),
            };
            if let Some(reason) = reason {
                report.problem = Some(Problem {
                    line: scanned.records,
                    offset: scanned.good_end,
                    expected_seq: scanned.last_seq + 1,
                    seq: Some(scanned.last_seq),
                    kind: ProblemKind::BadSeal { reason },
                });
                report.file = Some(file_path);
                return Ok(report);
            }
        }
        start = Some((scanned.last_seq, scanned.last_hash));
    }
    if let Some((first_seq, prev)) = boundary
        && !deleted.contains(&(first_seq - 1, prev))
    {
        // Nothing anchors the chain: none of it counts as valid.
        report.records = 0;
        report.last_seq = 0;
        report.last_hash = RecordHash::ZERO;
        report.file = crate::segment::list(path)
            .ok()
            .and_then(|l| l.first().map(|f| f.path.clone()))
            .or_else(|| Some(path.to_owned()));
        report.problem = Some(Problem {
            line: 1,
            offset: 0,
            expected_seq: 1,
            seq: Some(first_seq),
            kind: ProblemKind::HistoryDeleted { first_seq },
        });
    }
    Ok(report)
}

/// Checks one log stream read from `reader` (a pipe, a copy in memory),
/// from the first record of the chain: one file, without its segments.
///
/// # Errors
///
/// Only when reading fails; problems with the content are in the report.
pub fn verify_reader(reader: impl io::Read) -> io::Result<VerifyReport> {
    let scan = scan(BufReader::with_capacity(1 << 16, reader), true)?;
    Ok(VerifyReport {
        records: scan.records,
        first_seq: 1,
        segments: 1,
        file: None,
        last_seq: scan.last_seq,
        last_hash: scan.last_hash,
        problem: scan.problem,
    })
}

/// A record the chain's own bookkeeping wrote (a seal, a retention
/// record), as a scan met it.
#[derive(Debug)]
pub(crate) struct Special {
    pub(crate) seq: u64,
    pub(crate) kind: String,
    pub(crate) details: serde_json::Map<String, serde_json::Value>,
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
    /// The seals and retention records among the records that passed.
    pub(crate) specials: Vec<Special>,
    /// The kind of the last record that passed.
    pub(crate) last_kind: Option<String>,
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
pub(crate) fn scan(reader: impl BufRead, stop_at_problem: bool) -> io::Result<Scan> {
    scan_from(reader, stop_at_problem, 0, RecordHash::ZERO)
}

/// As [`scan`], for a stream whose first record follows the record
/// `after_seq` with hash `after_hash` (a segment after the first).
pub(crate) fn scan_from(
    mut reader: impl BufRead,
    stop_at_problem: bool,
    after_seq: u64,
    after_hash: RecordHash,
) -> io::Result<Scan> {
    let mut s = Scan {
        specials: Vec::new(),
        last_kind: None,
        records: 0,
        last_seq: after_seq,
        last_hash: after_hash,
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
            Ok(parsed) if s.problem.is_none() => {
                let (seq, hash) = (parsed.seq, parsed.hash);
                s.records += 1;
                s.last_seq = seq;
                s.last_hash = hash;
                s.good_end = offset;
                s.claimed_seq = seq;
                s.claimed_hash = Some(hash);
                if parsed.kind == crate::segment::SEAL_KIND
                    || parsed.kind == crate::segment::RETENTION_KIND
                {
                    s.specials.push(Special {
                        seq,
                        kind: parsed.kind.clone(),
                        details: parsed.details,
                    });
                }
                s.last_kind = Some(parsed.kind);
            }
            Ok(parsed) => {
                let (seq, hash) = (parsed.seq, parsed.hash);
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
) -> Result<crate::record::Parsed, Box<LineError>> {
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
    Ok(parsed)
}

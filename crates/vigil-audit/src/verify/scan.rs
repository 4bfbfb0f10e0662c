//! Reading a log stream line by line and checking its chain: the scan
//! that [`verify`](super::verify) and [`AuditLog::open`] share.
//!
//! [`AuditLog::open`]: crate::AuditLog::open

use std::io::{self, BufRead};

use crate::hash::RecordHash;
use crate::problem::{MAX_LINE_BYTES, Problem, ProblemKind};
use crate::record::{LineError, parse_line};

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
/// [`verify`](super::verify) wants); otherwise it goes on to the end,
/// noting the highest seq claimed and the last hash stated, so that a log
/// opened in spite of a break can continue after everything it holds.
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

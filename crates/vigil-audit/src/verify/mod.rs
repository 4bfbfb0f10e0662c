//! Checking a whole log: [`verify`] walks every segment kept, in chain
//! order, and [`verify_reader`] one stream. The report types are in
//! `report`; the line-by-line scan, which [`AuditLog::open`] shares, is
//! in `scan`.
//!
//! [`AuditLog::open`]: crate::AuditLog::open

mod report;
mod scan;

use std::fs::File;
use std::io::{self, BufReader};
use std::path::Path;

use crate::AuditError;
use crate::hash::RecordHash;
use crate::problem::{Problem, ProblemKind};

pub use report::VerifyReport;
use scan::scan;
pub(crate) use scan::scan_from;

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

//! `vigilctl audit verify`: checks an audit log's hash chain, in every
//! segment it keeps.

use std::path::Path;

use anyhow::{Context as _, bail};

/// Checks `path` and prints what was found; an error when the chain is
/// broken, incomplete or has a missing record.
pub(crate) fn verify(path: &Path) -> anyhow::Result<()> {
    let report = vigil_audit::verify(path)
        .with_context(|| format!("cannot check the audit log {}", path.display()))?;
    match &report.problem {
        None => {
            println!(
                "{}: ok, {} records checked in {} file{}, last seq {}, last hash {}",
                path.display(),
                report.records,
                report.segments,
                if report.segments == 1 { "" } else { "s" },
                report.last_seq,
                report.last_hash
            );
            if report.first_seq > 1 {
                println!(
                    "the records before seq {} were deleted by retention, as the chain records",
                    report.first_seq
                );
            }
            Ok(())
        }
        Some(p) => {
            let seq = match p.seq {
                Some(s) => format!("seq {s}"),
                None => "seq unreadable".to_owned(),
            };
            let hint = match p.kind {
                vigil_audit::ProblemKind::Incomplete => {
                    " (a write cut short, as by a crash: that record was never acknowledged, \
                     and the server cuts it off, into audit.jsonl.torn, when it opens the log)"
                }
                _ => "",
            };
            println!(
                "{}: {} records valid before the problem, last good seq {}, last good hash {}",
                path.display(),
                report.records,
                report.last_seq,
                report.last_hash
            );
            let file = report.file.as_deref().unwrap_or(path);
            bail!(
                "{} line {} ({seq}, byte offset {}; seq {} expected there): {}{hint}",
                file.display(),
                p.line,
                p.offset,
                p.expected_seq,
                p.kind
            )
        }
    }
}

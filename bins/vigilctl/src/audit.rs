//! `vigilctl audit verify`: checks an audit log's hash chain.

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
                "{}: ok, {} records checked, last seq {}, last hash {}",
                path.display(),
                report.records,
                report.last_seq,
                report.last_hash
            );
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
            bail!(
                "{} line {} ({seq}, byte offset {}; seq {} expected there): {}{hint}",
                path.display(),
                p.line,
                p.offset,
                p.expected_seq,
                p.kind
            )
        }
    }
}

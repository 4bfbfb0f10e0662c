//! What [`verify`](super::verify) reports: [`VerifyReport`], and the
//! [`Problem`] it found, if any.

use std::fmt;

use crate::hash::RecordHash;
use crate::problem::Problem;

/// What [`verify`](super::verify) found.
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

//! Segments: the sealed files of a log, their names, and their heads.
//!
//! A log at `audit.jsonl` writes into that file (the *open segment*). When
//! it passes its size or age limit, the writer appends a seal record
//! (kind [`SEAL_KIND`]) and renames the file to
//! `audit.jsonl.<first seq>-<last seq>` (each seq in 20 digits, so names
//! sort as the chain runs); the next record goes to a new `audit.jsonl`,
//! its `prev` the seal's hash. The chain runs on across files unbroken.
//!
//! A seal's details say where its segment starts and link the seals
//! together, so that the *heads* of the sealed segments (first and last
//! line of each) can be checked without reading them whole:
//!
//! ```text
//! {"first_seq": 1, "records": 4096, "previous_seal": null, "reason": "size"}
//! ```
//!
//! Deleting old segments (retention) is recorded first, in the chain, with
//! a record of kind [`RETENTION_KIND`] that lists what goes:
//!
//! ```text
//! {"deleted": [{"file": "audit.jsonl.000…1-000…4096", "first_seq": 1, "last_seq": 4096, "seal": "<hash>"}], "reason": "…"}
//! ```

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::hash::RecordHash;
use crate::problem::MAX_LINE_BYTES;
use crate::record::{Parsed, parse_line};

/// Kind of the record that ends a sealed segment.
pub const SEAL_KIND: &str = "audit.sealed";
/// Kind of the record that says which sealed segments were deleted.
pub const RETENTION_KIND: &str = "audit.retention";

/// A sealed segment's file, as its name says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SealedFile {
    pub(crate) path: PathBuf,
    pub(crate) first: u64,
    pub(crate) last: u64,
}

impl SealedFile {
    /// The file's name, for messages and retention records.
    pub(crate) fn name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// The path of the sealed segment of `log` that holds `first..=last`.
pub(crate) fn sealed_path(log: &Path, first: u64, last: u64) -> PathBuf {
    let mut name = log.file_name().unwrap_or_default().to_owned();
    name.push(format!(".{first:020}-{last:020}"));
    log.with_file_name(name)
}

fn dir_of(log: &Path) -> PathBuf {
    match log.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// The sealed segments of `log`, in chain order. Other files (the torn
/// tail file, the reserve, anything else) are not segments.
pub(crate) fn list(log: &Path) -> io::Result<Vec<SealedFile>> {
    let Some(base) = log.file_name().and_then(|n| n.to_str()) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{base}.");
    let mut found = Vec::new();
    let entries = match std::fs::read_dir(dir_of(log)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
            continue;
        };
        let Some((first, last)) = rest.split_once('-') else {
            continue;
        };
        let digits = |s: &str| s.len() == 20 && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(first) || !digits(last) {
            continue;
        }
        let (Ok(first), Ok(last)) = (first.parse::<u64>(), last.parse::<u64>()) else {
            continue;
        };
        found.push(SealedFile {
            path: entry.path(),
            first,
            last,
        });
    }
    found.sort_by_key(|f| f.first);
    Ok(found)
}

/// The first line of a file (without its newline), if it has a complete
/// one within [`MAX_LINE_BYTES`].
pub(crate) fn first_line(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let mut reader = BufReader::new(File::open(path)?).take(MAX_LINE_BYTES as u64);
    let mut line = Vec::new();
    reader.read_until(b'\n', &mut line)?;
    if line.pop() != Some(b'\n') {
        return Ok(None);
    }
    Ok(Some(line))
}

/// The last line of a file (without its newline), if the file ends with a
/// newline and that line is within [`MAX_LINE_BYTES`]. Reads backwards from
/// the end, a chunk at a time.
pub(crate) fn last_line(path: &Path) -> io::Result<Option<Vec<u8>>> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(None);
    }
    let mut tail: Vec<u8> = Vec::new();
    let mut pos = len;
    const CHUNK: u64 = 64 * 1024;
    loop {
        let start = pos.saturating_sub(CHUNK);
        let mut chunk = vec![0u8; usize::try_from(pos - start).unwrap_or(0)];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut chunk)?;
        chunk.extend_from_slice(&tail);
        tail = chunk;
        pos = start;
        if tail.last() != Some(&b'\n') {
            return Ok(None);
        }
        // A newline before the final one starts the last line.
        if let Some(i) = tail[..tail.len() - 1].iter().rposition(|&b| b == b'\n') {
            let line = tail[i + 1..tail.len() - 1].to_vec();
            return Ok(Some(line));
        }
        if pos == 0 {
            tail.pop();
            return Ok(Some(tail));
        }
        if tail.len() > MAX_LINE_BYTES {
            return Ok(None);
        }
    }
}

/// A sealed segment's first and last records, each checked on its own
/// (hash, canonical form), and the seal's details checked against the
/// file's name.
#[derive(Debug)]
pub(crate) struct Head {
    pub(crate) first: Parsed,
    pub(crate) seal: Parsed,
    /// The seal's `previous_seal`, if it names one.
    pub(crate) previous_seal: Option<RecordHash>,
}

/// Reads and checks the head of `file`; `Err` says what is wrong.
pub(crate) fn read_head(file: &SealedFile) -> Result<Head, String> {
    let read = |which: &str, line: io::Result<Option<Vec<u8>>>| -> Result<Parsed, String> {
        let bytes = line
            .map_err(|e| format!("cannot read its {which} line: {e}"))?
            .ok_or_else(|| format!("its {which} line is incomplete or too long"))?;
        parse_line(&bytes).map_err(|e| format!("its {which} line: {}", e.kind))
    };
    let first = read("first", first_line(&file.path))?;
    let seal = read("last", last_line(&file.path))?;
    if first.seq != file.first {
        return Err(format!(
            "its name says it starts at seq {}, its first record is seq {}",
            file.first, first.seq
        ));
    }
    if seal.seq != file.last {
        return Err(format!(
            "its name says it ends at seq {}, its last record is seq {}",
            file.last, seal.seq
        ));
    }
    if seal.kind != SEAL_KIND {
        return Err(format!(
            "its last record is a {:?}, not the seal ({SEAL_KIND:?})",
            seal.kind
        ));
    }
    if seal.details.get("first_seq").and_then(Value::as_u64) != Some(file.first) {
        return Err(format!(
            "its seal does not say it starts at seq {}",
            file.first
        ));
    }
    let previous_seal = match seal.details.get("previous_seal") {
        None | Some(Value::Null) => None,
        Some(Value::String(h)) => Some(
            h.parse::<RecordHash>()
                .map_err(|_| "its seal's previous_seal is not a hash".to_owned())?,
        ),
        Some(_) => return Err("its seal's previous_seal is not a hash".to_owned()),
    };
    Ok(Head {
        first,
        seal,
        previous_seal,
    })
}

/// The segments a retention record says were deleted: (last seq, seal).
pub(crate) fn deleted_by(details: &serde_json::Map<String, Value>) -> Vec<(u64, RecordHash)> {
    details
        .get("deleted")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|d| {
                    let last = d.get("last_seq")?.as_u64()?;
                    let seal = d.get("seal")?.as_str()?.parse().ok()?;
                    Some((last, seal))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_in_chain_order_and_other_files_are_not_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("audit.jsonl");
        for (first, last) in [(4097, 8192), (1, 4096), (8193, 9000)] {
            std::fs::write(sealed_path(&log, first, last), b"x\n").expect("write");
        }
        for other in [
            "audit.jsonl",
            "audit.jsonl.torn",
            "audit.jsonl.reserve",
            "audit.jsonl.1-2",
        ] {
            std::fs::write(dir.path().join(other), b"x\n").expect("write");
        }
        let found: Vec<(u64, u64)> = list(&log)
            .expect("list")
            .iter()
            .map(|f| (f.first, f.last))
            .collect();
        assert_eq!(found, vec![(1, 4096), (4097, 8192), (8193, 9000)]);
    }

    #[test]
    fn first_and_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        std::fs::write(&path, b"one\ntwo\nthree\n").expect("write");
        assert_eq!(first_line(&path).expect("read"), Some(b"one".to_vec()));
        assert_eq!(last_line(&path).expect("read"), Some(b"three".to_vec()));
        let long = format!("{}\n{}\n", "a".repeat(10), "b".repeat(200_000));
        std::fs::write(&path, long.as_bytes()).expect("write");
        assert_eq!(
            last_line(&path).expect("read").map(|l| l.len()),
            Some(200_000)
        );
        std::fs::write(&path, b"only\n").expect("write");
        assert_eq!(last_line(&path).expect("read"), Some(b"only".to_vec()));
        std::fs::write(&path, b"torn").expect("write");
        assert_eq!(last_line(&path).expect("read"), None);
    }
}

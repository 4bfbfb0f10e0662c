//! Rotation and retention: sealing the open segment into a sealed one,
//! and deleting the oldest sealed segments once a record lists them.

use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use serde_json::Value;

use super::open::{open_segment, sync_dir};
use super::writer::Writer;
use crate::error::{Failure, FailureStage};
use crate::hash::RecordHash;
use crate::record::encode_object;
use crate::segment::{self, SEAL_KIND, SealedFile};
use crate::sink::Sink;

/// A sealed segment the log keeps: its file, its seal's hash, and when it
/// was sealed (for retention by age).
#[derive(Debug, Clone)]
pub(super) struct Kept {
    pub(super) file: SealedFile,
    pub(super) seal: RecordHash,
    pub(super) sealed_at: SystemTime,
}

impl Writer {
    /// Seals the open segment and starts the next one when it is due, then
    /// deletes what retention no longer keeps (recording it first).
    pub(super) fn rotate_if_due(&mut self, incoming: u64, essential: bool) -> Result<(), Failure> {
        if self.len == 0 {
            return Ok(());
        }
        let too_big = self.len.saturating_add(incoming) > self.options.segment_max_bytes;
        let too_old = self.options.segment_max_age.is_some_and(|age| {
            self.segment_opened
                .elapsed()
                .is_ok_and(|elapsed| elapsed >= age)
        });
        if !too_big && !too_old {
            return Ok(());
        }
        self.rotate(if too_big { "size" } else { "age" }, essential)?;
        self.apply_retention(essential)
    }

    /// Writes the seal, renames the segment to its sealed name, and starts
    /// a new open segment.
    fn rotate(&mut self, reason: &str, essential: bool) -> Result<(), Failure> {
        let first = self.segment_first;
        let last = self.next_seq;
        let previous = self.kept.back().map(|k| k.seal);
        let details = serde_json::json!({
            "first_seq": first,
            "records": last - first + 1,
            "previous_seal": previous.map(|h| h.to_hex()),
            "reason": reason,
        });
        let mut encoded = String::new();
        if let Value::Object(map) = &details {
            encode_object(map, &mut encoded);
        }
        let mut buf = String::new();
        let receipt =
            self.write_records(&mut [(SEAL_KIND, encoded.as_str())], &mut buf, essential)?;
        let seal = receipt.first().map_or(self.prev, |r| r.hash);
        let sealed = SealedFile {
            path: segment::sealed_path(&self.path, first, last),
            first,
            last,
        };
        let rotate = |e: io::Error| Failure {
            stage: FailureStage::Rotate,
            source: Arc::new(e),
            restored: true,
        };
        // From here on the seal is in the file: a failure leaves a rotation
        // that the next open finishes.
        fs::rename(&self.path, &sealed.path).map_err(rotate)?;
        sync_dir(&self.path).map_err(rotate)?;
        let (file, meta) =
            open_segment(&self.path, true).map_err(|e| rotate(io::Error::other(e.to_string())))?;
        self.sink = Sink::new(file, self.options.faults());
        self.dev = meta.dev();
        self.ino = meta.ino();
        self.len = 0;
        self.segment_first = self.next_seq;
        self.segment_opened = SystemTime::now();
        self.shared.segments_sealed.fetch_add(1, Ordering::Relaxed);
        tracing::info!(path = %sealed.path.display(), first, last, reason, "audit segment sealed");
        self.kept.push_back(Kept {
            file: sealed,
            seal,
            sealed_at: SystemTime::now(),
        });
        Ok(())
    }

    /// Deletes the sealed segments past the count or age kept, after a
    /// record of the chain lists them.
    fn apply_retention(&mut self, essential: bool) -> Result<(), Failure> {
        let mut doomed = 0;
        let now = SystemTime::now();
        for (i, k) in self.kept.iter().enumerate() {
            let over_count = self
                .options
                .keep_segments
                .is_some_and(|keep| self.kept.len() - i > keep);
            let over_age = self.options.keep_age.is_some_and(|age| {
                now.duration_since(k.sealed_at)
                    .is_ok_and(|elapsed| elapsed > age)
            });
            if over_count || over_age {
                doomed = i + 1;
            } else {
                break;
            }
        }
        if doomed == 0 {
            return Ok(());
        }
        let gone: Vec<Kept> = self.kept.iter().take(doomed).cloned().collect();
        let deleted: Vec<Value> = gone
            .iter()
            .map(|k| {
                serde_json::json!({
                    "file": k.file.name(),
                    "first_seq": k.file.first,
                    "last_seq": k.file.last,
                    "seal": k.seal.to_hex(),
                })
            })
            .collect();
        let reason = match (self.options.keep_segments, self.options.keep_age) {
            (Some(n), None) => format!("more than {n} sealed segments"),
            (None, Some(age)) => format!("sealed more than {}s ago", age.as_secs()),
            (Some(n), Some(age)) => format!(
                "more than {n} sealed segments, or sealed more than {}s ago",
                age.as_secs()
            ),
            (None, None) => "retention".to_owned(),
        };
        let details = serde_json::json!({ "deleted": deleted, "reason": reason });
        let mut encoded = String::new();
        if let Value::Object(map) = &details {
            encode_object(map, &mut encoded);
        }
        let mut buf = String::new();
        // Recorded first: a crash before the files go leaves them kept, and
        // the next rotation deletes them again.
        self.write_records(
            &mut [(segment::RETENTION_KIND, encoded.as_str())],
            &mut buf,
            essential,
        )?;
        for k in &gone {
            match fs::remove_file(&k.file.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::error!(path = %k.file.path.display(), error = %e, "cannot delete an old audit segment");
                    continue;
                }
            }
            self.shared.segments_deleted.fetch_add(1, Ordering::Relaxed);
            tracing::info!(path = %k.file.path.display(), first = k.file.first, last = k.file.last, "old audit segment deleted (retention)");
        }
        self.kept.drain(..doomed);
        let _ = sync_dir(&self.path);
        Ok(())
    }
}

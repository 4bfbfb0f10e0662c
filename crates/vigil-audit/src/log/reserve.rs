//! The reserve: allocated bytes in `<log>.reserve`, released so that
//! essential records are still written when the disk is full.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::atomic::Ordering;

use super::writer::Writer;

/// Space held for essential records: a file of real (allocated) bytes,
/// released (cut to nothing) when the disk is full.
#[derive(Debug)]
pub(super) struct Reserve {
    file: File,
    pub(super) held: u64,
}

impl Reserve {
    /// Makes `<log>.reserve` hold `bytes`, as far as the disk allows;
    /// `None` for no reserve.
    pub(super) fn ensure(log: &Path, bytes: u64) -> Option<Reserve> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut name = log.file_name().unwrap_or_default().to_owned();
        name.push(".reserve");
        let path = log.with_file_name(name);
        if bytes == 0 {
            let _ = fs::remove_file(&path);
            return None;
        }
        let mut file = match OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "no audit reserve: cannot open its file");
                return None;
            }
        };
        let mut held = file.metadata().map(|m| m.len()).unwrap_or(0).min(bytes);
        if held < bytes {
            // Real bytes, not a hole: the space must be taken now.
            let chunk = vec![0u8; 64 * 1024];
            let _ = file.seek(SeekFrom::Start(held));
            while held < bytes {
                let n = usize::try_from((bytes - held).min(chunk.len() as u64)).unwrap_or(0);
                if file.write_all(&chunk[..n]).is_err() {
                    break;
                }
                held += n as u64;
            }
            let _ = file.set_len(held);
            if file.sync_all().is_err() || held < bytes {
                tracing::warn!(path = %path.display(), held, wanted = bytes, "the audit reserve is smaller than asked: the disk is short of space");
            }
        }
        Some(Reserve { file, held })
    }

    /// Frees the space held; how much it was.
    fn release(&mut self) -> u64 {
        let freed = self.held;
        if freed > 0
            && self
                .file
                .set_len(0)
                .and_then(|()| self.file.sync_all())
                .is_ok()
        {
            self.held = 0;
            return freed;
        }
        0
    }
}

impl Writer {
    /// Frees the reserve; whether it held anything.
    pub(super) fn release_reserve(&mut self) -> bool {
        let Some(reserve) = self.reserve.as_mut() else {
            return false;
        };
        let freed = reserve.release();
        if freed == 0 {
            return false;
        }
        if let Some(faults) = self.sink.faults() {
            faults.give_back(freed);
        }
        self.shared.reserve_bytes.store(0, Ordering::Relaxed);
        tracing::warn!(
            path = %self.path.display(),
            freed,
            "the disk is full: the audit reserve was released for an essential record"
        );
        true
    }
}

//! The writer's file, and the fault injection that tests the fail-closed
//! path with it.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Makes the log's own file fail the way a full or broken disk does, to
/// test the fail-closed path. Only with the `test-util` feature, for
/// tests: a production build cannot set it.
///
/// Running as root, most ways of making a file unwritable (permissions,
/// read-only directories) do not stop writes, and a full file system is
/// not at hand. This hook stands between the writer and its real file and
/// fails real operations on it:
///
/// - [`set_space_left`](FaultInjection::set_space_left): the disk holds
///   only so many more bytes. A write that needs more writes what fits to
///   the file, then fails with `ENOSPC`, exactly like a full file system,
///   leaving a partial line behind for the writer to clean up.
/// - [`set_sync_failing`](FaultInjection::set_sync_failing): every
///   `fdatasync` fails with `EIO` (the data may or may not be on disk, as
///   after a real failed sync).
///
/// Cutting the file back after a failure is never faked. The handle is
/// shared: keep a clone and change the faults while the log runs.
///
/// ```
/// use vigil_audit::{AuditOptions, FaultInjection};
///
/// let faults = FaultInjection::new();
/// let mut options = AuditOptions::default();
/// options.fault_injection = Some(faults.clone());
/// // ... open the log with `options`, append, then:
/// faults.set_space_left(Some(0));
/// // every later write fails with ENOSPC.
/// ```
#[derive(Debug, Clone, Default)]
#[cfg_attr(not(feature = "test-util"), allow(dead_code, unreachable_pub))]
pub struct FaultInjection {
    state: Arc<FaultState>,
}

#[derive(Debug)]
struct FaultState {
    /// Bytes the "disk" still takes; `u64::MAX` for no limit.
    space_left: AtomicU64,
    fail_sync: AtomicBool,
}

impl Default for FaultState {
    fn default() -> Self {
        FaultState {
            space_left: AtomicU64::new(u64::MAX),
            fail_sync: AtomicBool::new(false),
        }
    }
}

#[cfg_attr(not(feature = "test-util"), allow(dead_code, unreachable_pub))]
impl FaultInjection {
    /// No faults until some are set.
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on, writes may add at most `bytes` more bytes in total;
    /// `None` lifts the limit.
    pub fn set_space_left(&self, bytes: Option<u64>) {
        self.state
            .space_left
            .store(bytes.unwrap_or(u64::MAX), Ordering::SeqCst);
    }

    /// From now on, every sync fails (`true`) or works (`false`).
    pub fn set_sync_failing(&self, fail: bool) {
        self.state.fail_sync.store(fail, Ordering::SeqCst);
    }

    /// `bytes` more fit on the "disk" (space freed elsewhere, as when the
    /// log releases its reserve). No effect without a limit.
    pub(crate) fn give_back(&self, bytes: u64) {
        let _ = self
            .state
            .space_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                (left != u64::MAX).then(|| left.saturating_add(bytes).min(u64::MAX - 1))
            });
    }

    /// How much of a `len`-byte write the "disk" takes.
    fn take(&self, len: usize) -> usize {
        let left = self.state.space_left.load(Ordering::SeqCst);
        if left == u64::MAX {
            return len;
        }
        let n = left.min(len as u64);
        self.state.space_left.store(left - n, Ordering::SeqCst);
        n as usize
    }
}

/// The log file as the writer uses it.
#[derive(Debug)]
pub(crate) struct Sink {
    pub(crate) file: File,
    faults: Option<FaultInjection>,
}

impl Sink {
    pub(crate) fn new(file: File, faults: Option<FaultInjection>) -> Sink {
        Sink { file, faults }
    }

    /// Writes all of `buf` at `offset`.
    pub(crate) fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        if let Some(faults) = &self.faults {
            let n = faults.take(buf.len());
            if n < buf.len() {
                self.file.write_all_at(&buf[..n], offset)?;
                return Err(rustix::io::Errno::NOSPC.into());
            }
        }
        self.file.write_all_at(buf, offset)
    }

    /// `fdatasync`.
    pub(crate) fn sync_data(&self) -> io::Result<()> {
        let failing = self
            .faults
            .as_ref()
            .is_some_and(|f| f.state.fail_sync.load(Ordering::SeqCst));
        if failing {
            return Err(rustix::io::Errno::IO.into());
        }
        self.file.sync_data()
    }

    /// The fault injection, if any.
    pub(crate) fn faults(&self) -> Option<&FaultInjection> {
        self.faults.as_ref()
    }

    /// Cuts the file to `len` bytes.
    pub(crate) fn set_len(&self, len: u64) -> io::Result<()> {
        self.file.set_len(len)
    }
}

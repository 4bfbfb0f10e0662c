//! [`AuditLog`]: opening, the writer thread and its group commit.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::error::{AuditError, Failure, FailureStage};
use crate::record::{RecordHash, encode_body, encode_object, encode_str, finish_line, format_time};
use crate::segment::{self, SEAL_KIND, SealedFile};
use crate::sink::{FaultInjection, Sink};
use crate::verify::{MAX_LINE_BYTES, Problem, ProblemKind, scan_from};

/// Default for [`AuditOptions::max_record_bytes`]: 64 KiB.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 64 << 10;

/// Default for [`AuditOptions::queue_capacity`].
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;

/// Longest accepted record kind, in bytes.
pub const MAX_KIND_BYTES: usize = 128;

/// Default for [`AuditOptions::segment_max_bytes`]: 16 MiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 16 << 20;
/// Default for [`AuditOptions::segment_max_age`]: a day.
pub const DEFAULT_SEGMENT_AGE: Duration = Duration::from_secs(24 * 60 * 60);
/// Default for [`AuditOptions::keep_segments`].
pub const DEFAULT_KEEP_SEGMENTS: usize = 256;
/// Default for [`AuditOptions::reserve_bytes`]: 1 MiB.
pub const DEFAULT_RESERVE_BYTES: u64 = 1 << 20;

/// An upper bound on the bytes a line takes beyond its kind and its
/// encoded details: the fixed member names, a 20-digit seq, the time, two
/// hashes and the newline.
const RECORD_OVERHEAD: usize = 235;

/// How [`AuditLog::open`] treats a chain that is broken before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OnCorruption {
    /// Refuse to open: [`AuditError::Corrupt`] says where the chain breaks.
    #[default]
    Refuse,
    /// Open anyway and append after everything the file holds: the next
    /// seq is one more than the highest seq any line claims, and the next
    /// `prev` is the `hash` stated by the last complete line that states
    /// one. The break stays in the file (so [`verify`](crate::verify)
    /// still reports it) and is in [`OpenReport::problem`].
    Continue,
}

/// Settings for [`AuditLog::open`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AuditOptions {
    /// Create the file when it does not exist (default `true`).
    pub create: bool,
    /// What to do with a chain that breaks before its end (default
    /// [`OnCorruption::Refuse`]).
    pub on_corruption: OnCorruption,
    /// Longest record, as encoded with its newline (default
    /// [`DEFAULT_MAX_RECORD_BYTES`]); capped at [`MAX_LINE_BYTES`]. A
    /// longer record is refused by [`AuditLog::append`] with
    /// [`AuditError::RecordTooLarge`].
    pub max_record_bytes: usize,
    /// Records waiting for the writer before
    /// [`append`](AuditLog::append) waits for room (default
    /// [`DEFAULT_QUEUE_CAPACITY`]). It is also the most records one batch
    /// (one write and one sync) takes. Queued memory is at most
    /// `queue_capacity × max_record_bytes`.
    pub queue_capacity: usize,
    /// Makes the file's writes or syncs fail on purpose, to test the
    /// fail-closed path. Tests only: see [`FaultInjection`].
    pub fault_injection: Option<FaultInjection>,
    /// The open segment is sealed, and a new one started, before a batch
    /// would take it past this size (default [`DEFAULT_SEGMENT_BYTES`]).
    /// Opening reads only the open segment whole, so this bounds the time
    /// an open takes, whatever the log's history.
    pub segment_max_bytes: u64,
    /// ... or once its first record is older than this (default
    /// [`DEFAULT_SEGMENT_AGE`]; `None`: no age limit).
    pub segment_max_age: Option<Duration>,
    /// At most this many sealed segments are kept; older ones are deleted,
    /// after a record of the chain says which (default
    /// [`DEFAULT_KEEP_SEGMENTS`]; `None`: keep every one).
    pub keep_segments: Option<usize>,
    /// Sealed segments sealed longer ago than this are deleted the same way
    /// (default `None`: no age limit).
    pub keep_age: Option<Duration>,
    /// Bytes held in reserve, in `<log>.reserve`, for records appended with
    /// [`AuditLog::append_essential`]: when the disk is full, the reserve
    /// is released so that they are still written (default
    /// [`DEFAULT_RESERVE_BYTES`]; 0: no reserve).
    pub reserve_bytes: u64,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            create: true,
            on_corruption: OnCorruption::Refuse,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            fault_injection: None,
            segment_max_bytes: DEFAULT_SEGMENT_BYTES,
            segment_max_age: Some(DEFAULT_SEGMENT_AGE),
            keep_segments: Some(DEFAULT_KEEP_SEGMENTS),
            keep_age: None,
            reserve_bytes: DEFAULT_RESERVE_BYTES,
        }
    }
}

/// Proof that a record is in the log and synced to disk.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Receipt {
    /// The record's seq.
    pub seq: u64,
    /// The record's hash (the next record's `prev`).
    pub hash: RecordHash,
}

/// What [`AuditLog::open`] found in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpenReport {
    /// Whether the file was created by this open.
    pub created: bool,
    /// Records of the open segment that passed every check, from its first
    /// line on (with [`OnCorruption::Continue`], those before the break).
    /// Sealed segments are not read whole at open: their heads are checked.
    pub records: u64,
    /// Sealed segments kept (their heads were checked).
    pub sealed_segments: u64,
    /// The seq of the first record kept (1 unless old segments were
    /// deleted).
    pub first_seq: u64,
    /// Bytes held in reserve for essential records.
    pub reserve_bytes: u64,
    /// The seq the next record gets.
    pub next_seq: u64,
    /// The `prev` the next record gets.
    pub prev: RecordHash,
    /// An unterminated last line that was cut off.
    pub torn_tail: Option<TornTail>,
    /// Where the chain breaks, when it was opened anyway
    /// ([`OnCorruption::Continue`]).
    pub problem: Option<Problem>,
}

/// An unterminated last line cut off by [`AuditLog::open`].
///
/// The writer acknowledges a record only after its whole line, newline
/// included, is synced, so such a line was never acknowledged: it is the
/// trace of a crash or a failed write.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TornTail {
    /// Where the cut bytes began in the log (the log's new length).
    pub offset: u64,
    /// How many bytes were cut.
    pub len: u64,
    /// The file that keeps them: the log's name with `.torn` added. Each
    /// cut appends one JSON line to it: `time`, `offset`, `len`,
    /// `after_seq` (the seq of the record before), and `bytes_hex`.
    pub saved_to: PathBuf,
}

/// Counters of a log since it was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct AuditStats {
    /// Records acknowledged.
    pub records: u64,
    /// Batches written (each one write and one sync).
    pub batches: u64,
    /// Successful `fdatasync` calls.
    pub syncs: u64,
    /// Bytes acknowledged.
    pub bytes: u64,
    /// Records in the largest batch.
    pub largest_batch: u64,
    /// Segments sealed.
    pub segments_sealed: u64,
    /// Sealed segments deleted by retention.
    pub segments_deleted: u64,
    /// Bytes held in reserve now (0 once released).
    pub reserve_bytes: u64,
}

/// An open, append-only, hash-chained audit log.
///
/// Cheap to clone; every clone appends to the same log, from any task or
/// thread. See the [crate docs](crate) for the format and the guarantees.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Handle>,
}

struct Handle {
    path: PathBuf,
    tx: mpsc::Sender<Msg>,
    shared: Arc<Shared>,
    max_record_bytes: usize,
    report: OpenReport,
    options: AuditOptions,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.inner.path)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// State the writer shares with the handles.
#[derive(Default)]
struct Shared {
    /// Set once, by the writer, when a write fails.
    poison: OnceLock<Failure>,
    closed: AtomicBool,
    records: AtomicU64,
    batches: AtomicU64,
    syncs: AtomicU64,
    bytes: AtomicU64,
    largest_batch: AtomicU64,
    segments_sealed: AtomicU64,
    segments_deleted: AtomicU64,
    reserve_bytes: AtomicU64,
}

enum Msg {
    Append(Pending),
    Close(oneshot::Sender<()>),
}

struct Pending {
    kind: String,
    /// Canonical JSON, encoded by the caller's task.
    details: String,
    /// May use the reserve.
    essential: bool,
    reply: oneshot::Sender<Result<Receipt, AuditError>>,
}

impl AuditLog {
    /// Opens (or creates) the log at `path`, checks it and starts its
    /// writer thread.
    ///
    /// - The **sealed segments** (`<path>.<first>-<last>`) are not read
    ///   whole: their heads are checked (first and last record of each,
    ///   each seal against its name and the seal before it, and that no
    ///   segment is missing between two). The **open segment** (`path`)
    ///   is read and its chain checked whole, from the last seal on. So
    ///   opening takes a time bounded by the segment size, not the log's
    ///   history; [`verify`](crate::verify) reads everything.
    /// - The file gets an exclusive advisory lock (`flock`) for as long as
    ///   the log is open: a second writer, in this process or another,
    ///   gets [`AuditError::Locked`] instead of forking the chain.
    /// - A new file is created (mode 0600) and its directory synced, so
    ///   that the file itself survives a crash.
    /// - An unterminated last line is cut off after its bytes are saved
    ///   and synced to `<path>.torn` (see [`TornTail`]).
    /// - A chain that breaks before that is [`AuditError::Corrupt`], unless
    ///   `options.on_corruption` is [`OnCorruption::Continue`]; a broken
    ///   head is [`AuditError::BrokenSegment`].
    /// - A rotation cut short (the open segment ends with its seal, or is
    ///   missing after a seal) is finished.
    /// - The reserve file is made (or topped up) to
    ///   [`AuditOptions::reserve_bytes`], as far as the disk allows.
    ///
    /// This blocks while it reads the file; from async code, call it in
    /// `tokio::task::spawn_blocking`.
    ///
    /// # Errors
    ///
    /// [`AuditError::Io`], [`AuditError::NotFound`],
    /// [`AuditError::NotRegularFile`], [`AuditError::Locked`],
    /// [`AuditError::Corrupt`] and [`AuditError::BrokenSegment`].
    pub fn open(path: impl AsRef<Path>, options: AuditOptions) -> Result<AuditLog, AuditError> {
        let path = path.as_ref().to_owned();
        let (mut kept, chain_end) = check_heads(&path)?;
        let existed = match fs::metadata(&path) {
            // Checked before opening: opening a FIFO would block.
            Ok(m) if !m.is_file() => return Err(AuditError::NotRegularFile { path }),
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // A log with sealed segments goes on in a new open segment.
                if !options.create && kept.is_empty() {
                    return Err(AuditError::NotFound { path });
                }
                false
            }
            Err(e) => return Err(AuditError::io(&path, "read the metadata of", e)),
        };
        let (mut file, mut meta) = open_segment(&path, options.create || !kept.is_empty())?;
        let created = !existed;

        // Where the open segment's chain starts: after the last seal, or
        // at its own first record when no sealed segment is kept (a new
        // log, or one whose sealed segments retention deleted).
        let (after_seq, after_hash) = match chain_end {
            Some(end) => end,
            None => match segment::first_line(&path)
                .ok()
                .flatten()
                .and_then(|l| crate::record::parse_line(&l).ok())
            {
                Some(first) if first.seq > 1 => (first.seq - 1, first.prev),
                _ => (0, RecordHash::ZERO),
            },
        };
        let first_seq = kept.first().map_or(after_seq + 1, |k| k.file.first);
        let s = scan_from(
            BufReader::with_capacity(1 << 16, &file),
            false,
            after_seq,
            after_hash,
        )
        .map_err(|e| AuditError::io(&path, "read", e))?;
        // An open segment that starts after the chain's first record, with
        // no sealed segment kept before it: a retention record in it must
        // say the segments before were deleted.
        let mut s = s;
        if chain_end.is_none() && after_seq > 0 && s.problem.is_none() {
            let explained = s
                .specials
                .iter()
                .filter(|sp| sp.kind == segment::RETENTION_KIND)
                .any(|sp| segment::deleted_by(&sp.details).contains(&(after_seq, after_hash)));
            if !explained {
                s.problem = Some(Problem {
                    line: 1,
                    offset: 0,
                    expected_seq: 1,
                    seq: Some(after_seq + 1),
                    kind: ProblemKind::HistoryDeleted {
                        first_seq: after_seq + 1,
                    },
                });
            }
        }
        let (next_seq, prev, problem) = match s.problem {
            None => (s.last_seq + 1, s.last_hash, None),
            Some(p) if p.kind == ProblemKind::Incomplete => (s.last_seq + 1, s.last_hash, None),
            Some(p) => match options.on_corruption {
                OnCorruption::Refuse => {
                    return Err(AuditError::Corrupt {
                        path,
                        problem: Box::new(p),
                    });
                }
                OnCorruption::Continue => {
                    // Stay far from overflow: no real log gets near 2^63.
                    if s.claimed_seq >= 1 << 63 {
                        return Err(AuditError::Corrupt {
                            path,
                            problem: Box::new(p),
                        });
                    }
                    tracing::warn!(
                        path = %path.display(),
                        problem = %p,
                        "audit log chain is broken; opening anyway as asked"
                    );
                    let prev = s.claimed_hash.unwrap_or(s.last_hash);
                    (s.claimed_seq.max(s.last_seq) + 1, prev, Some(p))
                }
            },
        };

        let torn_tail = if s.complete_end < s.end {
            let torn = cut_torn_tail(&file, &path, s.complete_end, s.end, next_seq - 1)?;
            tracing::warn!(
                path = %path.display(),
                offset = torn.offset,
                len = torn.len,
                saved_to = %torn.saved_to.display(),
                "cut an unterminated last line (never acknowledged) off the audit log"
            );
            Some(torn)
        } else {
            None
        };
        let mut len = s.complete_end;
        let mut segment_first = after_seq + 1;
        // A rotation cut short after the seal was written: finish it.
        if problem.is_none() && s.records > 0 && s.last_kind.as_deref() == Some(SEAL_KIND) {
            let sealed = SealedFile {
                path: segment::sealed_path(&path, segment_first, s.last_seq),
                first: segment_first,
                last: s.last_seq,
            };
            drop(file);
            fs::rename(&path, &sealed.path)
                .and_then(|()| sync_dir(&path))
                .map_err(|e| AuditError::io(&path, "finish sealing", e))?;
            tracing::warn!(path = %sealed.path.display(), "finished sealing an audit segment whose rotation was cut short");
            kept.push(Kept {
                file: sealed,
                seal: s.last_hash,
                sealed_at: SystemTime::now(),
            });
            (file, meta) = open_segment(&path, true)?;
            len = 0;
            segment_first = next_seq;
        }
        let segment_opened = if len == 0 {
            SystemTime::now()
        } else {
            meta.created()
                .or_else(|_| meta.modified())
                .unwrap_or_else(|_| SystemTime::now())
        };
        let reserve = Reserve::ensure(&path, options.reserve_bytes);
        let shared = Arc::new(Shared::default());
        shared
            .reserve_bytes
            .store(reserve.as_ref().map_or(0, |r| r.held), Ordering::Relaxed);
        let report = OpenReport {
            created,
            records: s.records,
            sealed_segments: kept.len() as u64,
            first_seq,
            reserve_bytes: reserve.as_ref().map_or(0, |r| r.held),
            next_seq,
            prev,
            torn_tail,
            problem,
        };

        let kept_options = options.clone();
        let queue_capacity = options.queue_capacity.max(1);
        let (tx, rx) = mpsc::channel(queue_capacity);
        let writer = Writer {
            sink: Sink::new(file, options.fault_injection.clone()),
            path: path.clone(),
            dev: meta.dev(),
            ino: meta.ino(),
            len,
            next_seq,
            prev,
            max_batch: queue_capacity,
            shared: shared.clone(),
            segment_first,
            segment_opened,
            kept: kept.into(),
            reserve,
            options: options.clone(),
        };
        std::thread::Builder::new()
            .name("vigil-audit".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| AuditError::io(&path, "start the writer thread for", e))?;

        Ok(AuditLog {
            inner: Arc::new(Handle {
                path,
                tx,
                shared,
                max_record_bytes: options.max_record_bytes.min(MAX_LINE_BYTES),
                report,
                options: kept_options,
            }),
        })
    }

    /// Appends a record and returns once it is written and synced
    /// (`fdatasync`) to disk.
    ///
    /// `kind` names the event (`"command.issued"`): 1 to
    /// [`MAX_KIND_BYTES`] ASCII letters, digits, `.`, `_` or `-`.
    /// `details` must be a JSON object.
    ///
    /// Records from concurrent callers share syncs: the writer takes every
    /// record queued while it was busy, writes them at once, syncs once and
    /// acknowledges them all. Records get their seq in the order the
    /// writer receives them.
    ///
    /// Dropping the future does not withdraw the record: once queued, it
    /// may still be written.
    ///
    /// # Errors
    ///
    /// Any error means the record was **not** acknowledged.
    /// [`AuditError::InvalidKind`], [`AuditError::DetailsNotObject`] and
    /// [`AuditError::RecordTooLarge`] refuse the record itself;
    /// [`AuditError::Failed`] says the write or sync failed (the log then
    /// refuses everything with [`AuditError::Poisoned`] until it is
    /// opened again); [`AuditError::Closed`] after [`close`](Self::close).
    pub async fn append(&self, kind: &str, details: Value) -> Result<Receipt, AuditError> {
        self.append_as(kind, details, false).await
    }

    /// As [`append`](Self::append), for a record that must be written even
    /// when the disk is otherwise full: if a write fails for want of
    /// space, the log releases its reserve ([`AuditOptions::reserve_bytes`])
    /// and tries again. For the few records that stand between an
    /// authorized emergency action and its being carried out.
    ///
    /// # Errors
    ///
    /// As [`append`](Self::append).
    pub async fn append_essential(
        &self,
        kind: &str,
        details: Value,
    ) -> Result<Receipt, AuditError> {
        self.append_as(kind, details, true).await
    }

    async fn append_as(
        &self,
        kind: &str,
        details: Value,
        essential: bool,
    ) -> Result<Receipt, AuditError> {
        check_kind(kind)?;
        let map = match details {
            Value::Object(map) => map,
            other => {
                return Err(AuditError::DetailsNotObject {
                    found: json_type(&other),
                });
            }
        };
        let mut encoded = String::new();
        encode_object(&map, &mut encoded);
        let size = RECORD_OVERHEAD + kind.len() + encoded.len();
        if size > self.inner.max_record_bytes {
            return Err(AuditError::RecordTooLarge {
                size,
                limit: self.inner.max_record_bytes,
            });
        }
        if let Some(refusal) = self.refusal() {
            return Err(refusal);
        }
        let (reply, answer) = oneshot::channel();
        let msg = Msg::Append(Pending {
            kind: kind.to_owned(),
            details: encoded,
            essential,
            reply,
        });
        if self.inner.tx.send(msg).await.is_err() {
            return Err(self.stopped());
        }
        answer.await.unwrap_or_else(|_| Err(self.stopped()))
    }

    /// Stops the log: records queued before this call are written and
    /// acknowledged as usual, later ones get [`AuditError::Closed`], and
    /// the file and its lock are released before this returns. Closing a
    /// closed log does nothing.
    ///
    /// Every acknowledged record is already on disk, so closing is not
    /// needed for durability; dropping every clone of the log stops it
    /// too, but the writer lets go of the file a moment later rather than
    /// at once: close first to open the log again right away.
    ///
    /// # Errors
    ///
    /// [`AuditError::Poisoned`] when the log had stopped after a failure.
    pub async fn close(&self) -> Result<(), AuditError> {
        let (tx, rx) = oneshot::channel();
        if self.inner.tx.send(Msg::Close(tx)).await.is_ok() {
            // Answered (or dropped) once the file is released.
            let _ = rx.await;
        }
        match self.inner.shared.poison.get() {
            Some(failure) => Err(AuditError::Poisoned {
                path: self.inner.path.clone(),
                failure: failure.clone(),
            }),
            None => Ok(()),
        }
    }

    /// The log's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The options the log was opened with (to open it again the same
    /// way).
    pub fn options(&self) -> &AuditOptions {
        &self.inner.options
    }

    /// What opening the file found.
    pub fn open_report(&self) -> &OpenReport {
        &self.inner.report
    }

    /// Counters since the log was opened.
    pub fn stats(&self) -> AuditStats {
        let s = &self.inner.shared;
        AuditStats {
            records: s.records.load(Ordering::Relaxed),
            batches: s.batches.load(Ordering::Relaxed),
            syncs: s.syncs.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
            largest_batch: s.largest_batch.load(Ordering::Relaxed),
            segments_sealed: s.segments_sealed.load(Ordering::Relaxed),
            segments_deleted: s.segments_deleted.load(Ordering::Relaxed),
            reserve_bytes: s.reserve_bytes.load(Ordering::Relaxed),
        }
    }

    /// The failure that stopped the log, if one did.
    pub fn failure(&self) -> Option<&Failure> {
        self.inner.shared.poison.get()
    }

    /// The error for a log that takes no more records, if it is one.
    fn refusal(&self) -> Option<AuditError> {
        let shared = &self.inner.shared;
        if let Some(failure) = shared.poison.get() {
            return Some(AuditError::Poisoned {
                path: self.inner.path.clone(),
                failure: failure.clone(),
            });
        }
        shared
            .closed
            .load(Ordering::SeqCst)
            .then(|| AuditError::Closed {
                path: self.inner.path.clone(),
            })
    }

    /// The error for a writer that has gone away.
    fn stopped(&self) -> AuditError {
        self.refusal().unwrap_or_else(|| AuditError::Closed {
            path: self.inner.path.clone(),
        })
    }
}

fn check_kind(kind: &str) -> Result<(), AuditError> {
    let reason = if kind.is_empty() {
        "empty"
    } else if kind.len() > MAX_KIND_BYTES {
        "longer than 128 bytes"
    } else if !kind
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        "only ASCII letters, digits, '.', '_' and '-' are allowed"
    } else {
        return Ok(());
    };
    Err(AuditError::InvalidKind {
        kind: kind.to_owned(),
        reason,
    })
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Takes the file's exclusive `flock`, waiting at most a moment.
///
/// A lock belongs to an open file description, which a process forked
/// by another thread shares until it `exec`s: a log closed a moment ago
/// can look locked for that long. A second writer holds the lock for as
/// long as it runs, so a short wait tells the two apart.
fn lock(file: &File, path: &Path) -> Result<(), AuditError> {
    use rustix::fs::{FlockOperation, flock};
    for attempt in 0..10 {
        match flock(file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(()),
            Err(rustix::io::Errno::WOULDBLOCK) if attempt < 9 => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(rustix::io::Errno::WOULDBLOCK) => break,
            Err(e) => return Err(AuditError::io(path, "lock", e.into())),
        }
    }
    Err(AuditError::Locked {
        path: path.to_owned(),
    })
}

/// Syncs the directory that holds `path`, so that a new name in it
/// survives a crash.
fn sync_dir(path: &Path) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

/// The file that keeps cut torn tails: the log's name with `.torn` added.
fn torn_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".torn");
    path.with_file_name(name)
}

/// Saves `file[from..to]` to the `.torn` file, syncs it, then cuts the log
/// to `from` bytes and syncs that.
fn cut_torn_tail(
    file: &File,
    path: &Path,
    from: u64,
    to: u64,
    after_seq: u64,
) -> Result<TornTail, AuditError> {
    let saved_to = torn_path(path);
    let save = || -> io::Result<()> {
        let existed = saved_to.exists();
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&saved_to)?;
        let mut w = BufWriter::new(&out);
        let mut head = String::from("{\"time\":");
        encode_str(&format_time(SystemTime::now()), &mut head);
        head.push_str(&format!(
            ",\"offset\":{from},\"len\":{},\"after_seq\":{after_seq},\"bytes_hex\":\"",
            to - from
        ));
        w.write_all(head.as_bytes())?;
        let mut reader = file;
        reader.seek(SeekFrom::Start(from))?;
        let mut chunk = vec![0u8; 1 << 16];
        let mut left = to - from;
        while left > 0 {
            let want = chunk.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = reader.read(&mut chunk[..want])?;
            if n == 0 {
                break;
            }
            w.write_all(hex::encode(&chunk[..n]).as_bytes())?;
            left -= n as u64;
        }
        w.write_all(b"\"}\n")?;
        w.flush()?;
        drop(w);
        out.sync_data()?;
        if !existed {
            sync_dir(&saved_to)?;
        }
        Ok(())
    };
    save().map_err(|e| AuditError::io(&saved_to, "save the torn tail to", e))?;
    file.set_len(from)
        .and_then(|()| file.sync_data())
        .map_err(|e| AuditError::io(path, "cut the torn tail off", e))?;
    Ok(TornTail {
        offset: from,
        len: to - from,
        saved_to,
    })
}

/// A sealed segment the log keeps: its file, its seal's hash, and when it
/// was sealed (for retention by age).
#[derive(Debug, Clone)]
struct Kept {
    file: SealedFile,
    seal: RecordHash,
    sealed_at: SystemTime,
}

/// Checks the heads of the sealed segments of `path`; the segments, and
/// the end of their chain (last seq, seal hash), if any.
/// The end of a chain: the last seq and its record's hash.
type ChainEnd = (u64, RecordHash);

fn check_heads(path: &Path) -> Result<(Vec<Kept>, Option<ChainEnd>), AuditError> {
    let sealed =
        segment::list(path).map_err(|e| AuditError::io(path, "list the segments of", e))?;
    let mut kept = Vec::with_capacity(sealed.len());
    let mut end: Option<(u64, RecordHash)> = None;
    for file in sealed {
        let broken = |reason: String| AuditError::BrokenSegment {
            path: file.path.clone(),
            reason,
        };
        let head = segment::read_head(&file).map_err(broken)?;
        if let Some((last, seal)) = end {
            if file.first != last + 1 {
                return Err(broken(format!(
                    "a segment is missing before it: the one before ends at seq {last}"
                )));
            }
            if head.first.prev != seal {
                return Err(broken(
                    "its first record does not follow the seal of the segment before".into(),
                ));
            }
            if head.previous_seal != Some(seal) {
                return Err(broken(
                    "its seal does not name the seal of the segment before".into(),
                ));
            }
        }
        end = Some((file.last, head.seal.hash));
        let sealed_at = fs::metadata(&file.path)
            .and_then(|m| m.modified())
            .unwrap_or_else(|_| SystemTime::now());
        kept.push(Kept {
            seal: head.seal.hash,
            sealed_at,
            file,
        });
    }
    Ok((kept, end))
}

/// Opens (creating it when `create`, mode 0600) and locks the open
/// segment; syncs the directory when it was made.
fn open_segment(path: &Path, create: bool) -> Result<(File, fs::Metadata), AuditError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let existed = path.exists();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound if !create => AuditError::NotFound {
                path: path.to_owned(),
            },
            _ => AuditError::io(path, "open", e),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| AuditError::io(path, "read the metadata of", e))?;
    if !meta.is_file() {
        return Err(AuditError::NotRegularFile {
            path: path.to_owned(),
        });
    }
    lock(&file, path)?;
    if !existed {
        sync_dir(path).map_err(|e| AuditError::io(path, "sync the directory of", e))?;
    }
    Ok((file, meta))
}

/// Space held for essential records: a file of real (allocated) bytes,
/// released (cut to nothing) when the disk is full.
#[derive(Debug)]
struct Reserve {
    file: File,
    held: u64,
}

impl Reserve {
    /// Makes `<log>.reserve` hold `bytes`, as far as the disk allows;
    /// `None` for no reserve.
    fn ensure(log: &Path, bytes: u64) -> Option<Reserve> {
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

/// The writer thread's state. It alone touches the file after open.
struct Writer {
    sink: Sink,
    path: PathBuf,
    /// The file's identity, to notice it being removed or replaced.
    dev: u64,
    ino: u64,
    /// Length of the file up to the last acknowledged record.
    len: u64,
    next_seq: u64,
    prev: RecordHash,
    max_batch: usize,
    shared: Arc<Shared>,
    /// The seq of the open segment's first record (or of the next record,
    /// when it has none).
    segment_first: u64,
    /// When the open segment was started.
    segment_opened: SystemTime,
    /// The sealed segments kept, oldest first.
    kept: std::collections::VecDeque<Kept>,
    reserve: Option<Reserve>,
    options: AuditOptions,
}

impl Writer {
    /// Takes whatever is queued, commits it with one write and one sync,
    /// answers, and repeats; stops on close, on failure, or when every
    /// handle is gone.
    fn run(self, mut rx: mpsc::Receiver<Msg>) {
        let mut me = self;
        let mut batch: Vec<Pending> = Vec::new();
        let mut closers: Vec<oneshot::Sender<()>> = Vec::new();
        let mut buf = String::new();
        let failed: Option<Failure> = loop {
            let Some(first) = rx.blocking_recv() else {
                break None;
            };
            match first {
                Msg::Append(p) => batch.push(p),
                Msg::Close(tx) => closers.push(tx),
            }
            while closers.is_empty() && batch.len() < me.max_batch {
                match rx.try_recv() {
                    Ok(Msg::Append(p)) => batch.push(p),
                    Ok(Msg::Close(tx)) => closers.push(tx),
                    Err(_) => break,
                }
            }
            if !batch.is_empty() {
                match me.commit(&batch, &mut buf) {
                    Ok(receipts) => {
                        for (p, r) in batch.drain(..).zip(receipts) {
                            let _ = p.reply.send(Ok(r));
                        }
                    }
                    Err(failure) => break Some(failure),
                }
            }
            if !closers.is_empty() {
                break None;
            }
        };
        // Release the file and its lock before anyone hears of the stop,
        // so that the log can be opened again at once. No record can slip
        // in meanwhile: only this thread writes, and it writes no more.
        let Writer {
            sink, path, shared, ..
        } = me;
        drop(sink);
        match failed {
            Some(failure) => {
                tracing::error!(
                    path = %path.display(),
                    %failure,
                    records = batch.len(),
                    "audit log write failed; refusing records until it is reopened"
                );
                let _ = shared.poison.set(failure.clone());
                for p in batch.drain(..) {
                    let _ = p.reply.send(Err(AuditError::Failed {
                        path: path.clone(),
                        failure: failure.clone(),
                    }));
                }
            }
            None => shared.closed.store(true, Ordering::SeqCst),
        }
        rx.close();
        while let Ok(msg) = rx.try_recv() {
            match msg {
                Msg::Append(p) => {
                    let err = match shared.poison.get() {
                        Some(failure) => AuditError::Poisoned {
                            path: path.clone(),
                            failure: failure.clone(),
                        },
                        None => AuditError::Closed { path: path.clone() },
                    };
                    let _ = p.reply.send(Err(err));
                }
                Msg::Close(tx) => closers.push(tx),
            }
        }
        for tx in closers {
            let _ = tx.send(());
        }
    }

    /// Commits a batch: seals the open segment first if the batch would
    /// take it past its size, or it is past its age; writes the batch's
    /// lines, syncs once and checks the file is still the one at the path.
    /// Nothing changes (seq, prev, length) unless all of it worked; on
    /// failure the file is cut back to its last acknowledged length. A
    /// batch holding an essential record that fails for want of space is
    /// tried again once the reserve is released.
    fn commit(&mut self, batch: &[Pending], buf: &mut String) -> Result<Vec<Receipt>, Failure> {
        let essential = batch.iter().any(|p| p.essential);
        let mut lines: Vec<(&str, &str)> = batch
            .iter()
            .map(|p| (p.kind.as_str(), p.details.as_str()))
            .collect();
        self.rotate_if_due(batch.len() as u64 * 256, essential)?;
        let receipts = self.write_records(&mut lines, buf, essential)?;
        let s = &self.shared;
        s.records.fetch_add(batch.len() as u64, Ordering::Relaxed);
        s.batches.fetch_add(1, Ordering::Relaxed);
        s.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        s.largest_batch
            .fetch_max(batch.len() as u64, Ordering::Relaxed);
        Ok(receipts)
    }

    /// Writes records (kind, canonical details) at the end of the open
    /// segment with one write and one sync; on a full disk, with an
    /// essential record among them, releases the reserve and tries once
    /// more.
    fn write_records(
        &mut self,
        lines: &mut [(&str, &str)],
        buf: &mut String,
        essential: bool,
    ) -> Result<Vec<Receipt>, Failure> {
        match self.try_write(lines, buf) {
            Err(failure) if essential && failure.is_disk_full() && self.release_reserve() => {
                self.try_write(lines, buf)
            }
            other => other,
        }
    }

    /// Frees the reserve; whether it held anything.
    fn release_reserve(&mut self) -> bool {
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

    fn try_write(
        &mut self,
        lines: &[(&str, &str)],
        buf: &mut String,
    ) -> Result<Vec<Receipt>, Failure> {
        buf.clear();
        let mut receipts = Vec::with_capacity(lines.len());
        let mut seq = self.next_seq;
        let mut prev = self.prev;
        let mut line = String::new();
        for (kind, details) in lines {
            line.clear();
            let time = format_time(SystemTime::now());
            encode_body(seq, &time, kind, details, &prev, &mut line);
            let hash = finish_line(&mut line);
            buf.push_str(&line);
            receipts.push(Receipt { seq, hash });
            prev = hash;
            seq += 1;
        }
        if let Err(e) = self.sink.write_all_at(buf.as_bytes(), self.len) {
            return Err(self.fail(FailureStage::Write, e));
        }
        if let Err(e) = self.sink.sync_data() {
            return Err(self.fail(FailureStage::Sync, e));
        }
        self.shared.syncs.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.check_same_file() {
            return Err(self.fail(FailureStage::FileGone, e));
        }
        self.len += buf.len() as u64;
        self.next_seq = seq;
        self.prev = prev;
        Ok(receipts)
    }

    /// Seals the open segment and starts the next one when it is due, then
    /// deletes what retention no longer keeps (recording it first).
    fn rotate_if_due(&mut self, incoming: u64, essential: bool) -> Result<(), Failure> {
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
        self.sink = Sink::new(file, self.options.fault_injection.clone());
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

    /// After a failed step: cut the file back to its last acknowledged
    /// length and sync, best effort, and describe what happened.
    fn fail(&mut self, stage: FailureStage, source: io::Error) -> Failure {
        let restored = self
            .sink
            .set_len(self.len)
            .and_then(|()| self.sink.sync_data())
            .is_ok();
        Failure {
            stage,
            source: Arc::new(source),
            restored,
        }
    }

    /// Whether the path still names the file being written.
    fn check_same_file(&self) -> io::Result<()> {
        if self.sink.file.metadata()?.nlink() == 0 {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "the log file was removed",
            ));
        }
        let now = fs::metadata(&self.path)?;
        if (now.dev(), now.ino()) != (self.dev, self.ino) {
            return Err(io::Error::other("another file now has the log's name"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_overhead_is_exact_for_the_longest_seq() {
        let (kind, details) = ("command.issued", r#"{"a":1}"#);
        let mut line = String::new();
        let time = format_time(SystemTime::now());
        encode_body(u64::MAX, &time, kind, details, &RecordHash::ZERO, &mut line);
        finish_line(&mut line);
        assert_eq!(line.len(), RECORD_OVERHEAD + kind.len() + details.len());
    }
}

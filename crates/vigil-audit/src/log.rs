//! [`AuditLog`]: opening, the writer thread and its group commit.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::error::{AuditError, Failure, FailureStage};
use crate::record::{RecordHash, encode_body, encode_object, encode_str, finish_line, format_time};
use crate::sink::{FaultInjection, Sink};
use crate::verify::{MAX_LINE_BYTES, Problem, ProblemKind, scan};

/// Default for [`AuditOptions::max_record_bytes`]: 64 KiB.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 64 << 10;

/// Default for [`AuditOptions::queue_capacity`].
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;

/// Longest accepted record kind, in bytes.
pub const MAX_KIND_BYTES: usize = 128;

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
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            create: true,
            on_corruption: OnCorruption::Refuse,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            fault_injection: None,
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
    /// Records that passed every check, from the first line on (with
    /// [`OnCorruption::Continue`], those before the break).
    pub records: u64,
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
}

enum Msg {
    Append(Pending),
    Close(oneshot::Sender<()>),
}

struct Pending {
    kind: String,
    /// Canonical JSON, encoded by the caller's task.
    details: String,
    reply: oneshot::Sender<Result<Receipt, AuditError>>,
}

impl AuditLog {
    /// Opens (or creates) the log at `path`, checks its whole chain and
    /// starts its writer thread.
    ///
    /// - The file gets an exclusive advisory lock (`flock`) for as long as
    ///   the log is open: a second writer, in this process or another,
    ///   gets [`AuditError::Locked`] instead of forking the chain.
    /// - A new file is created and its directory synced, so that the file
    ///   itself survives a crash.
    /// - An unterminated last line is cut off after its bytes are saved
    ///   and synced to `<path>.torn` (see [`TornTail`]).
    /// - A chain that breaks before that is [`AuditError::Corrupt`], unless
    ///   `options.on_corruption` is [`OnCorruption::Continue`].
    ///
    /// This blocks while it reads the file; from async code, call it in
    /// `tokio::task::spawn_blocking`.
    ///
    /// # Errors
    ///
    /// [`AuditError::Io`], [`AuditError::NotFound`],
    /// [`AuditError::NotRegularFile`], [`AuditError::Locked`] and
    /// [`AuditError::Corrupt`].
    pub fn open(path: impl AsRef<Path>, options: AuditOptions) -> Result<AuditLog, AuditError> {
        let path = path.as_ref().to_owned();
        let existed = match fs::metadata(&path) {
            // Checked before opening: opening a FIFO would block.
            Ok(m) if !m.is_file() => return Err(AuditError::NotRegularFile { path }),
            Ok(_) => true,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !options.create {
                    return Err(AuditError::NotFound { path });
                }
                false
            }
            Err(e) => return Err(AuditError::io(&path, "read the metadata of", e)),
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(options.create)
            .open(&path)
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound if !options.create => {
                    AuditError::NotFound { path: path.clone() }
                }
                _ => AuditError::io(&path, "open", e),
            })?;
        let meta = file
            .metadata()
            .map_err(|e| AuditError::io(&path, "read the metadata of", e))?;
        if !meta.is_file() {
            return Err(AuditError::NotRegularFile { path });
        }
        lock(&file, &path)?;
        let created = !existed;
        if created {
            sync_dir(&path).map_err(|e| AuditError::io(&path, "sync the directory of", e))?;
        }

        let s = scan(BufReader::with_capacity(1 << 16, &file), false)
            .map_err(|e| AuditError::io(&path, "read", e))?;
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
                    (s.claimed_seq + 1, prev, Some(p))
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
        let report = OpenReport {
            created,
            records: s.records,
            next_seq,
            prev,
            torn_tail,
            problem,
        };

        let shared = Arc::new(Shared::default());
        let kept_options = options.clone();
        let queue_capacity = options.queue_capacity.max(1);
        let (tx, rx) = mpsc::channel(queue_capacity);
        let writer = Writer {
            sink: Sink::new(file, options.fault_injection),
            path: path.clone(),
            dev: meta.dev(),
            ino: meta.ino(),
            len: s.complete_end,
            next_seq,
            prev,
            max_batch: queue_capacity,
            shared: shared.clone(),
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

/// Takes the file's exclusive `flock`, without waiting.
fn lock(file: &File, path: &Path) -> Result<(), AuditError> {
    use rustix::fs::{FlockOperation, flock};
    match flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(AuditError::Locked {
            path: path.to_owned(),
        }),
        Err(e) => Err(AuditError::io(path, "lock", e.into())),
    }
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

    /// Writes the batch's lines, syncs once and checks the file is still
    /// the one at the path. Nothing changes (seq, prev, length) unless all
    /// of it worked; on failure the file is cut back to its last
    /// acknowledged length.
    fn commit(&mut self, batch: &[Pending], buf: &mut String) -> Result<Vec<Receipt>, Failure> {
        buf.clear();
        let mut receipts = Vec::with_capacity(batch.len());
        let mut seq = self.next_seq;
        let mut prev = self.prev;
        let mut line = String::new();
        for p in batch {
            line.clear();
            let time = format_time(SystemTime::now());
            encode_body(seq, &time, &p.kind, &p.details, &prev, &mut line);
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
        let s = &self.shared;
        s.records.fetch_add(batch.len() as u64, Ordering::Relaxed);
        s.batches.fetch_add(1, Ordering::Relaxed);
        s.bytes.fetch_add(buf.len() as u64, Ordering::Relaxed);
        s.largest_batch
            .fetch_max(batch.len() as u64, Ordering::Relaxed);
        Ok(receipts)
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

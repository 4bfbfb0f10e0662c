//! Opening a log: checking the sealed segments' heads and the open
//! segment's chain, cutting off a torn last line, finishing a rotation
//! cut short, locking the file, and starting the writer.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use super::reserve::Reserve;
use super::rotate::Kept;
use super::writer::Writer;
use super::{AuditLog, AuditOptions, Handle, OnCorruption, OpenReport, Shared, TornTail};
use crate::error::AuditError;
use crate::hash::RecordHash;
use crate::problem::{MAX_LINE_BYTES, Problem, ProblemKind};
use crate::record::{encode_str, format_time};
use crate::segment::{self, SEAL_KIND, SealedFile};
use crate::sink::Sink;
use crate::verify::scan_from;

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
            sink: Sink::new(file, options.faults()),
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
pub(super) fn sync_dir(path: &Path) -> io::Result<()> {
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
pub(super) fn open_segment(path: &Path, create: bool) -> Result<(File, fs::Metadata), AuditError> {
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

//! The replay guard: each command id is accepted once, across restarts.
//! See [`ReplayGuard`]; the decisions are [`ReplaySet`]'s, which does no
//! I/O.

mod set;

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use crate::Refusal;
pub use set::{DEFAULT_CAPACITY, ReplayPlan, ReplaySet};
use set::{HEADER, MAX_ID_LEN};

/// Largest replay file opened.
const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;
/// The file is compacted only once it holds at least this many records.
const COMPACT_MIN_RECORDS: usize = 1024;

/// What went wrong in the replay guard.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// The id was already accepted and is still within its window.
    #[error("command {command_id:?} was already accepted")]
    Replayed {
        /// The command id.
        command_id: String,
    },
    /// The guard already remembers `capacity` live ids of this owner
    /// (authority key).
    #[error("replay guard holds {capacity} live command ids of this authority key, its share")]
    Full {
        /// The capacity (per owner).
        capacity: usize,
    },
    /// The command id is longer than the guard records.
    #[error("command id of {len} bytes is longer than {MAX_ID_LEN}")]
    IdTooLong {
        /// Its length.
        len: usize,
    },
    /// A file operation failed.
    #[error("replay file {path}: cannot {op}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file does not start with the replay header: it is not a replay
    /// file, and will not be overwritten.
    #[error("{path} is not a vigil replay file (first line is not {HEADER:?})")]
    NotAReplayFile {
        /// The file.
        path: PathBuf,
    },
    /// A complete line of the file is unreadable.
    #[error("replay file {path}, line {line}: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong.
        detail: String,
    },
    /// The file is larger than the limit.
    #[error("replay file {path} is {len} bytes, more than the {MAX_FILE_BYTES}-byte limit")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// An earlier write failed part way; the guard refuses everything until
    /// it is opened again (which repairs the file).
    #[error("replay guard disabled after a failed write: {0}")]
    Broken(String),
}

impl From<ReplayError> for Refusal {
    fn from(e: ReplayError) -> Self {
        match e {
            ReplayError::Replayed { command_id } => Refusal::Replayed { command_id },
            other => Refusal::ReplayStoreUnavailable {
                detail: other.to_string(),
            },
        }
    }
}

/// One command id to record, for [`ReplayGuard::check_and_record_many`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayEntry<'a> {
    /// The command id.
    pub command_id: &'a str,
    /// Whose share of the guard it takes: the authority key that signed
    /// it. Each owner may hold at most the guard's capacity of live ids,
    /// so that one key's volume never keeps another key's commands out.
    pub owner: &'a str,
    /// Until when to remember it.
    pub forget_after: SystemTime,
    /// Never refused for capacity (an emergency shutdown): it is recorded
    /// even when its owner's share is full.
    pub uncapped: bool,
}

/// Remembers accepted command ids, so that each is accepted once, also
/// across a restart.
///
/// The guard remembers each accepted id until the command would fail the
/// freshness checks anyway (its `forget_after`), so memory is bounded by
/// the commands accepted within one freshness window, and by a hard
/// capacity **per owner**: each id is recorded for an owner (the authority
/// key that signed it, [`ReplayEntry::owner`]), and each owner may hold at
/// most the capacity. A key that sends a flood fills its own share and no
/// other; an entry marked [`uncapped`](ReplayEntry::uncapped) (an emergency
/// shutdown) is never refused for capacity. Ids are unique across owners.
///
/// Check-and-record is atomic: of concurrent callers with the same id,
/// exactly one gets `Ok`. Calls block on `fsync` when the guard has a file.
///
/// # The file
///
/// With a file, every accepted id is appended to it and `fsync`ed *before*
/// [`check_and_record`](Self::check_and_record) returns `Ok`: once a
/// command is accepted, a crash cannot make the guard forget it. The file
/// is a header line then one JSON record per line:
///
/// ```text
/// vigil-replay-v1
/// {"id":"cmd_1","forget_after_us":1735733100000000,"owner":"Aa0…="}
/// ```
///
/// `forget_after_us` is microseconds since the Unix epoch; `owner` is left
/// out for the shared owner `""`. [`check_and_record_many`](Self::check_and_record_many)
/// writes its records with one write and one `fsync`. On open, expired
/// records are dropped and the file is rewritten (to a temporary file,
/// `fsync`ed, renamed over the old one, directory `fsync`ed); the same
/// compaction runs when the file holds more than twice as many records as
/// are live. A last line without its newline is a write torn by a crash
/// (its command was never accepted) and is dropped; any other unreadable
/// line makes [`open`](Self::open) fail rather than guess, and a file that
/// does not start with the header is never overwritten.
///
/// One guard per file: two processes (or two guards) sharing a file would
/// not see each other's records.
#[derive(Debug)]
pub struct ReplayGuard {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    set: ReplaySet,
    store: Option<Store>,
    broken: Option<String>,
    /// Compact only once the file holds at least this many records.
    compact_min: usize,
}

#[derive(Debug)]
struct Store {
    path: PathBuf,
    file: File,
    /// Records in the file, live or not.
    records: usize,
}

impl ReplayGuard {
    /// A guard that forgets everything when the process ends.
    pub fn in_memory() -> ReplayGuard {
        ReplayGuard {
            inner: Mutex::new(Inner {
                set: ReplaySet::new(),
                store: None,
                broken: None,
                compact_min: COMPACT_MIN_RECORDS,
            }),
        }
    }

    /// Opens (or creates) the replay file at `path`, drops the records that
    /// expired by `now`, and rewrites the file with the live ones.
    pub fn open(path: impl Into<PathBuf>, now: SystemTime) -> Result<ReplayGuard, ReplayError> {
        let path = path.into();
        let set = match fs::metadata(&path) {
            Ok(meta) => {
                if meta.len() > MAX_FILE_BYTES {
                    return Err(ReplayError::TooLarge {
                        path,
                        len: meta.len(),
                    });
                }
                let text = fs::read(&path).map_err(|source| ReplayError::Io {
                    path: path.clone(),
                    op: "read",
                    source,
                })?;
                ReplaySet::load(&path, &text, now)?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut set = ReplaySet::new();
                set.prune(now);
                set
            }
            Err(source) => {
                return Err(ReplayError::Io {
                    path,
                    op: "stat",
                    source,
                });
            }
        };
        let (file, records) = rewrite(&path, &set)?;
        Ok(ReplayGuard {
            inner: Mutex::new(Inner {
                set,
                store: Some(Store {
                    path,
                    file,
                    records,
                }),
                broken: None,
                compact_min: COMPACT_MIN_RECORDS,
            }),
        })
    }

    /// Sets the most live ids remembered at once (default
    /// [`DEFAULT_CAPACITY`]); when full, new ids are refused.
    pub fn with_capacity(self, capacity: usize) -> ReplayGuard {
        let mut inner = self
            .inner
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner);
        inner.set = std::mem::take(&mut inner.set).with_capacity(capacity);
        ReplayGuard {
            inner: Mutex::new(inner),
        }
    }

    /// Accepts `command_id` if it is not remembered, and remembers it until
    /// `forget_after` — durably, when the guard has a file, before
    /// returning `Ok`. It takes the share of the shared owner `""`; use
    /// [`check_and_record_many`](Self::check_and_record_many) to give each
    /// id its owner.
    pub fn check_and_record(
        &self,
        command_id: &str,
        forget_after: SystemTime,
        now: SystemTime,
    ) -> Result<(), ReplayError> {
        let entry = ReplayEntry {
            command_id,
            owner: "",
            forget_after,
            uncapped: false,
        };
        self.check_and_record_many(&[entry], now)
            .pop()
            .unwrap_or(Err(ReplayError::Broken("no answer".into())))
    }

    /// Accepts each entry whose id is not remembered (nor earlier in the
    /// same call) and whose owner's share has room, and remembers them —
    /// durably, with one write and one `fsync` for all of them, before
    /// returning. One answer per entry, in order; an id refused here
    /// leaves no trace.
    pub fn check_and_record_many(
        &self,
        entries: &[ReplayEntry<'_>],
        now: SystemTime,
    ) -> Vec<Result<(), ReplayError>> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(why) = &inner.broken {
            return entries
                .iter()
                .map(|_| Err(ReplayError::Broken(why.clone())))
                .collect();
        }
        let plan = inner.set.check(entries, now);
        if plan.accepted() == 0 {
            return plan.answers;
        }
        if let Some(store) = &mut inner.store {
            let written = store
                .file
                .write_all(plan.lines(entries).as_bytes())
                .map_err(|source| (source, "append to"))
                .and_then(|()| store.file.sync_data().map_err(|source| (source, "fsync")));
            if let Err((source, op)) = written {
                let err = ReplayError::Io {
                    path: store.path.clone(),
                    op,
                    source,
                };
                // A partial line may be in the file; appending after it
                // would corrupt the next record. Stop until reopened.
                let why = err.to_string();
                inner.broken = Some(why.clone());
                return plan
                    .answers
                    .into_iter()
                    .map(|a| a.and(Err(ReplayError::Broken(why.clone()))))
                    .collect();
            }
            store.records += plan.accepted();
        }
        inner.set.commit(entries, &plan);
        inner.maybe_compact(now);
        plan.answers
    }

    /// Whether `command_id` is remembered as accepted and not yet expired
    /// at `now`.
    pub fn contains(&self, command_id: &str, now: SystemTime) -> bool {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.set.contains(command_id, now)
    }

    /// Forgets the ids expired at `now` and, with a file, rewrites it with
    /// the live records.
    pub fn prune(&self, now: SystemTime) -> Result<(), ReplayError> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.set.prune(now);
        inner.compact()
    }

    /// How many ids are remembered (some may have expired since the last
    /// prune).
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .set
            .len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The replay file, if any.
    pub fn path(&self) -> Option<PathBuf> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.store.as_ref().map(|s| s.path.clone())
    }
}

impl Inner {
    /// Compacts when the file holds many more records than are live. The
    /// new record is already durable in the old file, so a failure here is
    /// not the caller's: it is kept for the next call to report.
    fn maybe_compact(&mut self, now: SystemTime) {
        let Some(store) = &self.store else { return };
        if store.records >= self.compact_min && store.records > 2 * self.set.len() {
            self.set.prune(now);
            // A failure before the rename leaves the old file in use; one
            // after it marks the guard broken (see `compact`).
            let _ = self.compact();
        }
    }

    fn compact(&mut self) -> Result<(), ReplayError> {
        if let Some(why) = &self.broken {
            return Err(ReplayError::Broken(why.clone()));
        }
        let Some(store) = &mut self.store else {
            return Ok(());
        };
        match rewrite(&store.path, &self.set) {
            Ok((file, records)) => {
                store.file = file;
                store.records = records;
                Ok(())
            }
            Err(RewriteError::BeforeRename(e)) => Err(e),
            Err(RewriteError::AfterRename(e)) => {
                // The old handle points at the replaced file: appends would
                // be lost. Refuse until reopened.
                let why = e.to_string();
                self.broken = Some(why.clone());
                Err(ReplayError::Broken(why))
            }
        }
    }
}

enum RewriteError {
    BeforeRename(ReplayError),
    AfterRename(ReplayError),
}

impl From<RewriteError> for ReplayError {
    fn from(e: RewriteError) -> Self {
        match e {
            RewriteError::BeforeRename(e) | RewriteError::AfterRename(e) => e,
        }
    }
}

/// Writes the live ids of `set` to a temporary file next to `path`,
/// `fsync`s it, renames it over `path`, `fsync`s the directory, and opens
/// the result for appending.
fn rewrite(path: &Path, set: &ReplaySet) -> Result<(File, usize), RewriteError> {
    let io = |op: &'static str, p: &Path| {
        let p = p.to_owned();
        move |source| ReplayError::Io {
            path: p,
            op,
            source,
        }
    };
    let mut tmp_name = path.file_name().unwrap_or_default().to_owned();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let text = set.snapshot();
    let write_tmp = || -> Result<(), ReplayError> {
        let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
        f.write_all(text.as_bytes()).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        Ok(())
    };
    if let Err(e) = write_tmp() {
        let _ = fs::remove_file(&tmp);
        return Err(RewriteError::BeforeRename(e));
    }
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        RewriteError::BeforeRename(io("rename over", path)(e))
    })?;
    sync_dir(path).map_err(RewriteError::AfterRename)?;
    let file = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(|e| RewriteError::AfterRename(io("open for appending", path)(e)))?;
    Ok((file, set.len()))
}

/// `fsync`s the directory holding `path`, so that a rename or creation in
/// it is durable.
fn sync_dir(path: &Path) -> Result<(), ReplayError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| ReplayError::Io {
                path: dir.to_owned(),
                op: "fsync directory",
                source,
            })?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    #[test]
    fn an_id_is_accepted_once_until_it_expires() {
        let g = ReplayGuard::in_memory();
        g.check_and_record("a", at(300), at(0)).expect("first");
        assert!(matches!(
            g.check_and_record("a", at(300), at(10)),
            Err(ReplayError::Replayed { .. })
        ));
        // Still remembered at the last instant it could pass freshness.
        assert!(g.contains("a", at(300)));
        assert!(g.check_and_record("a", at(300), at(300)).is_err());
        // Past it, the id may be used again (freshness refuses the old
        // command by then).
        g.check_and_record("a", at(700), at(301))
            .expect("after expiry");
        g.check_and_record("b", at(300), at(0)).expect("other id");
    }

    #[test]
    fn capacity_is_a_hard_bound() {
        let g = ReplayGuard::in_memory().with_capacity(2);
        g.check_and_record("a", at(100), at(0)).expect("a");
        g.check_and_record("b", at(100), at(0)).expect("b");
        assert!(matches!(
            g.check_and_record("c", at(100), at(0)),
            Err(ReplayError::Full { capacity: 2 })
        ));
        // Once the others expire there is room again.
        g.check_and_record("c", at(300), at(101)).expect("c");
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn each_owner_has_its_own_share_and_uncapped_entries_always_fit() {
        let g = ReplayGuard::in_memory().with_capacity(2);
        let entry = |id: &'static str, owner: &'static str, uncapped: bool| ReplayEntry {
            command_id: id,
            owner,
            forget_after: at(100),
            uncapped,
        };
        let answers = g.check_and_record_many(
            &[
                entry("a1", "run-key", false),
                entry("a2", "run-key", false),
                entry("a3", "run-key", false),
                entry("a1", "run-key", false),
            ],
            at(0),
        );
        assert!(answers[0].is_ok() && answers[1].is_ok());
        assert!(matches!(answers[2], Err(ReplayError::Full { capacity: 2 })));
        assert!(matches!(answers[3], Err(ReplayError::Replayed { .. })));
        // The run key is full; the operator key is not.
        g.check_and_record_many(&[entry("o1", "operator-key", false)], at(1))
            .pop()
            .expect("answer")
            .expect("another key's share");
        // An emergency entry is never refused for capacity.
        g.check_and_record_many(&[entry("stop", "run-key", true)], at(1))
            .pop()
            .expect("answer")
            .expect("uncapped");
        // Ids are unique across owners.
        assert!(matches!(
            g.check_and_record_many(&[entry("a1", "operator-key", false)], at(2))
                .pop()
                .expect("answer"),
            Err(ReplayError::Replayed { .. })
        ));
        // Shares come back as ids expire.
        g.check_and_record_many(&[entry("a4", "run-key", false)], at(101))
            .pop()
            .expect("answer")
            .expect("room again");
    }

    #[test]
    fn owners_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("replay.log");
        let g = ReplayGuard::open(&path, at(0))
            .expect("open")
            .with_capacity(1);
        let entry = ReplayEntry {
            command_id: "a",
            owner: "k",
            forget_after: at(100),
            uncapped: false,
        };
        g.check_and_record_many(&[entry], at(0))
            .pop()
            .expect("answer")
            .expect("a");
        drop(g);
        let g = ReplayGuard::open(&path, at(1))
            .expect("reopen")
            .with_capacity(1);
        let b = ReplayEntry {
            command_id: "b",
            ..entry
        };
        assert!(matches!(
            g.check_and_record_many(&[b], at(1)).pop().expect("answer"),
            Err(ReplayError::Full { .. })
        ));
        g.check_and_record("c", at(100), at(1))
            .expect("the shared owner has room");
    }

    #[test]
    fn memory_is_pruned_as_time_passes() {
        let g = ReplayGuard::in_memory();
        for i in 0..100 {
            g.check_and_record(&format!("id{i}"), at(i + 10), at(i))
                .expect("record");
        }
        g.check_and_record("late", at(1000), at(500)).expect("late");
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn the_file_is_compacted_as_records_expire() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("replay.log");
        let guard = ReplayGuard::open(&path, at(0)).expect("open");
        guard
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .compact_min = 32;
        // 300 commands, one per second, each remembered for 10 s.
        for i in 0..300 {
            guard
                .check_and_record(&format!("cmd_{i}"), at(i + 10), at(i))
                .expect("record");
        }
        // Memory holds what is live plus at most one prune interval (30 s);
        // the file at most twice what memory holds.
        assert!(guard.len() <= 41, "memory holds {} ids", guard.len());
        let lines = std::fs::read_to_string(&path)
            .expect("read")
            .lines()
            .count();
        assert!(lines <= 2 * 41 + 2, "file holds {lines} lines");
        // The recent ones are still refused after a restart.
        drop(guard);
        let guard = ReplayGuard::open(&path, at(300)).expect("reopen");
        assert!(guard.contains("cmd_299", at(300)));
        assert!(!guard.contains("cmd_100", at(300)));
        guard.prune(at(1000)).expect("prune");
        assert!(guard.is_empty());
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "vigil-replay-v1\n"
        );
    }

    #[test]
    fn errors_map_to_refusals() {
        let r: Refusal = ReplayError::Replayed {
            command_id: "x".into(),
        }
        .into();
        assert_eq!(r.code(), "replayed");
        let r: Refusal = ReplayError::Full { capacity: 1 }.into();
        assert_eq!(r.code(), "replay_store_unavailable");
    }
}

//! The replay guard: each command id is accepted once, across restarts.
//! See [`ReplayGuard`].

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use crate::Refusal;
use crate::timestamp::system_time_nanos;

/// The first line of a replay file.
const HEADER: &str = "vigil-replay-v1";
/// Default most live ids remembered at once for one owner (one authority
/// key).
pub const DEFAULT_CAPACITY: usize = 100_000;
/// Longest command id recorded, in bytes.
const MAX_ID_LEN: usize = 1024;
/// Largest replay file opened.
const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;
/// Expired ids are dropped from memory at most this often (in `now` time).
const PRUNE_EVERY_US: i64 = 30 * 1_000_000;
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

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    id: String,
    forget_after_us: i64,
    /// Whose share it takes; absent (older files, [`ReplayGuard::check_and_record`])
    /// is the shared owner `""`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    owner: String,
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

/// A live id: until when, and whose share it takes.
#[derive(Debug, Clone)]
struct Seen {
    until_us: i64,
    owner: Arc<str>,
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
    /// Live ids, when they may be forgotten (µs since the epoch) and whose
    /// share they take.
    seen: HashMap<String, Seen>,
    /// Live ids per owner.
    per_owner: HashMap<Arc<str>, usize>,
    store: Option<Store>,
    /// Most live ids per owner.
    capacity: usize,
    next_prune_us: i64,
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

fn micros_floor(t: SystemTime) -> i64 {
    let us = system_time_nanos(t).div_euclid(1000);
    i64::try_from(us).unwrap_or(if us < 0 { i64::MIN } else { i64::MAX })
}

fn micros_ceil(t: SystemTime) -> i64 {
    let ns = system_time_nanos(t);
    let us = ns.div_euclid(1000) + i128::from(ns.rem_euclid(1000) != 0);
    i64::try_from(us).unwrap_or(if us < 0 { i64::MIN } else { i64::MAX })
}

impl ReplayGuard {
    /// A guard that forgets everything when the process ends.
    pub fn in_memory() -> ReplayGuard {
        ReplayGuard {
            inner: Mutex::new(Inner {
                seen: HashMap::new(),
                per_owner: HashMap::new(),
                store: None,
                capacity: DEFAULT_CAPACITY,
                next_prune_us: i64::MIN,
                broken: None,
                compact_min: COMPACT_MIN_RECORDS,
            }),
        }
    }

    /// Opens (or creates) the replay file at `path`, drops the records that
    /// expired by `now`, and rewrites the file with the live ones.
    pub fn open(path: impl Into<PathBuf>, now: SystemTime) -> Result<ReplayGuard, ReplayError> {
        let path = path.into();
        let now_us = micros_floor(now);
        let mut seen = HashMap::new();
        match fs::metadata(&path) {
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
                read_records(&path, &text, now_us, &mut seen)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ReplayError::Io {
                    path,
                    op: "stat",
                    source,
                });
            }
        }
        let (file, records) = rewrite(&path, &seen)?;
        let per_owner = count_owners(&seen);
        Ok(ReplayGuard {
            inner: Mutex::new(Inner {
                seen,
                per_owner,
                store: Some(Store {
                    path,
                    file,
                    records,
                }),
                capacity: DEFAULT_CAPACITY,
                next_prune_us: now_us.saturating_add(PRUNE_EVERY_US),
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
        inner.capacity = capacity;
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
        let now_us = micros_floor(now);
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(why) = &inner.broken {
            return entries
                .iter()
                .map(|_| Err(ReplayError::Broken(why.clone())))
                .collect();
        }
        if now_us >= inner.next_prune_us {
            inner.prune(now_us);
        }
        let mut answers: Vec<Result<(), ReplayError>> = Vec::with_capacity(entries.len());
        // Accepted in this call, in order; their ids in `fresh`.
        let mut accepted: Vec<usize> = Vec::new();
        let mut fresh: std::collections::HashSet<&str> = std::collections::HashSet::new();
        let mut taken: HashMap<&str, usize> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            if e.command_id.len() > MAX_ID_LEN {
                answers.push(Err(ReplayError::IdTooLong {
                    len: e.command_id.len(),
                }));
                continue;
            }
            let live = inner
                .seen
                .get(e.command_id)
                .is_some_and(|s| s.until_us >= now_us);
            if live || fresh.contains(e.command_id) {
                answers.push(Err(ReplayError::Replayed {
                    command_id: e.command_id.to_owned(),
                }));
                continue;
            }
            if !e.uncapped {
                let held = |inner: &Inner| {
                    inner.per_owner.get(e.owner).copied().unwrap_or(0)
                        + taken.get(e.owner).copied().unwrap_or(0)
                };
                if held(&inner) >= inner.capacity {
                    inner.prune(now_us);
                }
                if held(&inner) >= inner.capacity {
                    answers.push(Err(ReplayError::Full {
                        capacity: inner.capacity,
                    }));
                    continue;
                }
                *taken.entry(e.owner).or_default() += 1;
            }
            fresh.insert(e.command_id);
            accepted.push(i);
            answers.push(Ok(()));
        }
        if accepted.is_empty() {
            return answers;
        }
        if let Some(store) = &mut inner.store {
            let mut text = String::new();
            for e in accepted.iter().map(|&i| &entries[i]) {
                let record = Record {
                    id: e.command_id.to_owned(),
                    forget_after_us: micros_ceil(e.forget_after),
                    owner: e.owner.to_owned(),
                };
                match serde_json::to_string(&record) {
                    Ok(line) => {
                        text.push_str(&line);
                        text.push('\n');
                    }
                    Err(err) => {
                        let why = err.to_string();
                        return entries
                            .iter()
                            .map(|_| Err(ReplayError::Broken(why.clone())))
                            .collect();
                    }
                }
            }
            let written = store
                .file
                .write_all(text.as_bytes())
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
                return answers
                    .into_iter()
                    .map(|a| a.and(Err(ReplayError::Broken(why.clone()))))
                    .collect();
            }
            store.records += accepted.len();
        }
        for &i in &accepted {
            let e = &entries[i];
            let owner = inner.owner(e.owner);
            *inner.per_owner.entry(owner.clone()).or_default() += 1;
            let seen = Seen {
                until_us: micros_ceil(e.forget_after),
                owner,
            };
            if let Some(old) = inner.seen.insert(e.command_id.to_owned(), seen) {
                // An expired entry of the same id, not yet pruned.
                inner.forget_count(&old.owner);
            }
        }
        inner.maybe_compact(now_us);
        answers
    }

    /// Whether `command_id` is remembered as accepted and not yet expired
    /// at `now`.
    pub fn contains(&self, command_id: &str, now: SystemTime) -> bool {
        let now_us = micros_floor(now);
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner
            .seen
            .get(command_id)
            .is_some_and(|s| s.until_us >= now_us)
    }

    /// Forgets the ids expired at `now` and, with a file, rewrites it with
    /// the live records.
    pub fn prune(&self, now: SystemTime) -> Result<(), ReplayError> {
        let now_us = micros_floor(now);
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.prune(now_us);
        inner.compact()
    }

    /// How many ids are remembered (some may have expired since the last
    /// prune).
    pub fn len(&self) -> usize {
        self.inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .seen
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
    fn prune(&mut self, now_us: i64) {
        let per_owner = &mut self.per_owner;
        self.seen.retain(|_, s| {
            let keep = s.until_us >= now_us;
            if !keep && let Some(n) = per_owner.get_mut(&s.owner) {
                *n = n.saturating_sub(1);
            }
            keep
        });
        self.per_owner.retain(|_, n| *n > 0);
        self.next_prune_us = now_us.saturating_add(PRUNE_EVERY_US);
    }

    /// The shared name of `owner` (few owners, many ids).
    fn owner(&self, owner: &str) -> Arc<str> {
        match self.per_owner.get_key_value(owner) {
            Some((name, _)) => name.clone(),
            None => Arc::from(owner),
        }
    }

    fn forget_count(&mut self, owner: &Arc<str>) {
        if let Some(n) = self.per_owner.get_mut(owner) {
            *n = n.saturating_sub(1);
        }
    }

    /// Compacts when the file holds many more records than are live. The
    /// new record is already durable in the old file, so a failure here is
    /// not the caller's: it is kept for the next call to report.
    fn maybe_compact(&mut self, now_us: i64) {
        let Some(store) = &self.store else { return };
        if store.records >= self.compact_min && store.records > 2 * self.seen.len() {
            self.prune(now_us);
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
        match rewrite(&store.path, &self.seen) {
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

/// Reads the records of a replay file into `seen`, keeping those live at
/// `now_us`.
fn read_records(
    path: &Path,
    text: &[u8],
    now_us: i64,
    seen: &mut HashMap<String, Seen>,
) -> Result<(), ReplayError> {
    let mut owners: HashMap<String, Arc<str>> = HashMap::new();
    if text.is_empty() {
        return Ok(());
    }
    let mut lines = text.split(|&b| b == b'\n');
    if lines.next() != Some(HEADER.as_bytes()) {
        return Err(ReplayError::NotAReplayFile {
            path: path.to_owned(),
        });
    }
    // `split` yields the text after the last newline last: empty when the
    // file ends with a newline, a torn record otherwise. Either way, skip it.
    let complete = text.iter().filter(|&&b| b == b'\n').count();
    for (i, line) in lines.enumerate().take(complete.saturating_sub(1)) {
        let record: Record = serde_json::from_slice(line).map_err(|e| ReplayError::Corrupt {
            path: path.to_owned(),
            line: i + 2,
            detail: e.to_string(),
        })?;
        if record.forget_after_us >= now_us {
            let owner = owners
                .entry(record.owner)
                .or_insert_with_key(|o| Arc::from(o.as_str()))
                .clone();
            let entry = seen.entry(record.id).or_insert(Seen {
                until_us: record.forget_after_us,
                owner,
            });
            entry.until_us = entry.until_us.max(record.forget_after_us);
        }
    }
    Ok(())
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

/// Live ids per owner.
fn count_owners(seen: &HashMap<String, Seen>) -> HashMap<Arc<str>, usize> {
    let mut counts: HashMap<Arc<str>, usize> = HashMap::new();
    for s in seen.values() {
        *counts.entry(s.owner.clone()).or_default() += 1;
    }
    counts
}

/// Writes `seen` to a temporary file next to `path`, `fsync`s it, renames
/// it over `path`, `fsync`s the directory, and opens the result for
/// appending.
fn rewrite(path: &Path, seen: &HashMap<String, Seen>) -> Result<(File, usize), RewriteError> {
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
    let mut text = String::with_capacity(HEADER.len() + 1 + seen.len() * 64);
    text.push_str(HEADER);
    text.push('\n');
    for (id, s) in seen {
        let record = Record {
            id: id.clone(),
            forget_after_us: s.until_us,
            owner: s.owner.to_string(),
        };
        let line = serde_json::to_string(&record)
            .map_err(|e| RewriteError::BeforeRename(ReplayError::Broken(e.to_string())))?;
        text.push_str(&line);
        text.push('\n');
    }
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
    Ok((file, seen.len()))
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

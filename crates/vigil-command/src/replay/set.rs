//! [`ReplaySet`]: which command ids were accepted, in memory, with no I/O.
//! It answers "seen?" and says what to persist; [`ReplayGuard`](super::ReplayGuard)
//! is the driver that writes it to a file.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::{ReplayEntry, ReplayError};
use crate::timestamp::system_time_nanos;

/// The first line of a replay file.
pub(super) const HEADER: &str = "vigil-replay-v1";
/// Default most live ids remembered at once for one owner (one authority
/// key).
pub const DEFAULT_CAPACITY: usize = 100_000;
/// Longest command id recorded, in bytes.
pub(super) const MAX_ID_LEN: usize = 1024;
/// Expired ids are dropped from memory at most this often (in `now` time).
const PRUNE_EVERY_US: i64 = 30 * 1_000_000;

/// One line of a replay file.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    id: String,
    forget_after_us: i64,
    /// Whose share it takes; absent (older files, one-owner callers) is
    /// the shared owner `""`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    owner: String,
}

/// A live id: until when, and whose share it takes.
#[derive(Debug, Clone)]
struct Seen {
    until_us: i64,
    owner: Arc<str>,
}

/// The live command ids, each until when and whose share it takes, and the
/// per-owner capacity (see [`ReplayGuard`](super::ReplayGuard) for the
/// rules). Sans-IO: [`ReplaySet::check`] decides and its plan gives the lines
/// to persist; the caller makes them durable and then calls
/// [`ReplaySet::commit`]. Nothing is remembered until it is committed.
#[derive(Debug)]
pub struct ReplaySet {
    seen: HashMap<String, Seen>,
    /// Live ids per owner.
    per_owner: HashMap<Arc<str>, usize>,
    /// Most live ids per owner.
    capacity: usize,
    next_prune_us: i64,
}

/// What [`ReplaySet::check`] decided: one answer per entry, in order; its
/// [`lines`](ReplayPlan::lines) record the accepted ones in a file.
#[derive(Debug)]
#[must_use = "accepted ids are remembered only once the plan is committed"]
pub struct ReplayPlan {
    /// One answer per entry, in order.
    pub answers: Vec<Result<(), ReplayError>>,
    /// The entries accepted, by index.
    accepted: Vec<usize>,
}

impl ReplayPlan {
    /// How many entries were accepted.
    pub fn accepted(&self) -> usize {
        self.accepted.len()
    }

    /// One JSON line (with its newline) per accepted entry: what a store
    /// appends before committing. `entries` must be those given to
    /// [`ReplaySet::check`]. A set kept in memory only never asks.
    pub fn lines(&self, entries: &[ReplayEntry<'_>]) -> String {
        let mut lines = String::new();
        for e in self.accepted.iter().filter_map(|&i| entries.get(i)) {
            let record = Record {
                id: e.command_id.to_owned(),
                forget_after_us: micros_ceil(e.forget_after),
                owner: e.owner.to_owned(),
            };
            // A struct of strings and an integer always serialises.
            if let Ok(line) = serde_json::to_string(&record) {
                lines.push_str(&line);
                lines.push('\n');
            }
        }
        lines
    }
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

impl Default for ReplaySet {
    fn default() -> Self {
        ReplaySet::new()
    }
}

impl ReplaySet {
    /// An empty set with [`DEFAULT_CAPACITY`] per owner.
    pub fn new() -> ReplaySet {
        ReplaySet {
            seen: HashMap::new(),
            per_owner: HashMap::new(),
            capacity: DEFAULT_CAPACITY,
            next_prune_us: i64::MIN,
        }
    }

    /// Sets the most live ids per owner.
    pub fn with_capacity(mut self, capacity: usize) -> ReplaySet {
        self.capacity = capacity;
        self
    }

    /// The set a replay file's bytes describe, keeping the ids live at
    /// `now`. A last line without its newline is a torn write (its command
    /// was never accepted) and is skipped; any other unreadable line is an
    /// error. `name` names the file in errors.
    pub fn load(
        name: &std::path::Path,
        text: &[u8],
        now: SystemTime,
    ) -> Result<ReplaySet, ReplayError> {
        let now_us = micros_floor(now);
        let mut set = ReplaySet::new();
        set.next_prune_us = now_us.saturating_add(PRUNE_EVERY_US);
        if text.is_empty() {
            return Ok(set);
        }
        let mut lines = text.split(|&b| b == b'\n');
        if lines.next() != Some(HEADER.as_bytes()) {
            return Err(ReplayError::NotAReplayFile {
                path: name.to_owned(),
            });
        }
        let mut owners: HashMap<String, Arc<str>> = HashMap::new();
        // `split` yields the text after the last newline last: empty when
        // the file ends with a newline, a torn record otherwise. Either
        // way, skip it.
        let complete = text.iter().filter(|&&b| b == b'\n').count();
        for (i, line) in lines.enumerate().take(complete.saturating_sub(1)) {
            let record: Record =
                serde_json::from_slice(line).map_err(|e| ReplayError::Corrupt {
                    path: name.to_owned(),
                    line: i + 2,
                    detail: e.to_string(),
                })?;
            if record.forget_after_us >= now_us {
                let owner = owners
                    .entry(record.owner)
                    .or_insert_with_key(|o| Arc::from(o.as_str()))
                    .clone();
                let entry = set.seen.entry(record.id).or_insert(Seen {
                    until_us: record.forget_after_us,
                    owner,
                });
                entry.until_us = entry.until_us.max(record.forget_after_us);
            }
        }
        for s in set.seen.values() {
            *set.per_owner.entry(s.owner.clone()).or_default() += 1;
        }
        Ok(set)
    }

    /// Whether `command_id` was accepted and is still live at `now`.
    pub fn contains(&self, command_id: &str, now: SystemTime) -> bool {
        let now_us = micros_floor(now);
        self.seen
            .get(command_id)
            .is_some_and(|s| s.until_us >= now_us)
    }

    /// How many ids are remembered (some may have expired since the last
    /// prune).
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// The per-owner capacity.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Decides each entry: refused if its id is too long, live, earlier in
    /// the same call, or its owner's share is full (unless uncapped);
    /// accepted otherwise. Expired ids may be forgotten first. Returns the
    /// answers; the accepted entries are remembered only by
    /// [`commit`](Self::commit).
    pub fn check(&mut self, entries: &[ReplayEntry<'_>], now: SystemTime) -> ReplayPlan {
        let now_us = micros_floor(now);
        if now_us >= self.next_prune_us {
            self.prune_us(now_us);
        }
        let mut answers = Vec::with_capacity(entries.len());
        let mut accepted = Vec::new();
        let mut fresh: HashSet<&str> = HashSet::new();
        let mut taken: HashMap<&str, usize> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            if e.command_id.len() > MAX_ID_LEN {
                answers.push(Err(ReplayError::IdTooLong {
                    len: e.command_id.len(),
                }));
                continue;
            }
            let live = self
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
                let held = |set: &ReplaySet| {
                    set.per_owner.get(e.owner).copied().unwrap_or(0)
                        + taken.get(e.owner).copied().unwrap_or(0)
                };
                if held(self) >= self.capacity {
                    self.prune_us(now_us);
                }
                if held(self) >= self.capacity {
                    answers.push(Err(ReplayError::Full {
                        capacity: self.capacity,
                    }));
                    continue;
                }
                *taken.entry(e.owner).or_default() += 1;
            }
            fresh.insert(e.command_id);
            accepted.push(i);
            answers.push(Ok(()));
        }
        ReplayPlan { answers, accepted }
    }

    /// Remembers the entries `plan` accepted (after its lines were made
    /// durable). `entries` must be those given to [`check`](Self::check).
    pub fn commit(&mut self, entries: &[ReplayEntry<'_>], plan: &ReplayPlan) {
        for e in plan.accepted.iter().filter_map(|&i| entries.get(i)) {
            let owner = self.owner(e.owner);
            *self.per_owner.entry(owner.clone()).or_default() += 1;
            let seen = Seen {
                until_us: micros_ceil(e.forget_after),
                owner,
            };
            if let Some(old) = self.seen.insert(e.command_id.to_owned(), seen)
                && let Some(n) = self.per_owner.get_mut(&old.owner)
            {
                // An expired entry of the same id, not yet pruned.
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Forgets the ids expired at `now`.
    pub fn prune(&mut self, now: SystemTime) {
        self.prune_us(micros_floor(now));
    }

    fn prune_us(&mut self, now_us: i64) {
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

    /// The whole file for the live ids: the header, then one line each.
    pub fn snapshot(&self) -> String {
        let mut text = String::with_capacity(HEADER.len() + 1 + self.seen.len() * 64);
        text.push_str(HEADER);
        text.push('\n');
        for (id, s) in &self.seen {
            let record = Record {
                id: id.clone(),
                forget_after_us: s.until_us,
                owner: s.owner.to_string(),
            };
            if let Ok(line) = serde_json::to_string(&record) {
                text.push_str(&line);
                text.push('\n');
            }
        }
        text
    }

    /// The shared name of `owner` (few owners, many ids).
    fn owner(&self, owner: &str) -> Arc<str> {
        match self.per_owner.get_key_value(owner) {
            Some((name, _)) => name.clone(),
            None => Arc::from(owner),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
    }

    fn entry(id: &str) -> ReplayEntry<'_> {
        ReplayEntry {
            command_id: id,
            owner: "k",
            forget_after: at(100),
            uncapped: false,
        }
    }

    #[test]
    fn nothing_is_remembered_until_committed() {
        let mut set = ReplaySet::new();
        let entries = [entry("a"), entry("b"), entry("a")];
        let plan = set.check(&entries, at(0));
        assert_eq!(plan.accepted(), 2);
        assert!(matches!(plan.answers[2], Err(ReplayError::Replayed { .. })));
        assert_eq!(plan.lines(&entries).lines().count(), 2);
        assert!(!set.contains("a", at(0)), "checked, not committed");
        set.commit(&entries, &plan);
        assert!(set.contains("a", at(0)) && set.contains("b", at(100)));
        assert!(!set.contains("a", at(101)), "expired");
    }

    #[test]
    fn a_snapshot_loads_back_to_the_same_ids() {
        let mut set = ReplaySet::new();
        let entries = [entry("x"), entry("y")];
        let plan = set.check(&entries, at(0));
        set.commit(&entries, &plan);
        let name = std::path::Path::new("replay.log");
        let text = set.snapshot() + "{\"torn";
        let loaded = ReplaySet::load(name, text.as_bytes(), at(1)).expect("load");
        assert_eq!(loaded.len(), 2);
        assert!(loaded.contains("y", at(1)));
        assert!(matches!(
            ReplaySet::load(name, b"not a replay file\n", at(1)),
            Err(ReplayError::NotAReplayFile { .. })
        ));
        assert!(matches!(
            ReplaySet::load(name, b"vigil-replay-v1\ngarbage\n", at(1)),
            Err(ReplayError::Corrupt { line: 2, .. })
        ));
    }
}

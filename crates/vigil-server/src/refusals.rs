//! What unauthenticated traffic may cost: refusals recorded in bounded
//! space.
//!
//! Anyone who can reach a port can be refused: a TLS handshake with a
//! stranger's key or none, an emergency shutdown that is malformed,
//! forged or stale. Each refusal is counted, but only a few are written to
//! the audit log (and the logs) one by one: in each window (a minute by
//! default), the first refusal from each source address, up to
//! [`INDIVIDUAL_PER_WINDOW`] in all. At the end of the window one
//! `refusals.summary` record gives the counts: in all, per kind, and for
//! the [`SOURCES_LISTED`] busiest sources (the rest summed up). At most
//! [`SOURCES_TRACKED`] sources are told apart per window. So a flood costs
//! at most a few dozen records a minute, whatever its rate; the counts
//! are not lost (the last window is written when the server stops). The
//! fields an individual record copies from the request are cut
//! ([`clip`]), with their real length recorded.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::{Map, Value, json};

/// Refusals written one by one per window, at most.
pub(crate) const INDIVIDUAL_PER_WINDOW: usize = 32;
/// Sources listed by name in a summary, at most (the busiest).
pub(crate) const SOURCES_LISTED: usize = 32;
/// Sources told apart per window, at most; the rest are counted together.
pub(crate) const SOURCES_TRACKED: usize = 4096;

#[derive(Debug, Default)]
struct Tally {
    total: u64,
    by_kind: BTreeMap<&'static str, u64>,
}

#[derive(Debug)]
struct Window {
    since: SystemTime,
    sources: HashMap<IpAddr, Tally>,
    untracked: Tally,
    total: u64,
    by_kind: BTreeMap<&'static str, u64>,
    individual: usize,
}

impl Window {
    fn new() -> Window {
        Window {
            since: SystemTime::now(),
            sources: HashMap::new(),
            untracked: Tally::default(),
            total: 0,
            by_kind: BTreeMap::new(),
            individual: 0,
        }
    }
}

/// The current window's counts.
#[derive(Debug)]
pub(crate) struct Refusals {
    window: Mutex<Window>,
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals {
            window: Mutex::new(Window::new()),
        }
    }
}

impl Refusals {
    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts a refusal of `kind` from `source`; `true` when it is one to
    /// record (and log) on its own.
    pub(crate) fn count(&self, source: IpAddr, kind: &'static str) -> bool {
        let mut w = self.lock();
        w.total += 1;
        *w.by_kind.entry(kind).or_default() += 1;
        let room = w.sources.len() < SOURCES_TRACKED;
        let first_of_source = !w.sources.contains_key(&source);
        let tally = if first_of_source && !room {
            &mut w.untracked
        } else {
            w.sources.entry(source).or_default()
        };
        tally.total += 1;
        *tally.by_kind.entry(kind).or_default() += 1;
        let individual = first_of_source && room && w.individual < INDIVIDUAL_PER_WINDOW;
        if individual {
            w.individual += 1;
        }
        individual
    }

    /// Closes the window: the details of its `refusals.summary` record, if
    /// anything was refused in it.
    pub(crate) fn take_summary(&self) -> Option<Value> {
        let w = std::mem::replace(&mut *self.lock(), Window::new());
        if w.total == 0 {
            return None;
        }
        let mut sources: Vec<(IpAddr, Tally)> = w.sources.into_iter().collect();
        sources.sort_by(|a, b| b.1.total.cmp(&a.1.total).then(a.0.cmp(&b.0)));
        let mut other = w.untracked;
        let mut other_sources = u64::from(other.total > 0);
        let listed: Vec<Value> = sources
            .drain(..)
            .enumerate()
            .filter_map(|(i, (source, tally))| {
                if i < SOURCES_LISTED {
                    Some(json!({"source": source.to_string(), "total": tally.total, "by_kind": tally.by_kind}))
                } else {
                    other.total += tally.total;
                    for (k, n) in tally.by_kind {
                        *other.by_kind.entry(k).or_default() += n;
                    }
                    other_sources += 1;
                    None
                }
            })
            .collect();
        let since = vigil_command::Timestamp::from_system_time(w.since)
            .map(|t| t.isoformat())
            .unwrap_or_default();
        Some(json!({
            "since": since,
            "total": w.total,
            "by_kind": w.by_kind,
            "recorded_one_by_one": w.individual,
            "sources": listed,
            "other_sources": other_sources,
            "other_total": other.total,
        }))
    }
}

/// Puts `value` into `map` under `field`, cut to `max` bytes (at a
/// character boundary) if longer, with its length in bytes under
/// `<field>_len` when cut: an unauthenticated field costs at most `max`.
pub(crate) fn clip(map: &mut Map<String, Value>, field: &str, value: &str, max: usize) {
    if value.len() <= max {
        map.insert(field.to_owned(), Value::String(value.to_owned()));
        return;
    }
    let mut end = max;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    map.insert(
        field.to_owned(),
        Value::String(format!("{}…", &value[..end])),
    );
    map.insert(format!("{field}_len"), Value::from(value.len()));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn the_first_of_each_source_is_recorded_the_rest_counted() {
        let r = Refusals::default();
        assert!(r.count(ip(1), "handshake"));
        assert!(!r.count(ip(1), "handshake"));
        assert!(!r.count(ip(1), "emergency"));
        assert!(r.count(ip(2), "emergency"));
        let summary = r.take_summary().expect("summary");
        assert_eq!(summary["total"], 4);
        assert_eq!(summary["recorded_one_by_one"], 2);
        assert_eq!(summary["sources"][0]["source"], "127.0.0.1");
        assert_eq!(summary["sources"][0]["total"], 3);
        assert_eq!(summary["by_kind"]["emergency"], 2);
        assert!(r.take_summary().is_none(), "a new window");
        assert!(
            r.count(ip(1), "handshake"),
            "recorded again in a new window"
        );
    }

    #[test]
    fn many_sources_cost_bounded_records() {
        let r = Refusals::default();
        let mut individual = 0;
        for i in 0..10_000u32 {
            let source = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            individual += usize::from(r.count(source, "emergency"));
        }
        assert_eq!(individual, INDIVIDUAL_PER_WINDOW);
        let summary = r.take_summary().expect("summary");
        assert_eq!(summary["total"], 10_000);
        assert_eq!(
            summary["sources"].as_array().map(Vec::len),
            Some(SOURCES_LISTED)
        );
        assert!(
            summary.to_string().len() < 8 * 1024,
            "{}",
            summary.to_string().len()
        );
    }

    #[test]
    fn long_fields_are_cut_and_their_length_kept() {
        let mut m = Map::new();
        clip(&mut m, "reason", "short", 8);
        clip(&mut m, "key", &"é".repeat(100), 9);
        assert_eq!(m["reason"], "short");
        assert_eq!(m["key"], format!("{}…", "é".repeat(4)));
        assert_eq!(m["key_len"], 200);
    }
}

//! The trust store: which client fingerprints the server admits.
//!
//! The store reads the seed's file format,
//!
//! ```json
//! {"trusted_fingerprints": ["<64 hex digits>", "..."]}
//! ```
//!
//! and can watch the file: an edit takes effect at once, without restart.
//! Subscribers ([`TrustStore::subscribe`]) learn of every change, which is
//! how the server closes the sessions of a client whose fingerprint was
//! removed. A file that becomes invalid while watched is logged and ignored:
//! the last good list stays in force.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use notify::{RecursiveMode, Watcher as _};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::{AuthError, Fingerprint};

/// Largest trust file read, to bound memory on a wrong path.
const MAX_TRUST_FILE: u64 = 16 * 1024 * 1024;
/// How long the file must be quiet after an event before it is re-read.
const SETTLE: Duration = Duration::from_millis(40);
/// How often the file's metadata is checked in case an event was missed
/// (network filesystems, some container mounts).
const POLL: Duration = Duration::from_secs(2);

/// The content of a trust file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrustFile {
    /// Fingerprints of trusted client keys.
    pub trusted_fingerprints: Vec<Fingerprint>,
}

impl TrustFile {
    /// Parses the JSON text of a trust file. `path` is only used in errors.
    pub fn parse(text: &[u8], path: &Path) -> Result<TrustFile, AuthError> {
        serde_json::from_slice(text).map_err(|e| AuthError::TrustFile {
            path: path.to_owned(),
            detail: e.to_string(),
        })
    }

    /// Reads and parses a trust file.
    pub fn read(path: &Path) -> Result<TrustFile, AuthError> {
        // A trust file that others may write lets them in: refused, at
        // start and at every reload.
        crate::check_permissions(path, "trust file")?;
        let read_err = |source| AuthError::Read {
            path: path.to_owned(),
            source,
        };
        let len = fs::metadata(path).map_err(read_err)?.len();
        if len > MAX_TRUST_FILE {
            return Err(AuthError::TrustFile {
                path: path.to_owned(),
                detail: format!("{len} bytes is larger than the {MAX_TRUST_FILE}-byte limit"),
            });
        }
        let text = fs::read(path).map_err(read_err)?;
        Self::parse(&text, path)
    }

    /// The JSON text of this file, pretty-printed with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// An immutable snapshot of the trusted fingerprints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustSet {
    fingerprints: BTreeSet<Fingerprint>,
    generation: u64,
}

impl TrustSet {
    /// Whether `fp` is trusted.
    pub fn contains(&self, fp: &Fingerprint) -> bool {
        self.fingerprints.contains(fp)
    }

    /// How many fingerprints are trusted.
    pub fn len(&self) -> usize {
        self.fingerprints.len()
    }

    /// Whether no fingerprint is trusted.
    pub fn is_empty(&self) -> bool {
        self.fingerprints.is_empty()
    }

    /// The trusted fingerprints, sorted.
    pub fn iter(&self) -> impl Iterator<Item = &Fingerprint> {
        self.fingerprints.iter()
    }

    /// Counts up by one at each change.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// The live set of trusted client fingerprints. Cheap to clone; all clones
/// share one state.
#[derive(Debug, Clone)]
pub struct TrustStore {
    path: Option<Arc<PathBuf>>,
    tx: Arc<watch::Sender<Arc<TrustSet>>>,
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// Fingerprints newly trusted.
    pub added: Vec<Fingerprint>,
    /// Fingerprints no longer trusted.
    pub removed: Vec<Fingerprint>,
    /// How many are trusted now.
    pub total: usize,
}

impl TrustStore {
    /// Loads a trust file. A missing or invalid file is an error.
    pub fn load(path: impl Into<PathBuf>) -> Result<TrustStore, AuthError> {
        let path = path.into();
        let file = TrustFile::read(&path)?;
        let set = TrustSet {
            fingerprints: file.trusted_fingerprints.into_iter().collect(),
            generation: 0,
        };
        if set.is_empty() {
            tracing::warn!(path = %path.display(), "trust file lists no fingerprints: no client can connect");
        }
        let (tx, _) = watch::channel(Arc::new(set));
        Ok(TrustStore {
            path: Some(Arc::new(path)),
            tx: Arc::new(tx),
        })
    }

    /// A store held in memory only (for embedding and tests).
    pub fn from_fingerprints(fps: impl IntoIterator<Item = Fingerprint>) -> TrustStore {
        let set = TrustSet {
            fingerprints: fps.into_iter().collect(),
            generation: 0,
        };
        let (tx, _) = watch::channel(Arc::new(set));
        TrustStore {
            path: None,
            tx: Arc::new(tx),
        }
    }

    /// The trust file, if the store was loaded from one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref().map(PathBuf::as_path)
    }

    /// Whether `fp` is trusted right now.
    pub fn is_trusted(&self, fp: &Fingerprint) -> bool {
        self.tx.borrow().contains(fp)
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<TrustSet> {
        self.tx.borrow().clone()
    }

    /// A receiver that wakes at every change of the set.
    pub fn subscribe(&self) -> watch::Receiver<Arc<TrustSet>> {
        self.tx.subscribe()
    }

    /// Replaces the set. Subscribers are woken only if it changed.
    pub fn replace(&self, fps: impl IntoIterator<Item = Fingerprint>) -> ReloadReport {
        let new: BTreeSet<Fingerprint> = fps.into_iter().collect();
        let mut report = ReloadReport {
            added: Vec::new(),
            removed: Vec::new(),
            total: new.len(),
        };
        self.tx.send_if_modified(|current| {
            report.added = new.difference(&current.fingerprints).copied().collect();
            report.removed = current.fingerprints.difference(&new).copied().collect();
            if report.added.is_empty() && report.removed.is_empty() {
                return false;
            }
            *current = Arc::new(TrustSet {
                fingerprints: new,
                generation: current.generation + 1,
            });
            true
        });
        report
    }

    /// Re-reads the trust file. On error the current set stays in force.
    pub fn reload(&self) -> Result<ReloadReport, AuthError> {
        let Some(path) = self.path.as_deref() else {
            return Ok(ReloadReport {
                added: Vec::new(),
                removed: Vec::new(),
                total: self.snapshot().len(),
            });
        };
        let file = TrustFile::read(path)?;
        Ok(self.replace(file.trusted_fingerprints))
    }

    /// Watches the trust file and reloads it whenever it changes. Stops when
    /// the returned guard is dropped.
    ///
    /// The directory holding the file is watched, so that editors that
    /// write a new file and rename it over the old one are followed. The
    /// file's metadata is also polled every few seconds, in case the
    /// filesystem does not deliver events.
    pub fn watch(&self) -> Result<TrustWatcher, AuthError> {
        let Some(path) = self.path.clone() else {
            return Err(AuthError::TrustFile {
                path: PathBuf::from("<memory>"),
                detail: "an in-memory trust store has no file to watch".into(),
            });
        };
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
            _ => PathBuf::from("."),
        };
        let watch_err = |source| AuthError::Watch {
            path: dir.clone(),
            source,
        };
        let (events_tx, events_rx) = mpsc::channel::<()>();
        let name = path.file_name().map(ToOwned::to_owned);
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let relevant = match &res {
                Ok(event) => event
                    .paths
                    .iter()
                    .any(|p| p.file_name().map(ToOwned::to_owned) == name),
                // An error from the watcher: re-read to be safe.
                Err(_) => true,
            };
            if relevant {
                let _ = events_tx.send(());
            }
        })
        .map_err(watch_err)?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(watch_err)?;

        let store = self.clone();
        let thread = std::thread::Builder::new()
            .name("vigil-trust-watch".into())
            .spawn(move || reload_loop(&store, &path, &events_rx))
            .map_err(|source| AuthError::Watch {
                path: dir.clone(),
                source: notify::Error::io(source),
            })?;
        Ok(TrustWatcher {
            _watcher: watcher,
            _thread: thread,
        })
    }
}

/// Keeps a trust file watched; dropping it stops the watch.
#[derive(Debug)]
#[must_use = "the trust file is watched only while this guard is kept: dropping it stops revocation"]
pub struct TrustWatcher {
    // Dropping the watcher closes the event channel, which ends the thread.
    _watcher: notify::RecommendedWatcher,
    _thread: std::thread::JoinHandle<()>,
}

#[derive(PartialEq, Eq, Clone, Copy)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    #[cfg(unix)]
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let meta = fs::metadata(path).ok()?;
    Some(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
        #[cfg(unix)]
        inode: std::os::unix::fs::MetadataExt::ino(&meta),
    })
}

fn reload_loop(store: &TrustStore, path: &Path, events: &mpsc::Receiver<()>) {
    let mut last = stamp(path);
    loop {
        match events.recv_timeout(POLL) {
            Ok(()) => {
                // Let a burst of events (truncate, write, close) settle.
                loop {
                    match events.recv_timeout(SETTLE) {
                        Ok(()) => continue,
                        Err(mpsc::RecvTimeoutError::Timeout) => break,
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if stamp(path) == last {
                    continue;
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        last = stamp(path);
        apply_reload(store, path);
    }
}

fn apply_reload(store: &TrustStore, path: &Path) {
    match store.reload() {
        Ok(report) if report.added.is_empty() && report.removed.is_empty() => {
            tracing::debug!(path = %path.display(), "trust file touched, no change");
        }
        Ok(report) => {
            for fp in &report.added {
                tracing::info!(client = %fp, "trust: fingerprint added");
            }
            for fp in &report.removed {
                tracing::warn!(client = %fp, "trust: fingerprint removed, its sessions will be closed");
            }
            tracing::info!(path = %path.display(), total = report.total, "trust file reloaded");
        }
        Err(e) => {
            tracing::error!(
                error = %e,
                kept = store.snapshot().len(),
                "trust file is invalid; keeping the last good list"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(b: u8) -> Fingerprint {
        Fingerprint::from_bytes([b; 32])
    }

    #[test]
    fn parses_the_seed_format() {
        let text = format!(r#"{{"trusted_fingerprints": ["{}"]}}"#, "0a".repeat(32));
        let file = TrustFile::parse(text.as_bytes(), Path::new("t.json")).expect("parse");
        assert_eq!(file.trusted_fingerprints, vec![fp(10)]);
        assert_eq!(
            TrustFile::parse(file.to_json().as_bytes(), Path::new("t")).expect("round trip"),
            file
        );
    }

    #[test]
    fn bad_files_name_the_problem() {
        let p = Path::new("t.json");
        for (text, needle) in [
            ("", "EOF"),
            ("{}", "trusted_fingerprints"),
            (r#"{"trusted_fingerprints": ["xyz"]}"#, "64 hex digits"),
            (r#"{"trusted_fingerprints": "ab"}"#, "sequence"),
        ] {
            let err = TrustFile::parse(text.as_bytes(), p)
                .expect_err(text)
                .to_string();
            assert!(
                err.contains("t.json") && err.contains(needle),
                "{text:?}: {err}"
            );
        }
    }

    #[test]
    fn replace_reports_changes_and_notifies() {
        let store = TrustStore::from_fingerprints([fp(1), fp(2)]);
        let mut rx = store.subscribe();
        let report = store.replace([fp(2), fp(3)]);
        assert_eq!(report.added, vec![fp(3)]);
        assert_eq!(report.removed, vec![fp(1)]);
        assert!(rx.has_changed().expect("open"));
        assert_eq!(rx.borrow_and_update().generation(), 1);
        store.replace([fp(3), fp(2)]);
        assert!(!rx.has_changed().expect("open"), "no change, no wake-up");
        assert!(store.is_trusted(&fp(3)) && !store.is_trusted(&fp(1)));
    }
}

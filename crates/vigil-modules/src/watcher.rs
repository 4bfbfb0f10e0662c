//! Following the mods directory: act when a file is complete.
//!
//! A module file is acted on when it is closed after writing or renamed
//! into the directory, and when it is removed or renamed away; creation and
//! partial writes are ignored, so a file that is still being copied is not
//! loaded half-written. Events for one name are coalesced for a short
//! settle time, then the registry reconciles that name with the disk. An
//! event on a manifest (`hello.so.manifest`) reconciles its module
//! (`hello.so`): a manifest that arrives after its module makes it load.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher as _};

use crate::{ModuleError, ModuleRegistry};

/// How long events for one file must be quiet before it is reconciled.
const SETTLE: Duration = Duration::from_millis(50);
/// How often the directory itself is checked: a directory that is removed
/// (or renamed away) and made again is watched again and rescanned.
const DIR_CHECK: Duration = Duration::from_secs(1);

/// Keeps the directory watched; dropping it stops the watch.
#[derive(Debug)]
#[must_use = "the module directory is watched only while this guard is kept: dropping it stops hot reload"]
pub struct ModuleWatcher {
    _watcher: Arc<Mutex<notify::RecommendedWatcher>>,
    _thread: std::thread::JoinHandle<()>,
}

/// The directory's identity, or `None` when it is not there: device,
/// inode and creation time (an inode number is often reused at once by a
/// directory made again).
fn identity(dir: &Path) -> Option<(u64, u64, Option<SystemTime>)> {
    use std::os::unix::fs::MetadataExt as _;
    std::fs::metadata(dir)
        .ok()
        .filter(std::fs::Metadata::is_dir)
        .map(|m| (m.dev(), m.ino(), m.created().ok()))
}

/// Follows the directory itself: the watch ends with the directory, so a
/// new one at the same path is watched again and rescanned.
struct DirCheck {
    dir: PathBuf,
    watcher: Arc<Mutex<notify::RecommendedWatcher>>,
    seen: Option<(u64, u64, Option<SystemTime>)>,
    /// The watch may be gone (the directory was removed or renamed away).
    lost: bool,
    next: Instant,
}

impl DirCheck {
    fn run(&mut self, registry: &ModuleRegistry) {
        self.next = Instant::now() + DIR_CHECK;
        let now = identity(&self.dir);
        if !self.lost && now == self.seen {
            return;
        }
        if now.is_none() {
            if !self.lost || self.seen.is_some() {
                tracing::warn!(
                    dir = %self.dir.display(),
                    "the module directory is gone; loaded modules keep serving until it is back"
                );
            }
            self.lost = true;
            self.seen = None;
            return;
        }
        let mut watcher = self
            .watcher
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let _ = watcher.unwatch(&self.dir);
        if let Err(e) = watcher.watch(&self.dir, RecursiveMode::NonRecursive) {
            // Tried again at the next check.
            tracing::error!(dir = %self.dir.display(), error = %e, "cannot watch the module directory again");
            return;
        }
        drop(watcher);
        tracing::info!(
            dir = %self.dir.display(),
            "the module directory is there again: watching it and rescanning"
        );
        self.lost = false;
        self.seen = now;
        if let Err(e) = registry.rescan() {
            tracing::error!(error = %e, "cannot rescan the module directory");
        }
    }
}

enum Msg {
    Name(String),
    Rescan,
    /// Something happened to the directory itself.
    Dir,
}

fn name_of(path: &Path) -> Option<String> {
    path.file_name()?.to_str().map(str::to_owned)
}

/// The file names an event asks to reconcile, or `None` for a full rescan.
fn relevant(event: &notify::Event) -> Option<Vec<String>> {
    if event.need_rescan() {
        return None;
    }
    let paths = &event.paths;
    let names = match event.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write))
        | EventKind::Remove(_)
        | EventKind::Modify(ModifyKind::Name(
            RenameMode::To | RenameMode::From | RenameMode::Both | RenameMode::Any,
        )) => paths
            .iter()
            .filter_map(|p| name_of(p))
            // A manifest's change is its module's: reconcile that.
            .map(|n| match crate::module_of_manifest(&n) {
                Some(module) => module.to_owned(),
                None => n,
            })
            .collect(),
        _ => Vec::new(),
    };
    Some(names)
}

impl ModuleRegistry {
    /// Watches the directory and reconciles each module file when it is
    /// complete. Stops when the returned guard is dropped.
    pub fn watch(&self) -> Result<ModuleWatcher, ModuleError> {
        let dir = self.dir().to_owned();
        let err = |source| ModuleError::Watch {
            path: dir.clone(),
            source,
        };
        let (tx, rx) = mpsc::channel::<Msg>();
        let watched = dir.clone();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let msgs = match res {
                // The directory itself removed or renamed (reading it, as
                // a rescan does, is an event about it too: not those).
                Ok(event)
                    if event.paths.contains(&watched)
                        && matches!(
                            event.kind,
                            EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
                        ) =>
                {
                    vec![Msg::Dir]
                }
                Ok(event) if event.paths.contains(&watched) => Vec::new(),
                Ok(event) => match relevant(&event) {
                    Some(names) => names.into_iter().map(Msg::Name).collect(),
                    None => vec![Msg::Rescan],
                },
                Err(e) => {
                    tracing::warn!(error = %e, "module directory watch error; rescanning");
                    vec![Msg::Rescan]
                }
            };
            for m in msgs {
                let _ = tx.send(m);
            }
        })
        .map_err(err)?;
        watcher
            .watch(&dir, RecursiveMode::NonRecursive)
            .map_err(err)?;
        let watcher = Arc::new(Mutex::new(watcher));
        let mut check = DirCheck {
            dir: dir.clone(),
            watcher: watcher.clone(),
            seen: identity(&dir),
            lost: false,
            next: Instant::now() + DIR_CHECK,
        };
        let registry = self.clone();
        let thread = std::thread::Builder::new()
            .name("vigil-mods-watch".into())
            .spawn(move || settle_loop(&registry, &rx, &mut check))
            .map_err(|e| ModuleError::Watch {
                path: dir.clone(),
                source: notify::Error::io(e),
            })?;
        tracing::info!(dir = %self.dir().display(), "watching the module directory");
        Ok(ModuleWatcher {
            _watcher: watcher,
            _thread: thread,
        })
    }
}

fn settle_loop(registry: &ModuleRegistry, rx: &mpsc::Receiver<Msg>, check: &mut DirCheck) {
    let mut pending: HashMap<String, Instant> = HashMap::new();
    let mut rescan: Option<Instant> = None;
    loop {
        let next = pending
            .values()
            .chain(rescan.iter())
            .chain(std::iter::once(&check.next))
            .min()
            .copied()
            .unwrap_or(check.next);
        let msg = rx.recv_timeout(next.saturating_duration_since(Instant::now()));
        match msg {
            Ok(Msg::Name(name)) => {
                pending.insert(name, Instant::now() + SETTLE);
            }
            Ok(Msg::Rescan) => rescan = Some(Instant::now() + SETTLE),
            Ok(Msg::Dir) => {
                // Removed or renamed away: the watch may be gone with it.
                check.lost = true;
                check.next = Instant::now();
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        if check.next <= now {
            check.run(registry);
        }
        if rescan.is_some_and(|due| due <= now) {
            rescan = None;
            pending.clear();
            if let Err(e) = registry.rescan() {
                tracing::error!(error = %e, "cannot rescan the module directory");
            }
        }
        let due: Vec<String> = pending
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            pending.remove(&name);
            registry.reconcile(&name);
        }
    }
}

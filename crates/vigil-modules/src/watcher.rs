//! Following the mods directory: act when a file is complete.
//!
//! A module file is acted on when it is closed after writing or renamed
//! into the directory, and when it is removed or renamed away; creation and
//! partial writes are ignored, so a file that is still being copied is not
//! loaded half-written. Events for one name are coalesced for a short
//! settle time, then the registry reconciles that name with the disk.

use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher as _};

use crate::{ModuleError, ModuleRegistry};

/// How long events for one file must be quiet before it is reconciled.
const SETTLE: Duration = Duration::from_millis(50);

/// Keeps the directory watched; dropping it stops the watch.
#[derive(Debug)]
pub struct ModuleWatcher {
    _watcher: notify::RecommendedWatcher,
    _thread: std::thread::JoinHandle<()>,
}

enum Msg {
    Name(String),
    Rescan,
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
        )) => paths.iter().filter_map(|p| name_of(p)).collect(),
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
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let msgs = match res {
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
        let registry = self.clone();
        let thread = std::thread::Builder::new()
            .name("vigil-mods-watch".into())
            .spawn(move || settle_loop(&registry, &rx))
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

fn settle_loop(registry: &ModuleRegistry, rx: &mpsc::Receiver<Msg>) {
    let mut pending: HashMap<String, Instant> = HashMap::new();
    let mut rescan: Option<Instant> = None;
    loop {
        let next = pending.values().chain(rescan.iter()).min().copied();
        let msg = match next {
            Some(due) => rx.recv_timeout(due.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match msg {
            Ok(Msg::Name(name)) => {
                pending.insert(name, Instant::now() + SETTLE);
            }
            Ok(Msg::Rescan) => rescan = Some(Instant::now() + SETTLE),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
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

//! The module registry: what is loaded, loading and reloading it, and
//! running it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::{Semaphore, broadcast};

mod exec;

use crate::loader::Library;
use crate::{ExecError, ModuleError, elf};
pub use exec::{ExecBatch, ExecCall};

/// Default time a module may run before its caller gets a timeout.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of module runs at once (hung runs count until they end).
pub const DEFAULT_MAX_CONCURRENT: usize = 64;
/// Default largest module file accepted.
pub const DEFAULT_MAX_MODULE_SIZE: u64 = 32 * 1024 * 1024;

/// Registry settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RegistryConfig {
    /// The watched directory.
    pub dir: PathBuf,
    /// Time a run may take before the caller gets [`ExecError::Timeout`].
    pub exec_timeout: Duration,
    /// Runs at once; a run that hangs keeps its slot until it returns.
    pub max_concurrent: usize,
    /// Largest module file accepted, in bytes.
    pub max_module_size: u64,
}

impl RegistryConfig {
    /// Defaults for everything but the directory.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        RegistryConfig {
            dir: dir.into(),
            exec_timeout: DEFAULT_EXEC_TIMEOUT,
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            max_module_size: DEFAULT_MAX_MODULE_SIZE,
        }
    }
}

/// What the registry says about a loaded module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSummary {
    /// File name in the watched directory (`hello.so`): the module's key.
    pub name: String,
    /// Lowercase hex SHA-256 of the exact bytes that were loaded.
    pub sum: String,
    /// Size of those bytes.
    pub size: u64,
    /// The module's own description.
    pub description: String,
}

/// A loaded module: its bytes, their sum, and the open library.
#[derive(Debug)]
pub struct Module {
    summary: ModuleSummary,
    bytes: Arc<[u8]>,
    library: Library,
}

impl Module {
    /// Name, sum, size and description.
    pub fn summary(&self) -> &ModuleSummary {
        &self.summary
    }

    /// The exact bytes that were hashed and loaded.
    pub fn bytes(&self) -> &Arc<[u8]> {
        &self.bytes
    }

    /// The name the module gives itself (its file name is the key).
    pub fn declared_name(&self) -> &str {
        self.library.name()
    }

    pub(crate) fn library(&self) -> &Library {
        &self.library
    }
}

/// A change of the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryEvent {
    /// A new module was loaded.
    Loaded(ModuleSummary),
    /// A module changed on disk and its new version was loaded.
    Reloaded {
        /// The new version.
        module: ModuleSummary,
        /// Sum of the version it replaced.
        previous_sum: String,
    },
    /// A module's file was removed; it is no longer served.
    Unloaded {
        /// File name.
        name: String,
        /// Sum of the version that was served.
        sum: String,
    },
    /// A file could not be loaded.
    Rejected {
        /// File name.
        name: String,
        /// Why, for a person.
        reason: String,
        /// Sum of the previous version, which keeps serving, if any.
        kept: Option<String>,
    },
}

/// What a module run produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// The module's result text (invalid UTF-8 replaced).
    pub result: String,
    /// Sum of the module version that ran.
    pub sum: String,
}

struct Inner {
    config: RegistryConfig,
    modules: RwLock<BTreeMap<String, Arc<Module>>>,
    events: broadcast::Sender<RegistryEvent>,
    slots: Arc<Semaphore>,
    shadow: tempfile::TempDir,
    next_shadow: AtomicU64,
    /// Serialises reconciliations so that two events for one file cannot
    /// race each other's swap.
    reconcile: Mutex<()>,
}

/// The set of loaded modules. Cheap to clone; clones share one registry.
#[derive(Clone)]
pub struct ModuleRegistry {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ModuleRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleRegistry")
            .field("dir", &self.inner.config.dir)
            .field("modules", &self.list().len())
            .finish_non_exhaustive()
    }
}

/// Whether a file name in the watched directory is a module candidate:
/// the platform's dylib suffix, not hidden, not a temporary name.
pub fn is_module_name(name: &str) -> bool {
    let suffix = std::env::consts::DLL_SUFFIX;
    name.len() > suffix.len()
        && name.ends_with(suffix)
        && !name.starts_with('.')
        && !name.starts_with('#')
}

fn hex_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl ModuleRegistry {
    /// Opens the registry on `config.dir` and loads every module in it.
    /// A module that fails to load is reported (event and log) and skipped;
    /// a directory that cannot be read is an error.
    pub fn open(config: RegistryConfig) -> Result<ModuleRegistry, ModuleError> {
        let dir_err = |source| ModuleError::Dir {
            path: config.dir.clone(),
            source,
        };
        let meta = std::fs::metadata(&config.dir).map_err(dir_err)?;
        if !meta.is_dir() {
            return Err(ModuleError::Dir {
                path: config.dir.clone(),
                source: std::io::Error::other("not a directory"),
            });
        }
        let shadow = tempfile::Builder::new()
            .prefix("vigil-modules-")
            .tempdir()
            .map_err(ModuleError::Shadow)?;
        let (events, _) = broadcast::channel(4096);
        let registry = ModuleRegistry {
            inner: Arc::new(Inner {
                slots: Arc::new(Semaphore::new(config.max_concurrent.max(1))),
                config,
                modules: RwLock::new(BTreeMap::new()),
                events,
                shadow,
                next_shadow: AtomicU64::new(0),
                reconcile: Mutex::new(()),
            }),
        };
        registry.rescan()?;
        Ok(registry)
    }

    /// The watched directory.
    pub fn dir(&self) -> &Path {
        &self.inner.config.dir
    }

    /// Receives every change from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<RegistryEvent> {
        self.inner.events.subscribe()
    }

    fn modules(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Module>>> {
        self.inner
            .modules
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn modules_mut(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Module>>> {
        self.inner
            .modules
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The loaded modules, by name.
    pub fn list(&self) -> Vec<ModuleSummary> {
        self.modules().values().map(|m| m.summary.clone()).collect()
    }

    /// A loaded module.
    pub fn get(&self, name: &str) -> Option<Arc<Module>> {
        self.modules().get(name).cloned()
    }

    fn emit(&self, event: RegistryEvent) {
        match &event {
            RegistryEvent::Loaded(m) => {
                tracing::info!(module = %m.name, sum = %m.sum, size = m.size, desc = %m.description, "module loaded")
            }
            RegistryEvent::Reloaded {
                module,
                previous_sum,
            } => tracing::info!(
                module = %module.name, sum = %module.sum, previous = %previous_sum, size = module.size,
                "module reloaded"
            ),
            RegistryEvent::Unloaded { name, sum } => {
                tracing::info!(module = %name, sum = %sum, "module unloaded")
            }
            RegistryEvent::Rejected { name, reason, kept } => match kept {
                Some(sum) => {
                    tracing::warn!(module = %name, %reason, kept = %sum, "module rejected; the previous version keeps serving")
                }
                None => tracing::warn!(module = %name, %reason, "module rejected"),
            },
        }
        let _ = self.inner.events.send(event);
    }

    /// Brings every file in the directory, and every loaded module, in line
    /// with what is on disk.
    pub fn rescan(&self) -> Result<(), ModuleError> {
        let entries =
            std::fs::read_dir(&self.inner.config.dir).map_err(|source| ModuleError::Dir {
                path: self.inner.config.dir.clone(),
                source,
            })?;
        let mut names: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| is_module_name(n))
            .collect();
        names.extend(self.modules().keys().cloned());
        names.sort();
        names.dedup();
        for name in names {
            self.reconcile(&name);
        }
        Ok(())
    }

    /// Brings one module in line with its file: loads it if new or
    /// changed, unloads it if gone, and otherwise does nothing.
    pub fn reconcile(&self, name: &str) {
        if !is_module_name(name) {
            return;
        }
        let _guard = self
            .inner
            .reconcile
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let path = self.inner.config.dir.join(name);
        let current = self.get(name);
        let bytes = match read_module(&path, self.inner.config.max_module_size) {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                if let Some(old) = self.modules_mut().remove(name) {
                    self.emit(RegistryEvent::Unloaded {
                        name: name.to_owned(),
                        sum: old.summary.sum.clone(),
                    });
                }
                return;
            }
            Err(reason) => {
                self.reject(name, reason, current.as_deref());
                return;
            }
        };
        let sum = hex_sha256(&bytes);
        if current.as_ref().is_some_and(|m| m.summary.sum == sum) {
            return;
        }
        match self.load(name, bytes, sum) {
            Ok(module) => {
                let summary = module.summary.clone();
                let previous = self.modules_mut().insert(name.to_owned(), Arc::new(module));
                match previous {
                    Some(old) => self.emit(RegistryEvent::Reloaded {
                        module: summary,
                        previous_sum: old.summary.sum.clone(),
                    }),
                    None => self.emit(RegistryEvent::Loaded(summary)),
                }
            }
            Err(reason) => self.reject(name, reason, current.as_deref()),
        }
    }

    fn reject(&self, name: &str, reason: String, current: Option<&Module>) {
        self.emit(RegistryEvent::Rejected {
            name: name.to_owned(),
            reason,
            kept: current.map(|m| m.summary.sum.clone()),
        });
    }

    /// Validates the bytes, writes them to a fresh shadow path, loads that
    /// copy and unlinks it.
    fn load(&self, name: &str, bytes: Vec<u8>, sum: String) -> Result<Module, String> {
        elf::validate(&bytes).map_err(|e| e.to_string())?;
        // A unique path per load: dlopen caches by path, so reusing one
        // would hand back the old code.
        let n = self.inner.next_shadow.fetch_add(1, Ordering::Relaxed);
        let shadow = self
            .inner
            .shadow
            .path()
            .join(format!("{n}-{}", sanitize(name)));
        write_shadow(&shadow, &bytes)
            .map_err(|e| format!("cannot write shadow copy {}: {e}", shadow.display()))?;
        let opened = Library::open(&shadow);
        // The mapping stays valid after unlinking; nothing else may open it.
        let _ = std::fs::remove_file(&shadow);
        let library = opened.map_err(|e| e.to_string())?;
        Ok(Module {
            summary: ModuleSummary {
                name: name.to_owned(),
                sum,
                size: bytes.len() as u64,
                description: library.description().to_owned(),
            },
            bytes: Arc::from(bytes),
            library,
        })
    }

    /// Runs a module, if `expected_sum` is the sum of the loaded version.
    ///
    /// The run happens on a blocking thread, at most
    /// [`RegistryConfig::max_concurrent`] at once, and the caller gets
    /// [`ExecError::Timeout`] after [`RegistryConfig::exec_timeout`]. A run
    /// that hangs cannot be stopped: it keeps its slot until it returns.
    pub async fn exec(
        &self,
        name: &str,
        args: &[u8],
        expected_sum: &str,
    ) -> Result<ExecOutput, ExecError> {
        let call = ExecCall {
            module: name.to_owned(),
            args: args.to_vec(),
            sum: expected_sum.to_owned(),
        };
        match self.exec_batch(vec![((), call)]).next().await {
            Some(((), answer)) => answer,
            None => Err(ExecError::Panicked("the run ended without a result".into())),
        }
    }

    /// Runs several calls one after another on one blocking thread, which
    /// holds one of the [`RegistryConfig::max_concurrent`] slots; each
    /// call's `tag` comes back with its answer.
    ///
    /// Each call is checked first (module loaded, sum current) and
    /// answered at once if it fails. Waiting for a slot longer than the
    /// timeout answers [`ExecError::Busy`]; a call running past the timeout
    /// answers [`ExecError::Timeout`], and the calls after it
    /// [`ExecError::Abandoned`] without running. One batch costs one thread
    /// hand-off, however many calls it holds.
    pub fn exec_batch<T: Send + 'static>(&self, calls: Vec<(T, ExecCall)>) -> ExecBatch<T> {
        ExecBatch::new(
            self.inner.config.exec_timeout,
            &self.inner.slots,
            calls,
            |name| self.get(name),
        )
    }
}

/// Reads a module file. `Ok(None)` if it does not exist.
///
/// The file is opened without blocking and without following a symbolic
/// link, then checked with `fstat` on the open descriptor: a FIFO (whose
/// `open` for reading would wait for a writer forever), a device or a
/// link is refused before a byte is read, and what is checked is what is
/// read.
fn read_module(path: &Path, max: u64) -> Result<Option<Vec<u8>>, String> {
    use std::io::Read as _;
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(
        &mut options,
        rustix::fs::OFlags::NONBLOCK.bits() as i32 | rustix::fs::OFlags::NOFOLLOW.bits() as i32,
    );
    let file = match options.open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        // O_NOFOLLOW on a symbolic link.
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            return Err("a symbolic link, not a regular file".into());
        }
        Err(e) => return Err(format!("cannot open: {e}")),
    };
    let meta = file.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        // Whoever may write the file may choose the code that runs.
        if meta.permissions().mode() & 0o022 != 0 {
            return Err(format!(
                "writable by group or others (mode {:o}): only the owner may be able to change a module (chmod go-w)",
                meta.permissions().mode() & 0o7777
            ));
        }
    }
    if meta.len() > max {
        return Err(format!(
            "{} bytes is larger than the {max}-byte limit",
            meta.len()
        ));
    }
    let mut bytes = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0));
    // Read at most one byte past the limit, in case the file grew.
    file.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(format!("larger than the {max}-byte limit"));
    }
    Ok(Some(bytes))
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn write_shadow(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o500);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn module_names() {
        assert!(is_module_name("hello.so"));
        assert!(!is_module_name(".so"));
        assert!(!is_module_name(".hello.so"));
        assert!(!is_module_name("hello.so.tmp"));
        assert!(!is_module_name("hello.py"));
        assert!(!is_module_name("README.md"));
    }
}

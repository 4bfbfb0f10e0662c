//! The module registry: what is loaded, loading and reloading it, and
//! running it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

mod exec;

use crate::host::{HostHealth, HostOptions, HostSpec, ModuleHost, SandboxPolicy};
use crate::{ExecError, ModuleError, elf};
pub use exec::{ExecBatch, ExecCall};

/// Default time a module may run before its caller gets a timeout.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(10);
/// Default number of calls queued for one module's host before more are
/// answered busy.
pub const DEFAULT_MAX_CONCURRENT: usize = 1024;
/// Default largest module file accepted.
pub const DEFAULT_MAX_MODULE_SIZE: u64 = 32 * 1024 * 1024;

/// Registry settings.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RegistryConfig {
    /// The watched directory.
    pub dir: PathBuf,
    /// Time a run may take before the caller gets [`ExecError::Timeout`]
    /// and the module's host is killed.
    pub exec_timeout: Duration,
    /// Calls queued for one module's host (each host runs its calls one
    /// after another) before more are answered [`ExecError::Busy`].
    pub max_concurrent: usize,
    /// Largest module file accepted, in bytes.
    pub max_module_size: u64,
    /// The module host program [default: `vigil-module-host` beside the
    /// running program, see [`default_host_program`](crate::host::default_host_program)].
    pub host_program: Option<PathBuf>,
    /// What a module's host may do, unless [`RegistryConfig::sandboxes`]
    /// names the module.
    pub sandbox: SandboxPolicy,
    /// What the named modules' hosts may do instead (by file name).
    pub sandboxes: BTreeMap<String, SandboxPolicy>,
    /// With module keys: load only modules whose manifest verifies.
    pub manifests: Option<vigil_command::ModuleTrust>,
}

impl RegistryConfig {
    /// Defaults for everything but the directory.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        RegistryConfig {
            dir: dir.into(),
            exec_timeout: DEFAULT_EXEC_TIMEOUT,
            max_concurrent: DEFAULT_MAX_CONCURRENT,
            max_module_size: DEFAULT_MAX_MODULE_SIZE,
            host_program: None,
            sandbox: SandboxPolicy::default(),
            sandboxes: BTreeMap::new(),
            manifests: None,
        }
    }

    /// The sandbox of module `name`.
    pub fn sandbox_for(&self, name: &str) -> &SandboxPolicy {
        self.sandboxes.get(name).unwrap_or(&self.sandbox)
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
    /// The signed manifest it was loaded with (with module keys only).
    pub manifest: Option<vigil_command::SignedManifest>,
}

/// A loaded module: its bytes, their sum, and the host process that runs
/// them.
#[derive(Debug)]
pub struct Module {
    summary: ModuleSummary,
    bytes: Arc<[u8]>,
    host: ModuleHost,
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
        &self.host.declared_name
    }

    /// How the module's host process is doing.
    pub fn health(&self) -> HostHealth {
        self.host.health()
    }

    pub(crate) fn host(&self) -> &ModuleHost {
        &self.host
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
        /// Why, as a stable code (`module_invalid`, `manifest_rollback`...).
        code: &'static str,
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
    host: HostOptions,
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
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| ModuleError::NoRuntime)?;
        let (events, _) = broadcast::channel(4096);
        let registry = ModuleRegistry {
            inner: Arc::new(Inner {
                host: HostOptions {
                    timeout: config.exec_timeout,
                    max_pending: config.max_concurrent,
                    runtime,
                },
                config,
                modules: RwLock::new(BTreeMap::new()),
                events,
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

    /// How each loaded module's host is doing, by module name.
    pub fn health(&self) -> Vec<(String, HostHealth)> {
        self.modules()
            .iter()
            .map(|(name, m)| (name.clone(), m.health()))
            .collect()
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
            // Logged by `reject`.
            RegistryEvent::Rejected { .. } => {}
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
            Err(e) => return self.reject(name, "module_unreadable", e, current.as_deref()),
        };
        let sum = hex_sha256(&bytes);
        let config = &self.inner.config;
        let verified = match crate::manifest::gate(config, name, &sum, bytes.len() as u64) {
            Ok(verified) => verified,
            Err(r) => return self.reject(name, r.code, r.reason, current.as_deref()),
        };
        let manifest = verified.as_ref().map(|v| v.signed().clone());
        if crate::manifest::unchanged(current.as_deref(), &sum, manifest.as_ref()) {
            return;
        }
        match self.load(name, bytes, sum) {
            Ok(mut module) => {
                if let Err(r) = crate::manifest::record(config, verified.as_ref()) {
                    return self.reject(name, r.code, r.reason, current.as_deref());
                }
                module.summary.manifest = manifest;
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
            Err(reason) => self.reject(name, "module_invalid", reason, current.as_deref()),
        }
    }

    fn reject(&self, name: &str, code: &'static str, reason: String, current: Option<&Module>) {
        let kept = current.map(|m| m.summary.sum.clone());
        match &kept {
            Some(sum) => tracing::warn!(module = %name, code, %reason, kept = %sum,
                "module rejected; the previous version keeps serving"),
            None => tracing::warn!(module = %name, code, %reason, "module rejected"),
        }
        self.emit(RegistryEvent::Rejected {
            name: name.to_owned(),
            code,
            reason,
            kept,
        });
    }

    /// Validates the bytes and starts a host process for them, which
    /// loads exactly these bytes; the old version's host keeps serving
    /// until this one is ready and swapped in.
    fn load(&self, name: &str, bytes: Vec<u8>, sum: String) -> Result<Module, String> {
        elf::validate(&bytes).map_err(|e| e.to_string())?;
        let bytes: Arc<[u8]> = Arc::from(bytes);
        let config = &self.inner.config;
        let spec = HostSpec {
            program: config
                .host_program
                .clone()
                .unwrap_or_else(crate::host::default_host_program),
            name: name.to_owned(),
            sum: sum.clone(),
            bytes: bytes.clone(),
            policy: config.sandbox_for(name).clone(),
        };
        let host = ModuleHost::start(spec, &self.inner.host)?;
        Ok(Module {
            summary: ModuleSummary {
                name: name.to_owned(),
                sum,
                size: bytes.len() as u64,
                description: host.description.clone(),
                manifest: None,
            },
            bytes,
            host,
        })
    }

    /// Runs a module, if `expected_sum` is the sum of the loaded version.
    ///
    /// The run happens in the module's host process; the caller gets
    /// [`ExecError::Timeout`] after [`RegistryConfig::exec_timeout`], and
    /// the host is then killed and started again.
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
            None => Err(ExecError::NotRun),
        }
    }

    /// Sends several calls to their modules' hosts at once; each call's
    /// `tag` comes back with its answer, in the order of the calls.
    ///
    /// Each call is checked first (module loaded, sum current) and
    /// answered at once if it fails. The calls for one module go to its
    /// host in one write and run one after another there; a call running
    /// past the timeout answers [`ExecError::Timeout`] (its host is killed),
    /// and the calls after it in the batch [`ExecError::Abandoned`]
    /// without running.
    pub fn exec_batch<T: Send + 'static>(&self, calls: Vec<(T, ExecCall)>) -> ExecBatch<T> {
        ExecBatch::new(calls, |name| self.get(name))
    }
}

/// Reads a module file. `Ok(None)` if it does not exist.
///
/// The file is opened without blocking and without following a symbolic
/// link, then checked with `fstat` on the open descriptor: a FIFO (whose
/// `open` for reading would wait for a writer forever), a device or a
/// link is refused before a byte is read, and what is checked is what is
/// read.
pub(crate) fn read_module(path: &Path, max: u64) -> Result<Option<Vec<u8>>, String> {
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

//! The vigil module registry: native dylib modules, loaded only after their
//! exact bytes were validated and hashed, reloaded when they change, and run
//! in sandboxed host processes of their own, never in the server.
//!
//! Each load reads the module file once, validates those bytes (a complete
//! ELF shared object for this machine), hashes them (SHA-256) and starts a
//! [`host`] process for that version, which receives the bytes, checks the
//! sum again, maps them from a sealed memfd and confines itself (rlimits,
//! Landlock, a seccomp allowlist) before it takes calls. So the sum a client
//! verifies is the sum of the code that runs, a file replaced on disk never
//! changes code already loaded, and a module that crashes, hangs or runs
//! out of memory takes only its host down. A reload starts the new version's
//! host, swaps it in once it is ready, and lets the old one finish its calls
//! and exit. A failed reload keeps the previous version serving. Every
//! change is a [`RegistryEvent`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use vigil_modules::{ModuleRegistry, RegistryConfig};
//!
//! let registry = ModuleRegistry::open(RegistryConfig::new("mods"))?;
//! let _watch = registry.watch()?;
//! for m in registry.list() {
//!     println!("{} {} {}", m.name, m.sum, m.description);
//! }
//! let hello = registry.get("hello.so").expect("loaded");
//! let out = registry.exec("hello.so", b"world", &hello.summary().sum).await?;
//! assert_eq!(out.result, "Hello, world!");
//! # Ok(())
//! # }
//! ```
//!
//! All `unsafe` code lives in the `loader` module, which only the host
//! process uses. [`ModuleRegistry::open`] must be called inside a tokio
//! runtime, which runs the hosts' supervisors.
#![deny(missing_docs)]

pub mod dev;
mod elf;
pub mod host;
mod loader;
mod manifest;
mod registry;
mod watcher;

use std::path::PathBuf;
use std::time::Duration;

pub use elf::{ElfError, validate as validate_elf};
pub use host::{HostHealth, HostState, SandboxPolicy};
pub use loader::LoadError;
pub use manifest::{host_target, module_of_manifest};
pub use registry::{
    DEFAULT_EXEC_TIMEOUT, DEFAULT_MAX_CONCURRENT, DEFAULT_MAX_MODULE_SIZE, ExecOutput, Module,
    ModuleRegistry, ModuleSummary, RegistryConfig, RegistryEvent, is_module_name,
};
pub use registry::{ExecBatch, ExecCall};
pub use watcher::ModuleWatcher;

/// Why the registry could not start or watch.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModuleError {
    /// The module directory cannot be read.
    #[error("module directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Opened outside a tokio runtime, which the module hosts need.
    #[error("the module registry must be opened inside a tokio runtime")]
    NoRuntime,
    /// The directory cannot be watched.
    #[error("cannot watch {path}: {source}")]
    Watch {
        /// The directory.
        path: PathBuf,
        /// The watcher's error.
        source: notify::Error,
    },
}

/// Why a module run did not return a result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExecError {
    /// No module of that name is loaded.
    #[error("no module named {0:?} is loaded")]
    UnknownModule(String),
    /// The module changed since the caller verified it.
    #[error(
        "module {name:?} changed since it was verified (verified sum {given}, loaded sum {current}): verify it again"
    )]
    StaleSum {
        /// Module name.
        name: String,
        /// The sum the caller verified.
        given: String,
        /// The sum of the loaded version.
        current: String,
    },
    /// The module's host has too many calls queued.
    #[error("the module has too many calls queued; try again later")]
    Busy,
    /// The run took too long; its host was killed and is started again.
    #[error("module run exceeded its {0:?} timeout: its host was stopped")]
    Timeout(Duration),
    /// Not run: an earlier call of the same batch ran past the timeout.
    #[error("not run: an earlier module run of the same batch exceeded its {0:?} timeout")]
    Abandoned(Duration),
    /// The module returned an error.
    #[error("module failed: {0}")]
    Failed(String),
    /// The module panicked; its shim caught it.
    #[error("module panicked: {0}")]
    Panicked(String),
    /// The module's host process died during the run (a signal such as
    /// `SIGSEGV`, `SIGABRT`, `SIGSYS` for a system call its sandbox does not
    /// allow, or an exit); it is started again.
    #[error("module crashed: {detail}")]
    Crashed {
        /// The signal that ended the host, by name (`SIGSEGV`), if one did.
        signal: Option<String>,
        /// What happened, for a person.
        detail: String,
    },
    /// The run went past a limit of its sandbox (memory).
    #[error("module hit a sandbox limit: {0}")]
    Limit(String),
    /// Not run: an earlier call of the same batch crashed the module's
    /// host.
    #[error("not run: an earlier module run of the same batch crashed the module host")]
    NotRun,
}

//! The vigil module registry: native dylib modules, loaded only after their
//! exact bytes were validated and hashed, reloaded when they change, and run
//! off the async threads with a timeout and a concurrency limit.
//!
//! Each load reads the module file once, validates those bytes (a complete
//! ELF shared object for this machine), hashes them (SHA-256), writes them to
//! a unique shadow path in a private directory, loads that copy and unlinks
//! it. So the sum a client verifies is the sum of the code that runs, a file
//! replaced on disk never changes code already loaded, and `dlopen`'s cache
//! by path never hands back an old version. A failed reload keeps the
//! previous version serving. Every change is a [`RegistryEvent`].
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
//! All `unsafe` code lives in the `loader` module.
#![deny(missing_docs)]

pub mod dev;
mod elf;
mod loader;
mod registry;
mod watcher;

use std::path::PathBuf;
use std::time::Duration;

pub use elf::{ElfError, validate as validate_elf};
pub use loader::LoadError;
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
    /// The private directory for shadow copies cannot be made.
    #[error("cannot create a private directory for module copies: {0}")]
    Shadow(std::io::Error),
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
    /// Every run slot is taken (possibly by runs that hang).
    #[error("all module run slots are busy; try again later")]
    Busy,
    /// The run took too long; it may still be running.
    #[error("module run exceeded its {0:?} timeout")]
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
}

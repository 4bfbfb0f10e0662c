//! The only place where vigil's host code is `unsafe`: opening a validated
//! shadow copy of a module with `dlopen` and calling through its C ABI.
//!
//! Everything here trusts the module to follow the ABI of
//! `vigil-module-sdk`; what can be checked first is checked by the caller
//! (the file is a complete ELF shared object of this machine's
//! architecture) and here (the ABI version is read before anything else).
#![allow(unsafe_code)]

use std::ffi::CStr;
use std::path::Path;

use vigil_module_sdk::{
    ABI_VERSION, ABI_VERSION_SYMBOL, Buffer, DESCRIPTOR_SYMBOL, ModuleDescriptor, STATUS_OK,
    STATUS_PANIC,
};

/// Why a library could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// `dlopen` failed.
    #[error("cannot load the library: {0}")]
    Open(String),
    /// A required symbol is missing: not a vigil module.
    #[error("not a vigil module: symbol `{0}` is missing")]
    MissingSymbol(&'static str),
    /// Built against another ABI.
    #[error(
        "module ABI version {found} is not supported (this server speaks version {expected}); rebuild it against this vigil-module-sdk"
    )]
    AbiMismatch {
        /// What the module says.
        found: u32,
        /// What this host speaks.
        expected: u32,
    },
    /// The descriptor is unusable.
    #[error("bad module descriptor: {0}")]
    BadDescriptor(&'static str),
}

/// What one call of a module's `execute` gave back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The module's result.
    Ok(Vec<u8>),
    /// The module's error text.
    Err(Vec<u8>),
    /// The module panicked (caught by its shim); the panic message.
    Panicked(Vec<u8>),
}

/// A loaded module library. Dropping it closes the library (best effort:
/// thread-locals may keep it mapped).
pub(crate) struct Library {
    descriptor: *const ModuleDescriptor,
    name: String,
    description: String,
    // Declared last: dropped after everything that points into it. Never
    // read, only kept alive: dropping it closes the library.
    _lib: libloading::Library,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

// SAFETY: the descriptor points to immutable static data inside `lib`,
// which lives as long as this value; the ABI requires `execute` and `free`
// to be callable from any thread.
unsafe impl Send for Library {}
// SAFETY: as above: nothing here is mutated after loading.
unsafe impl Sync for Library {}

fn c_string(ptr: *const std::ffi::c_char, what: &'static str) -> Result<String, LoadError> {
    if ptr.is_null() {
        return Err(LoadError::BadDescriptor(what));
    }
    // SAFETY: the ABI requires a NUL-terminated static string; the pointer
    // was checked for null above.
    let s = unsafe { CStr::from_ptr(ptr) };
    Ok(s.to_string_lossy().into_owned())
}

impl Library {
    /// Opens the library at `path` (a validated shadow copy), checks its
    /// ABI version and reads its descriptor.
    pub(crate) fn open(path: &Path) -> Result<Library, LoadError> {
        // SAFETY: loading runs the library's initialisers. The file is a
        // complete ELF shared object of this architecture (validated by
        // the caller) in a private directory no one else writes to, and
        // modules are code the operator chose to deploy.
        let lib = unsafe { libloading::Library::new(path) }
            .map_err(|e| LoadError::Open(e.to_string()))?;
        // SAFETY: the symbol has the type the ABI gives it.
        let abi = unsafe { lib.get::<unsafe extern "C" fn() -> u32>(ABI_VERSION_SYMBOL) }
            .map_err(|_| LoadError::MissingSymbol("vigil_module_abi_version"))?;
        // SAFETY: a function of no arguments returning u32, per the ABI.
        let found = unsafe { abi() };
        if found != ABI_VERSION {
            return Err(LoadError::AbiMismatch {
                found,
                expected: ABI_VERSION,
            });
        }
        // SAFETY: the ABI version matches, so the symbol has this type.
        let get_descriptor = unsafe {
            lib.get::<unsafe extern "C" fn() -> *const ModuleDescriptor>(DESCRIPTOR_SYMBOL)
        }
        .map_err(|_| LoadError::MissingSymbol("vigil_module_descriptor"))?;
        // SAFETY: returns a pointer to the module's static descriptor.
        let descriptor = unsafe { get_descriptor() };
        if descriptor.is_null() {
            return Err(LoadError::BadDescriptor("null descriptor"));
        }
        // SAFETY: non-null, points to static data in `lib`, which is alive.
        let d = unsafe { &*descriptor };
        if d.abi_version != ABI_VERSION {
            return Err(LoadError::AbiMismatch {
                found: d.abi_version,
                expected: ABI_VERSION,
            });
        }
        let name = c_string(d.name, "null name")?;
        let description = c_string(d.description, "null description")?;
        Ok(Library {
            descriptor,
            name,
            description,
            _lib: lib,
        })
    }

    /// The name the module gives itself.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The module's description.
    pub(crate) fn description(&self) -> &str {
        &self.description
    }

    /// Calls the module's `execute` on `args` and copies what it returns.
    /// Blocks for as long as the module runs.
    pub(crate) fn execute(&self, args: &[u8]) -> Outcome {
        // SAFETY: `descriptor` points to static data in `self._lib`, alive
        // as long as `self`.
        let d = unsafe { &*self.descriptor };
        let mut out = Buffer::EMPTY;
        // SAFETY: `args` is a valid slice and `out` a valid slot, as the
        // ABI requires; the module's shim catches its own panics.
        let status = unsafe { (d.execute)(args.as_ptr(), args.len(), &mut out) };
        let bytes = if out.ptr.is_null() || out.len == 0 {
            Vec::new()
        } else {
            // SAFETY: the module returned `len` initialised bytes at `ptr`,
            // which stay valid until we hand the buffer back.
            unsafe { std::slice::from_raw_parts(out.ptr, out.len) }.to_vec()
        };
        // SAFETY: the buffer came from this module's `execute` and is
        // returned exactly once.
        unsafe { (d.free)(out) };
        match status {
            STATUS_OK => Outcome::Ok(bytes),
            STATUS_PANIC => Outcome::Panicked(bytes),
            _ => Outcome::Err(bytes),
        }
    }
}

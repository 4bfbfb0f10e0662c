//! The ABI between a vigil server and the native modules it loads.
//!
//! A module is a `cdylib` that exports two C symbols:
//!
//! - `vigil_module_abi_version() -> u32`, checked first, so that a module
//!   built against another ABI is refused before anything else is read;
//! - `vigil_module_descriptor() -> *const ModuleDescriptor`, a static table
//!   with the module's name, description, and its `execute` and `free`
//!   entry points.
//!
//! A module author writes one ordinary Rust function and lets
//! [`export_module!`] write the rest:
//!
//! ```
//! fn greet(args: &str) -> Result<String, String> {
//!     if args.is_empty() {
//!         return Err("tell me who to greet".into());
//!     }
//!     Ok(format!("Hello, {args}!"))
//! }
//!
//! vigil_module_sdk::export_module! {
//!     name: "hello",
//!     description: "Greets its argument.",
//!     execute: greet,
//! }
//! # fn main() {}
//! ```
//!
//! The function receives the exec arguments as a string (invalid UTF-8 is
//! replaced) and returns the result text or an error text. The generated
//! shim catches panics and returns them as errors, so a panicking module
//! does not take the server down; this needs the module to be built with
//! `panic = "unwind"` (Cargo's default).
//!
//! The ABI is described in full in `docs/modules.md`.
#![deny(missing_docs)]
// The module side of a C ABI cannot be written without `unsafe`: exported
// symbols, raw pointers from the host. It is confined to `ffi` and to what
// `export_module!` expands to, each block with a `// SAFETY:` note.
#![allow(unsafe_code)]

#[doc(hidden)]
pub mod ffi;

use std::ffi::c_char;

/// The ABI version this SDK implements. The host refuses a module whose
/// `vigil_module_abi_version()` returns anything else.
pub const ABI_VERSION: u32 = 1;

/// Status returned by `execute`: success, the buffer holds the result.
pub const STATUS_OK: i32 = 0;
/// Status returned by `execute`: failure, the buffer holds the error text.
pub const STATUS_ERROR: i32 = 1;
/// Status returned by `execute`: the module panicked, the buffer holds the
/// panic message.
pub const STATUS_PANIC: i32 = 2;

/// Bytes owned by the module, handed to the host. The host copies them and
/// gives the buffer back through [`ModuleDescriptor::free`].
#[repr(C)]
#[derive(Debug)]
pub struct Buffer {
    /// Start of the bytes (may be dangling when `len` is 0).
    pub ptr: *mut u8,
    /// Number of bytes.
    pub len: usize,
    /// Allocated capacity, for the module's allocator.
    pub cap: usize,
}

impl Buffer {
    /// An empty buffer that owns nothing.
    pub const EMPTY: Buffer = Buffer {
        ptr: std::ptr::null_mut(),
        len: 0,
        cap: 0,
    };
}

/// `execute(args, args_len, out) -> status`: runs the module on `args_len`
/// bytes at `args`, writes the result or error text into `*out`.
pub type ExecuteFn =
    unsafe extern "C" fn(args: *const u8, args_len: usize, out: *mut Buffer) -> i32;

/// `free(buffer)`: releases a buffer that `execute` returned.
pub type FreeFn = unsafe extern "C" fn(buffer: Buffer);

/// The table a module exports through `vigil_module_descriptor()`.
/// All pointers refer to static data inside the module.
#[repr(C)]
#[derive(Debug)]
pub struct ModuleDescriptor {
    /// Repeats [`ABI_VERSION`].
    pub abi_version: u32,
    /// NUL-terminated UTF-8 name.
    pub name: *const c_char,
    /// NUL-terminated UTF-8 description.
    pub description: *const c_char,
    /// Runs the module.
    pub execute: ExecuteFn,
    /// Frees what `execute` returned.
    pub free: FreeFn,
}

// SAFETY: a descriptor is immutable static data; its pointers refer to
// static strings and functions that are valid for the life of the library.
unsafe impl Sync for ModuleDescriptor {}

/// Name of the exported ABI-version symbol.
pub const ABI_VERSION_SYMBOL: &[u8] = b"vigil_module_abi_version\0";
/// Name of the exported descriptor symbol.
pub const DESCRIPTOR_SYMBOL: &[u8] = b"vigil_module_descriptor\0";

/// Writes the exports of a vigil module around one function
/// `fn(&str) -> Result<String, String>`. See the crate docs.
#[macro_export]
macro_rules! export_module {
    (name: $name:expr, description: $desc:expr, execute: $func:path $(,)?) => {
        #[doc(hidden)]
        unsafe extern "C" fn __vigil_module_execute(
            args: *const u8,
            args_len: usize,
            out: *mut $crate::Buffer,
        ) -> i32 {
            // SAFETY: the host passes `args_len` readable bytes at `args`
            // (or a null pointer with length 0) and a writable `out`, as the
            // ABI requires.
            unsafe { $crate::ffi::run(args, args_len, out, $func) }
        }

        #[doc(hidden)]
        unsafe extern "C" fn __vigil_module_free(buffer: $crate::Buffer) {
            // SAFETY: the host only hands back buffers that `execute`
            // produced, once each.
            unsafe { $crate::ffi::free(buffer) }
        }

        #[doc(hidden)]
        static __VIGIL_MODULE_DESCRIPTOR: $crate::ModuleDescriptor = $crate::ModuleDescriptor {
            abi_version: $crate::ABI_VERSION,
            name: concat!($name, "\0").as_ptr().cast(),
            description: concat!($desc, "\0").as_ptr().cast(),
            execute: __vigil_module_execute,
            free: __vigil_module_free,
        };

        /// The ABI version this module was built for.
        // SAFETY: a unique, well-known exported name: the ABI.
        #[unsafe(no_mangle)]
        pub extern "C" fn vigil_module_abi_version() -> u32 {
            $crate::ABI_VERSION
        }

        /// The module's descriptor.
        // SAFETY: a unique, well-known exported name: the ABI.
        #[unsafe(no_mangle)]
        pub extern "C" fn vigil_module_descriptor() -> *const $crate::ModuleDescriptor {
            &__VIGIL_MODULE_DESCRIPTOR
        }
    };
}

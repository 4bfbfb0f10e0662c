//! Workspace conventions, checked by ordinary tests: `cargo test -p xtask`.
//!
//! The checks live in `tests/tidy.rs`: every member inherits the workspace
//! lints and package settings, library crates never depend on binaries and
//! respect the layering of the crate map, every crate has top-level docs,
//! and `unsafe` code is allowed in the module loader only.
//!
//! `tests/packaging.rs` checks that every library crate can be packaged for
//! a registry (versioned internal dependencies, metadata, a README);
//! `package-libs.sh` beside this crate runs `cargo package` with
//! verification on all of them, in dependency order.
#![deny(missing_docs)]

use std::path::{Path, PathBuf};

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default()
}

/// A TOML file, parsed; a test helper, so it panics naming the file.
pub fn read_toml(path: &Path) -> toml::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

//! Workspace conventions, checked by ordinary tests: `cargo test -p xtask`.
//!
//! The checks live in `tests/tidy.rs`: every member inherits the workspace
//! lints and package settings, library crates never depend on binaries and
//! respect the layering of the crate map, every crate has top-level docs,
//! and `unsafe` code is allowed in the module loader only.
#![deny(missing_docs)]

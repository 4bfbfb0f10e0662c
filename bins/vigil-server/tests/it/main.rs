//! The reliability catalogue: bad input and faults against running
//! processes (`vigil-server`, `vigil-client`), real TLS, real files.
//!
//! Each case has an id (`W01`, `R03`, ...) that names its row in the
//! tables of docs/reliability.md: what the attacker or the fault wanted,
//! what vigil answered, and what must hold. Cases end by checking that an
//! honest client is still served and that the server's memory stayed
//! bounded. `xtask/tests/tidy.rs` checks that the ids here and in the
//! document are the same.

mod commands;
mod faults;
mod files;
mod manifests;
mod rest;
mod rogue;
mod support;
mod wire;

//! The workspace's binaries, for tests that run them as processes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Each binary of the workspace and the package that builds it.
pub const BINARIES: &[(&str, &str)] = &[
    ("vigil-server", "vigil-server-bin"),
    ("vigil-client", "vigil-client-bin"),
    ("vigilctl", "vigilctl"),
    ("vigil-module-host", "vigil-modules"),
];

/// Path of the workspace binary `name`, beside `own`: the path of the
/// tested package's own binary (`env!("CARGO_BIN_EXE_<name>")`).
///
/// Cargo builds only the tested package's binaries for its tests, so the
/// first call in a process builds the other packages of [`BINARIES`]
/// (`cargo build --quiet -p ...`, a no-op when they are up to date): a
/// test never runs a stale binary. The tested package is left alone:
/// cargo built it for this test already.
pub fn path(own: &str, name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let own = Path::new(own);
    let dir = own.parent().expect("bin dir");
    let own_name = own.file_name().and_then(|n| n.to_str()).unwrap_or("");
    BUILT.get_or_init(|| {
        let packages: Vec<&str> = BINARIES
            .iter()
            .filter(|(bin, _)| *bin != own_name)
            .map(|(_, package)| *package)
            .collect();
        let mut cargo = Command::new(env!("CARGO"));
        cargo.args(["build", "--quiet"]);
        for package in &packages {
            cargo.args(["-p", package]);
        }
        let status = cargo.status().expect("cargo build");
        assert!(status.success(), "building {packages:?} failed");
    });
    dir.join(name)
}

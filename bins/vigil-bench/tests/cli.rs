//! `vigil-bench` as a user runs it: `--help`, and a tiny run against a
//! real `vigil-server` process. No figure is checked, only that the run
//! completes and its JSON names the scenario.

use std::path::{Path, PathBuf};
use std::process::Command;

fn bench() -> &'static str {
    env!("CARGO_BIN_EXE_vigil-bench")
}

/// The `vigil-server` beside the bench binary, built (or brought up to
/// date) first: cargo builds only this package's binaries for its tests.
fn server_bin() -> PathBuf {
    let dir = Path::new(bench()).parent().expect("bin dir").to_owned();
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "vigil-server-bin"])
        .status()
        .expect("cargo build");
    assert!(status.success(), "building vigil-server failed");
    dir.join("vigil-server")
}

#[test]
fn help_lists_the_options() {
    let out = Command::new(bench()).arg("--help").output().expect("run");
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--quick",
        "--clients",
        "--scenario",
        "--json",
        "--server-bin",
    ] {
        assert!(
            text.contains(flag),
            "--help does not mention {flag}:\n{text}"
        );
    }
}

#[test]
fn missing_server_binary_is_a_clear_error() {
    let out = Command::new(bench())
        .args(["--server-bin", "/nonexistent/vigil-server"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(
        text.contains("cargo build --release -p vigil-server-bin"),
        "{text}"
    );
}

#[test]
fn tiny_handshake_run_writes_json() {
    let server = server_bin();
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("out.json");
    let out = Command::new(bench())
        .args(["--quick", "--clients", "20", "--scenario", "handshakes"])
        .arg("--server-bin")
        .arg(&server)
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "vigil-bench failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("json written")).expect("valid JSON");
    let names: Vec<&str> = doc["scenarios"]
        .as_array()
        .expect("scenarios")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, ["handshakes"]);
    assert!(doc["scenarios"][0]["figures"]["connections"].is_u64());
    assert!(doc["scenarios"][0]["met"].is_boolean());
}

//! The fuzz targets in `fuzz/` build and run: each for a few seconds over
//! its checked-in corpus (seeds and the inputs of past findings), so that
//! they keep building and no finding comes back. Long runs are `just fuzz`
//! (docs/reliability.md).
//!
//! They are built as `cargo fuzz build --sanitizer none` builds them
//! (libFuzzer with coverage instrumentation, no sanitizer): that works on
//! the stable toolchain, and needs nothing but cargo and a C++ compiler
//! for libFuzzer.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Seconds each target runs here.
const SECONDS: u32 = 3;

/// What `cargo fuzz build --sanitizer none` passes to rustc.
const RUSTFLAGS: &[&str] = &[
    "-Cpasses=sancov-module",
    "-Cllvm-args=-sanitizer-coverage-level=4",
    "-Cllvm-args=-sanitizer-coverage-inline-8bit-counters",
    "-Cllvm-args=-sanitizer-coverage-pc-table",
    "-Cllvm-args=-sanitizer-coverage-trace-compares",
    "--cfg",
    "fuzzing",
    "-Cllvm-args=-simplifycfg-branch-fold-threshold=0",
    "-Cllvm-args=-sanitizer-coverage-stack-depth",
    "-Cdebug-assertions",
    "-Ccodegen-units=1",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_owned()
}

fn host() -> String {
    let out = Command::new("rustc")
        .arg("-vV")
        .output()
        .expect("rustc -vV");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .expect("rustc names its host")
        .to_owned()
}

/// The `[[bin]]` names of `fuzz/Cargo.toml`.
fn targets(fuzz: &Path) -> Vec<String> {
    let manifest: toml::Value =
        toml::from_str(&std::fs::read_to_string(fuzz.join("Cargo.toml")).expect("fuzz/Cargo.toml"))
            .expect("valid TOML");
    manifest["bin"]
        .as_array()
        .expect("[[bin]] targets")
        .iter()
        .map(|b| b["name"].as_str().expect("name").to_owned())
        .collect()
}

#[test]
fn every_fuzz_target_builds_and_runs_over_its_corpus() {
    let fuzz = root().join("fuzz");
    let host = host();
    let status = Command::new(env!("CARGO"))
        .current_dir(&fuzz)
        .args(["build", "--release", "--bins", "--locked", "--quiet"])
        .args(["--target", &host])
        .env("CARGO_ENCODED_RUSTFLAGS", RUSTFLAGS.join("\u{1f}"))
        .env_remove("RUSTFLAGS")
        .env("CARGO_TARGET_DIR", fuzz.join("target"))
        .status()
        .expect("cargo build of fuzz/");
    assert!(status.success(), "the fuzz targets do not build");

    let targets = targets(&fuzz);
    assert!(targets.len() >= 7, "{targets:?}");
    for target in targets {
        let seeds = fuzz.join("corpus").join(&target);
        assert!(
            std::fs::read_dir(&seeds).is_ok_and(|mut d| d.next().is_some()),
            "{target}: no seed corpus in {}",
            seeds.display()
        );
        // New inputs go to a scratch directory, not into the repository.
        let scratch = tempfile::tempdir().expect("tempdir");
        let bin = fuzz
            .join("target")
            .join(&host)
            .join("release")
            .join(&target);
        let out = Command::new(&bin)
            .arg(scratch.path())
            .arg(&seeds)
            .arg(format!("-max_total_time={SECONDS}"))
            .arg("-max_len=65536")
            .arg("-timeout=10")
            .arg("-rss_limit_mb=2048")
            .arg(format!("-artifact_prefix={}/", scratch.path().display()))
            .output()
            .expect("run the fuzz target");
        let log = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let found: Vec<String> = std::fs::read_dir(scratch.path())
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| {
                    e.file_name().to_string_lossy().starts_with("crash-")
                        || e.file_name().to_string_lossy().starts_with("timeout-")
                        || e.file_name().to_string_lossy().starts_with("oom-")
                })
                .map(|e| {
                    let bytes = std::fs::read(e.path()).unwrap_or_default();
                    format!("{:?}: {:?}", e.file_name(), String::from_utf8_lossy(&bytes))
                })
                .collect();
            panic!("{target} failed:\n{log}\ninputs: {found:#?}");
        }
        let runs = log
            .lines()
            .rev()
            .find(|l| l.starts_with("Done "))
            .unwrap_or("(no summary)");
        eprintln!("{target}: {runs}");
    }
}

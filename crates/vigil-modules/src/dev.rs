//! Building and deploying module crates: what `just mods`, the demo, the
//! benchmarks and the tests do with real dylibs.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Why a module crate could not be built or deployed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DevError {
    /// cargo could not be started.
    #[error("cannot run cargo ({cargo}): {source}")]
    Spawn {
        /// The cargo binary tried.
        cargo: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// cargo failed.
    #[error("cargo build of {manifest} failed:\n{stderr}")]
    Build {
        /// The crate's manifest.
        manifest: PathBuf,
        /// What cargo printed.
        stderr: String,
    },
    /// cargo succeeded but produced no dylib.
    #[error("cargo build of {0} produced no dynamic library (is crate-type = [\"cdylib\"] set?)")]
    NoDylib(PathBuf),
    /// Copying into place failed.
    #[error("cannot deploy to {path}: {source}")]
    Deploy {
        /// The destination.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Builds the module crate at `manifest` with cargo (`$CARGO` or `cargo`)
/// into `target_dir`, with the given features, and returns the path of the
/// dylib it produced.
pub fn cargo_build_module(
    manifest: &Path,
    target_dir: &Path,
    features: &[&str],
    release: bool,
) -> Result<PathBuf, DevError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.arg("build")
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .arg("--message-format=json-render-diagnostics");
    if release {
        cmd.arg("--release");
    }
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    let out = run(cmd, &cargo, manifest)?;
    // The last artifact that is a dynamic library is the module.
    let suffix = std::env::consts::DLL_SUFFIX;
    let mut found = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let files = msg["filenames"].as_array().into_iter().flatten();
        for f in files.filter_map(serde_json::Value::as_str) {
            if f.ends_with(suffix) {
                found = Some(PathBuf::from(f));
            }
        }
    }
    found.ok_or_else(|| DevError::NoDylib(manifest.to_owned()))
}

/// Makes sure the module host program is beside the running program
/// (where the registry looks for it by default), building it with cargo
/// from the workspace at `workspace` (its root `Cargo.toml`) into the
/// running program's target directory and profile when it is not there:
/// `cargo run --bin vigilctl` builds only vigilctl. Returns its path.
pub fn ensure_host_beside_me(workspace: &Path) -> Result<PathBuf, DevError> {
    let beside = crate::host::default_host_program();
    if beside.is_file() {
        return Ok(beside);
    }
    let manifest = workspace.join("Cargo.toml");
    let exe = std::env::current_exe().map_err(|source| DevError::Spawn {
        cargo: "(cannot find the running program)".into(),
        source,
    })?;
    // target/<profile>/<program>
    let profile_dir = exe.parent().unwrap_or(Path::new("."));
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let target_dir = profile_dir.parent().unwrap_or(Path::new("."));
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(&cargo);
    cmd.arg("build")
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .args(["-p", "vigil-modules", "--bin", crate::host::HOST_PROGRAM]);
    if release {
        cmd.arg("--release");
    }
    run(cmd, &cargo, &manifest)?;
    Ok(profile_dir.join(crate::host::HOST_PROGRAM))
}

/// Runs a cargo command; its output if it succeeded.
fn run(mut cmd: Command, cargo: &str, manifest: &Path) -> Result<std::process::Output, DevError> {
    let out = cmd.output().map_err(|source| DevError::Spawn {
        cargo: cargo.to_owned(),
        source,
    })?;
    if !out.status.success() {
        return Err(DevError::Build {
            manifest: manifest.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(out)
}

/// Deploys `src` into `dir` as `name` the way a watched directory wants
/// it: written under a temporary hidden name, synced, then renamed into
/// place, so the watcher never sees a half-written module.
pub fn deploy(src: &Path, dir: &Path, name: &str) -> Result<PathBuf, DevError> {
    let dest = dir.join(name);
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let err = |source| DevError::Deploy {
        path: dest.clone(),
        source,
    };
    std::fs::copy(src, &tmp).map_err(err)?;
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(err)?;
    std::fs::rename(&tmp, &dest).map_err(err)?;
    Ok(dest)
}

/// Builds the module crate in `crate_dir` (debug, with `features`) once per
/// process under `target_root`, and returns a private copy of its dylib (a
/// later build in the same target directory would rewrite the file in
/// place). For tests that load real modules.
pub fn build_once(
    crate_dir: &Path,
    features: &[&str],
    target_root: &Path,
) -> Result<PathBuf, DevError> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    static BUILT: OnceLock<Mutex<HashMap<PathBuf, PathBuf>>> = OnceLock::new();
    let label: String = format!("{}+{}", crate_dir.display(), features.join(","))
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let target = target_root.join(format!("mod-{label}"));
    let mut built = BUILT
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(copy) = built.get(&target) {
        return Ok(copy.clone());
    }
    let so = cargo_build_module(&crate_dir.join("Cargo.toml"), &target, features, false)?;
    let copy = target.join(format!("{label}.so"));
    std::fs::copy(&so, &copy).map_err(|source| DevError::Deploy {
        path: copy.clone(),
        source,
    })?;
    built.insert(target, copy.clone());
    Ok(copy)
}

//! The Debian packages, built with cargo-deb from this build's binaries and
//! installed on this machine with `dpkg -i`: the vigil user and the
//! directories with their modes, identities written once and kept on
//! reinstall, the units in place, and the installed server and client
//! talking (a signed command run through the installed `vigilctl`).
//!
//! It changes this machine (packages, a system user, /etc/vigil and
//! /var/lib/vigil) and undoes it at the end; it needs root and refuses to
//! run where vigil is already installed. cargo-deb is installed with
//! `cargo install` when missing.

mod common;

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{START, bin, run};
use vigil_test_support::process::Proc;
use vigil_test_support::server::{Listener, bound_blocking};

/// The cargo-deb version the packaging script pins.
const CARGO_DEB: &str = "3.8.0";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn ensure_cargo_deb() {
    let has = || {
        Command::new(cargo())
            .args(["deb", "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if has() {
        return;
    }
    eprintln!(
        "cargo-deb is missing: installing it (cargo install cargo-deb --version {CARGO_DEB} --locked)"
    );
    let out = run(Command::new(cargo()).args([
        "install",
        "cargo-deb",
        "--version",
        CARGO_DEB,
        "--locked",
    ]));
    assert!(out.status.success() && has(), "cannot install cargo-deb");
}

/// Undoes the installation, whatever happened.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run(Command::new("pkill").args(["-u", "vigil"]));
        let _ = run(Command::new("dpkg").args(["--purge", "vigil-client", "vigil-server"]));
        let _ = std::fs::remove_dir_all("/etc/vigil");
        let _ = std::fs::remove_dir_all("/var/lib/vigil");
        let _ = run(Command::new("userdel").arg("vigil"));
        let _ = run(Command::new("groupdel").arg("vigil"));
    }
}

fn mode(path: &str) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .permissions()
        .mode()
        & 0o7777
}

fn owner(path: &str) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .uid()
}

fn dpkg_install(debs: &[PathBuf]) {
    let out = run(Command::new("dpkg")
        .arg("-i")
        .args(debs)
        .env("DEBIAN_FRONTEND", "noninteractive"));
    assert!(
        out.status.success(),
        "dpkg -i failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_packages_install_with_dpkg_and_the_installed_server_and_client_talk() {
    assert!(
        run(Command::new("id").arg("-u")).stdout == b"0\n",
        "this test installs packages: run it as root"
    );
    let installed = run(Command::new("dpkg-query").args(["-W", "vigil-server", "vigil-client"]));
    assert!(
        !installed.status.success() && !Path::new("/etc/vigil").exists(),
        "vigil is installed on this machine (or /etc/vigil exists): this test would replace it"
    );
    ensure_cargo_deb();
    // The binaries this test build made (debug; the packaging script
    // builds release): cargo-deb packs them, it does not build.
    for program in [
        "vigil-server",
        "vigil-client",
        "vigilctl",
        "vigil-module-host",
    ] {
        assert!(bin(program).exists(), "{program} is not built");
    }
    let out_dir = tempfile::tempdir().expect("tempdir");
    let mut debs = Vec::new();
    for package in ["vigil-server-bin", "vigil-client-bin"] {
        let out = run(Command::new(cargo())
            .current_dir(workspace())
            .args(["deb", "--no-build", "--profile", "dev", "-p", package, "-o"])
            .arg(out_dir.path()));
        assert!(
            out.status.success(),
            "cargo deb -p {package}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for entry in std::fs::read_dir(out_dir.path()).expect("read the output") {
        debs.push(entry.expect("entry").path());
    }
    assert_eq!(debs.len(), 2, "{debs:?}");

    let _cleanup = Installed;
    dpkg_install(&debs);

    // A system user without a login shell, and its directories.
    let passwd = String::from_utf8(run(Command::new("getent").args(["passwd", "vigil"])).stdout)
        .expect("utf-8");
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    assert_eq!(fields.len(), 7, "{passwd}");
    let uid: u32 = fields[2].parse().expect("uid");
    assert!(uid < 1000, "not a system user: {passwd}");
    assert_eq!(fields[6], "/usr/sbin/nologin", "{passwd}");
    assert_eq!(mode("/etc/vigil"), 0o700);
    assert_eq!(owner("/etc/vigil"), uid);
    assert_eq!(mode("/etc/vigil/server.key"), 0o600);
    assert_eq!(mode("/etc/vigil/authority.key"), 0o600);
    assert_eq!(mode("/var/lib/vigil"), 0o750);
    assert_eq!(owner("/var/lib/vigil"), uid);
    assert!(Path::new("/var/lib/vigil/mods").is_dir());
    for unit in ["vigil-server.service", "vigil-client.service"] {
        let shipped =
            std::fs::read(workspace().join("packaging/systemd").join(unit)).expect("unit");
        let installed =
            std::fs::read(Path::new("/lib/systemd/system").join(unit)).expect("installed unit");
        assert_eq!(shipped, installed, "{unit}");
    }

    // Installed again (an upgrade): the identity is kept.
    let server_crt = std::fs::read("/etc/vigil/server.crt").expect("server.crt");
    dpkg_install(&debs);
    assert_eq!(
        std::fs::read("/etc/vigil/server.crt").expect("server.crt"),
        server_crt,
        "a reinstall replaced the identity"
    );

    // The installed programs, as the vigil user, against each other.
    // setpriv execs the program itself: signals reach it, not a wrapper.
    let as_vigil = |program: &str| {
        let mut cmd = Command::new("setpriv");
        cmd.args([
            "--reuid=vigil",
            "--regid=vigil",
            "--init-groups",
            "--",
            program,
        ]);
        cmd
    };
    let mut server_cmd = as_vigil("/usr/bin/vigil-server");
    server_cmd.args([
        "--config",
        "/etc/vigil/server.toml",
        "--port",
        "0",
        "--http-port",
        "0",
    ]);
    let server = Proc::spawn(&mut server_cmd, "server");
    let addr = bound_blocking(&server, Listener::Tls, START);
    let api = bound_blocking(&server, Listener::Rest, START);
    let mut client_cmd = as_vigil("/usr/bin/vigil-client");
    client_cmd
        .args(["--config", "/etc/vigil/client.toml", "--server"])
        .arg(addr.to_string());
    let client = Proc::spawn(&mut client_cmd, "client");
    client.wait_for("server modules synced", 1, START);
    let out = run(Command::new("/usr/bin/vigilctl")
        .args(["send", "echo", "--wait", "10", "--api"])
        .arg(format!("http://{api}"))
        .args(["--data-dir", "/var/lib/vigil/server"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).expect("answer");
    assert_eq!(answer["results"][0]["status"], "done", "{answer}");
    assert_eq!(
        answer["results"][0]["result"], "vigil says hello",
        "{answer}"
    );
    // The audit log is where the unit lets the server write.
    assert!(Path::new("/var/lib/vigil/server/audit.jsonl").is_file());
    drop(client);
    let status = server.terminate(Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
}

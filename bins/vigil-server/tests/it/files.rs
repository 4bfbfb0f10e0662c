//! Hostile module files and malformed trust, key and config files, at
//! start and while the server runs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vigil_client::{ClientConfig, ClientError, Connection};
use vigil_proto::ErrorCode;
use vigil_test_support::wait::{WAIT, eventually};

use crate::support::{Deployment, bin, write_atomically};

/// Builds a module crate of the workspace once per test process; a
/// private copy of its dylib.
pub(crate) fn module(crate_dir: &str, features: &[&str]) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    vigil_modules::dev::build_once(
        &root.join(crate_dir),
        features,
        Path::new(env!("CARGO_TARGET_TMPDIR")),
    )
    .expect("module builds")
}

/// Copies `bytes` into the mods directory under `name` (temporary name,
/// then rename, as a deploy does).
fn deploy(dep: &Deployment, name: &str, bytes: &[u8]) {
    write_atomically(&dep.path("mods").join(name), bytes);
}

async fn connect(dep: &Deployment) -> Connection {
    let config = dep.client_config();
    Connection::connect(&config).await.expect("connect")
}

/// The sum the server lists for `name`, once it does.
async fn listed(conn: &Connection, name: &str) -> String {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let modules = conn.sync().await.expect("sync");
        if let Some(m) = modules.iter().find(|m| m.name == name) {
            return m.sum.clone();
        }
        assert!(std::time::Instant::now() < deadline, "{name} never listed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The names of the modules the server lists.
async fn names(conn: &Connection) -> Vec<String> {
    conn.sync()
        .await
        .expect("sync")
        .into_iter()
        .map(|m| m.name)
        .collect()
}

fn server_error(result: Result<String, ClientError>) -> vigil_proto::ErrorBody {
    match result {
        Err(ClientError::Server(body)) => body,
        other => panic!("expected an err frame, got {other:?}"),
    }
}

/// M01–M06: hostile files dropped into the mods directory are rejected
/// with a reason; the good version keeps serving, and nothing hostile is
/// listed.
#[tokio::test]
async fn m01_to_m06_hostile_module_files_are_rejected() {
    let dep = Deployment::start(&[]).await;
    let hello = std::fs::read(module("mods/hello", &[])).expect("hello");
    deploy(&dep, "hello.so", &hello);
    let conn = connect(&dep).await;
    let sum = listed(&conn, "hello.so").await;
    assert_eq!(
        conn.exec("hello.so", "a", &sum).await.expect("runs"),
        "Hello, a!"
    );
    let rss = dep.server.rss_kib();
    let rejected = dep.metric("vigil_module_events_total{event=\"rejected\"}");

    // M01 a truncated build over a good one; M02 garbage; M03 a module of
    // another ABI version; M04 an empty file; M05 a directory with a
    // module's name; M06 a file past the 32 MiB limit.
    deploy(&dep, "hello.so", &hello[..hello.len() / 2]);
    deploy(
        &dep,
        "junk.so",
        b"MZ\x90\x00 not an ELF file, nor anything else",
    );
    let abi =
        std::fs::read(module("crates/vigil-modules/tests/fixture", &["wrong-abi"])).expect("abi");
    deploy(&dep, "abi.so", &abi);
    deploy(&dep, "empty.so", b"");
    std::fs::create_dir(dep.path("mods").join("dir.so")).expect("mkdir");
    let big = std::fs::File::create(dep.path("mods").join(".big.tmp")).expect("create");
    big.set_len(40 << 20).expect("sparse 40 MiB");
    drop(big);
    std::fs::rename(
        dep.path("mods").join(".big.tmp"),
        dep.path("mods").join("big.so"),
    )
    .expect("rename");
    eventually("every hostile file rejected", || {
        dep.metric("vigil_module_events_total{event=\"rejected\"}") >= rejected + 5
    })
    .await;
    for (name, reason) in [
        ("hello.so", "module rejected"),
        ("junk.so", "module rejected"),
        ("abi.so", "ABI"),
        ("big.so", "limit"),
    ] {
        assert!(
            dep.server.logged(name) && dep.server.logged(reason),
            "{name}: no rejection logged with {reason:?}"
        );
    }
    // The good hello keeps serving; nothing hostile is listed.
    assert_eq!(
        conn.exec("hello.so", "b", &sum).await.expect("runs"),
        "Hello, b!"
    );
    assert_eq!(names(&conn).await, vec!["hello.so".to_owned()]);
    dep.assert_serving().await;
    dep.assert_memory_bounded(rss, 8 * 1024);
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(status.success(), "mkfifo {}", path.display());
}

/// M09: a FIFO with a module's name, in the mods directory at start and
/// renamed in while the server runs (opening one for reading blocks until
/// a writer comes): the server starts, skips it as not a regular file, and
/// hot reload goes on (a module deployed after it is loaded and served).
#[tokio::test]
async fn m09_a_fifo_in_the_mods_directory_is_skipped() {
    let dep = Deployment::start_after(&[], |dir| mkfifo(&dir.join("mods/pipe.so"))).await;
    dep.server.wait_logged("pipe.so").await;
    mkfifo(&dep.path("mods/.later.tmp"));
    std::fs::rename(dep.path("mods/.later.tmp"), dep.path("mods/later.so")).expect("rename");
    let hello = std::fs::read(module("mods/hello", &[])).expect("hello");
    deploy(&dep, "hello.so", &hello);
    let conn = connect(&dep).await;
    let sum = listed(&conn, "hello.so").await;
    assert_eq!(
        conn.exec("hello.so", "fifo", &sum).await.expect("runs"),
        "Hello, fifo!"
    );
    assert_eq!(names(&conn).await, vec!["hello.so".to_owned()]);
    assert!(
        dep.server.logged("later.so"),
        "the second FIFO was looked at and skipped"
    );
    dep.assert_serving().await;
}

/// M07, M08: a module that panics or hangs gets an error frame; the server
/// and other runs go on.
#[tokio::test]
async fn m07_m08_panicking_and_hanging_modules_answer_errors() {
    let dep = Deployment::start(&["--exec-timeout", "1"]).await;
    let fixture = std::fs::read(module("crates/vigil-modules/tests/fixture", &[])).expect("fx");
    deploy(&dep, "fx.so", &fixture);
    let conn = connect(&dep).await;
    let sum = listed(&conn, "fx.so").await;
    let panicked = server_error(conn.exec("fx.so", "panic", &sum).await);
    assert_eq!(panicked.code, ErrorCode::ExecFailed, "{}", panicked.message);
    assert!(
        panicked.message.contains("panicked"),
        "{}",
        panicked.message
    );
    // A hung run times out; meanwhile another connection is served.
    let other = connect(&dep).await;
    let hung = tokio::spawn(async move { conn.exec("fx.so", "sleep 5000", &sum).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sum = listed(&other, "fx.so").await;
    assert_eq!(
        other.exec("fx.so", "ok", &sum).await.expect("runs"),
        "v1: ok"
    );
    let hung = server_error(hung.await.expect("join"));
    assert_eq!(hung.code, ErrorCode::ExecTimeout, "{}", hung.message);
    dep.assert_serving().await;
}

/// T01–T05: malformed trust, key, authorities, identity and config files
/// at start: exit status 2 and a message that names the file.
#[tokio::test]
async fn t01_to_t05_malformed_files_at_start_exit_2_naming_the_file() {
    let dep = Deployment::start(&[]).await;
    let bad = |name: &str, bytes: &[u8]| {
        let path = dep.path(name);
        std::fs::write(&path, bytes).expect("write");
        path.display().to_string()
    };
    let cases = [
        (
            "T01 trust file",
            "--trusted-keys",
            bad("bad-trust.json", b"{\"trusted_fingerprints\": [\"zz\"]}"),
        ),
        (
            "T02 authority key",
            "--authority-key",
            bad("bad-authority.key", b"not base64 !!"),
        ),
        (
            "T03 authorities file",
            "--authorities",
            bad("bad-authorities.json", b"{\"authorities\": [{}]}"),
        ),
        (
            "T04 certificate",
            "--cert",
            bad("bad.crt", b"-----BEGIN CERTIFICATE-----\ngarbage\n"),
        ),
        (
            "T05 config file",
            "--config",
            bad("bad.toml", b"port = 1\nno_such_setting = true\n"),
        ),
    ];
    for (case, flag, path) in cases {
        let mut cmd = Command::new(bin("vigil-server"));
        if flag != "--config" {
            cmd.arg("--config").arg(dep.path("server.toml"));
        }
        // Its own data directory: the running server holds the audit log.
        let out = cmd
            .args([flag, &path])
            .arg("--data-dir")
            .arg(dep.path("other-data"))
            // Port 0: never the running server's ports, should it start.
            .args(["--port", "0", "--http-port", "0"])
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{case}: {stderr}");
        assert!(
            stderr.contains(&path),
            "{case}: the message names the file: {stderr}"
        );
    }
    // The running server was not disturbed.
    dep.assert_serving().await;
}

/// T06 (and fault F09): the trust file replaced by garbage while the
/// server runs: the last good list stays in force (the client still connects, a stranger
/// is still refused); a valid edit then applies at once.
#[tokio::test]
async fn t06_a_trust_file_turned_to_garbage_keeps_the_last_good_list() {
    let dep = Deployment::start(&[]).await;
    let trusted = dep.trusted();
    write_atomically(
        &dep.path("trusted-keys.json"),
        b"{\"trusted_fingerprints\": [",
    );
    dep.server
        .wait_logged("trust file is invalid; keeping the last good list")
        .await;
    dep.assert_serving().await;
    // The server still refuses whoever it refused.
    let stranger = vigil_auth::GeneratedIdentity::generate("x")
        .expect("identity")
        .identity()
        .expect("identity");
    let config = ClientConfig::new(dep.addr().to_string(), stranger, dep.server_fingerprint());
    assert!(Connection::connect(&config).await.is_err());
    // A valid file without the client: its session closes, it is refused.
    let conn = connect(&dep).await;
    dep.write_trust(&[]);
    let _ = tokio::time::timeout(WAIT, conn.closed()).await;
    let config = dep.client_config();
    assert!(Connection::connect(&config).await.is_err(), "revoked");
    dep.write_trust(&trusted);
    eventually("trusted again", || dep.server.logged("fingerprint added")).await;
    dep.assert_serving().await;
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// T07: files anyone may write. `vigilctl init` under umask 000 makes its
/// directories 0700 (not 0777); a server or client whose trust file,
/// authorities file, keys, config, mods or data directory is writable by
/// others refuses to start (exit 2, naming the path); a trust file made
/// writable by others while the server runs is not reloaded; a module file
/// writable by others is not loaded.
#[tokio::test]
async fn t07_files_writable_by_others_are_refused() {
    // init under umask 000.
    let scratch = tempfile::tempdir().expect("tempdir");
    let dir = scratch.path().join("init");
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000 && exec {:?} init {:?}",
            bin("vigilctl"),
            dir
        ))
        .output()
        .expect("vigilctl init");
    assert!(out.status.success(), "{out:?}");
    for sub in ["", "mods", "client-state"] {
        let path = dir.join(sub);
        assert_eq!(mode_of(&path), 0o700, "{}", path.display());
    }
    for name in [
        "server.key",
        "client.key",
        "authority.key",
        "operator.key",
        "trusted-keys.json",
        "authorities.json",
        "server.toml",
        "client.toml",
    ] {
        let mode = mode_of(&dir.join(name));
        assert_eq!(mode & 0o022, 0, "{name} is mode {mode:o}");
    }

    let dep = Deployment::start(&[]).await;
    // Started with a path others may write, a program exits 2 and says
    // which path and why.
    let refuses = |program: &str, what: &str, path: &Path| {
        let mut cmd = Command::new(bin(program));
        if program == "vigil-server" {
            cmd.arg("--config")
                .arg(dep.path("server.toml"))
                .arg("--data-dir")
                .arg(dep.path("other-data"))
                .args(["--port", "0", "--http-port", "0"]);
        } else {
            cmd.arg("--config").arg(dep.path("client.toml")).arg("sync");
        }
        let out = cmd.output().expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{program}, {what}: {stderr}");
        assert!(
            stderr.contains(&path.display().to_string()) && stderr.contains("writable by others"),
            "{program}, {what}: the message names the path and says why: {stderr}"
        );
    };
    for (program, what, name, mode) in [
        ("vigil-server", "trust file", "trusted-keys.json", 0o666),
        (
            "vigil-server",
            "authorities file",
            "authorities.json",
            0o666,
        ),
        ("vigil-server", "TLS key", "server.key", 0o602),
        ("vigil-server", "authority key", "authority.key", 0o602),
        ("vigil-server", "config file", "server.toml", 0o666),
        ("vigil-server", "mods directory", "mods", 0o777),
        ("vigil-client", "TLS key", "client.key", 0o602),
        (
            "vigil-client",
            "authorities file",
            "authorities.json",
            0o666,
        ),
        ("vigil-client", "config file", "client.toml", 0o666),
        ("vigil-client", "state directory", "client-state", 0o777),
    ] {
        let path = dep.path(name);
        let before = mode_of(&path);
        chmod(&path, mode);
        refuses(program, what, &path);
        chmod(&path, before);
    }
    std::fs::create_dir_all(dep.path("other-data")).expect("mkdir");
    chmod(&dep.path("other-data"), 0o777);
    refuses("vigil-server", "data directory", &dep.path("other-data"));

    // While running: a trust file anyone may write is not reloaded.
    let stranger = vigil_auth::GeneratedIdentity::generate("x")
        .expect("identity")
        .identity()
        .expect("identity");
    let mut trusted = dep.trusted();
    trusted.push(stranger.fingerprint());
    let trust = dep.path("trusted-keys.json");
    chmod(&trust, 0o666);
    std::fs::write(
        &trust,
        vigil_auth::TrustFile {
            trusted_fingerprints: trusted,
        }
        .to_json(),
    )
    .expect("rewrite in place");
    dep.server.wait_logged("writable by others").await;
    let config = ClientConfig::new(dep.addr().to_string(), stranger, dep.server_fingerprint());
    assert!(
        Connection::connect(&config).await.is_err(),
        "the stranger added to a file anyone may write is still refused"
    );

    // A module file anyone may write is not loaded.
    let hello = std::fs::read(module("mods/hello", &[])).expect("hello");
    let tmp = dep.path("mods/.open.tmp");
    std::fs::write(&tmp, &hello).expect("write");
    chmod(&tmp, 0o666);
    std::fs::rename(&tmp, dep.path("mods/open.so")).expect("rename");
    eventually("the module writable by others is rejected", || {
        dep.server.logged("open.so") && dep.server.logged("writable by")
    })
    .await;
    let conn = connect(&dep).await;
    assert!(conn.sync().await.expect("sync").is_empty());
    dep.assert_serving().await;
}

/// Whether `pid` runs (a zombie waiting to be reaped does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|rest| rest.trim_start().to_owned())
        })
        .is_some_and(|rest| !rest.starts_with('Z') && !rest.starts_with('X'))
}

/// The pid of `module`'s host, from `GET /v1/modules`.
fn host_pid(dep: &Deployment, module: &str) -> Option<u32> {
    let (status, body) = dep.http("GET", "/v1/modules", Some(&dep.token), None);
    assert_eq!(status, 200, "{body}");
    body["modules"]
        .as_array()?
        .iter()
        .find(|m| m["mod"] == module)?["host"]["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
}

/// M19: a module that dereferences null, aborts, exits, allocates 4 GiB,
/// opens a socket or spins. Each was fatal to the whole server while
/// modules ran inside it (a null dereference ended `vigil-server` with
/// SIGSEGV, exit 139); now each costs its call an error frame with its
/// code and restarts the module's host. The server, another connection and
/// another module go on, and the module answers again after.
#[tokio::test]
async fn m19_a_module_that_crashes_costs_only_its_call_and_its_host() {
    let dep = Deployment::start(&["--exec-timeout", "1"]).await;
    let fixture = std::fs::read(module("crates/vigil-modules/tests/fixture", &[])).expect("fx");
    deploy(&dep, "fx.so", &fixture);
    deploy(&dep, "other.so", &fixture);
    let conn = connect(&dep).await;
    let bystander = connect(&dep).await;
    let sum = listed(&conn, "fx.so").await;
    listed(&conn, "other.so").await;
    let other_host = host_pid(&dep, "other.so").expect("other.so has a host");
    for (args, code, needle) in [
        ("segfault", ErrorCode::ModuleCrashed, "SIGSEGV"),
        ("abort", ErrorCode::ModuleCrashed, "SIGABRT"),
        ("exit", ErrorCode::ModuleCrashed, "exit status: 3"),
        (
            "alloc",
            ErrorCode::ModuleLimit,
            "memory allocation of 4294967296 bytes failed",
        ),
        ("socket", ErrorCode::ModuleCrashed, "SIGSYS"),
        ("spin", ErrorCode::ExecTimeout, "timeout"),
    ] {
        let before = host_pid(&dep, "fx.so").expect("fx.so has a host");
        let error = server_error(conn.exec("fx.so", args, &sum).await);
        assert_eq!(error.code, code, "{args}: {}", error.message);
        assert!(error.message.contains(needle), "{args}: {}", error.message);
        // Its host is gone (a spinning one was killed: its CPU is back),
        // and the module answers again from a new one.
        eventually(&format!("{args}: the old host is gone"), || !alive(before)).await;
        assert_eq!(
            conn.exec("fx.so", "again", &sum)
                .await
                .expect("answers again"),
            "v1: again"
        );
        assert_eq!(
            bystander
                .exec("other.so", &format!("after {args}"), &sum)
                .await
                .expect("the other module"),
            format!("v1: after {args}")
        );
    }
    assert_eq!(host_pid(&dep, "other.so"), Some(other_host));
    let (_, body) = dep.http("GET", "/v1/modules", Some(&dep.token), None);
    let fx = body["modules"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["mod"] == "fx.so"))
        .cloned()
        .expect("fx.so listed");
    assert_eq!(fx["host"]["state"], "failing", "{fx}");
    assert_eq!(fx["host"]["crashes"], 5, "{fx}");
    assert_eq!(fx["host"]["timeouts"], 1, "{fx}");
    assert_eq!(dep.metric("vigil_module_failing{module=\"fx.so\"}"), 1);
    assert_eq!(dep.metric("vigil_module_failing{module=\"other.so\"}"), 0);
    assert_eq!(
        dep.metric("vigil_module_host_crashes_total{module=\"fx.so\"}"),
        5
    );
    assert!(
        dep.server
            .logged("module output: memory allocation of 4294967296 bytes failed")
    );
    dep.assert_serving().await;
}

/// F13: the server killed with SIGKILL (no chance to stop anything): its
/// module hosts die with it (`PR_SET_PDEATHSIG`) rather than linger.
#[tokio::test]
async fn f13_module_hosts_die_with_a_killed_server() {
    let dep = Deployment::start(&[]).await;
    let fixture = std::fs::read(module("crates/vigil-modules/tests/fixture", &[])).expect("fx");
    deploy(&dep, "fx.so", &fixture);
    deploy(&dep, "other.so", &fixture);
    let conn = connect(&dep).await;
    listed(&conn, "fx.so").await;
    listed(&conn, "other.so").await;
    let hosts = [
        host_pid(&dep, "fx.so").expect("host"),
        host_pid(&dep, "other.so").expect("host"),
    ];
    assert!(hosts.iter().all(|p| alive(*p)));
    dep.server.signal(rustix::process::Signal::KILL);
    eventually("the module hosts die with their server", || {
        hosts.iter().all(|p| !alive(*p))
    })
    .await;
}

/// M20: a module that prints 10,000 lines in one call, or returns a
/// 17 MiB result: the server's log takes a burst of its output and then
/// counts what it leaves out, and the result is refused with
/// `module_limit` while the host stays up.
#[tokio::test]
async fn m20_module_output_and_results_are_bounded() {
    let dep = Deployment::start(&[]).await;
    let fixture = std::fs::read(module("crates/vigil-modules/tests/fixture", &[])).expect("fx");
    deploy(&dep, "fx.so", &fixture);
    let conn = connect(&dep).await;
    let sum = listed(&conn, "fx.so").await;
    let host = host_pid(&dep, "fx.so");
    assert_eq!(
        conn.exec("fx.so", "spam", &sum).await.expect("runs"),
        "spammed"
    );
    let big = server_error(conn.exec("fx.so", "big", &sum).await);
    assert_eq!(big.code, ErrorCode::ModuleLimit, "{}", big.message);
    assert_eq!(host_pid(&dep, "fx.so"), host, "the host stays up");
    dep.server.wait_logged("module output not logged").await;
    let logged = dep.server.count("module output: spam line");
    assert!(logged <= 100, "{logged} lines of module output logged");
    assert!(logged >= 10, "{logged}");
    dep.assert_serving().await;
}

/// M21: what a module may do is set per module in `server.toml`: the
/// module named in `[sandbox."writer.so"]` may write beneath the directory
/// it lists, the same bytes under another name may not; a table that
/// names a path that does not exist, or a field that is not a setting,
/// stops the server at start (exit 2, naming the problem).
#[tokio::test]
async fn m21_sandbox_settings_in_the_config_file() {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let allowed = out_dir.path().display().to_string();
    let dep = Deployment::start_after(&[], |dir| {
        let config = dir.join("server.toml");
        let mut text = std::fs::read_to_string(&config).expect("server.toml");
        text.push_str(&format!(
            "\n[sandbox.\"writer.so\"]\nwrite_paths = [{allowed:?}]\nmemory_mib = 256\n"
        ));
        std::fs::write(&config, text).expect("write");
    })
    .await;
    let fixture = std::fs::read(module("crates/vigil-modules/tests/fixture", &[])).expect("fx");
    deploy(&dep, "fx.so", &fixture);
    deploy(&dep, "writer.so", &fixture);
    let conn = connect(&dep).await;
    let sum = listed(&conn, "fx.so").await;
    listed(&conn, "writer.so").await;
    let target = out_dir.path().join("note.txt");
    let write = format!("write {}", target.display());
    let denied = server_error(conn.exec("fx.so", &write, &sum).await);
    assert_eq!(denied.code, ErrorCode::ExecFailed, "{}", denied.message);
    assert!(
        denied.message.contains("ermission denied"),
        "{}",
        denied.message
    );
    assert!(!target.exists());
    assert_eq!(
        conn.exec("writer.so", &write, &sum).await.expect("allowed"),
        "wrote"
    );
    assert!(target.exists());
    // 256 MiB for writer.so: the 4 GiB allocation fails there too.
    let limit = server_error(conn.exec("writer.so", "alloc", &sum).await);
    assert_eq!(limit.code, ErrorCode::ModuleLimit, "{}", limit.message);
    assert!(limit.message.contains("256 MiB"), "{}", limit.message);

    for (table, needle) in [
        (
            "[sandbox.\"x.so\"]\nwrite_paths = [\"/no/such/dir\"]\n",
            "/no/such/dir does not exist",
        ),
        (
            "[sandbox.\"x.so\"]\nnetwork = true\nsockets = 3\n",
            "sockets",
        ),
        (
            "[sandbox.\"notes.txt\"]\nnetwork = true\n",
            "not a module file name",
        ),
    ] {
        let config = dep.path("bad-sandbox.toml");
        let base = std::fs::read_to_string(dep.path("server.toml")).expect("server.toml");
        std::fs::write(&config, format!("{base}\n{table}")).expect("write");
        let out = Command::new(bin("vigil-server"))
            .arg("--config")
            .arg(&config)
            .output()
            .expect("run");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{table}: {stderr}");
        assert!(stderr.contains(needle), "{table}: {stderr}");
    }
    dep.assert_serving().await;
}

/// M22: a module that goes after the server itself: reads its authority
/// key, makes its trust file writable by all, lowers its open-file limit
/// (`prlimit64` on the server's pid), stops it (`tgkill`). The read is
/// refused by Landlock; the others are system calls the allowlist does not
/// have, which end the host with SIGSYS. The key stays secret, the file
/// mode and the server's limits are unchanged, and the server serves.
#[tokio::test]
async fn m22_a_module_cannot_reach_the_server_or_its_files() {
    let dep = Deployment::start(&[]).await;
    let fixture = std::fs::read(module("crates/vigil-modules/tests/fixture", &[])).expect("fx");
    deploy(&dep, "fx.so", &fixture);
    let conn = connect(&dep).await;
    let sum = listed(&conn, "fx.so").await;
    let limits =
        || std::fs::read_to_string(format!("/proc/{}/limits", dep.server.pid())).expect("limits");
    let before = limits();
    let key = dep.path("authority.key");
    let read = server_error(
        conn.exec("fx.so", &format!("read {}", key.display()), &sum)
            .await,
    );
    assert_eq!(read.code, ErrorCode::ExecFailed, "{}", read.message);
    assert!(
        read.message.contains("ermission denied"),
        "{}",
        read.message
    );
    let trust = dep.path("trusted-keys.json");
    let mode = || {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::metadata(&trust)
            .expect("stat")
            .permissions()
            .mode()
    };
    let trust_mode = mode();
    for args in [
        format!("chmod {}", trust.display()),
        "prlimit-parent".to_owned(),
        "signal-parent".to_owned(),
    ] {
        let error = server_error(conn.exec("fx.so", &args, &sum).await);
        assert_eq!(
            error.code,
            ErrorCode::ModuleCrashed,
            "{args}: {}",
            error.message
        );
        assert_eq!(error.signal.as_deref(), Some("SIGSYS"), "{args}");
    }
    assert_eq!(mode(), trust_mode);
    assert_eq!(limits(), before);
    dep.assert_serving().await;
}

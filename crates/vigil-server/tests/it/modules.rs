//! Modules end to end: real dylibs built from `mods/hello` and the registry's
//! test fixture, a real server, real clients.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;
use tokio_util::sync::CancellationToken;
use vigil_auth::GeneratedIdentity;
use vigil_client::{Client, ClientError, ClientEvent, Connection};
use vigil_modules::{ModuleRegistry, ModuleWatcher, RegistryConfig, dev};
use vigil_proto::ErrorCode;

use crate::support::{self, TestServer, client_config, raw_tls, read_frame};

/// Builds a module crate (path relative to the workspace root) once per
/// test process and returns a private copy of its dylib.
pub(crate) fn build(crate_dir: &str, features: &[&str]) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    dev::build_once(
        &root.join(crate_dir),
        features,
        Path::new(env!("CARGO_TARGET_TMPDIR")),
    )
    .expect("module builds")
}

struct ModServer {
    server: TestServer,
    registry: ModuleRegistry,
    mods: tempfile::TempDir,
    _watch: ModuleWatcher,
}

impl ModServer {
    async fn start(trusted: &[vigil_auth::Fingerprint], exec_timeout: Duration) -> ModServer {
        let mods = tempfile::tempdir().expect("tempdir");
        let mut config = RegistryConfig::new(mods.path());
        config.exec_timeout = exec_timeout;
        let registry = ModuleRegistry::open(config).expect("registry");
        let watch = registry.watch().expect("watch");
        let server = TestServer::start_with(trusted, |c| c.modules = Some(registry.clone())).await;
        ModServer {
            server,
            registry,
            mods,
            _watch: watch,
        }
    }

    fn deploy(&self, src: &Path, name: &str) {
        dev::deploy(src, self.mods.path(), name).expect("deploy");
    }
}

struct RunningClient {
    client: Arc<Client>,
    events: tokio::sync::broadcast::Receiver<ClientEvent>,
    stop: CancellationToken,
}

impl RunningClient {
    async fn start(server: &TestServer, id: &GeneratedIdentity) -> RunningClient {
        let client = Arc::new(Client::new(client_config(server, id)));
        let mut events = client.subscribe();
        let stop = CancellationToken::new();
        tokio::spawn({
            let (client, stop) = (client.clone(), stop.clone());
            async move { client.run(stop).await }
        });
        support::next_event(&mut events, |e| matches!(e, ClientEvent::Synced { .. })).await;
        RunningClient {
            client,
            events,
            stop,
        }
    }

    async fn trusted(&mut self, name: &str) -> vigil_proto::ModuleInfo {
        let event = support::next_event(
            &mut self.events,
            |e| matches!(e, ClientEvent::ModuleTrusted(m) if m.name == name),
        )
        .await;
        let ClientEvent::ModuleTrusted(info) = event else {
            unreachable!("filtered above")
        };
        info
    }
}

impl Drop for RunningClient {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn sha256_hex(path: &Path) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(std::fs::read(path).expect("read")))
}

#[tokio::test]
async fn load_reload_and_unload_reach_clients_which_reverify() {
    let (v1, v2) = (build("mods/hello", &[]), build("mods/hello", &["formal"]));
    let id = GeneratedIdentity::generate("c").expect("identity");
    let ms = ModServer::start(&[id.fingerprint], Duration::from_secs(10)).await;
    let mut rc = RunningClient::start(&ms.server, &id).await;

    // Renamed into the watched directory: announced, verified, runnable.
    ms.deploy(&v1, "hello.so");
    let first = rc.trusted("hello.so").await;
    assert_eq!(first.sum, sha256_hex(&v1));
    assert_eq!(first.desc, "A simple module that says hello to a name.");
    assert_eq!(
        rc.client.exec("hello.so", "world").await.expect("exec"),
        "Hello, world!"
    );

    // Replaced by a build that answers differently: modreload, re-verified.
    ms.deploy(&v2, "hello.so");
    let second = rc.trusted("hello.so").await;
    assert_eq!(second.sum, sha256_hex(&v2));
    assert_ne!(second.sum, first.sum);
    assert_eq!(
        rc.client.exec("hello.so", "world").await.expect("exec"),
        "Good day to you, world."
    );
    // An exec that still carries the old sum is refused, and nothing runs.
    let conn = Connection::connect(&client_config(&ms.server, &id))
        .await
        .expect("connect");
    let stale = conn.exec("hello.so", "world", &first.sum).await;
    match stale {
        Err(ClientError::Server(body)) => {
            assert_eq!(body.code, ErrorCode::StaleSum);
            assert!(body.message.contains("verify it again"), "{}", body.message);
        }
        other => panic!("expected stale_sum, got {other:?}"),
    }

    // Deleted: modunload, forgotten, exec fails clearly.
    std::fs::remove_file(ms.mods.path().join("hello.so")).expect("remove");
    support::next_event(
        &mut rc.events,
        |e| matches!(e, ClientEvent::ModuleForgotten { module } if module == "hello.so"),
    )
    .await;
    let err = rc
        .client
        .exec("hello.so", "world")
        .await
        .expect_err("forgotten");
    assert!(matches!(err, ClientError::NotTrusted(_)), "{err}");
    match conn.exec("hello.so", "world", &second.sum).await {
        Err(ClientError::Server(body)) => assert_eq!(body.code, ErrorCode::UnknownModule),
        other => panic!("expected unknown_module, got {other:?}"),
    }
}

#[tokio::test]
async fn modules_loaded_before_the_client_connects_are_verified_on_connect() {
    let id = GeneratedIdentity::generate("c").expect("identity");
    let ms = ModServer::start(&[id.fingerprint], Duration::from_secs(10)).await;
    ms.deploy(&build("mods/hello", &[]), "hello.so");
    ms.deploy(&build("mods/uname", &[]), "uname.so");
    support::eventually(|| ms.registry.list().len() == 2).await;
    let mut rc = RunningClient::start(&ms.server, &id).await;
    rc.trusted("hello.so").await;
    rc.trusted("uname.so").await;
    let uname = rc.client.exec("uname.so", "").await.expect("uname runs");
    let info: serde_json::Value = serde_json::from_str(&uname).expect("uname returns JSON");
    assert_eq!(info["machine"], std::env::consts::ARCH);
}

#[tokio::test]
async fn bad_modules_and_bad_runs_leave_the_server_up() {
    let id = GeneratedIdentity::generate("c").expect("identity");
    let ms = ModServer::start(&[id.fingerprint], Duration::from_secs(2)).await;
    let hello = build("mods/hello", &[]);
    ms.deploy(&hello, "hello.so");
    let fixture = build("crates/vigil-modules/tests/fixture", &[]);
    ms.deploy(&fixture, "fx.so");
    support::eventually(|| ms.registry.list().len() == 2).await;
    let rc = RunningClient::start(&ms.server, &id).await;
    // Wait until both are verified (they may already be).
    support::eventually(|| rc.client.trusted_modules().len() == 2).await;

    // Hostile files dropped into mods: rejected, the good version serves.
    let bytes = std::fs::read(&hello).expect("read");
    let scratch = tempfile::tempdir().expect("tempdir");
    let truncated = scratch.path().join("t");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    let garbage = scratch.path().join("g");
    std::fs::write(
        &garbage,
        b"MZ this is not an ELF file at all......................................",
    )
    .expect("write");
    ms.deploy(&truncated, "hello.so");
    ms.deploy(&garbage, "junk.so");
    ms.deploy(
        &build("crates/vigil-modules/tests/fixture", &["wrong-abi"]),
        "abi.so",
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        rc.client.exec("hello.so", "still").await.expect("served"),
        "Hello, still!"
    );

    // A module that panics, fails, or hangs: an error frame each.
    let conn = Connection::connect(&client_config(&ms.server, &id))
        .await
        .expect("connect");
    let sum = sha256_hex(&fixture);
    for (args, code, needle) in [
        (
            "panic",
            ErrorCode::ExecFailed,
            "panicked: fixture asked to panic",
        ),
        ("fail", ErrorCode::ExecFailed, "fixture asked to fail"),
        ("sleep 4000", ErrorCode::ExecTimeout, "timeout"),
    ] {
        match conn.exec("fx.so", args, &sum).await {
            Err(ClientError::Server(body)) => {
                assert_eq!(body.code, code, "{args}: {}", body.message);
                assert!(body.message.contains(needle), "{args}: {}", body.message);
            }
            other => panic!("{args}: expected an error frame, got {other:?}"),
        }
    }
    // Unknown module, verify of an unknown module: clear errors.
    match conn.verify("nope.so", None).await {
        Err(ClientError::Server(body)) => assert_eq!(body.code, ErrorCode::UnknownModule),
        other => panic!("expected unknown_module, got {other:?}"),
    }

    // And the server still serves, with the same module list.
    let listed: Vec<String> = conn
        .sync()
        .await
        .expect("sync")
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(listed, vec!["fx.so".to_owned(), "hello.so".to_owned()]);
    assert_eq!(
        rc.client.exec("hello.so", "after").await.expect("served"),
        "Hello, after!"
    );
}

#[tokio::test]
async fn verify_returns_the_exact_bytes_over_the_wire() {
    let id = GeneratedIdentity::generate("c").expect("identity");
    let ms = ModServer::start(&[id.fingerprint], Duration::from_secs(10)).await;
    let hello = build("mods/hello", &[]);
    ms.deploy(&hello, "hello.so");
    support::eventually(|| ms.registry.list().len() == 1).await;
    let (mut rd, mut wr) = tokio::io::split(raw_tls(&ms.server, &id).await);
    let mut buf = bytes::BytesMut::new();
    wr.write_all(b"mod:verify:v1 {\"mod\":\"hello.so\"}\n")
        .await
        .expect("write");
    let frame = read_frame(&mut rd, &mut buf).await.expect("answer");
    assert_eq!((frame.kind(), frame.reference()), ("verify_resp", "v1"));
    assert_eq!(frame.payload()["encoding"], "base64");
    assert_eq!(frame.payload()["sum"], sha256_hex(&hello).as_str());
    use base64::Engine as _;
    let content = base64::engine::general_purpose::STANDARD
        .decode(frame.payload()["content"].as_str().expect("content"))
        .expect("base64");
    assert_eq!(content, std::fs::read(&hello).expect("read"));
}

#[tokio::test]
async fn pipelined_execs_and_verifies_each_get_one_answer() {
    let id = GeneratedIdentity::generate("c").expect("identity");
    let ms = ModServer::start(&[id.fingerprint], Duration::from_secs(10)).await;
    let hello = build("mods/hello", &[]);
    ms.deploy(&hello, "hello.so");
    support::eventually(|| ms.registry.list().len() == 1).await;
    let sum = sha256_hex(&hello);
    let (mut rd, mut wr) = tokio::io::split(raw_tls(&ms.server, &id).await);
    // Many requests in one write: execs run in batches, verifies share
    // one encoded copy of the module; every REF is answered exactly once.
    let mut burst = Vec::new();
    for i in 0..300 {
        if i % 50 == 0 {
            burst.extend_from_slice(
                format!("mod:verify:v{i} {{\"mod\":\"hello.so\"}}\n").as_bytes(),
            );
        }
        burst.extend_from_slice(
            format!("mod:exec:e{i} {{\"mod\":\"hello.so\",\"args\":\"n{i}\",\"sum\":\"{sum}\"}}\n")
                .as_bytes(),
        );
    }
    burst.extend_from_slice(b"sys:ping:last {}\n");
    wr.write_all(&burst).await.expect("write");
    let mut buf = bytes::BytesMut::new();
    let mut seen = HashMap::new();
    loop {
        let frame = read_frame(&mut rd, &mut buf).await.expect("answer");
        let reference = frame.reference().to_owned();
        match frame.kind() {
            "exec_resp" => {
                let i = reference.trim_start_matches('e');
                assert_eq!(frame.payload()["result"], format!("Hello, n{i}!").as_str());
            }
            "verify_resp" => assert_eq!(frame.payload()["sum"], sum.as_str()),
            "pong" => {}
            other => panic!("unexpected {other}: {frame}"),
        }
        *seen.entry(reference).or_insert(0) += 1;
        if seen.len() == 300 + 6 + 1 {
            break;
        }
    }
    assert!(seen.values().all(|n| *n == 1), "{seen:?}");
}

/// A module with a bug takes down only its own host process: the call
/// gets an error frame with a stable code, every other session and module
/// keeps being served, and the module answers again after.
#[tokio::test]
async fn a_module_that_crashes_takes_down_only_its_host() {
    let id = GeneratedIdentity::generate("c").expect("identity");
    let ms = ModServer::start(&[id.fingerprint], Duration::from_secs(2)).await;
    let hello = build("mods/hello", &[]);
    ms.deploy(&hello, "hello.so");
    let fixture = build("crates/vigil-modules/tests/fixture", &[]);
    ms.deploy(&fixture, "fx.so");
    support::eventually(|| ms.registry.list().len() == 2).await;
    // A bystander: another client, verified and served throughout.
    let bystander = RunningClient::start(&ms.server, &id).await;
    support::eventually(|| bystander.client.trusted_modules().len() == 2).await;

    let conn = Connection::connect(&client_config(&ms.server, &id))
        .await
        .expect("connect");
    let sum = sha256_hex(&fixture);
    async fn host_pid(conn: &Connection, sum: &str) -> u32 {
        let pid = conn.exec("fx.so", "pid", sum).await.expect("pid");
        pid.parse::<u32>().expect("a pid")
    }
    let mut last = host_pid(&conn, &sum).await;
    assert_ne!(
        last,
        std::process::id(),
        "the module runs in a process of its own"
    );
    for (args, code, needle) in [
        ("segfault", ErrorCode::ModuleCrashed, "SIGSEGV"),
        ("abort", ErrorCode::ModuleCrashed, "SIGABRT"),
        ("exit", ErrorCode::ModuleCrashed, "exit status: 3"),
        ("alloc", ErrorCode::ModuleLimit, "memory allocation"),
        ("socket", ErrorCode::ModuleCrashed, "SIGSYS"),
        ("spin", ErrorCode::ExecTimeout, "timeout"),
    ] {
        match conn.exec("fx.so", args, &sum).await {
            Err(ClientError::Server(body)) => {
                assert_eq!(body.code, code, "{args}: {}", body.message);
                assert!(body.message.contains(needle), "{args}: {}", body.message);
                if needle.starts_with("SIG") {
                    assert_eq!(body.signal.as_deref(), Some(needle), "{args}");
                }
            }
            other => panic!("{args}: expected an error frame, got {other:?}"),
        }
        // The module answers again, from a new host; the old one is gone
        // (for `spin`: its CPU is given back).
        let now = host_pid(&conn, &sum).await;
        assert_ne!(now, last, "{args}");
        support::eventually(|| !Path::new(&format!("/proc/{last}")).exists()).await;
        last = now;
        assert_eq!(
            bystander
                .client
                .exec("hello.so", args)
                .await
                .expect("served"),
            format!("Hello, {args}!")
        );
    }
    // The module list is the same, and says the fixture is failing.
    let listed: Vec<(String, Option<String>)> = conn
        .sync()
        .await
        .expect("sync")
        .into_iter()
        .map(|m| (m.name, m.state))
        .collect();
    assert_eq!(
        listed,
        vec![
            ("fx.so".to_owned(), Some("failing".to_owned())),
            ("hello.so".to_owned(), None)
        ]
    );
    assert_eq!(
        conn.exec("fx.so", "back", &sum).await.expect("answers"),
        "v1: back"
    );
}

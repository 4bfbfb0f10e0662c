//! Signed module manifests against real processes: a `vigil-server` with
//! `module_keys` refuses every bad manifest with its own code (logged and
//! audited, the module not loaded, other modules served), remembers the
//! highest version across a restart (rollback) and refuses an expired
//! manifest (freeze); a real `vigil-client` with module keys, fed the same
//! by a rogue server that holds the real server key, trusts none of them
//! and runs nothing.

use std::path::Path;
use std::time::{Duration, SystemTime};

use rustix::process::Signal;
use sha2::Digest as _;
use vigil_command::{ModuleKeys, ModuleManifest, SignedManifest, SigningKey, Timestamp};
use vigil_test_support::wait::eventually;

use crate::files::module;
use crate::rogue::{Rogue, Served};
use crate::support::{Deployment, audit_log, write_atomically};

const KEYS: &str = "module-keys.json";

fn at(offset_secs: i64) -> Timestamp {
    let d = Duration::from_secs(offset_secs.unsigned_abs());
    let now = SystemTime::now();
    Timestamp::from_system_time(if offset_secs >= 0 { now + d } else { now - d }).expect("time")
}

/// A valid manifest (for an hour) of `bytes` deployed as `name`.
fn manifest(bytes: &[u8], name: &str, version: u64) -> ModuleManifest {
    ModuleManifest {
        name: name.to_owned(),
        version,
        sha256: hex::encode(sha2::Sha256::digest(bytes)),
        size: bytes.len() as u64,
        target: vigil_modules::host_target(),
        abi: 1,
        not_before: at(-60),
        expires: at(3600),
    }
}

fn sign(key: &SigningKey, m: &ModuleManifest) -> SignedManifest {
    m.sign(key).expect("sign")
}

/// Writes the module keys file listing `key` into `dir`.
fn write_keys(dir: &Path, key: &SigningKey) {
    let keys = ModuleKeys::from_keys([key.verifying_key()]).expect("keys");
    std::fs::write(dir.join(KEYS), keys.to_json()).expect("keys file");
}

/// A deployment whose server requires manifests signed by `key`.
async fn signed_deployment(key: &SigningKey) -> Deployment {
    Deployment::start_after(&[], |dir| {
        write_keys(dir, key);
        let toml = dir.join("server.toml");
        let text = std::fs::read_to_string(&toml).expect("server.toml");
        std::fs::write(&toml, format!("module_keys = \"{KEYS}\"\n{text}")).expect("write");
    })
    .await
}

fn deploy(dep: &Deployment, name: &str, bytes: &[u8], manifest: Option<&str>) {
    if let Some(text) = manifest {
        write_atomically(
            &dep.path("mods").join(format!("{name}.manifest")),
            text.as_bytes(),
        );
    }
    write_atomically(&dep.path("mods").join(name), bytes);
}

/// The bad manifests, each for a module of its own name, and the code
/// each is refused with (the catalogue's M10–M16, and C17 at the client).
fn bad_cases(
    key: &SigningKey,
    hello: &[u8],
    other: &[u8],
) -> Vec<(String, Option<String>, &'static str)> {
    let stranger = vigil_command::generate_signing_key().expect("key");
    let mut tampered = sign(key, &manifest(hello, "tampered.so", 1)).to_map();
    tampered.insert("expires".into(), at(999_999).isoformat().into());
    let mut early = manifest(hello, "early.so", 1);
    early.not_before = at(600);
    let mut arm = manifest(hello, "arm.so", 1);
    arm.target = "sparc64-plan9".into();
    vec![
        ("missing.so".into(), None, "manifest_missing"),
        (
            "garbage.so".into(),
            Some("{\"format\": 1".into()),
            "manifest_malformed",
        ),
        (
            "stranger.so".into(),
            Some(sign(&stranger, &manifest(hello, "stranger.so", 1)).to_json()),
            "manifest_unknown_key",
        ),
        (
            "tampered.so".into(),
            Some(serde_json::to_string(&tampered).expect("json")),
            "manifest_bad_signature",
        ),
        (
            "renamed.so".into(),
            Some(sign(key, &manifest(hello, "hello.so", 1)).to_json()),
            "manifest_wrong_name",
        ),
        (
            "other.so".into(),
            Some(sign(key, &manifest(other, "other.so", 1)).to_json()),
            "manifest_mismatch",
        ),
        (
            "early.so".into(),
            Some(sign(key, &early).to_json()),
            "manifest_not_yet_valid",
        ),
        (
            "arm.so".into(),
            Some(sign(key, &arm).to_json()),
            "manifest_wrong_target",
        ),
    ]
}

fn expired(key: &SigningKey, bytes: &[u8], name: &str, version: u64) -> String {
    let mut m = manifest(bytes, name, version);
    m.not_before = at(-7200);
    m.expires = at(-60);
    sign(key, &m).to_json()
}

async fn listed(dep: &Deployment) -> Vec<String> {
    let conn = vigil_client::Connection::connect(&dep.client_config())
        .await
        .expect("connect");
    let names = conn
        .sync()
        .await
        .expect("sync")
        .into_iter()
        .map(|m| m.name)
        .collect();
    conn.close();
    names
}

/// The codes the audit log recorded for rejections of `name`.
fn audited_codes(dep: &Deployment, name: &str) -> Vec<String> {
    audit_log(dep)
        .iter()
        .filter(|r| r["kind"] == "module.rejected" && r["details"]["module"] == name)
        .filter_map(|r| r["details"]["code"].as_str().map(str::to_owned))
        .collect()
}

/// M10–M16: every bad manifest is refused by the server with its own
/// code, logged and audited; none of those modules is loaded, and a good
/// one beside them is, and runs.
#[tokio::test]
async fn m10_to_m16_bad_manifests_are_refused_by_the_server_with_their_codes() {
    let key = vigil_command::generate_signing_key().expect("key");
    let dep = signed_deployment(&key).await;
    let hello = std::fs::read(module("mods/hello", &[])).expect("hello");
    let formal = std::fs::read(module("mods/hello", &["formal"])).expect("formal");
    let rejected = dep.metric("vigil_module_events_total{event=\"rejected\"}");
    let cases = bad_cases(&key, &hello, &formal);
    for (name, text, _) in &cases {
        deploy(&dep, name, &hello, text.as_deref());
    }
    deploy(
        &dep,
        "good.so",
        &hello,
        Some(&sign(&key, &manifest(&hello, "good.so", 1)).to_json()),
    );
    until_listed(&dep, "the good module", |names| {
        names.contains(&"good.so".to_owned())
    })
    .await;
    eventually("every bad manifest rejected", || {
        dep.metric("vigil_module_events_total{event=\"rejected\"}") >= rejected + cases.len() as u64
    })
    .await;
    for (name, _, code) in &cases {
        eventually(&format!("{name}: rejected with {code}, logged"), || {
            dep.server.lines().iter().any(|l| {
                l.contains(name.as_str()) && l.contains(code) && l.contains("module rejected")
            })
        })
        .await;
        assert!(
            audited_codes(&dep, name).iter().any(|c| c == code),
            "{name}: {code} not audited: {:?}",
            audited_codes(&dep, name)
        );
    }
    assert_eq!(listed(&dep).await, ["good.so"]);
    let conn = vigil_client::Connection::connect(&dep.client_config())
        .await
        .expect("connect");
    let verified = conn.verify("good.so", None).await.expect("verify");
    assert!(
        verified.manifest.is_some(),
        "the manifest travels with the bytes"
    );
    assert_eq!(
        conn.exec("good.so", "m", &verified.sum)
            .await
            .expect("runs"),
        "Hello, m!"
    );
    dep.assert_serving().await;
}

/// Waits until the modules the server lists (by name, or by sum with
/// `by_sum`) satisfy `want`.
async fn until(dep: &Deployment, what: &str, by_sum: bool, want: impl Fn(&[String]) -> bool) {
    let deadline = std::time::Instant::now() + vigil_test_support::wait::WAIT;
    loop {
        let conn = vigil_client::Connection::connect(&dep.client_config())
            .await
            .expect("connect");
        let now: Vec<String> = conn
            .sync()
            .await
            .expect("sync")
            .into_iter()
            .map(|m| if by_sum { m.sum } else { m.name })
            .collect();
        conn.close();
        if want(&now) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: the server lists {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn until_listed(dep: &Deployment, what: &str, want: impl Fn(&[String]) -> bool) {
    until(dep, what, false, want).await;
}

/// M17, M18: rollback (an older, validly signed build renamed in, also
/// across a restart, and a new build under a version already used) and
/// freeze (an expired manifest) are refused by the server; the version it
/// serves stays.
#[tokio::test]
async fn m17_m18_rollback_and_freeze_are_refused_by_the_server() {
    let key = vigil_command::generate_signing_key().expect("key");
    let mut dep = signed_deployment(&key).await;
    let v1 = std::fs::read(module("mods/hello", &[])).expect("hello");
    let v2 = std::fs::read(module("mods/hello", &["formal"])).expect("formal");
    let old = sign(&key, &manifest(&v1, "hello.so", 1)).to_json();
    deploy(&dep, "hello.so", &v1, Some(&old));
    until_listed(&dep, "v1", |names| names == ["hello.so"]).await;
    deploy(
        &dep,
        "hello.so",
        &v2,
        Some(&sign(&key, &manifest(&v2, "hello.so", 2)).to_json()),
    );
    let v2_sum = hex::encode(sha2::Sha256::digest(&v2));
    let only_v2 = |sums: &[String]| sums == [v2_sum.clone()];
    until(&dep, "v2 served", true, only_v2).await;

    // M17 the old build renamed back in, with its valid manifest.
    deploy(&dep, "hello.so", &v1, Some(&old));
    dep.server.wait_logged("manifest_rollback").await;
    // The same version (2) for other bytes.
    deploy(
        &dep,
        "hello.so",
        &v1,
        Some(&sign(&key, &manifest(&v1, "hello.so", 2)).to_json()),
    );
    dep.server.wait_logged("manifest_version_reused").await;
    until(&dep, "version 2 keeps serving", true, only_v2).await;

    // Across a restart: the old build is on disk when the server starts.
    dep.server.signal(Signal::TERM);
    let _ = dep.server.exited().await;
    let marks = std::fs::read_to_string(dep.path("server-data/module-versions.json"))
        .expect("the marks are in the data directory");
    assert!(marks.contains("\"version\": 2"), "{marks}");
    deploy(&dep, "hello.so", &v1, Some(&old));
    dep.server = dep.restart(&[]).await;
    dep.server.wait_logged("manifest_rollback").await;
    assert!(listed(&dep).await.is_empty(), "the old build was loaded");

    // M18 freeze: the current build with a manifest that has expired.
    deploy(
        &dep,
        "hello.so",
        &v2,
        Some(&expired(&key, &v2, "hello.so", 2)),
    );
    dep.server.wait_logged("manifest_expired").await;
    assert!(
        listed(&dep).await.is_empty(),
        "an expired manifest was honoured"
    );
    // Signed again: served again.
    deploy(
        &dep,
        "hello.so",
        &v2,
        Some(&sign(&key, &manifest(&v2, "hello.so", 2)).to_json()),
    );
    until(&dep, "v2 served again", true, only_v2).await;
    assert!(audited_codes(&dep, "hello.so").contains(&"manifest_rollback".to_owned()));
    dep.assert_serving().await;
}

/// Runs `vigil-client exec NAME` (with module keys, against the rogue),
/// serving `modules`: the client's exit status, its log, and what it
/// asked the rogue to run.
async fn exec_through_rogue(
    dep: &Deployment,
    rogue: &Rogue,
    name: &str,
    modules: &[Served],
) -> (bool, Vec<String>, Vec<String>) {
    let mut client = dep.client_edited(
        |base| format!("module_keys = \"{KEYS}\"\n{base}"),
        &["--server", &rogue.addr(), "exec", name, "x"],
    );
    let mut peer = rogue.accept().await;
    let ran = peer.serve_modules(modules).await;
    let status = client.exited().await;
    (status.success(), client.lines(), ran)
}

/// C17–C19: a rogue server holding the real server key feeds a real
/// `vigil-client` with module keys every bad manifest (C17), an older
/// validly signed build after a newer one was trusted (C18, rollback) and
/// an expired manifest (C19, freeze): each refused with its code, the
/// module not trusted and never run, the version mark unchanged.
#[tokio::test]
async fn c17_to_c19_a_rogue_servers_bad_manifests_are_refused_by_the_client() {
    let key = vigil_command::generate_signing_key().expect("key");
    let dep = Deployment::start(&[]).await;
    write_keys(dep.dir.path(), &key);
    let rogue = Rogue::bind(&dep).await;
    let v1 = std::fs::read(module("mods/hello", &[])).expect("hello");
    let v2 = std::fs::read(module("mods/hello", &["formal"])).expect("formal");
    let served = |name: &str, bytes: &[u8], manifest: Option<&str>| Served {
        name: name.to_owned(),
        bytes: bytes.to_vec(),
        manifest: manifest.map(|t| {
            serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(t).unwrap_or_else(
                |_| {
                    // Not an object: sent as an object that is not a manifest.
                    let mut m = serde_json::Map::new();
                    m.insert("format".into(), t.into());
                    m
                },
            )
        }),
    };

    // The version mark starts with version 2, trusted and run.
    let good = sign(&key, &manifest(&v2, "hello.so", 2)).to_json();
    let (ok, lines, ran) = exec_through_rogue(
        &dep,
        &rogue,
        "hello.so",
        &[served("hello.so", &v2, Some(&good))],
    )
    .await;
    assert!(ok, "{lines:#?}");
    assert_eq!(ran, ["hello.so"]);
    let marks_path = dep.path("client-state/module-versions.json");
    let marks = std::fs::read_to_string(&marks_path).expect("the mark is written once trusted");
    assert!(marks.contains("\"version\": 2"), "{marks}");

    let mut cases: Vec<(String, Option<String>, &'static str)> = bad_cases(&key, &v1, &v2)
        .into_iter()
        // A client runs no module itself: it does not check the target.
        .filter(|(_, _, code)| *code != "manifest_wrong_target")
        .collect();
    // C18 rollback: version 1, validly signed, after version 2.
    cases.push((
        "hello.so".into(),
        Some(sign(&key, &manifest(&v1, "hello.so", 1)).to_json()),
        "manifest_rollback",
    ));
    // The same version for other bytes.
    cases.push((
        "hello.so".into(),
        Some(sign(&key, &manifest(&v1, "hello.so", 2)).to_json()),
        "manifest_version_reused",
    ));
    // C19 freeze: the trusted build, with its manifest expired.
    cases.push((
        "hello.so".into(),
        Some(expired(&key, &v2, "hello.so", 2)),
        "manifest_expired",
    ));
    for (name, text, code) in &cases {
        let bytes = if *code == "manifest_expired" {
            &v2
        } else {
            &v1
        };
        let modules = [served(name, bytes, text.as_deref())];
        let (ok, lines, ran) = exec_through_rogue(&dep, &rogue, name, &modules).await;
        assert!(!ok, "{name} ({code}): the client ran it");
        assert!(
            ran.is_empty(),
            "{name} ({code}): the client asked to run it"
        );
        assert!(
            lines.iter().any(|l| l.contains(code)),
            "{name}: no {code} in {lines:#?}"
        );
        assert_eq!(
            std::fs::read_to_string(&marks_path).expect("marks"),
            marks,
            "{name} ({code}): the mark moved"
        );
    }

    // A client with module keys, in its normal run: the bad one is not
    // trusted, a good one beside it is.
    let mut client = dep.client_edited(
        |base| format!("module_keys = \"{KEYS}\"\n{base}"),
        &["--server", &rogue.addr()],
    );
    let mut peer = rogue.accept().await;
    let modules = [
        served(
            "hello.so",
            &v1,
            Some(&sign(&key, &manifest(&v1, "hello.so", 1)).to_json()),
        ),
        served(
            "fresh.so",
            &v1,
            Some(&sign(&key, &manifest(&v1, "fresh.so", 1)).to_json()),
        ),
    ];
    let serving = peer.serve_modules(&modules);
    let watch = async {
        eventually("fresh.so verified, hello.so refused", || {
            client.logged("manifest_rollback")
                && client
                    .lines()
                    .iter()
                    .any(|l| l.contains("fresh.so") && l.contains("module verified"))
        })
        .await;
        client.signal(Signal::TERM);
    };
    let (ran, ()) = tokio::join!(serving, watch);
    assert!(ran.is_empty());
    let _ = client.exited().await;
    let after = std::fs::read_to_string(&marks_path).expect("marks");
    assert!(after.contains("fresh.so"), "{after}");
    assert!(
        after.contains("\"version\": 2"),
        "hello.so's mark stays at 2: {after}"
    );
}

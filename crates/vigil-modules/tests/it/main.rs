//! The registry with real dylibs, built by these tests from `tests/fixture`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::sync::broadcast;
use vigil_modules::{ExecError, ModuleRegistry, RegistryConfig, RegistryEvent, dev};

mod manifests;

mod sandbox;

/// Builds the fixture module with `features` once per test process.
fn fixture(features: &[&str]) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let key = features.join(",");
    let mut built = BUILT
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(path) = built.get(&key) {
        return path.clone();
    }
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixture/Cargo.toml");
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "fixture-{}",
        if key.is_empty() { "v1" } else { &key }
    ));
    let so = dev::cargo_build_module(&manifest, &target, features, false).expect("fixture builds");
    // Keep a private copy: a later build in the same target dir would
    // rewrite the file in place.
    let copy = target.join(format!("fixture-{}.so", key.replace(',', "-")));
    std::fs::copy(&so, &copy).expect("copy");
    built.insert(key, copy.clone());
    copy
}

fn sum_of(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).expect("read")))
}

async fn next(rx: &mut broadcast::Receiver<RegistryEvent>) -> RegistryEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("registry event in time")
        .expect("event channel open")
}

struct Mods {
    dir: tempfile::TempDir,
}

impl Mods {
    fn new() -> Mods {
        Mods {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn deploy(&self, src: &Path, name: &str) {
        dev::deploy(src, self.path(), name).expect("deploy");
    }

    fn registry(&self) -> ModuleRegistry {
        ModuleRegistry::open(RegistryConfig::new(self.path())).expect("open")
    }
}

#[tokio::test]
async fn loads_at_start_and_runs_with_the_verified_sum() {
    let mods = Mods::new();
    let v1 = fixture(&[]);
    mods.deploy(&v1, "fx.so");
    std::fs::write(mods.path().join("README.md"), "not a module").expect("write");
    std::fs::write(mods.path().join(".hidden.so"), "ignored").expect("write");
    let registry = mods.registry();
    let list = registry.list();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].name, "fx.so");
    assert_eq!(list[0].sum, sum_of(&v1));
    assert_eq!(list[0].description, "Test module.");
    let module = registry.get("fx.so").expect("loaded");
    assert_eq!(&module.bytes()[..], &std::fs::read(&v1).expect("read")[..]);
    assert_eq!(module.declared_name(), "fixture");
    let out = registry
        .exec("fx.so", b"hi", &list[0].sum)
        .await
        .expect("runs");
    assert_eq!(out.result, "v1: hi");
}

#[tokio::test]
async fn rename_in_replace_and_delete_are_followed() {
    let mods = Mods::new();
    let registry = mods.registry();
    let _watch = registry.watch().expect("watch");
    let mut events = registry.subscribe();
    let (v1, v2) = (fixture(&[]), fixture(&["v2"]));

    mods.deploy(&v1, "fx.so");
    let RegistryEvent::Loaded(loaded) = next(&mut events).await else {
        panic!("expected Loaded");
    };
    assert_eq!(loaded.sum, sum_of(&v1));
    assert_eq!(
        registry
            .exec("fx.so", b"a", &loaded.sum)
            .await
            .expect("v1")
            .result,
        "v1: a"
    );

    mods.deploy(&v2, "fx.so");
    let RegistryEvent::Reloaded {
        module,
        previous_sum,
    } = next(&mut events).await
    else {
        panic!("expected Reloaded");
    };
    assert_eq!(previous_sum, loaded.sum);
    assert_eq!(module.sum, sum_of(&v2));
    let stale = registry.exec("fx.so", b"a", &loaded.sum).await;
    assert!(
        matches!(stale, Err(ExecError::StaleSum { .. })),
        "{stale:?}"
    );
    assert_eq!(
        registry
            .exec("fx.so", b"a", &module.sum)
            .await
            .expect("v2")
            .result,
        "v2: a"
    );

    std::fs::remove_file(mods.path().join("fx.so")).expect("remove");
    assert_eq!(
        next(&mut events).await,
        RegistryEvent::Unloaded {
            name: "fx.so".into(),
            sum: module.sum.clone()
        }
    );
    let gone = registry.exec("fx.so", b"a", &module.sum).await;
    assert_eq!(gone, Err(ExecError::UnknownModule("fx.so".into())));
}

#[tokio::test]
async fn bad_files_are_rejected_and_a_good_previous_version_keeps_serving() {
    let mods = Mods::new();
    let registry = mods.registry();
    let _watch = registry.watch().expect("watch");
    let mut events = registry.subscribe();
    let v1 = fixture(&[]);
    mods.deploy(&v1, "fx.so");
    let RegistryEvent::Loaded(good) = next(&mut events).await else {
        panic!("expected Loaded");
    };

    let bytes = std::fs::read(&v1).expect("read");
    let scratch = tempfile::tempdir().expect("tempdir");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", bytes[..bytes.len() / 2].to_vec(), "incomplete"),
        (
            "garbage",
            b"#!/bin/sh\necho not a module\n".repeat(10),
            "not an ELF file",
        ),
        ("empty", Vec::new(), "too short"),
        (
            "trailing",
            [bytes.clone(), b"extra".to_vec()].concat(),
            "unexpected bytes",
        ),
    ];
    for (label, content, needle) in &cases {
        let src = scratch.path().join(label);
        std::fs::write(&src, content).expect("write");
        mods.deploy(&src, "fx.so");
        match next(&mut events).await {
            RegistryEvent::Rejected {
                name, reason, kept, ..
            } => {
                assert_eq!(name, "fx.so");
                assert!(reason.contains(needle), "{label}: {reason}");
                assert_eq!(kept.as_deref(), Some(good.sum.as_str()), "{label}");
            }
            other => panic!("{label}: expected Rejected, got {other:?}"),
        }
        let out = registry
            .exec("fx.so", b"still", &good.sum)
            .await
            .expect("previous version serves");
        assert_eq!(out.result, "v1: still");
    }

    // A new name that is not a module is rejected with nothing kept.
    let src = scratch.path().join("garbage");
    mods.deploy(&src, "other.so");
    match next(&mut events).await {
        RegistryEvent::Rejected { name, kept, .. } => {
            assert_eq!(name, "other.so");
            assert_eq!(kept, None);
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert_eq!(registry.list().len(), 1);
}

#[tokio::test]
async fn wrong_abi_version_is_refused_clearly() {
    let mods = Mods::new();
    let registry = mods.registry();
    let _watch = registry.watch().expect("watch");
    let mut events = registry.subscribe();
    mods.deploy(&fixture(&["wrong-abi"]), "old.so");
    match next(&mut events).await {
        RegistryEvent::Rejected { reason, .. } => {
            assert!(reason.contains("ABI version 999"), "{reason}");
            assert!(reason.contains("rebuild"), "{reason}");
        }
        other => panic!("expected Rejected, got {other:?}"),
    }
    assert!(registry.list().is_empty());
}

#[tokio::test]
async fn panics_failures_and_hangs_are_errors_not_crashes() {
    let mods = Mods::new();
    mods.deploy(&fixture(&[]), "fx.so");
    // Default timeout: a panic's hook may print a backtrace, which is slow
    // in a debug build.
    let registry = mods.registry();
    let sum = registry.list()[0].sum.clone();
    let panicked = registry.exec("fx.so", b"panic", &sum).await;
    assert_eq!(
        panicked,
        Err(ExecError::Panicked("fixture asked to panic".into()))
    );
    let failed = registry.exec("fx.so", b"fail", &sum).await;
    assert_eq!(
        failed,
        Err(ExecError::Failed("fixture asked to fail".into()))
    );

    let mut config = RegistryConfig::new(mods.path());
    config.exec_timeout = Duration::from_millis(300);
    config.max_concurrent = 2;
    let registry = ModuleRegistry::open(config).expect("open");

    // Two runs that hang: each times out, and each kills the host, so the
    // second runs on a host started again after the first.
    let (a, b) = tokio::join!(
        registry.exec("fx.so", b"sleep 5000", &sum),
        registry.exec("fx.so", b"sleep 5000", &sum)
    );
    assert!(matches!(a, Err(ExecError::Timeout(_))), "{a:?}");
    assert!(matches!(b, Err(ExecError::Timeout(_))), "{b:?}");
    // A third call is queued behind the second: with two queued the host
    // is full, so it is told busy.
    let (c, d, busy) = tokio::join!(
        registry.exec("fx.so", b"sleep 5000", &sum),
        registry.exec("fx.so", b"sleep 5000", &sum),
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            registry.exec("fx.so", b"x", &sum).await
        }
    );
    assert!(matches!(c, Err(ExecError::Timeout(_))), "{c:?}");
    assert!(matches!(d, Err(ExecError::Timeout(_))), "{d:?}");
    assert_eq!(busy, Err(ExecError::Busy));
    // Service resumes at once: nothing waits for the hung calls to return.
    let health = registry.get("fx.so").expect("loaded").health();
    assert_eq!(health.timeouts, 4, "{health:?}");
    assert_eq!(
        registry
            .exec("fx.so", b"ok", &sum)
            .await
            .expect("runs")
            .result,
        "v1: ok"
    );
}

#[tokio::test]
async fn loaded_code_is_a_private_copy() {
    let mods = Mods::new();
    mods.deploy(&fixture(&[]), "fx.so");
    let registry = mods.registry();
    let sum = registry.list()[0].sum.clone();
    // Overwrite the original file in place (not a rename): the loaded code
    // is a shadow copy, so nothing changes until a reconcile.
    std::fs::write(
        mods.path().join("fx.so"),
        std::fs::read(fixture(&["v2"])).expect("read"),
    )
    .expect("write");
    assert_eq!(
        registry
            .exec("fx.so", b"x", &sum)
            .await
            .expect("runs")
            .result,
        "v1: x"
    );
    // A reconcile loads the new bytes from a new shadow path, so dlopen's
    // cache by path cannot hand back the old code.
    registry.reconcile("fx.so");
    let new_sum = registry.list()[0].sum.clone();
    assert_ne!(new_sum, sum);
    assert_eq!(
        registry
            .exec("fx.so", b"x", &new_sum)
            .await
            .expect("runs")
            .result,
        "v2: x"
    );
}

#[tokio::test]
async fn a_file_written_slowly_is_loaded_once_complete() {
    let mods = Mods::new();
    let registry = mods.registry();
    let _watch = registry.watch().expect("watch");
    let mut events = registry.subscribe();
    let bytes = std::fs::read(fixture(&[])).expect("read");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(mods.path().join("slow.so")).expect("create");
        f.write_all(&bytes[..bytes.len() / 3]).expect("write");
        f.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(300));
        f.write_all(&bytes[bytes.len() / 3..]).expect("write");
    }
    match next(&mut events).await {
        RegistryEvent::Loaded(m) => assert_eq!(m.size, bytes.len() as u64),
        other => panic!("expected one Loaded, got {other:?}"),
    }
}

#[tokio::test]
async fn a_batch_answers_every_call_once_in_order() {
    use vigil_modules::ExecCall;
    let mods = Mods::new();
    mods.deploy(&fixture(&[]), "fx.so");
    let registry = mods.registry();
    let sum = registry.list()[0].sum.clone();
    let call = |module: &str, args: &str, sum: &str| ExecCall {
        module: module.into(),
        args: args.as_bytes().to_vec(),
        sum: sum.into(),
    };
    let calls = vec![
        (1, call("fx.so", "a", &sum)),
        (2, call("nope.so", "b", &sum)),
        (3, call("fx.so", "c", "0000")),
        (4, call("fx.so", "fail", &sum)),
        (5, call("fx.so", "d", &sum)),
    ];
    let mut batch = registry.exec_batch(calls);
    let mut answers = Vec::new();
    while let Some(answer) = batch.next().await {
        answers.push(answer);
    }
    // Checks fail at once, ahead of the runs; the runs answer in order.
    let tags: Vec<i32> = answers.iter().map(|(t, _)| *t).collect();
    assert_eq!(tags, vec![2, 3, 1, 4, 5]);
    assert!(matches!(answers[0].1, Err(ExecError::UnknownModule(_))));
    assert!(matches!(answers[1].1, Err(ExecError::StaleSum { .. })));
    assert_eq!(answers[2].1.as_ref().expect("ran").result, "v1: a");
    assert_eq!(
        answers[3].1,
        Err(ExecError::Failed("fixture asked to fail".into()))
    );
    assert_eq!(answers[4].1.as_ref().expect("ran").result, "v1: d");
}

#[tokio::test]
async fn a_hung_call_times_out_and_the_rest_of_its_batch_is_not_run() {
    use vigil_modules::ExecCall;
    let mods = Mods::new();
    mods.deploy(&fixture(&[]), "fx.so");
    let mut config = RegistryConfig::new(mods.path());
    config.exec_timeout = Duration::from_millis(300);
    config.max_concurrent = 1;
    let registry = ModuleRegistry::open(config).expect("open");
    let sum = registry.list()[0].sum.clone();
    let call = |args: &str| ExecCall {
        module: "fx.so".into(),
        args: args.as_bytes().to_vec(),
        sum: sum.clone(),
    };
    let started = std::time::Instant::now();
    let mut batch = registry.exec_batch(vec![
        ("ok", call("ok")),
        ("hang", call("sleep 3000")),
        ("after", call("never")),
    ]);
    let mut answers = Vec::new();
    while let Some(answer) = batch.next().await {
        answers.push(answer);
    }
    assert_eq!(answers[0].0, "ok");
    assert_eq!(answers[0].1.as_ref().expect("ran").result, "v1: ok");
    assert_eq!(
        answers[1],
        ("hang", Err(ExecError::Timeout(Duration::from_millis(300))))
    );
    assert_eq!(
        answers[2],
        (
            "after",
            Err(ExecError::Abandoned(Duration::from_millis(300)))
        )
    );
    assert_eq!(answers.len(), 3);
    // Answered at the timeout, and the hung host was killed: the next call
    // runs on a new host at once, long before the hung call would return.
    assert_eq!(
        registry
            .exec("fx.so", b"x", &sum)
            .await
            .expect("runs")
            .result,
        "v1: x"
    );
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_module_directory_made_again_is_watched_again() {
    let mods = Mods::new();
    let registry = mods.registry();
    let _watch = registry.watch().expect("watch");
    let mut events = registry.subscribe();
    mods.deploy(&fixture(&[]), "fx.so");
    assert!(matches!(next(&mut events).await, RegistryEvent::Loaded(_)));

    // The directory goes away, with its files: the module is unloaded.
    std::fs::remove_dir_all(mods.path()).expect("remove");
    assert!(matches!(
        next(&mut events).await,
        RegistryEvent::Unloaded { .. }
    ));
    // A new directory at the same path: watched again and rescanned, so a
    // module deployed into it is loaded without a restart.
    std::fs::create_dir(mods.path()).expect("mkdir");
    mods.deploy(&fixture(&["v2"]), "fx.so");
    match next(&mut events).await {
        RegistryEvent::Loaded(m) => assert_eq!(m.name, "fx.so"),
        other => panic!("expected a load, got {other:?}"),
    }
    // And it is followed from then on.
    std::fs::remove_file(mods.path().join("fx.so")).expect("remove");
    assert!(matches!(
        next(&mut events).await,
        RegistryEvent::Unloaded { .. }
    ));
}

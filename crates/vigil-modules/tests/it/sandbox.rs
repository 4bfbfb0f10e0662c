//! Modules with bugs, in their sandboxed hosts: each bug costs its call an
//! error with a stable kind, and the module answers again after.

use std::time::{Duration, Instant};

use vigil_modules::{ExecError, HostState, ModuleRegistry, RegistryConfig, SandboxPolicy};

use super::{Mods, fixture};

async fn pid(registry: &ModuleRegistry, module: &str, sum: &str) -> u32 {
    registry
        .exec(module, b"pid", sum)
        .await
        .expect("answers")
        .result
        .parse()
        .expect("a pid")
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn each_crash_is_its_own_error_and_the_module_answers_again() {
    let mods = Mods::new();
    mods.deploy(&fixture(&[]), "fx.so");
    mods.deploy(&fixture(&[]), "other.so");
    let registry = mods.registry();
    let sum = registry.list()[0].sum.clone();
    let other = pid(&registry, "other.so", &sum).await;
    let mut last = pid(&registry, "fx.so", &sum).await;
    type Expect = fn(&ExecError) -> bool;
    let cases: [(&str, Expect); 5] = [
        (
            "segfault",
            |e| matches!(e, ExecError::Crashed { signal: Some(s), .. } if s == "SIGSEGV"),
        ),
        (
            "abort",
            |e| matches!(e, ExecError::Crashed { signal: Some(s), .. } if s == "SIGABRT"),
        ),
        (
            "exit",
            |e| matches!(e, ExecError::Crashed { signal: None, detail } if detail.contains("exit status: 3")),
        ),
        (
            "alloc",
            |e| matches!(e, ExecError::Limit(m) if m.contains("memory allocation of 4294967296 bytes failed")),
        ),
        (
            "socket",
            |e| matches!(e, ExecError::Crashed { signal: Some(s), .. } if s == "SIGSYS"),
        ),
    ];
    for (args, expected) in cases {
        let answer = registry.exec("fx.so", args.as_bytes(), &sum).await;
        let error = answer.expect_err(args);
        assert!(expected(&error), "{args}: {error:?}");
        // Started again: a new host answers.
        let now = pid(&registry, "fx.so", &sum).await;
        assert_ne!(now, last, "{args}: the host was started again");
        assert!(!alive(last), "{args}: the old host is gone");
        last = now;
        // The other module never noticed.
        assert_eq!(pid(&registry, "other.so", &sum).await, other, "{args}");
    }
    // A result past the limit is refused; the host stays up.
    let big = registry.exec("fx.so", b"big", &sum).await;
    assert!(
        matches!(&big, Err(ExecError::Limit(m)) if m.contains("17825792 bytes")),
        "{big:?}"
    );
    assert_eq!(pid(&registry, "fx.so", &sum).await, last);
    let health = registry.get("fx.so").expect("loaded").health();
    assert_eq!(health.state, HostState::Failing, "{health:?}");
    assert_eq!(health.crashes, 5, "{health:?}");
    assert!(health.confinement.contains("seccomp"), "{health:?}");
    assert_eq!(
        registry.get("other.so").expect("loaded").health().state,
        HostState::Running
    );
}

#[tokio::test]
async fn a_thread_left_spinning_after_its_call_is_stopped() {
    let mods = Mods::new();
    mods.deploy(&fixture(&[]), "fx.so");
    let registry = mods.registry();
    let sum = registry.list()[0].sum.clone();
    let spinner = pid(&registry, "fx.so", &sum).await;
    let left = registry.exec("fx.so", b"leave-spinning", &sum).await;
    assert_eq!(left.expect("returns").result, "left a thread spinning");
    let deadline = Instant::now() + Duration::from_secs(15);
    while alive(spinner) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        !alive(spinner),
        "a host busy with no call running is stopped"
    );
    assert_ne!(pid(&registry, "fx.so", &sum).await, spinner);
}

#[tokio::test]
async fn a_forged_answer_stops_the_host_and_reaches_no_caller() {
    use vigil_modules::ExecCall;
    let mods = Mods::new();
    mods.deploy(&fixture(&[]), "fx.so");
    let registry = mods.registry();
    let sum = registry.list()[0].sum.clone();
    let call = |args: &str| ExecCall {
        module: "fx.so".into(),
        args: args.as_bytes().to_vec(),
        sum: sum.clone(),
    };
    let before = pid(&registry, "fx.so", &sum).await;
    // Another caller's call queued behind the forging one.
    let (mut forging, mut other) = (
        registry.exec_batch(vec![("forge", call("forge"))]),
        registry.exec_batch(vec![("b", call("b"))]),
    );
    let (_, forged) = forging.next().await.expect("answered");
    assert!(
        matches!(&forged, Err(ExecError::Crashed { detail, .. }) if detail.contains("broke the protocol")),
        "{forged:?}"
    );
    // The other call never sees the forged answer: it runs on a new host.
    let (_, b) = other.next().await.expect("answered");
    assert_eq!(b.expect("runs").result, "v1: b");
    assert_ne!(pid(&registry, "fx.so", &sum).await, before);
}

#[tokio::test]
async fn a_spinning_call_is_stopped_and_its_cpu_given_back() {
    let mods = Mods::new();
    mods.deploy(&fixture(&[]), "fx.so");
    let mut config = RegistryConfig::new(mods.path());
    config.exec_timeout = Duration::from_millis(500);
    let registry = ModuleRegistry::open(config).expect("open");
    let sum = registry.list()[0].sum.clone();
    let spinner = pid(&registry, "fx.so", &sum).await;
    let started = Instant::now();
    let answer = registry.exec("fx.so", b"spin", &sum).await;
    assert_eq!(answer, Err(ExecError::Timeout(Duration::from_millis(500))));
    // The spinning host is killed, not left to burn a core.
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(spinner) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!alive(spinner), "the spinning host was killed");
    let again = pid(&registry, "fx.so", &sum).await;
    assert_ne!(again, spinner);
    println!(
        "spin: timeout answered and a new host answering after {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn reads_and_writes_only_where_allowed() {
    let mods = Mods::new();
    mods.deploy(&fixture(&[]), "fx.so");
    mods.deploy(&fixture(&[]), "writer.so");
    mods.deploy(&fixture(&[]), "reader.so");
    let out = tempfile::tempdir().expect("tempdir");
    // A secret beside the server's files: no module may read it unless
    // its policy names it.
    let secrets = tempfile::tempdir().expect("tempdir");
    let secret = secrets.path().join("authority.key");
    std::fs::write(&secret, "seed").expect("write");
    let mut config = RegistryConfig::new(mods.path());
    let mut writer = SandboxPolicy::default();
    writer.write_paths = vec![out.path().to_owned()];
    config.sandboxes.insert("writer.so".into(), writer);
    let mut reader = SandboxPolicy::default();
    reader.read_paths = vec![secrets.path().to_owned()];
    config.sandboxes.insert("reader.so".into(), reader);
    let registry = ModuleRegistry::open(config).expect("open");
    let sum = registry.list()[0].sum.clone();
    let target = out.path().join("note.txt");
    let write = format!("write {}", target.display());

    let denied = registry.exec("fx.so", write.as_bytes(), &sum).await;
    assert!(
        matches!(&denied, Err(ExecError::Failed(m)) if m.contains("ermission denied")),
        "{denied:?}"
    );
    assert!(!target.exists());
    let allowed = registry
        .exec("writer.so", write.as_bytes(), &sum)
        .await
        .expect("allowed");
    assert_eq!(allowed.result, "wrote");
    assert_eq!(
        std::fs::read_to_string(&target).expect("written"),
        "written by a module"
    );
    let read = format!("read {}", target.display());
    let back = registry.exec("writer.so", read.as_bytes(), &sum).await;
    assert_eq!(back.expect("reads").result, "written by a module");
    // Reads: only the system's libraries and what the policy names.
    let steal = format!("read {}", secret.display());
    for module in ["fx.so", "writer.so"] {
        let denied = registry.exec(module, steal.as_bytes(), &sum).await;
        assert!(
            matches!(&denied, Err(ExecError::Failed(m)) if m.contains("ermission denied")),
            "{module}: {denied:?}"
        );
    }
    let allowed = registry.exec("reader.so", steal.as_bytes(), &sum).await;
    assert_eq!(allowed.expect("reader.so may").result, "seed");
    let system = registry
        .exec("fx.so", b"read /proc/sys/kernel/ostype", &sum)
        .await;
    assert_eq!(system.expect("kernel identity").result, "Linux\n");
    // No module may change a file's mode, not even where it may write
    // (Landlock does not govern chmod; the seccomp allowlist has none).
    let chmod = format!("chmod {}", target.display());
    let killed = registry.exec("writer.so", chmod.as_bytes(), &sum).await;
    assert!(
        matches!(&killed, Err(ExecError::Crashed { signal: Some(s), .. }) if s == "SIGSYS"),
        "{killed:?}"
    );
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&target)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777 & !0o644, 0, "mode {mode:o}");
    // Threads are allowed.
    let thread = registry.exec("fx.so", b"thread", &sum).await;
    assert_eq!(thread.expect("threads").result, "thread says 42");
    let health = registry.get("fx.so").expect("loaded").health();
    assert!(
        health.confinement.starts_with("no capabilities"),
        "{health:?}"
    );
}

#[tokio::test]
async fn a_reload_starts_the_new_host_first_and_lets_the_old_one_finish() {
    use vigil_modules::RegistryEvent;
    let mods = Mods::new();
    let registry = mods.registry();
    let _watch = registry.watch().expect("watch");
    let mut events = registry.subscribe();
    let (v1, v2) = (fixture(&[]), fixture(&["v2"]));
    mods.deploy(&v1, "fx.so");
    let RegistryEvent::Loaded(first) = super::next(&mut events).await else {
        panic!("expected Loaded");
    };
    let old_pid = pid(&registry, "fx.so", &first.sum).await;
    // A call in flight on v1 while v2 is deployed.
    let slow = {
        let (registry, sum) = (registry.clone(), first.sum.clone());
        tokio::spawn(async move { registry.exec("fx.so", b"sleep 1500", &sum).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    mods.deploy(&v2, "fx.so");
    let RegistryEvent::Reloaded { module, .. } = super::next(&mut events).await else {
        panic!("expected Reloaded");
    };
    // The new version answers at once, from its own host, while the old
    // one still runs its call.
    let new_pid = pid(&registry, "fx.so", &module.sum).await;
    assert_ne!(new_pid, old_pid);
    assert!(alive(old_pid), "the old host finishes its call first");
    let stale = registry.exec("fx.so", b"a", &first.sum).await;
    assert!(
        matches!(stale, Err(ExecError::StaleSum { .. })),
        "{stale:?}"
    );
    // The call in flight finishes on v1; then the old host exits.
    let done = slow.await.expect("joined").expect("finished on v1");
    assert_eq!(
        (done.result.as_str(), done.sum.as_str()),
        ("slept 1500 ms", first.sum.as_str())
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while alive(old_pid) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !alive(old_pid),
        "the old host exits once its calls are answered"
    );
}

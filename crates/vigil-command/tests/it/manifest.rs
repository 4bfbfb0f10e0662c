//! Module keys and version marks on real files: the marks survive a
//! reopen, are replaced whole, are never lowered, and a store that cannot
//! be written refuses (and remembers nothing).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use vigil_command::{
    ManifestCheck, ModuleKeys, ModuleManifest, ModuleTrust, Platform, SigningKey, Timestamp,
    VerifiedManifest, VersionStore,
};

fn now() -> SystemTime {
    super::at(0)
}

fn manifest(version: u64, sum: &str) -> ModuleManifest {
    ModuleManifest {
        name: "hello.so".into(),
        version,
        sha256: sum.into(),
        size: 10,
        target: "x86_64-linux".into(),
        abi: 1,
        not_before: Timestamp::from_system_time(now() - Duration::from_secs(60)).expect("t"),
        expires: Timestamp::from_system_time(now() + Duration::from_secs(60)).expect("t"),
    }
}

fn verified(key: &SigningKey, version: u64, sum: &str) -> VerifiedManifest {
    let keys = ModuleKeys::from_keys([key.verifying_key()]).expect("keys");
    let platform = Platform {
        target: "x86_64-linux".into(),
        abi: 1,
    };
    keys.verify(
        &manifest(version, sum).sign(key).expect("sign"),
        &ManifestCheck {
            name: "hello.so",
            sha256: sum,
            size: 10,
            platform: Some(&platform),
            highest: None,
            now: now(),
        },
    )
    .expect("verifies")
}

#[test]
fn version_marks_survive_a_reopen_and_only_go_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("module-versions.json");
    let key = SigningKey::from_bytes(&[3; 32]);
    let (a, b) = ("a".repeat(64), "b".repeat(64));
    {
        let store = VersionStore::open(&path).expect("open");
        assert!(store.all().is_empty());
        assert!(!path.exists(), "nothing is written before a mark");
        store.record(&verified(&key, 2, &a)).expect("record");
    }
    let store = VersionStore::open(&path).expect("reopen");
    assert_eq!(store.get("hello.so").map(|h| h.version), Some(2));
    // Nothing left beside it: the file was replaced whole.
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(names, [std::ffi::OsString::from("module-versions.json")]);
    let before = std::fs::read(&path).expect("marks");
    for (version, sum, code) in [
        (1, &a, "manifest_rollback"),
        (2, &b, "manifest_version_reused"),
    ] {
        assert_eq!(
            store
                .record(&verified(&key, version, sum))
                .map_err(|e| e.code()),
            Err(code)
        );
    }
    assert_eq!(std::fs::read(&path).expect("marks"), before, "unchanged");
    // Through the pair the client and the registry use.
    let trust = ModuleTrust {
        keys: ModuleKeys::from_keys([key.verifying_key()]).expect("keys"),
        versions: Arc::new(store),
    };
    let signed = manifest(1, &a).sign(&key).expect("sign");
    let refused = trust.check(Some(&signed), "hello.so", &a, 10, None, now());
    assert_eq!(
        refused.map(|_| ()).map_err(|e| e.code()),
        Err("manifest_rollback")
    );
    let missing = trust.check(None, "hello.so", &a, 10, None, now());
    assert_eq!(
        missing.map(|_| ()).map_err(|e| e.code()),
        Err("manifest_missing")
    );
}

#[test]
fn a_damaged_store_is_refused_and_an_unwritable_one_raises_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("module-versions.json");
    std::fs::write(&path, "{\"format\": \"something else\", \"modules\": {}}").expect("write");
    assert!(VersionStore::open(&path).is_err(), "a foreign file");
    std::fs::write(&path, "{not json").expect("write");
    assert!(VersionStore::open(&path).is_err(), "a damaged file");

    // A store whose directory is gone cannot be written: refused, and the
    // mark is not raised in memory either.
    let gone = dir.path().join("gone");
    std::fs::create_dir(&gone).expect("mkdir");
    let store = VersionStore::open(gone.join("module-versions.json")).expect("open");
    std::fs::remove_dir(&gone).expect("rmdir");
    let key = SigningKey::from_bytes(&[4; 32]);
    let result = store.record(&verified(&key, 1, &"c".repeat(64)));
    assert_eq!(
        result.map_err(|e| e.code()),
        Err("manifest_store_unavailable")
    );
    assert_eq!(store.get("hello.so"), None);
}

#[test]
fn a_module_keys_file_is_read_and_named_in_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("module-keys.json");
    let key = SigningKey::from_bytes(&[5; 32]);
    let keys = ModuleKeys::from_keys([key.verifying_key()]).expect("keys");
    std::fs::write(&path, keys.to_json()).expect("write");
    assert_eq!(ModuleKeys::load(&path).expect("load"), keys);
    std::fs::write(&path, "{\"module_keys\": 3}").expect("write");
    let err = ModuleKeys::load(&path).expect_err("bad file").to_string();
    assert!(err.contains("module-keys.json"), "{err}");
}

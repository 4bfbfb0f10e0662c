//! Signed manifests at the registry: with module keys, a module loads only
//! if the manifest beside it verifies for its bytes; each bad manifest is
//! refused with its own code and stops no other module; versions never go
//! down, also across a restart.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use vigil_command::{
    ModuleKeys, ModuleManifest, ModuleTrust, SignedManifest, SigningKey, Timestamp, VersionStore,
};
use vigil_modules::{ModuleRegistry, RegistryConfig, RegistryEvent, dev};

use super::{Mods, fixture, next, sum_of};

fn at(offset_secs: i64) -> Timestamp {
    let now = SystemTime::now();
    let d = Duration::from_secs(offset_secs.unsigned_abs());
    let t = if offset_secs >= 0 { now + d } else { now - d };
    Timestamp::from_system_time(t).expect("time")
}

/// A manifest for the module file `src`, deployed as `name`.
fn manifest(src: &Path, name: &str, version: u64) -> ModuleManifest {
    ModuleManifest {
        name: name.to_owned(),
        version,
        sha256: sum_of(src),
        size: std::fs::metadata(src).expect("module").len(),
        target: vigil_modules::host_target(),
        abi: vigil_module_sdk::ABI_VERSION,
        not_before: at(-60),
        expires: at(3600),
    }
}

struct Signed {
    key: SigningKey,
    store: std::path::PathBuf,
    _state: tempfile::TempDir,
}

impl Signed {
    fn new() -> Signed {
        let state = tempfile::tempdir().expect("tempdir");
        Signed {
            key: vigil_command::generate_signing_key().expect("key"),
            store: state.path().join("module-versions.json"),
            _state: state,
        }
    }

    fn trust(&self) -> ModuleTrust {
        ModuleTrust {
            keys: ModuleKeys::from_keys([self.key.verifying_key()]).expect("keys"),
            versions: Arc::new(VersionStore::open(&self.store).expect("store")),
        }
    }

    fn registry(&self, mods: &Mods) -> ModuleRegistry {
        let mut config = RegistryConfig::new(mods.path());
        config.manifests = Some(self.trust());
        ModuleRegistry::open(config).expect("open")
    }

    fn sign(&self, m: &ModuleManifest) -> SignedManifest {
        m.sign(&self.key).expect("sign")
    }
}

fn put_manifest(mods: &Mods, name: &str, text: &str) {
    let tmp = mods.path().join(format!(".{name}.manifest.tmp"));
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, mods.path().join(format!("{name}.manifest"))).expect("rename");
}

/// Reconciles `name` and returns the code it was rejected with, or
/// `"loaded"`.
async fn outcome(
    registry: &ModuleRegistry,
    events: &mut tokio::sync::broadcast::Receiver<RegistryEvent>,
    name: &str,
) -> String {
    registry.reconcile(name);
    match next(events).await {
        RegistryEvent::Rejected { name: n, code, .. } if n == name => code.to_owned(),
        RegistryEvent::Loaded(m) | RegistryEvent::Reloaded { module: m, .. } if m.name == name => {
            "loaded".to_owned()
        }
        other => panic!("{name}: unexpected {other:?}"),
    }
}

#[tokio::test]
async fn every_bad_manifest_is_refused_with_its_code_and_other_modules_still_load() {
    let mods = Mods::new();
    let signed = Signed::new();
    let registry = signed.registry(&mods);
    let mut events = registry.subscribe();
    let (v1, v2) = (fixture(&[]), fixture(&["v2"]));
    let stranger = vigil_command::generate_signing_key().expect("key");

    let mut tampered = signed.sign(&manifest(&v1, "tampered.so", 1)).to_map();
    tampered.insert("version".into(), 2.into());
    let mut expired = manifest(&v1, "expired.so", 1);
    expired.not_before = at(-7200);
    expired.expires = at(-60);
    let mut early = manifest(&v1, "early.so", 1);
    early.not_before = at(600);
    let mut arm = manifest(&v1, "arm.so", 1);
    arm.target = "sparc64-plan9".into();
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("missing.so", None, "manifest_missing"),
        ("garbage.so", Some("{not json".into()), "manifest_malformed"),
        (
            "stranger.so",
            Some(
                manifest(&v1, "stranger.so", 1)
                    .sign(&stranger)
                    .expect("sign")
                    .to_json(),
            ),
            "manifest_unknown_key",
        ),
        (
            "tampered.so",
            Some(serde_json::to_string(&tampered).expect("json")),
            "manifest_bad_signature",
        ),
        (
            "renamed.so",
            Some(signed.sign(&manifest(&v1, "other.so", 1)).to_json()),
            "manifest_wrong_name",
        ),
        (
            "arm.so",
            Some(signed.sign(&arm).to_json()),
            "manifest_wrong_target",
        ),
        (
            "mismatch.so",
            Some(signed.sign(&manifest(&v2, "mismatch.so", 1)).to_json()),
            "manifest_mismatch",
        ),
        (
            "early.so",
            Some(signed.sign(&early).to_json()),
            "manifest_not_yet_valid",
        ),
        (
            "expired.so",
            Some(signed.sign(&expired).to_json()),
            "manifest_expired",
        ),
    ];
    for (name, text, _) in &cases {
        mods.deploy(&v1, name);
        if let Some(text) = text {
            put_manifest(&mods, name, text);
        }
    }
    mods.deploy(&v1, "good.so");
    put_manifest(
        &mods,
        "good.so",
        &signed.sign(&manifest(&v1, "good.so", 1)).to_json(),
    );
    for (name, _, code) in &cases {
        assert_eq!(outcome(&registry, &mut events, name).await, *code, "{name}");
    }
    assert_eq!(outcome(&registry, &mut events, "good.so").await, "loaded");
    let listed: Vec<String> = registry.list().into_iter().map(|m| m.name).collect();
    assert_eq!(listed, ["good.so"]);
    let good = registry.get("good.so").expect("loaded");
    assert_eq!(
        good.summary()
            .manifest
            .as_ref()
            .map(|m| m.manifest().version),
        Some(1)
    );

    // Versions: a new build under the same version is refused; a higher
    // one loads; the old one renamed back in is a rollback.
    mods.deploy(&v2, "good.so");
    put_manifest(
        &mods,
        "good.so",
        &signed.sign(&manifest(&v2, "good.so", 1)).to_json(),
    );
    assert_eq!(
        outcome(&registry, &mut events, "good.so").await,
        "manifest_version_reused"
    );
    put_manifest(
        &mods,
        "good.so",
        &signed.sign(&manifest(&v2, "good.so", 2)).to_json(),
    );
    assert_eq!(outcome(&registry, &mut events, "good.so").await, "loaded");
    mods.deploy(&v1, "good.so");
    put_manifest(
        &mods,
        "good.so",
        &signed.sign(&manifest(&v1, "good.so", 1)).to_json(),
    );
    assert_eq!(
        outcome(&registry, &mut events, "good.so").await,
        "manifest_rollback"
    );
    // Version 2 keeps serving.
    assert_eq!(
        registry.get("good.so").expect("loaded").summary().sum,
        sum_of(&v2)
    );
}

/// Rollback and freeze at the server: the highest version loaded is
/// remembered across a restart, so an older validly signed build renamed
/// in is refused; an expired manifest is refused.
#[tokio::test]
async fn rollback_and_freeze_are_refused_across_a_restart() {
    let mods = Mods::new();
    let signed = Signed::new();
    let (v1, v2) = (fixture(&[]), fixture(&["v2"]));
    let old = signed.sign(&manifest(&v1, "fx.so", 1)).to_json();
    mods.deploy(&v2, "fx.so");
    put_manifest(
        &mods,
        "fx.so",
        &signed.sign(&manifest(&v2, "fx.so", 2)).to_json(),
    );
    {
        let registry = signed.registry(&mods);
        assert_eq!(registry.list().len(), 1);
    }
    let marks = std::fs::read_to_string(&signed.store).expect("marks written");
    assert!(marks.contains("\"version\": 2"), "{marks}");

    // Stopped; the old build and its (valid) manifest renamed in.
    mods.deploy(&v1, "fx.so");
    put_manifest(&mods, "fx.so", &old);
    let registry = signed.registry(&mods);
    assert!(registry.list().is_empty(), "the old version was loaded");
    let mut events = registry.subscribe();
    assert_eq!(
        outcome(&registry, &mut events, "fx.so").await,
        "manifest_rollback"
    );

    // Freeze: the current build, with a manifest that has expired.
    let mut frozen = manifest(&v2, "fx.so", 2);
    frozen.not_before = at(-7200);
    frozen.expires = at(-1);
    mods.deploy(&v2, "fx.so");
    put_manifest(&mods, "fx.so", &signed.sign(&frozen).to_json());
    assert_eq!(
        outcome(&registry, &mut events, "fx.so").await,
        "manifest_expired"
    );
    assert!(registry.list().is_empty());
    // The marks did not move.
    assert_eq!(
        std::fs::read_to_string(&signed.store).expect("marks"),
        marks
    );
}

#[tokio::test]
async fn a_manifest_arriving_after_its_module_makes_it_load() {
    let mods = Mods::new();
    let signed = Signed::new();
    let registry = signed.registry(&mods);
    let _watch = registry.watch().expect("watch");
    let mut events = registry.subscribe();
    let v1 = fixture(&[]);
    mods.deploy(&v1, "fx.so");
    match next(&mut events).await {
        RegistryEvent::Rejected { code, .. } => assert_eq!(code, "manifest_missing"),
        other => panic!("{other:?}"),
    }
    put_manifest(
        &mods,
        "fx.so",
        &signed.sign(&manifest(&v1, "fx.so", 1)).to_json(),
    );
    let RegistryEvent::Loaded(loaded) = next(&mut events).await else {
        panic!("expected Loaded");
    };
    assert_eq!(loaded.sum, sum_of(&v1));
    // Signed again (same bytes, same version, a later expiry): served
    // again with the new manifest.
    let mut later = manifest(&v1, "fx.so", 1);
    later.expires = at(7200);
    put_manifest(&mods, "fx.so", &signed.sign(&later).to_json());
    let RegistryEvent::Reloaded { module, .. } = next(&mut events).await else {
        panic!("expected Reloaded");
    };
    assert_eq!(
        module.manifest.map(|m| m.manifest().expires),
        Some(later.expires)
    );
}

#[tokio::test]
async fn without_module_keys_manifests_are_not_read() {
    let mods = Mods::new();
    let v1 = fixture(&[]);
    dev::deploy(&v1, mods.path(), "fx.so").expect("deploy");
    put_manifest(&mods, "fx.so", "{not even json");
    let registry = mods.registry();
    let list = registry.list();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].manifest, None);
}

//! Unit tests of manifests: the exact signing bytes, every refusal code,
//! the key file, and the version marks.

use std::time::{Duration, SystemTime};

use ed25519_dalek::VerifyingKey;
use sha2::Digest as _;

use super::*;

const T0: u64 = 1_800_000_000;

fn at(secs: u64) -> Timestamp {
    Timestamp::from_system_time(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)).expect("time")
}

fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(T0)
}

fn key() -> SigningKey {
    SigningKey::from_bytes(&[9; 32])
}

fn sum(byte: u8) -> String {
    hex::encode([byte; 32])
}

fn manifest(version: u64) -> ModuleManifest {
    ModuleManifest {
        name: "hello.so".into(),
        version,
        sha256: sum(1),
        size: 100,
        target: "x86_64-linux".into(),
        abi: 1,
        not_before: at(T0 - 60),
        expires: at(T0 + 3600),
    }
}

fn keys() -> ModuleKeys {
    ModuleKeys::from_keys([key().verifying_key()]).expect("keys")
}

fn platform() -> Platform {
    Platform {
        target: "x86_64-linux".into(),
        abi: 1,
    }
}

fn check<'a>(platform: &'a Platform, highest: Option<&'a HighWater>) -> ManifestCheck<'a> {
    ManifestCheck {
        name: "hello.so",
        sha256: "0101010101010101010101010101010101010101010101010101010101010101",
        size: 100,
        platform: Some(platform),
        highest,
        now: now(),
    }
}

fn code(result: Result<VerifiedManifest, ManifestRefusal>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) => e.code(),
    }
}

#[test]
fn signing_bytes_are_the_documented_text() {
    let m = manifest(3);
    let id = "ab".repeat(32);
    let text = String::from_utf8(m.signing_bytes(&id)).expect("utf-8");
    assert_eq!(
        text,
        format!(
            "vigil-module-manifest-v1\nname=hello.so\nversion=3\nsha256={}\nsize=100\n\
             target=x86_64-linux\nabi=1\nnot_before=2027-01-15T07:59:00+00:00\n\
             expires=2027-01-15T09:00:00+00:00\nkey_id={id}\n",
            sum(1)
        )
    );
}

#[test]
fn key_id_is_the_sha256_of_the_raw_public_key() {
    let k = key().verifying_key();
    assert_eq!(key_id(&k), hex::encode(sha2::Sha256::digest(k.as_bytes())));
    assert_eq!(key_id(&k).len(), 64);
}

#[test]
fn a_signed_manifest_round_trips_and_verifies() {
    let signed = manifest(3).sign(&key()).expect("sign");
    assert_eq!(signed.key_id(), key_id(&key().verifying_key()));
    let file = SignedManifest::from_json(signed.to_json().as_bytes()).expect("file");
    let wire = SignedManifest::from_map(&signed.to_map()).expect("wire");
    assert_eq!(file, signed);
    assert_eq!(wire, signed);
    let p = platform();
    let verified = keys().verify(&file, &check(&p, None)).expect("verifies");
    assert_eq!(verified.version(), 3);
    assert_eq!(verified.name(), "hello.so");
}

#[test]
fn every_bad_manifest_has_its_own_code() {
    let p = platform();
    let k = keys();
    let good = manifest(3).sign(&key()).expect("sign");
    let with = |edit: &dyn Fn(&mut ModuleManifest)| {
        let mut m = manifest(3);
        edit(&mut m);
        m.sign(&key()).expect("sign")
    };
    // Malformed: not JSON, unknown field, wrong format, bad hex, huge.
    for text in [
        "not json".to_owned(),
        good.to_json().replace("\"abi\"", "\"abi_version\""),
        good.to_json()
            .replace(MANIFEST_DOMAIN, "vigil-module-manifest-v0"),
        good.to_json().replace(&sum(1), "xyz"),
        format!("{{\"pad\": \"{}\"}}", "x".repeat(MAX_MANIFEST_BYTES)),
    ] {
        assert_eq!(
            SignedManifest::from_json(text.as_bytes())
                .map(|_| ())
                .map_err(|e| e.code()),
            Err("manifest_malformed"),
            "{text}"
        );
    }
    let stranger = SigningKey::from_bytes(&[7; 32]);
    assert_eq!(
        code(k.verify(
            &manifest(3).sign(&stranger).expect("sign"),
            &check(&p, None)
        )),
        "manifest_unknown_key"
    );
    // A field changed after signing.
    let mut tampered = good.to_map();
    tampered.insert("version".into(), Value::from(4));
    let tampered = SignedManifest::from_map(&tampered).expect("parses");
    assert_eq!(
        code(k.verify(&tampered, &check(&p, None))),
        "manifest_bad_signature"
    );
    let renamed = with(&|m| m.name = "other.so".into());
    assert_eq!(
        code(k.verify(&renamed, &check(&p, None))),
        "manifest_wrong_name"
    );
    let arm = with(&|m| m.target = "aarch64-linux".into());
    assert_eq!(
        code(k.verify(&arm, &check(&p, None))),
        "manifest_wrong_target"
    );
    let abi2 = with(&|m| m.abi = 2);
    assert_eq!(
        code(k.verify(&abi2, &check(&p, None))),
        "manifest_wrong_target"
    );
    let other_bytes = with(&|m| m.sha256 = sum(2));
    assert_eq!(
        code(k.verify(&other_bytes, &check(&p, None))),
        "manifest_mismatch"
    );
    let other_size = with(&|m| m.size = 101);
    assert_eq!(
        code(k.verify(&other_size, &check(&p, None))),
        "manifest_mismatch"
    );
    let early = with(&|m| m.not_before = at(T0 + 1));
    assert_eq!(
        code(k.verify(&early, &check(&p, None))),
        "manifest_not_yet_valid"
    );
    let expired = with(&|m| {
        m.not_before = at(T0 - 3600);
        m.expires = at(T0);
    });
    assert_eq!(
        code(k.verify(&expired, &check(&p, None))),
        "manifest_expired"
    );
    let mark = HighWater {
        version: 4,
        sha256: sum(9),
    };
    assert_eq!(
        code(k.verify(&good, &check(&p, Some(&mark)))),
        "manifest_rollback"
    );
    let same = HighWater {
        version: 3,
        sha256: sum(9),
    };
    assert_eq!(
        code(k.verify(&good, &check(&p, Some(&same)))),
        "manifest_version_reused"
    );
    let trusted = HighWater {
        version: 3,
        sha256: sum(1),
    };
    assert_eq!(code(k.verify(&good, &check(&p, Some(&trusted)))), "ok");
    // A client checks no platform.
    let mut no_platform = check(&p, None);
    no_platform.platform = None;
    assert_eq!(code(k.verify(&arm, &no_platform)), "ok");
}

#[test]
fn signing_refuses_what_receivers_would_refuse() {
    for edit in [
        (|m: &mut ModuleManifest| m.name = "a\nversion=9".into()) as fn(&mut ModuleManifest),
        |m| m.name = "../x.so".into(),
        |m| m.name = String::new(),
        |m| m.sha256 = sum(0xab).to_uppercase(),
        |m| m.target = "x86 64".into(),
        |m| m.expires = m.not_before,
    ] {
        let mut m = manifest(1);
        edit(&mut m);
        assert_eq!(
            m.sign(&key()).map(|_| ()).map_err(|e| e.code()),
            Err("manifest_malformed")
        );
    }
}

#[test]
fn module_keys_files_mean_exactly_what_they_say() {
    let k = key().verifying_key();
    let text = keys().to_json();
    assert_eq!(
        ModuleKeys::from_json(text.as_bytes()).expect("parses"),
        keys()
    );
    let without_id = format!(
        "{{\"module_keys\": [{{\"public_key\": \"{}\"}}]}}",
        crate::encode_public_key(&k)
    );
    assert_eq!(
        ModuleKeys::from_json(without_id.as_bytes()).expect("parses"),
        keys()
    );
    let wrong_id = text.replace(&key_id(&k), &"0".repeat(64));
    assert!(matches!(
        ModuleKeys::from_json(wrong_id.as_bytes()),
        Err(ModuleKeysError::WrongKeyId { .. })
    ));
    assert!(matches!(
        ModuleKeys::from_json(b"{\"module_keys\": []}"),
        Err(ModuleKeysError::Empty)
    ));
    assert!(matches!(
        ModuleKeys::from_json(b"{\"module_keys\": [], \"x\": 1}"),
        Err(ModuleKeysError::Parse { .. })
    ));
    assert!(matches!(
        ModuleKeys::from_keys([k, k]),
        Err(ModuleKeysError::Duplicate { .. })
    ));
    // The identity point is of small order.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let weak = VerifyingKey::from_bytes(&identity).expect("a point");
    assert!(matches!(
        ModuleKeys::from_keys([weak]),
        Err(ModuleKeysError::WeakKey { entry: 1 })
    ));
}

#[test]
fn the_version_store_only_goes_up() {
    let store = VersionStore::in_memory();
    let p = platform();
    let k = keys();
    let verified = |m: ModuleManifest| {
        let s = m.sha256.clone();
        let mut c = check(&p, None);
        c.sha256 = &s;
        k.verify(&m.sign(&key()).expect("sign"), &c)
            .expect("verifies")
    };
    store.record(&verified(manifest(3))).expect("first");
    assert_eq!(store.get("hello.so").map(|h| h.version), Some(3));
    // The same again is fine; lower or reused is refused and changes nothing.
    store.record(&verified(manifest(3))).expect("same");
    assert_eq!(
        store.record(&verified(manifest(2))).map_err(|e| e.code()),
        Err("manifest_rollback")
    );
    let mut other = manifest(3);
    other.sha256 = sum(5);
    assert_eq!(
        store.record(&verified(other)).map_err(|e| e.code()),
        Err("manifest_version_reused")
    );
    store.record(&verified(manifest(7))).expect("up");
    assert_eq!(
        store.get("hello.so"),
        Some(HighWater {
            version: 7,
            sha256: sum(1)
        })
    );
}

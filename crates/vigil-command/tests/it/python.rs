//! Commands signed by Python (`tests/data/make_fixtures.py`, the CIRIS
//! recipe with the `cryptography` package): the signing bytes must match
//! byte for byte, and the signatures must verify.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use vigil_command::{Authorities, AuthorityKey, SignedCommand, Verifier, decode_public_key};

#[derive(Deserialize)]
struct Fixtures {
    private_key_seed_hex: String,
    public_key: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    body: String,
    signing_bytes_hex: String,
    issued_at_isoformat: String,
}

fn fixtures() -> Fixtures {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ciris_fixtures.json");
    let text = std::fs::read(&path).expect("fixture file");
    serde_json::from_slice(&text).expect("fixture json")
}

fn verifier(f: &Fixtures) -> Verifier {
    let key = decode_public_key(&f.public_key).expect("fixture key");
    Verifier::new(
        Authorities::from_keys([
            AuthorityKey::new(None, key, ["SHUTDOWN_NOW", "EXEC"]).expect("authority")
        ])
        .expect("authorities"),
    )
}

#[test]
fn signing_bytes_match_python_byte_for_byte() {
    let f = fixtures();
    assert!(f.cases.len() >= 12);
    for case in &f.cases {
        let cmd = SignedCommand::from_json(case.body.as_bytes())
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        assert_eq!(
            cmd.body.issued_at.isoformat(),
            case.issued_at_isoformat,
            "{}",
            case.name
        );
        let ours = hex::encode(cmd.signing_bytes().expect("bytes"));
        if ours != case.signing_bytes_hex {
            let ours = String::from_utf8(hex::decode(&ours).expect("hex")).expect("ascii");
            let theirs = String::from_utf8(hex::decode(&case.signing_bytes_hex).expect("hex"))
                .expect("ascii");
            let at = ours
                .bytes()
                .zip(theirs.bytes())
                .position(|(a, b)| a != b)
                .unwrap_or(ours.len().min(theirs.len()));
            panic!(
                "{}: signing bytes differ at byte {at}\n ours: {}\n python: {}",
                case.name,
                &ours[at.saturating_sub(40)..(at + 40).min(ours.len())],
                &theirs[at.saturating_sub(40)..(at + 40).min(theirs.len())],
            );
        }
    }
}

#[test]
fn python_signatures_verify() {
    let f = fixtures();
    let v = verifier(&f);
    for case in &f.cases {
        let cmd = SignedCommand::from_json(case.body.as_bytes()).expect("parse");
        let now = cmd.body.issued_at.to_system_time() + Duration::from_secs(1);
        v.verify(&cmd, now)
            .unwrap_or_else(|e| panic!("{}: {} ({})", case.name, e, e.code()));

        // Written back out (Z becomes +00:00, escapes change) it still
        // verifies: the signature covers values, not the body's text.
        let again = SignedCommand::from_json(cmd.to_json().as_bytes()).expect("reparse");
        v.verify(&again, now)
            .unwrap_or_else(|e| panic!("{} after round trip: {e}", case.name));

        // And any change to a signed field breaks it.
        let mut tampered = cmd.clone();
        tampered.body.reason.push('.');
        assert_eq!(
            v.verify(&tampered, now).map(|_| ()).map_err(|e| e.code()),
            Err("invalid_signature"),
            "{}",
            case.name
        );
    }
}

#[test]
fn the_fixture_key_is_the_documented_seed() {
    let f = fixtures();
    let seed: [u8; 32] = hex::decode(&f.private_key_seed_hex)
        .expect("hex")
        .try_into()
        .expect("32 bytes");
    let key = vigil_command::SigningKey::from_bytes(&seed);
    assert_eq!(
        vigil_command::encode_public_key(&key.verifying_key()),
        f.public_key
    );

    // Rust signing reproduces Python's signatures exactly (Ed25519 is
    // deterministic), for the cases signed with the padded standard key.
    for case in &f.cases {
        let cmd = SignedCommand::from_json(case.body.as_bytes()).expect("parse");
        if cmd.wa_public_key != f.public_key {
            continue;
        }
        let ours = SignedCommand::sign(cmd.body.clone(), &key).expect("sign");
        assert_eq!(ours.signature, cmd.signature, "{}", case.name);
    }
}

/// When Python is installed with `cryptography`, regenerate the fixtures
/// into a temporary copy and check that the checked-in file is what the
/// script writes.
#[test]
fn checked_in_fixtures_are_what_the_script_writes() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("make_fixtures.py");
    std::fs::copy(data.join("make_fixtures.py"), &script).expect("copy script");
    let run = std::process::Command::new("python3").arg(&script).output();
    let Ok(out) = run else {
        eprintln!("python3 not installed: regeneration not checked");
        return;
    };
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No module named 'cryptography'") {
            eprintln!("python cryptography not installed: regeneration not checked");
            return;
        }
        panic!("make_fixtures.py failed: {err}");
    }
    let fresh: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("ciris_fixtures.json")).expect("fresh"),
    )
    .expect("json");
    let checked_in: serde_json::Value = serde_json::from_slice(
        &std::fs::read(data.join("ciris_fixtures.json")).expect("checked in"),
    )
    .expect("json");
    // The interpreter and library versions may differ; the cases may not.
    assert_eq!(fresh["cases"], checked_in["cases"]);
    assert_eq!(fresh["public_key"], checked_in["public_key"]);
}

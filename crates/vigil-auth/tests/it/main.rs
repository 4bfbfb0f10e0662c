//! Integration tests for vigil-auth: real files, real openssl certificates.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vigil_auth::{AuthError, Fingerprint, GeneratedIdentity, Identity, TrustFile, TrustStore};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn read_fp(name: &str) -> Fingerprint {
    std::fs::read_to_string(data(name))
        .expect("fixture")
        .parse()
        .expect("fingerprint")
}

/// The brief's pipeline:
/// `openssl x509 -in c.crt -pubkey -noout | openssl pkey -pubin -outform der | sha256sum`.
/// `None` when openssl is not installed.
fn openssl_fingerprint(cert: &Path) -> Option<String> {
    let pubkey = Command::new("openssl")
        .args(["x509", "-pubkey", "-noout", "-in"])
        .arg(cert)
        .output()
        .ok()?;
    assert!(pubkey.status.success(), "openssl x509 failed");
    let mut child = Command::new("openssl")
        .args(["pkey", "-pubin", "-outform", "der"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&pubkey.stdout)
        .expect("write");
    let der = child.wait_with_output().expect("openssl pkey");
    assert!(der.status.success(), "openssl pkey failed");
    use sha2::Digest as _;
    Some(hex::encode(sha2::Sha256::digest(&der.stdout)))
}

#[test]
fn openssl_certificates_load_with_the_openssl_fingerprint() {
    for name in ["openssl-client", "openssl-p256"] {
        let id = Identity::load(&data(&format!("{name}.crt")), &data(&format!("{name}.key")))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(
            id.fingerprint(),
            read_fp(&format!("{name}.fingerprint")),
            "{name}"
        );
    }
}

#[test]
fn fixtures_match_a_live_openssl_run() {
    // The checked-in fingerprints were made by the openssl pipeline; when
    // openssl is here, run it again on the fixtures and on a fresh
    // vigil-generated certificate.
    let Some(live) = openssl_fingerprint(&data("openssl-client.crt")) else {
        eprintln!("openssl not installed: live comparison not run");
        return;
    };
    assert_eq!(live, read_fp("openssl-client.fingerprint").to_hex());

    let dir = tempfile::tempdir().expect("tempdir");
    let generated = GeneratedIdentity::generate("vigil-test").expect("generate");
    let (crt, key) = (dir.path().join("c.crt"), dir.path().join("c.key"));
    generated.write(&crt, &key, false).expect("write");
    assert_eq!(
        openssl_fingerprint(&crt).expect("openssl"),
        generated.fingerprint.to_hex()
    );
    // openssl reads the generated key too, and finds the same public key
    // (found by the external checks: it could not read ring's PKCS#8 v2).
    let pubkey = Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&key)
        .output()
        .expect("openssl pkey");
    assert!(
        pubkey.status.success(),
        "openssl cannot read the key: {}",
        String::from_utf8_lossy(&pubkey.stderr)
    );
    let cert_pubkey = Command::new("openssl")
        .args(["x509", "-pubkey", "-noout", "-in"])
        .arg(&crt)
        .output()
        .expect("openssl x509");
    let pem_of_key = Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .output()
        .expect("openssl pkey");
    assert_eq!(
        pem_of_key.stdout, cert_pubkey.stdout,
        "the key matches the certificate"
    );
    // And an openssl-made Ed25519 certificate made right now.
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "ed25519", "-nodes", "-days", "2", "-subj", "/CN=live",
        ])
        .arg("-keyout")
        .arg(dir.path().join("o.key"))
        .arg("-out")
        .arg(dir.path().join("o.crt"))
        .output()
        .expect("openssl req");
    assert!(status.status.success());
    let id = Identity::load(&dir.path().join("o.crt"), &dir.path().join("o.key")).expect("load");
    assert_eq!(
        openssl_fingerprint(&dir.path().join("o.crt")).expect("openssl"),
        id.fingerprint().to_hex()
    );
}

#[test]
fn generated_key_is_owner_only_and_not_overwritten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let g = GeneratedIdentity::generate("x").expect("generate");
    let (crt, key) = (dir.path().join("x.crt"), dir.path().join("x.key"));
    g.write(&crt, &key, false).expect("write");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let err = g.write(&crt, &key, false).expect_err("exists");
    assert!(err.to_string().contains("x.crt"), "{err}");
}

#[test]
fn bad_identity_files_name_the_file_and_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good_crt = data("openssl-client.crt");
    let good_key = data("openssl-client.key");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, b"hello\n").expect("write");
    let missing = dir.path().join("missing.crt");

    let check = |crt: &Path, key: &Path, needles: &[&str]| {
        let err = Identity::load(crt, key).expect_err("must fail").to_string();
        for n in needles {
            assert!(err.contains(n), "{err:?} lacks {n:?}");
        }
    };
    check(&missing, &good_key, &["missing.crt", "No such file"]);
    check(&good_crt, &missing, &["missing.crt"]);
    check(
        &garbage,
        &good_key,
        &["garbage.pem", "no certificate found"],
    );
    check(
        &good_crt,
        &garbage,
        &["garbage.pem", "no private key found"],
    );
    check(
        &good_key,
        &good_crt,
        &["openssl-client.key", "no certificate found", "PRIVATE KEY"],
    );
    check(
        &good_crt,
        &data("openssl-p256.key"),
        &["does not match", "openssl-p256.key"],
    );

    // A certificate block whose content is not a certificate.
    let bogus = dir.path().join("bogus.crt");
    std::fs::write(
        &bogus,
        "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    let err = Identity::load(&bogus, &good_key).expect_err("bogus");
    assert!(matches!(err, AuthError::InFile { .. }), "{err}");
    assert!(err.to_string().contains("bogus.crt"), "{err}");
}

fn write_trust(path: &Path, fps: &[Fingerprint]) {
    let file = TrustFile {
        trusted_fingerprints: fps.to_vec(),
    };
    // Write a temporary file and rename it into place, as careful tools do.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, file.to_json()).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

fn wait_for(
    rx: &mut tokio::sync::watch::Receiver<std::sync::Arc<vigil_auth::TrustSet>>,
    what: impl Fn(&vigil_auth::TrustSet) -> bool,
) -> Duration {
    let start = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("rt");
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| what(s)))
            .await
            .expect("store changed in time")
            .expect("store alive");
    });
    start.elapsed()
}

#[test]
fn trust_file_missing_or_invalid_at_start_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("trusted-keys.json");
    let err = TrustStore::load(&path).expect_err("missing").to_string();
    assert!(err.contains("trusted-keys.json"), "{err}");
    std::fs::write(&path, "{\"trusted_fingerprints\": [\"nope\"]}").expect("write");
    let err = TrustStore::load(&path).expect_err("invalid").to_string();
    assert!(
        err.contains("trusted-keys.json") && err.contains("nope"),
        "{err}"
    );
}

#[test]
fn watched_trust_file_follows_edits_and_keeps_last_good_list() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("trusted-keys.json");
    let (a, b) = (
        Fingerprint::from_bytes([1; 32]),
        Fingerprint::from_bytes([2; 32]),
    );
    write_trust(&path, &[a]);
    let store = TrustStore::load(&path).expect("load");
    let _watch = store.watch().expect("watch");
    let mut rx = store.subscribe();

    // Rename over: b added, a removed.
    write_trust(&path, &[b]);
    let took = wait_for(&mut rx, |s| s.contains(&b) && !s.contains(&a));
    eprintln!("rename-over edit applied after {took:?}");

    // Garbage: the last good list stays.
    std::fs::write(&path, b"{ this is not json").expect("write");
    std::thread::sleep(Duration::from_millis(300));
    assert!(store.is_trusted(&b) && !store.is_trusted(&a));

    // In-place rewrite (truncate + write), as `echo > file` does.
    std::fs::write(
        &path,
        TrustFile {
            trusted_fingerprints: vec![a, b],
        }
        .to_json(),
    )
    .expect("write");
    let took = wait_for(&mut rx, |s| s.contains(&a) && s.contains(&b));
    eprintln!("in-place edit applied after {took:?}");

    // Deleting the file keeps the last good list too.
    std::fs::remove_file(&path).expect("remove");
    std::thread::sleep(Duration::from_millis(300));
    assert!(store.is_trusted(&a) && store.is_trusted(&b));
}

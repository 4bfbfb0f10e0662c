//! Throughput of the command checks, printed as figures.
//!
//! Run it in release mode (debug builds are many times slower):
//!
//! ```sh
//! cargo run --release -p vigil-command --example verify_bench
//! ```
//!
//! It measures, each for about a second: building the CIRIS signing bytes,
//! Ed25519 `verify_strict` alone, signing, the whole `Verifier::verify`
//! (parse excluded), parsing a command from JSON, heartbeat verification, and
//! the replay guard with its `fsync` on a file in a temporary directory.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use ed25519_dalek::Signer as _;
use vigil_command::{
    Authorities, AuthorityKey, Heartbeat, HeartbeatVerifier, NonceVerifier, ReplayGuard,
    SignedBatch, SignedCommand, SigningKey, Timestamp, UnsignedCommand, Verifier, decode_signature,
};

/// Runs `f` repeatedly for about `budget` and returns (calls, elapsed).
fn measure(budget: Duration, mut f: impl FnMut(u64)) -> (u64, Duration) {
    // Warm up.
    for i in 0..100 {
        f(i);
    }
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < budget {
        for _ in 0..64 {
            f(n);
            n += 1;
        }
    }
    (n, start.elapsed())
}

fn report(name: &str, (n, elapsed): (u64, Duration), bytes_each: Option<usize>) {
    let per_sec = n as f64 / elapsed.as_secs_f64();
    let micros = elapsed.as_secs_f64() * 1e6 / n as f64;
    match bytes_each {
        Some(b) => println!(
            "{name:<44} {per_sec:>12.0}/s  {micros:>9.2} µs each  {:>8.1} MB/s",
            per_sec * b as f64 / 1e6
        ),
        None => println!("{name:<44} {per_sec:>12.0}/s  {micros:>9.2} µs each"),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let budget = Duration::from_secs(1);
    let key = SigningKey::from_bytes(&[42; 32]);
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_732_800);
    let issued = Timestamp::from_system_time(now)?;

    let mut minimal = UnsignedCommand::new(
        "cmd_unique_id",
        "SHUTDOWN_NOW",
        "wa_ops",
        issued,
        "Emergency maintenance required",
    );
    minimal.target_agent_id = Some("agent-7".into());
    let mut general = minimal.clone();
    general.command_type = "EXEC".into();
    general.reason = "Arrêt d'urgence — rotate logs 🚨".into();
    general.command = Some("logrotate".into());
    general.args = Some(serde_json::json!({
        "paths": ["/var/log/a", "/var/log/b"],
        "limits": {"max_mb": 512, "ratio": 0.75, "keep": 7},
        "force": true,
    }));
    let minimal = minimal.sign(&key)?;
    let general = general.sign(&key)?;

    println!("vigil-command verify_bench (release figures only mean something)");
    for (label, cmd) in [
        ("minimal SHUTDOWN_NOW", &minimal),
        ("EXEC with args", &general),
    ] {
        let len = cmd.signing_bytes()?.len();
        report(
            &format!("signing bytes, {label} ({len} B)"),
            measure(budget, |_| {
                black_box(black_box(cmd).signing_bytes().ok());
            }),
            Some(len),
        );
    }

    let message = minimal.signing_bytes()?;
    let signature = decode_signature(&minimal.signature)?;
    let public = key.verifying_key();
    report(
        "ed25519 verify_strict",
        measure(budget, |_| {
            black_box(
                public
                    .verify_strict(black_box(&message), black_box(&signature))
                    .ok(),
            );
        }),
        None,
    );
    report(
        "ed25519 sign",
        measure(budget, |_| {
            black_box(key.sign(black_box(&message)));
        }),
        None,
    );

    let authorities = Authorities::from_keys([AuthorityKey::new(
        Some("wa_ops".into()),
        public,
        ["SHUTDOWN_NOW", "EXEC"],
    )?])?;
    let verifier = Verifier::new(authorities.clone());
    report(
        "Verifier::verify, minimal (no replay guard)",
        measure(budget, |_| {
            black_box(verifier.verify(black_box(&minimal), now).ok());
        }),
        None,
    );
    report(
        "Verifier::verify, with args (no replay guard)",
        measure(budget, |_| {
            black_box(verifier.verify(black_box(&general), now).ok());
        }),
        None,
    );

    let body = general.to_json();
    report(
        &format!("SignedCommand::from_json ({} B)", body.len()),
        measure(budget, |_| {
            black_box(SignedCommand::from_json(black_box(body.as_bytes())).ok());
        }),
        Some(body.len()),
    );

    let mut hb = HeartbeatVerifier::new(public)?;
    let beats: Vec<_> = (1..=50_000u64)
        .map(|seq| {
            Heartbeat {
                epoch: 1,
                seq,
                sent_at: issued,
            }
            .sign(&key)
        })
        .collect();
    let mut i = 0usize;
    let start = Instant::now();
    while i < beats.len() && start.elapsed() < budget {
        black_box(hb.verify(&beats[i], now).ok());
        i += 1;
    }
    report(
        "HeartbeatVerifier::verify",
        (i as u64, start.elapsed()),
        None,
    );

    // Nonce heartbeats: the server's batch (tree, one signature, one
    // frame per client) at fleet sizes, and the client's check.
    for clients in [10_000usize, 19_000] {
        let nonces: Vec<[u8; 32]> = (0..clients)
            .map(|i| {
                let mut n = [0u8; 32];
                n[..8].copy_from_slice(&(i as u64).to_le_bytes());
                n
            })
            .collect();
        let start = Instant::now();
        let batch = SignedBatch::sign(&key, 1, 1, issued, nonces).ok_or("no batch")?;
        let signed = start.elapsed();
        let start = Instant::now();
        let mut bytes = 0usize;
        for leaf in 0..clients {
            let beat = batch.for_leaf(leaf).ok_or("no leaf")?;
            bytes += serde_json::to_string(&beat)?.len();
        }
        let framed = start.elapsed();
        println!(
            "SignedBatch for {clients} clients: tree and signature {:.2} ms, {clients} frames {:.2} ms ({:.2} µs and {} bytes of JSON each)",
            signed.as_secs_f64() * 1e3,
            framed.as_secs_f64() * 1e3,
            framed.as_secs_f64() * 1e6 / clients as f64,
            bytes / clients
        );
    }
    let mut client = NonceVerifier::new(public)?.with_max_age(Duration::from_secs(3_600));
    let origin = Instant::now();
    let mine = [9u8; 32];
    client.issue(mine, origin.elapsed());
    let mut nonces: Vec<[u8; 32]> = (0..19_000u64)
        .map(|i| {
            let mut n = [1u8; 32];
            n[..8].copy_from_slice(&i.to_le_bytes());
            n
        })
        .collect();
    nonces[4_321] = mine;
    let beats: Vec<_> = (1..=300u64)
        .map(|seq| {
            SignedBatch::sign(&key, 1, seq, issued, nonces.clone())
                .and_then(|b| b.for_leaf(4_321))
                .ok_or("no beat")
        })
        .collect::<Result<_, _>>()?;
    let mut i = 0usize;
    let start = Instant::now();
    while i < beats.len() && start.elapsed() < budget {
        black_box(client.verify(&beats[i], origin.elapsed(), now).ok());
        i += 1;
    }
    report(
        "NonceVerifier::verify (19,000 leaves)",
        (i as u64, start.elapsed()),
        None,
    );

    let dir = tempfile::tempdir()?;
    let guard = Arc::new(ReplayGuard::open(dir.path().join("replay.log"), now)?);
    let forget = now + Duration::from_secs(300);
    report(
        "ReplayGuard::check_and_record (fsync each)",
        measure(budget, |n| {
            black_box(
                guard
                    .check_and_record(&format!("cmd_{n}"), forget, now)
                    .ok(),
            );
        }),
        None,
    );
    let memory = ReplayGuard::in_memory().with_capacity(usize::MAX);
    report(
        "ReplayGuard::check_and_record (in memory)",
        measure(budget, |n| {
            black_box(
                memory
                    .check_and_record(&format!("cmd_{n}"), forget, now)
                    .ok(),
            );
        }),
        None,
    );
    Ok(())
}

//! Module benchmarks on loopback, real TLS, real dylibs.
//!
//! Run: `cargo run --release -p vigil-server --example module_bench`
//! (options: `-- --clients 100 --trials 10 --execs 20000`).
//!
//! 1. Re-verification fan-out: 100 connected clients; a new build of
//!    `mods/hello` is renamed into the mods directory; the time until every
//!    client has fetched the new bytes, hashed them and trusted the module.
//! 2. Exec round trips on one connection: sequential (one in flight) and
//!    pipelined (32 in flight), with latency percentiles.
//! 3. The module's host process: its memory, and the time from killing it
//!    (SIGKILL, as a crash would end it) to the module answering again.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use vigil_auth::{GeneratedIdentity, TrustStore};
use vigil_client::{Client, ClientConfig, ClientEvent, Connection};
use vigil_modules::{ModuleRegistry, RegistryConfig, dev};
use vigil_server::{Deployment, ServerConfig};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

async fn wait_trusted(events: &mut broadcast::Receiver<ClientEvent>, sum: &str) {
    loop {
        match events.recv().await {
            Ok(ClientEvent::ModuleTrusted(m)) if m.sum == sum => return,
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(_)) => {}
            Err(e) => panic!("client events: {e}"),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n_clients = arg("--clients", 100);
    let trials = arg("--trials", 10);
    let n_execs = arg("--execs", 20_000);

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let manifest = root.join("mods/hello/Cargo.toml");
    let target = root.join("target/bench-modules");
    eprintln!("building mods/hello (two versions, release)...");
    let v1 = dev::cargo_build_module(&manifest, &target.join("plain"), &[], true)?;
    let v2 = dev::cargo_build_module(&manifest, &target.join("formal"), &["formal"], true)?;
    let versions = [std::fs::read(&v1)?, std::fs::read(&v2)?];
    let sums: Vec<String> = versions
        .iter()
        .map(|b| {
            use sha2::Digest as _;
            hex::encode(sha2::Sha256::digest(b))
        })
        .collect();

    let dir = tempfile::tempdir()?;
    let mods = dir.path().join("mods");
    std::fs::create_dir(&mods)?;
    let ids: Vec<GeneratedIdentity> = (0..n_clients)
        .map(|i| GeneratedIdentity::generate(&format!("c{i}")))
        .collect::<Result<_, _>>()?;
    let trust = TrustStore::from_fingerprints(ids.iter().map(|g| g.fingerprint));
    let registry = ModuleRegistry::open(RegistryConfig::new(&mods))?;
    let server_id = GeneratedIdentity::generate("server")?;
    let mut config = ServerConfig::new("127.0.0.1:0".parse()?, server_id.identity()?, trust);
    config.modules = Some(registry.clone());
    // Measures module fan-out alone: nothing here is a command.
    config.dangerous().run_without_audit_log();
    let running = Deployment::new(config).start().await?;
    let addr = running.local_addr();
    let handle = running.handle();
    tokio::spawn(running.run());

    // Start with v1 deployed.
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch)?;
    let files: Vec<_> = versions
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let p = scratch.join(format!("v{i}.so"));
            std::fs::write(&p, b).map(|()| p)
        })
        .collect::<Result<_, _>>()?;
    dev::deploy(&files[0], &mods, "hello.so")?;
    while registry.list().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let stop = CancellationToken::new();
    let mut clients = Vec::new();
    for id in &ids {
        let client = Arc::new(Client::new(ClientConfig::new(
            addr.to_string(),
            id.identity()?,
            server_id.fingerprint,
        )));
        let mut events = client.subscribe();
        let (c, s) = (client.clone(), stop.clone());
        tokio::spawn(async move { c.run(s).await });
        clients.push((client, events.resubscribe()));
        wait_trusted(&mut events, &sums[0]).await;
    }
    eprintln!("{n_clients} clients connected and verified v1");

    println!("== re-verification fan-out: rename into mods -> all {n_clients} clients re-verified");
    println!(
        "module size {} bytes ({} bytes base64 per client)",
        versions[1].len(),
        versions[1].len().div_ceil(3) * 4
    );
    let mut fanout = Vec::new();
    for t in 0..trials {
        let next = (t + 1) % 2;
        for (_, events) in &mut clients {
            *events = events.resubscribe();
        }
        let start = Instant::now();
        dev::deploy(&files[next], &mods, "hello.so")?;
        let waits = clients
            .iter_mut()
            .map(|(_, events)| wait_trusted(events, &sums[next]));
        futures_util::future::join_all(waits).await;
        let took = start.elapsed();
        println!("trial {:2}: {}", t + 1, ms(took));
        fanout.push(took);
    }
    fanout.sort();
    println!(
        "fan-out over {trials} trials: p50 {}  max {}  (includes the watcher's 50 ms settle time)",
        ms(percentile(&fanout, 0.5)),
        ms(*fanout.last().unwrap_or(&Duration::ZERO))
    );
    stop.cancel();
    drop(clients);
    while !handle.sessions().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let conn = Arc::new(
        Connection::connect(&ClientConfig::new(
            addr.to_string(),
            ids[0].identity()?,
            server_id.fingerprint,
        ))
        .await?,
    );
    let sum = registry
        .get("hello.so")
        .map(|m| m.summary().sum.clone())
        .unwrap_or_default();
    conn.exec("hello.so", "warm", &sum).await?;

    println!("== exec round trips on one connection ({n_execs} execs of hello.so)");
    let mut lat = Vec::with_capacity(n_execs);
    let start = Instant::now();
    for _ in 0..n_execs {
        let t = Instant::now();
        conn.exec("hello.so", "bench", &sum).await?;
        lat.push(t.elapsed());
    }
    let total = start.elapsed();
    lat.sort();
    println!(
        "sequential: {:.0} execs/s  p50 {}  p99 {}  max {}",
        n_execs as f64 / total.as_secs_f64(),
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.99)),
        ms(*lat.last().unwrap_or(&Duration::ZERO))
    );

    let window = 32;
    let start = Instant::now();
    let per_task = n_execs / window;
    let tasks: Vec<_> = (0..window)
        .map(|_| {
            let (conn, sum) = (conn.clone(), sum.clone());
            tokio::spawn(async move {
                for _ in 0..per_task {
                    conn.exec("hello.so", "bench", &sum).await?;
                }
                Ok::<(), vigil_client::ClientError>(())
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    let total = start.elapsed();
    println!(
        "pipelined ({window} in flight): {:.0} execs/s",
        (per_task * window) as f64 / total.as_secs_f64()
    );

    println!("== the module's host process");
    let pid_of = || registry.get("hello.so").and_then(|m| m.health().pid);
    if let Some(pid) = pid_of() {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .map(|l| l.trim_start_matches(name).trim().to_owned())
                .unwrap_or_default()
        };
        println!(
            "host pid {pid}: VmRSS {}, VmHWM {}, RssAnon {}",
            field("VmRSS:"),
            field("VmHWM:"),
            field("RssAnon:")
        );
    }
    // The first failure within a minute is followed by an immediate
    // restart; the later ones wait the backoff (250 ms, doubling).
    for trial in 1..=3 {
        let Some(pid) = pid_of() else { break };
        let start = Instant::now();
        std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()?;
        // The first call may be the one that finds the host dead.
        let mut failed = 0;
        while conn.exec("hello.so", "again", &sum).await.is_err() {
            failed += 1;
        }
        println!(
            "host killed -> module answering again (failure {trial} within a minute): {} ({failed} calls failed meanwhile)",
            ms(start.elapsed())
        );
    }
    handle.shutdown();
    Ok(())
}

//! Audit log throughput and latency with 1, 16 and 256 concurrent writers.
//!
//! Run it in release mode on the disk you care about:
//!
//! ```sh
//! cargo run --release -p vigil-audit --example audit_bench            # under /tmp
//! cargo run --release -p vigil-audit --example audit_bench -- /var/tmp 5
//! ```
//!
//! The optional arguments are the directory to write in (a temporary
//! directory is made there and removed afterwards) and the seconds per
//! run (default 3). Each writer is a tokio task that appends a small
//! command record, waits for its receipt, and repeats. The log is verified
//! after each run. First, a baseline: plain appends of a line of the same
//! size, each followed by `fdatasync`, for one second, which is what one
//! writer cannot beat on this disk.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use vigil_audit::{AuditLog, AuditOptions, verify};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(args.next().unwrap_or_else(|| "/tmp".into()));
    let secs: u64 = match args.next() {
        Some(s) => s.parse()?,
        None => 3,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;

    println!(
        "vigil-audit: {secs} s per run in {}, {} cores",
        dir.display(),
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let (rate, p50, p99) = fsync_baseline(&dir)?;
    println!(
        "disk baseline: {rate:.0} write+fdatasync/s, p50 {}, p99 {}",
        fmt(p50),
        fmt(p99)
    );
    println!(
        "{:>8} {:>11} {:>10} {:>10} {:>10} {:>9} {:>10}",
        "writers", "appends/s", "p50", "p99", "max", "syncs/s", "rec/sync"
    );
    for writers in [1usize, 16, 256] {
        let tmp = tempfile::tempdir_in(&dir)?;
        let path = tmp.path().join("audit.jsonl");
        let log = AuditLog::open(&path, AuditOptions::default())?;
        let run = Duration::from_secs(secs);

        let started = Instant::now();
        let mut latencies: Vec<Duration> = rt.block_on(async {
            let tasks: Vec<_> = (0..writers)
                .map(|w| {
                    let log = log.clone();
                    tokio::spawn(async move {
                        let mut lat = Vec::new();
                        let mut i = 0u64;
                        while started.elapsed() < run {
                            let t0 = Instant::now();
                            log.append(
                                "command.issued",
                                json!({
                                    "writer": w,
                                    "n": i,
                                    "command": "uptime",
                                    "client": "4f2a9c0e",
                                }),
                            )
                            .await
                            .map_err(|e| e.to_string())?;
                            lat.push(t0.elapsed());
                            i += 1;
                        }
                        Ok::<_, String>(lat)
                    })
                })
                .collect();
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.map_err(|e| e.to_string())??);
            }
            Ok::<_, String>(all)
        })?;
        let elapsed = started.elapsed().as_secs_f64();
        let stats = log.stats();
        rt.block_on(log.close())?;

        let report = verify(&path)?;
        assert!(report.is_ok(), "{report}");
        assert_eq!(report.records, latencies.len() as u64);

        latencies.sort_unstable();
        let pct = |p: f64| latencies[((latencies.len() - 1) as f64 * p).round() as usize];
        println!(
            "{:>8} {:>11.0} {:>10} {:>10} {:>10} {:>9.0} {:>10.1}",
            writers,
            latencies.len() as f64 / elapsed,
            fmt(pct(0.50)),
            fmt(pct(0.99)),
            fmt(pct(1.0)),
            stats.syncs as f64 / elapsed,
            stats.records as f64 / stats.syncs.max(1) as f64,
        );
    }
    Ok(())
}

/// Appends 280-byte lines to a file, each followed by `fdatasync`, for one
/// second: the rate, p50 and p99.
fn fsync_baseline(dir: &Path) -> std::io::Result<(f64, Duration, Duration)> {
    let tmp = tempfile::tempdir_in(dir)?;
    let mut file = std::fs::File::create(tmp.path().join("baseline"))?;
    let line = [b'x'; 280];
    let mut lat = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(1) {
        let t0 = Instant::now();
        file.write_all(&line)?;
        file.sync_data()?;
        lat.push(t0.elapsed());
    }
    let rate = lat.len() as f64 / started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    Ok((rate, pct(0.5), pct(0.99)))
}

fn fmt(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

//! How long opening an audit log takes as its history grows: 10,000,
//! 100,000 and 1,000,000 records, in segments (the default, 16 MiB each)
//! and, for comparison, in one file (no rotation), which every open reads
//! whole. Also the time `verify` takes over everything.
//!
//! ```sh
//! cargo run --release -p vigil-audit --example open_bench            # under /tmp
//! cargo run --release -p vigil-audit --example open_bench -- /var/tmp
//! ```
//!
//! Records are of the size `/send` writes (about 300 bytes). Each open is
//! timed three times, with the files in the page cache; the median is
//! printed.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use vigil_audit::{AuditLog, AuditOptions, verify};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "/tmp".into()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    println!("vigil-audit open time, in {}", dir.display());
    println!(
        "{:>10} {:>10} {:>9} {:>12} {:>10} {:>12}",
        "records", "layout", "files", "MiB", "open", "verify all"
    );
    for records in [10_000u64, 100_000, 1_000_000] {
        for (layout, segment) in [("segments", None), ("one file", Some(u64::MAX))] {
            let tmp = tempfile::tempdir_in(&dir)?;
            let path = tmp.path().join("audit.jsonl");
            let mut options = AuditOptions::default();
            if let Some(max) = segment {
                options.segment_max_bytes = max;
            }
            rt.block_on(fill(&path, options.clone(), records))?;
            let files = std::fs::read_dir(tmp.path())?
                .flatten()
                .filter(|e| {
                    e.file_name()
                        .to_str()
                        .is_some_and(|n| n.starts_with("audit.jsonl") && !n.ends_with(".reserve"))
                })
                .count();
            let bytes: u64 = std::fs::read_dir(tmp.path())?
                .flatten()
                .filter(|e| !e.file_name().to_string_lossy().ends_with(".reserve"))
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum();
            let mut opens = Vec::new();
            for _ in 0..3 {
                let t0 = Instant::now();
                let log = AuditLog::open(&path, options.clone())?;
                opens.push(t0.elapsed());
                rt.block_on(log.close())?;
            }
            opens.sort_unstable();
            let t0 = Instant::now();
            let report = verify(&path)?;
            let verify_time = t0.elapsed();
            assert!(report.is_ok(), "{report}");
            // The seals are records too.
            assert!(report.records >= records, "{report}");
            println!(
                "{:>10} {:>10} {:>9} {:>12.1} {:>10} {:>12}",
                records,
                layout,
                files,
                bytes as f64 / (1 << 20) as f64,
                fmt(opens[1]),
                fmt(verify_time)
            );
        }
    }
    Ok(())
}

/// Appends `n` records from 512 writers at once (group commit).
async fn fill(path: &Path, options: AuditOptions, n: u64) -> Result<(), String> {
    let log = AuditLog::open(path, options).map_err(|e| e.to_string())?;
    let writers = 512u64;
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let log = log.clone();
            tokio::spawn(async move {
                let mut i = w;
                while i < n {
                    log.append(
                        "command.issued",
                        json!({
                            "command_id": format!("cmd_{i:032x}"),
                            "command_type": "RUN",
                            "command": "uptime",
                            "wa_id": "vigil-server",
                            "via": "send",
                            "target": ["d446fd5c0e9a4b7f8c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b"],
                        }),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                    i += writers;
                }
                Ok::<_, String>(())
            })
        })
        .collect();
    for t in tasks {
        t.await.map_err(|e| e.to_string())??;
    }
    log.close().await.map_err(|e| e.to_string())
}

fn fmt(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

//! How late the tokio driver fires after its deadline, in real time.
//!
//! Run it in release mode:
//!
//! ```sh
//! cargo run --release -p vigil-failsafe --example lateness
//! ```
//!
//! One switch with a short timeout is left to fire, fed again, left to fire
//! again, and so on, for `TRIALS` outages. For each it records the lateness
//! the driver reports (`late_by`: from the deadline to the task's poll) and
//! the lateness seen by the receiver of the event (from the deadline to
//! `recv` returning). It does this on a multi-threaded runtime, then on a
//! current-thread runtime, then on a multi-threaded runtime kept busy by
//! other tasks.

use std::time::{Duration, Instant};

use vigil_failsafe::FailsafeEvent;

const TRIALS: usize = 300;
const TIMEOUT: Duration = Duration::from_millis(10);

struct Figures {
    reported: Vec<Duration>,
    observed: Vec<Duration>,
}

async fn trials() -> Result<Figures, Box<dyn std::error::Error>> {
    let (handle, mut events) = vigil_failsafe::spawn(TIMEOUT)?;
    let mut reported = Vec::with_capacity(TRIALS);
    let mut observed = Vec::with_capacity(TRIALS);
    for _ in 0..TRIALS {
        let deadline = handle.deadline().ok_or("switch not armed")?;
        match events.recv().await {
            Some(FailsafeEvent::Fired { late_by, .. }) => {
                observed.push(Instant::now().saturating_duration_since(deadline));
                reported.push(late_by);
            }
            other => return Err(format!("expected Fired, got {other:?}").into()),
        }
        handle.feed();
        match events.recv().await {
            Some(FailsafeEvent::Rearmed { .. }) => {}
            other => return Err(format!("expected Rearmed, got {other:?}").into()),
        }
    }
    Ok(Figures { reported, observed })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn print(label: &str, f: &mut Figures) {
    println!("{label}");
    for (what, v) in [
        ("driver late_by", &mut f.reported),
        ("receiver sees", &mut f.observed),
    ] {
        v.sort_unstable();
        println!(
            "  {what:<15} n={} p50={:>9.3?} p99={:>9.3?} max={:>9.3?}",
            v.len(),
            percentile(v, 0.50),
            percentile(v, 0.99),
            v.last().copied().unwrap_or_default()
        );
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("vigil-failsafe lateness: {TRIALS} outages, timeout {TIMEOUT:?}");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut f = rt.block_on(trials())?;
    print("multi-thread runtime, idle", &mut f);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut f = rt.block_on(trials())?;
    print("current-thread runtime, idle", &mut f);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut f = rt.block_on(async {
        // Busy neighbours: tasks that compute in 200 µs slices and yield.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut busy = Vec::new();
        for _ in 0..8 {
            let stop = std::sync::Arc::clone(&stop);
            busy.push(tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let t = Instant::now();
                    while t.elapsed() < Duration::from_micros(200) {
                        std::hint::spin_loop();
                    }
                    tokio::task::yield_now().await;
                }
            }));
        }
        let f = trials().await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for b in busy {
            let _ = b.await;
        }
        f
    })?;
    print(
        "multi-thread runtime, 8 busy tasks yielding every 200 µs",
        &mut f,
    );
    Ok(())
}

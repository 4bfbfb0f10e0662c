//! `vigilctl bench-send`: `/send` throughput and latency against a running
//! server (which, as always, records every command durably in its audit
//! log before it answers).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::api::{Api, ApiArgs};

/// What to send, how hard and for how long.
#[derive(Debug)]
pub(crate) struct Plan {
    pub(crate) connections: usize,
    pub(crate) warmup: Duration,
    pub(crate) duration: Duration,
    pub(crate) body: Vec<u8>,
}

/// One connection's tally.
#[derive(Debug, Default)]
struct Tally {
    latencies_us: Vec<u64>,
    ok: u64,
    other: std::collections::BTreeMap<u16, u64>,
    transport: u64,
    first_error: Option<String>,
}

/// The JSON body of each request.
pub(crate) fn body(
    command: &str,
    args: Option<&str>,
    client: Option<&str>,
) -> anyhow::Result<Vec<u8>> {
    let args: Value = match args {
        Some(a) => serde_json::from_str(a).with_context(|| format!("--args is not JSON: {a:?}"))?,
        None => Value::Null,
    };
    let mut b = json!({"command": command, "args": args, "reason": "vigilctl bench-send"});
    if let (Some(c), Value::Object(map)) = (client, &mut b) {
        map.insert("client_id".into(), json!(c));
    }
    Ok(b.to_string().into_bytes())
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}

/// Runs the plan and prints requests per second and latency percentiles.
pub(crate) fn run(args: &ApiArgs, plan: Plan) -> anyhow::Result<()> {
    anyhow::ensure!(plan.connections > 0, "--connections must be at least 1");
    let token = args.token.resolve()?;
    // One request first: a wrong token or a server without clients is
    // said once, not thousands of times.
    let probe = Api::new(&args.api, Some(token.clone()), Duration::from_secs(30))?;
    probe
        .post("/send", &plan.body)?
        .into_success()
        .context("the first /send failed; nothing was measured")?;

    let stop = Arc::new(AtomicBool::new(false));
    let recording = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::with_capacity(plan.connections);
    for _ in 0..plan.connections {
        // One agent per thread: one keep-alive connection each.
        let api = Api::new(&args.api, Some(token.clone()), Duration::from_secs(30))?;
        let (stop, recording, body) = (stop.clone(), recording.clone(), plan.body.clone());
        threads.push(std::thread::spawn(move || {
            let mut t = Tally::default();
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let answer = api.post("/send", &body);
                let took = started.elapsed();
                if !recording.load(Ordering::Relaxed) || stop.load(Ordering::Relaxed) {
                    continue;
                }
                match answer {
                    Ok(a) if a.is_success() => {
                        t.ok += 1;
                        t.latencies_us
                            .push(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
                    }
                    Ok(a) => {
                        *t.other.entry(a.status).or_default() += 1;
                        t.first_error
                            .get_or_insert_with(|| format!("{}: {}", a.status, a.detail()));
                    }
                    Err(e) => {
                        t.transport += 1;
                        t.first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            t
        }));
    }
    std::thread::sleep(plan.warmup);
    recording.store(true, Ordering::Relaxed);
    let started = Instant::now();
    std::thread::sleep(plan.duration);
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let mut all = Tally::default();
    for th in threads {
        let t = th
            .join()
            .map_err(|_| anyhow::anyhow!("a benchmark thread panicked"))?;
        all.ok += t.ok;
        all.transport += t.transport;
        all.latencies_us.extend(t.latencies_us);
        for (status, n) in t.other {
            *all.other.entry(status).or_default() += n;
        }
        if all.first_error.is_none() {
            all.first_error = t.first_error;
        }
    }
    all.latencies_us.sort_unstable();
    let other: u64 = all.other.values().sum();
    let secs = elapsed.as_secs_f64();
    println!(
        "POST {}/send: {} keep-alive connections, {:.1} s measured after {:.1} s of warm-up",
        args.api.trim_end_matches('/'),
        plan.connections,
        secs,
        plan.warmup.as_secs_f64()
    );
    println!(
        "requests   {} answered 2xx, {} other statuses {:?}, {} transport errors",
        all.ok, other, all.other, all.transport
    );
    println!("throughput {:.0} requests/s (2xx)", all.ok as f64 / secs);
    println!(
        "latency    p50 {}, p90 {}, p99 {}, max {}",
        ms(percentile(&all.latencies_us, 50.0)),
        ms(percentile(&all.latencies_us, 90.0)),
        ms(percentile(&all.latencies_us, 99.0)),
        ms(all.latencies_us.last().copied().unwrap_or(0)),
    );
    if let Some(e) = all.first_error {
        println!("first error: {e}");
    }
    anyhow::ensure!(all.ok > 0, "no request succeeded");
    Ok(())
}

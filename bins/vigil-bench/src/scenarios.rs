//! The scenarios: each measures, prints progress on stderr and returns an
//! [`Outcome`] with its figures and whether its goal was met.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::client::Resumption;
use vigil_proto::ClientRequest;

use crate::fleet::{Conn, Fleet, connect_tls, nanos_since, source_address};
use crate::http::Api;
use crate::procstat::{CpuWindow, peak_rss_kib, round, rss_kib};
use crate::setup::{ClientIdentity, ServerProcess, ServerSetup};
use crate::stats::{Sample, histogram, ms, us};

/// What a scenario reports.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub(crate) name: &'static str,
    pub(crate) goal: String,
    pub(crate) met: bool,
    /// One line for the table.
    pub(crate) summary: String,
    pub(crate) figures: Value,
}

impl Outcome {
    pub(crate) fn json(&self) -> Value {
        json!({
            "name": self.name,
            "goal": self.goal,
            "met": self.met,
            "summary": self.summary,
            "figures": self.figures,
        })
    }
}

/// What the scenarios share.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub(crate) setup: ServerSetup,
    pub(crate) server: ServerProcess,
    pub(crate) api: Api,
    pub(crate) quick: bool,
    /// Simulated clients send nonces (`--clock-heartbeats` turns it off).
    pub(crate) nonces: bool,
    pub(crate) epoch: Instant,
}

impl Ctx {
    fn pid(&self) -> u32 {
        self.server.pid()
    }

    fn secs(&self, quick: u64, full: u64) -> Duration {
        Duration::from_secs(if self.quick { quick } else { full })
    }
}

/// A copy of `config` that never resumes a session: every connection is
/// a full handshake with client authentication.
fn without_resumption(config: &ClientConfig) -> Arc<ClientConfig> {
    let mut c = config.clone();
    c.resumption = Resumption::disabled();
    Arc::new(c)
}

/// New mTLS connections per second, 64 in flight; each is a full
/// handshake, a ping/pong (the server's admission answer) and a close.
pub(crate) async fn handshakes(ctx: &Ctx, ids: &[ClientIdentity]) -> anyhow::Result<Outcome> {
    const IN_FLIGHT: usize = 64;
    let duration = ctx.secs(5, 10);
    eprintln!(
        "handshakes: {IN_FLIGHT} in flight for {} s",
        duration.as_secs()
    );
    let pool: Vec<Arc<ClientConfig>> = ids
        .iter()
        .take(256)
        .map(|i| without_resumption(&i.config))
        .collect();
    anyhow::ensure!(!pool.is_empty(), "no client identities");
    let pool = Arc::new(pool);
    let next = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let cpu = CpuWindow::start(ctx.pid())?;
    let t0 = Instant::now();
    let deadline = t0 + duration;
    let addr = ctx.setup.addr();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT {
        let (pool, next, failures, first_error) = (
            pool.clone(),
            next.clone(),
            failures.clone(),
            first_error.clone(),
        );
        workers.spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let config = pool[i % pool.len()].clone();
                let start = Instant::now();
                let attempt = async {
                    let stream = connect_tls(config, source_address(i), addr, None).await?;
                    let mut conn = Conn::new(stream);
                    conn.admit().await?;
                    let _ = conn.writer.shutdown().await;
                    anyhow::Ok(())
                };
                match tokio::time::timeout(Duration::from_secs(10), attempt).await {
                    Ok(Ok(())) => latencies.push(start.elapsed()),
                    other => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        let msg = match other {
                            Ok(Err(e)) => format!("{e:#}"),
                            _ => "timed out after 10 s".to_owned(),
                        };
                        if let Ok(mut slot) = first_error.lock() {
                            slot.get_or_insert(msg);
                        }
                    }
                }
            }
            latencies
        });
    }
    let mut all = Vec::new();
    while let Some(r) = workers.join_next().await {
        all.extend(r.context("handshake worker panicked")?);
    }
    let wall = t0.elapsed();
    let cpu = cpu.finish()?;
    let sample = Sample::new(all);
    let rate = sample.len() as f64 / wall.as_secs_f64();
    let failures = failures.load(Ordering::Relaxed);
    let first_error = first_error.lock().ok().and_then(|e| e.clone());
    eprintln!(
        "  {} connections in {:.1} s: {rate:.0}/s, {failures} failed",
        sample.len(),
        wall.as_secs_f64()
    );
    Ok(Outcome {
        name: "handshakes",
        goal: "at least 2,000 new mTLS connections per second".into(),
        met: rate >= 2000.0,
        summary: format!(
            "{rate:.0} connections/s (p99 {:.1} ms each, {failures} failed)",
            ms(sample.percentile(99.0))
        ),
        figures: json!({
            "connections_per_s": round(rate, 1),
            "connections": sample.len(),
            "failed": failures,
            "first_error": first_error,
            "in_flight": IN_FLIGHT,
            "latency": sample.json_ms(),
            "server_cpu": cpu.json(),
            "session_resumption": false,
        }),
    })
}

/// `mod:exec` of hello.so on one connection: pipelined throughput and
/// sequential round trips.
pub(crate) async fn one_connection(ctx: &Ctx, id: &ClientIdentity) -> anyhow::Result<Outcome> {
    const WINDOW: usize = 256;
    let duration = ctx.secs(3, 5);
    eprintln!(
        "one-connection: sequential, then {WINDOW} in flight, {} s each",
        duration.as_secs()
    );
    let stream = connect_tls(id.config.clone(), source_address(0), ctx.setup.addr(), None).await?;
    let mut conn = Conn::new(stream);
    conn.admit().await?;
    // The module may still be loading: sync until it is listed.
    let t0 = Instant::now();
    let sum = loop {
        let resp = conn.sync().await?;
        let sum = resp
            .payload()
            .get("modules")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|m| m.get("mod").and_then(Value::as_str) == Some("hello.so"))
            .and_then(|m| m.get("sum").and_then(Value::as_str))
            .map(str::to_owned);
        if let Some(sum) = sum {
            break sum;
        }
        anyhow::ensure!(
            t0.elapsed() < Duration::from_secs(10),
            "the server does not list hello.so (see {})",
            ctx.setup.log_path().display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let exec = |reference: &str| exec_frame(&sum, reference);

    // Sequential round trips, from a blocking client on its own thread
    // (see `blocking.rs`): first pings, the same path without a module
    // run, then execs.
    let (config, addr, exec_sum) = (id.config.clone(), ctx.setup.addr(), sum.clone());
    let (pings, seq, errors) = tokio::task::spawn_blocking(move || {
        let mut conn = crate::blocking::BlockingConn::connect(config, addr)?;
        let (pings, _) = crate::blocking::measure(&mut conn, duration / 3, 100, |i| {
            (
                format!("sys:ping:r{i} {{}}\n").into_bytes(),
                format!("sys:pong:r{i}"),
            )
        });
        let (seq, errors) = crate::blocking::measure(&mut conn, duration, 100, |i| {
            let reference = format!("q{i}");
            (
                exec_frame(&exec_sum, &reference),
                format!("mod:exec_resp:{reference}"),
            )
        });
        anyhow::Ok((pings, seq, errors))
    })
    .await
    .context("sequential client panicked")??;
    let pings = Sample::new(pings);
    eprintln!(
        "  sequential ping (no module): p50 {:.1} µs, p99 {:.1} µs",
        us(pings.percentile(50.0)),
        us(pings.percentile(99.0))
    );
    let seq = Sample::new(seq);
    eprintln!(
        "  sequential: {} round trips, p50 {:.1} µs, p99 {:.1} µs",
        seq.len(),
        us(seq.percentile(50.0)),
        us(seq.percentile(99.0))
    );

    // Pipelined: keep WINDOW requests outstanding.
    let permits = tokio::sync::Semaphore::new(WINDOW);
    let done = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let cpu = CpuWindow::start(ctx.pid())?;
    let start = Instant::now();
    let deadline = start + duration;
    let Conn { frames, writer } = &mut conn;
    let write = async {
        let mut next = 0u64;
        let mut batch = Vec::with_capacity(64 * 1024);
        while Instant::now() < deadline {
            let Ok(p) = permits.acquire().await else {
                break;
            };
            p.forget();
            let mut count = 1;
            while count < 64 {
                match permits.try_acquire() {
                    Ok(p) => {
                        p.forget();
                        count += 1;
                    }
                    Err(_) => break,
                }
            }
            batch.clear();
            for _ in 0..count {
                next += 1;
                batch.extend_from_slice(&exec(&format!("p{next}")));
            }
            writer.write_all(&batch).await?;
        }
        stop.store(true, Ordering::Relaxed);
        anyhow::Ok(next)
    };
    let read = async {
        while Instant::now() < deadline {
            let next = tokio::time::timeout_at(deadline.into(), frames.next()).await;
            let Ok(next) = next else { break };
            match next {
                Some(Ok(Ok(f))) if f.api() == "mod" && f.kind() == "exec_resp" => {
                    done.fetch_add(1, Ordering::Relaxed);
                    permits.add_permits(1);
                }
                Some(Ok(Ok(f))) if f.api() == "err" => {
                    failed.fetch_add(1, Ordering::Relaxed);
                    permits.add_permits(1);
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
        permits.close();
    };
    let (sent, ()) = tokio::join!(write, read);
    let _ = sent?;
    let wall = start.elapsed();
    let cpu = cpu.finish()?;
    let completed = done.load(Ordering::Relaxed);
    let rate = completed as f64 / wall.as_secs_f64();
    let pipelined_errors = failed.load(Ordering::Relaxed);
    eprintln!("  pipelined: {completed} execs, {rate:.0}/s, {pipelined_errors} errors");
    let seq_p99 = seq.percentile(99.0);
    let met = rate >= 100_000.0 && seq_p99 <= Duration::from_micros(100);
    Ok(Outcome {
        name: "one-connection",
        goal: "pipelined mod:exec at least 100,000/s; sequential round trip p99 at most 100 µs"
            .into(),
        met,
        summary: format!(
            "pipelined {rate:.0} execs/s; sequential p50 {:.0} µs, p99 {:.0} µs",
            us(seq.percentile(50.0)),
            us(seq_p99)
        ),
        figures: json!({
            "pipelined": {
                "execs_per_s": round(rate, 1),
                "completed": completed,
                "errors": pipelined_errors,
                "in_flight": WINDOW,
                "server_cpu": cpu.json(),
            },
            "sequential": {
                "round_trip": seq.json_us(),
                "errors": errors,
            },
            "sequential_ping": {
                "round_trip": pings.json_us(),
            },
        }),
    })
}

/// `mod:exec` of hello.so with the verified sum.
fn exec_frame(sum: &str, reference: &str) -> Vec<u8> {
    ClientRequest::Exec {
        module: "hello.so".into(),
        args: "bench".into(),
        sum: sum.to_owned(),
    }
    .to_frame(reference)
    .to_bytes()
}

/// One fan-out: `POST /send` to every client, each client's receive time
/// minus the request's start.
#[derive(Debug, Clone)]
struct Trial {
    latencies: Vec<Duration>,
    wall: Duration,
    done: usize,
    missing: usize,
}

async fn fanout_trial(api: &Api, fleets: &[&Fleet], wait_s: f64) -> anyhow::Result<Trial> {
    let clients: Vec<_> = fleets.iter().flat_map(|f| f.clients.iter()).collect();
    let epoch = fleets.first().map(|f| f.epoch()).context("no fleet")?;
    let before: Vec<u64> = clients
        .iter()
        .map(|c| c.commands.load(Ordering::Relaxed))
        .collect();
    let t0 = nanos_since(epoch);
    let start = Instant::now();
    let (status, body) = api
        .request(
            "POST",
            &format!("/send?wait={wait_s}"),
            Some(r#"{"command":"bench","args":{"fanout":true}}"#),
        )
        .await?;
    let wall = start.elapsed();
    anyhow::ensure!(
        status == 200,
        "POST /send: status {status}: {}",
        String::from_utf8_lossy(&body)
    );
    let report: Value = serde_json::from_slice(&body)?;
    let done = report["results"]
        .as_array()
        .map(|r| r.iter().filter(|v| v["status"] == "done").count())
        .unwrap_or(0);
    // Clients whose ack the server did not wait for may still be reading.
    let settle = Instant::now() + Duration::from_secs(2);
    loop {
        let received = clients
            .iter()
            .zip(&before)
            .filter(|(c, b)| c.commands.load(Ordering::Relaxed) > **b)
            .count();
        if received == clients.len() || Instant::now() > settle {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut latencies = Vec::with_capacity(clients.len());
    let mut missing = 0;
    for (c, b) in clients.iter().zip(&before) {
        if c.commands.load(Ordering::Relaxed) > *b {
            let at = c.last_ack_ns.load(Ordering::Relaxed);
            latencies.push(Duration::from_nanos(at.saturating_sub(t0)));
        } else {
            missing += 1;
        }
    }
    Ok(Trial {
        latencies,
        wall,
        done,
        missing,
    })
}

/// Fan-out latency goal for `clients` clients: 20 ms at 1,000, 120 ms at
/// 10,000, linear in between.
fn fanout_goal(clients: usize) -> Duration {
    let c = clients.clamp(1000, 10_000) as f64;
    Duration::from_secs_f64((20.0 + (c - 1000.0) * (100.0 / 9000.0)) / 1000.0)
}

/// Several fan-outs to every client of `fleets`; the figures of one size.
pub(crate) async fn fanout_size(
    ctx: &Ctx,
    fleets: &[&Fleet],
) -> anyhow::Result<(Value, bool, String)> {
    let clients: usize = fleets.iter().map(|f| f.len()).sum();
    let trials = if ctx.quick { 5 } else { 10 };
    eprintln!("fan-out: {clients} clients, 1 warm-up + {trials} trials");
    fanout_trial(&ctx.api, fleets, 30.0).await?;
    let mut latencies = Vec::new();
    let mut walls = Vec::new();
    let mut missing = 0;
    let mut not_done = 0;
    let cpu = CpuWindow::start(ctx.pid())?;
    let own_cpu = CpuWindow::start(std::process::id())?;
    for t in 0..trials {
        let trial = fanout_trial(&ctx.api, fleets, 30.0).await?;
        let s = Sample::new(trial.latencies.clone());
        eprintln!(
            "  trial {}: p99 {:.1} ms, max {:.1} ms, /send {:.1} ms, {} done",
            t + 1,
            ms(s.percentile(99.0)),
            ms(s.max()),
            ms(trial.wall),
            trial.done
        );
        missing += trial.missing;
        not_done += clients.saturating_sub(trial.done);
        latencies.extend(trial.latencies);
        walls.push(trial.wall);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let cpu = cpu.finish()?;
    let own_cpu = own_cpu.finish()?;
    let sample = Sample::new(latencies);
    let walls = Sample::new(walls);
    let goal = fanout_goal(clients);
    let met = sample.percentile(99.0) <= goal && missing == 0;
    let figures = json!({
        "clients": clients,
        "trials": trials,
        "receive_latency": sample.json_ms(),
        "send_wall": walls.json_ms(),
        "goal_p99_ms": ms(goal),
        "met": met,
        "missing_receipts": missing,
        "acks_not_done": not_done,
        "server_cpu_during_trials": cpu.json(),
        "server_cpu_per_client_us": round(cpu.cpu_s * 1e6 / (trials * clients.max(1)) as f64, 1),
        "load_tool_cpu_during_trials": own_cpu.json(),
        "load_tool_cpu_per_client_us": round(own_cpu.cpu_s * 1e6 / (trials * clients.max(1)) as f64, 1),
    });
    let summary = format!(
        "{clients} clients: p99 {:.1} ms (goal {:.0}), /send p50 {:.1} ms",
        ms(sample.percentile(99.0)),
        ms(goal),
        ms(walls.percentile(50.0))
    );
    Ok((figures, met, summary))
}

/// Memory per idle connection and server CPU while only heartbeats flow.
pub(crate) async fn held(
    ctx: &Ctx,
    fleets: &[&Fleet],
    rss_base_kib: u64,
    base_clients: usize,
) -> anyhow::Result<Outcome> {
    let clients: usize = fleets.iter().map(|f| f.len()).sum();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss = rss_kib(ctx.pid())?;
    let added = clients.saturating_sub(base_clients).max(1);
    let per_conn_kib = rss.saturating_sub(rss_base_kib) as f64 / added as f64;
    eprintln!(
        "held: {clients} clients, server RSS {} MiB, {per_conn_kib:.1} KiB per connection",
        rss / 1024
    );
    let window = ctx.secs(10, 20);
    eprintln!(
        "  idle window of {} s, heartbeats every 5 s",
        window.as_secs()
    );
    let hb0: u64 = fleets.iter().map(|f| f.heartbeats()).sum();
    let bytes0: u64 = fleets.iter().map(|f| f.heartbeat_bytes()).sum();
    let cpu = CpuWindow::start(ctx.pid())?;
    tokio::time::sleep(window).await;
    let cpu = cpu.finish()?;
    let hb = fleets.iter().map(|f| f.heartbeats()).sum::<u64>() - hb0;
    let hb_bytes = fleets.iter().map(|f| f.heartbeat_bytes()).sum::<u64>() - bytes0;
    let per_beat = hb_bytes as f64 / hb.max(1) as f64;
    let nonces = fleets.iter().any(|f| f.sends_nonces());
    let connected: usize = fleets.iter().map(|f| f.connected()).sum();
    eprintln!(
        "  server CPU {:.2}% of one core, {hb} {} heartbeats received ({per_beat:.0} bytes each), {connected} still connected",
        cpu.percent_of_core,
        if nonces { "nonce" } else { "clock" }
    );
    let met = per_conn_kib <= 16.0 && cpu.percent_of_core <= 5.0 && connected == clients;
    Ok(Outcome {
        name: "held",
        goal: format!(
            "{clients} idle clients with heartbeats: server memory at most 16 KiB per connection, heartbeat CPU at most 5% of one core"
        ),
        met,
        summary: format!(
            "{clients} clients: {per_conn_kib:.1} KiB/connection, idle CPU {:.2}% of a core, {} heartbeats of {per_beat:.0} bytes",
            cpu.percent_of_core,
            if nonces { "nonce" } else { "clock" }
        ),
        figures: json!({
            "clients": clients,
            "connected_at_end": connected,
            "server_rss_kib": rss,
            "server_rss_before_kib": rss_base_kib,
            "clients_before": base_clients,
            "per_connection_kib": round(per_conn_kib, 2),
            "idle_window": cpu.json(),
            "heartbeat_interval_s": 5,
            "heartbeats_received": hb,
            "heartbeat_kind": if nonces { "nonce" } else { "clock" },
            "bytes_per_heartbeat": round(per_beat, 1),
        }),
    })
}

/// A client that stops reading while the server keeps sending to it.
pub(crate) async fn slow_consumer(
    ctx: &Ctx,
    fleets: &[&Fleet],
    slow: &ClientIdentity,
) -> anyhow::Result<Outcome> {
    const FILL_TASKS: usize = 4;
    let cap = ctx.secs(30, 60);
    // How long the fill goes on once the server refuses more, to see that
    // memory stays flat there.
    let hold = ctx.secs(5, 10);
    let clients: usize = fleets.iter().map(|f| f.len()).sum();
    eprintln!("slow-consumer: {clients} other clients; p99 before");
    let mut before = Vec::new();
    for _ in 0..3 {
        before.extend(fanout_trial(&ctx.api, fleets, 30.0).await?.latencies);
    }
    let before = Sample::new(before);

    // A small receive buffer, so the kernel holds little on its side.
    let stream = connect_tls(
        slow.config.clone(),
        source_address(7),
        ctx.setup.addr(),
        Some(4096),
    )
    .await?;
    let mut conn = Conn::new(stream);
    conn.admit().await?;
    conn.sync().await?;
    let fp = slow.fingerprint.to_hex();
    let rss_before = rss_kib(ctx.pid())?;
    let peak_before = peak_rss_kib(ctx.pid())?;
    eprintln!(
        "  slow client stopped reading; sending it commands (server RSS {} MiB)",
        rss_before / 1024
    );

    let t0 = Instant::now();
    let gone = Arc::new(AtomicBool::new(false));
    let queued = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    // Milliseconds after t0 of the first `queue_full`, plus one (0: none).
    let bounded_at = Arc::new(AtomicU64::new(0));
    let mut fill = tokio::task::JoinSet::new();
    for _ in 0..FILL_TASKS {
        let (api, gone, queued, refused, bounded_at, fp) = (
            ctx.api.clone(),
            gone.clone(),
            queued.clone(),
            refused.clone(),
            bounded_at.clone(),
            fp.clone(),
        );
        fill.spawn(async move {
            let body = format!(
                r#"{{"command":"bench-fill","args":{{"pad":"{}"}},"client_id":"{fp}"}}"#,
                "x".repeat(256)
            );
            while !gone.load(Ordering::Relaxed) && t0.elapsed() < cap {
                match api.request("POST", "/send", Some(&body)).await {
                    Ok((202, b)) => {
                        let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
                        if v["sent_to"].as_array().is_some_and(|a| !a.is_empty()) {
                            queued.fetch_add(1, Ordering::Relaxed);
                        } else if v["not_sent"][0]["status"] == "queue_full" {
                            // The server holds no more for it: the bound.
                            refused.fetch_add(1, Ordering::Relaxed);
                            let ms = t0.elapsed().as_millis() as u64 + 1;
                            let _ = bounded_at.compare_exchange(
                                0,
                                ms,
                                Ordering::Relaxed,
                                Ordering::Relaxed,
                            );
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        } else {
                            gone.store(true, Ordering::Relaxed);
                        }
                    }
                    Ok((404, _)) => gone.store(true, Ordering::Relaxed),
                    Ok(_) | Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
        });
    }
    let mut during = Vec::new();
    let mut rss_samples = vec![rss_before];
    let mut last_print = Instant::now();
    let held = |at: u64| at > 0 && t0.elapsed() >= Duration::from_millis(at - 1) + hold;
    while !gone.load(Ordering::Relaxed)
        && t0.elapsed() < cap
        && !held(bounded_at.load(Ordering::Relaxed))
    {
        let trial = fanout_trial(&ctx.api, fleets, 0.5).await?;
        during.extend(trial.latencies);
        // Paced, so that with many clients the fan-outs do not starve the
        // requests that fill the slow client's queue.
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss_samples.push(rss_kib(ctx.pid())?);
        if last_print.elapsed() > Duration::from_secs(2) {
            eprintln!(
                "  {:.0} s: {} commands queued to the slow client, server RSS {} MiB",
                t0.elapsed().as_secs_f64(),
                queued.load(Ordering::Relaxed),
                rss_samples.last().copied().unwrap_or(0) / 1024
            );
            last_print = Instant::now();
        }
    }
    let ended_after = t0.elapsed();
    let disconnected = gone.load(Ordering::Relaxed);
    gone.store(true, Ordering::Relaxed);
    while fill.join_next().await.is_some() {}
    drop(conn);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_after = rss_kib(ctx.pid())?;
    let peak_rss = rss_samples.iter().copied().max().unwrap_or(rss_before);
    let mut after = Vec::new();
    for _ in 0..3 {
        after.extend(fanout_trial(&ctx.api, fleets, 30.0).await?.latencies);
    }
    let after = Sample::new(after);
    let during = Sample::new(during);
    let metrics = ctx
        .api
        .request("GET", "/metrics", None)
        .await
        .map(|(_, b)| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let slow_consumers = metrics
        .lines()
        .find_map(|l| l.strip_prefix("vigil_slow_consumers_total "))
        .and_then(|v| v.trim().parse::<u64>().ok());
    let queued = queued.load(Ordering::Relaxed);
    let refused = refused.load(Ordering::Relaxed);
    let bounded_after = match bounded_at.load(Ordering::Relaxed) {
        0 => None,
        ms => Some(Duration::from_millis(ms - 1)),
    };
    eprintln!(
        "  queue bounded: {}; {refused} commands refused queue_full",
        match bounded_after {
            Some(d) => format!(
                "after {:.1} s and {queued} commands queued",
                d.as_secs_f64()
            ),
            None => "NOT reached".to_owned(),
        }
    );
    eprintln!(
        "  {} after {:.1} s and {queued} commands; RSS {} → peak {} → {} MiB",
        if disconnected {
            "the server closed its session"
        } else {
            "still connected (it ends at the write-stall timeout or when its control lane passes its bound)"
        },
        ended_after.as_secs_f64(),
        rss_before / 1024,
        peak_rss / 1024,
        rss_after / 1024
    );
    let growth_kib = peak_rss.saturating_sub(rss_before);
    let flat = growth_kib <= (8 * 1024).max(rss_before / 20);
    let p99_before = before.percentile(99.0);
    let p99_during = during.percentile(99.0);
    let unchanged = p99_during <= (p99_before * 2).max(p99_before + Duration::from_millis(5));
    Ok(Outcome {
        name: "slow-consumer",
        goal: "a client that stops reading: its commands refused queue_full past a bound; server memory stays flat; others' fan-out p99 unchanged".into(),
        met: bounded_after.is_some() && flat && unchanged,
        summary: format!(
            "bounded after {} / {queued} commands, {} at {:.1} s; RSS +{} MiB; others' p99 {:.1} → {:.1} ms",
            bounded_after.map_or("—".to_owned(), |d| format!("{:.1} s", d.as_secs_f64())),
            if disconnected { "disconnected" } else { "connected" },
            ended_after.as_secs_f64(),
            growth_kib / 1024,
            ms(p99_before),
            ms(p99_during)
        ),
        figures: json!({
            "disconnected": disconnected,
            "seconds_until_end": round(ended_after.as_secs_f64(), 3),
            "commands_queued_to_slow_client": queued,
            "commands_refused_queue_full": refused,
            "seconds_until_bounded": bounded_after.map(|d| round(d.as_secs_f64(), 3)),
            "slow_client_recv_buffer_bytes": 4096,
            "fill_requests_in_flight": FILL_TASKS,
            "server_slow_consumers_total": slow_consumers,
            "server_rss_kib": {
                "before": rss_before,
                "peak_sampled": peak_rss,
                "after": rss_after,
                "growth_kib": growth_kib,
                "vm_hwm_before": peak_before,
                "vm_hwm_after": peak_rss_kib(ctx.pid()).ok(),
            },
            "memory_flat": flat,
            "others_fanout": {
                "clients": clients,
                "before": before.json_ms(),
                "during": during.json_ms(),
                "after": after.json_ms(),
                "unchanged": unchanged,
            },
        }),
    })
}

/// Restarts the server with every client attached; measures how long
/// until all have reconnected and synced again.
pub(crate) async fn reconnect_storm(ctx: &mut Ctx, fleets: &[&Fleet]) -> anyhow::Result<Outcome> {
    let clients: Vec<_> = fleets.iter().flat_map(|f| f.clients.iter()).collect();
    let epoch = ctx.epoch;
    eprintln!(
        "reconnect-storm: restarting the server with {} clients attached",
        clients.len()
    );
    let before: Vec<u64> = clients
        .iter()
        .map(|c| c.syncs.load(Ordering::Relaxed))
        .collect();
    let failed_before: u64 = clients
        .iter()
        .map(|c| c.failed_attempts.load(Ordering::Relaxed))
        .sum();
    let t_term = nanos_since(epoch);
    let shutdown = ctx.server.terminate(Duration::from_secs(30)).await?;
    eprintln!(
        "  old server exited {:.2} s after SIGTERM",
        shutdown.as_secs_f64()
    );
    let t_spawn = nanos_since(epoch);
    ctx.server = ctx.setup.start().await?;
    eprintln!(
        "  new server answered /health after {:.2} s",
        ctx.server.ready_after.as_secs_f64()
    );
    let limit = Duration::from_secs(120);
    let spawned = Instant::now();
    let mut last_print = Instant::now();
    loop {
        let n = clients
            .iter()
            .zip(&before)
            .filter(|(c, b)| c.syncs.load(Ordering::Relaxed) > **b)
            .count();
        if n == clients.len() || spawned.elapsed() > limit {
            break;
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "  {:.1} s: {n}/{} re-synced",
                spawned.elapsed().as_secs_f64(),
                clients.len()
            );
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut times = Vec::with_capacity(clients.len());
    let mut missing = 0;
    for (c, b) in clients.iter().zip(&before) {
        if c.syncs.load(Ordering::Relaxed) > *b {
            let at = c.last_sync_ns.load(Ordering::Relaxed);
            times.push(Duration::from_nanos(at.saturating_sub(t_spawn)));
        } else {
            missing += 1;
        }
    }
    let failed: u64 = clients
        .iter()
        .map(|c| c.failed_attempts.load(Ordering::Relaxed))
        .sum::<u64>()
        - failed_before;
    let bucket = Duration::from_millis(250);
    let hist = histogram(&times, bucket);
    let sample = Sample::new(times);
    let all = sample.max();
    let from_term = Duration::from_nanos(t_spawn.saturating_sub(t_term)) + all;
    let peak_bucket = hist.iter().copied().max().unwrap_or(0);
    let nonzero = hist.iter().filter(|c| **c > 0).count().max(1);
    eprintln!(
        "  all {} re-synced {:.2} s after the new server started ({missing} missing, {failed} failed attempts)",
        sample.len(),
        all.as_secs_f64()
    );
    let met = missing == 0 && all <= Duration::from_secs(10);
    Ok(Outcome {
        name: "reconnect-storm",
        goal: "after a server restart, every client reconnected and re-synced within 10 s, spread by jittered backoff".into(),
        met,
        summary: format!(
            "{} clients re-synced {:.2} s after restart (p50 {:.2} s), busiest 250 ms bucket {peak_bucket}",
            sample.len(),
            all.as_secs_f64(),
            sample.percentile(50.0).as_secs_f64()
        ),
        figures: json!({
            "clients": clients.len(),
            "missing": missing,
            "old_server_shutdown_s": round(shutdown.as_secs_f64(), 3),
            "new_server_ready_s": round(ctx.server.ready_after.as_secs_f64(), 3),
            "all_resynced_after_start_s": round(all.as_secs_f64(), 3),
            "all_resynced_after_sigterm_s": round(from_term.as_secs_f64(), 3),
            "resync_after_start": sample.json_ms(),
            "failed_attempts": failed,
            "histogram_bucket_ms": 250,
            "histogram": hist,
            "busiest_bucket": peak_bucket,
            "mean_nonempty_bucket": round(sample.len() as f64 / nonzero as f64, 1),
        }),
    })
}

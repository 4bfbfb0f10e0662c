//! `vigil-bench`: load a real `vigil-server` with many simulated mTLS
//! clients and measure what it costs the server.
//!
//! ```sh
//! cargo build --release -p vigil-bench -p vigil-server-bin
//! target/release/vigil-bench --quick --json bench.json   # about a minute
//! target/release/vigil-bench                             # 10,000 clients
//! ```
//!
//! # What it does
//!
//! In a temporary directory it generates the server's identity, an
//! authority key and one Ed25519 identity per simulated client (in
//! parallel over the cores), a trust file listing every client, and a mods
//! directory with `mods/hello` built in release and deployed as
//! `hello.so` (only when the `one-connection` scenario runs). It starts
//! `vigil-server` as a **separate process** on free loopback ports, with
//! an API token, an authority key (so heartbeats flow at the default 5 s)
//! and `--max-connections` above the client count, and measures that
//! process's own CPU time (`/proc/<pid>/stat`, utime + stime) and memory
//! (`VmRSS`). Progress goes to stderr, a table to stdout, and with
//! `--json FILE` one object per scenario (name, goal, figures, `met`).
//!
//! # Simulated clients
//!
//! Each client is one task holding one real mTLS connection with its own
//! identity (`vigil_auth::client_config`), not a `vigil_client::Client`:
//! that one verifies every command and heartbeat (~40 µs of Ed25519 each)
//! and keeps more state, which a real client pays on its own machine but
//! which here would be charged to the two cores the server runs on. A
//! simulated client pings to confirm admission, syncs, then answers every
//! `cmd:exec` with `cmd:ack` (`done`) at once, without verifying (it reads
//! the frame's header and finds the command id by a scan of the payload),
//! and records when its ack was written; it counts heartbeats without
//! verifying them, pings after 30 s without sending (as `vigil-client`
//! does, so the server's 90 s idle timeout does not fire), and reconnects
//! with [`vigil_client::Backoff`], the real client's jittered exponential
//! backoff. Connections are bound to source addresses 127.0.0.2 to
//! 127.0.0.51, so that no single address runs out of ephemeral ports.
//! First connections are ramped (64 in flight) so that starting thousands
//! of clients does not run into the server's handshake timeout;
//! reconnections are not ramped: there only the backoff spreads them.
//!
//! The bench and the server share the machine's cores: every figure
//! includes the clients' side of TLS, which a real deployment would not
//! pay on the server's machine.
//!
//! # Scenarios
//!
//! - `handshakes`: new connections per second with 64 in flight, each a
//!   full TLS 1.3 handshake with client authentication (session
//!   resumption off), a ping answered by the server, and a close.
//! - `one-connection`: `mod:exec` of hello.so on one connection,
//!   sequential (round-trip percentiles) and pipelined with 256 in flight
//!   (execs per second). The sequential round trips come from a blocking
//!   client on its own thread (an async client would add its runtime's
//!   wake-ups to each), first pings (the same path without a module run,
//!   for reference), then execs.
//! - `held`: N idle clients. Memory per connection is the growth of the
//!   server's RSS divided by the clients added: with N above 1,000 the
//!   first 1,000 connect first (for the 1,000-client fan-out) and the
//!   figure is the marginal cost of the remaining N − 1,000, which leaves
//!   out fixed costs and what the fan-outs allocated. Then the server's CPU
//!   over an idle window (20 s, quick 10 s) with heartbeats at 5 s, as a
//!   share of one core; it includes the clients' idle pings.
//! - `fanout`: `POST /send?wait=30` to every client (the server signs
//!   once); latency is the time each client's acknowledgement was written
//!   minus the request's start, on the same clock; also the `/send` wall
//!   time, until the server had collected every ack and answered. At 1,000 clients and at N. The goal is 20 ms p99 at
//!   1,000 and 120 ms at 10,000, linear in between for other sizes.
//! - `slow-consumer`: one more client with a 4 KiB receive buffer stops
//!   reading; commands are sent to it alone (`client_id`, four requests in
//!   flight). Past its window and its queue the server refuses them at
//!   once (`queue_full`): that is the bound, and its time is reported.
//!   They go on (one every 50 ms per request) for 5 s more (10 s full),
//!   or until the server closes the session (the client read nothing for
//!   the write-stall timeout, or its control lane passed its bound);
//!   meanwhile the others get a fan-out after another. Whether the
//!   session was closed is reported, not required: a client that reads
//!   nothing costs the server only its bounded window and queue. Memory is "flat" if the sampled peak RSS grew by at most
//!   8 MiB or 5 %; the others' p99 is "unchanged" if at most twice, or
//!   5 ms above, the p99 before. The filling requests load the server
//!   too, so part of any change is theirs.
//! - `reconnect-storm`: SIGTERM to the server with N attached, start it
//!   again on the same ports, and time until every client has
//!   reconnected and synced, from the new process's start; a histogram per
//!   250 ms shows whether the backoff spread the reconnections. "Re-synced"
//!   is ping + `mod:sync`; re-fetching module bytes (`mod:verify`) is not
//!   part of it.
//!
//! No test asserts a timing: the figures are printed and written to JSON,
//! and docs/benchmarks.md records them with the machine they ran on.

mod blocking;
mod fleet;
mod http;
mod procstat;
mod scenarios;
mod setup;
mod stats;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};

use crate::fleet::Fleet;
use crate::scenarios::{Ctx, Outcome};
use crate::setup::ServerSetup;

/// A scenario's name on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Handshakes,
    OneConnection,
    Held,
    Fanout,
    SlowConsumer,
    ReconnectStorm,
}

const ALL: [Scenario; 6] = [
    Scenario::Handshakes,
    Scenario::OneConnection,
    Scenario::Held,
    Scenario::Fanout,
    Scenario::SlowConsumer,
    Scenario::ReconnectStorm,
];

/// Load a vigil-server process with many simulated mTLS clients.
#[derive(Debug, Parser)]
#[command(version, about, after_help = AFTER_HELP)]
struct Cli {
    /// Shorter windows and 1,000 clients: about a minute.
    #[arg(long)]
    quick: bool,
    /// Simulated clients [default: 10000, with --quick 1000].
    #[arg(long, value_name = "N")]
    clients: Option<usize>,
    /// Run only this scenario (repeatable) [default: all].
    #[arg(long, value_enum, value_name = "NAME")]
    scenario: Vec<Scenario>,
    /// Also write the results as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// The vigil-server binary [default: `vigil-server` next to this program].
    #[arg(long, value_name = "PATH")]
    server_bin: Option<PathBuf>,
    /// A built hello module to deploy instead of building mods/hello.
    #[arg(long, value_name = "FILE")]
    module: Option<PathBuf>,
    /// The server's log filter (VIGIL_LOG); its log goes to a file in the
    /// work directory.
    #[arg(long, value_name = "FILTER", default_value = "info")]
    server_log: String,
    /// Keep the work directory (identities, server log, audit log).
    #[arg(long)]
    keep: bool,
}

const AFTER_HELP: &str = "\
Scenarios: handshakes, one-connection, held, fanout, slow-consumer,
reconnect-storm. The server runs as a separate process on free loopback
ports; its CPU and memory are read from /proc. Progress goes to stderr, the
table to stdout. Exit status: 0 when every scenario ran (whether or not its
goal was met), 1 when one could not run, 2 for bad usage.";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vigil-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The `vigil-server` next to this executable.
fn default_server_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this executable's path")?;
    let dir = exe.parent().context("executable without a directory")?;
    Ok(dir.join(format!("vigil-server{}", std::env::consts::EXE_SUFFIX)))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let bin = match cli.server_bin {
        Some(p) => p,
        None => default_server_bin()?,
    };
    anyhow::ensure!(
        bin.is_file(),
        "no vigil-server at {}: build it with `cargo build --release -p vigil-server-bin` \
         (it is looked for next to vigil-bench), or pass --server-bin PATH",
        bin.display()
    );
    let n = cli.clients.unwrap_or(if cli.quick { 1000 } else { 10_000 });
    anyhow::ensure!(n > 0, "--clients must be at least 1");
    let selected: Vec<Scenario> = if cli.scenario.is_empty() {
        ALL.to_vec()
    } else {
        ALL.iter()
            .copied()
            .filter(|s| cli.scenario.contains(s))
            .collect()
    };
    let wants = |s: Scenario| selected.contains(&s);
    let fleet_needed = selected.iter().any(|s| {
        matches!(
            s,
            Scenario::Held | Scenario::Fanout | Scenario::SlowConsumer | Scenario::ReconnectStorm
        )
    });

    let nofile = setup::raise_nofile();
    let needed = if fleet_needed { n as u64 + 512 } else { 512 };
    if nofile < needed {
        eprintln!(
            "warning: the open-file limit is {nofile}, and {n} clients need about {needed} \
             in this process and as many in the server; raise `ulimit -n`"
        );
    }

    let work = tempfile::Builder::new().prefix("vigil-bench-").tempdir()?;
    let t_setup = Instant::now();
    // Two identities more than clients: the one-connection client and the
    // slow consumer.
    eprintln!("setup: generating {} client identities", n + 2);
    let (server_id, ids) = tokio::task::spawn_blocking(move || setup::identities(n + 2))
        .await
        .context("identity generation panicked")??;
    let setup = ServerSetup::write(
        work.path(),
        bin,
        &server_id,
        &ids,
        n + 1024,
        cli.server_log.clone(),
    )?;
    if wants(Scenario::OneConnection) {
        eprintln!("setup: building mods/hello (release)");
        let mods = setup.mods();
        let module = cli.module.clone();
        tokio::task::spawn_blocking(move || setup::deploy_hello(&mods, module.as_deref()))
            .await
            .context("module build panicked")??;
    }
    let server = setup.start().await?;
    eprintln!(
        "setup: done in {:.1} s; vigil-server pid {} on 127.0.0.1:{} (REST :{}), work dir {}",
        t_setup.elapsed().as_secs_f64(),
        server.pid(),
        setup.port,
        setup.http_port,
        work.path().display()
    );
    let api = setup.api();
    let epoch = Instant::now();
    let mut ctx = Ctx {
        setup,
        server,
        api,
        quick: cli.quick,
        epoch,
    };
    let (fleet_ids, spare) = ids.split_at(n);
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut record = |name: &str, r: anyhow::Result<Outcome>, outcomes: &mut Vec<Outcome>| match r {
        Ok(o) => outcomes.push(o),
        Err(e) => {
            eprintln!("{name}: failed: {e:#}");
            failures.push(format!("{name}: {e:#}"));
        }
    };

    if wants(Scenario::Handshakes) {
        let r = scenarios::handshakes(&ctx, fleet_ids).await;
        record("handshakes", r, &mut outcomes);
    }
    if wants(Scenario::OneConnection) {
        let r = scenarios::one_connection(&ctx, &spare[0]).await;
        record("one-connection", r, &mut outcomes);
    }
    if fleet_needed {
        let r = fleet_scenarios(&mut ctx, fleet_ids, &spare[1], &wants).await;
        match r {
            Ok(list) => outcomes.extend(list),
            Err(e) => {
                eprintln!("fleet scenarios: failed: {e:#}");
                failures.push(format!("fleet scenarios: {e:#}"));
            }
        }
    }

    print_table(&outcomes);
    if let Some(path) = &cli.json {
        let doc = json!({
            "machine": machine(),
            "clients": n,
            "quick": cli.quick,
            "server_log_filter": cli.server_log,
            "scenarios": outcomes.iter().map(Outcome::json).collect::<Vec<_>>(),
            "errors": failures,
        });
        std::fs::write(path, serde_json::to_string_pretty(&doc)? + "\n")
            .with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if cli.keep {
        let kept = work.keep();
        eprintln!("kept the work directory {}", kept.display());
    }
    anyhow::ensure!(
        failures.is_empty(),
        "{} scenario(s) could not run",
        failures.len()
    );
    Ok(())
}

/// The scenarios that need a fleet of connected clients, in an order that
/// lets them share it: 1,000 first (fan-out at 1,000), then the rest
/// (memory, idle CPU, fan-out at N, slow consumer), then the restart.
async fn fleet_scenarios(
    ctx: &mut Ctx,
    ids: &[setup::ClientIdentity],
    slow: &setup::ClientIdentity,
    wants: &dyn Fn(Scenario) -> bool,
) -> anyhow::Result<Vec<Outcome>> {
    let mut out = Vec::new();
    let n = ids.len();
    let first = n.min(1000);
    let connect_limit = Duration::from_secs(60 + n as u64 / 100);
    let pid = ctx.server.pid();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_empty = procstat::rss_kib(pid)?;

    eprintln!("fleet: connecting {first} clients");
    let mut small = Fleet::new(ctx.setup.addr(), ctx.epoch, 64);
    small.add(&ids[..first]);
    small.wait_connected("fleet", connect_limit).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_small = procstat::rss_kib(pid)?;
    let mut fanouts = Vec::new();
    let mut fanout_met = true;
    let mut summaries = Vec::new();
    if wants(Scenario::Fanout) && n > first {
        let (f, met, s) = scenarios::fanout_size(ctx, &[&small]).await?;
        fanouts.push(f);
        fanout_met &= met;
        summaries.push(s);
    }
    let mut rest = Fleet::new(ctx.setup.addr(), ctx.epoch, 64);
    let rss_before_rest = procstat::rss_kib(pid)?;
    if n > first {
        eprintln!("fleet: connecting {} more clients", n - first);
        rest.add(&ids[first..]);
        rest.wait_connected("fleet", connect_limit).await?;
    }
    let fleets = [&small, &rest];
    if wants(Scenario::Held) {
        let o = if n > first {
            scenarios::held(ctx, &fleets, rss_before_rest, first).await?
        } else {
            scenarios::held(ctx, &fleets, rss_empty, 0).await?
        };
        let mut o = o;
        if let Value::Object(map) = &mut o.figures {
            map.insert("server_rss_empty_kib".into(), json!(rss_empty));
            map.insert("server_rss_first_1000_kib".into(), json!(rss_small));
            let whole = procstat::rss_kib(pid)?.saturating_sub(rss_empty) as f64 / n as f64;
            map.insert(
                "per_connection_all_kib".into(),
                json!(procstat::round(whole, 2)),
            );
        }
        out.push(o);
    }
    if wants(Scenario::Fanout) {
        let (f, met, s) = scenarios::fanout_size(ctx, &fleets).await?;
        fanouts.push(f);
        fanout_met &= met;
        summaries.push(s);
        out.push(Outcome {
            name: "fanout",
            goal: "one signed command to every client, until each acknowledged: p99 at most 20 ms with 1,000 clients, 120 ms with 10,000".into(),
            met: fanout_met,
            summary: summaries.join("; "),
            figures: json!({ "sizes": fanouts }),
        });
    }
    if wants(Scenario::SlowConsumer) {
        out.push(scenarios::slow_consumer(ctx, &fleets, slow).await?);
    }
    if wants(Scenario::ReconnectStorm) {
        out.push(scenarios::reconnect_storm(ctx, &fleets).await?);
    }
    small.stop().await;
    rest.stop().await;
    Ok(out)
}

fn print_table(outcomes: &[Outcome]) {
    let width = outcomes
        .iter()
        .map(|o| o.name.len())
        .max()
        .unwrap_or(8)
        .max(8);
    println!();
    println!("{:<width$}  {:<6}  result", "scenario", "goal");
    println!("{}", "-".repeat(width + 60));
    for o in outcomes {
        println!(
            "{:<width$}  {:<6}  {}",
            o.name,
            if o.met { "met" } else { "MISSED" },
            o.summary
        );
    }
}

/// What the figures were measured on.
fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .ok();
    json!({
        "cpu": model,
        "cpus": std::thread::available_parallelism().map(usize::from).ok(),
        "memory_kib": mem_kib,
        "kernel": kernel,
    })
}

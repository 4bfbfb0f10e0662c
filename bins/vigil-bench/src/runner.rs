//! One bench run: the setup in a work directory, the server process, the
//! scenarios in order, and the results.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use serde_json::{Value, json};

use crate::cli::{ALL, Cli, Scenario};
use crate::fleet::Fleet;
use crate::procstat;
use crate::report::{machine, print_table};
use crate::scenarios::{self, Ctx, Outcome};
use crate::setup::{self, ServerSetup};

/// The `vigil-server` next to this executable.
fn default_server_bin() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot find this executable's path")?;
    let dir = exe.parent().context("executable without a directory")?;
    Ok(dir.join(format!("vigil-server{}", std::env::consts::EXE_SUFFIX)))
}

pub(crate) async fn run(cli: Cli) -> anyhow::Result<()> {
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
    let mut setup = setup;
    if cli.wss {
        setup.wss_port = Some(crate::setup::free_port()?);
    }
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
        nonces: !cli.clock_heartbeats,
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
    let mut small = new_fleet(ctx);
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
    let mut rest = new_fleet(ctx);
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

/// A fleet of bench clients aimed at the server the way this run is
/// configured: its TLS port, or its WebSocket port under `--wss`.
fn new_fleet(ctx: &Ctx) -> Fleet {
    Fleet::new(
        ctx.setup.fleet_addr(),
        ctx.epoch,
        64,
        ctx.nonces,
        ctx.setup.wss_port.is_some(),
    )
}

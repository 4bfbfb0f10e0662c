//! `vigil-client`: connect to a pinned vigil server and stay connected.
//!
//! Reads flags, `VIGIL_*` environment variables and an optional TOML file
//! (in that order of precedence), then runs [`vigil_client::Client`] until
//! SIGINT or SIGTERM, or runs one command against the server.

mod cli;
mod config;
mod service;

use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;
use vigil_client::{Client, ClientConfig, Connection, RunOutcome};

use crate::cli::{Cli, Command};
use crate::config::resolve;

/// Logs to stderr, with line breaks and control characters in logged
/// text escaped (attacker-chosen text cannot forge a line).
fn init_logging(format: vigil_log::Format) {
    let filter = std::env::var("VIGIL_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    vigil_log::init(&filter, format);
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

async fn run(config: ClientConfig) -> anyhow::Result<()> {
    tracing::info!(
        server = %config.server,
        proxy = config.proxy.as_ref().map(tracing::field::display),
        server_fingerprint = %config.server_fingerprint,
        client = %config.identity.fingerprint(),
        "vigil client starting"
    );
    let client = std::sync::Arc::new(Client::new(config));
    let stop = CancellationToken::new();
    let stopped = CancellationToken::new();
    service::spawn(client.clone(), stopped.clone());
    tokio::spawn({
        let stop = stop.clone();
        async move {
            wait_for_signal().await;
            tracing::info!("signal received, disconnecting");
            stop.cancel();
        }
    });
    let outcome = client.run(stop).await;
    stopped.cancel();
    service::stopping();
    match outcome {
        RunOutcome::Shutdown { command_id } => {
            tracing::warn!(command_id, "shut down by an authorized SHUTDOWN_NOW");
        }
        RunOutcome::NotStarted(e) => anyhow::bail!("not started: {e}"),
        _ => {}
    }
    Ok(())
}

async fn sync(config: ClientConfig) -> anyhow::Result<()> {
    let conn = Connection::connect(&config).await?;
    let modules = conn.sync().await?;
    let json = serde_json::to_string_pretty(&modules)?;
    println!("{json}");
    conn.close();
    Ok(())
}

async fn exec(config: ClientConfig, module: &str, args: &str) -> anyhow::Result<()> {
    let conn = Connection::connect(&config).await?;
    let modules = conn.sync().await?;
    let Some(listed) = modules.iter().find(|m| m.name == module) else {
        let names: Vec<&str> = modules.iter().map(|m| m.name.as_str()).collect();
        anyhow::bail!(
            "the server has no module {module:?} (it has: {})",
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        );
    };
    let verified = conn.verify(module, Some(&listed.sum)).await?;
    tracing::info!(module, sum = %verified.sum, size = verified.size, "module verified");
    let result = conn.exec(module, args, &verified.sum).await?;
    println!("{result}");
    conn.close();
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    let config = match resolve(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vigil-client: {e:#}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vigil-client: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let command = cli.command.unwrap_or(Command::Run);
    let result = match command {
        Command::Run => runtime.block_on(run(config)),
        Command::Sync => runtime.block_on(sync(config)),
        Command::Exec { module, args } => runtime.block_on(exec(config, &module, &args.join(" "))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil-client: {e:#}");
            ExitCode::FAILURE
        }
    }
}

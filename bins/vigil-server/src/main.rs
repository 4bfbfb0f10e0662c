//! `vigil-server`: serve pinned mutual-TLS clients.
//!
//! Reads flags, `VIGIL_*` environment variables and an optional TOML file
//! (in that order of precedence) into [`vigil_server::Settings`], builds a
//! [`vigil_server::Deployment`] from them and runs it until SIGINT or
//! SIGTERM.

mod process;
mod service;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use vigil_server::{Deployment, DeploymentError, Settings};

const AFTER_HELP: &str = "\
Precedence: command-line flags, then VIGIL_* environment variables, then the
--config file, then the defaults shown. Relative paths in the config file are
relative to the file's directory.

Modules: every *.so at the top of the --mods directory is loaded at start;
files closed after writing, renamed in or removed are followed at once, and
every connected client is told. Deploy by writing a temporary name and
renaming it into place.

Trust: only clients whose key fingerprint is listed in the trust file
({\"trusted_fingerprints\": [\"<sha256 hex>\", ...]}) can connect. Edits take
effect at once; removing a fingerprint closes that client's sessions.

Logging: VIGIL_LOG (or RUST_LOG) sets the filter, e.g. VIGIL_LOG=debug.

systemd: with Type=notify the server says READY=1 once it serves, STATUS= with
its client count, and STOPPING=1 when it stops; with WatchdogSec= it pings the
watchdog at half that, only while its accept loop, heartbeat task and audit
writer all answer (a hung server stops pinging and is restarted).
VIGIL_FAULT_INJECTION=accept-loop (or heartbeats) makes SIGUSR1 freeze the
accept loop (or the heartbeat task), to test that.

Exit status: 0 after a clean shutdown, 1 if the server could not listen or
failed while running,
2 for bad usage or configuration (unreadable certificate, key or trust file).";

/// Serve vigil clients over pinned mutual TLS.
#[derive(Debug, Parser)]
#[command(version, about, after_help = AFTER_HELP)]
struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "VIGIL_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log lines as text, or as one JSON object per line (for log
    /// pipelines; stable field names: session, client, command_id,
    /// audit_seq).
    #[arg(
        long,
        env = "VIGIL_LOG_FORMAT",
        value_name = "text|json",
        default_value = "text"
    )]
    log_format: vigil_log::Format,
    #[command(flatten)]
    settings: Settings,
}

/// Flags and environment over file over defaults.
fn settings(cli: Cli) -> Result<Settings, DeploymentError> {
    Ok(match &cli.config {
        Some(path) => cli.settings.or(Settings::from_file(path)?),
        None => cli.settings,
    })
}

/// The error and each of its causes, on one line.
fn report(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        // Some errors already end with their cause's text.
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

async fn serve(deployment: Deployment) -> Result<(), DeploymentError> {
    let running = deployment.start().await?;
    let handle = running.handle();
    if let Err(e) = service::arm_fault_injection(&handle) {
        return Err(DeploymentError::Invalid(e));
    }
    service::spawn(handle.clone());
    tokio::spawn(async move {
        let signal = process::wait_for_signal().await;
        tracing::info!(signal, "shutting down (send it again to exit at once)");
        handle.shutdown();
        process::wait_for_signal().await;
        std::process::exit(130);
    });
    process::ignore_file_size_signal();
    Ok(running.run().await?)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    process::init_logging(cli.log_format);
    process::raise_fd_limit();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vigil-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Inside the runtime: the module registry starts its hosts' supervisors.
    let entered = runtime.enter();
    let deployment = match settings(cli).and_then(Deployment::build) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("vigil-server: {}", report(&e));
            return ExitCode::from(2);
        }
    };
    drop(entered);
    let result = runtime.block_on(serve(deployment));
    // Blocking work still under way (a module host starting) is not
    // waited for.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigil-server: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

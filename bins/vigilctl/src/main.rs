//! `vigilctl`: identities, fingerprints, and the end-to-end demo.

mod demo;
mod init;

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use vigil_auth::{Fingerprint, certs_from_pem};

const AFTER_HELP: &str = "\
Exit status: 0 on success, 1 if the command failed, 2 for bad usage.

Logging: VIGIL_LOG (or RUST_LOG) sets the filter; the demo is quiet unless it is set.";

/// Manage vigil identities and try vigil end to end.
#[derive(Debug, Parser)]
#[command(version, about, after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a server identity, a client identity, a trusted-keys.json that
    /// trusts the client, and configs for both that pin each other.
    Init {
        /// Directory to write into (created if missing).
        dir: PathBuf,
        /// Address the server will listen on.
        #[arg(long, default_value = "127.0.0.1")]
        interface: IpAddr,
        /// Port the server will listen on.
        #[arg(long, default_value_t = 8443)]
        port: u16,
        /// Port of the server's REST API.
        #[arg(long, default_value_t = 8080)]
        http_port: u16,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
    /// Print the SHA-256 fingerprint of a certificate's public key, the same
    /// hex as `openssl x509 -in CERT -pubkey -noout | openssl pkey -pubin
    /// -outform der | sha256sum`.
    Fingerprint {
        /// PEM certificate files.
        #[arg(required = true)]
        certs: Vec<PathBuf>,
    },
    /// Run a server and a client on loopback with fresh identities and show,
    /// step by step, what vigil does.
    Demo,
}

fn fingerprint(path: &std::path::Path) -> anyhow::Result<Fingerprint> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let certs = certs_from_pem(&pem, path)?;
    Fingerprint::of_cert_der(&certs[0]).with_context(|| path.display().to_string())
}

fn init_logging(default: &str) {
    let filter = std::env::var("VIGIL_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| default.into());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .init();
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Init {
            dir,
            interface,
            port,
            http_port,
            force,
        } => {
            init_logging("warn");
            let written = init::write(&dir, interface, port, http_port, force)?;
            init::report(&written);
        }
        Command::Fingerprint { certs } => {
            let many = certs.len() > 1;
            for path in &certs {
                let fp = fingerprint(path)?;
                if many {
                    println!("{fp}  {}", path.display());
                } else {
                    println!("{fp}");
                }
            }
        }
        Command::Demo => {
            init_logging("off");
            let runtime =
                tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            runtime.block_on(demo::run())?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vigilctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

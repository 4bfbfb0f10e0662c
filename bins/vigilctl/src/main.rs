//! `vigilctl`: identities, keys and signed commands; the operator's side
//! of the REST API and the emergency endpoint; audit log checks; and the
//! end-to-end demo.

mod api;
mod audit;
mod bench;
mod cli;
mod demo;
mod init;
mod keygen;
mod module;
mod ops;
mod sign;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use vigil_auth::{Fingerprint, certs_from_pem};

use crate::cli::{AuditCommand, Cli, Command, ModuleCommand};
use crate::sign::CommandFlags;

fn fingerprint(path: &std::path::Path) -> anyhow::Result<Fingerprint> {
    let pem = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let certs = certs_from_pem(&pem, path)?;
    Fingerprint::of_cert_der(&certs[0]).with_context(|| path.display().to_string())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let format = cli.log_format;
    let init_logging = |default: &str| cli::init_logging(default, format);
    match cli.command {
        Command::Init {
            dir,
            interface,
            port,
            http_port,
            force,
            var_dir,
        } => {
            init_logging("warn");
            let written = init::write(&dir, interface, port, http_port, force, var_dir.as_deref())?;
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
        Command::Send {
            command,
            args,
            client,
            wait,
            reason,
            api,
        } => ops::send(&api, &command, args.as_deref(), client, wait, reason)?,
        Command::Sign { key, file, fields } => sign::run(&key, file.as_ref(), &fields)?,
        Command::Relay { file, wait, api } => ops::relay(&api, &file, wait)?,
        Command::Emergency(a) => {
            let fields = CommandFlags {
                wa_id: Some(a.wa_id),
                command_type: Some("SHUTDOWN_NOW".into()),
                command: None,
                args: None,
                target: a.target,
                reason: Some(a.reason),
                expires_in: None,
                command_id: None,
            };
            ops::emergency_shutdown(&a.api, &a.key, &fields)?;
        }
        Command::Audit {
            command: AuditCommand::Verify { file },
        } => audit::verify(&file)?,
        Command::Clients { api } => ops::get(&api, "/v1/clients")?,
        Command::Modules { api } => ops::get(&api, "/v1/modules")?,
        Command::Status { id, api } => {
            ops::get(&api, &format!("/v1/commands/{}", api::path_segment(&id)))?;
        }
        Command::Keygen {
            out,
            id,
            commands,
            force,
        } => keygen::run(&out, id, &commands, force)?,
        Command::Module { command } => match command {
            ModuleCommand::Keygen {
                out,
                keys_file,
                force,
            } => module::keygen(&out, keys_file.as_deref(), force)?,
            ModuleCommand::Sign(args) => module::sign(&args)?,
        },
        Command::BenchSend {
            connections,
            warmup,
            duration,
            command,
            args,
            client,
            api,
        } => {
            let secs = |name: &str, v: f64| {
                std::time::Duration::try_from_secs_f64(v)
                    .with_context(|| format!("--{name} must be a number of seconds, got {v}"))
            };
            let plan = bench::Plan {
                connections,
                warmup: secs("warmup", warmup)?,
                duration: secs("duration", duration)?,
                body: bench::body(&command, args.as_deref(), client.as_deref())?,
            };
            bench::run(&api, plan)?;
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

//! An embedded server and a client with its own command handler, in one
//! process on loopback: the server signs a `RUN` command, the client
//! verifies it and runs it through a closure, and the server collects the
//! acknowledgement.
//!
//! ```text
//! cargo run -p vigil-server --example embedded
//! ```
//!
//! Identities, the authority key and the audit log are made in a temporary
//! directory that is removed at the end.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use vigil_auth::{GeneratedIdentity, TrustStore};
use vigil_client::{
    Authorities, AuthorityKey, Client, ClientConfig, CommandSettings, ReplayGuard, Verifier,
    handler_fn,
};
use vigil_server::{Authority, Deployment, Outcome, ServerConfig, Target};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let server_id = GeneratedIdentity::generate("server")?;
    let client_id = GeneratedIdentity::generate("agent")?;
    let authority = vigil_command::generate_signing_key()?;

    // The server: trusts the agent's key, signs with the authority key,
    // records everything in an audit log.
    let trust = TrustStore::from_fingerprints([client_id.fingerprint]);
    let mut config = ServerConfig::new("127.0.0.1:0".parse()?, server_id.identity()?, trust);
    config.authority = Some(Authority {
        key: authority.clone(),
        id: vigil_server::DEFAULT_AUTHORITY_ID.to_owned(),
    });
    config.heartbeat_interval = Duration::from_millis(500);
    config.audit = Some(vigil_audit::AuditLog::open(
        dir.path().join("audit.jsonl"),
        vigil_audit::AuditOptions::default(),
    )?);
    let running = Deployment::new(config).start().await?;
    let handle = running.handle();
    let addr = running.local_addr();
    let server = tokio::spawn(running.run());
    println!("server listening on {addr}, key {}", server_id.fingerprint);

    // The client: pins the server's key, takes RUN commands signed by the
    // authority, runs them with a closure.
    let authorities = Authorities::from_keys([AuthorityKey::new(
        Some(vigil_server::DEFAULT_AUTHORITY_ID.to_owned()),
        authority.verifying_key(),
        ["RUN"],
    )?])?;
    let verifier = Verifier::new(authorities)
        .with_supported_types(["RUN"])
        .with_own_agent_id(client_id.fingerprint.to_hex())
        .with_replay_guard(Arc::new(ReplayGuard::in_memory()));
    let handler = handler_fn(|command: String, args: serde_json::Value| async move {
        Ok(json!({"ran": command, "args": args}))
    });
    let mut client_config = ClientConfig::new(
        addr.to_string(),
        client_id.identity()?,
        server_id.fingerprint,
    );
    client_config.commands = Some(CommandSettings::new(
        verifier,
        authority.verifying_key(),
        Arc::new(handler),
    )?);
    let client = Arc::new(Client::new(client_config));
    let stop = vigil_client::CancellationToken::new();
    let agent = tokio::spawn({
        let (client, stop) = (client.clone(), stop.clone());
        async move { client.run(stop).await }
    });
    while !handle.is_connected(&client_id.fingerprint) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("agent {} connected", client_id.fingerprint.short());

    // A signed command, end to end.
    let delivery = handle
        .send_command(
            "hello",
            json!({"who": "world"}),
            "embedded example",
            &Target::Clients(vec![client_id.fingerprint]),
        )
        .await?;
    let report = delivery.wait(Duration::from_secs(10)).await;
    for o in &report.outcomes {
        match &o.outcome {
            Outcome::Acked(ack) => println!(
                "agent answered {:?}: {}",
                ack.status,
                ack.result.clone().unwrap_or_default()
            ),
            other => anyhow::bail!("no answer from the agent: {other:?}"),
        }
    }

    stop.cancel();
    agent.await?;
    handle.shutdown();
    server.await??;
    println!("stopped cleanly");
    Ok(())
}

//! `vigilctl demo`: vigil's main job on loopback, step by step.
//!
//! Everything runs in this process on 127.0.0.1 with identities generated
//! in a temporary directory that is removed at the end. Each step checks
//! its outcome: the demo exits non-zero if vigil does not behave as shown.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use std::sync::Arc;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use vigil_auth::{GeneratedIdentity, Identity, TrustFile};
use vigil_client::{Client, ClientConfig, ClientError, ClientEvent, Connection};
use vigil_modules::dev;
use vigil_proto::AckStatus;
use vigil_server::{Deployment, Settings, Target};

use crate::init;

struct Steps(u32);

impl Steps {
    fn step(&mut self, title: &str) {
        self.0 += 1;
        println!("\n[{}] {title}", self.0);
    }
}

fn say(line: impl std::fmt::Display) {
    println!("    {line}");
}

fn write_trust(path: &std::path::Path, file: &TrustFile) -> anyhow::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, file.to_json())?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

pub(crate) async fn run() -> anyhow::Result<()> {
    println!(
        "vigil demo: a server and a client on loopback, pinned mutual TLS, identities made here."
    );
    let mut steps = Steps(0);
    let dir = tempfile::Builder::new()
        .prefix("vigil-demo-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let d = dir.path();

    steps.step("Generate identities");
    // Reserve a free port for the configs the demo writes.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let written = init::write(d, IpAddr::from([127, 0, 0, 1]), port, 0, false, None)?;
    say(format_args!(
        "wrote Ed25519 identities and configs to {}",
        d.display()
    ));
    say(format_args!("server key fingerprint  {}", written.server));
    say(format_args!("client key fingerprint  {}", written.client));
    say(format_args!(
        "{} trusts the client's fingerprint only",
        init::TRUST
    ));

    steps.step("Make an offline module key");
    let module_key = d.join(MODULE_KEY);
    let module_keys = d.join(MODULE_KEYS);
    crate::init::write_signing_key(&module_key, &vigil_command::generate_signing_key()?, false)?;
    let key = crate::sign::load_key(&module_key)?;
    let keys = vigil_command::ModuleKeys::from_keys([key.verifying_key()])?;
    std::fs::write(&module_keys, keys.to_json())?;
    say(format_args!(
        "module key id {} (the SHA-256 of its public key), listed in {MODULE_KEYS}",
        vigil_command::key_id(&key.verifying_key())
    ));
    say("the server loads, and the client trusts, only modules whose manifest this key signed");

    steps.step("Start the server");
    let trust_path = d.join(init::TRUST);
    // The server.toml `vigilctl init` wrote, with quicker heartbeats.
    let mut settings = Settings::default();
    settings.heartbeat_interval = Some(HEARTBEAT.as_secs_f64());
    settings.module_keys = Some(module_keys.clone());
    let settings = settings.or(Settings::from_file(&d.join(init::SERVER_TOML))?);
    let running = Deployment::build(settings.clone())?.start().await?;
    let listen = running.local_addr();
    let mut handle = running.handle();
    let mut server_task = tokio::spawn(running.run());
    say(format_args!(
        "listening on {listen} (TLS 1.3 only, client certificates required)"
    ));
    say(format_args!(
        "signing a heartbeat every {} ms with its authority key",
        HEARTBEAT.as_millis()
    ));

    steps.step("Connect the client");
    let client_identity = Identity::load(&d.join(init::CLIENT_CRT), &d.join(init::CLIENT_KEY))?;
    let config = ClientConfig::new(listen.to_string(), client_identity, written.server);
    let conn = Connection::connect(&config).await?;
    say(format_args!(
        "client connected and pinned the server's key {}",
        conn.server_fingerprint().short()
    ));
    let sessions = handle.sessions();
    let session = sessions.first().context("server lists no session")?;
    ensure!(
        session.fingerprint == written.client,
        "server saw a different client key"
    );
    say(format_args!(
        "server knows the client by its key fingerprint {}",
        session.fingerprint.short()
    ));
    let modules = conn.sync().await?;
    say(format_args!(
        "mod:sync answered: {} module(s) loaded",
        modules.len()
    ));

    conn.close();
    drop(conn);

    steps.step("Start an agent that takes signed commands");
    let mut agent_config = agent_config(&config, &written, d)?;
    agent_config.module_trust = Some(vigil_command::ModuleTrust {
        keys,
        versions: Arc::new(vigil_command::VersionStore::open(
            d.join(init::STATE).join("module-versions.json"),
        )?),
    });
    let agent = Arc::new(Client::new(agent_config));
    let mut events = agent.subscribe();
    let stop = tokio_util::sync::CancellationToken::new();
    let runner = tokio::spawn({
        let (agent, stop) = (agent.clone(), stop.clone());
        async move { agent.run(stop).await }
    });
    wait_event(&mut events, "the agent to sync", |e| {
        matches!(e, ClientEvent::Synced { .. })
    })
    .await?;
    say(format_args!(
        "the agent accepts RUN from the server's key and SHUTDOWN_NOW from the operator's ({})",
        init::AUTHORITIES
    ));
    say(format_args!(
        "it pins the module keys ({MODULE_KEYS}) and keeps the highest module versions it trusted"
    ));
    say(format_args!(
        "its failsafe fires after {} s without a verified heartbeat or command",
        FAILSAFE.as_secs()
    ));

    module_steps(
        &mut steps,
        &agent,
        &mut events,
        &config,
        &handle,
        &d.join(init::MODS),
        &module_key,
        &d.join(init::SERVER_DATA).join("audit.jsonl"),
    )
    .await?;

    steps.step("Send a signed command");
    let report = handle
        .send_command(
            "uname",
            serde_json::json!({"asked_by": "demo"}),
            "show what signed commands do",
            &Target::Clients(vec![written.client]),
        )
        .await?
        .wait(Duration::from_secs(10))
        .await;
    let ack = acked(&report)?;
    ensure!(
        ack.status == AckStatus::Done,
        "the command did not run: {ack:?}"
    );
    say(format_args!(
        "server signed RUN uname ({}) with its authority key and delivered it",
        report.command_id
    ));
    say(format_args!(
        "the agent verified signature, key, freshness, target and replay, ran it, and answered: {}",
        ack.result
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default()
    ));

    steps.step("Forged and replayed commands are refused");
    let stranger_key = vigil_command::generate_signing_key()?;
    let mut forged = signed_body(&stranger_key, "demo-forged", "uname")?;
    forged.insert(
        "wa_public_key".into(),
        serde_json::json!(vigil_command::encode_public_key(
            &written.authority.verifying_key()
        )),
    );
    let ack = deliver_one(&handle, &forged, written.client).await?;
    ensure!(
        ack.status == AckStatus::Refused,
        "a forged command was not refused"
    );
    say(format_args!(
        "signed by another key but claiming the server's: refused ({}: {})",
        ack.code.map(|c| c.to_string()).unwrap_or_default(),
        ack.detail
    ));
    let genuine = signed_body(&written.authority, &format!("demo-once-{port}"), "uname")?;
    let first = deliver_one(&handle, &genuine, written.client).await?;
    ensure!(
        first.status == AckStatus::Done,
        "the genuine command did not run"
    );
    let again = deliver_one(&handle, &genuine, written.client).await?;
    ensure!(again.status == AckStatus::Refused, "a replayed command ran");
    say(format_args!(
        "the same genuine command sent twice: first done, then refused ({}: {})",
        again.code.map(|c| c.to_string()).unwrap_or_default(),
        again.detail
    ));

    steps.step("Stop the server: heartbeats stop, the failsafe fires");
    handle.shutdown();
    tokio::time::timeout(Duration::from_secs(10), &mut server_task)
        .await
        .context("the server did not stop")???;
    say("server stopped; the agent keeps waiting for a verified heartbeat");
    let fired = wait_event(&mut events, "the failsafe", |e| {
        matches!(e, ClientEvent::FailsafeFired { .. })
    })
    .await?;
    if let ClientEvent::FailsafeFired {
        silent_for,
        outcomes,
    } = fired
    {
        say(format_args!(
            "FAILSAFE FIRED after {} ms of silence; break commands ran in order:",
            silent_for.as_millis()
        ));
        for o in outcomes {
            say(format_args!(
                "  {} -> {} {}",
                o.command,
                if o.ok { "ok" } else { "failed" },
                o.detail
            ));
        }
    }

    steps.step("Start the server again: the failsafe re-arms");
    let deployment = Deployment::build(settings)?;
    let trust = deployment.server_config().trust.clone();
    let running = deployment.start().await?;
    handle = running.handle();
    server_task = tokio::spawn(running.run());
    let rearmed = wait_event(&mut events, "the failsafe to re-arm", |e| {
        matches!(e, ClientEvent::FailsafeRearmed { .. })
    })
    .await?;
    if let ClientEvent::FailsafeRearmed { outage } = rearmed {
        say(format_args!(
            "the agent reconnected (with backoff), verified a heartbeat and re-armed after a {} ms outage",
            outage.as_millis()
        ));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while handle.stats().failsafe_reports.get() < 2 {
        ensure!(
            Instant::now() < deadline,
            "the server got no failsafe report"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    say("the agent reported both transitions to the server");
    stop.cancel();
    runner.await?;
    let conn = Connection::connect(&config).await?;

    steps.step("A client with an unknown key tries to connect");
    let stranger = GeneratedIdentity::generate("stranger")?;
    let stranger_config =
        ClientConfig::new(listen.to_string(), stranger.identity()?, written.server);
    match Connection::connect(&stranger_config).await {
        Err(e @ ClientError::CertificateRefused { .. }) => {
            say(format_args!("refused during the handshake: {e}"))
        }
        Err(e) => bail!("stranger failed for the wrong reason: {e}"),
        Ok(_) => bail!("a client with an unknown key was admitted"),
    }

    steps.step("The client trusts only the server key it pinned");
    let mut wrong_pin = config.clone();
    wrong_pin.server_fingerprint = stranger.fingerprint;
    match Connection::connect(&wrong_pin).await {
        Err(e @ ClientError::WrongServer(_)) => {
            say(format_args!("with a wrong pin, the client is {e}"))
        }
        Err(e) => bail!("wrong pin failed for the wrong reason: {e}"),
        Ok(_) => bail!("the client accepted a server it did not pin"),
    }

    steps.step("Bad input is answered, never ignored");
    let tls = vigil_auth::client_config(&config.identity, written.server)?;
    let tcp = tokio::net::TcpStream::connect(listen).await?;
    let name = vigil_auth::rustls::pki_types::ServerName::try_from("vigil")?;
    let mut raw = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await?;
    raw.write_all(b"hello there\n").await?;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), raw.read(&mut buf)).await??;
    let answer = String::from_utf8_lossy(&buf[..n]);
    ensure!(
        answer.starts_with("err:"),
        "expected an err frame, got {answer:?}"
    );
    say("sent:     hello there");
    say(format_args!("answered: {}", answer.trim_end()));
    drop(raw);

    steps.step("Revoke the client by editing trusted-keys.json");
    write_trust(&trust_path, &TrustFile::default())?;
    let start = Instant::now();
    let reason = tokio::time::timeout(Duration::from_secs(5), conn.closed())
        .await
        .context("the revoked client's session stayed open")?;
    say(format_args!(
        "removed the client's fingerprint; the server closed its session after {} ms",
        start.elapsed().as_millis()
    ));
    say(format_args!("the client saw: {reason}"));
    match Connection::connect(&config).await {
        Err(ClientError::CertificateRefused { .. }) => say("reconnecting is refused"),
        Err(e) => bail!("revoked client failed for the wrong reason: {e}"),
        Ok(_) => bail!("a revoked client was admitted"),
    }

    steps.step("Trust it again, without restarting anything");
    write_trust(
        &trust_path,
        &TrustFile {
            trusted_fingerprints: vec![written.client],
        },
    )?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !trust.is_trusted(&written.client) {
        ensure!(
            Instant::now() < deadline,
            "the trust file edit was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let conn = Connection::connect(&config).await?;
    conn.sync().await?;
    say("the client is admitted again at once");

    steps.step("Shut down");
    handle.shutdown();
    tokio::time::timeout(Duration::from_secs(10), server_task)
        .await
        .context("the server did not stop")???;
    say("server closed its sessions and stopped cleanly");

    println!("\nDemo complete: every step behaved as described.");
    Ok(())
}

/// The demo's offline module key, and the module keys file that lists it.
const MODULE_KEY: &str = "module.key";
const MODULE_KEYS: &str = "module-keys.json";

/// How often the demo server signs a heartbeat.
const HEARTBEAT: Duration = Duration::from_millis(500);
/// The demo agent's failsafe timeout (15 s by default; short to watch it).
const FAILSAFE: Duration = Duration::from_secs(2);

/// The agent: the client's identity, plus signed commands and a failsafe,
/// as the `client.toml` written by `vigilctl init` sets them up.
fn agent_config(
    base: &ClientConfig,
    written: &init::Written,
    d: &std::path::Path,
) -> anyhow::Result<ClientConfig> {
    let authorities = vigil_command::Authorities::load(&d.join(init::AUTHORITIES))?;
    let guard = vigil_command::ReplayGuard::open(
        d.join(init::STATE).join("replay.log"),
        std::time::SystemTime::now(),
    )?;
    let verifier = vigil_command::Verifier::new(authorities)
        .with_supported_types([vigil_client::RUN, vigil_client::SHUTDOWN_NOW])
        .with_own_agent_id(written.client.to_hex())
        .with_replay_guard(Arc::new(guard));
    let mut programs = std::collections::BTreeMap::new();
    let spec = |program: &str, args: &[&str]| -> anyhow::Result<vigil_client::ProgramSpec> {
        Ok(serde_json::from_value(serde_json::json!({
            "program": program,
            "args": args,
        }))?)
    };
    programs.insert("uname".to_owned(), spec("uname", &["-sr"])?);
    programs.insert(
        "lockdown".to_owned(),
        spec("echo", &["local services locked down"])?,
    );
    programs.insert("notify".to_owned(), spec("echo", &["operator paged"])?);
    let handler = vigil_client::ProgramHandler::new(programs);
    let mut settings = vigil_client::CommandSettings::new(
        verifier,
        written.authority.verifying_key(),
        Arc::new(handler),
    )?;
    settings.failsafe_timeout = FAILSAFE;
    settings.break_commands = ["lockdown", "notify"]
        .iter()
        .map(|c| vigil_client::BreakCommand {
            command: (*c).to_owned(),
            args: serde_json::Value::Null,
            timeout: 5.0,
        })
        .collect();
    let mut config = base.clone();
    config.commands = Some(settings);
    config.backoff = vigil_client::Backoff {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(1),
    };
    Ok(config)
}

/// A RUN command signed by `key` as the server's authority.
fn signed_body(
    key: &vigil_command::SigningKey,
    id: &str,
    command: &str,
) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let now = vigil_command::Timestamp::from_system_time(std::time::SystemTime::now())?;
    let mut cmd = vigil_command::UnsignedCommand::new(
        id,
        vigil_client::RUN,
        vigil_server::DEFAULT_AUTHORITY_ID,
        now,
        "demo",
    );
    cmd.command = Some(command.to_owned());
    match serde_json::to_value(cmd.sign(key)?)? {
        serde_json::Value::Object(map) => Ok(map),
        _ => bail!("a signed command is a JSON object"),
    }
}

/// The agent's acknowledgement (other sessions of the same key, such as a
/// plain connection, do not answer commands).
fn acked(report: &vigil_server::DeliveryReport) -> anyhow::Result<vigil_proto::Ack> {
    report
        .outcomes
        .iter()
        .find_map(|o| match &o.outcome {
            vigil_server::Outcome::Acked(ack) => Some(ack.clone()),
            _ => None,
        })
        .with_context(|| format!("no acknowledgement: {:?}", report.outcomes))
}

async fn deliver_one(
    handle: &vigil_server::ServerHandle,
    body: &serde_json::Map<String, serde_json::Value>,
    client: vigil_auth::Fingerprint,
) -> anyhow::Result<vigil_proto::Ack> {
    let report = handle
        .deliver(body, &Target::Clients(vec![client]))
        .await?
        .wait(Duration::from_secs(10))
        .await;
    acked(&report)
}

/// Builds the `hello` example module twice (plain and `formal`), for the
/// module steps. `None` with a reason when this binary runs away from its
/// source tree or without cargo.
fn build_hello() -> Result<(std::path::PathBuf, std::path::PathBuf), String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let manifest = root.join("mods/hello/Cargo.toml");
    if !manifest.exists() {
        return Err(format!("{} not found", manifest.display()));
    }
    // The server runs each module in a host process, which `cargo run
    // --bin vigilctl` does not build.
    dev::ensure_host_beside_me(&root).map_err(|e| e.to_string())?;
    let target = root.join("target/demo-modules");
    let build = |features: &[&str], sub: &str| {
        dev::cargo_build_module(&manifest, &target.join(sub), features, true)
            .map_err(|e| e.to_string())
    };
    Ok((build(&[], "plain")?, build(&["formal"], "formal")?))
}

async fn wait_event(
    events: &mut tokio::sync::broadcast::Receiver<ClientEvent>,
    what: &str,
    want: impl Fn(&ClientEvent) -> bool,
) -> anyhow::Result<ClientEvent> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.recv().await {
                Ok(e) if want(&e) => return Ok(e),
                Ok(_) => {}
                Err(e) => bail!("client events: {e}"),
            }
        }
    })
    .await
    .with_context(|| format!("timed out waiting for {what}"))?
}

async fn trusted(
    events: &mut tokio::sync::broadcast::Receiver<ClientEvent>,
    name: &str,
) -> anyhow::Result<vigil_proto::ModuleInfo> {
    match wait_event(events, "the client to verify the module", |e| {
        matches!(e, ClientEvent::ModuleTrusted(m) if m.name == name)
            || matches!(e, ClientEvent::ModuleRejected { module, .. } if module == name)
    })
    .await?
    {
        ClientEvent::ModuleTrusted(info) => Ok(info),
        ClientEvent::ModuleRejected { reason, .. } => bail!("the client rejected {name}: {reason}"),
        _ => bail!("unexpected event"),
    }
}

/// Signs `file` as `hello.so`, version `version`, as `vigilctl module
/// sign` does, and writes the manifest into `mods` (a temporary name, then
/// a rename).
fn sign_into(
    file: &std::path::Path,
    key: &std::path::Path,
    version: u64,
    mods: &std::path::Path,
) -> anyhow::Result<vigil_command::SignedManifest> {
    let args = crate::module::SignArgs {
        key: key.to_owned(),
        version,
        expires: "30d".into(),
        not_before: None,
        name: Some("hello.so".into()),
        target: None,
        abi: None,
        file: file.to_owned(),
    };
    let signed = crate::module::manifest_for(&args, std::time::SystemTime::now())?;
    let tmp = mods.join(".hello.so.manifest.tmp");
    std::fs::write(&tmp, signed.to_json())?;
    std::fs::rename(&tmp, mods.join("hello.so.manifest"))?;
    Ok(signed)
}

/// The version a trusted module's manifest names.
fn version_of(info: &vigil_proto::ModuleInfo) -> String {
    info.manifest
        .as_ref()
        .and_then(|m| m.get("version"))
        .map(ToString::to_string)
        .unwrap_or_else(|| "none".into())
}

/// The module steps: sign, load, verify, run, replace, re-verify, run, a
/// refused rollback, unload.
#[allow(clippy::too_many_arguments)]
async fn module_steps(
    steps: &mut Steps,
    agent: &Client,
    events: &mut tokio::sync::broadcast::Receiver<ClientEvent>,
    config: &ClientConfig,
    handle: &vigil_server::ServerHandle,
    mods: &std::path::Path,
    module_key: &std::path::Path,
    audit: &std::path::Path,
) -> anyhow::Result<()> {
    steps.step("Build the example module `hello` (two versions)");
    let (plain, formal) = match tokio::task::spawn_blocking(build_hello).await? {
        Ok(paths) => paths,
        Err(reason) => {
            say(format_args!("skipping the module steps: {reason}"));
            return Ok(());
        }
    };
    say("built mods/hello, and mods/hello with --features formal, in target/demo-modules");

    steps.step(
        "Sign hello.so (version 1) and deploy it: the server loads it and tells every client",
    );
    let signed = sign_into(&plain, module_key, 1, mods)?;
    say(format_args!(
        "vigilctl module sign: hello.so.manifest, version 1, sha256 {}, valid until {}",
        signed.manifest().sha256,
        signed.manifest().expires
    ));
    dev::deploy(&plain, mods, "hello.so")?;
    say("the manifest, then the module: each copied to a temporary name in mods/ and renamed");
    let first = trusted(events, "hello.so").await?;
    say(format_args!(
        "server checked the manifest, loaded it and broadcast modload; the client fetched the bytes"
    ));
    say(format_args!(
        "and checked them and the manifest (signature, sum, name, window, version): sha256 {} \
         ({} bytes), version {}: trusted",
        first.sum,
        first.size,
        version_of(&first)
    ));
    let out = agent.exec("hello.so", "operator").await?;
    say(format_args!(
        "exec hello.so \"operator\" with that sum -> {out}"
    ));
    if let Some((_, host)) = handle
        .module_health()
        .into_iter()
        .find(|(name, _)| name == "hello.so")
    {
        say(format_args!(
            "it ran in its own sandboxed process (pid {}, {}), never in the server",
            host.pid.map_or_else(|| "?".to_owned(), |p| p.to_string()),
            host.confinement
        ));
    }

    steps.step("Replace hello.so with a build that answers differently (version 2)");
    // The module first, then its manifest: the server refuses the new
    // bytes under the old manifest (manifest_mismatch) and keeps serving
    // version 1 until the new manifest arrives.
    dev::deploy(&formal, mods, "hello.so")?;
    sign_into(&formal, module_key, 2, mods)?;
    let second = trusted(events, "hello.so").await?;
    ensure!(second.sum != first.sum, "the replacement has the same sum");
    say(format_args!(
        "server broadcast modreload; the client re-verified: sha256 {}, version {}",
        second.sum,
        version_of(&second)
    ));
    let out = agent.exec("hello.so", "operator").await?;
    say(format_args!("exec hello.so \"operator\" -> {out}"));
    let conn = Connection::connect(config).await?;
    match conn.exec("hello.so", "operator", &first.sum).await {
        Err(ClientError::Server(body)) => say(format_args!(
            "an exec that still carries the old sum is refused: {body}"
        )),
        Err(e) => bail!("stale exec failed for the wrong reason: {e}"),
        Ok(_) => bail!("an exec with the old sum ran"),
    }

    steps.step("Roll back: rename version 1, validly signed, back in");
    let rejected = handle.stats().module_rejected.get();
    sign_into(&plain, module_key, 1, mods)?;
    dev::deploy(&plain, mods, "hello.so")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    // Refused, and audited with its code.
    while handle.stats().module_rejected.get() <= rejected
        || !std::fs::read_to_string(audit)
            .unwrap_or_default()
            .contains("\"manifest_rollback\"")
    {
        ensure!(Instant::now() < deadline, "the rollback was not refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let listed = conn.sync().await?;
    ensure!(
        listed.iter().any(|m| m.sum == second.sum),
        "the server no longer serves version 2: {listed:?}"
    );
    say("refused and audited as manifest_rollback: version 1 is below version 2, already loaded");
    say(
        "(remembered across restarts in server-data/module-versions.json); version 2 keeps serving",
    );

    steps.step("Remove hello.so");
    std::fs::remove_file(mods.join("hello.so"))?;
    wait_event(
        events,
        "modunload",
        |e| matches!(e, ClientEvent::ModuleForgotten { module } if module == "hello.so"),
    )
    .await?;
    say("server broadcast modunload; the client forgot the module");
    match conn.exec("hello.so", "operator", &second.sum).await {
        Err(ClientError::Server(body)) => say(format_args!("exec now fails clearly: {body}")),
        Err(e) => bail!("exec of a removed module failed for the wrong reason: {e}"),
        Ok(_) => bail!("a removed module ran"),
    }
    Ok(())
}

//! Signed commands, heartbeats and the failsafe, end to end: a real server
//! signs and relays, a real client verifies, runs and acknowledges.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures_util::future::BoxFuture;
use serde_json::{Map, Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use vigil_auth::{Fingerprint, GeneratedIdentity};
use vigil_client::{
    BreakCommand, Client, ClientConfig, ClientEvent, CommandHandler, CommandSettings, RunOutcome,
};
use vigil_command::{
    Authorities, AuthorityKey, ReplayGuard, SigningKey, Timestamp, UnsignedCommand, Verifier,
    encode_public_key, generate_signing_key,
};
use vigil_proto::{AckStatus, ServerMessage};
use vigil_server::{Authority, Outcome, Target};

use crate::support::{self, TestServer};

/// Records what it ran; `fail` fails, `slow` sleeps.
#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<(String, Value)>>);

impl Recorder {
    fn ran(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(c, _)| c.clone())
            .collect()
    }
}

impl CommandHandler for Recorder {
    fn execute<'a>(
        &'a self,
        command: &'a str,
        args: &'a Value,
    ) -> BoxFuture<'a, Result<Value, String>> {
        Box::pin(async move {
            self.0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((command.to_owned(), args.clone()));
            match command {
                "fail" => Err("asked to fail".into()),
                "slow" => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok(json!("late"))
                }
                other => Ok(json!({"ran": other, "args": args})),
            }
        })
    }
}

struct Keys {
    server: SigningKey,
    operator: SigningKey,
    stranger: SigningKey,
}

impl Keys {
    fn new() -> Keys {
        Keys {
            server: generate_signing_key().expect("key"),
            operator: generate_signing_key().expect("key"),
            stranger: generate_signing_key().expect("key"),
        }
    }

    fn authorities(&self) -> Authorities {
        Authorities::from_keys([
            AuthorityKey::new(
                Some("vigil-server".into()),
                self.server.verifying_key(),
                ["RUN"],
            )
            .expect("server"),
            AuthorityKey::new(
                Some("wa_ops".into()),
                self.operator.verifying_key(),
                ["SHUTDOWN_NOW"],
            )
            .expect("operator"),
        ])
        .expect("authorities")
    }
}

struct Setup {
    server: TestServer,
    keys: Keys,
    id: GeneratedIdentity,
    state: tempfile::TempDir,
}

impl Setup {
    async fn new(heartbeats: Option<Duration>) -> Setup {
        let keys = Keys::new();
        let id = GeneratedIdentity::generate("agent").expect("identity");
        let server_key = keys.server.clone();
        let server = TestServer::start_with(&[id.fingerprint], |c| {
            if let Some(interval) = heartbeats {
                c.authority = Some(Authority {
                    key: server_key,
                    id: "vigil-server".into(),
                });
                c.heartbeat_interval = interval;
            }
        })
        .await;
        Setup {
            server,
            keys,
            id,
            state: tempfile::tempdir().expect("tempdir"),
        }
    }

    fn settings(&self, handler: Arc<Recorder>, failsafe: Duration) -> CommandSettings {
        let guard = ReplayGuard::open(self.state.path().join("replay.log"), SystemTime::now())
            .expect("guard");
        let verifier = Verifier::new(self.keys.authorities())
            .with_supported_types(["RUN", "SHUTDOWN_NOW"])
            .with_own_agent_id(self.id.fingerprint.to_hex())
            .with_replay_guard(Arc::new(guard));
        let mut settings =
            CommandSettings::new(verifier, self.keys.server.verifying_key(), handler)
                .expect("settings");
        settings.failsafe_timeout = failsafe;
        settings.break_commands = ["lock", "fail", "wipe"]
            .iter()
            .map(|c| BreakCommand {
                command: (*c).to_owned(),
                args: json!({"why": "failsafe"}),
                timeout: 5.0,
            })
            .collect();
        settings
    }

    fn config(&self, handler: Arc<Recorder>, failsafe: Duration) -> ClientConfig {
        let mut config = support::client_config(&self.server, &self.id);
        config.commands = Some(self.settings(handler, failsafe));
        config.backoff = vigil_client::Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(200),
        };
        config
    }
}

struct Running {
    client: Arc<Client>,
    events: tokio::sync::broadcast::Receiver<ClientEvent>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<RunOutcome>,
}

impl Running {
    async fn start(config: ClientConfig) -> Running {
        let client = Arc::new(Client::new(config));
        let mut events = client.subscribe();
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let (client, stop) = (client.clone(), stop.clone());
            async move { client.run(stop).await }
        });
        support::next_event(&mut events, |e| matches!(e, ClientEvent::Synced { .. })).await;
        Running {
            client,
            events,
            stop,
            task,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

fn now() -> Timestamp {
    Timestamp::from_system_time(SystemTime::now()).expect("now")
}

fn unsigned(id: &str, command_type: &str, wa_id: &str) -> UnsignedCommand {
    let mut cmd = UnsignedCommand::new(id, command_type, wa_id, now(), "test");
    if command_type == "RUN" {
        cmd.command = Some("echo".into());
        cmd.args = Some(json!({"n": 1}));
    }
    cmd
}

fn body(cmd: UnsignedCommand, key: &SigningKey) -> Map<String, Value> {
    let signed = cmd.sign(key).expect("sign");
    match serde_json::to_value(&signed).expect("json") {
        Value::Object(map) => map,
        other => panic!("not an object: {other}"),
    }
}

async fn ack_of(
    server: &TestServer,
    body: &Map<String, Value>,
    client: Fingerprint,
) -> vigil_proto::Ack {
    let report = server
        .handle
        .deliver(body, &Target::Clients(vec![client]))
        .await
        .expect("delivered")
        .wait(Duration::from_secs(10))
        .await;
    match &report.outcomes[..] {
        [one] => match &one.outcome {
            Outcome::Acked(ack) => ack.clone(),
            other => panic!("no ack: {other:?}"),
        },
        other => panic!("expected one outcome, got {other:?}"),
    }
}

#[tokio::test]
async fn a_signed_command_runs_and_is_acknowledged_with_its_result() {
    let setup = Setup::new(Some(Duration::from_millis(200))).await;
    let recorder = Arc::new(Recorder::default());
    let running = Running::start(setup.config(recorder.clone(), Duration::from_secs(30))).await;
    let delivery = setup
        .server
        .handle
        .send_command(
            "echo",
            json!({"delay": 5}),
            "integration test",
            &Target::Clients(vec![setup.id.fingerprint]),
        )
        .await
        .expect("signed");
    let report = delivery.wait(Duration::from_secs(10)).await;
    let [one] = &report.outcomes[..] else {
        panic!("{report:?}")
    };
    let Outcome::Acked(ack) = &one.outcome else {
        panic!("{one:?}")
    };
    assert_eq!(ack.status, AckStatus::Done, "{ack:?}");
    assert_eq!(ack.command_id.as_deref(), Some(report.command_id.as_str()));
    assert_eq!(
        ack.result,
        Some(json!({"ran": "echo", "args": {"delay": 5}}))
    );
    assert_eq!(recorder.ran(), vec!["echo".to_owned()]);

    // A handler error is acknowledged as failed, with the error.
    let report = setup
        .server
        .handle
        .send_command("fail", json!(null), "t", &Target::All)
        .await
        .expect("signed")
        .wait(Duration::from_secs(10))
        .await;
    let Outcome::Acked(ack) = &report.outcomes[0].outcome else {
        panic!("{report:?}")
    };
    assert_eq!(
        (ack.status, ack.detail.as_str()),
        (AckStatus::Failed, "asked to fail")
    );

    // A target that is not connected is reported, not silently dropped.
    let absent = Fingerprint::from_bytes([9; 32]);
    let report = setup
        .server
        .handle
        .send_command("echo", json!(null), "t", &Target::Clients(vec![absent]))
        .await
        .expect("signed")
        .wait(Duration::from_secs(1))
        .await;
    assert_eq!(report.outcomes[0].outcome, Outcome::NotConnected);
    running.stop().await;
}

#[tokio::test]
async fn every_bad_command_is_refused_with_its_reason_and_nothing_runs() {
    let setup = Setup::new(Some(Duration::from_millis(200))).await;
    let recorder = Arc::new(Recorder::default());
    let running = Running::start(setup.config(recorder.clone(), Duration::from_secs(30))).await;
    let k = &setup.keys;
    let me = setup.id.fingerprint;

    let mut cases: Vec<(&str, Map<String, Value>, &str)> = Vec::new();
    // Signed by one key, claiming another.
    let mut forged = body(unsigned("c-forged", "RUN", "vigil-server"), &k.stranger);
    forged.insert(
        "wa_public_key".into(),
        json!(encode_public_key(&k.server.verifying_key())),
    );
    cases.push(("forged signature", forged, "invalid_signature"));
    // A field changed after signing.
    let mut altered = body(unsigned("c-altered", "RUN", "vigil-server"), &k.server);
    altered.insert("args".into(), json!({"n": 2}));
    cases.push(("altered args", altered, "invalid_signature"));
    let mut altered = body(unsigned("c-altered2", "RUN", "vigil-server"), &k.server);
    altered.insert("reason".into(), json!("something else"));
    cases.push(("altered reason", altered, "invalid_signature"));
    // A key nobody enrolled.
    cases.push((
        "unknown key",
        body(unsigned("c-unknown", "RUN", "vigil-server"), &k.stranger),
        "unauthorized_key",
    ));
    // A small-order (weak) public key with any signature.
    let mut weak = body(unsigned("c-weak", "RUN", "vigil-server"), &k.server);
    let mut identity_point = [0u8; 32];
    identity_point[0] = 1;
    use base64::Engine as _;
    weak.insert(
        "wa_public_key".into(),
        json!(base64::engine::general_purpose::STANDARD.encode(identity_point)),
    );
    cases.push(("weak key", weak, "weak_key"));
    // The SHUTDOWN_NOW key may not issue RUN.
    cases.push((
        "type not allowed",
        body(unsigned("c-type", "RUN", "wa_ops"), &k.operator),
        "command_type_not_allowed",
    ));
    // An id that is not the key's.
    cases.push((
        "wa_id mismatch",
        body(unsigned("c-waid", "RUN", "wa_ops"), &k.server),
        "wa_id_mismatch",
    ));
    // A type nobody supports.
    cases.push((
        "unsupported type",
        body(unsigned("c-reboot", "REBOOT", "vigil-server"), &k.server),
        "unsupported_command_type",
    ));
    // Stale, future, expired.
    let at = |secs: i64| {
        let t = if secs >= 0 {
            SystemTime::now() + Duration::from_secs(secs as u64)
        } else {
            SystemTime::now() - Duration::from_secs((-secs) as u64)
        };
        Timestamp::from_system_time(t).expect("time")
    };
    let mut stale = unsigned("c-stale", "RUN", "vigil-server");
    stale.issued_at = at(-6 * 60);
    cases.push(("stale", body(stale, &k.server), "timestamp_outside_window"));
    let mut future = unsigned("c-future", "RUN", "vigil-server");
    future.issued_at = at(3 * 60);
    cases.push((
        "future",
        body(future, &k.server),
        "timestamp_outside_window",
    ));
    let mut expired = unsigned("c-expired", "RUN", "vigil-server");
    expired.expires_at = Some(at(-1));
    cases.push(("expired", body(expired, &k.server), "expired"));
    // Meant for another agent.
    let mut elsewhere = unsigned("c-target", "RUN", "vigil-server");
    elsewhere.target_agent_id = Some("some-other-agent".into());
    cases.push(("wrong target", body(elsewhere, &k.server), "wrong_target"));
    // Malformed: missing fields, wrong types, unknown fields.
    let mut missing = body(unsigned("c-missing", "RUN", "vigil-server"), &k.server);
    missing.remove("signature");
    cases.push(("missing field", missing, "malformed"));
    let mut wrong_type = body(unsigned("c-wrongtype", "RUN", "vigil-server"), &k.server);
    wrong_type.insert("issued_at".into(), json!(12345));
    cases.push(("wrong type", wrong_type, "malformed"));
    let mut extra = body(unsigned("c-extra", "RUN", "vigil-server"), &k.server);
    extra.insert("sneaky".into(), json!(true));
    cases.push(("unknown field", extra, "malformed"));
    let mut no_offset = body(unsigned("c-nooffset", "RUN", "vigil-server"), &k.server);
    no_offset.insert("issued_at".into(), json!("2026-01-01T12:00:00"));
    cases.push((
        "timestamp without offset",
        no_offset,
        "timestamp_without_offset",
    ));

    for (label, b, code) in &cases {
        let ack = ack_of(&setup.server, b, me).await;
        assert_eq!(ack.status, AckStatus::Refused, "{label}: {ack:?}");
        assert_eq!(
            ack.code.as_ref().map(vigil_proto::AckCode::as_str),
            Some(*code),
            "{label}: {ack:?}"
        );
        assert!(!ack.detail.is_empty(), "{label}: a reason for a person");
    }
    assert!(
        recorder.ran().is_empty(),
        "nothing ran: {:?}",
        recorder.ran()
    );

    // Replayed: the first copy runs, the second is refused.
    let good = body(unsigned("c-once", "RUN", "vigil-server"), &k.server);
    assert_eq!(
        ack_of(&setup.server, &good, me).await.status,
        AckStatus::Done
    );
    let again = ack_of(&setup.server, &good, me).await;
    assert_eq!(
        (
            again.status,
            again.code.as_ref().map(vigil_proto::AckCode::as_str)
        ),
        (AckStatus::Refused, Some("replayed"))
    );
    assert_eq!(recorder.ran(), vec!["echo".to_owned()]);
    running.stop().await;

    // Also after the client restarts: the replay guard is on disk.
    let recorder = Arc::new(Recorder::default());
    let running = Running::start(setup.config(recorder.clone(), Duration::from_secs(30))).await;
    let after = ack_of(&setup.server, &good, me).await;
    assert_eq!(
        (
            after.status,
            after.code.as_ref().map(vigil_proto::AckCode::as_str)
        ),
        (AckStatus::Refused, Some("replayed"))
    );
    assert!(recorder.ran().is_empty());
    running.stop().await;
}

#[tokio::test]
async fn the_failsafe_holds_while_heartbeats_flow_fires_when_they_stop_and_rearms() {
    let mut setup = Setup::new(Some(Duration::from_millis(100))).await;
    let recorder = Arc::new(Recorder::default());
    let mut running =
        Running::start(setup.config(recorder.clone(), Duration::from_millis(800))).await;

    // Heartbeats flow: no firing over several timeouts.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(recorder.ran().is_empty(), "fired while heartbeats flowed");

    // The server stops: the failsafe fires once, running every break
    // command in order even though one fails.
    setup.server.handle.shutdown();
    let fired = support::next_event(&mut running.events, |e| {
        matches!(e, ClientEvent::FailsafeFired { .. })
    })
    .await;
    let ClientEvent::FailsafeFired {
        outcomes,
        silent_for,
    } = fired
    else {
        unreachable!()
    };
    assert!(silent_for >= Duration::from_millis(800));
    let summary: Vec<(&str, bool)> = outcomes
        .iter()
        .map(|o| (o.command.as_str(), o.ok))
        .collect();
    assert_eq!(
        summary,
        vec![("lock", true), ("fail", false), ("wipe", true)]
    );
    assert_eq!(recorder.ran(), vec!["lock", "fail", "wipe"]);

    // The server comes back: heartbeats re-arm it, and the client reports
    // both transitions.
    setup.server.restart().await;
    support::next_event(&mut running.events, |e| {
        matches!(e, ClientEvent::FailsafeRearmed { .. })
    })
    .await;
    support::eventually(|| setup.server.handle.stats().failsafe_reports.get() >= 2).await;
    assert_eq!(recorder.ran().len(), 3, "fired once per outage");
    running.stop().await;
}

#[tokio::test]
async fn refused_commands_and_forged_heartbeats_do_not_feed_the_failsafe() {
    // No authority: the server sends no heartbeats of its own.
    let setup = Setup::new(None).await;
    let recorder = Arc::new(Recorder::default());
    let mut running =
        Running::start(setup.config(recorder.clone(), Duration::from_millis(1500))).await;
    let stranger = setup.keys.stranger.clone();
    let handle = setup.server.handle.clone();
    let me = setup.id.fingerprint;
    let flood = tokio::spawn(async move {
        for i in 0..40u64 {
            // A forged heartbeat (signed by a key the client does not pin).
            let beat = vigil_command::Heartbeat {
                epoch: 1,
                seq: i + 1,
                sent_at: now(),
            }
            .sign(&stranger);
            if let Ok(Value::Object(map)) = serde_json::to_value(&beat) {
                handle
                    .broadcast(&ServerMessage::Heartbeat(map), &format!("x{i}"))
                    .expect("not a command");
            }
            // And a command with a bad signature.
            let cmd = body(
                unsigned(&format!("junk-{i}"), "RUN", "vigil-server"),
                &stranger,
            );
            let _ = handle.deliver(&cmd, &Target::Clients(vec![me])).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let start = std::time::Instant::now();
    support::next_event(&mut running.events, |e| {
        matches!(e, ClientEvent::FailsafeFired { .. })
    })
    .await;
    eprintln!("fired after {:?} of forged input", start.elapsed());
    assert!(
        recorder.ran().starts_with(&["lock".to_owned()]),
        "only break commands ran"
    );
    flood.abort();
    running.stop().await;
}

#[tokio::test]
async fn shutdown_now_from_the_operator_key_runs_break_commands_then_stops_the_client() {
    let setup = Setup::new(Some(Duration::from_millis(200))).await;
    let recorder = Arc::new(Recorder::default());
    let running = Running::start(setup.config(recorder.clone(), Duration::from_secs(30))).await;
    let mut cmd = UnsignedCommand::new(
        "shut-1",
        "SHUTDOWN_NOW",
        "wa_ops",
        now(),
        "Emergency maintenance required",
    );
    cmd.target_agent_id = Some(setup.id.fingerprint.to_hex());
    let b = body(cmd, &setup.keys.operator);
    let ack = ack_of(&setup.server, &b, setup.id.fingerprint).await;
    assert_eq!(ack.status, AckStatus::Done, "{ack:?}");
    let outcome = tokio::time::timeout(Duration::from_secs(10), running.task)
        .await
        .expect("client stops")
        .expect("no panic");
    assert!(
        matches!(&outcome, RunOutcome::Shutdown { command_id } if command_id == "shut-1"),
        "{outcome:?}"
    );
    assert_eq!(recorder.ran(), vec!["lock", "fail", "wipe"]);
    drop(running.client);
}

/// A TCP proxy to `upstream` on a free loopback port: each direction of
/// each connection is copied by `pump(from, to)`.
async fn proxy<F, Fut>(upstream: std::net::SocketAddr, pump: F) -> std::net::SocketAddr
where
    F: Fn(tokio::net::tcp::OwnedReadHalf, tokio::net::tcp::OwnedWriteHalf) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((down, _)) = listener.accept().await {
            let Ok(up) = TcpStream::connect(upstream).await else {
                continue;
            };
            let (dr, dw) = down.into_split();
            let (ur, uw) = up.into_split();
            tokio::spawn(pump(dr, uw));
            tokio::spawn(pump(ur, dw));
        }
    });
    addr
}

/// A TCP proxy that can be told to stop forwarding without closing
/// anything: a silent partition.
async fn freezable_proxy(
    upstream: std::net::SocketAddr,
) -> (std::net::SocketAddr, Arc<tokio::sync::watch::Sender<bool>>) {
    let (frozen_tx, frozen_rx) = tokio::sync::watch::channel(false);
    let addr = proxy(upstream, move |from, to| pump(from, to, frozen_rx.clone())).await;
    (addr, Arc::new(frozen_tx))
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if *frozen.borrow() {
            // Swallow everything from now on, keeping both sockets open.
            let _ = frozen.wait_for(|f| !*f).await;
            continue;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn the_failsafe_fires_when_a_proxy_silently_stops_forwarding() {
    let setup = Setup::new(Some(Duration::from_millis(100))).await;
    let (proxy, freeze) = freezable_proxy(setup.server.addr).await;
    let recorder = Arc::new(Recorder::default());
    let mut config = setup.config(recorder.clone(), Duration::from_millis(800));
    config.server = proxy.to_string();
    let mut running = Running::start(config).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        recorder.ran().is_empty(),
        "fired while heartbeats flowed through the proxy"
    );
    let _ = freeze.send(true);
    support::next_event(&mut running.events, |e| {
        matches!(e, ClientEvent::FailsafeFired { .. })
    })
    .await;
    assert_eq!(recorder.ran(), vec!["lock", "fail", "wipe"]);
    running.stop().await;
}

/// A TCP proxy that forwards everything, in order, `delay` late once told
/// to (the value in the watch; zero forwards at once).
async fn delaying_proxy(
    upstream: std::net::SocketAddr,
) -> (
    std::net::SocketAddr,
    Arc<tokio::sync::watch::Sender<Duration>>,
) {
    let (delay_tx, delay_rx) = tokio::sync::watch::channel(Duration::ZERO);
    let addr = proxy(upstream, move |from, to| {
        delayed_pump(from, to, delay_rx.clone())
    })
    .await;
    (addr, Arc::new(delay_tx))
}

async fn delayed_pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: tokio::sync::watch::Receiver<Duration>,
) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    tokio::spawn(async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let due = tokio::time::Instant::now() + *delay.borrow();
        if tx.send((due, buf[..n].to_vec())).is_err() {
            return;
        }
    }
}

/// F17: a path that holds every frame back (here 800 ms each way, with a
/// nonce allowed to be 1 s old) while heartbeats keep flowing through it:
/// each beat covers a nonce sent 1.6 s before it arrives, is refused as
/// `stale_nonce`, and the failsafe fires. With clock freshness those beats
/// were 0.8 s old by `sent_at` and kept it quiet.
#[tokio::test]
async fn the_failsafe_fires_when_a_path_holds_heartbeats_back() {
    let setup = Setup::new(Some(Duration::from_millis(100))).await;
    let (proxy, delay) = delaying_proxy(setup.server.addr).await;
    let recorder = Arc::new(Recorder::default());
    let mut config = setup.config(recorder.clone(), Duration::from_millis(1500));
    config.server = proxy.to_string();
    if let Some(c) = config.commands.as_mut() {
        c.heartbeat_freshness = vigil_client::HeartbeatFreshness::Nonce {
            max_age: Duration::from_secs(1),
        };
    }
    let mut running = Running::start(config).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        recorder.ran().is_empty(),
        "fired while heartbeats flowed through the proxy"
    );
    let _ = delay.send(Duration::from_millis(800));
    let refused = support::next_event(
        &mut running.events,
        |e| matches!(e, ClientEvent::HeartbeatRefused { reason } if reason.contains("stale_nonce")),
    )
    .await;
    eprintln!("{refused:?}");
    support::next_event(&mut running.events, |e| {
        matches!(e, ClientEvent::FailsafeFired { .. })
    })
    .await;
    assert_eq!(recorder.ran(), vec!["lock", "fail", "wipe"]);
    running.stop().await;
}

/// A client cannot be set up to run open: a weak heartbeat key and a
/// verifier without a replay guard are refused when the settings are
/// made, and a client whose failsafe cannot be armed does not start.
#[tokio::test]
async fn settings_that_would_run_open_are_refused() {
    let setup = Setup::new(None).await;
    let recorder = Arc::new(Recorder::default());
    let mut small_order = [0u8; 32];
    small_order[0] = 1;
    let weak = vigil_command::VerifyingKey::from_bytes(&small_order).expect("point");
    let guarded = || {
        Verifier::new(setup.keys.authorities())
            .with_replay_guard(Arc::new(ReplayGuard::in_memory()))
    };
    assert!(matches!(
        CommandSettings::new(guarded(), weak, recorder.clone()),
        Err(vigil_client::ClientError::WeakHeartbeatKey)
    ));
    assert!(matches!(
        CommandSettings::new(
            Verifier::new(setup.keys.authorities()),
            setup.keys.server.verifying_key(),
            recorder.clone()
        ),
        Err(vigil_client::ClientError::NoReplayGuard)
    ));

    // Made unsafe after the fact: `run` returns at once instead of
    // running without a failsafe.
    for (what, spoil) in [
        (
            "zero failsafe timeout",
            Box::new(|s: &mut CommandSettings| s.failsafe_timeout = Duration::ZERO)
                as Box<dyn Fn(&mut CommandSettings)>,
        ),
        (
            "weak key set later",
            Box::new(move |s| s.heartbeat_key = weak),
        ),
    ] {
        let mut config = setup.config(recorder.clone(), Duration::from_secs(5));
        if let Some(settings) = config.commands.as_mut() {
            spoil(settings);
        }
        let client = Client::new(config);
        let outcome = tokio::time::timeout(crate::WAIT, client.run(CancellationToken::new()))
            .await
            .expect("returns at once");
        assert!(
            matches!(outcome, RunOutcome::NotStarted(_)),
            "{what}: {outcome:?}"
        );
        assert!(
            setup.server.handle.sessions().is_empty(),
            "{what}: never connected"
        );
    }
}

//! The REST API and the emergency endpoint against a running server, with
//! a real client taking the commands and a real audit log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use vigil_audit::{AuditLog, AuditOptions, FaultInjection};
use vigil_auth::GeneratedIdentity;
use vigil_command::{
    Authorities, AuthorityKey, ReplayGuard, SigningKey, Timestamp, UnsignedCommand, Verifier,
    generate_signing_key,
};
use vigil_server::{Authority, HttpConfig, HttpServer};

use crate::support::{self, TestServer};

const TOKEN: &str = "test-token-0123456789";

/// A minimal HTTP/1.1 exchange: one request, `Connection: close`.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> (u16, Value) {
    let mut tcp = TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or_default();
    req.push_str(&format!(
        "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    tcp.write_all(req.as_bytes()).await.expect("write");
    tcp.write_all(body).await.expect("write");
    read_response(&mut tcp).await
}

async fn read_response(tcp: &mut TcpStream) -> (u16, Value) {
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut raw))
        .await
        .expect("answer in time")
        .expect("read");
    let text = String::from_utf8_lossy(&raw);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let value = serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()));
    (status, value)
}

struct Api {
    server: TestServer,
    http: SocketAddr,
    keys: (SigningKey, SigningKey),
    agent: GeneratedIdentity,
    _audit_dir: tempfile::TempDir,
    audit_path: std::path::PathBuf,
    faults: FaultInjection,
}

impl Api {
    async fn start() -> Api {
        let server_key = generate_signing_key().expect("key");
        let operator = generate_signing_key().expect("key");
        let agent = GeneratedIdentity::generate("agent").expect("identity");
        let audit_dir = tempfile::tempdir().expect("tempdir");
        let audit_path = audit_dir.path().join("audit.jsonl");
        let faults = FaultInjection::new();
        let mut options = AuditOptions::default();
        options.fault_injection = Some(faults.clone());
        let audit = AuditLog::open(&audit_path, options).expect("audit");
        let key = server_key.clone();
        let server = TestServer::start_with(&[agent.fingerprint], move |c| {
            c.authority = Some(Authority {
                key,
                id: "vigil-server".into(),
            });
            c.heartbeat_interval = Duration::from_millis(200);
            c.audit = Some(audit);
            c.agent_id = "vigil-server-under-test".into();
        })
        .await;
        let authorities = Authorities::from_keys([AuthorityKey::new(
            Some("wa_ops".into()),
            operator.verifying_key(),
            ["RUN", "SHUTDOWN_NOW"],
        )
        .expect("key")])
        .expect("authorities");
        let guard = ReplayGuard::open(audit_dir.path().join("relay-replay.log"), SystemTime::now())
            .expect("guard");
        let mut config = HttpConfig::new("127.0.0.1:0".parse().expect("addr"), TOKEN);
        config.read_timeout = Duration::from_millis(800);
        config.relay = Some(vigil_server::Relay::new(authorities, Arc::new(guard)));
        let api = HttpServer::bind(config, server.handle.clone())
            .await
            .expect("bind");
        let http = api.local_addr().expect("addr");
        tokio::spawn(api.run());
        Api {
            server,
            http,
            keys: (server_key, operator),
            agent,
            _audit_dir: audit_dir,
            audit_path,
            faults,
        }
    }

    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let bytes = body.map(|b| b.to_string().into_bytes());
        http(self.http, method, path, Some(TOKEN), bytes.as_deref()).await
    }

    fn audit_kinds(&self) -> Vec<String> {
        self.audit_records()
            .iter()
            .filter_map(|v| v["kind"].as_str().map(str::to_owned))
            .collect()
    }

    fn audit_records(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.audit_path)
            .expect("audit log")
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .collect()
    }
}

/// A client that runs `echo`-like commands in process and records them.
async fn agent(
    api: &Api,
    ran: Arc<std::sync::Mutex<Vec<String>>>,
) -> (
    Arc<vigil_client::Client>,
    tokio_util::sync::CancellationToken,
) {
    #[derive(Debug)]
    struct Rec(Arc<std::sync::Mutex<Vec<String>>>);
    impl vigil_client::CommandHandler for Rec {
        fn execute<'a>(
            &'a self,
            command: &'a str,
            args: &'a Value,
        ) -> futures_util::future::BoxFuture<'a, Result<Value, String>> {
            Box::pin(async move {
                self.0
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(command.to_owned());
                Ok(json!({"echo": command, "args": args}))
            })
        }
    }
    let authorities = Authorities::from_keys([
        AuthorityKey::new(
            Some("vigil-server".into()),
            api.keys.0.verifying_key(),
            ["RUN"],
        )
        .expect("key"),
        AuthorityKey::new(
            Some("wa_ops".into()),
            api.keys.1.verifying_key(),
            ["RUN", "SHUTDOWN_NOW"],
        )
        .expect("key"),
    ])
    .expect("authorities");
    let verifier = Verifier::new(authorities)
        .with_supported_types(["RUN", "SHUTDOWN_NOW"])
        .with_own_agent_id(api.agent.fingerprint.to_hex())
        .with_replay_guard(Arc::new(ReplayGuard::in_memory()));
    let mut config = support::client_config(&api.server, &api.agent);
    config.commands = Some(
        vigil_client::CommandSettings::new(
            verifier,
            api.keys.0.verifying_key(),
            Arc::new(Rec(ran)),
        )
        .expect("settings"),
    );
    let client = Arc::new(vigil_client::Client::new(config));
    let mut events = client.subscribe();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let (c, s) = (client.clone(), stop.clone());
        async move { c.run(s).await }
    });
    support::next_event(&mut events, |e| {
        matches!(e, vigil_client::ClientEvent::Synced { .. })
    })
    .await;
    (client, stop)
}

fn signed(key: &SigningKey, id: &str, command_type: &str, target: Option<String>) -> Value {
    let now = Timestamp::from_system_time(SystemTime::now()).expect("now");
    let mut cmd = UnsignedCommand::new(id, command_type, "wa_ops", now, "api test");
    if command_type == "RUN" {
        cmd.command = Some("relayed".into());
        cmd.args = Some(json!({"x": [1, 2]}));
    }
    cmd.target_agent_id = target;
    serde_json::to_value(cmd.sign(key).expect("sign")).expect("json")
}

#[tokio::test]
async fn send_reaches_the_handler_and_wait_returns_its_result() {
    let api = Api::start().await;
    let ran = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (_client, stop) = agent(&api, ran.clone()).await;
    let me = api.agent.fingerprint.to_hex();

    let (status, body) = api
        .call(
            "POST",
            "/send?wait=10",
            Some(json!({"command": "shutdown", "args": {"delay": 5}, "client_id": me})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], "done", "{body}");
    assert_eq!(
        body["results"][0]["result"],
        json!({"echo": "shutdown", "args": {"delay": 5}})
    );
    assert_eq!(body["results"][0]["client"], me.as_str());

    // Without ?wait: 202 with the command id, then the record shows the result.
    let (status, body) = api
        .call("POST", "/send", Some(json!({"command": "later"})))
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["command_id"].as_str().expect("id").to_owned();
    assert_eq!(body["sent_to"], json!([me]));
    let mut record = Value::Null;
    for _ in 0..200 {
        let (status, r) = api.call("GET", &format!("/v1/commands/{id}"), None).await;
        assert_eq!(status, 200);
        record = r;
        if record["targets"][&me]["status"] == "done" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(record["targets"][&me]["status"], "done", "{record}");
    assert_eq!(record["via"], "send");
    assert_eq!(
        ran.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone(),
        vec!["shutdown", "later"]
    );

    // Everything was audited before it was sent.
    support::eventually(|| {
        api.audit_kinds()
            .iter()
            .filter(|k| *k == "command.acknowledged")
            .count()
            >= 2
    })
    .await;
    let kinds = api.audit_kinds();
    assert!(
        kinds.iter().filter(|k| *k == "command.issued").count() >= 2,
        "{kinds:?}"
    );
    // Acks are recorded in groups per delivery: this one names the client
    // and what it answered.
    let acked = api
        .audit_records()
        .into_iter()
        .find(|r| r["kind"] == "command.acknowledged" && r["details"]["command_id"] == id.as_str())
        .expect("the ack of the second command is audited");
    assert_eq!(acked["details"]["done"], json!([me]), "{acked}");
    assert!(kinds.iter().any(|k| k == "handshake.accepted"), "{kinds:?}");
    let report = vigil_audit::verify(&api.audit_path).expect("verify");
    assert!(report.is_ok(), "{report}");
    stop.cancel();
}

#[tokio::test]
async fn a_presigned_command_is_relayed_byte_for_byte() {
    let api = Api::start().await;
    // A raw TLS client sees exactly what the server sends.
    let (mut rd, mut wr) = tokio::io::split(support::raw_tls(&api.server, &api.agent).await);
    support::eventually(|| !api.server.handle.sessions().is_empty()).await;
    let body = signed(
        &api.keys.1,
        "relay-1",
        "RUN",
        Some(api.agent.fingerprint.to_hex()),
    )
    .to_string();
    let (status, answer) = http(
        api.http,
        "POST",
        "/v1/commands",
        Some(TOKEN),
        Some(body.as_bytes()),
    )
    .await;
    assert_eq!(status, 202, "{answer}");
    let mut buf = bytes::BytesMut::new();
    // Read until the cmd:exec line (heartbeats may come first).
    let line = loop {
        if let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let l = buf.split_to(pos + 1);
            if l.starts_with(b"cmd:exec:") {
                break l.to_vec();
            }
            continue;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), rd.read_buf(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        assert!(n > 0, "connection closed");
    };
    let text = String::from_utf8(line).expect("utf8");
    let payload = text
        .split_once(' ')
        .expect("payload")
        .1
        .trim_end_matches('\n');
    assert_eq!(payload, body, "relayed byte for byte");
    let _ = wr.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_the_documented_status_and_nothing_is_sent() {
    let api = Api::start().await;
    let ran = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (_client, stop) = agent(&api, ran.clone()).await;

    // Authentication.
    let (status, body) = http(api.http, "GET", "/v1/clients", None, None).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["detail"].as_str().expect("detail").contains("token"));
    let (status, _) = http(
        api.http,
        "GET",
        "/v1/clients",
        Some("wrong-token-0123456789"),
        None,
    )
    .await;
    assert_eq!(status, 401);
    let (status, body) = http(api.http, "GET", "/health", None, None).await;
    assert_eq!((status, &body["status"]), (200, &json!("ok")));
    let (status, body) = api.call("GET", "/v1/clients", None).await;
    assert_eq!(status, 200);
    assert_eq!(
        body["clients"][0]["client_id"],
        api.agent.fingerprint.to_hex().as_str()
    );

    let cases: Vec<(&str, &str, Option<&[u8]>, u16)> = vec![
        ("POST", "/send", Some(b"{not json"), 422),
        ("POST", "/send", Some(br#"{"command": 5}"#), 422),
        (
            "POST",
            "/send",
            Some(br#"{"command": "x", "surprise": 1}"#),
            422,
        ),
        ("POST", "/send", Some(br#"{"command": ""}"#), 422),
        (
            "POST",
            "/send",
            Some(br#"{"command": "x", "client_id": "nope"}"#),
            404,
        ),
        ("POST", "/send?wait=abc", Some(br#"{"command": "x"}"#), 422),
        ("POST", "/send?wait=3600", Some(br#"{"command": "x"}"#), 422),
        ("POST", "/send?wait=1e20", Some(br#"{"command": "x"}"#), 422),
        ("POST", "/v1/commands", Some(br#"{"command_id": "x"}"#), 422),
        ("GET", "/v1/commands/unknown-id", None, 404),
        ("GET", "/nowhere", None, 404),
        ("DELETE", "/send", None, 405),
    ];
    for (method, path, body, want) in cases {
        let (status, answer) = http(api.http, method, path, Some(TOKEN), body).await;
        assert_eq!(status, want, "{method} {path}: {answer}");
        assert!(
            answer["detail"].is_string(),
            "{method} {path}: JSON reason: {answer}"
        );
    }
    let other = generate_signing_key().expect("key");
    let forged = signed(&other, "forged-1", "RUN", None);
    let (status, answer) = api.call("POST", "/v1/commands", Some(forged)).await;
    assert_eq!(status, 403, "{answer}");
    let mut stale = signed(&api.keys.1, "stale-1", "RUN", None);
    stale["issued_at"] = json!("2020-01-01T00:00:00+00:00");
    let (status, _) = api.call("POST", "/v1/commands", Some(stale)).await;
    assert_eq!(status, 403);

    // Oversized body.
    let big = format!(r#"{{"command": "x", "args": "{}"}}"#, "a".repeat(70 * 1024));
    let (status, answer) = http(api.http, "POST", "/send", Some(TOKEN), Some(big.as_bytes())).await;
    assert_eq!(status, 413, "{answer}");

    // A slow client that never finishes its body.
    let mut tcp = TcpStream::connect(api.http).await.expect("connect");
    tcp.write_all(format!("POST /send HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{{\"comm").as_bytes())
        .await
        .expect("write");
    let (status, _) = read_response(&mut tcp).await;
    assert_eq!(status, 408);

    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        ran.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_empty(),
        "nothing was sent"
    );
    stop.cancel();
}

#[tokio::test]
async fn with_the_audit_log_unwritable_send_is_503_and_nothing_is_sent() {
    let api = Api::start().await;
    let ran = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (_client, stop) = agent(&api, ran.clone()).await;
    api.faults.set_sync_failing(true);
    let (status, body) = api
        .call(
            "POST",
            "/send?wait=2",
            Some(json!({"command": "must-not-run"})),
        )
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body["detail"].as_str().expect("detail").contains("audit"),
        "{body}"
    );
    // So does the relay, and the command keeps its id: it can be sent
    // again once the log is writable (below).
    let relayed = signed(&api.keys.1, "relay-during-fault", "RUN", None);
    let (status, body) = api
        .call("POST", "/v1/commands?wait=2", Some(relayed.clone()))
        .await;
    assert_eq!(status, 503, "{body}");
    // The emergency route fails closed too.
    let cmd = signed(
        &api.keys.1,
        "em-1",
        "SHUTDOWN_NOW",
        Some("vigil-server-under-test".into()),
    );
    let (status, _) = http(
        api.http,
        "POST",
        "/emergency/shutdown",
        None,
        Some(cmd.to_string().as_bytes()),
    )
    .await;
    assert_eq!(status, 503);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        ran.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_empty()
    );
    assert!(!api.server.handle.is_shutting_down(), "nothing happened");

    // Once the fault clears, the server reopens its log (at most once a
    // second) and service resumes without a restart.
    api.faults.set_sync_failing(false);
    let mut resumed = None;
    for _ in 0..50 {
        let (status, body) = api
            .call("POST", "/send?wait=5", Some(json!({"command": "after"})))
            .await;
        if status == 200 {
            resumed = Some(body);
            break;
        }
        assert_eq!(status, 503, "{body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let body = resumed.expect("service resumed after the fault cleared");
    assert_eq!(body["results"][0]["status"], "done", "{body}");
    // The relayed command refused with 503 was not spent: it goes now.
    let (status, body) = api.call("POST", "/v1/commands?wait=5", Some(relayed)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        ran.lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone(),
        vec!["after", "relayed"]
    );
    // The chain has no gap: the failed records were never acknowledged.
    let report = vigil_audit::verify(&api.audit_path).expect("verify");
    assert!(report.is_ok(), "{report}");
    stop.cancel();
}

#[tokio::test]
async fn metrics_are_prometheus_text() {
    let api = Api::start().await;
    let mut tcp = TcpStream::connect(api.http).await.expect("connect");
    tcp.write_all(format!("GET /metrics HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let (status, body) = read_response(&mut tcp).await;
    assert_eq!(status, 200);
    let text = body.as_str().expect("text");
    for name in [
        "vigil_connections ",
        "vigil_handshakes_total{result=\"ok\"}",
        "vigil_commands_total{outcome=\"sent\"}",
        "vigil_module_events_total",
        "vigil_failsafe_reports_total",
    ] {
        assert!(text.contains(name), "{name} missing from\n{text}");
    }
}

#[tokio::test]
async fn emergency_statuses_and_targets() {
    let api = Api::start().await;
    let (status, body) = http(api.http, "GET", "/emergency/test", None, None).await;
    assert_eq!(
        (status, &body["message"]),
        (200, &json!("Emergency endpoint accessible"))
    );
    let post = |b: Vec<u8>| {
        let addr = api.http;
        async move { http(addr, "POST", "/emergency/shutdown", None, Some(&b)).await }
    };
    let (status, _) = post(b"{nope".to_vec()).await;
    assert_eq!(status, 422);
    let run = signed(&api.keys.1, "em-run", "RUN", None);
    let (status, _) = post(run.to_string().into_bytes()).await;
    assert_eq!(status, 400);
    let mut no_offset = signed(&api.keys.1, "em-tz", "SHUTDOWN_NOW", None);
    no_offset["issued_at"] = json!("2026-01-01T12:00:00");
    let (status, _) = post(no_offset.to_string().into_bytes()).await;
    assert_eq!(status, 400);
    let mut old = signed(&api.keys.1, "em-old", "SHUTDOWN_NOW", None);
    old["issued_at"] = json!("2020-01-01T00:00:00Z");
    let (status, body) = post(old.to_string().into_bytes()).await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (403, Some("Command timestamp outside acceptable window"))
    );
    let mut bad_sig = signed(&api.keys.1, "em-sig", "SHUTDOWN_NOW", None);
    bad_sig["reason"] = json!("changed");
    let (status, body) = post(bad_sig.to_string().into_bytes()).await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (403, Some("Invalid signature"))
    );
    let stranger = generate_signing_key().expect("key");
    let unknown = signed(&stranger, "em-unknown", "SHUTDOWN_NOW", None);
    let (status, body) = post(unknown.to_string().into_bytes()).await;
    assert_eq!(
        (status, body["detail"].as_str()),
        (403, Some("Unauthorized public key"))
    );
    let nowhere = signed(
        &api.keys.1,
        "em-nowhere",
        "SHUTDOWN_NOW",
        Some("no-such-agent".into()),
    );
    let (status, _) = post(nowhere.to_string().into_bytes()).await;
    assert_eq!(status, 404);

    // Aimed at a connected agent: relayed to it, the server stays up.
    let ran = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (client, _stop) = agent(&api, ran).await;
    let mut events = client.subscribe();
    let to_agent = signed(
        &api.keys.1,
        "em-agent",
        "SHUTDOWN_NOW",
        Some(api.agent.fingerprint.to_hex()),
    );
    let (status, body) = post(to_agent.to_string().into_bytes()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["command_verified"], true);
    assert_eq!(body["data"]["final_message_sent"], true, "{body}");
    assert!(body["metadata"]["request_id"].is_string());
    support::next_event(&mut events, |e| {
        matches!(e, vigil_client::ClientEvent::ShutdownRequested { .. })
    })
    .await;
    assert!(!api.server.handle.is_shutting_down());
    // Replayed: refused.
    let (status, _) = post(to_agent.to_string().into_bytes()).await;
    assert_eq!(status, 409);

    // Aimed at the server itself: the server stops, after answering.
    let to_server = signed(
        &api.keys.1,
        "em-server",
        "SHUTDOWN_NOW",
        Some("vigil-server-under-test".into()),
    );
    let (status, body) = post(to_server.to_string().into_bytes()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["exit_code"], 0, "{body}");
    assert!(body["data"]["shutdown_completed"].is_string());
    assert_eq!(body["data"]["data_persisted"], true);
    tokio::time::timeout(Duration::from_secs(10), api.server.handle.stopped())
        .await
        .expect("stopped");
    // Verified attempts are recorded one by one; refused ones are counted
    // (the first of the source recorded too) in the window's summary,
    // written when the server stopped.
    let records = api.audit_records();
    let verified = records
        .iter()
        .filter(|r| r["kind"] == "emergency.attempt" && r["details"]["outcome"] == "verified")
        .count();
    let refused: u64 = records
        .iter()
        .filter(|r| r["kind"] == "refusals.summary")
        .filter_map(|r| r["details"]["by_kind"]["emergency"].as_u64())
        .sum();
    assert!(
        verified >= 2 && verified as u64 + refused >= 9,
        "every attempt accounted for: {verified} verified, {refused} refused: {:?}",
        api.audit_kinds()
    );
}

#[tokio::test]
async fn refused_targets_do_not_spend_the_command_id_and_ids_are_looked_up_decoded() {
    let api = Api::start().await;
    let ran = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (_client, stop) = agent(&api, ran.clone()).await;
    let me = api.agent.fingerprint.to_hex();

    // A target that is not connected: 404, twice (the id is not spent).
    let absent = vigil_auth::Fingerprint::from_bytes([3; 32]).to_hex();
    let cmd = signed(&api.keys.1, "ops 1", "RUN", Some(absent));
    for _ in 0..2 {
        let (status, body) = api.call("POST", "/v1/commands", Some(cmd.clone())).await;
        assert_eq!(status, 404, "{body}");
    }
    // A connected client named in uppercase is not this client's id: 404,
    // not a command the client would refuse as misdirected.
    let upper = signed(&api.keys.1, "ops 2", "RUN", Some(me.to_uppercase()));
    let (status, body) = api.call("POST", "/v1/commands", Some(upper)).await;
    assert_eq!(status, 404, "{body}");
    let em = signed(
        &api.keys.1,
        "em-upper",
        "SHUTDOWN_NOW",
        Some(me.to_uppercase()),
    );
    let (status, body) = http(
        api.http,
        "POST",
        "/emergency/shutdown",
        None,
        Some(em.to_string().as_bytes()),
    )
    .await;
    assert_eq!(status, 404, "{body}");

    // The same id, now deliverable, goes through, and its record is found
    // under its percent-encoded id.
    let ok = signed(&api.keys.1, "ops 1", "RUN", Some(me.clone()));
    let (status, body) = api.call("POST", "/v1/commands?wait=10", Some(ok)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], "done", "{body}");
    let (status, record) = api.call("GET", "/v1/commands/ops%201", None).await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(record["targets"][&me]["status"], "done");
    stop.cancel();
}

#[tokio::test]
async fn a_client_cannot_acknowledge_a_command_it_was_not_sent() {
    let api = Api::start().await;
    let ran = Arc::new(std::sync::Mutex::new(Vec::new()));
    let other = GeneratedIdentity::generate("other").expect("identity");
    // Trust a second client that will try to answer for the first.
    api.server
        .write_trust(&[api.agent.fingerprint, other.fingerprint]);
    support::eventually(|| api.server.trust.is_trusted(&other.fingerprint)).await;
    let (_client, stop) = agent(&api, ran).await;
    let (status, body) = api
        .call(
            "POST",
            "/send",
            Some(json!({"command": "slow-to-answer", "client_id": api.agent.fingerprint.to_hex()})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["command_id"].as_str().expect("id").to_owned();
    let (mut rd, mut wr) = tokio::io::split(support::raw_tls(&api.server, &other).await);
    let forged = format!(
        "cmd:ack:d1 {{\"command_id\":\"{id}\",\"status\":\"failed\",\"detail\":\"spoofed\"}}\n"
    );
    wr.write_all(forged.as_bytes()).await.expect("write");
    let mut buf = bytes::BytesMut::new();
    let answer = loop {
        let frame = support::read_frame(&mut rd, &mut buf)
            .await
            .expect("an answer");
        if frame.api() == "err" {
            break frame;
        }
    };
    assert_eq!(answer.kind(), "bad_payload");
    let (_, record) = api.call("GET", &format!("/v1/commands/{id}"), None).await;
    let other_hex = other.fingerprint.to_hex();
    assert!(record["targets"].get(&other_hex).is_none(), "{record}");
    assert_ne!(
        record["targets"][api.agent.fingerprint.to_hex()]["detail"],
        "spoofed"
    );
    stop.cancel();
}

/// Found by the `rest` fuzz target: a client that closed its side after
/// the request got no answer from a route that waits.
#[tokio::test]
async fn a_request_followed_by_a_half_close_is_answered() {
    let api = Api::start().await;
    let ran = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (_client, stop) = agent(&api, ran.clone()).await;
    let body = br#"{"command": "uptime"}"#;
    let mut tcp = TcpStream::connect(api.http).await.expect("connect");
    let req = format!(
        "POST /send?wait=0.2 HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    tcp.write_all(req.as_bytes()).await.expect("write");
    tcp.write_all(body).await.expect("write");
    tcp.shutdown().await.expect("half-close");
    let (status, answer) = read_response(&mut tcp).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["results"][0]["status"], "done", "{answer}");
    stop.cancel();
}

/// A raw-TLS connection as the trusted agent, sent one command through
/// `/send`: the halves of the connection, its read buffer, the command's
/// id and the REF it was delivered under.
async fn raw_agent_with_a_command(
    api: &Api,
) -> (
    tokio::io::ReadHalf<tokio_rustls::client::TlsStream<TcpStream>>,
    tokio::io::WriteHalf<tokio_rustls::client::TlsStream<TcpStream>>,
    bytes::BytesMut,
    String,
    String,
) {
    let (rd, wr) = tokio::io::split(support::raw_tls(&api.server, &api.agent).await);
    support::eventually(|| api.server.handle.is_connected(&api.agent.fingerprint)).await;
    let (status, body) = api
        .call(
            "POST",
            "/send",
            Some(json!({"command": "uptime", "client_id": api.agent.fingerprint.to_hex()})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["sent_to"], json!([api.agent.fingerprint.to_hex()]));
    let id = body["command_id"].as_str().expect("id").to_owned();
    let mut rd = rd;
    let mut buf = bytes::BytesMut::new();
    let exec = next_non_heartbeat(&mut rd, &mut buf).await;
    assert_eq!((exec.api(), exec.kind()), ("cmd", "exec"), "{exec}");
    assert_eq!(exec.payload()["command_id"], id.as_str(), "{exec}");
    let reference = exec.reference().to_owned();
    (rd, wr, buf, id, reference)
}

/// The next frame that is not a heartbeat (at most 10 s: heartbeats alone
/// would keep `read_frame` waiting for ever).
async fn next_non_heartbeat<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut bytes::BytesMut,
) -> vigil_proto::Frame {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let frame = support::read_frame(rd, buf).await.expect("a frame");
            if (frame.api(), frame.kind()) != ("hb", "beat") {
                return frame;
            }
        }
    })
    .await
    .expect("a frame other than a heartbeat in time")
}

#[tokio::test]
async fn a_valid_ack_gets_no_answer() {
    let api = Api::start().await;
    let (mut rd, mut wr, mut buf, id, reference) = raw_agent_with_a_command(&api).await;
    let ack = format!("cmd:ack:{reference} {{\"command_id\":\"{id}\",\"status\":\"done\"}}\n");
    wr.write_all(ack.as_bytes()).await.expect("write");
    wr.write_all(b"sys:ping:p1 {}\n").await.expect("write");
    // Frames are answered in order: anything the ack drew comes first.
    let answer = next_non_heartbeat(&mut rd, &mut buf).await;
    assert_eq!(
        (answer.api(), answer.kind(), answer.reference()),
        ("sys", "pong", "p1"),
        "{answer}"
    );
    let (status, record) = api.call("GET", &format!("/v1/commands/{id}"), None).await;
    assert_eq!(status, 200, "{record}");
    assert_eq!(
        record["targets"][api.agent.fingerprint.to_hex()]["status"],
        "done",
        "{record}"
    );
}

#[tokio::test]
async fn an_ack_under_another_ref_is_refused_and_the_slot_stays_pending() {
    let api = Api::start().await;
    let (mut rd, mut wr, mut buf, id, reference) = raw_agent_with_a_command(&api).await;
    let me = api.agent.fingerprint.to_hex();
    assert_ne!(reference, "wrong");
    let misplaced = format!("cmd:ack:wrong {{\"command_id\":\"{id}\",\"status\":\"done\"}}\n");
    wr.write_all(misplaced.as_bytes()).await.expect("write");
    let answer = next_non_heartbeat(&mut rd, &mut buf).await;
    assert_eq!(
        (answer.api(), answer.kind(), answer.reference()),
        ("err", "bad_payload", "wrong"),
        "{answer}"
    );
    let (_, record) = api.call("GET", &format!("/v1/commands/{id}"), None).await;
    assert_eq!(record["targets"][&me]["status"], "pending", "{record}");

    // Under the REF it was delivered with, the same ack counts.
    let ack = format!("cmd:ack:{reference} {{\"command_id\":\"{id}\",\"status\":\"done\"}}\n");
    wr.write_all(ack.as_bytes()).await.expect("write");
    wr.write_all(b"sys:ping:p1 {}\n").await.expect("write");
    let answer = next_non_heartbeat(&mut rd, &mut buf).await;
    assert_eq!(
        (answer.api(), answer.kind(), answer.reference()),
        ("sys", "pong", "p1"),
        "{answer}"
    );
    let (_, record) = api.call("GET", &format!("/v1/commands/{id}"), None).await;
    assert_eq!(record["targets"][&me]["status"], "done", "{record}");
}

/// A session that sends nonces gets nonce heartbeats that cover its latest
/// nonce and verify with the server's key; a malformed nonce is refused
/// with `bad_payload`; the client's reported offset is listed.
#[tokio::test]
async fn a_client_that_sends_nonces_gets_beats_covering_them() {
    use vigil_command::{NonceHeartbeat, NonceVerifier, encode_nonce};
    let api = Api::start().await;
    let (mut rd, mut wr) = tokio::io::split(support::raw_tls(&api.server, &api.agent).await);
    support::eventually(|| api.server.handle.is_connected(&api.agent.fingerprint)).await;
    let mut buf = bytes::BytesMut::new();

    wr.write_all(b"hb:nonce:n0 {\"nonce\":\"AAAA\"}\n")
        .await
        .expect("write");
    let answer = next_non_heartbeat(&mut rd, &mut buf).await;
    assert_eq!(
        (answer.api(), answer.kind(), answer.reference()),
        ("err", "bad_payload", "n0"),
        "{answer}"
    );

    let mut verifier = NonceVerifier::new(api.keys.0.verifying_key()).expect("verifier");
    let origin = std::time::Instant::now();
    let nonce = [7u8; 32];
    verifier.issue(nonce, origin.elapsed());
    let frame = format!(
        "hb:nonce:n1 {{\"nonce\":\"{}\",\"skew_ms\":1234}}\n",
        encode_nonce(&nonce)
    );
    wr.write_all(frame.as_bytes()).await.expect("write");
    let fresh = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let frame = support::read_frame(&mut rd, &mut buf).await.expect("frame");
            if (frame.api(), frame.kind()) != ("hb", "beat")
                || !frame.payload().contains_key("nonce")
            {
                continue;
            }
            let beat: NonceHeartbeat =
                serde_json::from_value(Value::Object(frame.payload().clone())).expect("beat");
            break verifier
                .verify(&beat, origin.elapsed(), SystemTime::now())
                .expect("a fresh beat");
        }
    })
    .await
    .expect("a nonce beat in time");
    assert!(fresh.skew_ms.abs() < 5_000, "{fresh:?}");

    let (status, body) = api.call("GET", "/v1/clients", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["clients"][0]["heartbeat"], "nonce", "{body}");
    assert_eq!(body["clients"][0]["clock_skew_ms"], 1234, "{body}");
    let (_, metrics) = api.call("GET", "/metrics", None).await;
    let text = metrics
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| metrics.to_string());
    assert!(
        text.contains("vigil_clients_clock_skew_max_seconds 1.234"),
        "{text}"
    );
}

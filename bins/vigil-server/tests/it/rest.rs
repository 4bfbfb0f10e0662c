//! The REST API: missing tokens, bad bodies, oversized and slow requests,
//! connection floods.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::json;
use vigil_test_support::http::{self, parse_response};
use vigil_test_support::wait::{WAIT, eventually};

use crate::support::Deployment;

/// R01: no token or a wrong one is 401 on every protected route; only
/// `/health` and the emergency routes answer without it.
#[tokio::test]
async fn r01_requests_without_the_token_are_refused() {
    let dep = Deployment::start(&[]).await;
    for (method, path) in [
        ("POST", "/send"),
        ("POST", "/v1/commands"),
        ("GET", "/v1/clients"),
        ("GET", "/v1/modules"),
        ("GET", "/v1/commands/x"),
        ("GET", "/metrics"),
    ] {
        for token in [None, Some("wrong-token"), Some("")] {
            let (status, body) = dep.http(method, path, token, Some(b"{\"command\":\"x\"}"));
            assert_eq!(status, 401, "{method} {path} {token:?}: {body}");
        }
    }
    assert_eq!(dep.http("GET", "/health", None, None).0, 200);
    assert_eq!(dep.metric("vigil_commands_total{outcome=\"sent\"}"), 0);
}

/// R02: malformed bodies, unknown fields, wrong types, an empty command
/// and bad query values are 422 (404 and 405 for routes); nothing is sent.
#[tokio::test]
async fn r02_malformed_requests_are_422_and_nothing_is_sent() {
    let dep = Deployment::start(&[]).await;
    let _client = dep.client("", &[]);
    eventually("the client connected", || {
        dep.metric("vigil_connections") == 1
    })
    .await;
    let token = Some(dep.token.as_str());
    let long_reason = format!(
        "{{\"command\": \"x\", \"reason\": \"{}\"}}",
        "r".repeat(5000)
    );
    let cases: &[(&str, &str, &[u8], u16)] = &[
        ("POST", "/send", b"{", 422),
        ("POST", "/send", b"[]", 422),
        ("POST", "/send", b"{\"command\": 1}", 422),
        ("POST", "/send", b"{\"command\": \"\"}", 422),
        // Found by schemathesis: names that are white space to one parser
        // and not to another; a reason clients would refuse as too long.
        ("POST", "/send", b"{\"command\": \"\\u0085\"}", 422),
        ("POST", "/send", b"{\"command\": \"rm -rf /\"}", 422),
        ("POST", "/send", long_reason.as_bytes(), 422),
        (
            "POST",
            "/send",
            b"{\"command\": \"x\", \"evil\": true}",
            422,
        ),
        ("POST", "/send", b"\xff\xfe", 422),
        ("POST", "/send?wait=-1", b"{\"command\": \"x\"}", 422),
        ("POST", "/send?wait=1e20", b"{\"command\": \"x\"}", 422),
        (
            "POST",
            "/send",
            b"{\"command\": \"x\", \"client_id\": \"nobody\"}",
            404,
        ),
        ("POST", "/v1/commands", b"{\"command_id\": 5}", 422),
        ("GET", "/send", b"", 405),
        ("GET", "/nowhere", b"", 404),
    ];
    for (method, path, body, want) in cases {
        let (status, answer) = dep.http(method, path, token, Some(body));
        assert_eq!(
            status,
            *want,
            "{method} {path} {:?}: {answer}",
            String::from_utf8_lossy(body)
        );
        assert!(
            answer["detail"].is_string(),
            "every error says why: {answer}"
        );
    }
    assert_eq!(dep.metric("vigil_commands_total{outcome=\"sent\"}"), 0);
    // Found by schemathesis: a 405 names the method the route takes.
    let mut tcp = TcpStream::connect(("127.0.0.1", dep.http_port)).expect("connect");
    tcp.write_all(b"DELETE /send HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut raw = String::new();
    let _ = tcp.read_to_string(&mut raw);
    assert!(raw.starts_with("HTTP/1.1 405"), "{raw}");
    assert!(
        raw.to_ascii_lowercase().contains("\r\nallow: post\r\n"),
        "{raw}"
    );
    dep.assert_serving().await;
}

/// R03: a body past 64 KiB is refused with 413 without being kept.
#[tokio::test]
async fn r03_an_oversized_body_is_413() {
    let dep = Deployment::start(&[]).await;
    let rss = dep.server.rss_kib();
    let mut body = b"{\"command\":\"x\",\"args\":\"".to_vec();
    body.extend(std::iter::repeat_n(b'a', 1 << 20));
    body.extend_from_slice(b"\"}");
    let (status, answer) = dep.http("POST", "/send", Some(&dep.token), Some(&body));
    assert_eq!(status, 413, "{answer}");
    // A length announced past the limit is refused before it is read.
    let head = format!(
        "POST /send HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nContent-Length: 1000000000\r\n\r\n",
        dep.token
    );
    assert_eq!(dep.raw_http(head.as_bytes()).0, 413);
    dep.assert_serving().await;
    dep.assert_memory_bounded(rss, 8 * 1024);
}

/// R04: a body sent a byte at a time is cut off at the read timeout
/// (408); a head that never ends closes the connection. Others are
/// served meanwhile.
#[tokio::test]
async fn r04_slow_requests_are_cut_off_at_the_read_timeout() {
    let dep = Deployment::start(&["--http-read-timeout", "1"]).await;
    let mut slow_body = TcpStream::connect(("127.0.0.1", dep.http_port)).expect("connect");
    let head = format!(
        "POST /send HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nContent-Length: 100\r\n\r\n",
        dep.token
    );
    slow_body.write_all(head.as_bytes()).expect("write");
    let mut slow_head = TcpStream::connect(("127.0.0.1", dep.http_port)).expect("connect");
    slow_head
        .write_all(b"POST /send HTTP/1.1\r\nHost: t\r\n")
        .expect("write");
    let dribble = std::thread::spawn(move || {
        let mut raw = Vec::new();
        slow_body
            .set_read_timeout(Some(Duration::from_millis(200)))
            .expect("timeout");
        for _ in 0..100 {
            if slow_body.write_all(b"{").is_err() {
                break;
            }
            let mut chunk = [0u8; 1024];
            match slow_body.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => raw.extend_from_slice(&chunk[..n]),
                Err(_) => {}
            }
        }
        raw
    });
    dep.assert_serving().await;
    let (status, answer) = parse_response(&dribble.join().expect("dribble"));
    assert_eq!(status, 408, "{answer}");
    // The head that never ends: the server closes the connection.
    slow_head.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut rest = Vec::new();
    assert!(
        slow_head.read_to_end(&mut rest).is_ok(),
        "closed by the server"
    );
}

/// R05: slow clients holding every REST connection cannot lock out the
/// emergency route: past the limit, a reserve of connections is served for
/// the emergency routes only, with a 2 s head deadline; past the reserve,
/// connections are closed at once. When they go, the API answers again.
#[tokio::test]
async fn r05_rest_connections_past_the_limit_leave_the_emergency_route_open() {
    let dep =
        Deployment::start(&["--http-max-connections", "10", "--http-read-timeout", "30"]).await;
    let _client = dep.client(
        "[commands.slow]\nprogram = \"sleep\"\nargs = [\"3\"]\n",
        &[],
    );
    eventually("the client connected", || {
        dep.metric("vigil_connections") == 1
    })
    .await;
    // Ten idle connections hold every slot: the oldest gives way to each
    // operator's request.
    let held: Vec<TcpStream> = (0..10)
        .map(|_| TcpStream::connect(("127.0.0.1", dep.http_port)).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let (status, body) = dep.http("GET", "/v1/clients", Some(&dep.token), None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(dep.http("GET", "/emergency/test", None, None).0, 200);
    assert!(dep.metric("vigil_connections_shed_total{listener=\"rest\"}") >= 1);
    drop(held);
    // Ten requests being answered (each waits for a 3 s command) hold
    // every slot, and none gives way: past the limit, operators' routes
    // answer 503, the emergency ones are served from the reserve.
    let body = json!({"command": "slow"}).to_string();
    std::thread::scope(|scope| {
        let busy: Vec<_> = (0..10)
            .map(|_| {
                scope.spawn(|| {
                    dep.http(
                        "POST",
                        "/send?wait=10",
                        Some(&dep.token),
                        Some(body.as_bytes()),
                    )
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1000));
        let (status, answer) = dep.http("GET", "/v1/clients", Some(&dep.token), None);
        assert_eq!(status, 503, "{answer}");
        assert_eq!(dep.http("GET", "/emergency/test", None, None).0, 200);
        let (status, answer) = dep.http("POST", "/emergency/shutdown", None, Some(b"{}"));
        assert_eq!(status, 422, "the emergency route is served: {answer}");
        for b in busy {
            let (status, answer) = b.join().expect("sender");
            assert_eq!(status, 200, "{answer}");
        }
    });
    eventually("the API answers again", || {
        dep.http("GET", "/v1/clients", Some(&dep.token), None).0 == 200
    })
    .await;
}

/// R06: forged, unknown-key, stale and misdirected commands posted to the
/// relay are refused by the server (403, or 404 for a target that is not
/// connected) and never reach a client.
#[tokio::test]
async fn r06_bad_signed_commands_are_refused_by_the_relay() {
    let dep = Deployment::start(&[]).await;
    let _client = dep.client("", &[]);
    eventually("the client connected", || {
        dep.metric("vigil_connections") == 1
    })
    .await;
    let operator = crate::commands::operator_key(&dep);
    let stranger = vigil_command::generate_signing_key().expect("key");
    let now = crate::commands::now();
    let token = Some(dep.token.as_str());
    let post = |cmd: serde_json::Value| {
        dep.http(
            "POST",
            "/v1/commands?wait=2",
            token,
            Some(cmd.to_string().as_bytes()),
        )
    };
    let good = |id: &str| crate::commands::signed(&operator, "wa_operator", id, "RUN", now, |_| {});
    // Forged: the signature of other bytes.
    let mut forged = serde_json::to_value(good("r06-forged")).expect("json");
    forged["reason"] = json!("not what was signed");
    assert_eq!(post(forged).0, 403);
    let unknown =
        crate::commands::signed(&stranger, "wa_operator", "r06-unknown", "RUN", now, |_| {});
    assert_eq!(post(serde_json::to_value(unknown).expect("json")).0, 403);
    let stale_at = vigil_command::Timestamp::from_system_time(
        std::time::SystemTime::now() - Duration::from_secs(600),
    )
    .expect("time");
    let stale = crate::commands::signed(
        &operator,
        "wa_operator",
        "r06-stale",
        "RUN",
        stale_at,
        |_| {},
    );
    let (status, body) = post(serde_json::to_value(stale).expect("json"));
    assert_eq!(status, 403, "{body}");
    let elsewhere =
        crate::commands::signed(&operator, "wa_operator", "r06-elsewhere", "RUN", now, |c| {
            c.target_agent_id = Some("f".repeat(64));
        });
    assert_eq!(post(serde_json::to_value(elsewhere).expect("json")).0, 404);
    assert_eq!(dep.metric("vigil_commands_total{outcome=\"sent\"}"), 0);
    // The same relay takes a good command, once.
    let ok = serde_json::to_value(good("r06-good")).expect("json");
    let (status, body) = post(ok.clone());
    assert_eq!(status, 200, "{body}");
    assert_eq!(post(ok).0, 409, "replayed");
}

/// A line a log forger would like to see: it starts as tracing's lines do.
const FORGED: &str = "\n2026-01-01T00:00:00.000000Z ERROR vigil_server::emergency: FORGED EMERGENCY SHUTDOWN accepted\r\u{1b}[2K";

/// Whether any log line starts like the forged one.
fn forged_line(lines: &[String]) -> Option<String> {
    lines
        .iter()
        .find(|l| l.starts_with("2026-01-01T00:00:00") || l.trim_start().starts_with("FORGED"))
        .cloned()
}

/// R07: attacker-chosen text with line breaks and control characters (an
/// emergency command's `reason`, a field name in a malformed body, a
/// relayed command's `reason` that the client logs) reaches the server's
/// and the client's logs escaped: no line is forged.
#[tokio::test]
async fn r07_attacker_text_cannot_forge_log_lines() {
    let dep = Deployment::start(&[]).await;
    let client = dep.client("", &[]);
    eventually("the client connected", || {
        dep.metric("vigil_connections") == 1
    })
    .await;
    let stranger = vigil_command::generate_signing_key().expect("key");
    let now = crate::commands::now();
    // A SHUTDOWN_NOW signed by a key nobody enrolled, its reason a forged
    // line: refused (403) and logged.
    let shutdown = crate::commands::signed(&stranger, "wa_x", "r07-a", "SHUTDOWN_NOW", now, |c| {
        c.command = None;
        c.reason = FORGED.to_owned();
    });
    let (status, body) = dep.emergency(&shutdown);
    assert_eq!(status, 403, "{body}");
    // A malformed body whose unknown field's name is a forged line.
    let mut malformed = serde_json::to_value(&shutdown).expect("json");
    malformed[FORGED] = json!(1);
    // From another source: the first refusal of each source per window is
    // the one logged.
    let (status, body) = dep
        .http_from(
            std::net::Ipv4Addr::new(127, 0, 0, 2),
            "POST",
            "/emergency/shutdown",
            malformed.to_string().as_bytes(),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    // A genuine command whose reason is a forged line, relayed to the
    // client, which logs the reason of what it verified.
    let operator = crate::commands::operator_key(&dep);
    let relayed = crate::commands::signed(&operator, "wa_operator", "r07-c", "RUN", now, |c| {
        c.reason = FORGED.to_owned();
    });
    let (status, body) = dep.http(
        "POST",
        "/v1/commands?wait=5",
        Some(&dep.token),
        Some(serde_json::to_string(&relayed).expect("json").as_bytes()),
    );
    assert_eq!(status, 200, "{body}");
    dep.server.wait_logged("outcome=\"malformed\"").await;
    client.wait_logged("verified command").await;
    for (who, lines) in [("server", dep.server.lines()), ("client", client.lines())] {
        assert_eq!(forged_line(&lines), None, "{who}: a log line was forged");
        assert!(
            lines
                .iter()
                .any(|l| l.contains("FORGED EMERGENCY SHUTDOWN")),
            "{who}: the text was logged (escaped)"
        );
        assert!(
            !lines
                .iter()
                .any(|l| l.contains('\u{1b}') || l.contains('\r')),
            "{who}: a control character reached the log"
        );
    }
    dep.assert_serving().await;
}

/// R08: the unsigned `relay_chain` of a genuine emergency shutdown padded
/// to the clients' limit of 64 entries, so that the server's own entry
/// would take it past the limit and the client would refuse it: the
/// server refuses it (422) before the command's id is spent, and the
/// genuine command then goes through.
#[tokio::test]
async fn r08_a_padded_relay_chain_is_refused_before_the_id_is_spent() {
    let dep = Deployment::start(&[]).await;
    let mut client = dep.client("", &[]);
    eventually("the client connected", || {
        dep.metric("vigil_connections") == 1
    })
    .await;
    let operator = crate::commands::operator_key(&dep);
    let me = dep.client_identity().fingerprint().to_hex();
    let genuine = crate::commands::signed(
        &operator,
        "wa_operator",
        "r08",
        "SHUTDOWN_NOW",
        crate::commands::now(),
        |c| {
            c.command = None;
            c.target_agent_id = Some(me.clone());
        },
    );
    let mut padded = genuine.clone();
    padded.body.relay_chain = (0..64).map(|i| format!("relay-{i}")).collect();
    let (status, body) = dep.emergency(&padded);
    assert_eq!(status, 422, "{body}");
    assert_eq!(dep.metric("vigil_commands_total{outcome=\"sent\"}"), 0);
    let (status, body) = dep.emergency(&genuine);
    assert_eq!(status, 200, "the genuine command was refused: {body}");
    assert_eq!(body["data"]["services_stopped"][0], "agents:1/1", "{body}");
    let status = client.exited().await;
    assert!(status.success(), "the client obeyed: {status:?}");
    dep.assert_serving().await;
}

/// R09: the server routes by `target_tree_path`. With one client at
/// `fleet-a/agent-1` and one at `fleet-b/agent-2`, a relayed `RUN` scoped to
/// `fleet-a` reaches only the first; an untargeted `SHUTDOWN_NOW` scoped to
/// `fleet-b` stops only the second, and the server (at the root of the
/// tree, outside `fleet-b`) stays up.
#[tokio::test]
async fn r09_scoped_commands_reach_only_their_subtree() {
    let dep = Deployment::start(&[]).await;
    let tree = |path: &[&str]| {
        let path = format!("tree_path = {path:?}\n");
        move |base: String| format!("{path}{base}")
    };
    let _a = dep.client_edited(tree(&["fleet-a", "agent-1"]), &[]);
    let b_config = dep.add_client("client-b", tree(&["fleet-b", "agent-2"]));
    let mut b = dep.client_with(&b_config, &[], "client-b");
    eventually("both clients connected", || {
        dep.metric("vigil_connections") == 2
    })
    .await;
    let a_id = dep.client_identity().fingerprint().to_hex();
    let operator = crate::commands::operator_key(&dep);
    let now = crate::commands::now();
    let run = crate::commands::signed(&operator, "wa_operator", "r09-run", "RUN", now, |c| {
        c.target_tree_path = Some(vec!["fleet-a".into()]);
    });
    let (status, body) = dep.http(
        "POST",
        "/v1/commands?wait=5",
        Some(&dep.token),
        Some(serde_json::to_string(&run).expect("json").as_bytes()),
    );
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().expect("results");
    assert_eq!(results.len(), 1, "only fleet-a was sent it: {body}");
    assert_eq!(results[0]["client"], a_id.as_str(), "{body}");

    let stop = crate::commands::signed(
        &operator,
        "wa_operator",
        "r09-stop",
        "SHUTDOWN_NOW",
        now,
        |c| {
            c.command = None;
            c.target_tree_path = Some(vec!["fleet-b".into()]);
        },
    );
    let (status, body) = dep.emergency(&stop);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["services_stopped"][0], "agents:1/1", "{body}");
    assert!(b.exited().await.success(), "fleet-b's client obeyed");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(dep.metric("vigil_connections"), 1, "fleet-a's client stays");
    dep.assert_serving().await;
}

/// Posts `n` `/send` commands for `client` from `threads` threads at once;
/// the bodies of the answers.
fn send_flood(
    dep: &Deployment,
    n: usize,
    threads: usize,
    client: &str,
) -> Vec<(u16, serde_json::Value)> {
    let body = json!({"command": "nothing", "client_id": client}).to_string();
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let body = body.clone();
                scope.spawn(move || {
                    (0..n / threads + usize::from(t < n % threads))
                        .map(|_| dep.http("POST", "/send", Some(&dep.token), Some(body.as_bytes())))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("sender"))
            .collect()
    })
}

/// R10: `/send` floods one client faster than it can answer (3,000
/// commands from 8 connections at once). Nothing is lost without the
/// server knowing: each accepted command is either queued (at most a
/// window of unanswered commands goes to the client, the rest waits at the
/// server) and then answered by the client, or refused at once as
/// `queue_full`; none stays pending, and the client drops nothing. Then,
/// in the middle of another flood, an emergency `SHUTDOWN_NOW` for that
/// client overtakes the queued commands and is obeyed.
#[tokio::test]
async fn r10_a_send_flood_is_flow_controlled_and_loses_nothing() {
    let dep = Deployment::start(&[]).await;
    let mut client = dep.client("", &[]);
    eventually("the client connected", || {
        dep.metric("vigil_connections") == 1
    })
    .await;
    let me = dep.client_identity().fingerprint().to_hex();
    // The senders block this test's thread; nothing else runs on it meanwhile.
    let answers = send_flood(&dep, 3_000, 8, &me);
    let mut queued = Vec::new();
    let mut refused_at_once = 0;
    for (status, body) in &answers {
        assert_eq!(*status, 202, "{body}");
        let id = body["command_id"].as_str().expect("command_id").to_owned();
        if body["sent_to"].as_array().is_some_and(|s| s.len() == 1) {
            queued.push(id);
        } else {
            assert_eq!(body["not_sent"][0]["status"], "queue_full", "{body}");
            refused_at_once += 1;
        }
    }
    eprintln!(
        "queued {}, refused at once as queue_full {refused_at_once}",
        queued.len()
    );
    // Every queued command reaches a final answer from the client.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    for id in &queued {
        loop {
            let (status, record) =
                dep.http("GET", &format!("/v1/commands/{id}"), Some(&dep.token), None);
            assert_eq!(status, 200, "{record}");
            let state = &record["targets"][&me]["status"];
            if state != "pending" {
                assert_eq!(state, "failed", "{id}: {record}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{id} is still pending: {record}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    assert!(!client.logged("dropped"), "the client dropped frames");

    // Another flood, and an emergency shutdown in its middle.
    let operator = crate::commands::operator_key(&dep);
    let stop = crate::commands::signed(
        &operator,
        "wa_operator",
        "r10-stop",
        "SHUTDOWN_NOW",
        crate::commands::now(),
        |c| {
            c.command = None;
            c.target_agent_id = Some(me.clone());
        },
    );
    let stop = serde_json::to_string(&stop).expect("json");
    let (status, body) = std::thread::scope(|scope| {
        let flood = scope.spawn(|| send_flood(&dep, 2_000, 6, &me));
        std::thread::sleep(Duration::from_millis(300));
        let answer = dep.http("POST", "/emergency/shutdown", None, Some(stop.as_bytes()));
        let _ = flood.join();
        answer
    });
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["services_stopped"][0], "agents:1/1", "{body}");
    assert!(client.exited().await.success(), "the client obeyed");
    dep.assert_serving().await;
}

/// R11: a stranger floods the emergency route: 2,000 refused attempts from
/// one keep-alive connection, with a 10 KB unknown field name, a 60 KB
/// `wa_public_key`, a 16 KB reason, or no JSON at all. Each is refused
/// with its CIRIS status, but the audit log grows by a small, bounded
/// amount: the first refusal of each source per window is recorded with
/// its fields cut and their lengths noted, the rest are counted, and the
/// counts are written as a `refusals.summary` record (at the latest when
/// the server stops).
#[tokio::test]
async fn r11_refused_emergency_attempts_cost_bounded_audit_space() {
    let mut dep = Deployment::start(&[]).await;
    let before = crate::support::audit_bytes(&dep);
    let junk = crate::support::emergency_junk(2_000);
    let statuses = http::post_keepalive(dep.rest_addr(), "/emergency/shutdown", &junk);
    for (i, status) in statuses.iter().enumerate() {
        assert!(matches!(status, 403 | 422), "attempt {i}: {status}");
    }
    let grown = crate::support::audit_bytes(&dep) - before;
    assert!(
        grown < 64 * 1024,
        "2,000 refused attempts grew the audit log by {grown} bytes"
    );
    dep.server.signal(rustix::process::Signal::TERM);
    let _ = dep.server.exited().await;
    let records = crate::support::audit_log(&dep);
    let refused: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["kind"] == "emergency.attempt")
        .collect();
    assert!(
        !refused.is_empty() && refused.len() < 100,
        "{} individual records",
        refused.len()
    );
    for r in &refused {
        let line = serde_json::to_string(r).expect("json");
        assert!(
            line.len() < 2048,
            "a refusal record of {} bytes",
            line.len()
        );
    }
    let summaries: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["kind"] == "refusals.summary")
        .collect();
    let counted: u64 = summaries
        .iter()
        .filter_map(|r| r["details"]["total"].as_u64())
        .sum();
    assert!(counted >= 2_000, "the summaries count {counted} refusals");
    let out = std::process::Command::new(crate::support::bin("vigilctl"))
        .args(["audit", "verify"])
        .arg(dep.path("server-data/audit.jsonl"))
        .output()
        .expect("vigilctl audit verify");
    assert!(out.status.success(), "{out:?}");
}

/// Holds `n` connections to `port` from the loopback addresses
/// 127.1.x.y, each sending half a request head and then nothing, and
/// makes each again (after `pause`) whenever the server closes it, until
/// `stop`; how many connections were made in all.
async fn slow_flood(
    port: u16,
    n: u32,
    head: &'static [u8],
    pause: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> u64 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let made = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (stop, made) = (stop.clone(), made.clone());
            tokio::spawn(async move {
                let source = std::net::Ipv4Addr::new(127, 1, (i / 250) as u8, (i % 250 + 1) as u8);
                while !stop.is_cancelled() {
                    let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
                        return;
                    };
                    let _ = socket.set_reuseaddr(true);
                    if socket
                        .bind(std::net::SocketAddr::from((source, 0)))
                        .is_err()
                    {
                        return;
                    }
                    let connected = socket
                        .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
                        .await;
                    if let Ok(mut tcp) = connected {
                        made.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let _ = tcp.write_all(head).await;
                        let mut buf = [0u8; 256];
                        tokio::select! {
                            () = stop.cancelled() => return,
                            _ = tcp.read(&mut buf) => {}
                        }
                    }
                    tokio::time::sleep(pause).await;
                }
            })
        })
        .collect();
    for t in tasks {
        let _ = t.await;
    }
    made.load(std::sync::atomic::Ordering::Relaxed)
}

/// R12: 3,000 slow connections from 3,000 loopback addresses send half a
/// request head and wait, and come back whenever they are closed, against
/// the default 1,024 REST connection slots (before the fix, 18 of 19
/// emergency probes got no answer). An operator from another address gets
/// an answer from the emergency routes every time: connections that wait
/// for a request give way, the oldest first, and an operator's request,
/// sent at once, is not waiting. The answer times are printed (the figure
/// in docs/benchmarks.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r12_slow_connections_from_many_addresses_cannot_lock_out_the_emergency_route() {
    let dep = Deployment::start(&[]).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let flood = tokio::spawn(slow_flood(
        dep.http_port,
        3_000,
        b"POST /emergency/shutdown HTTP/1.1\r\nHost: x\r\nContent-Le",
        Duration::from_millis(20),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut times = Vec::new();
    for i in 0..20 {
        let started = std::time::Instant::now();
        let answer = if i % 2 == 0 {
            dep.http_from(
                std::net::Ipv4Addr::new(127, 0, 0, 1),
                "GET",
                "/emergency/test",
                b"",
            )
            .await
        } else {
            dep.http_from(
                std::net::Ipv4Addr::new(127, 0, 0, 1),
                "POST",
                "/emergency/shutdown",
                b"{}",
            )
            .await
        };
        times.push(started.elapsed());
        assert!(
            matches!(answer.0, 200 | 422),
            "probe {i} got no answer from the emergency route: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.cancel();
    let made = flood.await.expect("flood");
    times.sort();
    eprintln!(
        "R12: {made} slow connections made; emergency answers: p50 {:?}, max {:?}",
        times[times.len() / 2],
        times[times.len() - 1]
    );
    assert!(made >= 3_000, "the flood held {made} connections");
    assert!(dep.metric("vigil_connections_shed_total{listener=\"rest\"}") > 0);
    dep.assert_serving().await;
}

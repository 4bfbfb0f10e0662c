//! The operator's side of the REST API, through `vigilctl` and the real
//! `vigil-server` and `vigil-client` binaries on loopback: sending, signing
//! offline and relaying, the listings, the emergency endpoint as a CIRIS
//! client written in Python sees it, and the audit log across a SIGKILL.

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

use common::{Server, add_to_client_toml, init, run, start_client, start_server, vigilctl};
use serde_json::{Value, json};

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `vigilctl ARGS --api URL --data-dir DIR/server-data`, for the server
/// of the init directory `dir`.
fn ctl(server: &Server, dir: &Path, args: &[&str]) -> Output {
    run(vigilctl()
        .args(args)
        .args(["--api", &server.api_url()])
        .arg("--data-dir")
        .arg(dir.join("server-data")))
}

fn client_fingerprint(dir: &Path) -> String {
    let out = run(vigilctl().arg("fingerprint").arg(dir.join("client.crt")));
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The only result of a `?wait` answer.
fn only_result(answer: &Value) -> &Value {
    let results = answer["results"].as_array().expect("results");
    assert_eq!(results.len(), 1, "{answer}");
    &results[0]
}

#[test]
fn send_sign_relay_and_the_listings_work_against_a_running_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    init(d);
    add_to_client_toml(
        d,
        "[commands.greet]\nprogram = \"echo\"\nargs = [\"hello from the client\"]\n\n\
         [commands.show_args]\nprogram = 'printf %s \"$VIGIL_ARGS\"'\nshell = true\n",
    );
    let server = start_server(d, &[]);
    let _client = start_client(d, &[]);
    let fp = client_fingerprint(d);

    // `send --wait` returns what the client's handler returned.
    let out = ctl(&server, d, &["send", "greet", "--wait", "10"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let answer = stdout_json(&out);
    let result = only_result(&answer);
    assert_eq!(result["status"], "done", "{answer}");
    assert_eq!(result["result"], "hello from the client");
    assert_eq!(result["client"], fp.as_str());
    let sent_id = answer["command_id"]
        .as_str()
        .expect("command_id")
        .to_owned();

    // Args reach the program as JSON; --client picks the client.
    let out = ctl(
        &server,
        d,
        &[
            "send",
            "show_args",
            "--args",
            r#"{"path": "/var/log", "n": [1, 2.5, "é"]}"#,
            "--client",
            &fp,
            "--wait",
            "10",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let answer = stdout_json(&out);
    assert_eq!(
        only_result(&answer)["result"],
        json!({"path": "/var/log", "n": [1, 2.5, "é"]})
    );

    // Without --wait: 202 and where it went.
    let out = ctl(&server, d, &["send", "greet"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let answer = stdout_json(&out);
    assert_eq!(answer["status"], "sent");
    assert_eq!(answer["sent_to"], json!([fp]));

    // A command the client has no program for: it answers `failed`, and
    // `send --wait` exits 1 saying so.
    let out = ctl(&server, d, &["send", "nope", "--wait", "10"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("failed"), "{}", stderr(&out));

    // A wrong token: exit 1 with the server's 401 detail.
    let out = run(vigilctl()
        .args([
            "clients",
            "--api",
            &server.api_url(),
            "--token",
            "not-the-token",
        ])
        .env("VIGIL_API_TOKEN", "also-wrong"));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("401") && err.contains("missing or wrong bearer token"),
        "{err}"
    );
    // No token anywhere: exit 1, saying where it looked, before any request.
    let out = run(vigilctl()
        .current_dir(d)
        .args(["send", "greet", "--api", &server.api_url()]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    for needle in [
        "no API token",
        "--token-file",
        "VIGIL_API_TOKEN",
        "vigil-data/api-token",
        "server-data",
    ] {
        assert!(err.contains(needle), "{needle:?} not in {err}");
    }
    // The environment works as well as the flags, and flags win over it.
    let token = std::fs::read_to_string(d.join("server-data/api-token")).expect("token");
    let out = run(vigilctl()
        .arg("clients")
        .env("VIGIL_API", server.api_url())
        .env("VIGIL_API_TOKEN", token.trim()));
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(vigilctl()
        .args(["clients", "--token-file"])
        .arg(d.join("server-data/api-token"))
        .env("VIGIL_API", "http://127.0.0.1:9")
        .args(["--api", &server.api_url()])
        .env("VIGIL_API_TOKEN", "wrong"));
    assert!(out.status.success(), "{}", stderr(&out));

    // Unknown client: the server's 404 detail.
    let out = ctl(&server, d, &["send", "greet", "--client", &"ab".repeat(32)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no connected agent"),
        "{}",
        stderr(&out)
    );

    // Offline signing with the operator key, then relay: the client runs it.
    let out = run(vigilctl()
        .arg("sign")
        .arg("--key")
        .arg(d.join("operator.key"))
        .args(["--wa-id", "wa_operator", "--command", "show_args"])
        .args(["--args", r#"{"relayed": true}"#, "--reason", "relay test"]));
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        out.stdout.iter().filter(|&&b| b == b'\n').count(),
        1,
        "one line"
    );
    let signed = stdout_json(&out);
    let signed_id = signed["command_id"].as_str().expect("id").to_owned();
    std::fs::write(d.join("cmd.json"), &out.stdout).expect("write");
    let out = ctl(
        &server,
        d,
        &[
            "relay",
            d.join("cmd.json").to_str().expect("utf8"),
            "--wait",
            "10",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let answer = stdout_json(&out);
    assert_eq!(answer["command_id"], signed_id.as_str());
    let result = only_result(&answer);
    assert_eq!(result["status"], "done", "{answer}");
    assert_eq!(result["result"], json!({"relayed": true}));
    // The same command again is a replay: 409.
    let out = ctl(
        &server,
        d,
        &["relay", d.join("cmd.json").to_str().expect("utf8")],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("409") && stderr(&out).contains("already accepted"),
        "{}",
        stderr(&out)
    );
    // From standard input, signed from an unsigned command file.
    let unsigned = json!({"command_type": "RUN", "wa_id": "wa_operator", "reason": "from a file",
                          "command": "greet", "target_agent_id": fp});
    let mut child = vigilctl()
        .arg("sign")
        .arg("--key")
        .arg(d.join("operator.key"))
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(unsigned.to_string().as_bytes())
        .expect("write");
    let signed = child.wait_with_output().expect("sign");
    assert!(signed.status.success());
    let mut relay = vigilctl();
    relay
        .args([
            "relay",
            "-",
            "--wait",
            "10",
            "--api",
            &server.api_url(),
            "--data-dir",
        ])
        .arg(d.join("server-data"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped());
    let mut child = relay.spawn().expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&signed.stdout)
        .expect("write");
    let out = child.wait_with_output().expect("relay");
    assert!(out.status.success());
    assert_eq!(
        only_result(&stdout_json(&out))["result"],
        "hello from the client"
    );

    // A forged command (args changed after signing) is refused: 403.
    let mut forged: Value =
        serde_json::from_slice(&std::fs::read(d.join("cmd.json")).expect("read")).expect("json");
    forged["args"] = json!({"relayed": "forged"});
    forged["command_id"] = json!("cmd_forged");
    std::fs::write(d.join("forged.json"), forged.to_string()).expect("write");
    let out = ctl(
        &server,
        d,
        &["relay", d.join("forged.json").to_str().expect("utf8")],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("403"), "{}", stderr(&out));

    // The listings.
    let out = ctl(&server, d, &["clients"]);
    assert!(out.status.success());
    let clients = stdout_json(&out);
    assert_eq!(clients["clients"][0]["client_id"], fp.as_str(), "{clients}");
    let out = ctl(&server, d, &["modules"]);
    assert!(out.status.success());
    assert_eq!(stdout_json(&out), json!({"modules": []}));
    let out = ctl(&server, d, &["command", &sent_id]);
    assert!(out.status.success());
    let record = stdout_json(&out);
    assert_eq!(record["via"], "send");
    assert_eq!(record["targets"][fp.as_str()]["status"], "done", "{record}");
    let out = ctl(&server, d, &["command", &signed_id]);
    assert_eq!(stdout_json(&out)["via"], "relay");
    let out = ctl(&server, d, &["command", "cmd_never_sent"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("404"), "{}", stderr(&out));

    // Everything above is in an intact audit log.
    let out = run(vigilctl()
        .args(["audit", "verify"])
        .arg(d.join("server-data/audit.jsonl")));
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Reads frames from a raw mTLS connection made with the init client's
/// identity, and returns the payload of the first `cmd:exec` frame, as
/// bytes, after acknowledging it.
struct RawClient {
    reader: BufReader<
        tokio_rustls::rustls::StreamOwned<
            tokio_rustls::rustls::ClientConnection,
            std::net::TcpStream,
        >,
    >,
}

impl RawClient {
    fn connect(dir: &Path, server_addr: std::net::SocketAddr) -> RawClient {
        use tokio_rustls::rustls;
        let identity = vigil_auth::Identity::load(&dir.join("client.crt"), &dir.join("client.key"))
            .expect("client identity");
        let server = vigil_auth::Identity::load(&dir.join("server.crt"), &dir.join("server.key"))
            .expect("server identity")
            .fingerprint();
        let config = vigil_auth::client_config(&identity, server).expect("config");
        let name = rustls::pki_types::ServerName::try_from("vigil-server").expect("name");
        let conn = rustls::ClientConnection::new(config, name).expect("tls");
        let tcp = std::net::TcpStream::connect(server_addr).expect("connect");
        // A guard against hanging forever, not a timing check.
        tcp.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut client = RawClient {
            reader: BufReader::new(rustls::StreamOwned::new(conn, tcp)),
        };
        client.send("sys:ping:p1 {}\n");
        let pong = client.next_frame(|l| l.starts_with("sys:pong:p1"));
        assert!(pong.starts_with(b"sys:pong:p1"));
        client
    }

    fn send(&mut self, frame: &str) {
        let stream = self.reader.get_mut();
        stream.write_all(frame.as_bytes()).expect("write");
        stream.flush().expect("flush");
    }

    /// The next line (without its newline) that `pick` accepts.
    fn next_frame(&mut self, pick: impl Fn(&str) -> bool) -> Vec<u8> {
        loop {
            let mut line = Vec::new();
            let n = self.reader.read_until(b'\n', &mut line).expect("read");
            assert!(n > 0, "the server closed the connection");
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            if pick(&String::from_utf8_lossy(&line)) {
                return line;
            }
        }
    }
}

#[test]
fn a_relayed_command_reaches_the_client_byte_for_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    init(d);
    let server = start_server(d, &[]);
    let mut raw = RawClient::connect(d, server.addr);

    let sign = || {
        let out = run(vigilctl()
            .arg("sign")
            .arg("--key")
            .arg(d.join("operator.key"))
            .args(["--wa-id", "wa_operator", "--command", "anything"])
            .args(["--args", r#"{"path": "/tmp/x", "\u00e9": [1, 2.50, 1e3]}"#]));
        assert!(out.status.success());
        String::from_utf8(out.stdout)
            .expect("utf8")
            .trim()
            .to_owned()
    };
    // As `vigilctl sign` wrote it, and a second command written the way
    // Python's json.dumps(sort_keys=True) would: other order, other
    // spacing. The signature does not cover formatting, so both are valid,
    // and the server must relay each as it came, not re-encode it.
    let python_style = {
        let map: serde_json::Map<String, Value> = serde_json::from_str(&sign()).expect("json");
        let members: Vec<String> = map
            .iter()
            .map(|(k, v)| format!("{}: {}", Value::String(k.clone()), v))
            .collect();
        format!("{{{}}}", members.join(", "))
    };
    for (name, body) in [("as signed", sign()), ("python style", python_style)] {
        let file = d.join(format!("{}.json", name.replace(' ', "_")));
        std::fs::write(&file, format!("{body}\n")).expect("write");
        let out = run(vigilctl()
            .arg("relay")
            .arg(&file)
            .args(["--api", &server.api_url(), "--data-dir"])
            .arg(d.join("server-data")));
        assert!(out.status.success(), "{name}: {}", stderr(&out));
        let frame = raw.next_frame(|l| l.starts_with("cmd:exec:"));
        let space = frame.iter().position(|&b| b == b' ').expect("space");
        let (header, payload) = (&frame[..space], &frame[space + 1..]);
        assert_eq!(
            String::from_utf8_lossy(payload),
            body,
            "{name}: the relayed payload differs from the posted body"
        );
        let reference = String::from_utf8_lossy(&header["cmd:exec:".len()..]).into_owned();
        let id = serde_json::from_str::<Value>(&body).expect("json")["command_id"].clone();
        raw.send(&format!(
            "cmd:ack:{reference} {}\n",
            json!({"command_id": id, "status": "done", "result": "seen"})
        ));
    }
}

fn python_with_cryptography() -> bool {
    Command::new("python3")
        .args([
            "-c",
            "import cryptography.hazmat.primitives.asymmetric.ed25519",
        ])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs the CIRIS client script for one case; returns its answers.
fn ciris(server: &Server, key_file: &Path, case: &str, target: Option<&str>) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/ciris_client.py");
    let mut cmd = Command::new("python3");
    cmd.arg(script)
        .arg(server.api_url())
        .arg(key_file)
        .arg("wa_authority_001")
        .arg(case);
    if let Some(t) = target {
        cmd.args(["--target", t]);
    }
    let out = run(&mut cmd);
    assert!(out.status.success(), "{case}: {}", stderr(&out));
    let v = stdout_json(&out);
    v["answers"].as_array().expect("answers").clone()
}

fn one(answers: &[Value]) -> (u64, &Value) {
    assert_eq!(answers.len(), 1, "{answers:?}");
    (
        answers[0]["status"].as_u64().expect("status"),
        &answers[0]["body"],
    )
}

fn assert_ciris_success(body: &Value) {
    for field in [
        "command_received",
        "command_verified",
        "verification_error",
        "shutdown_initiated",
        "services_stopped",
        "data_persisted",
        "final_message_sent",
        "shutdown_completed",
        "exit_code",
    ] {
        assert!(body["data"].get(field).is_some(), "data.{field}: {body}");
    }
    assert_eq!(body["data"]["command_verified"], true);
    assert_eq!(body["data"]["verification_error"], Value::Null);
    assert!(body["metadata"]["timestamp"].is_string(), "{body}");
    assert!(body["metadata"]["request_id"].is_string(), "{body}");
}

#[test]
fn a_ciris_client_in_python_gets_every_status_of_the_table() {
    if !python_with_cryptography() {
        eprintln!(
            "NOT RUN: python3 with the `cryptography` package is needed for the CIRIS \
             client (python3 -m pip install cryptography)"
        );
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    init(d);
    // A CIRIS authority key, enrolled for SHUTDOWN_NOW with the server (which
    // obeys it) and the client (which verifies it again when relayed).
    let key = vigil_command::generate_signing_key().expect("key");
    let key_file = d.join("ciris.key");
    std::fs::write(
        &key_file,
        format!("{}\n", vigil_command::encode_signing_key(&key)),
    )
    .expect("write");
    let path = d.join("authorities.json");
    let mut authorities: Value =
        serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
    authorities["authorities"]
        .as_array_mut()
        .expect("list")
        .push(json!({
            "id": "wa_authority_001",
            "public_key": vigil_command::encode_public_key(&key.verifying_key()),
            "commands": ["SHUTDOWN_NOW"],
        }));
    std::fs::write(&path, authorities.to_string()).expect("write");
    let agent = "ciris-agent-7";
    let mut server = start_server(
        d,
        &[
            "--authorities",
            path.to_str().expect("utf8"),
            "--agent-id",
            agent,
        ],
    );
    let mut client = start_client(d, &[]);
    let fp = client_fingerprint(d);

    // GET /emergency/test, with the document's fields.
    let answers = ciris(&server, &key_file, "test", None);
    let (status, body) = one(&answers);
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    assert_eq!(body["message"], "Emergency endpoint accessible");
    assert_eq!(body["crypto_available"], true);
    assert!(body["timestamp"].is_string());

    // Each refusal, aimed at the server itself: had any been accepted, the
    // server would have stopped and the next case would fail to connect.
    for (case, want, detail) in [
        ("malformed", 422, None),
        ("missing_fields", 422, None),
        ("unknown_field", 422, None),
        ("bad_value", 422, None),
        ("wrong_type", 400, None),
        ("naive_time", 400, None),
        (
            "stale",
            403,
            Some("Command timestamp outside acceptable window"),
        ),
        (
            "future",
            403,
            Some("Command timestamp outside acceptable window"),
        ),
        ("bad_signature", 403, Some("Invalid signature")),
        ("bad_signature_unknown_key", 403, Some("Invalid signature")),
        ("unknown_key", 403, Some("Unauthorized public key")),
    ] {
        let answers = ciris(&server, &key_file, case, Some(agent));
        let (status, body) = one(&answers);
        assert_eq!(status, want, "{case}: {body}");
        assert!(body["detail"].is_string(), "{case}: {body}");
        if let Some(detail) = detail {
            assert_eq!(body["detail"], detail, "{case}");
        }
    }
    // A target that is neither the server nor a connected client.
    let answers = ciris(&server, &key_file, "valid", Some("nobody"));
    assert_eq!(one(&answers).0, 404);

    // Aimed at the connected client: 200, relayed to it (it verifies it
    // again, runs its break commands and exits), the server stays up. The
    // same command again is a replay: 409.
    let answers = ciris(&server, &key_file, "replay", Some(&fp));
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0]["status"], 200, "{answers:?}");
    let body = &answers[0]["body"];
    assert_ciris_success(body);
    assert_eq!(body["data"]["final_message_sent"], true, "{body}");
    assert_eq!(body["data"]["services_stopped"], json!(["agents:1/1"]));
    assert_eq!(answers[1]["status"], 409, "{answers:?}");
    let status = client.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "client exit: {status}");

    // Aimed at the server's own agent id (issued_at written with a "Z"):
    // 200 once it has stopped, and it exits cleanly.
    let answers = ciris(&server, &key_file, "valid_z", Some(agent));
    let (status, body) = one(&answers);
    assert_eq!(status, 200, "{body}");
    assert_ciris_success(body);
    assert_eq!(body["data"]["exit_code"], 0, "{body}");
    assert!(body["data"]["shutdown_completed"].is_string(), "{body}");
    let status = server.proc.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "server exit: {status}");

    // Every attempt is accounted for in an intact audit log: each verified
    // one by its own record, the refused ones in the summary written when
    // the server stopped (which says how many of them were also recorded
    // one by one).
    let log = d.join("server-data/audit.jsonl");
    let out = run(vigilctl().args(["audit", "verify"]).arg(&log));
    assert!(out.status.success(), "{}", stderr(&out));
    let records: Vec<Value> = std::fs::read_to_string(&log)
        .expect("read")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let attempts = records
        .iter()
        .filter(|r| r["kind"] == "emergency.attempt")
        .count() as u64;
    let summaries: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "refusals.summary")
        .map(|r| &r["details"])
        .collect();
    let refused: u64 = summaries
        .iter()
        .filter_map(|s| s["by_kind"]["emergency"].as_u64())
        .sum();
    let also_recorded: u64 = summaries
        .iter()
        .filter_map(|s| s["recorded_one_by_one"].as_u64())
        .sum();
    assert_eq!(
        attempts - also_recorded + refused,
        11 + 1 + 2 + 1,
        "every POST accounted for: {attempts} records, {summaries:?}"
    );
}

/// `command.issued` ids in an audit log.
fn issued_ids(log: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(log)
        .expect("read log")
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["kind"] == "command.issued")
        .filter_map(|r| r["details"]["command_id"].as_str().map(str::to_owned))
        .collect()
}

/// Reliability case F10 (server SIGKILL during a burst), see
/// docs/reliability.md.
#[test]
fn the_audit_log_survives_sigkill_during_a_burst_of_sends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    init(d);
    let mut server = start_server(d, &[]);
    let _client = start_client(d, &[]);
    let token = std::fs::read_to_string(d.join("server-data/api-token")).expect("token");
    let token = token.trim().to_owned();
    let url = format!("{}/send", server.api_url());

    const THREADS: usize = 8;
    const KILL_AFTER: usize = 150;
    let acked = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for t in 0..THREADS {
        let (acked, killed, url, token) =
            (acked.clone(), killed.clone(), url.clone(), token.clone());
        threads.push(std::thread::spawn(move || {
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(Duration::from_secs(30)))
                .build()
                .into();
            // (got 2xx, command_id) per request.
            let mut outcomes: Vec<(bool, Option<String>)> = Vec::new();
            // Send until a request fails after the kill (or a guard count).
            for i in 0..5000 {
                let body = json!({"command": "burst", "args": {"thread": t, "i": i}});
                let answer = agent
                    .post(&url)
                    .header("Authorization", format!("Bearer {token}"))
                    .send(body.to_string().as_bytes())
                    .ok()
                    .and_then(|mut r| {
                        let status = r.status().as_u16();
                        let text = r.body_mut().read_to_string().ok()?;
                        Some((status, text))
                    });
                let ok = match &answer {
                    Some((s, text)) if (200..300).contains(s) => {
                        let v: Value = serde_json::from_str(text).expect("json");
                        outcomes.push((true, v["command_id"].as_str().map(str::to_owned)));
                        acked.fetch_add(1, Ordering::SeqCst);
                        true
                    }
                    _ => {
                        outcomes.push((false, None));
                        false
                    }
                };
                if !ok && killed.load(Ordering::SeqCst) {
                    break;
                }
            }
            outcomes
        }));
    }
    // SIGKILL once enough sends were acknowledged: requests are in flight.
    while acked.load(Ordering::SeqCst) < KILL_AFTER {
        std::thread::sleep(Duration::from_millis(1));
    }
    server.proc.child.kill().expect("SIGKILL");
    killed.store(true, Ordering::SeqCst);
    let _ = server.proc.child.wait();
    let outcomes: Vec<(bool, Option<String>)> = threads
        .into_iter()
        .flat_map(|t| t.join().expect("thread"))
        .collect();
    let acknowledged: Vec<String> = outcomes
        .iter()
        .filter(|(ok, _)| *ok)
        .map(|(_, id)| id.clone().expect("a 2xx answer names its command_id"))
        .collect();
    let failed = outcomes.iter().filter(|(ok, _)| !ok).count();
    eprintln!(
        "burst: {} requests, {} acknowledged (2xx), {failed} failed",
        outcomes.len(),
        acknowledged.len()
    );
    assert!(acknowledged.len() >= KILL_AFTER);
    assert!(failed >= THREADS, "every thread saw the server go");

    // The log is an intact chain, and holds every acknowledged command.
    let log = d.join("server-data/audit.jsonl");
    let out = run(vigilctl().args(["audit", "verify"]).arg(&log));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok,"));
    let issued = issued_ids(&log);
    for id in &acknowledged {
        assert!(issued.contains(id), "{id} got a 2xx but is not in the log");
    }

    // The server reopens the log after the crash and continues the chain.
    let restarted = start_server(d, &[]);
    drop(restarted);
    let out = run(vigilctl().args(["audit", "verify"]).arg(&log));
    assert!(out.status.success(), "{}", stderr(&out));

    // One byte changed inside one record's details: verify fails at that
    // record's line.
    let text = std::fs::read_to_string(&log).expect("read");
    let lines: Vec<&str> = text.lines().collect();
    let target_id = &acknowledged[acknowledged.len() / 2];
    let (index, line) = lines
        .iter()
        .enumerate()
        .find(|(_, l)| l.contains(r#""kind":"command.issued""#) && l.contains(target_id.as_str()))
        .expect("the record");
    let line_no = index + 1;
    let at = line.find(target_id.as_str()).expect("id") + target_id.len() - 1;
    let mut bytes = text.clone().into_bytes();
    let offset = lines[..index].iter().map(|l| l.len() + 1).sum::<usize>() + at;
    bytes[offset] = if bytes[offset] == b'0' { b'1' } else { b'0' };
    let flipped = d.join("flipped.jsonl");
    std::fs::write(&flipped, &bytes).expect("write");
    let out = run(vigilctl().args(["audit", "verify"]).arg(&flipped));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("line {line_no} (seq {line_no}")) && err.contains("hash mismatch"),
        "{err}"
    );

    // A record removed: verify names the line where it is missing.
    let mut removed: Vec<&str> = lines.clone();
    removed.remove(index);
    let cut = d.join("removed.jsonl");
    std::fs::write(&cut, format!("{}\n", removed.join("\n"))).expect("write");
    let out = run(vigilctl().args(["audit", "verify"]).arg(&cut));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("line {line_no} ")) && err.contains("seq gap"),
        "{err}"
    );
}

#[test]
fn keygen_and_sign_work_offline_and_verify_with_the_library() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let key = d.join("ops.key");
    let out = run(vigilctl().args(["keygen", "--out"]).arg(&key).args([
        "--id",
        "wa_ops",
        "--commands",
        "RUN,SHUTDOWN_NOW",
    ]));
    assert!(out.status.success(), "{}", stderr(&out));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&key).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // The last line is the authorities entry: it parses as one.
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let entry = text.lines().last().expect("entry");
    let authorities =
        vigil_command::Authorities::from_json(format!("{{\"authorities\": [{entry}]}}").as_bytes())
            .expect("a valid authorities file");
    let seed = std::fs::read_to_string(&key).expect("key");
    let signing = vigil_command::decode_signing_key(seed.trim()).expect("seed");
    assert!(authorities.get(&signing.verifying_key()).is_some());
    assert!(text.contains(&vigil_command::encode_public_key(&signing.verifying_key())));

    // No overwrite without --force; with it, a new key.
    let out = run(vigilctl().args(["keygen", "--out"]).arg(&key));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--force"));
    assert_eq!(std::fs::read_to_string(&key).expect("key"), seed);
    let out = run(vigilctl().args(["keygen", "--force", "--out"]).arg(&key));
    assert!(out.status.success());
    assert_ne!(std::fs::read_to_string(&key).expect("key"), seed);
    let signing =
        vigil_command::decode_signing_key(std::fs::read_to_string(&key).expect("key").trim())
            .expect("seed");
    let authorities = vigil_command::Authorities::from_keys([vigil_command::AuthorityKey::new(
        Some("wa_ops".into()),
        signing.verifying_key(),
        ["RUN", "SHUTDOWN_NOW"],
    )
    .expect("key")])
    .expect("authorities");
    let verifier = vigil_command::Verifier::new(authorities)
        .with_supported_types(["RUN", "SHUTDOWN_NOW"])
        .with_own_agent_id("agent-1")
        .with_own_tree_path(vec!["root".into(), "agent-1".into()]);

    // Signed from flags: verifies, with every field as given. The API
    // address points nowhere: signing never touches the network.
    let out = run(vigilctl()
        .args(["sign", "--key"])
        .arg(&key)
        .args([
            "--wa-id",
            "wa_ops",
            "--type",
            "SHUTDOWN_NOW",
            "--target",
            "agent-1",
        ])
        .args([
            "--reason",
            "maintenance \u{e9}\u{1f600}",
            "--expires-in",
            "120",
        ])
        .args(["--command-id", "cmd_given"])
        .env("VIGIL_API", "http://127.0.0.1:9"));
    assert!(out.status.success(), "{}", stderr(&out));
    let cmd = vigil_command::SignedCommand::from_json(&out.stdout).expect("command");
    assert_eq!(cmd.body.command_id, "cmd_given");
    assert_eq!(cmd.body.command_type, "SHUTDOWN_NOW");
    assert_eq!(cmd.body.reason, "maintenance \u{e9}\u{1f600}");
    assert!(cmd.body.expires_at.is_some());
    verifier.verify(&cmd, SystemTime::now()).expect("verifies");

    // Signed from an unsigned command file with every field.
    let unsigned = json!({
        "command_id": "cmd_file", "command_type": "RUN", "wa_id": "wa_ops",
        "issued_at": vigil_command::Timestamp::from_system_time(SystemTime::now()).expect("now").isoformat(),
        "reason": "from a file", "target_agent_id": "agent-1",
        "target_tree_path": ["root", "agent-1"], "parent_command_id": "cmd_parent",
        "relay_chain": ["relay-1"], "command": "logrotate", "args": {"force": true, "n": 1.5},
    });
    std::fs::write(d.join("unsigned.json"), unsigned.to_string()).expect("write");
    let out = run(vigilctl()
        .args(["sign", "--key"])
        .arg(&key)
        .arg(d.join("unsigned.json")));
    assert!(out.status.success(), "{}", stderr(&out));
    let cmd = vigil_command::SignedCommand::from_json(&out.stdout).expect("command");
    assert_eq!(
        cmd.body.target_tree_path,
        Some(vec!["root".into(), "agent-1".into()])
    );
    assert_eq!(cmd.body.args, Some(json!({"force": true, "n": 1.5})));
    verifier.verify(&cmd, SystemTime::now()).expect("verifies");

    // What a receiver would refuse anyway is refused before signing.
    for (args, needle) in [
        (vec!["--wa-id", "wa_ops"], "needs a command name"),
        (vec!["--command", "x"], "--wa-id is required"),
        (
            vec!["--wa-id", "wa_ops", "--command", "x", "--args", "{nope"],
            "--args is not JSON",
        ),
    ] {
        let out = run(vigilctl().args(["sign", "--key"]).arg(&key).args(&args));
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(stderr(&out).contains(needle), "{args:?}: {}", stderr(&out));
    }
    // A signed file is not signed again; flags and a file do not mix.
    std::fs::write(d.join("signed.json"), out_of_sign(&key, d)).expect("write");
    let out = run(vigilctl()
        .args(["sign", "--key"])
        .arg(&key)
        .arg(d.join("signed.json")));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("already signed"), "{}", stderr(&out));
    let out = run(vigilctl()
        .args(["sign", "--key"])
        .arg(&key)
        .arg(d.join("unsigned.json"))
        .args(["--wa-id", "x"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not both"));
    // A key file that is not a key.
    let out = run(vigilctl()
        .args(["sign", "--key"])
        .arg(d.join("unsigned.json"))
        .args(["--wa-id", "x", "--command", "y"]));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("32-byte Ed25519 seed"),
        "{}",
        stderr(&out)
    );
}

fn out_of_sign(key: &Path, d: &Path) -> Vec<u8> {
    let out = run(vigilctl()
        .args(["sign", "--key"])
        .arg(key)
        .arg(d.join("unsigned.json")));
    assert!(out.status.success());
    out.stdout
}

//! vigil servers in a cluster over NATS: three real `nats-server` nodes
//! (Debian's package, installed by the test when missing and it runs as
//! root; otherwise it fails saying what to install) with TLS on loopback,
//! and three real `vigil-server` processes, each with its own identity,
//! authority key and audit log, joined with `--cluster`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{START, Server, bin, init};
use serde_json::{Value, json};
use vigil_cluster::local::LocalNats;
use vigil_test_support::process::Proc;
use vigil_test_support::server::point_client_config;

const LABELS: [&str; 3] = ["s1", "s2", "s3"];

/// NATS and the vigil servers of one test; everything is killed on drop.
struct Fleet {
    _root: tempfile::TempDir,
    nats: LocalNats,
    /// The init directory of each server (its client's too).
    dirs: Vec<PathBuf>,
    servers: Vec<Server>,
}

fn fingerprint_in(toml: &Path, key: &str) -> String {
    let text = std::fs::read_to_string(toml).expect("read");
    text.lines()
        .find_map(|l| {
            l.strip_prefix(key)?
                .trim()
                .strip_prefix("= ")?
                .trim_matches('"')
                .into()
        })
        .map(str::to_owned)
        .unwrap_or_else(|| panic!("no {key} in {}", toml.display()))
}

/// Every server signs as `vigil-s<i>`, and every server and client
/// trusts every server's authority key for RUN, and s1's operator key
/// (`wa_operator`) for RUN and SHUTDOWN_NOW: a command signed anywhere
/// in the cluster is good everywhere. Each client also gets a `slow`
/// command (five seconds before it answers).
fn share_authorities(dirs: &[PathBuf]) {
    let mut authorities = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let own: Value = serde_json::from_str(
            &std::fs::read_to_string(d.join("authorities.json")).expect("authorities"),
        )
        .expect("json");
        for a in own["authorities"].as_array().expect("list") {
            if a["id"] == "vigil-server" {
                authorities.push(json!({"id": format!("vigil-s{}", i + 1), "public_key": a["public_key"], "commands": ["RUN"]}));
            } else if i == 0 {
                authorities.push(a.clone());
            }
        }
    }
    let all = json!({ "authorities": authorities }).to_string();
    for (i, d) in dirs.iter().enumerate() {
        std::fs::write(d.join("authorities.json"), &all).expect("write");
        let toml = d.join("server.toml");
        let text = std::fs::read_to_string(&toml).expect("read");
        std::fs::write(
            &toml,
            format!("{text}authority_id = \"vigil-s{}\"\n", i + 1),
        )
        .expect("write");
        let client = d.join("client.toml");
        let text = std::fs::read_to_string(&client).expect("read");
        std::fs::write(
            &client,
            format!("{text}\n[commands.slow]\nprogram = \"sleep\"\nargs = [\"5\"]\n"),
        )
        .expect("write");
    }
}

impl Fleet {
    /// `n` servers (at most 3) in one cluster over a 3-node NATS; every
    /// server trusts every server's client, and each server's
    /// `client.toml` points at it. Returns once every server's link is
    /// ready.
    fn start(n: usize) -> Fleet {
        let program = common::debian_program("nats-server", "nats-server");
        let root = tempfile::tempdir().expect("tempdir");
        let dirs: Vec<PathBuf> = (1..=n).map(|i| root.path().join(format!("s{i}"))).collect();
        for d in &dirs {
            init(d);
        }
        // Every server trusts every client: a client may fail over.
        let clients: Vec<String> = dirs
            .iter()
            .map(|d| {
                let out = common::run(
                    Command::new(bin("vigilctl"))
                        .arg("fingerprint")
                        .arg(d.join("client.crt")),
                );
                String::from_utf8(out.stdout)
                    .expect("utf8")
                    .trim()
                    .to_owned()
            })
            .collect();
        for d in &dirs {
            let trust = json!({ "trusted_fingerprints": clients });
            std::fs::write(d.join("trusted-keys.json"), trust.to_string()).expect("trust");
        }
        share_authorities(&dirs);
        let certs: Vec<String> = dirs
            .iter()
            .map(|d| std::fs::read_to_string(d.join("server.crt")).expect("cert"))
            .collect();
        let nats_dir = root.path().join("nats");
        std::fs::create_dir(&nats_dir).expect("mkdir");
        let nats = LocalNats::start(&program, &nats_dir, 3, &certs).expect("nats cluster");
        let mut fleet = Fleet {
            _root: root,
            nats,
            dirs,
            servers: Vec::new(),
        };
        for i in 0..n {
            let server = fleet.start_server(i);
            fleet.servers.push(server);
        }
        for i in 0..n {
            fleet.wait_ready(i);
        }
        fleet
    }

    fn cluster_flags(&self) -> Vec<String> {
        let pins: Vec<String> = self.nats.pins().iter().map(|p| p.to_hex()).collect();
        vec![
            "--cluster".into(),
            self.nats.urls().join(","),
            "--cluster-pins".into(),
            pins.join(","),
            "--cluster-lease".into(),
            "3".into(),
        ]
    }

    fn start_server(&self, i: usize) -> Server {
        let d = &self.dirs[i];
        let server = Server::start(
            Command::new(bin("vigil-server"))
                .arg("--config")
                .arg(d.join("server.toml"))
                .args(self.cluster_flags()),
            LABELS[i],
        );
        point_client_config(&d.join("client.toml"), server.addr);
        server
    }

    fn health(&self, i: usize) -> Value {
        let (status, body) =
            vigil_test_support::http::request(self.servers[i].api, "GET", "/health", None, None);
        assert_eq!(status, 200, "{body}");
        body
    }

    fn wait_ready(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let health = self.health(i);
            if health["cluster"]["state"] == "ready" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}'s cluster link is not ready: {health}",
                LABELS[i]
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A REST request to server `i` with its token.
    fn api(&self, i: usize, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let body = body.map(Value::to_string);
        vigil_test_support::http::request(
            self.servers[i].api,
            method,
            path,
            Some(&common::api_token(&self.dirs[i])),
            body.as_deref().map(str::as_bytes),
        )
    }

    /// The fleet as server `i` lists it: client fingerprint → entry.
    fn clients(&self, i: usize) -> Vec<Value> {
        let (status, body) = self.api(i, "GET", "/v1/clients", None);
        assert_eq!(status, 200, "{body}");
        body["clients"].as_array().cloned().unwrap_or_default()
    }

    fn server_fingerprint(&self, i: usize) -> String {
        fingerprint_in(&self.dirs[i].join("client.toml"), "server_fingerprint")
    }

    fn client_fingerprint(&self, i: usize) -> String {
        let out = common::run(
            Command::new(bin("vigilctl"))
                .arg("fingerprint")
                .arg(self.dirs[i].join("client.crt")),
        );
        String::from_utf8(out.stdout)
            .expect("utf8")
            .trim()
            .to_owned()
    }

    /// Starts the client of server `i`'s directory, connected to it.
    fn start_client(&self, i: usize) -> Proc {
        common::start_client(&self.dirs[i], &[])
    }

    /// Writes `failover.toml` beside client `i`'s config: every server of
    /// the fleet, its own first, each with its pin, and every server's
    /// heartbeat key.
    fn failover_config(&self, i: usize) -> PathBuf {
        let n = self.servers.len();
        let order: Vec<usize> = (0..n).map(|k| (i + k) % n).collect();
        let keys: Vec<String> = order
            .iter()
            .map(|&k| fingerprint_in(&self.dirs[k].join("client.toml"), "heartbeat_key"))
            .collect();
        let text = std::fs::read_to_string(self.dirs[i].join("client.toml")).expect("read");
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                !l.starts_with("server = ")
                    && !l.starts_with("server_fingerprint = ")
                    && !l.starts_with("heartbeat_key = ")
            })
            .collect();
        let mut out = format!("heartbeat_keys = {}\n", json!(keys));
        out.push_str(&kept.join("\n"));
        out.push('\n');
        for &k in &order {
            out.push_str(&format!(
                "\n[[servers]]\naddress = \"{}\"\nfingerprints = [\"{}\"]\n",
                self.servers[k].addr,
                self.server_fingerprint(k)
            ));
        }
        let path = self.dirs[i].join("failover.toml");
        std::fs::write(&path, out).expect("write");
        path
    }

    /// `/send?wait=SECS` on server `i`; its results by client.
    fn send_wait(&self, i: usize, body: &Value, secs: u32) -> Vec<(String, String)> {
        let (status, answer) = self.api(i, "POST", &format!("/send?wait={secs}"), Some(body));
        assert_eq!(status, 200, "{answer}");
        results(&answer)
    }
}

/// `(client, status)` of each row of a `results` answer, sorted.
fn results(answer: &Value) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = answer["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results in {answer}"))
        .iter()
        .map(|r| {
            (
                r["client"].as_str().unwrap_or_default().to_owned(),
                r["status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    rows.sort();
    rows
}

fn all_with(clients: &[String], status: &str) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = clients
        .iter()
        .map(|c| (c.clone(), status.to_owned()))
        .collect();
    rows.sort();
    rows
}

/// Waits until `check` holds for what server `i` lists.
fn until_listed(fleet: &Fleet, i: usize, what: &str, check: impl Fn(&[Value]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = fleet.clients(i);
        if check(&list) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} lists {list:?}",
            LABELS[i]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn entry<'a>(list: &'a [Value], client: &str) -> Option<&'a Value> {
    list.iter().find(|c| c["client_id"] == client)
}

#[test]
fn every_server_lists_the_fleet_finds_no_client_attached_nowhere_and_says_when_nats_is_gone() {
    let mut fleet = Fleet::start(3);
    for i in 0..3 {
        let health = fleet.health(i);
        assert_eq!(health["status"], "ok", "{health}");
        assert_eq!(health["cluster"]["servers"], 3, "{health}");
    }
    let c1 = fleet.client_fingerprint(0);
    let s1 = fleet.server_fingerprint(0);
    let client = fleet.start_client(0);

    // Every server lists the client of s1, with its server.
    for i in 0..3 {
        until_listed(&fleet, i, "the client of s1", |list| {
            entry(list, &c1).is_some()
        });
        let list = fleet.clients(i);
        let e = entry(&list, &c1).expect("listed");
        assert_eq!(e["server_fingerprint"], s1.as_str(), "{e}");
        assert_eq!(e["server_agent_id"], s1.as_str(), "{e}");
        assert_eq!(e["transport"], "tls", "{e}");
    }

    // A command for a client attached nowhere is a 404 on any server, at once.
    let nobody = "ab".repeat(32);
    let (status, body) = fleet.api(
        1,
        "POST",
        "/send",
        Some(&json!({"command": "echo", "client_id": nobody})),
    );
    assert_eq!(status, 404, "{body}");

    // The client attaches to s2 as well (the same key, a second process):
    // s1 drops its stale session.
    let moved = fleet.dirs[0].join("moved.toml");
    let toml = std::fs::read_to_string(fleet.dirs[0].join("client.toml"))
        .expect("read")
        .replace(&s1, &fleet.server_fingerprint(1))
        .replace("\"client-state\"", "\"moved-state\"");
    std::fs::write(&moved, toml).expect("write");
    point_client_config(&moved, fleet.servers[1].addr);
    let second = Proc::spawn(
        Command::new(bin("vigil-client"))
            .arg("--config")
            .arg(&moved),
        "moved",
    );
    second.wait_for("server modules synced", 1, START);
    fleet.servers[0].proc.wait_for(
        "the client attached to another server of the cluster: closing its stale session here",
        1,
        START,
    );
    drop(second);
    drop(client);
    for i in 0..3 {
        until_listed(&fleet, i, "the client gone", |list| {
            entry(list, &c1).is_none()
        });
    }

    // NATS gone: each server says it is degraded, serves its own clients,
    // and answers 503 for a client it cannot place.
    let client = fleet.start_client(0);
    until_listed(&fleet, 1, "the client of s1 back", |list| {
        entry(list, &c1).is_some()
    });
    fleet.nats.stop();
    let deadline = Instant::now() + Duration::from_secs(20);
    while fleet.health(1)["cluster"]["state"] == "ready" {
        assert!(Instant::now() < deadline, "s2 did not see NATS go");
        std::thread::sleep(Duration::from_millis(100));
    }
    let health = fleet.health(1);
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["cluster"]["state"], "down", "{health}");
    let (status, body) = fleet.api(
        1,
        "POST",
        "/send",
        Some(&json!({"command": "echo", "client_id": c1})),
    );
    assert_eq!(status, 503, "{body}");
    let (status, body) = fleet.api(
        0,
        "POST",
        "/send?wait=10",
        Some(&json!({"command": "echo", "client_id": c1})),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["results"][0]["status"], "done", "{body}");

    // NATS back: the servers rejoin by themselves and list the fleet again.
    for i in 0..3 {
        fleet.nats.start_node(i).expect("restart");
    }
    for i in 0..3 {
        fleet.wait_ready(i);
    }
    until_listed(&fleet, 2, "the client of s1 listed again", |list| {
        entry(list, &c1).is_some()
    });
    drop(client);
}

#[test]
fn a_command_issued_on_any_server_reaches_every_client_and_their_acks_come_back_to_it() {
    let fleet = Fleet::start(3);
    let fps: Vec<String> = (0..3).map(|i| fleet.client_fingerprint(i)).collect();
    let clients: Vec<Proc> = (0..3).map(|i| fleet.start_client(i)).collect();
    for i in 0..3 {
        until_listed(&fleet, i, "every client", |list| {
            fps.iter().all(|f| entry(list, f).is_some())
        });
    }

    // s2 signs a command for the client of s1; the ack comes back to s2.
    let rows = fleet.send_wait(1, &json!({"command": "echo", "client_id": fps[0]}), 10);
    assert_eq!(rows, all_with(&fps[..1], "done"));
    assert!(
        fleet.servers[0]
            .proc
            .logged("command from the cluster delivered"),
        "s1 delivered it"
    );
    // ... and s2 can say what became of it afterwards.
    let (status, sent) = fleet.api(
        1,
        "POST",
        "/send",
        Some(&json!({"command": "echo", "client_id": fps[2]})),
    );
    assert_eq!(status, 202, "{sent}");
    let id = sent["command_id"].as_str().expect("an id").to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = fleet.api(1, "GET", &format!("/v1/commands/{id}"), None);
        assert_eq!(status, 200, "{body}");
        if body["targets"][fps[2].as_str()]["status"] == "done" {
            break;
        }
        assert!(Instant::now() < deadline, "never done: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A command without a target, issued on s3, reaches every client of
    // the cluster once.
    let rows = fleet.send_wait(2, &json!({"command": "echo"}), 10);
    assert_eq!(rows, all_with(&fps, "done"));

    // A command signed offline by the operator, relayed by s2 to the
    // client of s3, reaches it byte for byte (its signature holds).
    let signed = common::run(
        Command::new(bin("vigilctl"))
            .args(["sign", "--key"])
            .arg(fleet.dirs[0].join("operator.key"))
            .args(["--wa-id", "wa_operator", "--command", "echo", "--target"])
            .arg(&fps[2]),
    );
    let signed = String::from_utf8(signed.stdout).expect("utf8");
    let (status, body) = vigil_test_support::http::request(
        fleet.servers[1].api,
        "POST",
        "/v1/commands?wait=10",
        Some(&common::api_token(&fleet.dirs[1])),
        Some(signed.trim().as_bytes()),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(results(&body), all_with(&fps[2..], "done"));

    // s1 is killed while its client runs a slow command issued on s2: that
    // client's outcome is disconnected (never done), the others' done.
    let api = fleet.servers[1].api;
    let token = common::api_token(&fleet.dirs[1]);
    let waiting = std::thread::spawn(move || {
        let body = json!({"command": "slow"}).to_string();
        vigil_test_support::http::request(
            api,
            "POST",
            "/send?wait=30",
            Some(&token),
            Some(body.as_bytes()),
        )
    });
    fleet.servers[0]
        .proc
        .wait_for("command from the cluster delivered", 2, START);
    let killed = Instant::now();
    fleet.servers[0]
        .proc
        .signal(vigil_test_support::process::Signal::KILL);
    let (status, body) = waiting.join().expect("the waiting request");
    assert_eq!(status, 200, "{body}");
    let rows = results(&body);
    let expected: Vec<(String, String)> = {
        let mut e = vec![
            (fps[0].clone(), "disconnected".to_owned()),
            (fps[1].clone(), "done".to_owned()),
            (fps[2].clone(), "done".to_owned()),
        ];
        e.sort();
        e
    };
    assert_eq!(rows, expected, "{body}");
    eprintln!(
        "the killed server's slot settled {:?} after the kill",
        killed.elapsed()
    );
    drop(clients);
}

#[test]
fn an_emergency_shutdown_for_everyone_stops_every_client_and_every_server() {
    let mut fleet = Fleet::start(3);
    let fps: Vec<String> = (0..3).map(|i| fleet.client_fingerprint(i)).collect();
    let mut clients: Vec<Proc> = (0..3).map(|i| fleet.start_client(i)).collect();
    for i in 0..3 {
        until_listed(&fleet, i, "every client", |list| {
            fps.iter().all(|f| entry(list, f).is_some())
        });
    }
    // Posted to s2, signed by the operator key every server enrols.
    let out = common::run(
        Command::new(bin("vigilctl"))
            .args(["emergency-shutdown", "--key"])
            .arg(fleet.dirs[0].join("operator.key"))
            .args(["--wa-id", "wa_operator", "--api"])
            .arg(format!("http://{}", fleet.servers[1].api)),
    );
    let answer = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{answer}");
    assert!(
        answer.contains("agents:3/3"),
        "every client acked: {answer}"
    );
    for (i, client) in clients.iter_mut().enumerate() {
        let status = client.wait_exit(Duration::from_secs(30));
        assert!(status.success(), "client {i}: {status:?}");
    }
    for (i, server) in fleet.servers.iter_mut().enumerate() {
        let status = server.proc.wait_exit(Duration::from_secs(30));
        assert!(status.success(), "{}: {status:?}", LABELS[i]);
    }
    for i in [0, 2] {
        assert!(
            fleet.servers[i]
                .proc
                .logged("EMERGENCY SHUTDOWN from the cluster: stopping the server"),
            "{} stopped for the cluster's shutdown",
            LABELS[i]
        );
    }
}

#[test]
fn a_client_whose_server_is_killed_fails_over_to_another_and_no_failsafe_fires() {
    let fleet = Fleet::start(3);
    let fps: Vec<String> = (0..3).map(|i| fleet.client_fingerprint(i)).collect();
    // Every client knows every server; each starts on its own.
    let clients: Vec<Proc> = (0..3)
        .map(|i| {
            let config = fleet.failover_config(i);
            let client = Proc::spawn(
                Command::new(bin("vigil-client"))
                    .arg("--config")
                    .arg(&config),
                ["c1", "c2", "c3"][i],
            );
            client.wait_for("server modules synced", 1, START);
            client
        })
        .collect();
    for i in 0..3 {
        until_listed(&fleet, i, "every client", |list| {
            fps.iter().all(|f| entry(list, f).is_some())
        });
    }
    // s1 dies: its client attaches to s2 or s3 within the failsafe
    // timeout (15 s, the default), and its failsafe never fires.
    let killed = Instant::now();
    fleet.servers[0]
        .proc
        .signal(vigil_test_support::process::Signal::KILL);
    let s2 = fleet.server_fingerprint(1);
    let s3 = fleet.server_fingerprint(2);
    until_listed(&fleet, 1, "the client of s1 attached elsewhere", |list| {
        entry(list, &fps[0]).is_some_and(|e| {
            e["server_fingerprint"] == s2.as_str() || e["server_fingerprint"] == s3.as_str()
        })
    });
    let moved = killed.elapsed();
    eprintln!("the client of the killed server was attached to another after {moved:?}");
    // It is commanded through its new server, from any server.
    let rows = fleet.send_wait(1, &json!({"command": "echo", "client_id": fps[0]}), 10);
    assert_eq!(rows, all_with(&fps[..1], "done"));
    // Past the failsafe timeout since the kill: nothing fired anywhere.
    std::thread::sleep(Duration::from_secs(16).saturating_sub(killed.elapsed()));
    for (i, client) in clients.iter().enumerate() {
        assert!(
            !client.logged("FAILSAFE FIRED"),
            "the client of {} fired its failsafe",
            LABELS[i]
        );
        assert_eq!(
            client.count("server modules synced"),
            if i == 0 { 2 } else { 1 }
        );
    }
    let rows = fleet.send_wait(2, &json!({"command": "echo"}), 10);
    assert_eq!(rows, all_with(&fps, "done"));
}

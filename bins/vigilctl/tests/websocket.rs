//! The WebSocket transport between the real binaries on loopback: a client
//! over `wss://` runs a module and a signed command, and its failsafe fires
//! when the server stops; the same through a real HTTP proxy (Debian's
//! `tinyproxy`, with basic authentication); a Python client built on the
//! `websockets` package speaks the frames; and what is not a vigil client
//! is refused. `tinyproxy` and `websockets` are installed by the test when
//! they are missing and it can (root: apt-get, pip), and otherwise it fails
//! saying what to install: it never skips.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{START, Server, bin, init, lines_in, run, vigilctl, wait_lines};
use serde_json::Value;
use vigil_test_support::process::{Proc, Signal};
use vigil_test_support::server::{Listener, bound_blocking, point_client_config};

/// tinyproxy's basic-auth account in these tests.
const PROXY_USER: &str = "vigil";
const PROXY_PASSWORD: &str = "s3cret";

/// The `tinyproxy` program (Debian's package).
fn tinyproxy() -> PathBuf {
    common::debian_program("tinyproxy", "tinyproxy")
}

/// Python with the `websockets` package: found, or installed with pip, or
/// the test fails saying what to install.
fn python_websockets() {
    let has = || {
        Command::new("python3")
            .args(["-c", "import websockets"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if has() {
        return;
    }
    eprintln!(
        "the Python package `websockets` is missing: installing it (python3 -m pip install websockets)"
    );
    let out = run(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "websockets",
    ]));
    assert!(
        out.status.success() && has(),
        "this test needs Python's `websockets` package (python3 -m pip install websockets): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// An init directory whose client runs `greet`, fires after 2 s without a
/// fresh beat and leaves a line in `fired.log` each time, with hello.so in
/// the server's mods.
fn setup(d: &Path) -> PathBuf {
    init(d);
    let fired = d.join("fired.log");
    let mut toml = std::fs::read_to_string(d.join("client.toml")).expect("read");
    toml = toml.replace("failsafe_timeout = 15", "failsafe_timeout = 2");
    toml = toml.replace(
        "[[break_commands]]\ncommand = \"echo\"",
        "[commands.greet]\nprogram = \"echo\"\nargs = [\"hello over wss\"]\n\n\
         [commands.mark]\nprogram = \"echo fired >> \\\"$VIGIL_MARK\\\"\"\nshell = true\n\n\
         [[break_commands]]\ncommand = \"mark\"",
    );
    std::fs::write(d.join("client.toml"), &toml).expect("write");
    let so = common::hello_so();
    vigil_modules::dev::deploy(&so, &d.join("mods"), "hello.so").expect("deploy");
    fired
}

/// The server of `d` with its WebSocket port open (port 0), and the
/// `wss://` URL of it, which `client.toml` now names.
fn start_wss_server(d: &Path) -> (Server, String) {
    let mut cmd = Command::new(bin("vigil-server"));
    cmd.arg("--config").arg(d.join("server.toml")).args([
        "--wss-port",
        "0",
        "--heartbeat-interval",
        "0.25",
    ]);
    let server = Server::start(&mut cmd, "server");
    let wss: SocketAddr = bound_blocking(&server.proc, Listener::WebSocket, START);
    let url = format!("wss://{wss}/vigil");
    point_client_config(&d.join("client.toml"), &url);
    (server, url)
}

fn client(d: &Path, extra: &[&str], fired: &Path) -> Command {
    let mut cmd = Command::new(bin("vigil-client"));
    cmd.arg("--config")
        .arg(d.join("client.toml"))
        .args(extra)
        .env("VIGIL_MARK", fired)
        .env_remove("HTTPS_PROXY")
        .env_remove("https_proxy");
    cmd
}

fn metrics(server: &Server, d: &Path) -> String {
    let (status, body) = vigil_test_support::http::request(
        server.api,
        "GET",
        "/metrics",
        Some(&common::api_token(d)),
        None,
    );
    assert_eq!(status, 200, "{body}");
    body.as_str().expect("metrics text").to_owned()
}

/// The value of the sample `name` (with its labels, as written).
fn sample(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in\n{metrics}"))
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// What a wss client must do, with `extra` flags for every client
/// command: run hello.so once (`vigil-client exec`), stay connected and
/// answer a signed command, be listed as `wss`, and fire its failsafe when
/// the server is killed.
fn exercise(d: &Path, server: Server, extra: &[&str], fired: &Path) {
    let deadline = Instant::now() + START;
    let out = loop {
        let out = run(client(d, extra, fired).args(["exec", "hello.so", "big", "world"]));
        if out.status.success() || Instant::now() > deadline {
            break out;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "Hello, big world!"
    );

    let running = Proc::spawn(&mut client(d, extra, fired), "client");
    running.wait_for("server modules synced", 1, START);

    let out = run(vigilctl()
        .args(["send", "greet", "--wait", "10", "--api", &server.api_url()])
        .arg("--data-dir")
        .arg(d.join("server-data")));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer = stdout_json(&out);
    assert_eq!(answer["results"][0]["status"], "done", "{answer}");
    assert_eq!(answer["results"][0]["result"], "hello over wss", "{answer}");

    let out = run(vigilctl()
        .args(["clients", "--api", &server.api_url(), "--token-file"])
        .arg(d.join("server-data/api-token")));
    let listed = stdout_json(&out);
    assert_eq!(listed["clients"][0]["transport"], "wss", "{listed}");
    assert_eq!(listed["clients"][0]["heartbeat"], "nonce", "{listed}");
    let m = metrics(&server, d);
    assert_eq!(sample(&m, "vigil_clients_websocket"), 1, "{m}");

    // Healthy over several failsafe timeouts: nothing fires.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(lines_in(fired), 0, "fired while the server was healthy");
    server.proc.signal(Signal::KILL);
    wait_lines(fired, 1, Duration::from_secs(10));
    drop(running);
}

#[test]
fn a_client_over_wss_runs_a_module_and_a_signed_command_and_fires_when_the_server_stops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let fired = setup(d);
    let (server, _url) = start_wss_server(d);
    exercise(d, server, &[], &fired);
}

/// A tinyproxy on a port of its own, asking for basic authentication;
/// killed on drop.
fn start_tinyproxy(d: &Path) -> (Proc, u16) {
    let program = tinyproxy();
    let port = common::free_port();
    let conf = d.join("tinyproxy.conf");
    std::fs::write(
        &conf,
        format!(
            "User nobody\nGroup nogroup\nPort {port}\nListen 127.0.0.1\nTimeout 600\n\
             LogLevel Connect\nMaxClients 100\nAllow 127.0.0.1\n\
             BasicAuth {PROXY_USER} {PROXY_PASSWORD}\nDisableViaHeader Yes\n"
        ),
    )
    .expect("write tinyproxy.conf");
    let proxy = Proc::spawn(
        Command::new(program).arg("-d").arg("-c").arg(&conf),
        "tinyproxy",
    );
    vigil_test_support::wait::until("tinyproxy listens", START, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (proxy, port)
}

#[test]
fn a_client_through_an_http_proxy_with_basic_auth_does_the_same() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let fired = setup(d);
    let (_proxy, port) = start_tinyproxy(d);
    let (server, _url) = start_wss_server(d);

    // Wrong credentials: the proxy's refusal (tinyproxy answers 401), said
    // as such, without the password.
    let wrong = format!("http://{PROXY_USER}:wrong@127.0.0.1:{port}");
    let out = run(client(d, &["--proxy", &wrong], &fired).arg("sync"));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("wants other credentials (401") && !err.contains("wrong"),
        "{err}"
    );

    // Through HTTPS_PROXY, as the environment of a corporate network
    // gives it: the tunnel goes to the server, TLS inside is end to end.
    let via = format!("http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{port}");
    let out = run(client(d, &[], &fired).env("HTTPS_PROXY", &via).arg("sync"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The path goes through the proxy: without it, it does not work.
    let unused = common::free_port();
    let nowhere = format!("http://127.0.0.1:{unused}");
    let out = run(client(d, &["--proxy", &nowhere], &fired).arg("sync"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("through the proxy"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    exercise(d, server, &["--proxy", &via], &fired);
}

/// Runs the Python client for one case; its JSON answer.
fn python(url: &str, d: &Path, cert: (&str, &str), case: &str) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/wss_client.py");
    let out = run(Command::new("python3")
        .arg(script)
        .arg(url)
        .arg(cert.0)
        .arg(cert.1)
        .arg(d.join("server.crt"))
        .arg(case));
    assert!(
        out.status.success(),
        "{case}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout_json(&out)
}

#[test]
fn a_python_websockets_client_speaks_the_frames_and_what_is_no_vigil_client_is_refused() {
    python_websockets();
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    setup(d);
    let (server, url) = start_wss_server(d);
    let crt = d.join("client.crt");
    let key = d.join("client.key");
    let own = (crt.to_str().expect("utf8"), key.to_str().expect("utf8"));

    // Interop: ping, sync, verify the bytes, run the module.
    let v = python(&url, d, own, "frames");
    assert_eq!(v["subprotocol"], "vigil.v1", "{v}");
    assert!(
        v["ping"]
            .as_str()
            .is_some_and(|h| h.starts_with("sys:pong")),
        "{v}"
    );
    assert_eq!(v["modules"], serde_json::json!(["hello.so"]), "{v}");
    assert_eq!(v["verified"], true, "{v}");
    assert_eq!(v["result"], "Hello, python!", "{v}");

    // What is not a frame closes with its code.
    for (case, code) in [("binary", 1003), ("oversized", 1009), ("newline", 1007)] {
        let v = python(&url, d, own, case);
        assert_eq!(v["close_code"], code, "{case}: {v}");
    }
    // A bad upgrade is an HTTP refusal.
    for (case, status) in [("subprotocol", 400), ("path", 404)] {
        let v = python(&url, d, own, case);
        assert_eq!(v["http_status"], status, "{case}: {v}");
    }
    // A stranger's certificate, and none at all: no session.
    let other = tempfile::tempdir().expect("tempdir");
    init(other.path());
    let (scrt, skey) = (
        other.path().join("client.crt"),
        other.path().join("client.key"),
    );
    let stranger = (scrt.to_str().expect("utf8"), skey.to_str().expect("utf8"));
    for (name, cert) in [("stranger", stranger), ("no certificate", ("-", "-"))] {
        let v = python(&url, d, cert, "frames");
        assert!(v.get("refused").is_some(), "{name}: {v}");
    }

    let m = metrics(&server, d);
    for (name, want) in [
        ("vigil_websocket_closed_total{violation=\"binary\"}", 1),
        ("vigil_websocket_closed_total{violation=\"too_large\"}", 1),
        ("vigil_websocket_closed_total{violation=\"bad_text\"}", 1),
        ("vigil_websocket_sessions_total{result=\"subprotocol\"}", 1),
        ("vigil_websocket_sessions_total{result=\"wrong_path\"}", 1),
        ("vigil_websocket_sessions_total{result=\"accepted\"}", 4),
    ] {
        assert_eq!(sample(&m, name), want, "{name}\n{m}");
    }
    assert!(
        sample(&m, "vigil_handshakes_total{result=\"failed\"}") >= 4,
        "{m}"
    );

    // And the server still serves a real client.
    let v = python(&url, d, own, "frames");
    assert_eq!(v["result"], "Hello, python!", "{v}");
}

//! A real deployment for the reliability catalogue: `vigilctl init` in a
//! temporary directory, a `vigil-server` process (and `vigil-client`
//! processes where a case needs one), and the probes every case ends with:
//! an honest client is still served and the server's memory stayed
//! bounded.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::client::TlsStream;
use vigil_auth::{Fingerprint, Identity, TrustFile};

/// Longest wait for anything a case expects to happen.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// A workspace binary, built (a no-op when up to date) the first time:
/// cargo builds only this package's binaries for its tests.
pub(crate) fn bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let server = PathBuf::from(env!("CARGO_BIN_EXE_vigil-server"));
    let dir = server.parent().expect("bin dir").to_owned();
    BUILT.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args([
                "build",
                "--quiet",
                "-p",
                "vigil-client-bin",
                "-p",
                "vigilctl",
            ])
            .status()
            .expect("cargo build");
        assert!(
            status.success(),
            "building vigil-client and vigilctl failed"
        );
    });
    dir.join(name)
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A child process whose stderr lines are kept; killed on drop.
pub(crate) struct Proc {
    pub(crate) child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    pub(crate) fn spawn(cmd: &mut Command, label: &'static str) -> Proc {
        let mut child = cmd
            .env("NO_COLOR", "1")
            .env("VIGIL_LOG", "info")
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let stderr = child.stderr.take().expect("stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{label}| {line}");
                sink.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(line);
            }
        });
        Proc { child, lines }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether a log line holds `needle`.
    pub(crate) fn logged(&self, needle: &str) -> bool {
        self.lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .any(|l| l.contains(needle))
    }

    /// Every log line so far.
    pub(crate) fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Waits until a log line holds `needle`.
    pub(crate) async fn wait_logged(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.logged(needle) {
            assert!(Instant::now() < deadline, "never logged {needle:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `signal` (SIGKILL, SIGSTOP, SIGCONT...).
    pub(crate) fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("pid");
        rustix::process::kill_process(pid, signal).expect("kill");
    }

    /// Waits for the process to exit; its status.
    pub(crate) async fn exited(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "the process did not exit");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident memory, KiB.
    pub(crate) fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("/proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // A stopped process must be continued to die cleanly.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `vigilctl init` output, a running server, and what it takes to talk
/// to it.
pub(crate) struct Deployment {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) port: u16,
    pub(crate) http_port: u16,
    pub(crate) server: Proc,
    pub(crate) token: String,
}

impl Deployment {
    /// A deployment with a server started with `args` added to its config.
    pub(crate) async fn start(args: &[&str]) -> Deployment {
        Deployment::start_after(args, |_| {}).await
    }

    /// As [`Deployment::start`], with `prepare` run on the directory
    /// `vigilctl init` wrote before the server starts.
    pub(crate) async fn start_after(args: &[&str], prepare: impl FnOnce(&Path)) -> Deployment {
        let dir = tempfile::tempdir().expect("tempdir");
        let (port, http_port) = (free_port(), free_port());
        let out = Command::new(bin("vigilctl"))
            .arg("init")
            .arg(dir.path())
            .args(["--port", &port.to_string()])
            .args(["--http-port", &http_port.to_string()])
            .output()
            .expect("vigilctl init");
        assert!(out.status.success(), "{out:?}");
        prepare(dir.path());
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let server = start_server(dir.path(), &args).await;
        let token = std::fs::read_to_string(dir.path().join("server-data/api-token"))
            .expect("token")
            .trim()
            .to_owned();
        Deployment {
            dir,
            port,
            http_port,
            server,
            token,
        }
    }

    /// Starts the server again with `args` (the one before must be gone).
    pub(crate) async fn restart(&self, args: &[&str]) -> Proc {
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        start_server(self.dir.path(), &args).await
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub(crate) fn client_identity(&self) -> Identity {
        Identity::load(&self.path("client.crt"), &self.path("client.key")).expect("client id")
    }

    pub(crate) fn server_fingerprint(&self) -> Fingerprint {
        Identity::load(&self.path("server.crt"), &self.path("server.key"))
            .expect("server id")
            .fingerprint()
    }

    /// A mutual-TLS connection with the client identity `init` made, or
    /// with `identity`.
    pub(crate) async fn tls(
        &self,
        identity: Option<&Identity>,
    ) -> TlsStream<tokio::net::TcpStream> {
        let own = self.client_identity();
        let config = vigil_auth::client_config(identity.unwrap_or(&own), self.server_fingerprint())
            .expect("client config");
        let tcp = tokio::net::TcpStream::connect(self.addr())
            .await
            .expect("connect");
        let name = vigil_auth::rustls::pki_types::ServerName::try_from("vigil").expect("name");
        tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .expect("handshake")
    }

    pub(crate) fn trusted(&self) -> Vec<Fingerprint> {
        TrustFile::read(&self.path("trusted-keys.json"))
            .expect("trust file")
            .trusted_fingerprints
    }

    /// Rewrites the trust file (temporary name, then rename).
    pub(crate) fn write_trust(&self, fps: &[Fingerprint]) {
        let file = TrustFile {
            trusted_fingerprints: fps.to_vec(),
        };
        write_atomically(&self.path("trusted-keys.json"), file.to_json().as_bytes());
    }

    /// A client configuration with the identity `init` made.
    pub(crate) fn client_config(&self) -> vigil_client::ClientConfig {
        vigil_client::ClientConfig::new(
            self.addr().to_string(),
            self.client_identity(),
            self.server_fingerprint(),
        )
    }

    /// Another client identity, trusted by the server: its certificate
    /// and key (`NAME.crt`, `NAME.key`), a state directory of its own and
    /// a copy of `client.toml` that uses them (`NAME.toml`), with `edit`
    /// applied. Returns the config's path.
    pub(crate) fn add_client(&self, name: &str, edit: impl FnOnce(String) -> String) -> PathBuf {
        let identity = vigil_auth::GeneratedIdentity::generate(name).expect("identity");
        let (crt, key) = (
            self.path(&format!("{name}.crt")),
            self.path(&format!("{name}.key")),
        );
        identity.write(&crt, &key, false).expect("write identity");
        let mut trusted = self.trusted();
        trusted.push(identity.fingerprint);
        self.write_trust(&trusted);
        let base = std::fs::read_to_string(self.path("client.toml")).expect("client.toml");
        let config = base
            .replace("\"client.crt\"", &format!("\"{name}.crt\""))
            .replace("\"client.key\"", &format!("\"{name}.key\""))
            .replace("\"client-state\"", &format!("\"{name}-state\""));
        let path = self.path(&format!("{name}.toml"));
        std::fs::write(&path, edit(config)).expect("write config");
        path
    }

    /// Starts a `vigil-client` with the config at `config`.
    pub(crate) fn client_with(&self, config: &Path, args: &[&str], label: &'static str) -> Proc {
        Proc::spawn(
            Command::new(bin("vigil-client"))
                .arg("--config")
                .arg(config)
                .args(args),
            label,
        )
    }

    /// The honest probe: a client with the trusted identity connects, is
    /// answered, lists the modules, and the REST API answers `/health`.
    pub(crate) async fn assert_serving(&self) {
        let config = self.client_config();
        let conn = tokio::time::timeout(WAIT, vigil_client::Connection::connect(&config))
            .await
            .expect("connected in time")
            .expect("an honest client is served");
        conn.sync().await.expect("sync answered");
        conn.close();
        let (status, _) = self.http("GET", "/health", None, None);
        assert_eq!(status, 200, "the REST API is up");
    }

    /// The server's RSS grew by at most `kib` since `before`.
    pub(crate) fn assert_memory_bounded(&self, before: u64, kib: u64) {
        let now = self.server.rss_kib();
        assert!(
            now <= before + kib,
            "server RSS grew from {before} to {now} KiB (bound: +{kib} KiB)"
        );
    }

    /// One HTTP/1.1 request (`Connection: close`): status and body.
    pub(crate) fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> (u16, serde_json::Value) {
        let mut req = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        let body = body.unwrap_or_default();
        req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        let mut bytes = req.into_bytes();
        bytes.extend_from_slice(body);
        self.raw_http(&bytes)
    }

    /// `POST /emergency/shutdown` with `command` as its body.
    pub(crate) fn emergency(&self, command: &impl serde::Serialize) -> (u16, serde_json::Value) {
        let body = serde_json::to_vec(command).expect("json");
        self.http("POST", "/emergency/shutdown", None, Some(&body))
    }

    /// Writes `bytes` to the REST port and reads the answer to the end.
    pub(crate) fn raw_http(&self, bytes: &[u8]) -> (u16, serde_json::Value) {
        let mut tcp = TcpStream::connect(("127.0.0.1", self.http_port)).expect("connect");
        tcp.set_read_timeout(Some(WAIT)).expect("timeout");
        tcp.write_all(bytes).expect("write");
        let mut raw = Vec::new();
        let _ = tcp.read_to_end(&mut raw);
        parse_http(&raw)
    }

    /// As [`Deployment::http`], from the loopback address `source`.
    pub(crate) async fn http_from(
        &self,
        source: std::net::Ipv4Addr,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> (u16, serde_json::Value) {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .bind(SocketAddr::from((source, 0)))
            .expect("bind the source address");
        let mut tcp = socket
            .connect(SocketAddr::from(([127, 0, 0, 1], self.http_port)))
            .await
            .expect("connect");
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body);
        tcp.write_all(&req).await.expect("write");
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut raw)).await;
        parse_http(&raw)
    }

    /// `GET /metrics`, one sample's value.
    pub(crate) fn metric(&self, sample: &str) -> u64 {
        let mut tcp = TcpStream::connect(("127.0.0.1", self.http_port)).expect("connect");
        let req = format!(
            "GET /metrics HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            self.token
        );
        tcp.write_all(req.as_bytes()).expect("write");
        let mut text = String::new();
        let _ = tcp.read_to_string(&mut text);
        text.lines()
            .find_map(|l| l.strip_prefix(sample).and_then(|v| v.strip_prefix(' ')))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {sample} in /metrics"))
    }

    /// Starts a `vigil-client` with the config `init` wrote, plus `extra`
    /// lines appended to a copy of it.
    pub(crate) fn client(&self, extra: &str, args: &[&str]) -> Proc {
        self.client_edited(|base| format!("{base}\n{extra}\n"), args)
    }

    /// Starts a `vigil-client` with `edit` applied to the config `init`
    /// wrote.
    pub(crate) fn client_edited(&self, edit: impl FnOnce(String) -> String, args: &[&str]) -> Proc {
        let base = std::fs::read_to_string(self.path("client.toml")).expect("client.toml");
        let config = self.path("client-test.toml");
        std::fs::write(&config, edit(base)).expect("write config");
        Proc::spawn(
            Command::new(bin("vigil-client"))
                .arg("--config")
                .arg(&config)
                .args(args),
            "client",
        )
    }
}

async fn start_server(dir: &Path, args: &[String]) -> Proc {
    let server = Proc::spawn(
        Command::new(bin("vigil-server"))
            .arg("--config")
            .arg(dir.join("server.toml"))
            .args(args),
        "server",
    );
    server.wait_logged("REST API listening").await;
    server.wait_logged("vigil server listening").await;
    server
}

pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

pub(crate) fn parse_http(raw: &[u8]) -> (u16, serde_json::Value) {
    let text = String::from_utf8_lossy(raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let value =
        serde_json::from_str(body).unwrap_or_else(|_| serde_json::Value::String(body.to_owned()));
    (status, value)
}

/// Reads frames from `rd` until one with REF `reference` arrives (skipping
/// heartbeats and broadcasts); `None` if the connection ends first.
pub(crate) async fn frame_for<R: tokio::io::AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut Vec<u8>,
    reference: &str,
) -> Option<vigil_proto::Frame> {
    loop {
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=end).collect();
            if let Ok(frame) = vigil_proto::Frame::parse(&line[..end])
                && frame.reference() == reference
            {
                return Some(frame);
            }
        }
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout(WAIT, rd.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("no frame for REF {reference:?} in time"),
        }
    }
}

/// Writes `bytes`, then reads the frame for `reference`.
pub(crate) async fn ask<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    stream: &mut S,
    bytes: &[u8],
    reference: &str,
) -> Option<vigil_proto::Frame> {
    stream.write_all(bytes).await.ok()?;
    let mut buf = Vec::new();
    frame_for(stream, &mut buf, reference).await
}

/// Waits until `cond` holds.
pub(crate) async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "not in time: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The files of the deployment's audit log, oldest first: its sealed
/// segments (`audit.jsonl.<first>-<last>`), then the open one.
pub(crate) fn audit_files(dep: &Deployment) -> Vec<PathBuf> {
    let dir = dep.path("server-data");
    let mut sealed: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .and_then(|n| n.strip_prefix("audit.jsonl."))
                        .is_some_and(|rest| {
                            rest.len() == 41
                                && rest.bytes().all(|b| b.is_ascii_digit() || b == b'-')
                        })
                })
                .collect()
        })
        .unwrap_or_default();
    sealed.sort();
    sealed.push(dir.join("audit.jsonl"));
    sealed
}

/// Every record of the deployment's audit log, oldest first.
pub(crate) fn audit_log(dep: &Deployment) -> Vec<serde_json::Value> {
    audit_files(dep)
        .iter()
        .flat_map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Bytes the audit log's records take on disk, in every segment.
pub(crate) fn audit_bytes(dep: &Deployment) -> u64 {
    audit_files(dep)
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// Posts each body to `path` on one keep-alive connection, one request
/// after another; the status of each answer (0 when the connection ended).
pub(crate) fn post_keepalive(port: u16, path: &str, bodies: &[Vec<u8>]) -> Vec<u16> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(WAIT)).expect("timeout");
    tcp.set_nodelay(true).expect("nodelay");
    let mut reader = BufReader::new(tcp.try_clone().expect("clone"));
    let mut statuses = Vec::with_capacity(bodies.len());
    for body in bodies {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        // One write: a head and a body written apart wait on Nagle's
        // algorithm and the peer's delayed ACK.
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        if tcp.write_all(&request).is_err() {
            statuses.push(0);
            continue;
        }
        let mut status = 0;
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            if let Some(rest) = trimmed.strip_prefix("HTTP/1.1 ") {
                status = rest.get(..3).and_then(|s| s.parse().ok()).unwrap_or(0);
            } else if let Some((name, value)) = trimmed.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut rest = vec![0u8; length];
        if reader.read_exact(&mut rest).is_err() {
            status = 0;
        }
        statuses.push(status);
    }
    statuses
}

/// `n` junk bodies for the emergency route, of four kinds an attacker
/// with no key can send: a body with a 10 KB unknown field name, a 60 KB
/// `wa_public_key`, a `SHUTDOWN_NOW` signed by an unknown key with a 16 KB
/// reason, and 30 KB that is not JSON.
pub(crate) fn emergency_junk(n: usize) -> Vec<Vec<u8>> {
    let stranger = vigil_command::generate_signing_key().expect("key");
    let now =
        vigil_command::Timestamp::from_system_time(std::time::SystemTime::now()).expect("now");
    let signed = |i: usize, reason: String| {
        let mut c = vigil_command::UnsignedCommand::new(
            format!("junk-{i}"),
            "SHUTDOWN_NOW",
            "wa_junk",
            now,
            reason,
        );
        c.target_agent_id = None;
        serde_json::to_value(c.sign(&stranger).expect("sign")).expect("json")
    };
    (0..n)
        .map(|i| match i % 4 {
            0 => {
                let mut v = signed(i, "x".into());
                v[format!("{}{i}", "f".repeat(10_000))] = serde_json::json!(1);
                v.to_string().into_bytes()
            }
            1 => {
                let mut v = signed(i, "x".into());
                v["wa_public_key"] = serde_json::json!("A".repeat(60_000));
                v.to_string().into_bytes()
            }
            2 => signed(i, "r".repeat(16_000)).to_string().into_bytes(),
            _ => vec![b'#'; 30_000],
        })
        .collect()
}

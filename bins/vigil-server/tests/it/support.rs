//! A real deployment for the reliability catalogue: `vigilctl init` in a
//! temporary directory, a `vigil-server` process (and `vigil-client`
//! processes where a case needs one), and the probes every case ends with:
//! an honest client is still served and the server's memory stayed
//! bounded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::client::TlsStream;
use vigil_auth::{Fingerprint, Identity, TrustFile};
use vigil_test_support::http;
use vigil_test_support::process::Proc;
use vigil_test_support::server::{Listener, bound, point_client_config};
use vigil_test_support::wait::WAIT;

/// A workspace binary (built first if cargo has not built it for these
/// tests: see [`vigil_test_support::bin::path`]).
pub(crate) fn bin(name: &str) -> PathBuf {
    vigil_test_support::bin::path(env!("CARGO_BIN_EXE_vigil-server"), name)
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
    ///
    /// The server binds port 0 for both listeners (the kernel picks free
    /// ports as it binds them) and says which in its log; `client.toml` is
    /// then pointed at the bound address.
    pub(crate) async fn start_after(args: &[&str], prepare: impl FnOnce(&Path)) -> Deployment {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new(bin("vigilctl"))
            .arg("init")
            .arg(dir.path())
            .args(["--port", "0", "--http-port", "0"])
            .output()
            .expect("vigilctl init");
        assert!(out.status.success(), "{out:?}");
        prepare(dir.path());
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        let (server, addr, rest) = start_server(dir.path(), &args).await;
        point_client_config(&dir.path().join("client.toml"), addr);
        let token = std::fs::read_to_string(dir.path().join("server-data/api-token"))
            .expect("token")
            .trim()
            .to_owned();
        Deployment {
            dir,
            port: addr.port(),
            http_port: rest.port(),
            server,
            token,
        }
    }

    /// Starts the server again with `args` (the one before must be gone).
    ///
    /// On the ports it had, not on port 0: the clients already running
    /// reconnect to the address in their config, and the deployment's
    /// addresses stay right. (Another process could take a port while no
    /// server holds it; none of these tests does.)
    pub(crate) async fn restart(&self, args: &[&str]) -> Proc {
        let mut all: Vec<String> = vec![
            "--port".into(),
            self.port.to_string(),
            "--http-port".into(),
            self.http_port.to_string(),
        ];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        let (server, addr, rest) = start_server(self.dir.path(), &all).await;
        assert_eq!((addr, rest), (self.addr(), self.rest_addr()));
        server
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The mutual-TLS listener's address.
    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The REST API's address.
    pub(crate) fn rest_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http_port))
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

    /// One HTTP/1.1 request (`Connection: close`) to the REST API: status
    /// and body.
    pub(crate) fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> (u16, serde_json::Value) {
        http::request(self.rest_addr(), method, path, token, body)
    }

    /// `POST /emergency/shutdown` with `command` as its body.
    pub(crate) fn emergency(&self, command: &impl serde::Serialize) -> (u16, serde_json::Value) {
        let body = serde_json::to_vec(command).expect("json");
        self.http("POST", "/emergency/shutdown", None, Some(&body))
    }

    /// Writes `bytes` to the REST port and reads the answer to the end.
    pub(crate) fn raw_http(&self, bytes: &[u8]) -> (u16, serde_json::Value) {
        http::send_raw(self.rest_addr(), bytes)
    }

    /// As [`Deployment::http`], from the loopback address `source`.
    pub(crate) async fn http_from(
        &self,
        source: std::net::Ipv4Addr,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> (u16, serde_json::Value) {
        http::request_from(source, self.rest_addr(), method, path, body).await
    }

    /// `GET /metrics`, one sample's value.
    pub(crate) fn metric(&self, sample: &str) -> u64 {
        let req = format!(
            "GET /metrics HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
            self.token
        );
        let answer = http::exchange(self.rest_addr(), req.as_bytes());
        String::from_utf8_lossy(&answer)
            .lines()
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

/// Starts the server of `dir` with `args`; it, and the addresses of its
/// mutual-TLS listener and its REST API, once both are bound.
async fn start_server(dir: &Path, args: &[String]) -> (Proc, SocketAddr, SocketAddr) {
    let server = Proc::spawn(
        Command::new(bin("vigil-server"))
            .arg("--config")
            .arg(dir.join("server.toml"))
            .args(args),
        "server",
    );
    let rest = bound(&server, Listener::Rest).await;
    let tls = bound(&server, Listener::Tls).await;
    (server, tls, rest)
}

pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
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

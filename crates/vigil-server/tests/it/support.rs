//! A real server in a temporary directory, and helpers to poke at it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_util::codec::Decoder as _;
use vigil_auth::{Fingerprint, GeneratedIdentity, TrustFile, TrustStore};
use vigil_client::{ClientConfig, ClientEvent};
use vigil_proto::{Frame, FrameCodec, Limits};
use vigil_server::{Deployment, ServerConfig, ServerError, ServerHandle};

pub(crate) struct TestServer {
    pub(crate) addr: SocketAddr,
    /// The WebSocket port, when the server was started with one.
    pub(crate) wss: Option<SocketAddr>,
    pub(crate) fingerprint: Fingerprint,
    pub(crate) handle: ServerHandle,
    pub(crate) trust: TrustStore,
    pub(crate) trust_path: PathBuf,
    pub(crate) task: Option<JoinHandle<Result<(), ServerError>>>,
    config: ServerConfig,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub(crate) async fn start(trusted: &[Fingerprint]) -> TestServer {
        Self::start_with(trusted, |_| {}).await
    }

    pub(crate) async fn start_with(
        trusted: &[Fingerprint],
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> TestServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let trust_path = dir.path().join("trusted-keys.json");
        write_trust_file(&trust_path, trusted);
        let trust = TrustStore::load(&trust_path).expect("trust");
        let identity = GeneratedIdentity::generate("vigil-server")
            .expect("generate")
            .identity()
            .expect("identity");
        let mut config = ServerConfig::new(
            "127.0.0.1:0".parse().expect("addr"),
            identity,
            trust.clone(),
        );
        config.drain_timeout = Duration::from_secs(2);
        // Most cases test the transport; those that need an audit log set one.
        config.dangerous().run_without_audit_log();
        tweak(&mut config);
        let running = Deployment::new(config.clone())
            .start()
            .await
            .expect("start");
        let addr = running.local_addr();
        let wss = running.wss_addr();
        config.listen = addr;
        config.wss_listen = wss;
        let handle = running.handle();
        let fingerprint = running.fingerprint();
        let task = tokio::spawn(running.run());
        TestServer {
            addr,
            wss,
            fingerprint,
            handle,
            trust,
            trust_path,
            task: Some(task),
            config,
            _dir: dir,
        }
    }

    /// Rewrites the trust file (temporary file renamed into place).
    pub(crate) fn write_trust(&self, fps: &[Fingerprint]) {
        write_trust_file(&self.trust_path, fps);
    }

    /// Stops the server and starts a new one on the same address, identity
    /// and trust store.
    pub(crate) async fn restart(&mut self) {
        self.handle.shutdown();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
        let running = loop {
            match Deployment::new(self.config.clone()).start().await {
                Ok(running) => break running,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        self.handle = running.handle();
        self.task = Some(tokio::spawn(running.run()));
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.handle.shutdown();
    }
}

pub(crate) fn write_trust_file(path: &std::path::Path, fps: &[Fingerprint]) {
    let file = TrustFile {
        trusted_fingerprints: fps.to_vec(),
    };
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, file.to_json()).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

pub(crate) fn client_config(server: &TestServer, client: &GeneratedIdentity) -> ClientConfig {
    ClientConfig::new(
        server.addr.to_string(),
        client.identity().expect("identity"),
        server.fingerprint,
    )
}

/// A server tweak that opens the WebSocket port too (port 0).
pub(crate) fn with_wss(config: &mut ServerConfig) {
    config.wss_listen = Some("127.0.0.1:0".parse().expect("addr"));
}

/// The transport a client reaches a [`TestServer`] over.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Via {
    /// The main TLS port.
    Tls,
    /// The WebSocket port (the server must be started [`with_wss`]).
    WebSocket,
}

impl Via {
    /// A client config for `client` on this transport.
    pub(crate) fn config(self, server: &TestServer, client: &GeneratedIdentity) -> ClientConfig {
        match self {
            Via::Tls => client_config(server, client),
            Via::WebSocket => {
                let wss = server.wss.expect("the server was started with_wss");
                ClientConfig::new(
                    format!("wss://{wss}/vigil"),
                    client.identity().expect("identity"),
                    server.fingerprint,
                )
            }
        }
    }
}

/// A TLS connection with no protocol logic, to send raw bytes.
pub(crate) async fn raw_tls(
    server: &TestServer,
    client: &GeneratedIdentity,
) -> TlsStream<tokio::net::TcpStream> {
    let config =
        vigil_auth::client_config(&client.identity().expect("identity"), server.fingerprint)
            .expect("config");
    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("tcp");
    let name = vigil_auth::rustls::pki_types::ServerName::try_from("vigil").expect("name");
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("handshake")
}

/// Reads one frame; `None` when the connection closes first.
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
) -> Option<Frame> {
    let mut codec = FrameCodec::client(&Limits::default());
    loop {
        if let Some(item) = codec.decode(buf).expect("frame within limits") {
            return Some(item.expect("server frames are well formed"));
        }
        let read = tokio::time::timeout(Duration::from_secs(10), rd.read_buf(buf))
            .await
            .expect("server answered in time");
        match read {
            Ok(0) | Err(_) => return None,
            Ok(_) => {}
        }
    }
}

/// Waits until `cond` holds (at most 10 s).
pub(crate) async fn eventually(cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The next event that matches, skipping others (at most 10 s).
pub(crate) async fn next_event(
    rx: &mut tokio::sync::broadcast::Receiver<ClientEvent>,
    want: impl Fn(&ClientEvent) -> bool,
) -> ClientEvent {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match rx.recv().await {
                Ok(e) if want(&e) => return e,
                Ok(_) => {}
                Err(e) => panic!("event stream: {e}"),
            }
        }
    })
    .await
    .expect("event in time")
}

//! Simulated clients: one lean task per connection.
//!
//! Each task is a real mTLS client with its own identity, on its own
//! loopback source address, speaking the frame protocol through
//! [`FrameCodec`]. It is not `vigil_client::Client`: it does only what a
//! connected client does on the wire (ping to confirm admission, sync,
//! answer commands, ping when idle, reconnect with the client's jittered
//! backoff) and records when things happen, so that thousands fit beside
//! the server on two cores.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Buf as _;
use futures_util::StreamExt as _;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::ClientConfig;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use vigil_client::Backoff;
use vigil_proto::{Ack, AckStatus, Frame, FrameCodec, Limits};

use crate::setup::ClientIdentity;

/// How many loopback source addresses connections are spread over
/// (127.0.0.2 ..= 127.0.0.51): each has its own ~28,000 ephemeral ports.
pub(crate) const SOURCE_ADDRESSES: usize = 50;

/// A client pings after this long without sending, as `vigil-client` does
/// (the server closes sessions silent for 90 s).
const IDLE_PING: Duration = Duration::from_secs(30);

/// Longest wait for one answer during connection set-up.
const SETUP_TIMEOUT: Duration = Duration::from_secs(20);

/// The loopback source address for connection `i`.
pub(crate) fn source_address(i: usize) -> IpAddr {
    let host = 2 + (i % SOURCE_ADDRESSES) as u8;
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, host))
}

/// Nanoseconds since `epoch`.
pub(crate) fn nanos_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Opens a TCP connection from `source` and completes the TLS handshake.
pub(crate) async fn connect_tls(
    config: Arc<ClientConfig>,
    source: IpAddr,
    server: SocketAddr,
    recv_buffer: Option<u32>,
) -> anyhow::Result<TlsStream<TcpStream>> {
    let socket = TcpSocket::new_v4()?;
    // Ports of closed connections in TIME_WAIT may be bound again.
    socket.set_reuseaddr(true)?;
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    socket
        .bind(SocketAddr::new(source, 0))
        .with_context(|| format!("cannot bind {source}"))?;
    let tcp = socket.connect(server).await?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from("vigil-server")?;
    Ok(TlsConnector::from(config).connect(name, tcp).await?)
}

/// A framed connection: frames in, raw bytes out.
pub(crate) struct Conn<S> {
    pub(crate) frames: FramedRead<tokio::io::ReadHalf<S>, FrameCodec>,
    pub(crate) writer: tokio::io::WriteHalf<S>,
}

impl<S: AsyncRead + AsyncWrite> Conn<S> {
    pub(crate) fn new(stream: S) -> Conn<S> {
        let (r, w) = tokio::io::split(stream);
        Conn {
            frames: FramedRead::new(r, FrameCodec::client(&Limits::default())),
            writer: w,
        }
    }

    /// Reads until the frame `api:kind:reference` arrives (skipping
    /// heartbeats and broadcasts); an `err` frame for it is an error.
    pub(crate) async fn expect(
        &mut self,
        api: &str,
        kind: &str,
        reference: &str,
    ) -> anyhow::Result<Frame> {
        loop {
            let frame = match self.frames.next().await {
                None => anyhow::bail!("connection closed before {api}:{kind}:{reference}"),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Err(bad))) => anyhow::bail!("malformed frame from the server: {bad}"),
                Some(Ok(Ok(frame))) => frame,
            };
            if frame.reference() != reference {
                continue;
            }
            if frame.api() == api && frame.kind() == kind {
                return Ok(frame);
            }
            if frame.api() == vigil_proto::api::ERR {
                anyhow::bail!("server answered {frame}");
            }
        }
    }

    /// Pings and waits for the pong: a refused client learns it here.
    pub(crate) async fn admit(&mut self) -> anyhow::Result<()> {
        self.writer.write_all(b"sys:ping:a {}\n").await?;
        self.expect("sys", "pong", "a").await?;
        Ok(())
    }

    /// Lists the modules; returns the `mod:sync_resp` frame.
    pub(crate) async fn sync(&mut self) -> anyhow::Result<Frame> {
        self.writer.write_all(b"mod:sync:s {}\n").await?;
        self.expect("mod", "sync_resp", "s").await
    }
}

/// One simulated client and what it recorded.
#[derive(Debug)]
pub(crate) struct SimClient {
    index: usize,
    identity: ClientIdentity,
    /// Sessions that got as far as a completed sync.
    pub(crate) syncs: AtomicU64,
    /// When the last sync completed (ns since the fleet's epoch).
    pub(crate) last_sync_ns: AtomicU64,
    /// Connection attempts that failed before a sync.
    pub(crate) failed_attempts: AtomicU64,
    /// Commands received and acknowledged.
    pub(crate) commands: AtomicU64,
    /// When the last command's acknowledgement was written (ns since the
    /// fleet's epoch).
    pub(crate) last_ack_ns: AtomicU64,
    /// Heartbeats received.
    pub(crate) heartbeats: AtomicU64,
    /// Bytes of the heartbeat frames received.
    pub(crate) heartbeat_bytes: AtomicU64,
    connected: AtomicBool,
}

/// Appends an `hb:nonce` frame to `out`: 32 bytes that differ per client
/// and per beat (the server only keeps and covers them).
fn push_nonce(client: &SimClient, out: &mut Vec<u8>) {
    use base64::Engine as _;
    let mut nonce = [0u8; 32];
    nonce[..8].copy_from_slice(&(client.index as u64).to_le_bytes());
    nonce[8..16].copy_from_slice(&client.heartbeats.load(Ordering::Relaxed).to_le_bytes());
    out.extend_from_slice(b"hb:nonce:n {\"nonce\":\"");
    out.extend_from_slice(
        base64::engine::general_purpose::STANDARD
            .encode(nonce)
            .as_bytes(),
    );
    out.extend_from_slice(b"\"}\n");
}

impl SimClient {
    pub(crate) fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
}

/// Settings shared by every client of a fleet.
#[derive(Debug)]
struct FleetShared {
    epoch: Instant,
    server: SocketAddr,
    stop: CancellationToken,
    /// Bounds first connections in flight, so that starting thousands of
    /// clients does not run into the server's handshake timeout.
    ramp: Semaphore,
    /// Clients send nonces (`hb:nonce`, as `vigil-client` does by
    /// default), so that the server sends them nonce heartbeats.
    nonces: bool,
    /// Clients speak WebSocket inside the TLS (`server` is the WebSocket
    /// port).
    wss: bool,
}

/// Many simulated clients.
#[derive(Debug)]
pub(crate) struct Fleet {
    shared: Arc<FleetShared>,
    pub(crate) clients: Vec<Arc<SimClient>>,
    tasks: tokio::task::JoinSet<()>,
}

impl Fleet {
    pub(crate) fn new(
        server: SocketAddr,
        epoch: Instant,
        ramp: usize,
        nonces: bool,
        wss: bool,
    ) -> Fleet {
        Fleet {
            shared: Arc::new(FleetShared {
                epoch,
                server,
                wss,
                stop: CancellationToken::new(),
                ramp: Semaphore::new(ramp.max(1)),
                nonces,
            }),
            clients: Vec::new(),
            tasks: tokio::task::JoinSet::new(),
        }
    }

    pub(crate) fn epoch(&self) -> Instant {
        self.shared.epoch
    }

    /// Starts one client task per identity.
    pub(crate) fn add(&mut self, identities: &[ClientIdentity]) {
        for identity in identities {
            let client = Arc::new(SimClient {
                index: self.clients.len(),
                identity: identity.clone(),
                syncs: AtomicU64::new(0),
                last_sync_ns: AtomicU64::new(0),
                failed_attempts: AtomicU64::new(0),
                commands: AtomicU64::new(0),
                last_ack_ns: AtomicU64::new(0),
                heartbeats: AtomicU64::new(0),
                heartbeat_bytes: AtomicU64::new(0),
                connected: AtomicBool::new(false),
            });
            self.clients.push(client.clone());
            self.tasks.spawn(run(client, self.shared.clone()));
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.clients.len()
    }

    pub(crate) fn connected(&self) -> usize {
        self.clients.iter().filter(|c| c.is_connected()).count()
    }

    /// Waits until every client is connected, printing progress; fails
    /// after `limit`.
    pub(crate) async fn wait_connected(&self, what: &str, limit: Duration) -> anyhow::Result<()> {
        let t0 = Instant::now();
        let mut last_print = Instant::now();
        loop {
            let n = self.connected();
            if n == self.len() {
                eprintln!(
                    "  {what}: {n}/{} connected in {:.1} s",
                    self.len(),
                    t0.elapsed().as_secs_f64()
                );
                return Ok(());
            }
            if last_print.elapsed() >= Duration::from_secs(1) {
                eprintln!("  {what}: {n}/{} connected", self.len());
                last_print = Instant::now();
            }
            anyhow::ensure!(
                t0.elapsed() < limit,
                "{what}: only {n} of {} clients connected within {limit:?}",
                self.len()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether its clients send nonces.
    pub(crate) fn sends_nonces(&self) -> bool {
        self.shared.nonces
    }

    /// Total bytes of heartbeat frames received by the fleet.
    pub(crate) fn heartbeat_bytes(&self) -> u64 {
        self.clients
            .iter()
            .map(|c| c.heartbeat_bytes.load(Ordering::Relaxed))
            .sum()
    }

    /// Total heartbeats received by the fleet.
    pub(crate) fn heartbeats(&self) -> u64 {
        self.clients
            .iter()
            .map(|c| c.heartbeats.load(Ordering::Relaxed))
            .sum()
    }

    /// Closes every connection and waits for the tasks.
    pub(crate) async fn stop(mut self) {
        self.shared.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// A client's life: connect, serve, and reconnect with backoff.
async fn run(client: Arc<SimClient>, shared: Arc<FleetShared>) {
    let backoff = Backoff::default();
    let mut attempt: u32 = 0;
    let mut first = true;
    loop {
        let permit = if first {
            tokio::select! {
                () = shared.stop.cancelled() => return,
                p = shared.ramp.acquire() => p.ok(),
            }
        } else {
            None
        };
        first = false;
        let synced = tokio::select! {
            () = shared.stop.cancelled() => return,
            r = session(&client, &shared, permit) => r,
        };
        client.connected.store(false, Ordering::Relaxed);
        if synced {
            attempt = 0;
        } else {
            client.failed_attempts.fetch_add(1, Ordering::Relaxed);
        }
        let delay = backoff.delay(attempt, &mut rand::rng());
        attempt = attempt.saturating_add(1);
        tokio::select! {
            () = shared.stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// One connection; returns whether it got as far as a completed sync.
async fn session(
    client: &SimClient,
    shared: &FleetShared,
    ramp: Option<tokio::sync::SemaphorePermit<'_>>,
) -> bool {
    let connect = connect_tls(
        client.identity.config.clone(),
        source_address(client.index),
        shared.server,
        None,
    );
    let stream = match tokio::time::timeout(SETUP_TIMEOUT, connect).await {
        Ok(Ok(stream)) => stream,
        _ => return false,
    };
    if shared.wss {
        let url: vigil_ws::WsUrl = match format!("wss://{}/vigil", shared.server).parse() {
            Ok(url) => url,
            Err(_) => return false,
        };
        let upgrade = vigil_ws::connect(stream, &url, Limits::default().server_to_client);
        match tokio::time::timeout(SETUP_TIMEOUT, upgrade).await {
            Ok(Ok(ws)) => attached(client, shared, ramp, ws).await,
            _ => false,
        }
    } else {
        attached(client, shared, ramp, stream).await
    }
}

/// The rest of a session on a connected stream: admission, sync, serving.
async fn attached<S: AsyncRead + AsyncWrite + Unpin>(
    client: &SimClient,
    shared: &FleetShared,
    ramp: Option<tokio::sync::SemaphorePermit<'_>>,
    stream: S,
) -> bool {
    let setup = async {
        let mut conn = Conn::new(stream);
        conn.admit().await?;
        conn.sync().await?;
        anyhow::Ok(conn)
    };
    let conn = match tokio::time::timeout(SETUP_TIMEOUT, setup).await {
        Ok(Ok(conn)) => conn,
        _ => return false,
    };
    drop(ramp);
    client.syncs.fetch_add(1, Ordering::Relaxed);
    client
        .last_sync_ns
        .store(nanos_since(shared.epoch), Ordering::Relaxed);
    client.connected.store(true, Ordering::Relaxed);
    let _ = serve(client, shared, conn).await;
    true
}

/// Reads frames until the connection ends: answers each `cmd:exec` with
/// a `cmd:ack` at once, counts heartbeats, pings when idle.
///
/// Frames are split and read here with as little work as a client can do
/// (the header, and the command id found by a scan of the payload, with a
/// full JSON parse only if the scan fails): on two cores shared with the
/// server, a client's own costs would otherwise be most of what is
/// measured.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    client: &SimClient,
    shared: &FleetShared,
    conn: Conn<S>,
) -> anyhow::Result<()> {
    // Frames the set-up read past are still in the codec's buffer; the
    // stream is whole again (no lock between halves).
    let Conn { frames, writer } = conn;
    let parts = frames.into_parts();
    let mut buf = parts.read_buf;
    let mut stream = parts.io.unsplit(writer);
    let mut out = Vec::with_capacity(256);
    let mut last_write = Instant::now();
    let mut pings: u64 = 0;
    // One timer, moved only when it fires.
    let idle = tokio::time::sleep_until((last_write + IDLE_PING).into());
    tokio::pin!(idle);
    if shared.nonces {
        push_nonce(client, &mut out);
    }
    loop {
        let mut acked = false;
        while let Some(end) = buf.iter().position(|&b| b == b'\n') {
            if answer(client, shared.nonces, &buf[..end], &mut out) {
                client.commands.fetch_add(1, Ordering::Relaxed);
                acked = true;
            }
            buf.advance(end + 1);
        }
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
            if acked {
                client
                    .last_ack_ns
                    .store(nanos_since(shared.epoch), Ordering::Relaxed);
            }
            last_write = Instant::now();
        }
        tokio::select! {
            read = stream.read_buf(&mut buf) => {
                if read? == 0 {
                    return Ok(());
                }
            }
            () = &mut idle => {
                let due = last_write + IDLE_PING;
                if Instant::now() >= due {
                    pings += 1;
                    stream.write_all(format!("sys:ping:i{pings} {{}}\n").as_bytes()).await?;
                    last_write = Instant::now();
                }
                idle.as_mut().reset((last_write + IDLE_PING).into());
            }
        };
    }
}

/// Appends the acknowledgement of a `cmd:exec` line to `out` and says
/// so; counts a heartbeat (and answers it with a new nonce); ignores
/// anything else.
fn answer(client: &SimClient, nonces: bool, line: &[u8], out: &mut Vec<u8>) -> bool {
    let Some(space) = line.iter().position(|&b| b == b' ') else {
        return false;
    };
    let (header, payload) = (&line[..space], &line[space + 1..]);
    if header.starts_with(b"hb:beat:") {
        client.heartbeats.fetch_add(1, Ordering::Relaxed);
        client
            .heartbeat_bytes
            .fetch_add(line.len() as u64 + 1, Ordering::Relaxed);
        if nonces {
            push_nonce(client, out);
        }
        return false;
    }
    let Some(reference) = header.strip_prefix(b"cmd:exec:") else {
        return false;
    };
    let command_id = scan_command_id(payload).or_else(|| {
        let v: serde_json::Value = serde_json::from_slice(payload).ok()?;
        v.get("command_id")?.as_str().map(str::to_owned)
    });
    let ack = Ack {
        command_id,
        status: AckStatus::Done,
        code: None,
        detail: String::new(),
        result: None,
    };
    let start = out.len();
    out.extend_from_slice(b"cmd:ack:");
    out.extend_from_slice(reference);
    out.push(b' ');
    if serde_json::to_writer(&mut *out, &ack).is_err() {
        out.truncate(start);
        return false;
    }
    out.push(b'\n');
    true
}

/// `"command_id":"<id>"` in compact JSON, when the id has no escapes.
fn scan_command_id(payload: &[u8]) -> Option<String> {
    const KEY: &[u8] = b"\"command_id\":\"";
    let start = payload.windows(KEY.len()).position(|w| w == KEY)? + KEY.len();
    let rest = &payload[start..];
    let len = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    if rest[len] != b'"' {
        return None;
    }
    String::from_utf8(rest[..len].to_vec()).ok()
}

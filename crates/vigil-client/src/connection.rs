//! One live connection to a server: requests matched to responses by REF,
//! broadcasts delivered separately.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt as _};
use rustls::pki_types::ServerName;
use sha2::{Digest as _, Sha256};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_rustls::TlsConnector;
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use vigil_auth::Fingerprint;
use vigil_proto::{ClientRequest, CodecError, Frame, FrameCodec, ModuleInfo, ServerMessage};

use crate::{ClientConfig, ClientError};

/// How many broadcasts are held for a consumer that has not read them yet.
const BROADCAST_BUFFER: usize = 1024;

type Pending = Mutex<HashMap<String, oneshot::Sender<ServerMessage>>>;

struct Inner {
    pending: Pending,
    /// Set once, when the connection ends.
    closed: watch::Sender<Option<ClientError>>,
    cancel: CancellationToken,
    next_ref: AtomicU64,
}

impl Inner {
    fn pending(&self) -> MutexGuard<'_, HashMap<String, oneshot::Sender<ServerMessage>>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn close(&self, reason: ClientError) {
        self.closed.send_if_modified(|slot| {
            if slot.is_none() {
                *slot = Some(reason);
                true
            } else {
                false
            }
        });
        self.cancel.cancel();
        // Dropping the senders wakes every waiting request.
        self.pending().clear();
    }

    fn reason(&self) -> ClientError {
        self.closed
            .borrow()
            .clone()
            .unwrap_or(ClientError::Disconnected("connection closed".into()))
    }
}

/// A connection to a vigil server, admitted by it.
///
/// [`Connection::connect`] returns only after the server has answered a
/// first request, so that a client whose certificate the server refused
/// learns it here (in TLS 1.3 the refusal arrives after the handshake).
pub struct Connection {
    inner: Arc<Inner>,
    requests: mpsc::Sender<Frame>,
    broadcasts: Option<mpsc::Receiver<(String, ServerMessage)>>,
    server: Fingerprint,
    peer: SocketAddr,
    request_timeout: Duration,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.peer)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.inner.cancel.cancel();
    }
}

fn server_name(host: &str) -> ServerName<'static> {
    ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .unwrap_or_else(|_| ServerName::try_from("vigil").expect("static name is valid"))
}

impl Connection {
    /// Connects, completes the TLS handshake with the pinned server, and
    /// checks that the server admitted this client.
    pub async fn connect(config: &ClientConfig) -> Result<Connection, ClientError> {
        let tls = vigil_auth::client_config(&config.identity, config.server_fingerprint)?;
        let host = config
            .server
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(&config.server);
        let tcp = tokio::time::timeout(config.connect_timeout, TcpStream::connect(&config.server))
            .await
            .map_err(|_| ClientError::Timeout("TCP connect"))?
            .map_err(|source| ClientError::Connect {
                server: config.server.clone(),
                source: Arc::new(source),
            })?;
        let _ = tcp.set_nodelay(true);
        let peer = tcp.peer_addr().map_err(|source| ClientError::Connect {
            server: config.server.clone(),
            source: Arc::new(source),
        })?;
        let connector = TlsConnector::from(tls);
        let stream = tokio::time::timeout(
            config.connect_timeout,
            connector.connect(server_name(host), tcp),
        )
        .await
        .map_err(|_| ClientError::Timeout("TLS handshake"))?
        .map_err(ClientError::from_io)?;

        let (reader, writer) = tokio::io::split(stream);
        let (closed, _) = watch::channel(None);
        let inner = Arc::new(Inner {
            pending: Mutex::new(HashMap::new()),
            closed,
            cancel: CancellationToken::new(),
            next_ref: AtomicU64::new(1),
        });
        let (req_tx, req_rx) = mpsc::channel::<Frame>(256);
        let (bc_tx, bc_rx) = mpsc::channel::<(String, ServerMessage)>(BROADCAST_BUFFER);
        tokio::spawn(read_loop(
            inner.clone(),
            FramedRead::new(reader, FrameCodec::client(&config.limits)),
            bc_tx,
            config.liveness_timeout,
        ));
        tokio::spawn(write_loop(
            inner.clone(),
            FramedWrite::new(writer, FrameCodec::client(&config.limits)),
            req_rx,
            config.ping_interval,
        ));
        let conn = Connection {
            inner,
            requests: req_tx,
            broadcasts: Some(bc_rx),
            server: config.server_fingerprint,
            peer,
            request_timeout: config.request_timeout,
        };
        // The first read tells whether the server admitted us.
        match conn.request(ClientRequest::Ping).await? {
            ServerMessage::Pong => Ok(conn),
            other => Err(ClientError::Protocol(format!(
                "expected sys:pong, got {}",
                other.to_frame("-")
            ))),
        }
    }

    /// The server's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The server's (pinned) fingerprint.
    pub fn server_fingerprint(&self) -> Fingerprint {
        self.server
    }

    /// Sends a request and waits for the response with the same REF. An
    /// `err` response is returned as [`ClientError::Server`].
    pub async fn request(&self, request: ClientRequest) -> Result<ServerMessage, ClientError> {
        let reference = format!("c{}", self.inner.next_ref.fetch_add(1, Ordering::Relaxed));
        let (tx, rx) = oneshot::channel();
        self.inner.pending().insert(reference.clone(), tx);
        if self.inner.cancel.is_cancelled() {
            self.inner.pending().remove(&reference);
            return Err(self.inner.reason());
        }
        // One deadline for queueing and answering: a full outgoing queue
        // (a peer that stopped reading) cannot hold the caller forever.
        let deadline = tokio::time::Instant::now() + self.request_timeout;
        let queued =
            tokio::time::timeout_at(deadline, self.requests.send(request.to_frame(&reference)))
                .await;
        if !matches!(queued, Ok(Ok(()))) {
            self.inner.pending().remove(&reference);
            return Err(match queued {
                Err(_) => ClientError::Timeout("outgoing queue"),
                _ => self.inner.reason(),
            });
        }
        let answer = tokio::time::timeout_at(deadline, rx).await;
        match answer {
            Ok(Ok(ServerMessage::Error(body))) => Err(ClientError::Server(body)),
            Ok(Ok(msg)) => Ok(msg),
            Ok(Err(_)) => Err(self.inner.reason()),
            Err(_) => {
                self.inner.pending().remove(&reference);
                Err(ClientError::Timeout("response"))
            }
        }
    }

    /// Asks for the list of loaded modules.
    pub async fn sync(&self) -> Result<Vec<ModuleInfo>, ClientError> {
        match self.request(ClientRequest::Sync).await? {
            ServerMessage::SyncResp { modules } => Ok(modules),
            other => Err(ClientError::Protocol(format!(
                "expected mod:sync_resp, got {}",
                other.to_frame("-")
            ))),
        }
    }

    /// The next message the server sent on its own (a broadcast, a
    /// command, a heartbeat), with its REF; `None` once the connection
    /// ended and every one was read, or if the receiver was taken.
    pub async fn next_broadcast(&mut self) -> Option<(String, ServerMessage)> {
        self.broadcasts.as_mut()?.recv().await
    }

    /// Takes the receiver of [`Connection::next_broadcast`], so that the
    /// connection can be shared (`Arc<Connection>`) while another task
    /// follows what the server pushes.
    pub fn take_broadcasts(&mut self) -> Option<mpsc::Receiver<(String, ServerMessage)>> {
        self.broadcasts.take()
    }

    /// Queues a frame that expects no answer (an acknowledgement, a
    /// report). Fails if the connection is closed or its queue is full.
    pub fn notify(&self, request: ClientRequest, reference: &str) -> Result<(), ClientError> {
        if self.inner.cancel.is_cancelled() {
            return Err(self.inner.reason());
        }
        self.requests
            .try_send(request.to_frame(reference))
            .map_err(|_| ClientError::Disconnected("outgoing queue full or closed".into()))
    }

    /// Waits until everything queued before it has reached the server (a
    /// ping round trip: frames are sent in order).
    pub async fn flush(&self) -> Result<(), ClientError> {
        self.request(ClientRequest::Ping).await.map(|_| ())
    }

    /// Fetches a module's bytes and checks them: their SHA-256 must equal
    /// the sum in the response and, if given, `expected` (the sum from the
    /// listing or the broadcast). Returns what was verified.
    pub async fn verify(
        &self,
        module: &str,
        expected: Option<&str>,
    ) -> Result<ModuleInfo, ClientError> {
        let reply = self
            .request(ClientRequest::Verify {
                module: module.to_owned(),
            })
            .await?;
        let ServerMessage::VerifyResp {
            module: name,
            content,
            sum,
            desc,
        } = reply
        else {
            return Err(ClientError::Protocol(format!(
                "expected mod:verify_resp, got {}",
                reply.to_frame("-")
            )));
        };
        let integrity = |detail: String| ClientError::Integrity {
            module: module.to_owned(),
            detail,
        };
        if name != module {
            return Err(integrity(format!("the server answered for {name:?}")));
        }
        let computed = hex::encode(Sha256::digest(&content));
        if computed != sum.to_ascii_lowercase() {
            return Err(integrity(format!(
                "received bytes hash to {computed}, the server claims {sum}"
            )));
        }
        if let Some(expected) = expected
            && !expected.eq_ignore_ascii_case(&computed)
        {
            return Err(integrity(format!(
                "received bytes hash to {computed}, the announced sum was {expected}"
            )));
        }
        Ok(ModuleInfo {
            name,
            sum: computed,
            size: content.len() as u64,
            desc,
        })
    }

    /// Runs a module the client verified, sending the verified `sum`. The
    /// server refuses with `stale_sum` if the module changed since.
    pub async fn exec(&self, module: &str, args: &str, sum: &str) -> Result<String, ClientError> {
        let reply = self
            .request(ClientRequest::Exec {
                module: module.to_owned(),
                args: args.to_owned(),
                sum: sum.to_owned(),
            })
            .await?;
        match reply {
            ServerMessage::ExecResp { result, .. } => Ok(result),
            other => Err(ClientError::Protocol(format!(
                "expected mod:exec_resp, got {}",
                other.to_frame("-")
            ))),
        }
    }

    /// Resolves when the connection ends, with the reason. The future does
    /// not borrow the connection, so it can be awaited alongside
    /// [`Connection::next_broadcast`].
    pub fn closed(&self) -> impl std::future::Future<Output = ClientError> + Send + 'static {
        let inner = self.inner.clone();
        let mut rx = inner.closed.subscribe();
        async move {
            let _ = rx.wait_for(Option::is_some).await;
            inner.reason()
        }
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.inner
            .close(ClientError::Disconnected("closed by this client".into()));
    }
}

async fn read_loop<R>(
    inner: Arc<Inner>,
    mut frames: FramedRead<R, FrameCodec>,
    broadcasts: mpsc::Sender<(String, ServerMessage)>,
    liveness: Duration,
) where
    R: tokio::io::AsyncRead + Unpin,
{
    let reason = loop {
        let next = tokio::select! {
            biased;
            () = inner.cancel.cancelled() => break ClientError::Disconnected("closed by this client".into()),
            next = tokio::time::timeout(liveness, frames.next()) => next,
        };
        let frame = match next {
            Err(_) => {
                break ClientError::Disconnected(format!(
                    "server silent for {liveness:?}: assuming the connection is dead"
                ));
            }
            Ok(None) => break ClientError::Disconnected("server closed the connection".into()),
            Ok(Some(Err(CodecError::Io(e)))) => break ClientError::from_io(e),
            Ok(Some(Err(e))) => break ClientError::Protocol(e.to_string()),
            Ok(Some(Ok(Err(bad)))) => {
                tracing::warn!(error = %bad, "malformed frame from server");
                continue;
            }
            Ok(Some(Ok(Ok(frame)))) => frame,
        };
        let msg = match ServerMessage::from_frame(&frame) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(frame = %frame, error = %e, "frame from server not understood");
                continue;
            }
        };
        if msg.is_broadcast() {
            if broadcasts
                .try_send((frame.reference().to_owned(), msg))
                .is_err()
            {
                tracing::warn!("broadcast dropped: the consumer is not keeping up");
            }
            continue;
        }
        let waiter = inner.pending().remove(frame.reference());
        match waiter {
            Some(tx) => {
                let _ = tx.send(msg);
            }
            None => match msg {
                ServerMessage::Pong => {}
                ServerMessage::Error(body) => {
                    tracing::warn!(reference = frame.reference(), error = %body, "error from server");
                }
                other => {
                    tracing::debug!(frame = %other.to_frame(frame.reference()), "unsolicited frame")
                }
            },
        }
    };
    inner.close(reason);
}

async fn write_loop<W>(
    inner: Arc<Inner>,
    mut sink: FramedWrite<W, FrameCodec>,
    mut requests: mpsc::Receiver<Frame>,
    ping_interval: Duration,
) where
    W: tokio::io::AsyncWrite + Unpin,
{
    let mut ping =
        tokio::time::interval_at(tokio::time::Instant::now() + ping_interval, ping_interval);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut pings = 0u64;
    loop {
        let frame = tokio::select! {
            biased;
            () = inner.cancel.cancelled() => break,
            next = requests.recv() => match next {
                Some(frame) => frame,
                None => break,
            },
            _ = ping.tick() => {
                pings += 1;
                ClientRequest::Ping.to_frame(&format!("ping{pings}"))
            }
        };
        // A peer that stopped reading must not keep this task (and the
        // socket) alive once the connection is given up.
        let sent = tokio::select! {
            biased;
            () = inner.cancel.cancelled() => break,
            sent = sink.send(frame) => sent,
        };
        if let Err(e) = sent {
            let reason = match e {
                CodecError::Io(e) => ClientError::from_io(e),
                other => ClientError::Protocol(other.to_string()),
            };
            inner.close(reason);
            return;
        }
        ping.reset();
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), SinkExt::<Frame>::close(&mut sink)).await;
}

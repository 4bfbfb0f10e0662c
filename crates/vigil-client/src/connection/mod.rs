//! One live connection to a server: requests matched to responses by REF,
//! what the server pushes delivered separately, by urgency.
//!
//! Nothing the server pushes is dropped without the server learning it:
//! heartbeats go to a slot that keeps the newest (an older beat is
//! superseded, not lost: only the newest can feed the failsafe), emergency
//! commands to a lane of their own that nothing else waits in front of,
//! other commands to a bounded queue past which the connection itself
//! answers `busy` (the command was not checked, so its id is not spent and
//! it can be sent again), and module broadcasts to a queue past which the
//! consumer is told to sync again.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt as _};
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;
use vigil_auth::Fingerprint;
use vigil_proto::{
    Ack, AckStatus, ClientRequest, CodecError, Frame, FrameCodec, ModuleInfo, ServerMessage,
};

use crate::{ClientConfig, ClientError};

/// How many module broadcasts are held for a consumer that has not read
/// them yet; past it the consumer is told to sync again.
const BROADCAST_BUFFER: usize = 1024;
/// How many commands wait for the consumer; past it the connection answers
/// `busy`. A server keeps at most its window (64 by default) unanswered.
pub const COMMAND_QUEUE: usize = 256;
/// How many emergency commands (`SHUTDOWN_NOW`) wait for the consumer; past
/// it the connection answers `busy`.
const URGENT_QUEUE: usize = 64;

/// A pushed frame (a command, a heartbeat): its REF and its JSON object.
pub type PushedBody = (String, Map<String, Value>);

/// What the server pushes, by lane: see [`Connection::take_pushed`].
#[derive(Debug)]
#[non_exhaustive]
pub struct Pushed {
    /// The newest heartbeat, with its REF (`None` until one arrives). An
    /// older one not read yet is superseded by a newer one.
    pub heartbeats: watch::Receiver<Option<PushedBody>>,
    /// Emergency commands (`SHUTDOWN_NOW`), which never wait behind the
    /// others.
    pub urgent: mpsc::Receiver<PushedBody>,
    /// Every other command, at most [`COMMAND_QUEUE`] waiting.
    pub commands: mpsc::Receiver<PushedBody>,
    /// Module broadcasts and anything else pushed.
    pub events: mpsc::Receiver<(String, ServerMessage)>,
}

/// The senders of [`Pushed`], held by the read loop.
struct Lanes {
    heartbeats: watch::Sender<Option<PushedBody>>,
    urgent: mpsc::Sender<PushedBody>,
    commands: mpsc::Sender<PushedBody>,
    events: mpsc::Sender<(String, ServerMessage)>,
}

type Pending = Mutex<HashMap<String, oneshot::Sender<ServerMessage>>>;

struct Inner {
    pending: Pending,
    /// Set once, when the connection ends.
    closed: watch::Sender<Option<ClientError>>,
    cancel: CancellationToken,
    next_ref: AtomicU64,
    /// Set when a broadcast could not be queued: the consumer should ask
    /// for the module list again.
    resync: std::sync::atomic::AtomicBool,
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
    pushed: Option<Pushed>,
    server: Fingerprint,
    peer: SocketAddr,
    request_timeout: Duration,
    module_trust: Option<vigil_command::ModuleTrust>,
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

impl Connection {
    /// Connects, completes the TLS handshake with the pinned server, and
    /// checks that the server admitted this client.
    pub async fn connect(config: &ClientConfig) -> Result<Connection, ClientError> {
        let pins = config.pins();
        let tls = vigil_auth::client_config_any(&config.identity, &pins).unwrap_or_else(|| {
            vigil_auth::client_config(&config.identity, config.server_fingerprint)
        })?;
        let (stream, peer, server) = dial::dial(config, tls).await?;

        let (reader, writer) = tokio::io::split(stream);
        let (closed, _) = watch::channel(None);
        let inner = Arc::new(Inner {
            pending: Mutex::new(HashMap::new()),
            closed,
            cancel: CancellationToken::new(),
            next_ref: AtomicU64::new(1),
            resync: std::sync::atomic::AtomicBool::new(false),
        });
        let (req_tx, req_rx) = mpsc::channel::<Frame>(256);
        let (hb_tx, hb_rx) = watch::channel(None);
        let (urgent_tx, urgent_rx) = mpsc::channel(URGENT_QUEUE);
        let (cmd_tx, cmd_rx) = mpsc::channel(COMMAND_QUEUE);
        let (ev_tx, ev_rx) = mpsc::channel(BROADCAST_BUFFER);
        let lanes = Lanes {
            heartbeats: hb_tx,
            urgent: urgent_tx,
            commands: cmd_tx,
            events: ev_tx,
        };
        tokio::spawn(read_loop(
            inner.clone(),
            FramedRead::new(reader, FrameCodec::client(&config.limits)),
            lanes,
            req_tx.clone(),
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
            pushed: Some(Pushed {
                heartbeats: hb_rx,
                urgent: urgent_rx,
                commands: cmd_rx,
                events: ev_rx,
            }),
            server,
            peer,
            request_timeout: config.request_timeout,
            module_trust: config.module_trust.clone(),
        };
        // The first read tells whether the server admitted us.
        match conn.request(ClientRequest::Ping).await? {
            ServerMessage::Pong => {}
            other => {
                return Err(ClientError::Protocol(format!(
                    "expected sys:pong, got {}",
                    other.to_frame("-")
                )));
            }
        }
        if let Some(hello) = &config.hello {
            // Where this client stands, for the server's routing. A server
            // that does not know `sys:hello` answers an error: it routes by
            // fingerprint only, and this client still checks every command.
            match conn.request(ClientRequest::Hello(hello.clone())).await {
                Ok(_) => {}
                Err(ClientError::Server(body)) => {
                    tracing::debug!(error = %body, "the server does not take sys:hello");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(conn)
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

    /// The next module broadcast (or other event the server pushed), with
    /// its REF; `None` once the connection ended and every one was read,
    /// or if the lanes were taken.
    pub async fn next_broadcast(&mut self) -> Option<(String, ServerMessage)> {
        self.pushed.as_mut()?.events.recv().await
    }

    /// Takes the lanes of what the server pushes ([`Pushed`]), so that the
    /// connection can be shared (`Arc<Connection>`) while another task
    /// follows them.
    pub fn take_pushed(&mut self) -> Option<Pushed> {
        self.pushed.take()
    }

    /// Whether a module broadcast had to be dropped since the last call
    /// (the consumer did not keep up): if so, ask for the module list
    /// again. The flag is cleared.
    pub fn take_resync(&self) -> bool {
        self.inner.resync.swap(false, Ordering::Relaxed)
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

    /// Queues an acknowledgement, waiting (at most the request timeout) for
    /// room in the outgoing queue rather than dropping it.
    pub async fn send_ack(&self, ack: Ack, reference: &str) -> Result<(), ClientError> {
        if self.inner.cancel.is_cancelled() {
            return Err(self.inner.reason());
        }
        let frame = ClientRequest::Ack(ack).to_frame(reference);
        match tokio::time::timeout(self.request_timeout, self.requests.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(self.inner.reason()),
            Err(_) => Err(ClientError::Timeout("outgoing queue")),
        }
    }

    /// Waits until everything queued before it has reached the server (a
    /// ping round trip: frames are sent in order).
    pub async fn flush(&self) -> Result<(), ClientError> {
        self.request(ClientRequest::Ping).await.map(|_| ())
    }

    /// Fetches a module's bytes and checks them: their SHA-256 must equal
    /// the sum in the response and, if given, `expected` (the sum from the
    /// listing or the broadcast). With module keys
    /// ([`ClientConfig::module_trust`]), the manifest that came with the
    /// bytes must verify for them too ([`ClientError::Manifest`] otherwise),
    /// and the module's version mark is raised once it does. Returns what
    /// was verified.
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
            manifest,
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
        let size = content.len() as u64;
        drop(content);
        if let Some(trust) = &self.module_trust {
            check_manifest(trust, &name, manifest.as_ref(), &computed, size).await?;
        }
        Ok(ModuleInfo {
            name,
            sum: computed,
            size,
            desc,
            manifest,
            state: None,
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

    /// Whether the connection has ended.
    pub fn is_closed(&self) -> bool {
        self.inner.cancel.is_cancelled()
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.inner
            .close(ClientError::Disconnected("closed by this client".into()));
    }
}

/// Checks a module's manifest for the bytes just verified (their sum and
/// size), then raises its version mark (a file write, off the async
/// threads). Nothing is recorded for a manifest that does not verify.
async fn check_manifest(
    trust: &vigil_command::ModuleTrust,
    module: &str,
    manifest: Option<&Map<String, Value>>,
    sum: &str,
    size: u64,
) -> Result<(), ClientError> {
    let refused = |r: vigil_command::ManifestRefusal| ClientError::Manifest {
        module: module.to_owned(),
        code: r.code(),
        detail: r.to_string(),
    };
    let verified = trust
        .check_map(manifest, module, sum, size, std::time::SystemTime::now())
        .map_err(refused)?;
    let versions = trust.versions.clone();
    let version = verified.version();
    tokio::task::spawn_blocking(move || versions.record(&verified))
        .await
        .map_err(|e| ClientError::Manifest {
            module: module.to_owned(),
            code: "manifest_store_unavailable",
            detail: format!("the version mark could not be recorded: {e}"),
        })?
        .map_err(refused)?;
    tracing::debug!(
        module,
        version,
        "module manifest verified; version mark recorded"
    );
    Ok(())
}

mod dial;
mod io;

use io::{read_loop, write_loop};

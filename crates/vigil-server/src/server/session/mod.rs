//! One client connection, served by one task.
//!
//! The task owns the TLS stream. It reads frames and answers each one,
//! writes what other tasks queue for the client (heartbeats, broadcasts,
//! commands: [`crate::outbound`]), runs modules in batches on blocking
//! threads and writes their answers, and keeps the deliveries it wrote
//! until the client acknowledges them. Everything it has to write goes out
//! together: one TLS record and one `write` per batch, not per frame.
//!
//! Bounds: input is read only while the answers waiting to be written stay
//! under the byte limit, at most two module bodies wait to be written, and
//! module runs in flight are capped; a client that leaves writes blocked
//! past the stall timeout, or lets its queue pass the byte limit, is a slow
//! consumer and is disconnected. A session silent past the idle timeout is
//! closed.

use std::collections::VecDeque;
use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Buf as _, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::codec::Decoder as _;
use tracing::Instrument as _;
use vigil_auth::Fingerprint;
use vigil_modules::{ExecBatch, ExecCall, ExecError, ExecOutput, ModuleSummary};
use vigil_proto::{
    AckStatus, ClientRequest, CodecError, ErrorBody, ErrorCode, Frame, FrameCodec, FrameError,
    ModuleInfo, ServerMessage,
};

use super::Shared;
use super::beats::{SharedBeat, lock_beat};
use crate::delivery::{ACK_AUDIT_DELAY, Awaited, Outcome};
use crate::outbound::{Item, Outbound, SharedOutbound, Status};

/// Bytes read from the TLS stream at a time.
const READ_CHUNK: usize = 8 * 1024;
/// Most slices handed to one vectored write (one TLS record, one syscall).
const WRITE_SLICES: usize = 64;
/// Most bytes taken from the queue before writing.
const WRITE_BATCH: usize = 64 * 1024;
/// Most module calls in one batch.
const MAX_BATCH: usize = 64;
/// Module calls of one session sent and not answered, at most: with the
/// 1 MiB cap on a module's result, what unwritten answers can hold.
const MAX_CALLS_IN_FLIGHT: usize = 1024;
/// Module bodies (`mod:verify_resp`) waiting to be written, at most;
/// reading pauses at this many.
const MAX_BODIES: usize = 2;
/// Commands written to a client and not yet acknowledged, at most, counting
/// emergency commands (which do not wait for the window); past it the
/// oldest is settled as [`Outcome::Unanswered`].
const MAX_AWAITING: usize = 4096;

/// What the server knows about a connected client.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Server-unique session number.
    pub id: u64,
    /// Fingerprint of the client's key.
    pub fingerprint: Fingerprint,
    /// The client's address.
    pub peer: SocketAddr,
    /// When the handshake completed.
    pub connected_at: SystemTime,
    /// Where the client says it stands (`sys:hello`): its agent id and
    /// tree path, which the server routes by. `None` until it says.
    pub place: Option<vigil_proto::Hello>,
    /// The client's clock offset from this server (server minus client,
    /// milliseconds), as the client last measured and said it.
    pub clock_skew_ms: Option<i64>,
    /// Whether the client sends nonces (its heartbeats are
    /// `vigil-heartbeat-v2`, fresh without a shared clock).
    pub nonce_heartbeats: bool,
    /// Which listener the client came in by.
    pub transport: super::Transport,
}

/// The registry's handle on a live session.
#[derive(Debug)]
pub(crate) struct SessionHandle {
    pub(crate) info: SessionInfo,
    /// Its queue; cancelling it ends the session.
    pub(crate) out: SharedOutbound,
    /// What the client said in `sys:hello`, once it did.
    pub(crate) place: Arc<std::sync::OnceLock<vigil_proto::Hello>>,
    /// The client's latest nonce and the clock offset it said.
    pub(crate) beat: SharedBeat,
}

impl SessionHandle {
    /// The client's agent id, as it said (`None` before `sys:hello`).
    pub(crate) fn agent_id(&self) -> Option<&str> {
        self.place.get().and_then(|p| p.agent_id.as_deref())
    }

    /// Whether the client said it stands in the subtree at `path` (its
    /// tree path starts with it). A client that said nothing is in none.
    pub(crate) fn within(&self, path: &[String]) -> bool {
        self.candidate().within(path)
    }

    /// The session as target resolution sees it.
    pub(crate) fn candidate(&self) -> crate::route::Candidate<'_> {
        let place = self.place.get();
        crate::route::Candidate {
            fingerprint: &self.info.fingerprint,
            agent_id: place.and_then(|p| p.agent_id.as_deref()),
            tree_path: place.map(|p| p.tree_path.as_slice()),
        }
    }

    /// The info, with the place filled in.
    pub(crate) fn snapshot(&self) -> SessionInfo {
        let mut info = self.info.clone();
        info.place = self.place.get().cloned();
        let beat = lock_beat(&self.beat);
        info.clock_skew_ms = beat.skew_ms;
        info.nonce_heartbeats = beat.nonce.is_some();
        info
    }
}

/// Why a session ended.
#[derive(Debug)]
enum End {
    PeerClosed,
    Cancelled,
    Idle,
    TooLarge(usize),
    Io(std::io::Error),
    /// The queue passed its byte limit.
    QueueFull,
    /// Writes stayed blocked past the stall timeout.
    WriteStalled,
}

pub(crate) fn encode(msg: &ServerMessage, reference: &str) -> Bytes {
    Bytes::from(msg.to_frame(reference).to_bytes())
}

/// Runs a session on an established TLS stream until it ends.
///
/// The session's state is boxed before the future is made, so that the
/// task (alive as long as the connection) holds a pointer, not the state.
pub(crate) fn run<S>(
    shared: Arc<Shared>,
    stream: S,
    info: SessionInfo,
) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let span = tracing::info_span!(
        "session",
        session = info.id,
        client = %info.fingerprint,
        peer = %info.peer
    );
    let out = Arc::new(Outbound::new(shared.config.max_outbound_bytes));
    let session = Box::new(Session::new(shared, info, stream, out));
    async move {
        let mut session = session;
        let shared = session.shared.clone();
        shared.register(SessionHandle {
            info: session.info.clone(),
            out: session.queue.clone(),
            place: session.place.clone(),
            beat: session.beat.clone(),
        });
        // The fingerprint may have been revoked between the handshake and
        // the registration: the revocation sweep may have missed us.
        let end = if shared.config.trust.is_trusted(&session.info.fingerprint) {
            tracing::info!("client connected");
            session.serve().await
        } else {
            End::Cancelled
        };
        shared.deregister(session.info.id);
        session.log_end(&end);
        session.finish(&end).await;
    }
    .instrument(span)
}

/// One thing the session has to act on.
enum Event {
    Frame(Result<Frame, FrameError>),
    End(End),
}

/// A piece of output: a frame, or part of one (a shared module body).
#[derive(Debug)]
struct Chunk {
    bytes: Bytes,
    /// A module body shared with other replies (not counted in the byte
    /// limit; at most [`MAX_BODIES`] wait).
    body: bool,
}

struct Session<S> {
    shared: Arc<Shared>,
    info: SessionInfo,
    stream: S,
    codec: FrameCodec,
    /// Bytes read and not yet decoded; empty and unallocated when idle.
    rbuf: BytesMut,
    eof: bool,
    /// What other tasks queued for this client.
    queue: SharedOutbound,
    /// Output waiting to be written, in order.
    out: VecDeque<Chunk>,
    /// Bytes in `out`, module bodies excepted.
    out_bytes: usize,
    /// Module bodies in `out`.
    bodies: usize,
    /// Commands written (or about to be) and not acknowledged yet, with
    /// when they were taken from the queue.
    awaiting: VecDeque<(Instant, Awaited)>,
    /// What the client said in `sys:hello`.
    place: Arc<std::sync::OnceLock<vigil_proto::Hello>>,
    /// The client's latest nonce, which the next heartbeat covers.
    beat: SharedBeat,
    /// Module calls read but not started: they start together.
    calls: Vec<((String, String, Instant), ExecCall)>,
    /// Module runs in flight, answered by (REF, module).
    execs: Vec<ExecBatch<(String, String, Instant)>>,
    last_read: Instant,
    /// Since when writes have been blocked with output waiting.
    stalled_since: Option<Instant>,
}

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn new(shared: Arc<Shared>, info: SessionInfo, stream: S, queue: SharedOutbound) -> Self {
        let codec = FrameCodec::server(&shared.config.limits);
        Session {
            shared,
            info,
            stream,
            codec,
            rbuf: BytesMut::new(),
            eof: false,
            queue,
            out: VecDeque::new(),
            out_bytes: 0,
            bodies: 0,
            awaiting: VecDeque::new(),
            place: Arc::default(),
            beat: SharedBeat::default(),
            calls: Vec::new(),
            execs: Vec::new(),
            last_read: Instant::now(),
            stalled_since: None,
        }
    }

    /// Serves until the session ends, and says why.
    async fn serve(&mut self) -> End {
        let timer = tokio::time::sleep(self.shared.config.idle_timeout);
        tokio::pin!(timer);
        loop {
            let event = std::future::poll_fn(|cx| self.poll_event(cx, timer.as_mut())).await;
            match event {
                Event::Frame(Ok(frame)) => self.dispatch(&frame),
                Event::Frame(Err(bad)) => {
                    tracing::debug!(error = %bad, "malformed frame");
                    self.shared.stats.bad_frames.inc();
                    let body = ErrorBody::new(bad.code(), bad.to_string());
                    self.reply(&ServerMessage::Error(body), bad.reference().unwrap_or("-"));
                }
                Event::End(end) => return end,
            }
        }
    }

    /// Whether another frame may be taken in: the client's answers must
    /// not pile up unwritten.
    fn may_read(&self) -> bool {
        self.calls.len() < MAX_BATCH
            && self.bodies < MAX_BODIES
            && self.out_bytes < self.shared.config.max_outbound_bytes
    }

    fn poll_event(&mut self, cx: &mut Context<'_>, mut timer: Pin<&mut Sleep>) -> Poll<Event> {
        loop {
            // A frame already buffered comes first: answers to a burst of
            // requests are written together after it.
            let decoded = self.may_read();
            if decoded {
                match self.codec.decode(&mut self.rbuf) {
                    Ok(Some(item)) => return Poll::Ready(Event::Frame(item)),
                    Ok(None) => {}
                    Err(CodecError::FrameTooLarge { limit }) => {
                        self.rbuf = BytesMut::new();
                        return Poll::Ready(Event::End(End::TooLarge(limit)));
                    }
                    Err(CodecError::Io(e)) => return Poll::Ready(Event::End(End::Io(e))),
                    Err(other) => {
                        return Poll::Ready(Event::End(End::Io(std::io::Error::other(other))));
                    }
                }
                if self.eof {
                    return Poll::Ready(match self.codec.decode_eof(&mut self.rbuf) {
                        Ok(Some(item)) => Event::Frame(item),
                        _ => Event::End(End::PeerClosed),
                    });
                }
                if self.rbuf.is_empty() && self.rbuf.capacity() > 0 {
                    // An idle session keeps no read buffer.
                    self.rbuf = BytesMut::new();
                }
            }
            self.start_calls();
            self.poll_execs(cx);
            let (left, status) = self.take_queued(cx);
            match status {
                Status::Open => {}
                Status::Overflowed => return Poll::Ready(Event::End(End::QueueFull)),
                Status::Cancelled => return Poll::Ready(Event::End(End::Cancelled)),
            }
            // A command's answer is due by the ack timeout: the timer must
            // fire by then (it moves only when it fires).
            if let Some((since, _)) = self.awaiting.front() {
                let due = *since + self.shared.config.ack_timeout;
                if timer.deadline() > due {
                    timer.as_mut().reset(due);
                }
            }
            match self.poll_write_out(cx) {
                Poll::Ready(Ok(())) => self.stalled_since = None,
                Poll::Ready(Err(e)) => return Poll::Ready(Event::End(End::Io(e))),
                Poll::Pending => {
                    if self.stalled_since.is_none() {
                        let now = Instant::now();
                        self.stalled_since = Some(now);
                        let due = now + self.shared.config.write_stall_timeout;
                        if timer.deadline() > due {
                            timer.as_mut().reset(due);
                        }
                    }
                }
            }
            if left && self.stalled_since.is_none() {
                // More is queued, and the queue wakes the session only
                // when it goes from empty to not.
                continue;
            }
            if !self.may_read() {
                // Reading waits for answers to be written or runs to end.
            } else if !decoded {
                // Room again (a run ended, output was written): frames
                // may be waiting in the buffer.
                continue;
            } else if !self.eof {
                match self.poll_read_more(cx) {
                    Poll::Ready(Ok(0)) => {
                        self.eof = true;
                        continue;
                    }
                    Poll::Ready(Ok(_)) => {
                        self.last_read = Instant::now();
                        continue;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Event::End(End::Io(e))),
                    Poll::Pending => {}
                }
            }
            return match self.poll_timer(cx, timer.as_mut()) {
                Some(end) => Poll::Ready(Event::End(end)),
                None => Poll::Pending,
            };
        }
    }

    /// The idle and stall deadlines, checked when the timer fires; the
    /// timer moves only then, not at every read.
    fn poll_timer(&mut self, cx: &mut Context<'_>, mut timer: Pin<&mut Sleep>) -> Option<End> {
        loop {
            if timer.as_mut().poll(cx).is_pending() {
                return None;
            }
            let now = Instant::now();
            let idle_due = self.last_read + self.shared.config.idle_timeout;
            if now >= idle_due {
                return Some(End::Idle);
            }
            let mut due = idle_due;
            // Commands the client left unanswered past the ack timeout end
            // as `unanswered`: no command stays pending forever.
            let ack_timeout = self.shared.config.ack_timeout;
            while self
                .awaiting
                .front()
                .is_some_and(|(since, _)| now >= *since + ack_timeout)
            {
                if let Some((_, late)) = self.awaiting.pop_front() {
                    tracing::warn!(command_id = %late.tracker.command_id, timeout = ?ack_timeout, "command unanswered past the ack timeout");
                    self.shared
                        .audit_acks(late.settle(self.info.id, Outcome::Unanswered));
                }
            }
            if let Some((since, _)) = self.awaiting.front() {
                due = due.min(*since + ack_timeout);
            }
            if let Some(since) = self.stalled_since {
                let stall_due = since + self.shared.config.write_stall_timeout;
                if now >= stall_due {
                    return Some(End::WriteStalled);
                }
                due = due.min(stall_due);
            }
            timer.as_mut().reset(due);
        }
    }

    /// Reads what the stream has into the read buffer.
    fn poll_read_more(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<usize>> {
        let mut chunk = [const { std::mem::MaybeUninit::<u8>::uninit() }; READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk);
        match Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                let filled = buf.filled();
                self.rbuf.extend_from_slice(filled);
                Poll::Ready(Ok(filled.len()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    fn log_end(&self, end: &End) {
        let config = &self.shared.config;
        match end {
            End::PeerClosed => tracing::info!("client disconnected"),
            End::Cancelled if !config.trust.is_trusted(&self.info.fingerprint) => {
                tracing::warn!("session closed: client key no longer trusted")
            }
            End::Cancelled => tracing::info!("session closed by server"),
            End::Idle => tracing::info!(
                timeout = ?config.idle_timeout,
                "session closed: client silent past the idle timeout"
            ),
            End::TooLarge(limit) => {
                tracing::warn!(limit, "session closed: client sent an oversized frame")
            }
            End::Io(e) => tracing::info!(error = %e, "session ended by transport error"),
            End::QueueFull => tracing::warn!(
                limit = config.max_outbound_bytes,
                "session closed: slow consumer, its outbound queue passed the limit"
            ),
            End::WriteStalled => {
                self.shared.stats.slow_consumers.inc();
                tracing::warn!(
                    timeout = ?config.write_stall_timeout,
                    "session closed: slow consumer, the client read nothing for the stall timeout"
                )
            }
        }
    }

    /// Settles what the client will not answer, writes what is left (an
    /// error frame, say) within the drain timeout unless the client is
    /// gone or too slow, and sends TLS close_notify.
    async fn finish(&mut self, end: &End) {
        if let End::TooLarge(limit) = end {
            self.error_reply(
                ErrorCode::FrameTooLarge,
                format!("frame exceeds the limit of {limit} bytes; closing the connection"),
                "-",
            );
        }
        let id = self.info.id;
        let undelivered = self.queue.close();
        for awaited in self.awaiting.drain(..).map(|(_, a)| a).chain(undelivered) {
            self.shared
                .audit_acks(awaited.settle(id, Outcome::Disconnected));
        }
        let drain = matches!(end, End::PeerClosed | End::Idle | End::TooLarge(_));
        if drain {
            // Runs already asked for are answered, within the drain
            // timeout.
            let _ = tokio::time::timeout(
                self.shared.config.drain_timeout,
                std::future::poll_fn(|cx| self.poll_drain(cx)),
            )
            .await;
        }
        // Runs not started are skipped; a running one finishes on its
        // thread.
        self.execs.clear();
        // A peer that does not read gets no say in how long this takes.
        let _ =
            tokio::time::timeout(std::time::Duration::from_secs(1), self.stream.shutdown()).await;
    }
}

mod frames;
mod write;

pub(crate) use frames::module_info;

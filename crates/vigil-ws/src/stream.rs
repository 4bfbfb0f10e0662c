//! [`FrameStream`]: a WebSocket seen as the byte stream of frames.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf as _, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// What a peer sent that the frame grammar cannot carry: the connection
/// was closed with the close code for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Violation {
    /// A binary message (closed with 1003).
    Binary,
    /// A message past the size limit (closed with 1009).
    TooLarge,
    /// A text message holding a newline, or not UTF-8 (closed with 1007).
    BadText,
}

impl Violation {
    /// The WebSocket close code sent for it.
    pub fn close_code(self) -> u16 {
        match self {
            Violation::Binary => 1003,
            Violation::TooLarge => 1009,
            Violation::BadText => 1007,
        }
    }

    /// A stable name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Violation::Binary => "binary",
            Violation::TooLarge => "too_large",
            Violation::BadText => "bad_text",
        }
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Violation::Binary => "a binary message (frames are text)",
            Violation::TooLarge => "a message past the size limit",
            Violation::BadText => "a text message holding a newline or not UTF-8",
        })
    }
}

impl std::error::Error for Violation {}

/// Counts of [`Violation`]s, shared by every stream that is given it.
#[derive(Debug, Default)]
pub struct Violations {
    binary: AtomicU64,
    too_large: AtomicU64,
    bad_text: AtomicU64,
}

impl Violations {
    fn record(&self, v: Violation) {
        let counter = match v {
            Violation::Binary => &self.binary,
            Violation::TooLarge => &self.too_large,
            Violation::BadText => &self.bad_text,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// How many connections were closed for `v`.
    pub fn count(&self, v: Violation) -> u64 {
        match v {
            Violation::Binary => &self.binary,
            Violation::TooLarge => &self.too_large,
            Violation::BadText => &self.bad_text,
        }
        .load(Ordering::Relaxed)
    }
}

/// A WebSocket connection read and written as newline-ended frames.
///
/// Reading yields each text message followed by `\n`; pings and pongs are
/// answered and skipped, and the peer's close is the end of the stream.
/// Writing takes bytes and sends each complete line as one text message,
/// without its newline, written through at once as a TLS stream's writes
/// are (a flush is not needed); a partial line waits for the rest. Writes wait
/// while the WebSocket's own buffer is being flushed, so a peer that does
/// not read holds the writer back (the caller's stall timeout applies).
///
/// With a ping interval, a ping is sent that often, so that NATs and
/// proxies on the path keep an idle connection open. Pings never feed a
/// failsafe: only signed heartbeats do.
#[derive(Debug)]
pub struct FrameStream<S> {
    ws: WebSocketStream<S>,
    /// The rest of the message being read.
    reading: Bytes,
    /// Whether the message read needs its newline yet.
    newline: bool,
    /// The peer closed, or a violation did.
    read_done: bool,
    /// Written, not yet sent: complete lines, then maybe part of one.
    writing: BytesMut,
    /// How far `writing` is known to hold no newline.
    scanned: usize,
    ping: Option<tokio::time::Interval>,
    violations: Option<Arc<Violations>>,
}

impl<S> FrameStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    pub(crate) fn new(ws: WebSocketStream<S>) -> Self {
        FrameStream {
            ws,
            reading: Bytes::new(),
            newline: false,
            read_done: false,
            writing: BytesMut::new(),
            scanned: 0,
            ping: None,
            violations: None,
        }
    }

    /// Sends a ping this often (the first after one interval).
    pub fn with_ping_interval(mut self, every: Duration) -> Self {
        let mut interval =
            tokio::time::interval_at(tokio::time::Instant::now() + every, every.max(MIN_PING));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.ping = Some(interval);
        self
    }

    /// Counts the violations that close this stream in `counts`.
    pub fn with_violations(mut self, counts: Arc<Violations>) -> Self {
        self.violations = Some(counts);
        self
    }

    /// The stream under the WebSocket.
    pub fn get_ref(&self) -> &S {
        self.ws.get_ref()
    }

    /// Closes with the code for `v`, counts it, and returns the error the
    /// reader sees.
    fn violated(&mut self, cx: &mut Context<'_>, v: Violation, detail: String) -> io::Error {
        self.read_done = true;
        if let Some(counts) = &self.violations {
            counts.record(v);
        }
        tracing::debug!(violation = v.as_str(), %detail, "closing the WebSocket");
        let mut reason = detail;
        // A close frame's reason is at most 123 bytes.
        while reason.len() > 123 {
            reason.pop();
        }
        let frame = CloseFrame {
            code: CloseCode::from(v.close_code()),
            reason: Utf8Bytes::from(reason),
        };
        // Queued now, sent by this flush or by the caller's shutdown.
        if Pin::new(&mut self.ws)
            .start_send(Message::Close(Some(frame)))
            .is_ok()
        {
            let _ = Pin::new(&mut self.ws).poll_flush(cx);
        }
        io::Error::new(io::ErrorKind::InvalidData, v)
    }

    /// A ping, when one is due and the writer has room.
    fn poll_ping(&mut self, cx: &mut Context<'_>) {
        let Some(interval) = self.ping.as_mut() else {
            return;
        };
        if interval.poll_tick(cx).is_pending() {
            return;
        }
        let mut ws = Pin::new(&mut self.ws);
        if let Poll::Ready(Ok(())) = ws.as_mut().poll_ready(cx)
            && ws.as_mut().start_send(Message::Ping(Bytes::new())).is_ok()
        {
            let _ = ws.poll_flush(cx);
        }
    }

    /// Sends every complete line in `writing` as a message. Ready once
    /// none is left; Pending while the WebSocket's buffer is full.
    fn poll_send_lines(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            let Some(at) = self.writing[self.scanned..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| self.scanned + i)
            else {
                self.scanned = self.writing.len();
                return Poll::Ready(Ok(()));
            };
            ready!(Pin::new(&mut self.ws).poll_ready(cx)).map_err(into_io)?;
            let mut line = self.writing.split_to(at + 1).freeze();
            line.truncate(at);
            self.scanned = 0;
            let text = Utf8Bytes::try_from(line)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            Pin::new(&mut self.ws)
                .start_send(Message::Text(text))
                .map_err(into_io)?;
        }
    }
}

/// Pings are never sent more often than this.
const MIN_PING: Duration = Duration::from_millis(100);

fn into_io(e: WsError) -> io::Error {
    match e {
        WsError::Io(e) => e,
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            io::Error::new(io::ErrorKind::BrokenPipe, "the WebSocket is closed")
        }
        other => io::Error::other(other),
    }
}

impl<S> AsyncRead for FrameStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.reading.is_empty() {
                let n = this.reading.len().min(buf.remaining());
                buf.put_slice(&this.reading[..n]);
                this.reading.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.newline {
                if buf.remaining() > 0 {
                    buf.put_slice(b"\n");
                    this.newline = false;
                }
                return Poll::Ready(Ok(()));
            }
            if this.read_done {
                return Poll::Ready(Ok(()));
            }
            this.poll_ping(cx);
            let next = ready!(Pin::new(&mut this.ws).poll_next(cx));
            match next {
                None | Some(Ok(Message::Close(_))) => {
                    // The close is answered by the WebSocket itself.
                    this.read_done = true;
                }
                Some(Ok(Message::Text(text))) => {
                    let bytes = Bytes::from(text);
                    if bytes.contains(&b'\n') {
                        let e = this.violated(
                            cx,
                            Violation::BadText,
                            "a frame is one text message without a newline".into(),
                        );
                        return Poll::Ready(Err(e));
                    }
                    this.reading = bytes;
                    this.newline = true;
                }
                Some(Ok(Message::Binary(_))) => {
                    let e = this.violated(
                        cx,
                        Violation::Binary,
                        "binary messages are not vigil frames; send text".into(),
                    );
                    return Poll::Ready(Err(e));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, max_size }))) => {
                    let e = this.violated(
                        cx,
                        Violation::TooLarge,
                        format!("message of {size} bytes exceeds the limit of {max_size}"),
                    );
                    return Poll::Ready(Err(e));
                }
                Some(Err(WsError::Utf8(detail))) => {
                    let e = this.violated(cx, Violation::BadText, format!("not UTF-8: {detail}"));
                    return Poll::Ready(Err(e));
                }
                Some(Err(e)) => {
                    this.read_done = true;
                    return Poll::Ready(Err(into_io(e)));
                }
            }
        }
    }
}

impl<S> AsyncWrite for FrameStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        // Lines from the last write go first: what is taken in is bounded
        // by one write's worth.
        ready!(this.poll_send_lines(cx))?;
        let mut n = 0;
        for buf in bufs {
            this.writing.extend_from_slice(buf);
            n += buf.len();
        }
        // Sent now if there is room; otherwise by the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_send_lines(cx) {
            return Poll::Ready(Err(e));
        }
        // And written through, as a TLS stream's writes are, without
        // waiting for a flush: one write is one batch of frames. A flush
        // that cannot finish now goes on at the next write or flush.
        let _ = Pin::new(&mut this.ws).poll_flush(cx);
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_lines(cx))?;
        Pin::new(&mut this.ws).poll_flush(cx).map_err(into_io)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send_lines(cx))?;
        ready!(Pin::new(&mut this.ws).poll_close(cx)).map_err(into_io)?;
        // The close handshake is done: end TLS too.
        Pin::new(this.ws.get_mut()).poll_shutdown(cx)
    }
}

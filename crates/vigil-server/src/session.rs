//! One client connection: read frames, answer them, write through a bounded
//! queue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt as _;
use tokio::io::{AsyncWrite, AsyncWriteExt as _};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;
use vigil_auth::Fingerprint;
use vigil_modules::{ExecError, ModuleRegistry, ModuleSummary};
use vigil_proto::{
    AckStatus, ClientRequest, CodecError, ErrorBody, ErrorCode, Frame, FrameCodec, ModuleInfo,
    ServerMessage,
};

use crate::server::Shared;

/// Initial read buffer of a session.
const READ_BUFFER: usize = 512;
/// Most bytes gathered into one write.
const WRITE_BATCH: usize = 64 * 1024;

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
}

/// The registry's handle on a live session.
#[derive(Debug)]
pub(crate) struct SessionHandle {
    pub(crate) info: SessionInfo,
    pub(crate) tx: mpsc::Sender<Bytes>,
    pub(crate) cancel: CancellationToken,
}

/// Why a session ended.
#[derive(Debug)]
enum End {
    PeerClosed,
    Cancelled,
    Idle,
    TooLarge(usize),
    Io(std::io::Error),
    WriterGone,
}

pub(crate) fn encode(msg: &ServerMessage, reference: &str) -> Bytes {
    Bytes::from(msg.to_frame(reference).to_bytes())
}

/// Runs a session on an established TLS stream until it ends.
pub(crate) async fn run<S>(shared: Arc<Shared>, stream: S, info: SessionInfo)
where
    S: tokio::io::AsyncRead + AsyncWrite + Send + 'static,
{
    let span = tracing::info_span!(
        "session",
        id = info.id,
        client = %info.fingerprint.short(),
        peer = %info.peer
    );
    async move {
        let (reader, writer) = tokio::io::split(stream);
        let (tx, rx) = mpsc::channel::<Bytes>(shared.config.outbound_queue);
        let cancel = shared.shutdown.child_token();
        let writer_task = tokio::spawn(write_loop(rx, writer, cancel.clone()).in_current_span());

        shared.register(SessionHandle {
            info: info.clone(),
            tx: tx.clone(),
            cancel: cancel.clone(),
        });
        // The fingerprint may have been revoked between the handshake and
        // the registration: the revocation sweep may have missed us.
        let end = if shared.config.trust.is_trusted(&info.fingerprint) {
            tracing::info!("client connected");
            read_loop(&shared, &info, reader, &tx, &cancel).await
        } else {
            End::Cancelled
        };
        shared.deregister(info.id);
        match &end {
            End::PeerClosed => tracing::info!("client disconnected"),
            End::Cancelled if !shared.config.trust.is_trusted(&info.fingerprint) => {
                tracing::warn!("session closed: client key no longer trusted")
            }
            End::Cancelled => tracing::info!("session closed by server"),
            End::Idle => tracing::info!(
                timeout = ?shared.config.idle_timeout,
                "session closed: client silent past the idle timeout"
            ),
            End::TooLarge(limit) => {
                tracing::warn!(limit, "session closed: client sent an oversized frame")
            }
            End::Io(e) => tracing::info!(error = %e, "session ended by transport error"),
            End::WriterGone => tracing::info!("session ended: could not write to client"),
        }
        // Let the writer send what is queued (an error frame, say), but not
        // for longer than the drain timeout.
        drop(tx);
        if matches!(end, End::Cancelled) {
            cancel.cancel();
        }
        let mut writer_task = writer_task;
        if tokio::time::timeout(shared.config.drain_timeout, &mut writer_task)
            .await
            .is_err()
        {
            writer_task.abort();
        }
    }
    .instrument(span)
    .await
}

async fn read_loop<R>(
    shared: &Shared,
    info: &SessionInfo,
    reader: R,
    tx: &mpsc::Sender<Bytes>,
    cancel: &CancellationToken,
) -> End
where
    R: tokio::io::AsyncRead + Unpin,
{
    // Client frames are small: start with a small buffer (it grows for a
    // large frame), since an idle connection keeps it.
    let mut frames = FramedRead::with_capacity(
        reader,
        FrameCodec::server(&shared.config.limits),
        READ_BUFFER,
    );
    let execs = Arc::new(Semaphore::new(shared.config.max_execs_per_session.max(1)));
    loop {
        let next = tokio::select! {
            biased;
            () = cancel.cancelled() => return End::Cancelled,
            next = tokio::time::timeout(shared.config.idle_timeout, frames.next()) => next,
        };
        let reply = match next {
            Err(_) => return End::Idle,
            Ok(None) => return End::PeerClosed,
            Ok(Some(Err(CodecError::FrameTooLarge { limit }))) => {
                let body = ErrorBody::new(
                    ErrorCode::FrameTooLarge,
                    format!("frame exceeds the limit of {limit} bytes; closing the connection"),
                );
                let _ = tx.send(encode(&ServerMessage::Error(body), "-")).await;
                return End::TooLarge(limit);
            }
            Ok(Some(Err(CodecError::Io(e)))) => return End::Io(e),
            Ok(Some(Err(other))) => return End::Io(std::io::Error::other(other)),
            Ok(Some(Ok(Err(bad)))) => {
                tracing::debug!(error = %bad, "malformed frame");
                shared.stats.bad_frames.inc();
                let body = ErrorBody::new(bad.code(), bad.to_string());
                encode(&ServerMessage::Error(body), bad.reference().unwrap_or("-"))
            }
            Ok(Some(Ok(Ok(frame)))) => match dispatch(shared, info, &frame) {
                Reply::Now(bytes) => bytes,
                Reply::Nothing => continue,
                Reply::Exec {
                    registry,
                    module,
                    args,
                    sum,
                } => {
                    // Runs proceed concurrently, answered by REF; past the
                    // per-session limit, reading waits.
                    let permit = tokio::select! {
                        () = cancel.cancelled() => return End::Cancelled,
                        permit = execs.clone().acquire_owned() => match permit {
                            Ok(p) => p,
                            Err(_) => return End::Cancelled,
                        },
                    };
                    let tx = tx.clone();
                    let reference = frame.reference().to_owned();
                    tokio::spawn(
                        async move {
                            let bytes = exec(&registry, module, &args, &sum, &reference).await;
                            drop(permit);
                            let _ = tx.send(bytes).await;
                        }
                        .in_current_span(),
                    );
                    continue;
                }
            },
        };
        if tx.send(reply).await.is_err() {
            return End::WriterGone;
        }
    }
}

/// What to do with one well-formed frame.
enum Reply {
    /// Send this now.
    Now(Bytes),
    /// Nothing to send (an acknowledgement or a report).
    Nothing,
    /// Run a module, then send its answer.
    Exec {
        registry: ModuleRegistry,
        module: String,
        args: String,
        sum: String,
    },
}

fn error_reply(code: ErrorCode, message: String, reference: &str) -> Reply {
    Reply::Now(encode(
        &ServerMessage::Error(ErrorBody::new(code, message)),
        reference,
    ))
}

fn unknown_module(module: &str, reference: &str) -> Reply {
    error_reply(
        ErrorCode::UnknownModule,
        format!("no module named {module:?} is loaded"),
        reference,
    )
}

/// Answers one well-formed frame.
fn dispatch(shared: &Shared, session: &SessionInfo, frame: &Frame) -> Reply {
    let reference = frame.reference();
    let request = match ClientRequest::from_frame(frame) {
        Ok(request) => request,
        Err(e) => {
            tracing::debug!(frame = %frame, error = %e, "request not understood");
            shared.stats.bad_frames.inc();
            return Reply::Now(encode(&ServerMessage::Error(e.to_body()), reference));
        }
    };
    let registry = shared.config.modules.as_ref();
    let reply = match request {
        ClientRequest::Sync => ServerMessage::SyncResp {
            modules: registry
                .map(|r| r.list().iter().map(module_info).collect())
                .unwrap_or_default(),
        },
        ClientRequest::Verify { module } => match registry.and_then(|r| r.get(&module)) {
            Some(m) => ServerMessage::VerifyResp {
                module,
                content: m.bytes().to_vec(),
                sum: m.summary().sum.clone(),
                desc: m.summary().description.clone(),
            },
            None => return unknown_module(&module, reference),
        },
        ClientRequest::Exec { module, args, sum } => match registry {
            Some(r) => {
                return Reply::Exec {
                    registry: r.clone(),
                    module,
                    args,
                    sum,
                };
            }
            None => return unknown_module(&module, reference),
        },
        ClientRequest::Ping => ServerMessage::Pong,
        ClientRequest::Ack(ack) => {
            let counter = match ack.status {
                AckStatus::Done => &shared.stats.acks_done,
                AckStatus::Failed => &shared.stats.acks_failed,
                AckStatus::Refused => &shared.stats.acks_refused,
            };
            counter.inc();
            match ack.status {
                AckStatus::Refused => tracing::warn!(
                    command_id = ?ack.command_id, code = ?ack.code, detail = %ack.detail,
                    "client refused a command"
                ),
                _ => {
                    tracing::debug!(command_id = ?ack.command_id, status = ?ack.status, "command acknowledged")
                }
            }
            // Only an ack that answers a delivery to this session, for the
            // command that was delivered, is recorded.
            let record = ack.command_id.clone().map(|id| {
                let state = crate::record::TargetState::of_ack(&ack);
                let details = serde_json::json!({
                    "command_id": id,
                    "client": session.fingerprint.to_hex(),
                    "status": ack.status,
                    "code": ack.code,
                    "detail": truncate(&ack.detail, 1024),
                });
                (id, state, details)
            });
            if shared.pending.resolve(session.id, reference, ack) {
                if let Some((id, state, details)) = record {
                    shared.commands.set(&id, &session.fingerprint, state);
                    shared.audit_later("command.acknowledged", details);
                }
                return Reply::Nothing;
            }
            return error_reply(
                ErrorCode::BadPayload,
                format!(
                    "no command was delivered to this session with REF {reference:?} and that command_id"
                ),
                reference,
            );
        }
        ClientRequest::FailsafeReport(report) => {
            shared.stats.failsafe_reports.inc();
            shared.audit_later(
                "failsafe.reported",
                serde_json::json!({
                    "client": session.fingerprint.to_hex(),
                    "event": report.event,
                    "at": report.at,
                    "silent_ms": report.silent_ms,
                    "break_commands": report.break_commands,
                }),
            );
            tracing::warn!(
                event = %report.event, at = %report.at, silent_ms = report.silent_ms,
                break_commands = report.break_commands.len(),
                "client reports a failsafe transition"
            );
            return Reply::Nothing;
        }
        // A request type added to the protocol but not served here.
        _ => {
            return error_reply(
                ErrorCode::UnknownType,
                format!(
                    "{}:{} is not served by this server",
                    frame.api(),
                    frame.kind()
                ),
                reference,
            );
        }
    };
    Reply::Now(encode(&reply, reference))
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// The protocol's view of a registry entry.
pub(crate) fn module_info(m: &ModuleSummary) -> ModuleInfo {
    ModuleInfo {
        name: m.name.clone(),
        sum: m.sum.clone(),
        size: m.size,
        desc: m.description.clone(),
    }
}

/// Runs a module and encodes its answer.
async fn exec(
    registry: &ModuleRegistry,
    module: String,
    args: &str,
    sum: &str,
    reference: &str,
) -> Bytes {
    let outcome = registry.exec(&module, args.as_bytes(), sum).await;
    let reply = match outcome {
        Ok(out) => {
            tracing::debug!(module = %module, sum = %out.sum, "module ran");
            ServerMessage::ExecResp {
                module,
                sum: out.sum,
                result: out.result,
            }
        }
        Err(e) => {
            let code = match &e {
                ExecError::UnknownModule(_) => ErrorCode::UnknownModule,
                ExecError::StaleSum { .. } => ErrorCode::StaleSum,
                ExecError::Busy => ErrorCode::Busy,
                ExecError::Timeout(_) => ErrorCode::ExecTimeout,
                _ => ErrorCode::ExecFailed,
            };
            if matches!(e, ExecError::Panicked(_) | ExecError::Timeout(_)) {
                tracing::warn!(module = %module, error = %e, "module run failed");
            } else {
                tracing::debug!(module = %module, error = %e, "module run refused or failed");
            }
            ServerMessage::Error(ErrorBody::new(code, e.to_string()))
        }
    };
    encode(&reply, reference)
}

async fn write_loop<W>(mut rx: mpsc::Receiver<Bytes>, mut writer: W, cancel: CancellationToken)
where
    W: AsyncWrite + Unpin,
{
    let mut batch = BytesMut::new();
    loop {
        let first = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            next = rx.recv() => match next {
                Some(bytes) => bytes,
                None => break,
            },
        };
        batch.extend_from_slice(&first);
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(more) => batch.extend_from_slice(&more),
                Err(_) => break,
            }
        }
        let written = tokio::select! {
            biased;
            () = cancel.cancelled() => break,
            res = async {
                writer.write_all(&batch).await?;
                writer.flush().await
            } => res,
        };
        batch.clear();
        if let Err(e) = written {
            tracing::debug!(error = %e, "write failed");
            return;
        }
        // Do not keep a large buffer around for an idle connection.
        if batch.capacity() > WRITE_BATCH * 2 {
            batch = BytesMut::new();
        }
    }
    // Send TLS close_notify; a peer that does not read gets no say in how
    // long this takes.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(1), writer.shutdown()).await;
}

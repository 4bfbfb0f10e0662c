//! The connection's two tasks: the read loop (responses to their
//! requests, pushes to their lanes) and the write loop.

use super::*;

pub(super) async fn read_loop<R>(
    inner: Arc<Inner>,
    mut frames: FramedRead<R, FrameCodec>,
    lanes: Lanes,
    requests: mpsc::Sender<Frame>,
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
            let reference = frame.reference().to_owned();
            if !push(&inner, &lanes, &requests, reference, msg).await {
                break ClientError::Disconnected("the connection's writer is gone".into());
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

/// Puts what the server pushed in its lane. A command that finds its lane
/// full is answered `busy` at once (it was not checked, so its id is not
/// spent); a broadcast that finds its queue full asks the consumer to sync
/// again. Returns `false` if the writer is gone.
pub(super) async fn push(
    inner: &Inner,
    lanes: &Lanes,
    requests: &mpsc::Sender<Frame>,
    reference: String,
    msg: ServerMessage,
) -> bool {
    use tokio::sync::mpsc::error::TrySendError;
    let refused = match msg {
        ServerMessage::Heartbeat(body) => {
            lanes.heartbeats.send_replace(Some((reference, body)));
            return true;
        }
        ServerMessage::Command(body) => {
            let urgent = body.get("command_type").and_then(Value::as_str)
                == Some(vigil_command::EMERGENCY_TYPE);
            let lane = if urgent {
                &lanes.urgent
            } else {
                &lanes.commands
            };
            match lane.try_send((reference, body)) {
                Ok(()) => return true,
                Err(
                    TrySendError::Full((reference, body)) | TrySendError::Closed((reference, body)),
                ) => (reference, body, urgent),
            }
        }
        other => {
            if let Err(TrySendError::Full(_) | TrySendError::Closed(_)) =
                lanes.events.try_send((reference, other))
            {
                tracing::warn!(
                    "module broadcasts are arriving faster than they are handled: asking for the module list again"
                );
                inner.resync.store(true, Ordering::Relaxed);
            }
            return true;
        }
    };
    let (reference, body, urgent) = refused;
    let ack = Ack {
        command_id: body
            .get("command_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
        status: AckStatus::Refused,
        code: Some(vigil_proto::AckCode::Busy),
        detail: format!(
            "{} commands are waiting on this client; this one was not checked or recorded, send it again later",
            if urgent { URGENT_QUEUE } else { COMMAND_QUEUE }
        ),
        result: None,
    };
    tracing::warn!(
        command_id = ack.command_id.as_deref(),
        "command refused: too many waiting"
    );
    requests
        .send(ClientRequest::Ack(ack).to_frame(&reference))
        .await
        .is_ok()
}

pub(super) async fn write_loop<W>(
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

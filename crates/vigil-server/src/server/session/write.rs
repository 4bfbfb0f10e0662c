//! The session's output: frames queued by other tasks, answers, and the
//! vectored writes that carry them.

use super::*;

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Moves queued frames into the output; commands among them are now
    /// this session's to see acknowledged. Returns whether frames are
    /// left in the queue, and its status.
    pub(super) fn take_queued(&mut self, cx: &mut Context<'_>) -> (bool, Status) {
        // Past a batch of output, only the queue's status is read.
        let budget = WRITE_BATCH.saturating_sub(self.out_bytes);
        // At most a window of commands awaits the client's answer.
        let room = self
            .shared
            .config
            .command_window
            .saturating_sub(self.awaiting.len());
        let queue = self.queue.clone();
        queue.poll_take(cx, budget, room, |item: Item| {
            if let Some(awaited) = item.delivery {
                self.await_ack(awaited);
            }
            self.push_chunk(item.bytes, false);
        })
    }

    pub(super) fn await_ack(&mut self, awaited: Awaited) {
        if self.awaiting.len() >= MAX_AWAITING
            && let Some((_, oldest)) = self.awaiting.pop_front()
        {
            tracing::debug!(command_id = %oldest.tracker.command_id, "too many unanswered commands: no longer waiting for the oldest");
            self.shared
                .audit_acks(oldest.settle(self.info.id, Outcome::Unanswered));
        }
        self.awaiting.push_back((Instant::now(), awaited));
    }

    pub(super) fn push_chunk(&mut self, bytes: Bytes, body: bool) {
        if bytes.is_empty() {
            return;
        }
        if body {
            self.bodies += 1;
        } else {
            self.out_bytes += bytes.len();
        }
        self.out.push_back(Chunk { bytes, body });
    }

    pub(super) fn reply(&mut self, msg: &ServerMessage, reference: &str) {
        self.push_chunk(encode(msg, reference), false);
    }

    pub(super) fn error_reply(&mut self, code: ErrorCode, message: String, reference: &str) {
        self.reply(
            &ServerMessage::Error(ErrorBody::new(code, message)),
            reference,
        );
    }

    /// Writes the output, as many frames per write as fit, then flushes.
    /// Ready(Ok) once everything is written.
    pub(super) fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); WRITE_SLICES];
            let mut n = 0;
            for (slot, chunk) in slices.iter_mut().zip(self.out.iter()) {
                *slot = IoSlice::new(&chunk.bytes);
                n += 1;
            }
            let written = match Pin::new(&mut self.stream).poll_write_vectored(cx, &slices[..n]) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()));
                }
                Poll::Ready(Ok(written)) => written,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            self.stalled_since = None;
            self.consume(written);
        }
        if self.out.capacity() > 64 {
            self.out = VecDeque::new();
        }
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    /// Starts and answers the module calls still pending, and writes
    /// everything; Ready once done (or the stream failed).
    pub(super) fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            self.start_calls();
            self.poll_execs(cx);
            match self.poll_write_out(cx) {
                Poll::Ready(Err(_)) => return Poll::Ready(()),
                Poll::Ready(Ok(())) if self.execs.is_empty() && self.calls.is_empty() => {
                    return Poll::Ready(());
                }
                // A batch ended and left calls to start.
                Poll::Ready(Ok(())) if !self.calls.is_empty() && self.execs.is_empty() => {}
                _ => return Poll::Pending,
            }
        }
    }

    /// Drops `n` written bytes from the front of the output.
    pub(super) fn consume(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.out.front_mut() else {
                return;
            };
            let len = front.bytes.len();
            if n < len {
                front.bytes.advance(n);
                if !front.body {
                    self.out_bytes -= n;
                }
                return;
            }
            n -= len;
            if front.body {
                self.bodies -= 1;
            } else {
                self.out_bytes -= len;
            }
            self.out.pop_front();
        }
    }
}

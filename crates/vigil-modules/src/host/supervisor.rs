//! One task per loaded module version: it feeds calls to the version's
//! host process, matches answers to calls in order, enforces the timeout,
//! and starts the host again after it crashed.
//!
//! Calls are written to the host as soon as they arrive, a batch in one
//! write; the host runs them one after another. The front call's time
//! starts when the previous answer arrives (or when it is written to an
//! idle host). A call past its timeout kills the host, so its CPU is given
//! back. When the host dies, the call it was running gets the reason
//! (`Crashed`, `Limit` or `Timeout`), the later calls of the same batch are
//! not run, and the calls of other batches are sent again to the next
//! host, which is started at once after the first failure and with a
//! growing delay after repeated ones.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{FutureExt as _, StreamExt as _};
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

use super::idle::{IDLE_CHECK, IdleCheck, cpu_ticks};
use super::process::{self, Killer};
use super::{Health, HostSpec, wire};
use crate::{ExecError, ExecOutput};

/// A call's answer.
pub(crate) type Answer = Result<ExecOutput, ExecError>;

/// Calls of one batch for one module, answered in order on `answers`.
pub(crate) struct Job {
    pub calls: Vec<Vec<u8>>,
    pub answers: mpsc::UnboundedSender<Answer>,
}

struct Call {
    job: u64,
    /// Repeated by the call's answer.
    seq: u64,
    args: Bytes,
    answers: mpsc::UnboundedSender<Answer>,
}

struct Live {
    /// The socket's write half, written here while nothing is queued for
    /// the write task.
    write: Arc<tokio::net::unix::OwnedWriteHalf>,
    /// Bytes handed to the write task and not written yet.
    backlog: Arc<AtomicUsize>,
    writer: mpsc::UnboundedSender<Bytes>,
    reader: FramedRead<tokio::net::unix::OwnedReadHalf, LengthDelimitedCodec>,
    killer: Arc<Killer>,
    exit: Arc<process::ExitSlot>,
    write_task: tokio::task::JoinHandle<()>,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.write_task.abort();
        self.killer.kill();
    }
}

pub(crate) struct Supervisor {
    spec: Arc<HostSpec>,
    timeout: Duration,
    jobs: mpsc::UnboundedReceiver<Job>,
    health: Arc<Health>,
    waiting: VecDeque<Call>,
    inflight: VecDeque<Call>,
    since: Instant,
    host: Option<Live>,
    restart_at: Option<Instant>,
    next_job: u64,
    next_seq: u64,
    idle_check: IdleCheck,
    closed: bool,
}

/// Delay before starting a host again after the `n`th failure within a
/// minute: none after the first, then 250 ms doubling up to 5 s.
fn backoff(n: usize) -> Duration {
    match n {
        0 | 1 => Duration::ZERO,
        n => Duration::from_millis(250u64 << (n - 2).min(5)).min(Duration::from_secs(5)),
    }
}

impl Supervisor {
    pub(super) fn new(
        spec: Arc<HostSpec>,
        timeout: Duration,
        jobs: mpsc::UnboundedReceiver<Job>,
        health: Arc<Health>,
    ) -> Supervisor {
        Supervisor {
            spec,
            timeout,
            jobs,
            health,
            waiting: VecDeque::new(),
            inflight: VecDeque::new(),
            since: Instant::now(),
            host: None,
            restart_at: None,
            next_job: 0,
            next_seq: 0,
            idle_check: IdleCheck {
                at: Instant::now() + IDLE_CHECK,
                ticks: None,
                idle: false,
                written: false,
            },
            closed: false,
        }
    }

    fn attach(&mut self, p: process::Process) -> std::io::Result<()> {
        p.stream.set_nonblocking(true)?;
        let stream = UnixStream::from_std(p.stream)?;
        let (read, write) = stream.into_split();
        let write = Arc::new(write);
        let backlog = Arc::new(AtomicUsize::new(0));
        let codec = LengthDelimitedCodec::builder()
            .max_frame_length(wire::MAX_ANSWER)
            .new_codec();
        let (writer, mut frames) = mpsc::unbounded_channel::<Bytes>();
        let (w, queued) = (write.clone(), backlog.clone());
        let write_task = tokio::spawn(async move {
            while let Some(bytes) = frames.recv().await {
                let len = bytes.len();
                if write_all(&w, &bytes).await.is_err() {
                    break;
                }
                queued.fetch_sub(len, Ordering::AcqRel);
            }
        });
        self.health.pid.store(p.pid, Ordering::Relaxed);
        self.host = Some(Live {
            write,
            backlog,
            writer,
            reader: FramedRead::new(read, codec),
            killer: p.killer,
            exit: p.exit,
            write_task,
        });
        Ok(())
    }

    /// Runs until every handle to the module is gone and every call was
    /// answered; the host is killed on the way out.
    pub(super) async fn run(mut self, first: process::Process) {
        if let Err(e) = self.attach(first) {
            tracing::error!(module = %self.spec.name, error = %e, "cannot watch the module host; starting another");
        }
        loop {
            if self.host.is_none() && !self.closed_and_idle() {
                let due = self.restart_at.is_none_or(|at| at <= Instant::now());
                if due {
                    self.restart().await;
                }
            }
            if self.closed_and_idle() {
                break;
            }
            let deadline = self.since + self.timeout;
            let timing = self.host.is_some() && !self.inflight.is_empty();
            let restart_at = self.restart_at.filter(|_| self.host.is_none());
            tokio::select! {
                job = self.jobs.recv(), if !self.closed => match job {
                    Some(job) => self.enqueue(job),
                    None => self.closed = true,
                },
                frame = next_frame(&mut self.host) => {
                    // Answers that are already read are taken in the same
                    // turn: one pass of this loop per batch of answers, not
                    // per answer.
                    let mut frame = frame;
                    loop {
                        match frame {
                            Some(Ok(answer)) => {
                                if let Err(wrong) = self.answered(&answer) {
                                    self.broke_protocol(&wrong).await;
                                    break;
                                }
                            }
                            _ => {
                                self.host_died(None).await;
                                break;
                            }
                        }
                        match self.host.as_mut().and_then(|h| h.reader.next().now_or_never()) {
                            Some(next) => frame = next,
                            None => break,
                        }
                    }
                }
                () = tokio::time::sleep_until(deadline), if timing => {
                    self.kill_host();
                    self.health.timeouts.fetch_add(1, Ordering::Relaxed);
                    self.host_died(Some(ExecError::Timeout(self.timeout))).await;
                }
                () = sleep_until_some(restart_at) => {}
                () = tokio::time::sleep_until(self.idle_check.at), if self.host.is_some() => {
                    if self.busy_while_idle() {
                        tracing::warn!(
                            module = %self.spec.name, sum = %self.spec.sum,
                            "the module host kept a core busy with no call running (a thread the module left behind): it is stopped"
                        );
                        self.kill_host();
                        self.host_died(None).await;
                    }
                }
            }
        }
        self.host = None;
        self.health.pid.store(0, Ordering::Relaxed);
    }

    /// An answer that is not one: the host is stopped and its calls are
    /// handled as after a crash.
    async fn broke_protocol(&mut self, wrong: &str) {
        tracing::warn!(module = %self.spec.name, sum = %self.spec.sum, %wrong, "the module host broke the protocol: it is stopped");
        self.kill_host();
        let error = ExecError::Crashed {
            signal: None,
            detail: format!("its host broke the protocol ({wrong}) and was stopped"),
        };
        self.host_died(Some(error)).await;
    }

    /// Whether the host used more than half a core over the last check's
    /// window while no call ran in it; then sets up the next window.
    fn busy_while_idle(&mut self) -> bool {
        let pid = self.health.pid.load(Ordering::Relaxed);
        let ticks = cpu_ticks(pid);
        let idle = self.inflight.is_empty() && !self.idle_check.written;
        let busy = match (ticks, self.idle_check.ticks) {
            (Some(now), Some(before)) => {
                let per_second = rustix::param::clock_ticks_per_second().max(1);
                let window = IDLE_CHECK.as_secs_f64();
                (now.saturating_sub(before) as f64) > per_second as f64 * window / 2.0
            }
            _ => false,
        };
        let fired = idle && self.idle_check.idle && busy;
        self.idle_check = IdleCheck {
            at: Instant::now() + IDLE_CHECK,
            ticks,
            idle: self.inflight.is_empty(),
            written: false,
        };
        fired
    }

    fn kill_host(&self) {
        if let Some(host) = &self.host {
            host.killer.kill();
        }
    }

    fn closed_and_idle(&self) -> bool {
        self.closed && self.waiting.is_empty() && self.inflight.is_empty()
    }

    fn enqueue(&mut self, job: Job) {
        let id = self.next_job;
        self.next_job += 1;
        for args in job.calls {
            self.next_seq += 1;
            self.waiting.push_back(Call {
                job: id,
                seq: self.next_seq,
                args: Bytes::from(args),
                answers: job.answers.clone(),
            });
        }
        self.flush_waiting();
    }

    /// Writes every waiting call to the host, in one write.
    fn flush_waiting(&mut self) {
        let Some(host) = &self.host else {
            return;
        };
        if self.waiting.is_empty() {
            return;
        }
        let mut out = Vec::new();
        for call in &self.waiting {
            wire::numbered(&mut out, wire::CALL, call.seq, &call.args);
        }
        if self.inflight.is_empty() {
            self.since = Instant::now();
        }
        self.idle_check.written = true;
        // Written here while the write task has nothing queued (only this
        // task queues, so it stays that way); what does not fit at once
        // goes to the write task. A failed write means the host is gone:
        // the reader sees that too and the calls are handled as in flight.
        let mut written = 0;
        if host.backlog.load(Ordering::Acquire) == 0 {
            while written < out.len() {
                match host.write.try_write(&out[written..]) {
                    Ok(n) => written += n,
                    Err(_) => break,
                }
            }
        }
        if written < out.len() {
            let rest = Bytes::from(out).slice(written..);
            host.backlog.fetch_add(rest.len(), Ordering::AcqRel);
            let _ = host.writer.send(rest);
        }
        self.inflight.extend(self.waiting.drain(..));
    }

    /// Matches an answer to the oldest call. An answer that is not one
    /// (no call waits, another call's number, an unknown kind) means module
    /// code wrote to the socket: the host is not to be believed any more.
    fn answered(&mut self, frame: &BytesMut) -> Result<(), String> {
        let (tag, body) = frame.split_first().ok_or("an empty frame")?;
        let (seq, body) = wire::split_seq(body).ok_or("an answer without its number")?;
        let front = self.inflight.front().map(|c| c.seq);
        if front != Some(seq) {
            return Err(format!(
                "an answer numbered {seq} where {} was due",
                front.map_or_else(|| "none".to_owned(), |f| f.to_string())
            ));
        }
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let answer = match *tag {
            wire::OK => Ok(ExecOutput {
                result: text(body),
                sum: self.spec.sum.clone(),
            }),
            wire::FAILED => Err(ExecError::Failed(text(body))),
            wire::PANICKED => Err(ExecError::Panicked(text(body))),
            wire::LIMIT => Err(ExecError::Limit(text(body))),
            other => return Err(format!("an answer of unknown kind {other:#x}")),
        };
        self.since = Instant::now();
        if let Some(call) = self.inflight.pop_front() {
            self.reply(call, answer);
        }
        Ok(())
    }

    /// Sends a call's answer; its caller may have stopped waiting.
    fn reply(&self, call: Call, answer: Answer) {
        self.health.pending.fetch_sub(1, Ordering::Relaxed);
        let _ = call.answers.send(answer);
    }

    /// The host ended (or was killed, with `reason`): answers the call it
    /// was running, drops the rest of that batch, and queues the calls of
    /// other batches for the next host.
    async fn host_died(&mut self, reason: Option<ExecError>) {
        let Some(host) = self.host.take() else {
            return;
        };
        let exit = host.exit.clone();
        drop(host);
        let exit = exit.wait(Duration::from_secs(2)).await;
        let error = match reason {
            Some(e) => e,
            None => process::crash_error(exit.as_ref(), self.spec.policy.memory_mib),
        };
        match &error {
            ExecError::Timeout(_) => tracing::warn!(
                module = %self.spec.name, sum = %self.spec.sum, timeout = ?self.timeout,
                "a module call ran past its timeout: its host was killed and is started again"
            ),
            e => tracing::warn!(
                module = %self.spec.name, sum = %self.spec.sum, error = %e,
                output = ?exit.as_ref().map(|x| x.last_lines.clone()).unwrap_or_default(),
                "the module host died: it is started again"
            ),
        }
        if !matches!(error, ExecError::Timeout(_)) {
            self.health.crashes.fetch_add(1, Ordering::Relaxed);
        }
        let failures = self.health.record_failure();
        self.restart_at = Some(Instant::now() + backoff(failures));
        let mut calls = std::mem::take(&mut self.inflight).into_iter();
        let Some(first) = calls.next() else {
            return;
        };
        let skipped = match &error {
            ExecError::Timeout(t) => ExecError::Abandoned(*t),
            _ => ExecError::NotRun,
        };
        let job = first.job;
        self.reply(first, Err(error));
        let mut again = VecDeque::new();
        for call in calls {
            if call.job == job {
                self.reply(call, Err(skipped.clone()));
            } else {
                again.push_back(call);
            }
        }
        again.extend(self.waiting.drain(..));
        self.waiting = again;
    }

    /// Starts the host again; on failure every waiting call gets the
    /// reason and the next try is later.
    async fn restart(&mut self) {
        self.restart_at = None;
        let spec = self.spec.clone();
        let started =
            tokio::task::spawn_blocking(move || process::start(&spec, super::HANDSHAKE)).await;
        let started = match started {
            Ok(result) => result,
            Err(e) => Err(format!("the start of the module host failed: {e}")),
        };
        match started.and_then(|p| self.attach(p).map_err(|e| e.to_string())) {
            Ok(()) => {
                self.health.restarts.fetch_add(1, Ordering::Relaxed);
                tracing::info!(module = %self.spec.name, sum = %self.spec.sum, "module host started again");
                self.flush_waiting();
            }
            Err(reason) => {
                tracing::error!(module = %self.spec.name, sum = %self.spec.sum, %reason, "cannot start the module host again");
                self.health.crashes.fetch_add(1, Ordering::Relaxed);
                let failures = self.health.record_failure();
                self.restart_at =
                    Some(Instant::now() + backoff(failures).max(Duration::from_millis(250)));
                for call in std::mem::take(&mut self.waiting) {
                    let error = ExecError::Crashed {
                        signal: None,
                        detail: reason.clone(),
                    };
                    self.reply(call, Err(error));
                }
            }
        }
    }
}

async fn next_frame(host: &mut Option<Live>) -> Option<std::io::Result<BytesMut>> {
    match host {
        Some(host) => host.reader.next().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Writes all of `bytes`, waiting for the socket to take them.
async fn write_all(
    write: &tokio::net::unix::OwnedWriteHalf,
    mut bytes: &[u8],
) -> std::io::Result<()> {
    while !bytes.is_empty() {
        write.writable().await?;
        match write.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

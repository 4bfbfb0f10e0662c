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
use futures_util::StreamExt as _;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

use super::process::{self, Exit, Killer};
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
                frame = next_frame(&mut self.host) => match frame {
                    Some(Ok(frame)) => self.answered(&frame),
                    _ => self.host_died(None).await,
                },
                () = tokio::time::sleep_until(deadline), if timing => {
                    if let Some(host) = &self.host {
                        host.killer.kill();
                    }
                    self.health.timeouts.fetch_add(1, Ordering::Relaxed);
                    self.host_died(Some(ExecError::Timeout(self.timeout))).await;
                }
                () = sleep_until_some(restart_at) => {}
            }
        }
        self.host = None;
        self.health.pid.store(0, Ordering::Relaxed);
    }

    fn closed_and_idle(&self) -> bool {
        self.closed && self.waiting.is_empty() && self.inflight.is_empty()
    }

    fn enqueue(&mut self, job: Job) {
        let id = self.next_job;
        self.next_job += 1;
        let calls = job.calls.into_iter().map(|args| Call {
            job: id,
            args: Bytes::from(args),
            answers: job.answers.clone(),
        });
        self.waiting.extend(calls);
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
            wire::frame(&mut out, wire::CALL, &call.args);
        }
        if self.inflight.is_empty() {
            self.since = Instant::now();
        }
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

    fn answered(&mut self, frame: &BytesMut) {
        self.since = Instant::now();
        let Some(call) = self.inflight.pop_front() else {
            tracing::warn!(module = %self.spec.name, "the module host answered a call it was not sent");
            return;
        };
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        let (tag, body) = match frame.split_first() {
            Some((tag, body)) => (*tag, body),
            None => (0, &[][..]),
        };
        let answer = match tag {
            wire::OK => Ok(ExecOutput {
                result: text(body),
                sum: self.spec.sum.clone(),
            }),
            wire::FAILED => Err(ExecError::Failed(text(body))),
            wire::PANICKED => Err(ExecError::Panicked(text(body))),
            wire::LIMIT => Err(ExecError::Limit(text(body))),
            other => Err(ExecError::Failed(format!(
                "the module host answered an unknown message {other:#x}"
            ))),
        };
        self.reply(call, answer);
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
            None => self.crash_error(exit.as_ref()),
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

    fn crash_error(&self, exit: Option<&Exit>) -> ExecError {
        let Some(exit) = exit else {
            return ExecError::Crashed {
                signal: None,
                detail: "the module host closed its socket".into(),
            };
        };
        if let Some(line) = exit.allocation_failed() {
            return ExecError::Limit(format!(
                "{line} (the module may use {} MiB)",
                self.spec.policy.memory_mib
            ));
        }
        match exit.signal() {
            Some(signal) => {
                let detail = match signal.as_str() {
                    "SIGSYS" => {
                        format!("{signal}: it made a system call its sandbox does not allow")
                    }
                    "SIGSEGV" => format!("{signal}: invalid memory access"),
                    "SIGBUS" => format!("{signal}: bus error"),
                    "SIGABRT" => format!("{signal}: it aborted"),
                    "SIGKILL" => format!("{signal}: killed"),
                    _ => signal.clone(),
                };
                ExecError::Crashed {
                    signal: Some(signal),
                    detail,
                }
            }
            None => ExecError::Crashed {
                signal: None,
                detail: format!("its host exited ({})", exit.status),
            },
        }
    }

    /// Starts the host again; on failure every waiting call gets the
    /// reason and the next try is later.
    async fn restart(&mut self) {
        self.restart_at = None;
        let spec = self.spec.clone();
        let handshake = self.timeout.max(Duration::from_secs(5));
        let started = tokio::task::spawn_blocking(move || process::start(&spec, handshake)).await;
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

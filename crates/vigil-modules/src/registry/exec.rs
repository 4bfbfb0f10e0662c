//! Running modules: a batch of calls on one blocking thread, answered in
//! order, each within the registry's timeout.
//!
//! A connection that pipelines many small runs would pay a thread hand-off
//! per run if each went to its own blocking task; a batch pays one per
//! batch. The calls of a batch run one after another, so a call that hangs
//! holds up the rest of its batch: the caller gets [`ExecError::Timeout`]
//! for it and [`ExecError::Abandoned`] for every call after it, which are
//! then never started.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::time::{Instant, Sleep};

use super::Module;
use crate::loader::Outcome;
use crate::{ExecError, ExecOutput};

/// One call of a batch: which module, with which argument, and the sum
/// the caller verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecCall {
    /// The module's file name (`hello.so`).
    pub module: String,
    /// The argument passed to the module's `execute`.
    pub args: Vec<u8>,
    /// The sum the caller verified; the call runs only if it is the loaded
    /// version's.
    pub sum: String,
}

type Acquire = Pin<Box<dyn Future<Output = Option<OwnedSemaphorePermit>> + Send>>;

/// A call's tag with its answer.
type Answer<T> = (T, Result<ExecOutput, ExecError>);

/// The calls of a batch that passed their checks, waiting to run.
struct Runs<T> {
    tags: Vec<T>,
    runs: Vec<(Arc<Module>, Vec<u8>)>,
}

enum State<T> {
    /// Waiting for a run slot.
    Acquiring {
        acquire: Acquire,
        deadline: Pin<Box<Sleep>>,
        runs: Runs<T>,
    },
    /// Runs in progress on a blocking thread; answers arrive in order.
    Running {
        tags: VecDeque<T>,
        answers: mpsc::UnboundedReceiver<Result<ExecOutput, ExecError>>,
        /// Set once the caller stops waiting: calls not started yet are
        /// skipped.
        abandoned: Arc<AtomicBool>,
        /// When the current call's time started: the batch's start, then
        /// each answer.
        since: Instant,
        /// Woken at `since + timeout` (reset lazily, when it fires).
        timer: Option<Pin<Box<Sleep>>>,
    },
    Done,
}

/// Module runs on their way: [`ExecBatch::poll_next`] yields each call's
/// tag with its result, every call exactly once.
///
/// Made by [`ModuleRegistry::exec_batch`](crate::ModuleRegistry::exec_batch).
/// Dropping it stops waiting: calls not started are skipped, and a call
/// that is running finishes on its thread, keeping its slot until then.
pub struct ExecBatch<T> {
    timeout: Duration,
    /// Answers known without running (unknown module, stale sum, busy,
    /// timed out).
    ready: VecDeque<Answer<T>>,
    state: State<T>,
}

impl<T> std::fmt::Debug for ExecBatch<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = match &self.state {
            State::Acquiring { .. } => "acquiring",
            State::Running { .. } => "running",
            State::Done => "done",
        };
        f.debug_struct("ExecBatch")
            .field("state", &state)
            .field("ready", &self.ready.len())
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> ExecBatch<T> {
    /// Checks `calls` with `lookup` and starts the ones that pass.
    pub(crate) fn new(
        timeout: Duration,
        slots: &Arc<Semaphore>,
        calls: Vec<(T, ExecCall)>,
        lookup: impl Fn(&str) -> Option<Arc<Module>>,
    ) -> ExecBatch<T> {
        let (ready, runs) = prepare(calls, lookup);
        let state = if runs.runs.is_empty() {
            State::Done
        } else {
            match slots.clone().try_acquire_owned() {
                Ok(permit) => start(permit, runs),
                Err(_) => {
                    let slots = slots.clone();
                    State::Acquiring {
                        acquire: Box::pin(async move { slots.acquire_owned().await.ok() }),
                        deadline: Box::pin(tokio::time::sleep(timeout)),
                        runs,
                    }
                }
            }
        };
        ExecBatch {
            timeout,
            ready,
            state,
        }
    }

    /// The next answer, or `None` once every call was answered.
    pub async fn next(&mut self) -> Option<Answer<T>> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Polls for the next answer; `Ready(None)` once every call was
    /// answered.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Answer<T>>> {
        loop {
            if let Some(answer) = self.ready.pop_front() {
                return Poll::Ready(Some(answer));
            }
            match &mut self.state {
                State::Done => return Poll::Ready(None),
                State::Acquiring {
                    acquire,
                    deadline,
                    runs,
                } => {
                    let permit = match acquire.as_mut().poll(cx) {
                        Poll::Ready(permit) => permit,
                        Poll::Pending => match deadline.as_mut().poll(cx) {
                            Poll::Ready(()) => None,
                            Poll::Pending => return Poll::Pending,
                        },
                    };
                    let runs = std::mem::replace(
                        runs,
                        Runs {
                            tags: Vec::new(),
                            runs: Vec::new(),
                        },
                    );
                    self.state = match permit {
                        Some(permit) => start(permit, runs),
                        None => {
                            self.ready
                                .extend(runs.tags.into_iter().map(|t| (t, Err(ExecError::Busy))));
                            State::Done
                        }
                    };
                }
                State::Running {
                    tags,
                    answers,
                    abandoned,
                    since,
                    timer,
                } => {
                    if tags.is_empty() {
                        self.state = State::Done;
                        continue;
                    }
                    match answers.poll_recv(cx) {
                        Poll::Ready(Some(answer)) => {
                            *since = Instant::now();
                            if let Some(tag) = tags.pop_front() {
                                return Poll::Ready(Some((tag, answer)));
                            }
                        }
                        Poll::Ready(None) => {
                            // The thread ended without answering the rest
                            // (it cannot panic past the module's shim, but
                            // say so if it does).
                            let rest = tags.drain(..).map(|t| {
                                (
                                    t,
                                    Err(ExecError::Panicked(
                                        "the run ended without a result".into(),
                                    )),
                                )
                            });
                            self.ready.extend(rest);
                            self.state = State::Done;
                        }
                        Poll::Pending => {
                            // The timer is moved only when it fires early
                            // (answers arrived meanwhile), not per answer.
                            let due = *since + self.timeout;
                            let timer = timer
                                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due)));
                            if timer.as_mut().poll(cx).is_pending() {
                                return Poll::Pending;
                            }
                            if Instant::now() < due {
                                timer.as_mut().reset(due);
                                continue;
                            }
                            // The current call ran past the timeout: it may
                            // never return. The calls after it are not
                            // started.
                            abandoned.store(true, Ordering::SeqCst);
                            let mut rest = tags.drain(..);
                            if let Some(first) = rest.next() {
                                self.ready
                                    .push_back((first, Err(ExecError::Timeout(self.timeout))));
                            }
                            let skipped: Vec<_> = rest
                                .map(|t| (t, Err(ExecError::Abandoned(self.timeout))))
                                .collect();
                            self.ready.extend(skipped);
                            self.state = State::Done;
                        }
                    }
                }
            }
        }
    }
}

impl<T> Drop for ExecBatch<T> {
    fn drop(&mut self) {
        if let State::Running { abandoned, .. } = &self.state {
            abandoned.store(true, Ordering::SeqCst);
        }
    }
}

/// Hands the runs to a blocking thread, which keeps the slot until the
/// last run returns.
fn start<T>(permit: OwnedSemaphorePermit, runs: Runs<T>) -> State<T> {
    let (tx, answers) = mpsc::unbounded_channel();
    let abandoned = Arc::new(AtomicBool::new(false));
    let stop = abandoned.clone();
    let work = runs.runs;
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        for (module, args) in work {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let answer = run(&module, &args);
            if tx.send(answer).is_err() {
                break;
            }
        }
    });
    State::Running {
        tags: runs.tags.into(),
        answers,
        abandoned,
        since: Instant::now(),
        timer: None,
    }
}

/// Runs one call on the current (blocking) thread.
fn run(module: &Module, args: &[u8]) -> Result<ExecOutput, ExecError> {
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    match module.library().execute(args) {
        Outcome::Ok(b) => Ok(ExecOutput {
            result: text(b),
            sum: module.summary().sum.clone(),
        }),
        Outcome::Err(b) => Err(ExecError::Failed(text(b))),
        Outcome::Panicked(b) => Err(ExecError::Panicked(text(b))),
    }
}

/// Checks each call against the loaded modules: the ones that pass are
/// runs, the others are answered at once.
fn prepare<T>(
    calls: Vec<(T, ExecCall)>,
    lookup: impl Fn(&str) -> Option<Arc<Module>>,
) -> (VecDeque<Answer<T>>, Runs<T>) {
    let mut ready = VecDeque::new();
    let mut runs = Runs {
        tags: Vec::with_capacity(calls.len()),
        runs: Vec::with_capacity(calls.len()),
    };
    for (tag, call) in calls {
        let Some(module) = lookup(&call.module) else {
            ready.push_back((tag, Err(ExecError::UnknownModule(call.module))));
            continue;
        };
        if module.summary().sum != call.sum {
            let current = module.summary().sum.clone();
            ready.push_back((
                tag,
                Err(ExecError::StaleSum {
                    name: call.module,
                    given: call.sum,
                    current,
                }),
            ));
            continue;
        }
        runs.tags.push(tag);
        runs.runs.push((module, call.args));
    }
    (ready, runs)
}

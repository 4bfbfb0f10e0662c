//! Running modules: a batch of calls sent to the modules' host processes,
//! answered in order.
//!
//! A connection that pipelines many small runs would pay a round trip to
//! the host per run if each were sent alone; the calls of a batch that go
//! to one module are sent in one write, and the host answers them in one
//! write when it has run them. The host runs them one after another, so a
//! call that hangs holds up the rest of its batch: the caller gets
//! [`ExecError::Timeout`] for it and [`ExecError::Abandoned`] for every
//! call after it, which are then never started.

use std::collections::VecDeque;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::mpsc;

use super::Module;
use crate::ExecError;
use crate::host::Answer as HostAnswer;

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

/// A call's tag with its answer.
type Answer<T> = (T, HostAnswer);

/// Consecutive calls of a batch for one module, before they are sent:
/// the module, the calls' tags and their arguments.
type Pending<T> = (Arc<Module>, Vec<T>, Vec<Vec<u8>>);

/// Consecutive calls of a batch for one module, sent to its host together.
struct Segment<T> {
    tags: VecDeque<T>,
    answers: mpsc::UnboundedReceiver<HostAnswer>,
}

/// Module runs on their way: [`ExecBatch::poll_next`] yields each call's
/// tag with its result, every call exactly once.
///
/// Made by [`ModuleRegistry::exec_batch`](crate::ModuleRegistry::exec_batch).
/// Dropping it stops waiting; calls already sent to a host still run there.
pub struct ExecBatch<T> {
    /// Answers known without running (unknown module, stale sum).
    ready: VecDeque<Answer<T>>,
    segments: VecDeque<Segment<T>>,
}

impl<T> std::fmt::Debug for ExecBatch<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExecBatch")
            .field("ready", &self.ready.len())
            .field("segments", &self.segments.len())
            .finish_non_exhaustive()
    }
}

impl<T: Send + 'static> ExecBatch<T> {
    /// Checks `calls` with `lookup` and sends the ones that pass.
    pub(crate) fn new(
        calls: Vec<(T, ExecCall)>,
        lookup: impl Fn(&str) -> Option<Arc<Module>>,
    ) -> ExecBatch<T> {
        let mut ready = VecDeque::new();
        let mut segments = VecDeque::new();
        let mut current: Option<Pending<T>> = None;
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
            match &mut current {
                Some((m, tags, args)) if Arc::ptr_eq(m, &module) => {
                    tags.push(tag);
                    args.push(call.args);
                }
                _ => {
                    if let Some(done) = current.take() {
                        segments.push_back(send(done));
                    }
                    current = Some((module, vec![tag], vec![call.args]));
                }
            }
        }
        if let Some(done) = current.take() {
            segments.push_back(send(done));
        }
        ExecBatch { ready, segments }
    }

    /// Calls not answered yet.
    pub fn pending(&self) -> usize {
        self.ready.len() + self.segments.iter().map(|s| s.tags.len()).sum::<usize>()
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
            let Some(segment) = self.segments.front_mut() else {
                return Poll::Ready(None);
            };
            if segment.tags.is_empty() {
                self.segments.pop_front();
                continue;
            }
            match segment.answers.poll_recv(cx) {
                Poll::Ready(Some(answer)) => {
                    if let Some(tag) = segment.tags.pop_front() {
                        return Poll::Ready(Some((tag, answer)));
                    }
                }
                Poll::Ready(None) => {
                    // The host's supervisor ended without answering: say
                    // so for every call left.
                    let rest = segment.tags.drain(..).map(|t| (t, Err(ExecError::NotRun)));
                    self.ready.extend(rest);
                    self.segments.pop_front();
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

fn send<T>((module, tags, args): Pending<T>) -> Segment<T> {
    Segment {
        tags: tags.into(),
        answers: module.host().submit(args),
    }
}

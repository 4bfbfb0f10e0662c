//! What other tasks send to one session: a queue bounded in bytes.
//!
//! Heartbeats, broadcasts and commands are pushed here by whoever sends
//! them; the session task takes them out and writes them. A push that
//! would take the queue past its byte limit marks the client a slow
//! consumer: the queue closes, drops what it held (so the memory is
//! returned at once) and wakes the session, which ends.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Waker};

use bytes::Bytes;

use crate::delivery::Awaited;

/// One frame for the client, and the delivery it belongs to, if it is a
/// command whose acknowledgement is awaited.
#[derive(Debug)]
pub(crate) struct Item {
    pub(crate) bytes: Bytes,
    pub(crate) delivery: Option<Awaited>,
}

/// Why a push was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The queue would pass its byte limit: the client is too slow, and
    /// its session is ending.
    Full,
    /// The session has ended (or is ending).
    Closed,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Item>,
    /// Deliveries whose frames were dropped at an overflow: the session
    /// settles them when it ends.
    orphans: Vec<Awaited>,
    bytes: usize,
    closed: bool,
    overflowed: bool,
    cancelled: bool,
    waker: Option<Waker>,
}

/// What [`Outbound::poll_take`] found besides items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// The session goes on.
    Open,
    /// A push found the client too slow: the queue is closed and empty.
    Overflowed,
    /// The server closes the session (revoked key, shutdown).
    Cancelled,
}

/// The queue of one session.
#[derive(Debug)]
pub(crate) struct Outbound {
    max_bytes: usize,
    state: Mutex<State>,
}

impl Outbound {
    pub(crate) fn new(max_bytes: usize) -> Outbound {
        Outbound {
            max_bytes: max_bytes.max(1),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every operation leaves the state consistent before it can panic.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues an item for the session. An item that alone is larger than
    /// the limit is still queued into an empty queue (a large frame is not
    /// a slow client).
    pub(crate) fn push(&self, item: Item) -> Result<(), (Refused, Item)> {
        let waker = {
            let mut s = self.lock();
            if s.closed {
                return Err((Refused::Closed, item));
            }
            let len = item.bytes.len();
            if s.bytes > 0 && s.bytes + len > self.max_bytes {
                s.closed = true;
                s.overflowed = true;
                s.bytes = 0;
                let dropped = std::mem::take(&mut s.items);
                let State { orphans, .. } = &mut *s;
                orphans.extend(dropped.into_iter().filter_map(|i| i.delivery));
                let waker = s.waker.take();
                drop(s);
                if let Some(w) = waker {
                    w.wake();
                }
                return Err((Refused::Full, item));
            }
            s.bytes += len;
            s.items.push_back(item);
            // The session drains the queue whenever it can write; it
            // needs waking only when the queue was empty.
            if s.items.len() == 1 {
                s.waker.take()
            } else {
                None
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Moves items into `out` until `budget` bytes were taken or the queue
    /// is empty, and registers the session's waker when it is empty.
    /// Returns whether items are left (the budget ran out), and whether
    /// the session goes on.
    pub(crate) fn poll_take(
        &self,
        cx: &mut Context<'_>,
        budget: usize,
        mut take: impl FnMut(Item),
    ) -> (bool, Status) {
        let mut s = self.lock();
        let mut taken = 0;
        while taken < budget {
            match s.items.pop_front() {
                Some(item) => {
                    taken += item.bytes.len();
                    take(item);
                }
                None => break,
            }
        }
        s.bytes -= taken.min(s.bytes);
        // An idle session keeps no queue memory.
        if s.items.is_empty() && s.items.capacity() > 16 {
            s.items = VecDeque::new();
        }
        // Even with items left (the session has output enough for now),
        // an overflow or a cancellation must wake it.
        if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.waker = Some(cx.waker().clone());
        }
        let left = !s.items.is_empty();
        let status = if s.cancelled {
            Status::Cancelled
        } else if s.overflowed {
            Status::Overflowed
        } else {
            Status::Open
        };
        (left, status)
    }

    /// Asks the session to end (its key was revoked, or the server stops).
    pub(crate) fn cancel(&self) {
        let waker = {
            let mut s = self.lock();
            s.cancelled = true;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Closes the queue and returns the deliveries it held that never
    /// reached the client.
    pub(crate) fn close(&self) -> Vec<Awaited> {
        let mut s = self.lock();
        s.closed = true;
        s.bytes = 0;
        s.waker = None;
        let items = std::mem::take(&mut s.items);
        let mut undelivered = std::mem::take(&mut s.orphans);
        undelivered.extend(items.into_iter().filter_map(|i| i.delivery));
        undelivered
    }
}

/// Shared by the session and the registry.
pub(crate) type SharedOutbound = Arc<Outbound>;

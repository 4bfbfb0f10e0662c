//! What other tasks send to one session: a queue of two lanes.
//!
//! Heartbeats, broadcasts and emergency commands go to the **control**
//! lane, bounded in bytes: a push that would take it past its limit marks
//! the client a slow consumer (it is not reading at all): the queue closes,
//! drops what it held (so the memory is returned at once) and wakes the
//! session, which ends.
//!
//! Other commands go to the **command** lane. The session takes them only
//! while fewer than its window of commands await the client's answer, so
//! a client is never sent more than it has room for; the lane holds the
//! rest, bounded in bytes too. A push that finds the lane full is refused
//! ([`Refused::Busy`]): that command is not sent (its outcome is
//! `queue_full`, known at once), and the session goes on. The control lane
//! is always taken first: a heartbeat or a `SHUTDOWN_NOW` never waits
//! behind queued commands.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Waker};

use bytes::Bytes;

use crate::delivery::Awaited;

/// Which lane an item goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lane {
    /// Heartbeats, broadcasts, emergency commands: first, never windowed.
    Control,
    /// Commands that count against the session's window.
    Command,
}

/// One frame for the client, and the delivery it belongs to, if it is a
/// command whose acknowledgement is awaited.
#[derive(Debug)]
pub(crate) struct Item {
    pub(crate) bytes: Bytes,
    pub(crate) delivery: Option<Awaited>,
    pub(crate) lane: Lane,
}

/// Why a push was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The control lane would pass its byte limit: the client is not
    /// reading, and its session is ending.
    Full,
    /// The command lane is full: this command is not queued; the session
    /// goes on.
    Busy,
    /// The session has ended (or is ending).
    Closed,
}

#[derive(Debug, Default)]
struct State {
    control: VecDeque<Item>,
    commands: VecDeque<Item>,
    /// Deliveries whose frames were dropped at an overflow: the session
    /// settles them when it ends.
    orphans: Vec<Awaited>,
    control_bytes: usize,
    command_bytes: usize,
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
    /// A queue whose lanes each hold at most `max_bytes`.
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
    /// the limit is still queued into an empty lane (a large frame is not
    /// a slow client).
    pub(crate) fn push(&self, item: Item) -> Result<(), (Refused, Item)> {
        let waker = {
            let mut s = self.lock();
            if s.closed {
                return Err((Refused::Closed, item));
            }
            let len = item.bytes.len();
            let wake = match item.lane {
                Lane::Control => {
                    if s.control_bytes > 0 && s.control_bytes + len > self.max_bytes {
                        s.closed = true;
                        s.overflowed = true;
                        s.control_bytes = 0;
                        s.command_bytes = 0;
                        let State {
                            control,
                            commands,
                            orphans,
                            ..
                        } = &mut *s;
                        orphans.extend(
                            control
                                .drain(..)
                                .chain(commands.drain(..))
                                .filter_map(|i| i.delivery),
                        );
                        let waker = s.waker.take();
                        drop(s);
                        if let Some(w) = waker {
                            w.wake();
                        }
                        return Err((Refused::Full, item));
                    }
                    s.control_bytes += len;
                    s.control.push_back(item);
                    s.control.len() == 1
                }
                Lane::Command => {
                    if s.command_bytes > 0 && s.command_bytes + len > self.max_bytes {
                        return Err((Refused::Busy, item));
                    }
                    s.command_bytes += len;
                    s.commands.push_back(item);
                    s.commands.len() == 1
                }
            };
            // The session drains the queue whenever it can; it needs waking
            // only when a lane was empty.
            if wake { s.waker.take() } else { None }
        };
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Moves items into `out`, the control lane first, until `budget`
    /// bytes were taken; of the command lane at most `room` items. Registers
    /// the session's waker. Returns whether items it could take are left
    /// (the budget ran out), and whether the session goes on.
    pub(crate) fn poll_take(
        &self,
        cx: &mut Context<'_>,
        budget: usize,
        room: usize,
        mut take: impl FnMut(Item),
    ) -> (bool, Status) {
        let mut s = self.lock();
        let mut taken = 0;
        while taken < budget {
            match s.control.pop_front() {
                Some(item) => {
                    taken += item.bytes.len();
                    s.control_bytes -= item.bytes.len().min(s.control_bytes);
                    take(item);
                }
                None => break,
            }
        }
        let mut commands = 0;
        while taken < budget && commands < room {
            match s.commands.pop_front() {
                Some(item) => {
                    taken += item.bytes.len();
                    s.command_bytes -= item.bytes.len().min(s.command_bytes);
                    commands += 1;
                    take(item);
                }
                None => break,
            }
        }
        // An idle session keeps no queue memory.
        if s.control.is_empty() && s.control.capacity() > 16 {
            s.control = VecDeque::new();
        }
        if s.commands.is_empty() && s.commands.capacity() > 16 {
            s.commands = VecDeque::new();
        }
        // Even with items left (the session has output enough for now),
        // an overflow or a cancellation must wake it.
        if !s.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.waker = Some(cx.waker().clone());
        }
        // Commands left past the window wait for acks, which the session
        // reads itself: they need no wake-up.
        let left = !s.control.is_empty() || (!s.commands.is_empty() && commands < room);
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
        s.control_bytes = 0;
        s.command_bytes = 0;
        s.waker = None;
        let State {
            control,
            commands,
            orphans,
            ..
        } = &mut *s;
        let mut undelivered = std::mem::take(orphans);
        undelivered.extend(
            control
                .drain(..)
                .chain(commands.drain(..))
                .filter_map(|i| i.delivery),
        );
        undelivered
    }
}

/// Shared by the session and the registry.
pub(crate) type SharedOutbound = Arc<Outbound>;

#[cfg(test)]
mod tests {
    use super::*;

    fn item(lane: Lane, len: usize) -> Item {
        Item {
            bytes: Bytes::from(vec![b'x'; len]),
            delivery: None,
            lane,
        }
    }

    fn take_all(q: &Outbound, room: usize) -> (Vec<Lane>, bool, Status) {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut lanes = Vec::new();
        let (left, status) = q.poll_take(&mut cx, usize::MAX, room, |i| lanes.push(i.lane));
        (lanes, left, status)
    }

    #[test]
    fn control_comes_first_and_commands_wait_for_room() {
        let q = Outbound::new(1000);
        q.push(item(Lane::Command, 10)).expect("command");
        q.push(item(Lane::Command, 10)).expect("command");
        q.push(item(Lane::Control, 10)).expect("heartbeat");
        let (lanes, left, status) = take_all(&q, 1);
        assert_eq!(lanes, vec![Lane::Control, Lane::Command]);
        assert!(
            !left,
            "a command past the window waits for an ack, not a wake-up"
        );
        assert_eq!(status, Status::Open);
        let (lanes, _, _) = take_all(&q, 1);
        assert_eq!(lanes, vec![Lane::Command]);
    }

    #[test]
    fn a_full_command_lane_refuses_without_ending_the_session() {
        let q = Outbound::new(25);
        q.push(item(Lane::Command, 10)).expect("first");
        q.push(item(Lane::Command, 10)).expect("second");
        assert!(matches!(
            q.push(item(Lane::Command, 10)),
            Err((Refused::Busy, _))
        ));
        // Control still flows, and the session is not over.
        q.push(item(Lane::Control, 10)).expect("heartbeat");
        let (lanes, _, status) = take_all(&q, 0);
        assert_eq!(lanes, vec![Lane::Control]);
        assert_eq!(status, Status::Open);
    }

    #[test]
    fn a_full_control_lane_is_a_slow_consumer() {
        let q = Outbound::new(25);
        q.push(item(Lane::Control, 10)).expect("first");
        q.push(item(Lane::Control, 10)).expect("second");
        assert!(matches!(
            q.push(item(Lane::Control, 10)),
            Err((Refused::Full, _))
        ));
        let (lanes, _, status) = take_all(&q, 10);
        assert!(lanes.is_empty());
        assert_eq!(status, Status::Overflowed);
    }
}

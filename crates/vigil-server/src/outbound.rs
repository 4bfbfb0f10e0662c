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
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    use super::*;
    use crate::delivery::Tracker;

    fn item(lane: Lane, len: usize) -> Item {
        Item {
            bytes: Bytes::from(vec![b'x'; len]),
            delivery: None,
            lane,
        }
    }

    fn take_all(q: &Outbound, room: usize) -> (Vec<Lane>, bool, Status) {
        take(q, usize::MAX, room)
    }

    fn take(q: &Outbound, budget: usize, room: usize) -> (Vec<Lane>, bool, Status) {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut lanes = Vec::new();
        let (left, status) = q.poll_take(&mut cx, budget, room, |i| lanes.push(i.lane));
        (lanes, left, status)
    }

    /// A command item awaited in slot `slot` of `tracker`.
    fn awaited(tracker: &Arc<Tracker>, slot: u32, lane: Lane) -> Item {
        Item {
            delivery: Some(Awaited {
                tracker: tracker.clone(),
                slot,
            }),
            ..item(lane, 10)
        }
    }

    fn tracker(slots: u8) -> Arc<Tracker> {
        let fp = vigil_auth::Fingerprint::from_bytes([1; 32]);
        Arc::new(Tracker::new(
            "c1".into(),
            "d1".into(),
            (0..slots).map(|_| (fp, 1, None)).collect(),
        ))
    }

    fn slots(awaited: &[Awaited]) -> Vec<u32> {
        awaited.iter().map(|a| a.slot).collect()
    }

    /// Counts its wake-ups.
    #[derive(Debug, Default)]
    struct Wakes(AtomicUsize);

    impl Wake for Wakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Wakes {
        fn count(&self) -> usize {
            self.0.load(Ordering::SeqCst)
        }
    }

    /// Registers `wakes` as the session's waker, taking nothing.
    fn register(q: &Outbound, wakes: &Arc<Wakes>) -> Status {
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let (_, status) = q.poll_take(&mut cx, 0, 0, |_| panic!("nothing is taken"));
        status
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

    #[test]
    fn the_command_lane_gives_at_most_room_commands() {
        let q = Outbound::new(1000);
        for _ in 0..5 {
            q.push(item(Lane::Command, 10)).expect("command");
        }
        let (lanes, left, status) = take_all(&q, 3);
        assert_eq!(lanes, vec![Lane::Command; 3]);
        assert!(!left, "the rest wait for acks, not a wake-up");
        assert_eq!(status, Status::Open);
        let (lanes, left, _) = take_all(&q, 0);
        assert!(lanes.is_empty());
        assert!(!left);
        let (lanes, left, _) = take_all(&q, 64);
        assert_eq!(lanes, vec![Lane::Command; 2]);
        assert!(!left);
    }

    #[test]
    fn the_control_lane_is_not_windowed() {
        let q = Outbound::new(1000);
        for _ in 0..4 {
            q.push(item(Lane::Control, 10)).expect("heartbeat");
        }
        q.push(item(Lane::Command, 10)).expect("command");
        let (lanes, left, _) = take_all(&q, 0);
        assert_eq!(lanes, vec![Lane::Control; 4]);
        assert!(!left);
    }

    #[test]
    fn a_take_stops_at_its_byte_budget_and_says_what_is_left() {
        let q = Outbound::new(1000);
        q.push(item(Lane::Command, 10)).expect("command");
        q.push(item(Lane::Command, 10)).expect("command");
        for _ in 0..3 {
            q.push(item(Lane::Control, 10)).expect("heartbeat");
        }
        // 10 taken is under 15, so a second item is taken; then 20 is not.
        let (lanes, left, status) = take(&q, 15, 64);
        assert_eq!(lanes, vec![Lane::Control, Lane::Control]);
        assert!(left, "the budget ran out with items left");
        assert_eq!(status, Status::Open);
        let (lanes, left, _) = take(&q, 20, 64);
        assert_eq!(lanes, vec![Lane::Control, Lane::Command]);
        assert!(left, "a command it has room for is left");
        let (lanes, left, _) = take(&q, 20, 64);
        assert_eq!(lanes, vec![Lane::Command]);
        assert!(!left);
    }

    #[test]
    fn an_item_larger_than_the_limit_still_goes_into_an_empty_lane() {
        let q = Outbound::new(10);
        q.push(item(Lane::Control, 100)).expect("a large frame");
        q.push(item(Lane::Command, 100)).expect("a large command");
        assert!(matches!(
            q.push(item(Lane::Command, 1)),
            Err((Refused::Busy, _))
        ));
        let (lanes, _, status) = take_all(&q, 1);
        assert_eq!(lanes, vec![Lane::Control, Lane::Command]);
        assert_eq!(status, Status::Open);
        // Taken, the bytes no longer count.
        q.push(item(Lane::Command, 10))
            .expect("the lane is empty again");
    }

    #[test]
    fn taken_items_free_their_lane() {
        let q = Outbound::new(25);
        q.push(item(Lane::Command, 10)).expect("first");
        q.push(item(Lane::Command, 10)).expect("second");
        assert!(matches!(
            q.push(item(Lane::Command, 10)),
            Err((Refused::Busy, _))
        ));
        let (lanes, _, _) = take_all(&q, 1);
        assert_eq!(lanes, vec![Lane::Command]);
        q.push(item(Lane::Command, 10)).expect("room again");
        assert!(matches!(
            q.push(item(Lane::Command, 10)),
            Err((Refused::Busy, _))
        ));
        // The lanes are bounded apart: control still has its 25 bytes.
        q.push(item(Lane::Control, 10)).expect("control");
        q.push(item(Lane::Control, 10)).expect("control");
        let (lanes, _, _) = take_all(&q, 0);
        assert_eq!(lanes, vec![Lane::Control, Lane::Control]);
        q.push(item(Lane::Control, 20)).expect("control freed");
    }

    #[test]
    fn a_refused_push_gives_the_item_back() {
        let t = tracker(2);
        let q = Outbound::new(15);
        q.push(awaited(&t, 0, Lane::Command)).expect("first");
        let Err((Refused::Busy, back)) = q.push(awaited(&t, 1, Lane::Command)) else {
            panic!("the lane is full");
        };
        assert_eq!(back.delivery.map(|a| a.slot), Some(1));
        assert_eq!(back.lane, Lane::Command);
        // A refused command is not the queue's to settle.
        assert_eq!(slots(&q.close()), vec![0]);
    }

    #[test]
    fn an_overflow_closes_the_queue_and_keeps_its_deliveries() {
        let t = tracker(4);
        let q = Outbound::new(25);
        q.push(awaited(&t, 0, Lane::Command)).expect("command");
        q.push(awaited(&t, 1, Lane::Command)).expect("command");
        q.push(awaited(&t, 2, Lane::Control)).expect("emergency");
        q.push(item(Lane::Control, 10)).expect("heartbeat");
        let Err((Refused::Full, back)) = q.push(awaited(&t, 3, Lane::Control)) else {
            panic!("past the limit");
        };
        assert_eq!(back.delivery.map(|a| a.slot), Some(3));
        // Nothing is left to write, and the session is told to end.
        let (lanes, left, status) = take_all(&q, 64);
        assert!(lanes.is_empty());
        assert!(!left);
        assert_eq!(status, Status::Overflowed);
        for lane in [Lane::Control, Lane::Command] {
            assert!(matches!(q.push(item(lane, 1)), Err((Refused::Closed, _))));
        }
        // The session settles what never reached the client: control first.
        assert_eq!(slots(&q.close()), vec![2, 0, 1]);
    }

    #[test]
    fn close_returns_what_never_reached_the_client() {
        let t = tracker(4);
        let q = Outbound::new(1000);
        q.push(awaited(&t, 0, Lane::Command)).expect("command");
        q.push(awaited(&t, 1, Lane::Command)).expect("command");
        q.push(awaited(&t, 2, Lane::Command)).expect("command");
        q.push(awaited(&t, 3, Lane::Control)).expect("emergency");
        q.push(item(Lane::Control, 10)).expect("heartbeat");
        // Written: the emergency command and the first command.
        let mut taken = Vec::new();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        q.poll_take(&mut cx, usize::MAX, 1, |i| {
            taken.extend(i.delivery.map(|a| a.slot));
        });
        assert_eq!(taken, vec![3, 0]);
        assert_eq!(slots(&q.close()), vec![1, 2]);
        assert!(matches!(
            q.push(item(Lane::Control, 1)),
            Err((Refused::Closed, _))
        ));
        assert!(q.close().is_empty(), "given once");
    }

    #[test]
    fn cancel_ends_the_session() {
        let q = Outbound::new(1000);
        let wakes = Arc::new(Wakes::default());
        assert_eq!(register(&q, &wakes), Status::Open);
        q.push(item(Lane::Command, 10)).expect("command");
        assert_eq!(wakes.count(), 1);
        register(&q, &wakes);
        q.cancel();
        assert_eq!(wakes.count(), 2, "a cancellation wakes the session");
        let (lanes, _, status) = take_all(&q, 1);
        assert_eq!(lanes, vec![Lane::Command]);
        assert_eq!(status, Status::Cancelled);
    }

    #[test]
    fn a_cancellation_outranks_an_overflow() {
        let q = Outbound::new(10);
        q.push(item(Lane::Control, 10)).expect("heartbeat");
        assert!(matches!(
            q.push(item(Lane::Control, 10)),
            Err((Refused::Full, _))
        ));
        assert_eq!(take_all(&q, 0).2, Status::Overflowed);
        q.cancel();
        assert_eq!(take_all(&q, 0).2, Status::Cancelled);
    }

    #[test]
    fn a_push_wakes_the_session_only_when_its_lane_was_empty() {
        let q = Outbound::new(25);
        let wakes = Arc::new(Wakes::default());
        register(&q, &wakes);
        q.push(item(Lane::Control, 10)).expect("heartbeat");
        assert_eq!(wakes.count(), 1);
        register(&q, &wakes);
        q.push(item(Lane::Control, 10)).expect("heartbeat");
        assert_eq!(
            wakes.count(),
            1,
            "the session drains a lane it was woken for"
        );
        q.push(item(Lane::Command, 10)).expect("command");
        assert_eq!(wakes.count(), 2, "the command lane was empty");
        register(&q, &wakes);
        q.push(item(Lane::Command, 10)).expect("command");
        assert_eq!(wakes.count(), 2);
        // A slow consumer is woken to end.
        assert!(matches!(
            q.push(item(Lane::Control, 10)),
            Err((Refused::Full, _))
        ));
        assert_eq!(wakes.count(), 3);
    }
}

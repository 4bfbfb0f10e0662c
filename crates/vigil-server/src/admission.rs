//! Who gets a connection slot when they run out.
//!
//! A listener admits at most `limit` connections, and each connection is
//! either *working* (a session past its handshake, a REST request being
//! answered) or *waiting* (a TLS handshake not finished, a REST connection
//! whose request has not fully arrived, or an idle keep-alive one). Waiting
//! costs the peer nothing, so that is what a flood holds: when the slots
//! run out, the connection that has been waiting longest gives way to the
//! new one (HAProxy and nginx shed idle and half-open connections under
//! pressure the same way). A peer that sends its request at once, as an
//! operator does, is working within milliseconds and is not shed; a slow
//! one is shed whenever newer ones come. Only when every slot is working
//! is a new connection refused.
//!
//! A waiting connection that has shown it means business (a TLS handshake
//! whose ClientHello has arrived: [`Ticket::progressed`]) gives way only
//! when no connection that has sent nothing useful is left: an honest
//! handshake, a few milliseconds of work, outlasts a flood of stalled
//! ones however fast they come.
//!
//! Per source address, at most `per_source` connections may be waiting;
//! past that, that source's own oldest waiting connection gives way. One
//! host with many stalled handshakes then holds a bounded share, and many
//! hosts are shed oldest first.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio_util::sync::CancellationToken;

#[derive(Debug)]
struct Entry {
    source: IpAddr,
    /// Since when it waits; `None` while it works.
    waiting_since: Option<Instant>,
    /// Whether it waits having made progress (shed last).
    progressed: bool,
    evict: CancellationToken,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    entries: HashMap<u64, Entry>,
    /// Waiting entries that made no progress, oldest first.
    waiting: BTreeSet<(Instant, u64)>,
    /// Waiting entries that made progress, oldest first.
    progressed: BTreeSet<(Instant, u64)>,
    /// Waiting entries per source, oldest first.
    by_source: HashMap<IpAddr, BTreeSet<(Instant, u64)>>,
}

impl State {
    fn stop_waiting(&mut self, id: u64) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        if let Some(since) = entry.waiting_since.take() {
            self.waiting.remove(&(since, id));
            self.progressed.remove(&(since, id));
            if let Some(set) = self.by_source.get_mut(&entry.source) {
                set.remove(&(since, id));
                if set.is_empty() {
                    self.by_source.remove(&entry.source);
                }
            }
        }
    }

    fn start_waiting(&mut self, id: u64, now: Instant) {
        self.stop_waiting(id);
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        entry.waiting_since = Some(now);
        entry.progressed = false;
        self.waiting.insert((now, id));
        self.by_source
            .entry(entry.source)
            .or_default()
            .insert((now, id));
    }

    fn remove(&mut self, id: u64) -> Option<Entry> {
        self.stop_waiting(id);
        self.entries.remove(&id)
    }

    fn progress(&mut self, id: u64) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        if let Some(since) = entry.waiting_since
            && self.waiting.remove(&(since, id))
        {
            entry.progressed = true;
            self.progressed.insert((since, id));
        }
    }

    /// The waiting entry to shed first: the oldest that made no progress,
    /// else the oldest that did.
    fn first_to_shed(&self) -> Option<u64> {
        self.waiting
            .first()
            .or_else(|| self.progressed.first())
            .map(|(_, id)| *id)
    }

    /// Sheds entry `id`: it is told to go and no longer counts.
    fn evict(&mut self, id: u64) {
        if let Some(entry) = self.remove(id) {
            entry.evict.cancel();
        }
    }
}

/// The slots of one listener.
#[derive(Debug)]
pub(crate) struct Admission {
    limit: usize,
    per_source: usize,
    state: Mutex<State>,
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Full {
    /// Every slot is working.
    AllWorking,
}

/// What [`Admission::admit`] did.
#[derive(Debug)]
pub(crate) struct Admitted {
    pub(crate) ticket: Ticket,
    /// How many waiting connections gave way for it.
    pub(crate) evicted: usize,
}

impl Admission {
    pub(crate) fn new(limit: usize, per_source: usize) -> Arc<Admission> {
        Arc::new(Admission {
            limit: limit.max(1),
            per_source: per_source.max(1),
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every operation leaves the state consistent before it can panic.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Admits a connection from `source`, waiting, shedding others as the
    /// module docs say; refused only when every slot is working.
    pub(crate) fn admit(self: &Arc<Self>, source: IpAddr) -> Result<Admitted, Full> {
        let now = Instant::now();
        let mut s = self.lock();
        let mut evicted = 0;
        let own_oldest = s
            .by_source
            .get(&source)
            .filter(|set| set.len() >= self.per_source)
            .and_then(|set| set.first().map(|(_, id)| *id));
        if let Some(id) = own_oldest {
            s.evict(id);
            evicted += 1;
        }
        if s.entries.len() >= self.limit {
            match s.first_to_shed() {
                Some(id) => {
                    s.evict(id);
                    evicted += 1;
                }
                None => return Err(Full::AllWorking),
            }
        }
        let id = s.next;
        s.next += 1;
        let evict = CancellationToken::new();
        s.entries.insert(
            id,
            Entry {
                source,
                waiting_since: None,
                progressed: false,
                evict: evict.clone(),
            },
        );
        s.start_waiting(id, now);
        Ok(Admitted {
            ticket: Ticket {
                id,
                admission: self.clone(),
                evict,
            },
            evicted,
        })
    }

    /// Connections admitted now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

/// A connection's slot; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct Ticket {
    id: u64,
    admission: Arc<Admission>,
    evict: CancellationToken,
}

impl Ticket {
    /// The connection still waits, but has shown it means business (a
    /// ClientHello arrived): it is shed only after every connection that
    /// has not.
    pub(crate) fn progressed(&self) {
        self.admission.lock().progress(self.id);
    }

    /// The connection works now: it is not shed.
    pub(crate) fn working(&self) {
        self.admission.lock().stop_waiting(self.id);
    }

    /// The connection waits again (an idle keep-alive connection): the
    /// longest waiting is shed first.
    pub(crate) fn waiting(&self) {
        self.admission.lock().start_waiting(self.id, Instant::now());
    }

    /// Resolves when the connection was shed to make room.
    pub(crate) fn evicted(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.evict.cancelled()
    }

    /// Whether it was shed.
    #[cfg(test)]
    pub(crate) fn is_evicted(&self) -> bool {
        self.evict.is_cancelled()
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admission.lock().remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(a: u8, b: u8) -> IpAddr {
        IpAddr::from([127, 1, a, b])
    }

    #[test]
    fn the_longest_waiting_gives_way_and_working_ones_stay() {
        let adm = Admission::new(3, 10);
        let a = adm.admit(ip(0, 1)).expect("a").ticket;
        let b = adm.admit(ip(0, 2)).expect("b").ticket;
        let c = adm.admit(ip(0, 3)).expect("c").ticket;
        b.working();
        let d = adm.admit(ip(0, 4)).expect("d");
        assert_eq!(d.evicted, 1);
        assert!(a.is_evicted(), "the oldest waiting one went");
        assert!(!b.is_evicted() && !c.is_evicted());
        assert_eq!(adm.len(), 3);
        c.working();
        d.ticket.working();
        assert_eq!(adm.admit(ip(0, 5)).map(|_| ()), Err(Full::AllWorking));
        drop(b);
        assert!(adm.admit(ip(0, 5)).is_ok(), "a slot freed");
    }

    #[test]
    fn one_source_holds_a_bounded_share() {
        let adm = Admission::new(100, 2);
        let first = adm.admit(ip(9, 9)).expect("1").ticket;
        let second = adm.admit(ip(9, 9)).expect("2").ticket;
        let third = adm.admit(ip(9, 9)).expect("3");
        assert_eq!(third.evicted, 1);
        assert!(first.is_evicted() && !second.is_evicted());
        // Another source is untouched.
        let other = adm.admit(ip(1, 1)).expect("other").ticket;
        assert!(!other.is_evicted());
        assert_eq!(adm.len(), 3);
    }

    #[test]
    fn a_connection_that_made_progress_is_shed_last() {
        let adm = Admission::new(2, 10);
        let honest = adm.admit(ip(0, 1)).expect("honest").ticket;
        honest.progressed();
        let mut stalled = adm.admit(ip(0, 2)).expect("stalled").ticket;
        for i in 3..50 {
            // Each newcomer sheds the stalled one before it, not the
            // older one that made progress.
            stalled = adm.admit(ip(0, i)).expect("newcomer").ticket;
            assert!(!honest.is_evicted(), "round {i}");
        }
        drop(stalled);
    }

    #[test]
    fn an_idle_connection_waits_again_from_now() {
        let adm = Admission::new(2, 10);
        let a = adm.admit(ip(0, 1)).expect("a").ticket;
        let b = adm.admit(ip(0, 2)).expect("b").ticket;
        a.working();
        a.waiting();
        // b has waited longer than a, which just went idle.
        let _c = adm.admit(ip(0, 3)).expect("c");
        assert!(b.is_evicted() && !a.is_evicted());
    }
}

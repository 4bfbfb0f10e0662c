//! The sans-IO dead-man's switch: a deadline, moved by feeds, checked by
//! polls. Time is always passed in.

use std::time::{Duration, Instant};

/// What the switch reports when it changes state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailsafeEvent {
    /// No feed for the whole timeout: the failsafe actions should run.
    /// Reported once per outage.
    Fired {
        /// Time since the last feed when the switch fired (the timeout plus
        /// `late_by`).
        silent_for: Duration,
        /// How long after the deadline the firing was noticed.
        late_by: Duration,
    },
    /// Fed again after firing: the outage is over and the switch is armed.
    Rearmed {
        /// The whole silence, from the last feed before the outage to the
        /// feed that ended it.
        outage: Duration,
    },
}

/// Why a switch could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FailsafeError {
    /// A zero timeout would fire at once, forever.
    #[error("the failsafe timeout must be longer than zero")]
    ZeroTimeout,
    /// The deadline would not fit in an `Instant`.
    #[error("the failsafe timeout {0:?} is too large")]
    TimeoutTooLarge(Duration),
    /// The tokio driver was started outside a tokio runtime.
    #[error("the failsafe driver needs a tokio runtime")]
    NoRuntime,
}

/// A dead-man's switch without I/O: it fires when not fed for `timeout`.
///
/// - [`feed`](Self::feed) on every verified message;
/// - [`poll`](Self::poll) when [`deadline`](Self::deadline) has come;
/// - it reports [`FailsafeEvent::Fired`] exactly once per outage, and
///   [`FailsafeEvent::Rearmed`] when fed after firing.
///
/// It fires when `now - last feed >= timeout`. It does not know why it was
/// fed, nor what firing means.
///
/// ```
/// use std::time::{Duration, Instant};
/// use vigil_failsafe::{DeadmanSwitch, FailsafeEvent};
///
/// let t0 = Instant::now();
/// let s = Duration::from_secs;
/// let mut switch = DeadmanSwitch::new(s(15), t0)?;
/// switch.feed(t0 + s(10));
/// assert_eq!(switch.poll(t0 + s(24)), None);
/// assert!(matches!(switch.poll(t0 + s(25)), Some(FailsafeEvent::Fired { .. })));
/// assert_eq!(switch.poll(t0 + s(26)), None); // once per outage
/// assert_eq!(switch.feed(t0 + s(40)), Some(FailsafeEvent::Rearmed { outage: s(30) }));
/// # Ok::<(), vigil_failsafe::FailsafeError>(())
/// ```
#[derive(Debug, Clone)]
pub struct DeadmanSwitch {
    timeout: Duration,
    last_fed: Instant,
    fired: bool,
}

impl DeadmanSwitch {
    /// A switch armed at `now`: it fires at `now + timeout` unless fed.
    pub fn new(timeout: Duration, now: Instant) -> Result<DeadmanSwitch, FailsafeError> {
        if timeout.is_zero() {
            return Err(FailsafeError::ZeroTimeout);
        }
        // Refuse a timeout whose deadlines could overflow `Instant` within
        // any plausible run (a century of feeds).
        let century = Duration::from_secs(100 * 365 * 24 * 3600);
        if now
            .checked_add(timeout)
            .and_then(|t| t.checked_add(century))
            .is_none()
        {
            return Err(FailsafeError::TimeoutTooLarge(timeout));
        }
        Ok(DeadmanSwitch {
            timeout,
            last_fed: now,
            fired: false,
        })
    }

    /// The timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// When it was last fed (or created).
    pub fn last_fed(&self) -> Instant {
        self.last_fed
    }

    /// Whether it has fired and not been fed since.
    pub fn is_fired(&self) -> bool {
        self.fired
    }

    /// When it will fire unless fed; `None` while fired (nothing is due
    /// until the next feed).
    pub fn deadline(&self) -> Option<Instant> {
        if self.fired {
            None
        } else {
            self.last_fed.checked_add(self.timeout)
        }
    }

    /// Records a verified message at `now`. Returns
    /// [`FailsafeEvent::Rearmed`] if the switch had fired.
    ///
    /// `feed` does not check the deadline: a driver that may handle a feed
    /// late should [`poll`](Self::poll) at the same `now` first, so that a
    /// feed that came after the deadline still counts as an outage. A `now`
    /// earlier than the last feed counts as the last feed.
    pub fn feed(&mut self, now: Instant) -> Option<FailsafeEvent> {
        let now = now.max(self.last_fed);
        let event = if self.fired {
            self.fired = false;
            Some(FailsafeEvent::Rearmed {
                outage: now.saturating_duration_since(self.last_fed),
            })
        } else {
            None
        };
        self.last_fed = now;
        event
    }

    /// Checks the deadline at `now`. Returns [`FailsafeEvent::Fired`] the
    /// first time it has passed since the last feed, `None` otherwise.
    pub fn poll(&mut self, now: Instant) -> Option<FailsafeEvent> {
        let deadline = self.deadline()?;
        if now < deadline {
            return None;
        }
        self.fired = true;
        Some(FailsafeEvent::Fired {
            silent_for: now.saturating_duration_since(self.last_fed),
            late_by: now.saturating_duration_since(deadline),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn zero_timeout_is_rejected() {
        assert_eq!(
            DeadmanSwitch::new(Duration::ZERO, Instant::now()).err(),
            Some(FailsafeError::ZeroTimeout)
        );
        assert_eq!(
            DeadmanSwitch::new(Duration::MAX, Instant::now()).err(),
            Some(FailsafeError::TimeoutTooLarge(Duration::MAX))
        );
        assert!(DeadmanSwitch::new(Duration::from_nanos(1), Instant::now()).is_ok());
    }

    #[test]
    fn never_fires_while_fed() {
        let t0 = Instant::now();
        let mut s = DeadmanSwitch::new(ms(100), t0).expect("switch");
        for i in 1..=1000 {
            let now = t0 + ms(i * 99);
            assert_eq!(s.poll(now), None, "poll before feed {i}");
            assert_eq!(s.feed(now), None);
            assert_eq!(s.poll(now), None);
            assert_eq!(s.deadline(), Some(now + ms(100)));
        }
    }

    #[test]
    fn fires_once_per_outage_and_rearms() {
        let t0 = Instant::now();
        let mut s = DeadmanSwitch::new(ms(100), t0).expect("switch");
        assert_eq!(s.poll(t0 + ms(99)), None);
        assert_eq!(
            s.poll(t0 + ms(100)),
            Some(FailsafeEvent::Fired {
                silent_for: ms(100),
                late_by: ms(0)
            })
        );
        assert!(s.is_fired());
        assert_eq!(s.deadline(), None);
        for i in 101..200 {
            assert_eq!(s.poll(t0 + ms(i)), None, "fired twice at {i}");
        }
        assert_eq!(
            s.feed(t0 + ms(250)),
            Some(FailsafeEvent::Rearmed { outage: ms(250) })
        );
        assert_eq!(s.feed(t0 + ms(260)), None, "rearmed once");
        assert_eq!(s.deadline(), Some(t0 + ms(360)));
        // A second outage fires again, and reports how late it was noticed.
        assert_eq!(
            s.poll(t0 + ms(375)),
            Some(FailsafeEvent::Fired {
                silent_for: ms(115),
                late_by: ms(15)
            })
        );
        assert_eq!(s.poll(t0 + ms(1000)), None);
        assert_eq!(
            s.feed(t0 + ms(1000)),
            Some(FailsafeEvent::Rearmed { outage: ms(740) })
        );
    }

    #[test]
    fn a_late_feed_after_a_poll_is_an_outage_then_a_rearm() {
        let t0 = Instant::now();
        let mut s = DeadmanSwitch::new(ms(100), t0).expect("switch");
        let late = t0 + ms(130);
        assert!(matches!(s.poll(late), Some(FailsafeEvent::Fired { .. })));
        assert_eq!(
            s.feed(late),
            Some(FailsafeEvent::Rearmed { outage: ms(130) })
        );
    }

    #[test]
    fn feeds_out_of_order_do_not_move_the_deadline_back() {
        let t0 = Instant::now();
        let mut s = DeadmanSwitch::new(ms(100), t0 + ms(50)).expect("switch");
        s.feed(t0);
        assert_eq!(s.deadline(), Some(t0 + ms(150)));
    }
}

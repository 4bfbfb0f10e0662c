//! The tokio driver: a task that sleeps until the switch's deadline and
//! reports what happens on a channel.
//!
//! The switch sits behind a small mutex shared by the handles and the task.
//! A feed is applied at the instant it happens, by the caller of
//! [`FailsafeHandle::feed`]: a lock and two comparisons. Applying feeds in
//! the task instead, through a queue, would let a feed that arrived on time
//! but waited in the queue past the deadline fire the switch; with the lock
//! it cannot.
//!
//! A feed does not wake the task: deadlines only move later, so the task
//! wakes at the old deadline, finds nothing due, and sleeps until the new
//! one (at most one spare wake-up per timeout). Only the feed that re-arms
//! a fired switch wakes it, since a fired switch has no deadline to sleep
//! until.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, mpsc};

use crate::{DeadmanSwitch, FailsafeError, FailsafeEvent};

#[derive(Debug)]
struct Shared {
    switch: Mutex<DeadmanSwitch>,
    wake: Notify,
    events: mpsc::UnboundedSender<FailsafeEvent>,
    /// Live handles; when none is left, the task ends after firing.
    handles: AtomicUsize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, DeadmanSwitch> {
        // The switch's methods do not panic, so a poisoned lock still holds
        // a consistent switch.
        self.switch.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn emit(&self, event: Option<FailsafeEvent>) {
        if let Some(e) = event {
            // Nobody listening means the driver is shutting down.
            let _ = self.events.send(e);
        }
    }
}

/// Feeds the switch. Cheap to clone; all clones feed the same switch.
///
/// When every handle is dropped the switch can no longer be fed: the task
/// fires it at its deadline (if it had not fired already) and ends.
#[derive(Debug)]
pub struct FailsafeHandle {
    shared: Arc<Shared>,
}

impl Clone for FailsafeHandle {
    fn clone(&self) -> Self {
        self.shared.handles.fetch_add(1, Ordering::SeqCst);
        FailsafeHandle {
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The events of one switch. Dropping it stops the driver task.
///
/// The channel is unbounded but slow: at most one `Fired` and one
/// `Rearmed` per outage, and an outage lasts at least the timeout.
#[derive(Debug)]
pub struct FailsafeEvents {
    rx: mpsc::UnboundedReceiver<FailsafeEvent>,
}

impl FailsafeEvents {
    /// The next event; `None` once the driver has stopped.
    pub async fn recv(&mut self) -> Option<FailsafeEvent> {
        self.rx.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<FailsafeEvent> {
        self.rx.try_recv().ok()
    }
}

/// The current time, in the form the switch uses. Under
/// `tokio::time::pause` this is the paused clock.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Starts a switch armed now with `timeout`, and its driver task on the
/// current tokio runtime.
///
/// ```
/// use std::time::Duration;
/// use vigil_failsafe::FailsafeEvent;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() -> Result<(), vigil_failsafe::FailsafeError> {
/// let (handle, mut events) = vigil_failsafe::spawn(Duration::from_secs(15))?;
/// handle.feed(); // on every verified message
/// // Nothing verified for 15 s:
/// let event = events.recv().await;
/// assert!(matches!(event, Some(FailsafeEvent::Fired { .. })));
/// handle.feed();
/// assert!(matches!(events.recv().await, Some(FailsafeEvent::Rearmed { .. })));
/// # Ok(())
/// # }
/// ```
pub fn spawn(timeout: Duration) -> Result<(FailsafeHandle, FailsafeEvents), FailsafeError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| FailsafeError::NoRuntime)?;
    let switch = DeadmanSwitch::new(timeout, now())?;
    let (tx, rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        switch: Mutex::new(switch),
        wake: Notify::new(),
        events: tx,
        handles: AtomicUsize::new(1),
    });
    runtime.spawn(run(Arc::clone(&shared)));
    Ok((FailsafeHandle { shared }, FailsafeEvents { rx }))
}

async fn run(shared: Arc<Shared>) {
    loop {
        let deadline = {
            let switch = shared.lock();
            // Every handle is gone and the switch has fired: nothing can
            // happen any more.
            if switch.is_fired() && shared.handles.load(Ordering::SeqCst) == 0 {
                return;
            }
            switch.deadline()
        };
        match deadline {
            Some(deadline) => {
                tokio::select! {
                    _ = shared.events.closed() => return,
                    // The last handle was dropped.
                    _ = shared.wake.notified() => {}
                    _ = tokio::time::sleep_until(deadline.into()) => {
                        shared.emit(shared.lock().poll(now()));
                    }
                }
            }
            None => {
                tokio::select! {
                    _ = shared.events.closed() => return,
                    // Re-armed, or the last handle was dropped.
                    _ = shared.wake.notified() => {}
                }
            }
        }
    }
}

impl FailsafeHandle {
    /// Records a verified message now.
    pub fn feed(&self) {
        self.feed_at(now());
    }

    /// Records a verified message that arrived at `at`. If the deadline had
    /// passed by then and the task had not yet noticed, this reports the
    /// outage (`Fired`) before `Rearmed`.
    pub fn feed_at(&self, at: Instant) {
        let mut switch = self.shared.lock();
        // Events are sent under the lock, so they reach the channel in the
        // order they happened.
        self.shared.emit(switch.poll(at));
        let rearmed = switch.feed(at);
        let wake = rearmed.is_some();
        self.shared.emit(rearmed);
        drop(switch);
        if wake {
            self.shared.wake.notify_one();
        }
    }

    /// Whether the switch has fired and not been fed since.
    pub fn is_fired(&self) -> bool {
        self.shared.lock().is_fired()
    }

    /// When the switch fires unless fed; `None` while fired.
    pub fn deadline(&self) -> Option<Instant> {
        self.shared.lock().deadline()
    }

    /// How long ago the deadline passed without the switch firing: `None`
    /// while it is not due (or has fired). The driver task fires it as the
    /// deadline passes, so anything longer than a scheduling delay means
    /// the task is stuck; a supervisor (a service watchdog) checks it.
    pub fn overdue(&self) -> Option<Duration> {
        let deadline = self.deadline()?;
        now().checked_duration_since(deadline)
    }

    /// The timeout.
    pub fn timeout(&self) -> Duration {
        self.shared.lock().timeout()
    }
}

impl Drop for FailsafeHandle {
    fn drop(&mut self) {
        if self.shared.handles.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.shared.wake.notify_one();
        }
    }
}

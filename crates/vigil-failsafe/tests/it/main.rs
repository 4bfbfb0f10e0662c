//! The tokio driver, on tokio's paused clock: deterministic to the
//! nanosecond.

use std::time::Duration;

use tokio::time::{Instant, advance, sleep};
use vigil_failsafe::{FailsafeError, FailsafeEvent, spawn};

const TIMEOUT: Duration = Duration::from_secs(15);

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

#[tokio::test(start_paused = true)]
async fn fires_at_the_deadline_exactly_once() {
    let start = Instant::now();
    let (handle, mut events) = spawn(TIMEOUT).expect("spawn");
    let event = events.recv().await.expect("event");
    assert_eq!(
        event,
        FailsafeEvent::Fired {
            silent_for: TIMEOUT,
            late_by: Duration::ZERO
        }
    );
    assert_eq!(start.elapsed(), TIMEOUT);
    assert!(handle.is_fired());
    assert_eq!(handle.deadline(), None);
    // Nothing more while the outage lasts.
    sleep(secs(600)).await;
    assert_eq!(events.try_recv(), None);
}

#[tokio::test(start_paused = true)]
async fn never_fires_while_fed() {
    let (handle, mut events) = spawn(TIMEOUT).expect("spawn");
    for _ in 0..1000 {
        sleep(secs(14)).await;
        handle.feed();
    }
    assert_eq!(events.try_recv(), None);
    assert!(!handle.is_fired());
    // Fed from clones too.
    let clone = handle.clone();
    for _ in 0..10 {
        sleep(secs(14)).await;
        clone.feed();
    }
    assert_eq!(events.try_recv(), None);
}

#[tokio::test(start_paused = true)]
async fn rearms_when_fed_after_firing_and_fires_again() {
    let (handle, mut events) = spawn(TIMEOUT).expect("spawn");
    sleep(secs(10)).await;
    handle.feed();
    // Fires 15 s after the last feed.
    assert_eq!(
        events.recv().await,
        Some(FailsafeEvent::Fired {
            silent_for: TIMEOUT,
            late_by: Duration::ZERO
        })
    );
    sleep(secs(20)).await;
    handle.feed();
    assert_eq!(
        events.recv().await,
        Some(FailsafeEvent::Rearmed { outage: secs(35) })
    );
    assert!(!handle.is_fired());
    // A second outage is reported too.
    let fired_at = Instant::now() + TIMEOUT;
    assert!(matches!(
        events.recv().await,
        Some(FailsafeEvent::Fired { .. })
    ));
    assert_eq!(Instant::now(), fired_at);
}

#[tokio::test(start_paused = true)]
async fn a_feed_that_comes_after_a_missed_deadline_still_counts_the_outage() {
    let (handle, mut events) = spawn(TIMEOUT).expect("spawn");
    // The message that ends the outage is stamped 20 s in, but the task
    // has not run since the deadline (the clock jumps without yielding).
    advance(secs(20)).await;
    handle.feed_at((Instant::now()).into_std());
    let first = events.recv().await;
    assert!(
        matches!(first, Some(FailsafeEvent::Fired { late_by, .. }) if late_by <= secs(5)),
        "{first:?}"
    );
    assert_eq!(
        events.recv().await,
        Some(FailsafeEvent::Rearmed { outage: secs(20) })
    );
    assert_eq!(events.try_recv(), None);
}

#[tokio::test(start_paused = true)]
async fn a_feed_stamped_before_the_deadline_saves_it_even_if_handled_late() {
    let start = Instant::now();
    let (handle, mut events) = spawn(TIMEOUT).expect("spawn");
    let on_time = (Instant::now() + secs(14)).into_std();
    advance(secs(14)).await;
    handle.feed_at(on_time);
    // The deadline is now 29 s in.
    sleep(secs(14)).await;
    assert_eq!(events.try_recv(), None);
    assert_eq!(
        events.recv().await,
        Some(FailsafeEvent::Fired {
            silent_for: TIMEOUT,
            late_by: Duration::ZERO
        })
    );
    assert_eq!(Instant::now() - start, secs(29));
}

#[tokio::test(start_paused = true)]
async fn dropping_every_handle_fires_then_ends_the_task() {
    let (handle, mut events) = spawn(TIMEOUT).expect("spawn");
    drop(handle);
    assert!(matches!(
        events.recv().await,
        Some(FailsafeEvent::Fired { .. })
    ));
    // The task ended, so the channel closes.
    assert_eq!(events.recv().await, None);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_events_stops_the_task() {
    let (handle, events) = spawn(TIMEOUT).expect("spawn");
    drop(events);
    sleep(secs(60)).await;
    handle.feed(); // harmless
}

#[tokio::test(start_paused = true)]
async fn zero_timeout_is_rejected() {
    assert_eq!(
        spawn(Duration::ZERO).err(),
        Some(FailsafeError::ZeroTimeout)
    );
}

#[test]
fn spawning_outside_a_runtime_is_an_error() {
    assert_eq!(spawn(TIMEOUT).err(), Some(FailsafeError::NoRuntime));
}

#[tokio::test(start_paused = true)]
async fn a_driver_that_cannot_run_past_the_deadline_shows_as_overdue() {
    let (handle, mut events) = spawn(TIMEOUT).expect("spawn");
    assert_eq!(handle.overdue(), None, "not due yet");
    // The clock passes the deadline while the driver task gets no turn
    // (this test holds the only thread): it is overdue, as a stuck driver
    // would be.
    advance(TIMEOUT + secs(3)).await;
    assert_eq!(handle.overdue(), Some(secs(3)));
    // Given its turn, it fires, and is no longer overdue.
    assert!(matches!(
        events.recv().await,
        Some(FailsafeEvent::Fired { .. })
    ));
    assert_eq!(handle.overdue(), None);
}

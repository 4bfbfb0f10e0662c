//! Waiting until something holds: polled every 20 ms, with a deadline
//! past which the test fails. The deadlines are hang guards, not timing
//! checks.

use std::time::{Duration, Instant};

/// Longest wait for anything a test expects to happen.
pub const WAIT: Duration = Duration::from_secs(20);

/// How often a condition is checked again.
const POLL: Duration = Duration::from_millis(20);

/// Waits (on the tokio timer) until `cond` holds, at most [`WAIT`]; fails
/// the test with "not in time: `what`" past it.
pub async fn eventually(what: &str, cond: impl FnMut() -> bool) {
    eventually_within(what, WAIT, cond).await;
}

/// As [`eventually`], at most `within`.
pub async fn eventually_within(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "not in time: {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// As [`eventually_within`], blocking the thread: for tests without a
/// runtime.
pub fn until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "not in time: {what}");
        std::thread::sleep(POLL);
    }
}

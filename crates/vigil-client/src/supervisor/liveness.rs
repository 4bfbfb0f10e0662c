//! What a supervisor (the systemd watchdog) asks to know that a client
//! is alive: that [`Client::run`]'s task still turns and that the failsafe
//! fires on time.

use std::net::SocketAddr;
use std::time::Duration;

use vigil_failsafe::FailsafeHandle;

use super::Client;

/// How often [`Client::run`] marks that its task is turning.
const TURN_EVERY: Duration = Duration::from_millis(250);

/// Why [`Client::check_alive`] finds the client stuck.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Stuck {
    /// [`Client::run`] is not running.
    #[error("the client is not running")]
    NotRunning,
    /// Its task has not turned for this long.
    #[error("the client's task has not turned for {0:?}")]
    NotTurning(Duration),
    /// The failsafe's deadline passed this long ago without it firing.
    #[error("the failsafe is {0:?} past its deadline without firing")]
    FailsafeOverdue(Duration),
}

impl Client {
    /// Whether [`Client::run`] still turns (its task took a turn within
    /// `within`, or a quarter second, whichever is longer) and the failsafe
    /// fires on time (its deadline, if passed, passed less than `within`
    /// ago). A supervisor (the systemd watchdog) asks it before each ping,
    /// so that a hung client, or one whose kill switch would not fire, is
    /// restarted.
    pub fn check_alive(&self, within: Duration) -> Result<(), Stuck> {
        let state = self.state();
        let since = state.turned.ok_or(Stuck::NotRunning)?.elapsed();
        if since > within.max(TURN_EVERY * 2) {
            return Err(Stuck::NotTurning(since));
        }
        if let Some(late) = state.failsafe.as_ref().and_then(FailsafeHandle::overdue)
            && late > within
        {
            return Err(Stuck::FailsafeOverdue(late));
        }
        Ok(())
    }

    /// The server this client is connected to now, if it is.
    pub fn connected_to(&self) -> Option<SocketAddr> {
        self.state().conn.as_ref().map(|c| c.peer())
    }

    /// Marks a turn every [`TURN_EVERY`], for as long as it is polled.
    pub(super) async fn turns(&self) {
        let mut ticker = tokio::time::interval(TURN_EVERY);
        loop {
            ticker.tick().await;
            self.state().turned = Some(std::time::Instant::now());
        }
    }

    /// [`Client::run`] starts, with this failsafe.
    pub(super) fn started_turning(&self, failsafe: Option<&FailsafeHandle>) {
        let mut state = self.state();
        state.failsafe = failsafe.cloned();
        state.turned = Some(std::time::Instant::now());
    }

    /// [`Client::run`] has returned.
    pub(super) fn stopped_turning(&self) {
        let mut state = self.state();
        state.failsafe = None;
        state.turned = None;
    }
}

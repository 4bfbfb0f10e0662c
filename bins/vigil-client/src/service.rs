//! systemd's notify protocol for the client (`Type=notify`,
//! `WatchdogSec=`), through the `sd-notify` crate; nothing is sent without
//! `NOTIFY_SOCKET` (not started by systemd).
//!
//! - `READY=1` once the supervisor runs: connected, or trying to (a client
//!   whose server is down is doing its job, and its failsafe is armed).
//! - `WATCHDOG=1` every half `WatchdogSec`, only while the supervisor's
//!   task turns and the failsafe fires on time
//!   ([`vigil_client::Client::check_alive`]).
//! - `STATUS=` with the server it is connected to, or that it is trying.
//! - `STOPPING=1` when it stops, for a signal or an authorized
//!   `SHUTDOWN_NOW`.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use vigil_client::Client;

/// How often the status is refreshed when systemd asks for no watchdog.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// Tells systemd how the client is until `stopped` is cancelled (then
/// [`stopping`] says the rest). Does nothing unless systemd started the
/// client.
pub(crate) fn spawn(client: Arc<Client>, stopped: CancellationToken) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let watchdog = sd_notify::watchdog_enabled();
    tokio::spawn(async move {
        tokio::select! {
            () = stopped.cancelled() => {}
            () = serve(&client, watchdog) => {}
        }
    });
}

/// Tells systemd the client stops (sent by the caller, before it exits).
pub(crate) fn stopping() {
    if std::env::var_os("NOTIFY_SOCKET").is_some() {
        send(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
    }
}

async fn serve(client: &Client, watchdog: Option<Duration>) {
    let every = watchdog.map_or(STATUS_EVERY, |w| (w / 2).max(Duration::from_millis(20)));
    let within = (every / 2).max(Duration::from_millis(10));
    while client.check_alive(Duration::from_secs(1)).is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    send(&[NotifyState::Ready, NotifyState::Status(&status(client))]);
    tracing::info!(watchdog = ?watchdog, "told systemd: ready");
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticker.tick().await;
        match client.check_alive(within) {
            Ok(()) => {
                if failing {
                    tracing::warn!("the client turns again: pinging the watchdog again");
                    failing = false;
                }
                let status = status(client);
                let status = NotifyState::Status(&status);
                match watchdog {
                    Some(_) => send(&[NotifyState::Watchdog, status]),
                    None => send(&[status]),
                }
            }
            Err(e) => {
                if !failing {
                    tracing::error!(error = %e, "the client is stuck: not pinging the watchdog");
                    failing = true;
                }
                send(&[NotifyState::Status(&format!("stuck: {e}"))]);
            }
        }
    }
}

fn status(client: &Client) -> String {
    match client.connected_to() {
        Some(server) => format!("connected to {server}"),
        None => "connecting".to_owned(),
    }
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

//! systemd's notify protocol (`Type=notify`, `WatchdogSec=`): readiness,
//! status, the watchdog and stopping, through the `sd-notify` crate. Without
//! `NOTIFY_SOCKET` in the environment (not started by systemd) nothing is
//! sent.
//!
//! - `READY=1` once the accept loop answers a liveness question: by then
//!   the listeners are bound, the audit log has been opened and its chain
//!   verified, the trust file loaded (all before the deployment started),
//!   and connections are being accepted.
//! - `WATCHDOG=1` every half `WatchdogSec`, only after the accept loop,
//!   the heartbeat task and the audit writer have each answered within a
//!   quarter of it ([`vigil_server::ServerHandle::check_alive`]): a hung
//!   server stops pinging, and systemd restarts it.
//! - `STATUS=` with the number of clients, or with what does not answer.
//! - `STOPPING=1` when shutdown begins, for a signal or an authorized
//!   emergency shutdown alike.

use std::time::Duration;

use sd_notify::NotifyState;
use vigil_server::{Fault, ServerHandle};

/// How often the status is refreshed when systemd asks for no watchdog.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// Starts telling systemd how the server is, if systemd started it.
pub(crate) fn spawn(handle: ServerHandle) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let watchdog = sd_notify::watchdog_enabled();
    tokio::spawn(async move {
        tokio::select! {
            () = handle.stopping() => {}
            () = serve(&handle, watchdog) => {}
        }
        send(&[
            NotifyState::Stopping,
            NotifyState::Status("stopping: closing sessions"),
        ]);
        tracing::info!("told systemd: stopping");
    });
}

async fn serve(handle: &ServerHandle, watchdog: Option<Duration>) {
    // Ping at half the timeout; give each part a quarter to answer.
    let every = watchdog.map_or(STATUS_EVERY, |w| (w / 2).max(Duration::from_millis(20)));
    let within = (every / 2).max(Duration::from_millis(10));
    while let Err(e) = handle.check_alive(within.max(Duration::from_secs(1))).await {
        tracing::debug!(error = %e, "not ready yet");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    send(&[NotifyState::Ready, NotifyState::Status(&status(handle))]);
    tracing::info!(watchdog = ?watchdog, "told systemd: ready");
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticker.tick().await;
        match handle.check_alive(within).await {
            Ok(()) => {
                if failing {
                    tracing::warn!("every part answers again: pinging the watchdog again");
                    failing = false;
                }
                let status = status(handle);
                let status = NotifyState::Status(&status);
                match watchdog {
                    Some(_) => send(&[NotifyState::Watchdog, status]),
                    None => send(&[status]),
                }
            }
            Err(e) => {
                if !failing {
                    tracing::error!(error = %e, "the server is stuck: not pinging the watchdog");
                    failing = true;
                }
                send(&[NotifyState::Status(&format!("stuck: {e}"))]);
            }
        }
    }
}

fn status(handle: &ServerHandle) -> String {
    let n = handle.session_count();
    format!("serving {n} client{}", if n == 1 { "" } else { "s" })
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// With `VIGIL_FAULT_INJECTION=accept-loop` (or `heartbeats`) in the
/// environment, SIGUSR1 freezes the accept loop (or the heartbeat task),
/// to test the watchdog; otherwise nothing.
/// Returns an error for a value it does not know.
pub(crate) fn arm_fault_injection(handle: &ServerHandle) -> Result<(), String> {
    let Some(value) = std::env::var_os("VIGIL_FAULT_INJECTION") else {
        return Ok(());
    };
    let fault = match value.to_str() {
        Some("accept-loop") => Fault::FreezeAcceptLoop,
        Some("heartbeats") => Fault::FreezeHeartbeats,
        _ => {
            return Err(format!(
                "VIGIL_FAULT_INJECTION={}: the faults are accept-loop and heartbeats",
                value.to_string_lossy()
            ));
        }
    };
    use tokio::signal::unix::{SignalKind, signal};
    let mut signals = signal(SignalKind::user_defined1())
        .map_err(|e| format!("cannot handle SIGUSR1 for fault injection: {e}"))?;
    tracing::warn!(?fault, "fault injection armed: SIGUSR1 injects it");
    let handle = handle.clone();
    tokio::spawn(async move {
        if signals.recv().await.is_some() {
            handle.inject_fault(fault);
        }
    });
    Ok(())
}

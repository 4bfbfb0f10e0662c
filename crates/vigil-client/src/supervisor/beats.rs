//! Heartbeats as the client sees them: the nonces it sends for the server
//! to cover, the check of each beat, and the clock offset it measures.

use std::time::Instant;

use vigil_command::{NonceVerifier, encode_nonce};
use vigil_proto::NonceBody;

use super::*;

/// A nonce goes out at least this often while connected, besides one
/// after each fresh beat: a lost beat must not leave the server with only
/// an old nonce to cover.
const NONCE_EVERY_MAX: Duration = Duration::from_secs(5);

/// A change of the measured clock offset past this is logged.
const SKEW_LOG_STEP_MS: i64 = 1_000;

/// An offset past this is logged as a warning: commands, whose freshness
/// window still uses wall clocks, are at risk.
const SKEW_WARN_MS: i64 = 30_000;

impl Client {
    /// The ticker for nonces, if beats are checked by nonce: every third
    /// of the nonce's allowed age, at most every 5 s.
    pub(super) fn nonce_ticker(&self) -> Option<tokio::time::Interval> {
        let max_age = match self.state().heartbeats.as_ref()? {
            BeatCheck::Nonce(v) => v.first()?.max_age(),
            BeatCheck::Clock(_) => return None,
        };
        let every = (max_age / 3).clamp(Duration::from_millis(50), NONCE_EVERY_MAX);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Some(ticker)
    }

    /// Sends a fresh nonce, with the last measured clock offset, if beats
    /// are checked by nonce.
    pub(super) fn send_nonce(&self, conn: &Connection) {
        let mut state = self.state();
        let skew_ms = state.skew_ms;
        let Some(BeatCheck::Nonce(verifiers)) = state.heartbeats.as_mut() else {
            return;
        };
        let nonce = match NonceVerifier::random_nonce() {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "no nonce sent: the failsafe is not fed until one is");
                return;
            }
        };
        // Whichever server covers it, its key's verifier knows the nonce.
        let now = monotonic();
        for verifier in verifiers.iter_mut() {
            verifier.issue(nonce, now);
        }
        state.nonces_sent += 1;
        let reference = format!("n{}", state.nonces_sent);
        drop(state);
        let body = NonceBody {
            nonce: encode_nonce(&nonce),
            skew_ms,
        };
        if let Err(e) = conn.notify(ClientRequest::Nonce(body), &reference) {
            // The connection is closing, or its request queue is full: the
            // ticker sends the next one.
            tracing::debug!(error = %e, "nonce not sent; the next one goes at the next tick");
        }
    }

    /// Checks one heartbeat; a fresh one feeds the failsafe. Returns
    /// whether it was fresh.
    pub(super) fn on_heartbeat(
        &self,
        body: &serde_json::Map<String, serde_json::Value>,
        feed: Option<&FailsafeHandle>,
    ) -> bool {
        let mut state = self.state();
        let Some(check) = state.heartbeats.as_mut() else {
            tracing::debug!("heartbeat ignored: no heartbeat key configured");
            return false;
        };
        match check_heartbeat(check, body, monotonic(), SystemTime::now()) {
            Ok(skew) => {
                if let Some(feed) = feed {
                    feed.feed();
                }
                let changed = skew.filter(|now| {
                    state
                        .logged_skew_ms
                        .is_none_or(|before| (now - before).abs() > SKEW_LOG_STEP_MS)
                });
                state.skew_ms = skew.or(state.skew_ms);
                if let Some(skew_ms) = changed {
                    state.logged_skew_ms = Some(skew_ms);
                    drop(state);
                    if skew_ms.abs() > SKEW_WARN_MS {
                        tracing::warn!(
                            skew_ms,
                            "this machine's clock is off from the server's by more than 30 s: heartbeats still count, signed commands may be refused as stale or from the future"
                        );
                    } else {
                        tracing::info!(
                            skew_ms,
                            "clock offset from the server (server minus this machine)"
                        );
                    }
                    self.emit(ClientEvent::ClockSkew { skew_ms });
                }
                true
            }
            Err(reason) => {
                drop(state);
                tracing::warn!(%reason, "heartbeat refused; the failsafe is not fed");
                self.emit(ClientEvent::HeartbeatRefused { reason });
                false
            }
        }
    }
}

/// Time on this process's monotonic clock, since a fixed origin.
fn monotonic() -> Duration {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed()
}

/// The next tick of `ticker`; never, without one.
pub(super) async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

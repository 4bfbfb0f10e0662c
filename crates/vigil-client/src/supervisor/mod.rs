//! Keeping a connection up: connect, sync, watch, reconnect with backoff.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rand::Rng;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use vigil_failsafe::FailsafeHandle;
use vigil_proto::{Ack, AckStatus, ClientRequest, FailsafeReport, ModuleInfo, ServerMessage};

use crate::commands::{Accepted, BeatCheck, Refused, check_commands, check_heartbeat};
use crate::handler::run_break_commands;

use crate::{ClientConfig, ClientError, Connection};

#[derive(Debug, Default)]
struct State {
    conn: Option<Arc<Connection>>,
    /// Modules whose bytes this client verified, by name.
    trusted: BTreeMap<String, ModuleInfo>,
    /// Checks heartbeats; kept across connections so that sequence and
    /// epoch only move forward.
    heartbeats: Option<BeatCheck>,
    /// The last clock offset a fresh beat measured, and the last one that
    /// was logged.
    skew_ms: Option<i64>,
    logged_skew_ms: Option<i64>,
    /// Nonces sent, for their REFs.
    nonces_sent: u64,
    /// The failsafe of the current run, and when the run's task last took
    /// a turn (`None` when not running), for [`Client::check_alive`].
    failsafe: Option<FailsafeHandle>,
    turned: Option<std::time::Instant>,
}

/// Failsafe transitions the server has not yet confirmed, oldest first.
#[derive(Debug, Default)]
struct Reports {
    queue: std::collections::VecDeque<FailsafeReport>,
    /// A task is sending them.
    sending: bool,
}

/// A client that keeps its connection up until told to stop, and keeps a
/// table of the server's modules whose bytes it verified.
///
/// After each connect it syncs and verifies every module; on `modload` and
/// `modreload` it distrusts that module until it has verified the new
/// bytes; on `modunload` it forgets it. [`Client::exec`] runs only verified
/// modules, sending the verified sum.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    events: broadcast::Sender<ClientEvent>,
    state: Mutex<State>,
    reports: Arc<Mutex<Reports>>,
}

impl Client {
    /// A client for `config`; nothing happens until [`Client::run`].
    pub fn new(config: ClientConfig) -> Self {
        let (events, _) = broadcast::channel(1024);
        let heartbeats = config.commands.as_ref().and_then(|c| c.beat_check().ok());
        Client {
            config,
            events,
            state: Mutex::new(State {
                heartbeats,
                ..State::default()
            }),
            reports: Arc::default(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The modules this client verified, by name.
    pub fn trusted_modules(&self) -> Vec<ModuleInfo> {
        self.state().trusted.values().cloned().collect()
    }

    /// Runs a verified module on the server. Fails without asking the
    /// server if the module is not verified or there is no connection.
    pub async fn exec(&self, module: &str, args: &str) -> Result<String, ClientError> {
        let (conn, sum) = {
            let state = self.state();
            let info = state
                .trusted
                .get(module)
                .ok_or_else(|| ClientError::NotTrusted(module.to_owned()))?;
            let conn = state.conn.clone().ok_or(ClientError::NotConnected)?;
            (conn, info.sum.clone())
        };
        conn.exec(module, args, &sum).await
    }

    /// [`Client::verify_module`] with owned arguments, for a set of
    /// verifications in flight.
    async fn verify_owned(&self, conn: Arc<Connection>, module: String, expected: String) {
        self.verify_module(&conn, &module, Some(&expected)).await;
    }

    /// Verifies one module and records the outcome.
    async fn verify_module(&self, conn: &Connection, module: &str, expected: Option<&str>) {
        match conn.verify(module, expected).await {
            Ok(info) => {
                tracing::info!(module = %info.name, sum = %info.sum, size = info.size, desc = %info.desc, "module verified");
                self.state().trusted.insert(info.name.clone(), info.clone());
                self.emit(ClientEvent::ModuleTrusted(info));
            }
            Err(reason) => {
                match &reason {
                    ClientError::Manifest { code, .. } => {
                        tracing::error!(module, code, error = %reason, "module manifest refused; the module is not trusted and will not run")
                    }
                    _ => {
                        tracing::error!(module, error = %reason, "module failed verification; it will not run")
                    }
                }
                self.emit(ClientEvent::ModuleRejected {
                    module: module.to_owned(),
                    reason,
                });
            }
        }
    }

    /// Receives the events of this client from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ClientEvent> {
        self.events.subscribe()
    }

    fn emit(&self, event: ClientEvent) {
        let _ = self.events.send(event);
    }

    /// Connects, syncs, verifies modules, takes signed commands and
    /// heartbeats, and reconnects when the connection drops, until
    /// `shutdown` is cancelled or an authorized `SHUTDOWN_NOW` arrives.
    ///
    /// With [`CommandSettings`](crate::CommandSettings), the failsafe is
    /// armed from the start: when no verified heartbeat or command arrives
    /// for its timeout, connected or not, the break commands run once; it
    /// re-arms when verified messages come back.
    ///
    /// A client with commands whose failsafe cannot be armed (or whose
    /// settings were made unsafe after [`CommandSettings::new`](crate::CommandSettings::new))
    /// does not start: it returns [`RunOutcome::NotStarted`] at once.
    pub async fn run(&self, shutdown: CancellationToken) -> RunOutcome {
        let failsafe = match &self.config.commands {
            Some(settings) => {
                let armed = settings.check().and_then(|()| {
                    vigil_failsafe::spawn(settings.failsafe_timeout).map_err(ClientError::Failsafe)
                });
                match armed {
                    Ok((handle, events)) => Some((handle, events)),
                    Err(e) => {
                        tracing::error!(error = %e, "not starting: the failsafe cannot be armed");
                        return RunOutcome::NotStarted(e);
                    }
                }
            }
            None => None,
        };
        let (feed, mut failsafe_events) = match failsafe {
            Some((h, e)) => (Some(h), Some(e)),
            None => (None, None),
        };
        if let Some(settings) = &self.config.commands {
            tracing::info!(timeout = ?settings.failsafe_timeout, break_commands = settings.break_commands.len(), "failsafe armed");
        }
        self.started_turning(feed.as_ref());
        let failsafe_loop = async {
            match failsafe_events.as_mut() {
                Some(events) => {
                    while let Some(event) = events.recv().await {
                        self.on_failsafe(event).await;
                    }
                    std::future::pending::<()>().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        let sessions = async {
            let mut attempt: u32 = 0;
            // The servers it may connect to: `server`, then `failover`,
            // each aimed at with its own pins.
            let endpoints: Vec<ClientConfig> = self
                .config
                .endpoints()
                .iter()
                .filter_map(|e| self.config.for_endpoint(e))
                .collect();
            let mut at = 0;
            loop {
                let config = endpoints.get(at).unwrap_or(&self.config);
                let end = self.session(&mut attempt, feed.as_ref(), config).await;
                let outcome = match end {
                    SessionEnd::Shutdown(command_id) => return RunOutcome::Shutdown { command_id },
                    SessionEnd::Lost(e) => e,
                };
                match &outcome {
                    ClientError::CertificateRefused { .. } => tracing::error!(
                        client = %self.config.identity.fingerprint(),
                        error = %outcome,
                        "the server refused this client's certificate"
                    ),
                    ClientError::WrongServer(_) => {
                        tracing::error!(error = %outcome, "not the pinned server")
                    }
                    _ => tracing::warn!(error = %outcome, "connection lost"),
                }
                self.emit(ClientEvent::Disconnected { reason: outcome });
                // Another server of the cluster next, picked at random so
                // that the clients of a server that died spread over the
                // others.
                at = next_endpoint(at, endpoints.len(), &mut rand::rng());
                let delay = self.config.backoff.delay(attempt, &mut rand::rng());
                attempt = attempt.saturating_add(1);
                tracing::info!(attempt, ?delay, server = %endpoints.get(at).map_or(self.config.server.as_str(), |c| c.server.as_str()), "reconnecting after a delay");
                self.emit(ClientEvent::Retrying { attempt, delay });
                tokio::time::sleep(delay).await;
            }
        };
        let outcome = tokio::select! {
            () = shutdown.cancelled() => RunOutcome::Stopped,
            outcome = sessions => outcome,
            () = failsafe_loop => RunOutcome::Stopped,
            () = self.turns() => RunOutcome::Stopped,
        };
        {
            let mut state = self.state();
            state.conn = None;
            state.trusted.clear();
        }
        self.stopped_turning();
        tracing::info!(?outcome, "client stopped");
        outcome
    }

    /// One connection to the server `config` names, from connect to its
    /// end. Resets `attempt` once the server has answered a sync.
    async fn session(
        &self,
        attempt: &mut u32,
        feed: Option<&FailsafeHandle>,
        config: &ClientConfig,
    ) -> SessionEnd {
        let mut conn = match Connection::connect(config).await {
            Ok(conn) => conn,
            Err(e) => return SessionEnd::Lost(e),
        };
        tracing::info!(
            server = %conn.peer(),
            server_fingerprint = %conn.server_fingerprint(),
            "connected to the pinned server"
        );
        let Some(pushed) = conn.take_pushed() else {
            return SessionEnd::Lost(ClientError::Protocol(
                "the connection's lanes were already taken".into(),
            ));
        };
        let crate::Pushed {
            mut heartbeats,
            mut urgent,
            commands,
            mut events,
            ..
        } = pushed;
        let conn = Arc::new(conn);
        // The worker and running commands hold the connection too: it ends
        // with this session, however the session ends (also when the client
        // stops and this future is dropped).
        let _close = CloseOnDrop(conn.clone());
        let closed = conn.closed();
        tokio::pin!(closed);
        self.emit(ClientEvent::Connected {
            peer: conn.peer(),
            server: conn.server_fingerprint(),
        });
        // The first nonce goes out before the sync, so that the server's
        // next beat can cover it.
        let mut nonces = self.nonce_ticker();
        self.send_nonce(&conn);
        let modules = match conn.sync().await {
            Ok(modules) => modules,
            Err(e) => return SessionEnd::Lost(e),
        };
        *attempt = 0;
        tracing::info!(count = modules.len(), "server modules synced");
        {
            let mut state = self.state();
            state.trusted.clear();
            state.conn = Some(conn.clone());
        }
        self.flush_reports();
        self.emit(ClientEvent::Synced {
            modules: modules.clone(),
        });
        // Verifications run beside the loop below, so that heartbeats and
        // commands are handled while module bytes download.
        let mut verifying = futures_util::stream::FuturesUnordered::new();
        for m in &modules {
            verifying.push(self.verify_owned(conn.clone(), m.name.clone(), m.sum.clone()));
        }
        // Commands are checked and run by a task of their own: heartbeats
        // and emergency commands never wait behind them. It checks nothing
        // once the connection is gone (then it ends); what it checked
        // still runs.
        tokio::spawn(
            Worker {
                settings: self.config.commands.clone(),
                conn: conn.clone(),
                feed: feed.cloned(),
                events: self.events.clone(),
            }
            .run(commands),
        );
        let end = loop {
            tokio::select! {
                biased;
                reason = &mut closed => break SessionEnd::Lost(reason),
                Some((reference, body)) = urgent.recv() => {
                    if let Some(command_id) = self.on_urgent(&conn, &reference, &body, feed).await {
                        break SessionEnd::Shutdown(command_id);
                    }
                }
                Ok(()) = heartbeats.changed() => {
                    let beat = heartbeats.borrow_and_update().clone();
                    if let Some((_, body)) = beat
                        && self.on_heartbeat(&body, feed)
                    {
                        // A fresh nonce for the next beat.
                        self.send_nonce(&conn);
                        if let Some(t) = nonces.as_mut() {
                            t.reset();
                        }
                    }
                }
                _ = tick(&mut nonces) => self.send_nonce(&conn),
                Some(()) = futures_util::StreamExt::next(&mut verifying), if !verifying.is_empty() => {}
                Some((reference, msg)) = events.recv() => {
                    match msg {
                        ServerMessage::ModLoad(ref info) | ServerMessage::ModReload(ref info) => {
                            tracing::info!(module = %info.name, sum = %info.sum, "module changed on the server; verifying");
                            // Distrusted at once; trusted again once the
                            // new bytes are verified.
                            self.state().trusted.remove(&info.name);
                            verifying.push(self.verify_owned(
                                conn.clone(),
                                info.name.clone(),
                                info.sum.clone(),
                            ));
                            self.emit(ClientEvent::Broadcast(msg));
                        }
                        ServerMessage::ModUnload { ref module } => {
                            if self.state().trusted.remove(module).is_some() {
                                tracing::info!(module, "module unloaded by the server; forgotten");
                            }
                            let module = module.clone();
                            self.emit(ClientEvent::Broadcast(msg));
                            self.emit(ClientEvent::ModuleForgotten { module });
                        }
                        other => {
                            tracing::debug!(frame = %other.to_frame(&reference), "unsolicited frame");
                            self.emit(ClientEvent::Broadcast(other));
                        }
                    }
                    // Broadcasts were dropped (this loop fell behind): ask
                    // for the whole list again and verify what changed.
                    if conn.take_resync() {
                        match conn.sync().await {
                            Ok(modules) => {
                                let trusted = self.state().trusted.clone();
                                for name in trusted.keys().filter(|n| !modules.iter().any(|m| &m.name == *n)) {
                                    self.state().trusted.remove(name);
                                    self.emit(ClientEvent::ModuleForgotten { module: name.clone() });
                                }
                                for m in modules {
                                    if trusted.get(&m.name).is_none_or(|t| t.sum != m.sum) {
                                        self.state().trusted.remove(&m.name);
                                        verifying.push(self.verify_owned(conn.clone(), m.name.clone(), m.sum.clone()));
                                    }
                                }
                            }
                            Err(e) => break SessionEnd::Lost(e),
                        }
                    }
                }
            }
        };
        let mut state = self.state();
        state.conn = None;
        state.trusted.clear();
        end
    }
}

/// How a connection ended.
enum SessionEnd {
    Lost(ClientError),
    Shutdown(String),
}

/// Why [`Client::run`] returned.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum RunOutcome {
    /// The shutdown token was cancelled.
    Stopped,
    /// An authorized `SHUTDOWN_NOW` arrived; its break commands ran.
    Shutdown {
        /// The command's id.
        command_id: String,
    },
    /// The client did not start: with command settings, it runs only with
    /// its failsafe armed.
    NotStarted(ClientError),
}

/// The endpoint after `at` among `n`: another one at random (the same
/// with one or none).
fn next_endpoint(at: usize, n: usize, rng: &mut impl Rng) -> usize {
    if n < 2 {
        return 0;
    }
    (at + rng.random_range(1..n)) % n
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn now_rfc3339() -> String {
    vigil_command::Timestamp::from_system_time(SystemTime::now())
        .map(|t| t.isoformat())
        .unwrap_or_default()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

mod backoff;
mod beats;
mod events;
mod failsafe;
mod liveness;
mod worker;

pub use backoff::Backoff;
use beats::tick;
pub use events::ClientEvent;
pub use liveness::Stuck;
use worker::{CloseOnDrop, Worker, check, disabled};

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_next_server_is_another_and_every_other_is_reached() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        assert_eq!(next_endpoint(0, 1, &mut rng), 0);
        assert_eq!(next_endpoint(0, 0, &mut rng), 0);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            let next = next_endpoint(1, 3, &mut rng);
            assert_ne!(next, 1);
            assert!(next < 3);
            seen.insert(next);
        }
        assert_eq!(seen.len(), 2, "both others are picked");
    }
}

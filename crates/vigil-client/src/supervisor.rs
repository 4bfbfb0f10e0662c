//! Keeping a connection up: connect, sync, watch, reconnect with backoff.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use vigil_auth::Fingerprint;
use vigil_proto::{ModuleInfo, ServerMessage};

use crate::{ClientConfig, ClientError, Connection};

/// Exponential backoff with jitter for reconnects.
///
/// The n-th retry (from 0) waits a random time in `[d/2, d]`, where
/// `d = min(max, initial * 2^n)`: the delay grows fast, and a fleet of
/// clients that lost the server at the same moment spreads out instead of
/// coming back in one wave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The ceiling for retry `attempt` (from 0), before jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay for retry `attempt`, drawn from `rng`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        let spread = u64::try_from((ceiling - half).as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(rng.random_range(0..=spread))
    }
}

/// What a [`Client`] reports while it runs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum ClientEvent {
    /// Connected and admitted by the server.
    Connected {
        /// The server's address.
        peer: SocketAddr,
        /// The server's fingerprint.
        server: Fingerprint,
    },
    /// The server listed its modules.
    Synced {
        /// The modules.
        modules: Vec<ModuleInfo>,
    },
    /// The server broadcast a message.
    Broadcast(ServerMessage),
    /// A module's bytes were fetched and matched their sum: it may run.
    ModuleTrusted(ModuleInfo),
    /// A module failed verification: it will not run.
    ModuleRejected {
        /// The module.
        module: String,
        /// Why.
        reason: ClientError,
    },
    /// The server unloaded a module: it is forgotten.
    ModuleForgotten {
        /// The module.
        module: String,
    },
    /// The connection failed or ended.
    Disconnected {
        /// Why.
        reason: ClientError,
    },
    /// Waiting before the next attempt.
    Retrying {
        /// Attempt number, from 1.
        attempt: u32,
        /// How long until it.
        delay: Duration,
    },
}

#[derive(Debug, Default)]
struct State {
    conn: Option<Arc<Connection>>,
    /// Modules whose bytes this client verified, by name.
    trusted: BTreeMap<String, ModuleInfo>,
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
}

impl Client {
    /// A client for `config`; nothing happens until [`Client::run`].
    pub fn new(config: ClientConfig) -> Self {
        let (events, _) = broadcast::channel(1024);
        Client {
            config,
            events,
            state: Mutex::new(State::default()),
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

    /// Verifies one module and records the outcome.
    async fn verify_module(&self, conn: &Connection, module: &str, expected: Option<&str>) {
        self.state().trusted.remove(module);
        match conn.verify(module, expected).await {
            Ok(info) => {
                tracing::info!(module = %info.name, sum = %info.sum, size = info.size, desc = %info.desc, "module verified");
                self.state().trusted.insert(info.name.clone(), info.clone());
                self.emit(ClientEvent::ModuleTrusted(info));
            }
            Err(reason) => {
                tracing::error!(module, error = %reason, "module failed verification; it will not run");
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

    /// Connects, syncs, and follows the server's broadcasts; reconnects when
    /// the connection drops, until `shutdown` is cancelled.
    pub async fn run(&self, shutdown: CancellationToken) {
        let mut attempt: u32 = 0;
        while !shutdown.is_cancelled() {
            let outcome = tokio::select! {
                () = shutdown.cancelled() => break,
                outcome = self.session(&mut attempt) => outcome,
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
            let delay = self.config.backoff.delay(attempt, &mut rand::rng());
            attempt = attempt.saturating_add(1);
            tracing::info!(attempt, ?delay, "reconnecting after a delay");
            self.emit(ClientEvent::Retrying { attempt, delay });
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
            }
        }
        tracing::info!("client stopped");
    }

    /// One connection, from connect to its end. Resets `attempt` once the
    /// server has answered a sync.
    async fn session(&self, attempt: &mut u32) -> ClientError {
        let mut conn = match Connection::connect(&self.config).await {
            Ok(conn) => conn,
            Err(e) => return e,
        };
        tracing::info!(
            server = %conn.peer(),
            fingerprint = %conn.server_fingerprint(),
            "connected to the pinned server"
        );
        let Some(mut broadcasts) = conn.take_broadcasts() else {
            return ClientError::Protocol("broadcast receiver already taken".into());
        };
        let conn = Arc::new(conn);
        let closed = conn.closed();
        tokio::pin!(closed);
        self.emit(ClientEvent::Connected {
            peer: conn.peer(),
            server: conn.server_fingerprint(),
        });
        let modules = match conn.sync().await {
            Ok(modules) => modules,
            Err(e) => return e,
        };
        *attempt = 0;
        tracing::info!(count = modules.len(), "server modules synced");
        {
            let mut state = self.state();
            state.trusted.clear();
            state.conn = Some(conn.clone());
        }
        self.emit(ClientEvent::Synced {
            modules: modules.clone(),
        });
        for m in &modules {
            self.verify_module(&conn, &m.name, Some(&m.sum)).await;
        }
        let reason = loop {
            tokio::select! {
                reason = &mut closed => break reason,
                Some(msg) = broadcasts.recv() => {
                    tracing::info!(frame = %msg.to_frame("-"), "broadcast from server");
                    self.emit(ClientEvent::Broadcast(msg.clone()));
                    match msg {
                        ServerMessage::ModLoad(info) | ServerMessage::ModReload(info) => {
                            self.verify_module(&conn, &info.name, Some(&info.sum)).await;
                        }
                        ServerMessage::ModUnload { module } => {
                            if self.state().trusted.remove(&module).is_some() {
                                tracing::info!(module, "module unloaded by the server; forgotten");
                            }
                            self.emit(ClientEvent::ModuleForgotten { module });
                        }
                        _ => {}
                    }
                }
            }
        };
        let mut state = self.state();
        state.conn = None;
        state.trusted.clear();
        reason
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn delays_grow_stay_bounded_and_spread() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(5),
        };
        assert_eq!(b.ceiling(0), Duration::from_millis(100));
        assert_eq!(b.ceiling(3), Duration::from_millis(800));
        assert_eq!(b.ceiling(10), Duration::from_secs(5));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(5));
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let delays: Vec<Duration> = (0..200).map(|_| b.delay(6, &mut rng)).collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= Duration::from_millis(2500) && *d <= Duration::from_secs(5))
        );
        let distinct: std::collections::HashSet<_> = delays.iter().collect();
        assert!(distinct.len() > 100, "jitter spreads retries");
    }
}

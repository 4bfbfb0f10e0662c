//! Keeping a connection up: connect, sync, watch, reconnect with backoff.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rand::Rng;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use vigil_auth::Fingerprint;
use vigil_command::HeartbeatVerifier;
use vigil_failsafe::FailsafeHandle;
use vigil_proto::{Ack, AckStatus, ClientRequest, FailsafeReport, ModuleInfo, ServerMessage};

use crate::commands::{Accepted, Refused, check_commands, check_heartbeat};
use crate::handler::run_break_commands;

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
    /// A command failed verification and was refused (nothing ran).
    CommandRefused {
        /// Its id, if it could be read.
        command_id: Option<String>,
        /// Machine-readable reason.
        code: String,
        /// The reason, for a person.
        detail: String,
    },
    /// A verified command ran; this is the acknowledgement sent.
    CommandRan(Ack),
    /// A heartbeat failed verification (the failsafe was not fed).
    HeartbeatRefused {
        /// Why.
        reason: String,
    },
    /// The failsafe fired; the break commands ran with these outcomes.
    FailsafeFired {
        /// How long no verified message had arrived.
        silent_for: Duration,
        /// Each break command's outcome.
        outcomes: Vec<vigil_proto::BreakOutcome>,
    },
    /// Verified messages are back after the failsafe fired.
    FailsafeRearmed {
        /// How long the outage lasted.
        outage: Duration,
    },
    /// An authorized `SHUTDOWN_NOW` arrived; [`Client::run`] returns.
    ShutdownRequested {
        /// The command's id.
        command_id: String,
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
    /// Checks heartbeats; kept across connections so that sequence and
    /// epoch only move forward.
    heartbeats: Option<HeartbeatVerifier>,
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
        let heartbeats = config
            .commands
            .as_ref()
            .and_then(|c| c.heartbeat_verifier());
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

    /// Connects, syncs, verifies modules, takes signed commands and
    /// heartbeats, and reconnects when the connection drops, until
    /// `shutdown` is cancelled or an authorized `SHUTDOWN_NOW` arrives.
    ///
    /// With [`CommandSettings`](crate::CommandSettings), the failsafe is
    /// armed from the start: when no verified heartbeat or command arrives
    /// for its timeout, connected or not, the break commands run once; it
    /// re-arms when verified messages come back.
    pub async fn run(&self, shutdown: CancellationToken) -> RunOutcome {
        let failsafe = match &self.config.commands {
            Some(settings) => match vigil_failsafe::spawn(settings.failsafe_timeout) {
                Ok((handle, events)) => Some((handle, events)),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the failsafe");
                    None
                }
            },
            None => None,
        };
        let (feed, mut failsafe_events) = match failsafe {
            Some((h, e)) => (Some(h), Some(e)),
            None => (None, None),
        };
        if let Some(settings) = &self.config.commands {
            tracing::info!(timeout = ?settings.failsafe_timeout, break_commands = settings.break_commands.len(), "failsafe armed");
        }
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
            loop {
                let end = self.session(&mut attempt, feed.as_ref()).await;
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
                let delay = self.config.backoff.delay(attempt, &mut rand::rng());
                attempt = attempt.saturating_add(1);
                tracing::info!(attempt, ?delay, "reconnecting after a delay");
                self.emit(ClientEvent::Retrying { attempt, delay });
                tokio::time::sleep(delay).await;
            }
        };
        let outcome = tokio::select! {
            () = shutdown.cancelled() => RunOutcome::Stopped,
            outcome = sessions => outcome,
            () = failsafe_loop => RunOutcome::Stopped,
        };
        {
            let mut state = self.state();
            state.conn = None;
            state.trusted.clear();
        }
        tracing::info!(?outcome, "client stopped");
        outcome
    }

    /// Runs the break commands when the failsafe fires; reports both
    /// transitions to the server as soon as it can be reached.
    async fn on_failsafe(&self, event: vigil_failsafe::FailsafeEvent) {
        let Some(settings) = &self.config.commands else {
            return;
        };
        let report = match event {
            vigil_failsafe::FailsafeEvent::Fired {
                silent_for,
                late_by,
            } => {
                tracing::error!(
                    ?silent_for,
                    ?late_by,
                    "FAILSAFE FIRED: no verified message from the server; running break commands"
                );
                let outcomes =
                    run_break_commands(settings.handler.as_ref(), &settings.break_commands).await;
                self.emit(ClientEvent::FailsafeFired {
                    silent_for,
                    outcomes: outcomes.clone(),
                });
                FailsafeReport {
                    event: "fired".into(),
                    at: now_rfc3339(),
                    silent_ms: millis(silent_for),
                    break_commands: outcomes,
                }
            }
            vigil_failsafe::FailsafeEvent::Rearmed { outage } => {
                tracing::warn!(?outage, "failsafe re-armed: verified messages are back");
                self.emit(ClientEvent::FailsafeRearmed { outage });
                FailsafeReport {
                    event: "rearmed".into(),
                    at: now_rfc3339(),
                    silent_ms: millis(outage),
                    break_commands: Vec::new(),
                }
            }
        };
        lock(&self.reports).queue.push_back(report);
        self.flush_reports();
    }

    /// Sends the queued failsafe reports if connected, one at a time, each
    /// kept until the server confirms it: a report written to a connection
    /// that turns out to be dead (the path went silent, which is often why
    /// the failsafe fired) is sent again on the next one.
    fn flush_reports(&self) {
        let Some(conn) = self.state().conn.clone() else {
            return;
        };
        {
            let mut reports = lock(&self.reports);
            if reports.sending || reports.queue.is_empty() {
                return;
            }
            reports.sending = true;
        }
        let reports = self.reports.clone();
        tokio::spawn(async move {
            loop {
                let next = {
                    let mut r = lock(&reports);
                    let next = r.queue.front().cloned();
                    if next.is_none() {
                        r.sending = false;
                    }
                    next
                };
                let Some(report) = next else {
                    return;
                };
                let sent = conn.request(ClientRequest::FailsafeReport(report)).await;
                let mut r = lock(&reports);
                match sent {
                    Ok(_) => {
                        r.queue.pop_front();
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "failsafe report not confirmed; kept for the next connection");
                        r.sending = false;
                        return;
                    }
                }
            }
        });
    }

    /// One connection, from connect to its end. Resets `attempt` once the
    /// server has answered a sync.
    async fn session(&self, attempt: &mut u32, feed: Option<&FailsafeHandle>) -> SessionEnd {
        let mut conn = match Connection::connect(&self.config).await {
            Ok(conn) => conn,
            Err(e) => return SessionEnd::Lost(e),
        };
        tracing::info!(
            server = %conn.peer(),
            fingerprint = %conn.server_fingerprint(),
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
                    if let Some((_, body)) = beat {
                        self.on_heartbeat(&body, feed);
                    }
                }
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

    fn on_heartbeat(
        &self,
        body: &serde_json::Map<String, serde_json::Value>,
        feed: Option<&FailsafeHandle>,
    ) {
        let mut state = self.state();
        let Some(verifier) = state.heartbeats.as_mut() else {
            tracing::debug!("heartbeat ignored: no heartbeat key configured");
            return;
        };
        match check_heartbeat(verifier, body, SystemTime::now()) {
            Ok(()) => {
                if let Some(feed) = feed {
                    feed.feed();
                }
            }
            Err(reason) => {
                drop(state);
                tracing::warn!(%reason, "heartbeat refused; the failsafe is not fed");
                self.emit(ClientEvent::HeartbeatRefused { reason });
            }
        }
    }

    /// Handles one emergency command (`SHUTDOWN_NOW`), which never waits
    /// behind other commands. Returns its id if it was authorized (after
    /// its break commands ran).
    async fn on_urgent(
        &self,
        conn: &Arc<Connection>,
        reference: &str,
        body: &serde_json::Map<String, serde_json::Value>,
        feed: Option<&FailsafeHandle>,
    ) -> Option<String> {
        let worker = Worker {
            settings: self.config.commands.clone(),
            conn: conn.clone(),
            feed: feed.cloned(),
            events: self.events.clone(),
        };
        let Some(settings) = &worker.settings else {
            worker.refuse(reference, disabled(body)).await;
            return None;
        };
        let verdict = check(settings, vec![body.clone()]).await.pop();
        let accepted = match verdict {
            Some(Ok(accepted)) => accepted,
            Some(Err(refused)) => {
                worker.refuse(reference, refused).await;
                return None;
            }
            None => return None,
        };
        worker.accepted(&accepted);
        let cmd = accepted.command;
        if cmd.command_type != vigil_command::EMERGENCY_TYPE {
            // Only a SHUTDOWN_NOW comes this way; anything else runs as usual.
            worker.spawn_run(settings, reference.to_owned(), cmd, None);
            return None;
        }
        tracing::error!(command_id = %cmd.command_id, reason = ?cmd.reason, "SHUTDOWN_NOW: running break commands, then exiting");
        let outcomes =
            run_break_commands(settings.handler.as_ref(), &settings.break_commands).await;
        let ack = Ack {
            command_id: Some(cmd.command_id.clone()),
            status: AckStatus::Done,
            code: None,
            detail: "shutting down".into(),
            result: Some(serde_json::json!({ "shutdown": true, "break_commands": outcomes })),
        };
        let _ = conn.send_ack(ack, reference).await;
        self.emit(ClientEvent::ShutdownRequested {
            command_id: cmd.command_id.clone(),
        });
        // Give the acknowledgement a moment to leave.
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.flush()).await;
        Some(cmd.command_id)
    }
}

/// Closes a connection when dropped.
struct CloseOnDrop(Arc<Connection>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Checks `cmd:exec` payloads on a blocking thread (verifying records
/// their ids in the replay guard, synced to disk: a slow disk must hold up
/// neither heartbeats nor the failsafe), one answer each.
async fn check(
    settings: &crate::CommandSettings,
    bodies: Vec<serde_json::Map<String, serde_json::Value>>,
) -> Vec<Result<Accepted, Refused>> {
    let verifier = settings.verifier.clone();
    let n = bodies.len();
    let shared = Arc::new(bodies);
    let checked = {
        let bodies = shared.clone();
        tokio::task::spawn_blocking(move || check_commands(&verifier, &bodies, SystemTime::now()))
            .await
    };
    checked.unwrap_or_else(|e| {
        (0..n)
            .map(|i| {
                Err(Refused::of(
                    &shared[i],
                    "internal",
                    format!("command check failed: {e}"),
                ))
            })
            .collect()
    })
}

/// Takes the commands of one connection in order, checks them in batches
/// (one sync of the replay guard for each) and runs them, at most
/// [`MAX_RUNNING_COMMANDS`] at once: the 17th waits for a slot instead of
/// being refused. The queue in front of it is bounded by the connection
/// ([`crate::COMMAND_QUEUE`], past which the connection answers `busy`).
struct Worker {
    settings: Option<crate::CommandSettings>,
    conn: Arc<Connection>,
    feed: Option<FailsafeHandle>,
    events: broadcast::Sender<ClientEvent>,
}

impl Worker {
    async fn run(self, mut commands: tokio::sync::mpsc::Receiver<crate::PushedBody>) {
        let running = Arc::new(tokio::sync::Semaphore::new(MAX_RUNNING_COMMANDS));
        loop {
            let Some(first) = commands.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < CHECK_BATCH {
                match commands.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            if self.conn.is_closed() {
                // Not checked, so not spent: the server learns it was not
                // delivered, and it can be sent again.
                return;
            }
            let Some(settings) = &self.settings else {
                for (reference, body) in batch {
                    self.refuse(&reference, disabled(&body)).await;
                }
                continue;
            };
            let bodies: Vec<_> = batch.iter().map(|(_, b)| b.clone()).collect();
            let verdicts = check(settings, bodies).await;
            for ((reference, _), verdict) in batch.into_iter().zip(verdicts) {
                match verdict {
                    Ok(accepted) => {
                        self.accepted(&accepted);
                        // Checked, so spent: it runs, once a slot is free.
                        let Ok(permit) = running.clone().acquire_owned().await else {
                            return;
                        };
                        self.spawn_run(settings, reference, accepted.command, Some(permit));
                    }
                    Err(refused) => self.refuse(&reference, refused).await,
                }
            }
        }
    }

    /// Acknowledges a refusal, logs it and reports it.
    async fn refuse(&self, reference: &str, refused: Refused) {
        tracing::warn!(
            command_id = ?refused.command_id, code = %refused.code, detail = ?refused.detail,
            "command refused"
        );
        let _ = self.conn.send_ack(refused.ack(), reference).await;
        let _ = self.events.send(ClientEvent::CommandRefused {
            command_id: refused.command_id,
            code: refused.code,
            detail: refused.detail,
        });
    }

    /// Feeds the failsafe and logs a verified command.
    fn accepted(&self, accepted: &Accepted) {
        if let Some(feed) = &self.feed {
            feed.feed();
        }
        let cmd = &accepted.command;
        tracing::info!(
            command_id = %cmd.command_id, command_type = %cmd.command_type, authority = %accepted.authority,
            command = ?cmd.command, reason = ?cmd.reason,
            "verified command"
        );
    }

    /// Runs a verified command on a task of its own that holds `permit`,
    /// and acknowledges the outcome.
    fn spawn_run(
        &self,
        settings: &crate::CommandSettings,
        reference: String,
        cmd: vigil_command::SignedCommand,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        let name = cmd.command.clone().unwrap_or_default();
        let args = cmd.args.clone().unwrap_or(serde_json::Value::Null);
        let handler = settings.handler.clone();
        let timeout = settings.command_timeout;
        let conn = self.conn.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let outcome = tokio::time::timeout(timeout, handler.execute(&name, &args)).await;
            let ack = match outcome {
                Ok(Ok(result)) => Ack {
                    command_id: Some(cmd.command_id.clone()),
                    status: AckStatus::Done,
                    code: None,
                    detail: String::new(),
                    result: Some(result),
                },
                Ok(Err(e)) => Ack {
                    command_id: Some(cmd.command_id.clone()),
                    status: AckStatus::Failed,
                    code: None,
                    detail: e,
                    result: None,
                },
                Err(_) => Ack {
                    command_id: Some(cmd.command_id.clone()),
                    status: AckStatus::Failed,
                    code: Some("timeout".into()),
                    detail: format!("command ran past its {timeout:?} timeout"),
                    result: None,
                },
            };
            tracing::info!(command_id = %cmd.command_id, command = %name, status = ?ack.status, "command ran");
            let _ = events.send(ClientEvent::CommandRan(ack.clone()));
            let _ = conn.send_ack(ack, &reference).await;
        });
    }
}

/// Most commands checked together (one sync of the replay guard).
const CHECK_BATCH: usize = 64;

/// The refusal of a client that takes no commands.
fn disabled(body: &serde_json::Map<String, serde_json::Value>) -> Refused {
    Refused::of(
        body,
        "commands_disabled",
        "this client takes no commands (no authorities configured)".into(),
    )
}

/// How many verified commands run at once on one connection.
const MAX_RUNNING_COMMANDS: usize = 16;

/// How a connection ended.
enum SessionEnd {
    Lost(ClientError),
    Shutdown(String),
}

/// Why [`Client::run`] returned.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RunOutcome {
    /// The shutdown token was cancelled.
    Stopped,
    /// An authorized `SHUTDOWN_NOW` arrived; its break commands ran.
    Shutdown {
        /// The command's id.
        command_id: String,
    },
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

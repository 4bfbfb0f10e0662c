//! Accept loop, session registry, revocation and shutdown.
//!
//! `commands` holds what sends a command (deliver, sign and send, relay
//! after a check), `tasks` the background tasks (revocation, module
//! broadcasts, refusal summaries, heartbeats), `stats` the counters.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vigil_auth::Fingerprint;
use vigil_auth::peer_fingerprint;
use vigil_proto::ServerMessage;

use crate::outbound::{Item, Lane, Refused};
use crate::record::{CommandLog, CommandRecord};
use crate::{ServerConfig, ServerError};
pub(crate) use session::SessionHandle;
pub use session::SessionInfo;

mod accept;
mod beats;
mod cluster;
mod commands;
mod fanout;
mod liveness;
pub(crate) mod session;
mod stats;
mod tasks;
#[cfg(test)]
mod tests;

pub use accept::{Server, Transport};
pub use liveness::{Fault, Part, Unresponsive};

use beats::heartbeats;
pub use commands::Relay;
pub(crate) use commands::{Relayed, new_command_id};
pub(crate) use stats::Latencies;
pub use stats::{Counter, ServerStats};
use tasks::{module_broadcaster, refusal_summaries, revocation_sweeper};

pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    pub(crate) shutdown: CancellationToken,
    pub(crate) stats: ServerStats,
    sessions: Mutex<HashMap<u64, SessionHandle>>,
    next_id: AtomicU64,
    next_delivery: AtomicU64,
    /// Encoded `mod:verify_resp` payloads by module name, with the sum
    /// they are for: one base64 copy per module version, shared by every
    /// reply.
    verify_bodies: Mutex<HashMap<String, (String, Bytes)>>,
    pub(crate) commands: CommandLog,
    stopped: tokio::sync::watch::Sender<bool>,
    audit_slots: Arc<Semaphore>,
    /// The audit log of `config.audit`, reopened after a failure.
    pub(crate) audit: Option<Arc<crate::audit::Audit>>,
    /// Refusals of unauthenticated traffic in the current window.
    refusals: crate::refusals::Refusals,
    /// What a supervisor asks to know the server is alive.
    pub(crate) liveness: liveness::Liveness,
    /// Latency histograms, for `/metrics`.
    pub(crate) latencies: Latencies,
    /// The cluster link, for a server started with one.
    cluster: std::sync::OnceLock<vigil_cluster::Cluster>,
    /// Deliveries with clients on other servers, awaiting their reports.
    pub(crate) routed: cluster::Routed,
}

impl Shared {
    pub(crate) fn audit_later(&self, kind: &'static str, details: Value) {
        self.audit_later_with(kind, move || details);
    }

    /// As [`Shared::audit_later`], with the details made by the task that
    /// writes them (off the caller's path).
    pub(crate) fn audit_later_with(
        &self,
        kind: &'static str,
        details: impl FnOnce() -> Value + Send + 'static,
    ) {
        let Some(log) = self.audit.clone() else {
            return;
        };
        // Records the server does not wait for are bounded: past this many
        // in flight (a handshake flood, a slow disk) they are counted and
        // dropped rather than piling up as tasks.
        let Ok(permit) = self.audit_slots.clone().try_acquire_owned() else {
            self.stats.audit_dropped.inc();
            tracing::debug!(kind, "audit backlog full: record dropped");
            return;
        };
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = log.append(kind, details()).await {
                tracing::error!(kind, error = %e, "audit log write failed");
            }
        });
    }

    /// Counts a refusal of unauthenticated traffic from `source`; the
    /// first from each source per window (a few dozen at most) is also
    /// recorded, as `record` with `details`, and `true` is returned (the
    /// caller logs it); the rest are summed up in the window's
    /// `refusals.summary` record.
    pub(crate) fn refused(
        &self,
        source: std::net::IpAddr,
        tally: &'static str,
        record: &'static str,
        details: impl FnOnce() -> Value + Send + 'static,
    ) -> bool {
        match tally {
            "handshake" => self.stats.refused_handshakes.inc(),
            _ => self.stats.refused_emergency.inc(),
        }
        let individual = self.refusals.count(source, tally);
        if individual {
            self.stats.refusals_recorded.inc();
            self.audit_later_with(record, details);
        }
        individual
    }

    /// Writes the window's `refusals.summary`, if anything was refused.
    async fn flush_refusals(&self) {
        let Some(summary) = self.refusals.take_summary() else {
            return;
        };
        tracing::warn!(
            refused = summary["total"].as_u64().unwrap_or(0),
            recorded = summary["recorded_one_by_one"].as_u64().unwrap_or(0),
            summary = %summary,
            "unauthenticated traffic refused since the last summary"
        );
        if let Some(log) = &self.audit
            && let Err(e) = log.append("refusals.summary", summary).await
        {
            tracing::error!(error = %e, "audit log write failed: refusal counts not recorded");
        }
    }

    /// Records a group of acknowledgements, without waiting.
    pub(crate) fn audit_acks(&self, group: Option<crate::delivery::AckGroup>) {
        if let Some(group) = group {
            self.audit_later_with("command.acknowledged", move || group.details());
        }
    }

    fn sessions(&self) -> MutexGuard<'_, HashMap<u64, SessionHandle>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every operation on it is a single insert, remove or read).
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn register(&self, handle: SessionHandle) {
        let out = handle.out.clone();
        self.tell_attached(&handle);
        self.sessions().insert(handle.info.id, handle);
        // Shutdown cancels the sessions it finds; one registered after
        // that sweep cancels itself.
        if self.shutdown.is_cancelled() {
            out.cancel();
        }
    }

    /// Ends every session (shutdown).
    fn cancel_all(&self) {
        for handle in self.sessions().values() {
            handle.out.cancel();
        }
    }

    pub(crate) fn deregister(&self, id: u64) {
        let removed = self.sessions().remove(&id);
        if let Some(handle) = removed {
            self.tell_detached(&handle.info.fingerprint, id);
        }
    }

    /// Tells the cluster what a session's client said of itself.
    pub(crate) fn placed(&self, id: u64) {
        if self.cluster().is_none() {
            return;
        }
        let sessions = self.sessions();
        if let Some(handle) = sessions.get(&id) {
            self.tell_attached(handle);
        }
    }

    /// The payload of a `mod:verify_resp` for this module version (its
    /// bytes in base64), encoded once per version.
    pub(crate) fn verify_body(&self, module: &vigil_modules::Module) -> Bytes {
        let summary = module.summary();
        // A version is its bytes and its manifest (a module signed again,
        // with the same bytes, is a new version to its clients).
        let version = match &summary.manifest {
            Some(manifest) => format!("{} {}", summary.sum, manifest.signature()),
            None => summary.sum.clone(),
        };
        let mut cache = self
            .verify_bodies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((cached, body)) = cache.get(&summary.name)
            && *cached == version
        {
            return body.clone();
        }
        let frame = ServerMessage::VerifyResp {
            module: summary.name.clone(),
            content: module.bytes().to_vec(),
            sum: summary.sum.clone(),
            desc: summary.description.clone(),
            manifest: summary
                .manifest
                .as_ref()
                .map(vigil_command::SignedManifest::to_map),
        }
        .to_frame("-")
        .to_bytes();
        // `mod:verify_resp:- {...}\n`: keep the JSON between the first
        // space and the newline.
        let start = frame.iter().position(|&b| b == b' ').map_or(0, |i| i + 1);
        let end = frame.len().saturating_sub(1).max(start);
        let body = Bytes::from(frame).slice(start..end);
        cache.insert(summary.name.clone(), (version, body.clone()));
        body
    }

    /// Forgets the encoded payload of a module that is gone.
    fn forget_verify_body(&self, name: &str) {
        self.verify_bodies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(name);
    }

    /// Queues `item` for one session; a full queue marks the client a
    /// slow consumer (its session ends).
    fn push(
        &self,
        session: u64,
        client: &Fingerprint,
        out: &crate::outbound::Outbound,
        item: Item,
    ) -> Result<(), Refused> {
        let refused = match out.push(item) {
            Ok(()) => return Ok(()),
            Err((refused, _)) => refused,
        };
        if refused == Refused::Busy {
            self.stats.commands_queue_full.inc();
            tracing::debug!(session, client = %client, "the client's command queue is full: command not queued");
        }
        if refused == Refused::Full {
            tracing::warn!(
                session,
                client = %client,
                limit = self.config.max_outbound_bytes,
                "client is not reading: outbound queue past its limit, disconnecting"
            );
            self.stats.slow_consumers.inc();
        }
        Err(refused)
    }

    /// Closes every session whose key is no longer trusted.
    fn sweep_revoked(&self) {
        let trust = self.config.trust.snapshot();
        for handle in self.sessions().values() {
            if !trust.contains(&handle.info.fingerprint) {
                tracing::warn!(
                    session = handle.info.id,
                    client = %handle.info.fingerprint,
                    peer = %handle.info.peer,
                    "client key removed from the trust file: closing its session"
                );
                handle.out.cancel();
            }
        }
    }
}

/// A cheap, cloneable handle on a running server.
#[derive(Clone)]
pub struct ServerHandle {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("listen", &self.shared.config.listen)
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// Asks the server to stop: no new connections, sessions closed, then
    /// [`Server::run`] returns.
    pub fn shutdown(&self) {
        self.shared.shutdown.cancel();
    }

    /// Whether shutdown was asked for.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.shutdown.is_cancelled()
    }

    /// The connected clients.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let mut list: Vec<SessionInfo> = self
            .shared
            .sessions()
            .values()
            .map(SessionHandle::snapshot)
            .collect();
        list.sort_by_key(|s| s.id);
        list
    }

    /// How many clients are connected (cheaper than
    /// [`ServerHandle::sessions`]).
    pub fn session_count(&self) -> usize {
        self.shared.sessions().len()
    }

    /// The latency histograms.
    pub(crate) fn latencies(&self) -> &Latencies {
        &self.shared.latencies
    }

    /// The server's counters.
    pub fn stats(&self) -> &ServerStats {
        &self.shared.stats
    }

    /// Sends a message to every connected client. The frame is encoded once.
    /// A client whose queue is full is disconnected as a slow consumer.
    /// Returns how many clients it was queued for.
    ///
    /// A command (`cmd:exec`) is refused: commands go through
    /// [`ServerHandle::deliver`] or [`ServerHandle::send_command`], which
    /// audit them before they are sent.
    pub fn broadcast(&self, msg: &ServerMessage, reference: &str) -> Result<usize, ServerError> {
        if matches!(msg, ServerMessage::Command(_)) {
            return Err(ServerError::BadCommand(
                "a command is not broadcast: deliver or send_command audit it first".into(),
            ));
        }
        let bytes = session::encode(msg, reference);
        Ok(self.send_to_all(&bytes))
    }

    /// What became of a recent command.
    pub fn command(&self, command_id: &str) -> Option<CommandRecord> {
        self.shared.commands.get(command_id)
    }

    /// The loaded modules, if the server serves modules.
    pub fn modules(&self) -> Option<Vec<vigil_modules::ModuleSummary>> {
        self.shared.config.modules.as_ref().map(|r| r.list())
    }

    /// How each loaded module's host process is doing, by module name.
    pub fn module_health(&self) -> Vec<(String, vigil_modules::HostHealth)> {
        self.shared
            .config
            .modules
            .as_ref()
            .map(|r| r.health())
            .unwrap_or_default()
    }

    /// As [`ServerHandle::audit`], for a record that must be written even
    /// when the disk is otherwise full (an authorized emergency shutdown):
    /// the audit log releases its reserve for it.
    pub async fn audit_essential(&self, kind: &str, details: Value) -> Result<(), ServerError> {
        match &self.shared.audit {
            Some(log) => log
                .append_essential(kind, details)
                .await
                .map(|_| ())
                .map_err(|e| {
                    tracing::error!(kind, error = %e, "audit log write failed (essential record)");
                    ServerError::Audit(e)
                }),
            None => Ok(()),
        }
    }

    /// See [`Shared::refused`].
    pub(crate) fn refused(
        &self,
        source: std::net::IpAddr,
        tally: &'static str,
        record: &'static str,
        details: impl FnOnce() -> Value + Send + 'static,
    ) -> bool {
        self.shared.refused(source, tally, record, details)
    }

    /// How the audit log stands (`None` without one).
    pub(crate) fn audit_health(&self) -> Option<crate::audit::AuditHealth> {
        self.shared.audit.as_ref().map(|a| a.health())
    }

    /// Appends an audit record and waits until it is durable. Without an
    /// audit log, does nothing.
    pub async fn audit(&self, kind: &str, details: Value) -> Result<(), ServerError> {
        match &self.shared.audit {
            Some(log) => log.append(kind, details).await.map(|_| ()).map_err(|e| {
                tracing::error!(kind, error = %e, "audit log write failed");
                ServerError::Audit(e)
            }),
            None => Ok(()),
        }
    }

    /// Appends an audit record without waiting (for events the server
    /// records but does not hold back on).
    pub fn audit_later(&self, kind: &'static str, details: Value) {
        self.shared.audit_later(kind, details);
    }

    /// The server's own agent id (CIRIS `target_agent_id` of the server).
    pub fn agent_id(&self) -> &str {
        &self.shared.config.agent_id
    }

    /// The server's TLS key fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.shared.config.identity.fingerprint()
    }

    /// Whether actions are recorded in an audit log.
    pub fn has_audit(&self) -> bool {
        self.shared.audit.is_some()
    }

    /// Closes the audit log (the one in use: it may have been reopened
    /// after a failure). Every acknowledged record is on disk already.
    pub async fn close_audit(&self) -> Result<(), ServerError> {
        match &self.shared.audit {
            Some(audit) => audit.close().await.map_err(ServerError::Audit),
            None => Ok(()),
        }
    }

    /// Asks the accept loop, the heartbeat task and the audit writer
    /// whether they still turn, and waits at most `within` for each (all
    /// at once). A part the server does not run (no heartbeats without an
    /// authority key, no audit log) is not asked; the accept loop answers
    /// only once [`Server::run`] serves. An audit log that stopped after a
    /// failure is not stuck (the server reopens it; `/health` says
    /// degraded), so it counts as answering.
    ///
    /// A supervisor calls it before each systemd watchdog ping, so that a
    /// hung server stops pinging and is restarted.
    pub async fn check_alive(&self, within: Duration) -> Result<(), Unresponsive> {
        let live = &self.shared.liveness;
        // Not serving yet is not answering (and is said at once).
        let accept = async { live.accept.running() && live.accept.ask(within).await };
        let beats = async { !live.heartbeats.running() || live.heartbeats.ask(within).await };
        let audit = async {
            match &self.shared.audit {
                Some(audit) => matches!(
                    tokio::time::timeout(within, audit.probe()).await,
                    Ok(Ok(()))
                ),
                None => true,
            }
        };
        let (accept, beats, audit) = tokio::join!(accept, beats, audit);
        let parts: Vec<Part> = [
            (accept, Part::AcceptLoop),
            (beats, Part::Heartbeats),
            (audit, Part::AuditWriter),
        ]
        .into_iter()
        .filter(|(alive, _)| !alive)
        .map(|(_, part)| part)
        .collect();
        if parts.is_empty() {
            Ok(())
        } else {
            Err(Unresponsive { parts, within })
        }
    }

    /// Injects `fault` into the running server, to test what supervises
    /// it: the `vigil-server` binary does so on SIGUSR1 only when started
    /// with `VIGIL_FAULT_INJECTION` set. It is logged at warn level.
    pub fn inject_fault(&self, fault: Fault) {
        tracing::warn!(?fault, "fault injected");
        match fault {
            Fault::FreezeAcceptLoop => self.shared.liveness.faults.accept_frozen.cancel(),
            Fault::FreezeHeartbeats => self.shared.liveness.faults.heartbeats_frozen.cancel(),
        }
    }

    /// Resolves when shutdown is asked for.
    pub fn stopping(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let token = self.shared.shutdown.clone();
        async move { token.cancelled().await }
    }

    /// Resolves once [`Server::run`] has closed every session and returned.
    pub async fn stopped(&self) {
        let mut rx = self.shared.stopped.subscribe();
        let _ = rx.wait_for(|s| *s).await;
    }

    /// The server's own place in the agent tree.
    pub fn tree_path(&self) -> &[String] {
        &self.shared.config.tree_path
    }
}

/// Audit records the server does not wait for, in flight at most.
const AUDIT_BACKLOG: usize = 4096;

//! This server in a cluster (`--cluster`): what it tells the cluster of
//! its sessions, and what the cluster tells it back: a client of its that
//! attached to another server since (its stale session ends), commands
//! other servers issued for its clients (delivered, their outcomes
//! reported back), and reports on the commands it issued (settling their
//! remote slots).
//!
//! The link itself (NATS, the buckets, the mirror, the subjects) is
//! [`vigil_cluster`].

use super::*;
use crate::delivery::{Forward, Target, Tracker};
use vigil_cluster::{Cluster, ClusterConfig, Incoming, LocalSession, Report, Scope, Settled};

/// How long a server leaving the cluster at shutdown waits for NATS to
/// take its lease and entries back.
const LEAVE_WITHIN: Duration = Duration::from_secs(2);

/// How long a holding server has to say it received a command before its
/// slots are settled as disconnected.
const ACCEPT_WITHIN: Duration = Duration::from_secs(5);

/// How often remote slots are checked against the servers' leases.
const SWEEP_EVERY: Duration = Duration::from_millis(250);

/// The longest a delivery waits for remote outcomes (a client may take
/// this long to answer; past it the delivery is no longer tracked for
/// the cluster, as the command log forgets old commands).
const TRACK_AT_MOST: Duration = Duration::from_secs(15 * 60);

/// How long a server that received an emergency shutdown for everyone
/// waits for its own clients' acks before it stops.
const EMERGENCY_ACK_WAIT: Duration = Duration::from_secs(5);

/// The deliveries with clients on other servers, by REF, until every
/// remote slot has settled.
#[derive(Default)]
pub(crate) struct Routed {
    open: Mutex<HashMap<String, (Arc<Tracker>, Instant)>>,
}

impl Routed {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, (Arc<Tracker>, Instant)>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn insert(&self, tracker: Arc<Tracker>) {
        self.lock()
            .insert(tracker.reference.clone(), (tracker, Instant::now()));
    }

    fn get(&self, reference: &str) -> Option<Arc<Tracker>> {
        self.lock().get(reference).map(|(t, _)| t.clone())
    }

    fn remove_settled(&self, reference: &str) {
        let mut open = self.lock();
        if open.get(reference).is_some_and(|(t, _)| t.open() == 0) {
            open.remove(reference);
        }
    }

    /// The deliveries still open; the settled and the too old are dropped.
    fn current(&self) -> Vec<Arc<Tracker>> {
        let mut open = self.lock();
        open.retain(|_, (t, since)| t.open() > 0 && since.elapsed() < TRACK_AT_MOST);
        open.values().map(|(t, _)| t.clone()).collect()
    }
}

/// What the cluster tells this server, handed to it.
struct Hears(std::sync::Weak<Shared>);

impl vigil_cluster::Handler for Hears {
    fn displaced(&self, client: Fingerprint, session: u64) {
        if let Some(shared) = self.0.upgrade() {
            shared.displaced(&client, session);
        }
    }

    fn command(&self, incoming: Incoming) {
        if let Some(shared) = self.0.upgrade() {
            tokio::spawn(ServerHandle { shared }.deliver_from_cluster(incoming));
        }
    }

    fn report(&self, report: Report) {
        if let Some(shared) = self.0.upgrade() {
            shared.reported(report);
        }
    }
}

impl Shared {
    /// Starts the link of a server configured with a cluster.
    pub(super) fn join_cluster(self: &Arc<Self>) -> Result<(), ServerError> {
        let Some(settings) = &self.config.cluster else {
            return Ok(());
        };
        let mut config = ClusterConfig::new(
            settings.urls.clone(),
            settings.pins.clone(),
            self.config.identity.clone(),
            self.config.agent_id.clone(),
        );
        config.lease = settings.lease;
        let cluster = Cluster::start(config, Arc::new(Hears(Arc::downgrade(self))))
            .map_err(|e| ServerError::Cluster(e.to_string()))?;
        tokio::spawn(sweeper(Arc::downgrade(self)));
        tracing::info!(
            nats = ?settings.urls,
            incarnation = cluster.incarnation(),
            "joining the cluster"
        );
        let _ = self.cluster.set(cluster);
        Ok(())
    }

    pub(crate) fn cluster(&self) -> Option<&Cluster> {
        self.cluster.get()
    }

    /// Tells the cluster about a session (again, once it said hello).
    pub(super) fn tell_attached(&self, handle: &SessionHandle) {
        let Some(cluster) = self.cluster() else {
            return;
        };
        let info = handle.snapshot();
        let place = info.place.as_ref();
        cluster.attached(LocalSession {
            client: info.fingerprint,
            session: info.id,
            agent_id: place.and_then(|p| p.agent_id.clone()),
            tree_path: place.map(|p| p.tree_path.clone()),
            transport: info.transport.as_str().to_owned(),
            peer: info.peer.to_string(),
            connected_at: vigil_command::Timestamp::from_system_time(info.connected_at)
                .map(|t| t.isoformat())
                .unwrap_or_default(),
        });
    }

    pub(super) fn tell_detached(&self, client: &Fingerprint, session: u64) {
        if let Some(cluster) = self.cluster() {
            cluster.detached(*client, session);
        }
    }

    /// Ends a session whose client has attached to another server since.
    fn displaced(&self, client: &Fingerprint, session: u64) {
        if let Some(handle) = self
            .sessions()
            .get(&session)
            .filter(|h| h.info.fingerprint == *client)
        {
            self.stats.sessions_displaced.inc();
            tracing::info!(
                session,
                client = %client,
                "the client attached to another server of the cluster: closing its stale session here"
            );
            handle.out.cancel();
        }
    }

    /// Applies a holding server's report to the delivery it is about.
    fn reported(self: &Arc<Self>, report: Report) {
        let reference = report.reference().to_owned();
        let Some(tracker) = self.routed.get(&reference) else {
            tracing::debug!(reference, "a report on a delivery no longer tracked");
            return;
        };
        let effects = tracker.remote_report(report);
        self.audit_remote(&tracker, effects.audit_now, effects.audit_later);
        self.routed.remove_settled(&reference);
    }

    /// Writes the ack groups a remote report or a sweep closed; the first
    /// acks of a group are written after the delay, as a session's are.
    fn audit_remote(
        self: &Arc<Self>,
        tracker: &Arc<Tracker>,
        now: Vec<crate::delivery::AckGroup>,
        later: bool,
    ) {
        for group in now {
            self.audit_acks(Some(group));
        }
        if later {
            let shared = self.clone();
            let tracker = tracker.clone();
            tokio::spawn(async move {
                tokio::time::sleep(crate::delivery::ACK_AUDIT_DELAY).await;
                shared.audit_acks(tracker.take_audit());
            });
        }
    }

    /// Whether a `SHUTDOWN_NOW` for `scope` is for this server too: one
    /// for everyone, or for a subtree this server stands in.
    fn stops_for(&self, scope: &Scope) -> bool {
        match scope {
            Scope::All => true,
            Scope::Subtree(path) => self.config.tree_path.starts_with(path),
            Scope::Client(_) => false,
        }
    }

    /// Withdraws from the cluster at shutdown.
    pub(super) async fn leave_cluster(&self) {
        if let Some(cluster) = self.cluster() {
            cluster.leave(LEAVE_WITHIN).await;
        }
    }
}

/// Settles the remote slots of servers that no longer hold a lease, or
/// never said they received a command, until the server is gone.
async fn sweeper(shared: std::sync::Weak<Shared>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let Some(cluster) = shared.cluster() else {
            return;
        };
        for tracker in shared.routed.current() {
            let groups = tracker.sweep(|server| cluster.is_live(server), ACCEPT_WITHIN);
            shared.audit_remote(&tracker, groups, false);
        }
    }
}

impl ServerHandle {
    /// Delivers a command another server issued to this server's clients
    /// that it names, and tells that server which sessions it was queued
    /// for; each outcome follows as it settles. A `SHUTDOWN_NOW` for
    /// everyone (or a subtree this server stands in) that this server's
    /// emergency authorities verify stops this server too, once its
    /// clients have answered (or after [`EMERGENCY_ACK_WAIT`]).
    async fn deliver_from_cluster(self, incoming: Incoming) {
        let Some(cluster) = self.shared.cluster().cloned() else {
            return;
        };
        let origin = incoming.origin;
        let command = match vigil_command::SignedCommand::from_json(&incoming.command) {
            Ok(c) if !incoming.command.contains(&b'\n') && !incoming.command.contains(&b'\r') => c,
            Ok(_) | Err(_) => {
                tracing::warn!(origin = %origin, reference = %incoming.reference, "a command from the cluster that clients would refuse as malformed: not delivered");
                cluster.report(
                    origin,
                    Report::Accepted {
                        reference: incoming.reference,
                        server: cluster.fingerprint(),
                        queued: Vec::new(),
                        settled: Vec::new(),
                    },
                );
                return;
            }
        };
        let target = match &incoming.scope {
            Scope::Client(fp) => Target::Clients(vec![*fp]),
            Scope::All => Target::All,
            Scope::Subtree(path) => Target::Subtree(path.clone()),
        };
        let command_id = command.body.command_id.clone();
        let command_type = command.body.command_type.clone();
        {
            let command_id = command_id.clone();
            let command_type = command_type.clone();
            let name = command.body.command.clone();
            let reference = incoming.reference.clone();
            let scope = match &incoming.scope {
                Scope::Client(fp) => serde_json::json!([fp.to_hex()]),
                Scope::All => serde_json::json!("all"),
                Scope::Subtree(path) => serde_json::json!({ "tree_path": path }),
            };
            self.shared.audit_later_with("command.from_cluster", move || {
                serde_json::json!({"command_id": command_id, "command_type": command_type, "command": name, "origin": origin.to_hex(), "reference": reference, "target": scope})
            });
        }
        let lane = super::commands::lane_of(Some(&command_type));
        let forward = Forward {
            cluster: cluster.clone(),
            origin,
            reference: incoming.reference.clone(),
        };
        let delivery = self.deliver_payload(
            command_id.clone(),
            &incoming.command,
            &target,
            lane,
            super::fanout::Reach::Forwarded(forward),
        );
        tracing::info!(command_id = %command_id, origin = %origin, sessions = delivery.sent(), "command from the cluster delivered");
        cluster.report(
            origin,
            Report::Accepted {
                reference: incoming.reference.clone(),
                server: cluster.fingerprint(),
                queued: delivery.queued(),
                settled: delivery
                    .immediate()
                    .iter()
                    .map(|o| Settled {
                        client: o.client,
                        session: o.session,
                        outcome: crate::delivery::to_wire(&o.outcome),
                    })
                    .collect(),
            },
        );
        if command_type == vigil_command::EMERGENCY_TYPE && self.shared.stops_for(&incoming.scope) {
            self.emergency_from_cluster(&command, delivery, origin)
                .await;
        }
    }

    /// Stops this server for a `SHUTDOWN_NOW` from the cluster, if its own
    /// emergency authorities verify it.
    async fn emergency_from_cluster(
        &self,
        command: &vigil_command::SignedCommand,
        delivery: crate::Delivery,
        origin: Fingerprint,
    ) {
        let command_id = &command.body.command_id;
        let Some(relay) = self.shared.config.emergency_relay.as_ref() else {
            tracing::warn!(command_id = %command_id, origin = %origin, "a SHUTDOWN_NOW for everyone came from the cluster, and this server has no emergency authorities to check it: relayed to its clients (which check it themselves); the server stays up");
            return;
        };
        let verified = match relay.verify(command) {
            Ok(v) => v,
            Err(refusal) => {
                tracing::warn!(command_id = %command_id, origin = %origin, refusal = %refusal.message(), "a SHUTDOWN_NOW from the cluster that this server's emergency authorities refuse: relayed to its clients (which check it themselves); the server stays up");
                return;
            }
        };
        // Spent here too: the same command posted to this server later is
        // a replay.
        let _ = relay.record(&verified).await;
        let _ = self
            .audit_essential(
                "emergency.attempt",
                serde_json::json!({"outcome": "verified", "via": "cluster", "origin": origin.to_hex(), "command_id": command_id, "wa_id": command.body.wa_id}),
            )
            .await;
        let tracker = delivery.settle(EMERGENCY_ACK_WAIT).await;
        tracing::error!(command_id = %command_id, origin = %origin, clients = tracker.len(), open = tracker.open(), "EMERGENCY SHUTDOWN from the cluster: stopping the server");
        self.shutdown();
        let _ = self
            .audit_essential(
                "emergency.completed",
                serde_json::json!({"command_id": command_id, "via": "cluster", "stopped": true}),
            )
            .await;
    }

    /// Where the cluster link stands, for a server in a cluster.
    pub fn cluster_status(&self) -> Option<vigil_cluster::Status> {
        self.shared.cluster().map(Cluster::status)
    }

    /// The clients attached to the other servers of the cluster (empty
    /// for a server alone, or while the link is not ready).
    pub fn remote_clients(&self) -> Vec<vigil_cluster::Remote> {
        self.shared
            .cluster()
            .map(Cluster::remotes)
            .unwrap_or_default()
    }

    /// Where an agent (a key fingerprint in hex, or the agent id a client
    /// said) without a session here is: `None` for a server alone.
    pub(crate) fn locate_agent(&self, id: &str) -> Option<vigil_cluster::Location> {
        let cluster = self.shared.cluster()?;
        if let Ok(fp) = id.parse::<Fingerprint>()
            && fp.hex_eq(id)
        {
            return Some(cluster.locate(&fp));
        }
        Some(cluster.locate_agent(id))
    }
}

//! This server in a cluster (`--cluster`): what it tells the cluster of
//! its sessions, and what the cluster tells it back (a client of its that
//! attached to another server since: its stale session ends).
//!
//! The link itself (NATS, the buckets, the mirror) is [`vigil_cluster`].

use super::*;
use vigil_cluster::{Cluster, ClusterConfig, LocalSession};

/// How long a server leaving the cluster at shutdown waits for NATS to
/// take its lease and entries back.
const LEAVE_WITHIN: Duration = Duration::from_secs(2);

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
        let weak = Arc::downgrade(self);
        let cluster = Cluster::start(config, move |client, session| {
            if let Some(shared) = weak.upgrade() {
                shared.displaced(&client, session);
            }
        })
        .map_err(|e| ServerError::Cluster(e.to_string()))?;
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

    /// Withdraws from the cluster at shutdown.
    pub(super) async fn leave_cluster(&self) {
        if let Some(cluster) = self.cluster() {
            cluster.leave(LEAVE_WITHIN).await;
        }
    }
}

impl ServerHandle {
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

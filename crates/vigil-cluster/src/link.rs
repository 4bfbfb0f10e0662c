//! The link task: one NATS connection, the two buckets, this server's
//! lease and entries, and the mirror of everyone's.
//!
//! It runs in epochs. An epoch starts once the connection is up: it opens
//! (or creates) the buckets, watches both from their current values, and
//! writes this server's lease and the entries of every session it holds.
//! It ends when a watch ends or the connection drops; the next one starts
//! from a fresh mirror. Everything this server tells the link meanwhile
//! is applied to its own list of sessions, so the next epoch writes what
//! is true then.
//!
//! Writes are awaited one at a time, in the same task that reads the
//! watches: when a watch shows another server's entry for a client this
//! server holds, the revision of this server's own entry is already
//! known, and the later of the two is the client's current session
//! (a client holds one session at a time).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::sync::{mpsc, oneshot, watch};
use vigil_auth::Fingerprint;

use crate::bucket::bucket;
use crate::presence::{Lease, Presence};
use crate::routing::{self, Handler};

mod held;
use crate::{ClusterConfig, Inner, LinkState, LocalSession, PRESENCE_BUCKET, SERVERS_BUCKET};

pub(crate) enum Op {
    Attached(LocalSession),
    Detached(Fingerprint, u64),
    Leave(oneshot::Sender<()>),
}

/// What an op asks of the presence bucket.
enum Write {
    Put(Fingerprint),
    /// The entry of a session that ended, at its revision.
    Delete(Fingerprint, u64),
}

/// The prefix of the presence bucket's key that marks how far a
/// server's watch has read (its fingerprint follows).
const MARKER: &str = "read-";

/// How long a watch may take to replay a bucket before the link starts
/// over.
const REPLAY_WITHIN: Duration = Duration::from_secs(10);

/// A session this server holds, and the revision of its entry.
struct Held {
    session: LocalSession,
    revision: Option<u64>,
}

struct Link {
    inner: Arc<Inner>,
    config: ClusterConfig,
    held: HashMap<Fingerprint, Held>,
    /// Entries of sessions that ended while they could not be deleted
    /// (NATS down): deleted at the start of the next epoch.
    ended: Vec<(Fingerprint, u64)>,
    handler: Arc<dyn Handler>,
    nats: async_nats::Client,
    /// The subscription to each held client's subject (a task that hands
    /// its commands to the handler; aborting it unsubscribes).
    subs: HashMap<Fingerprint, tokio::task::JoinHandle<()>>,
}

/// How an epoch ended.
enum End {
    /// Start another.
    Again(String),
    /// The server left, or dropped every handle.
    Stop,
}

pub(crate) async fn run(
    inner: Arc<Inner>,
    config: ClusterConfig,
    addrs: Vec<async_nats::ServerAddr>,
    tls: rustls::ClientConfig,
    mut ops: mpsc::UnboundedReceiver<Op>,
    out: mpsc::UnboundedReceiver<routing::Out>,
    handler: Arc<dyn Handler>,
) {
    let (up_tx, mut up) = watch::channel(false);
    let name = format!("vigil-server {}", config.agent_id);
    let options = async_nats::ConnectOptions::new()
        .name(name)
        .require_tls(true)
        .tls_client_config(tls)
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(2))
        .ping_interval(Duration::from_secs(2))
        .max_reconnects(None)
        // The first retry at once, then up to one second apart: a server
        // should be back in its cluster soon after NATS is.
        .reconnect_delay_callback(|attempt| {
            Duration::from_millis((attempt as u64).saturating_mul(100).min(1_000))
        })
        .event_callback(move |event| {
            let up_tx = up_tx.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        let _ = up_tx.send(true);
                    }
                    async_nats::Event::Disconnected | async_nats::Event::Closed => {
                        let _ = up_tx.send(false);
                    }
                    other => tracing::debug!(event = %other, "nats event"),
                }
            }
        });
    let client = match options.connect(addrs).await {
        Ok(client) => client,
        Err(e) => {
            inner.set_state(LinkState::Down, Some(format!("cannot connect: {e}")));
            return;
        }
    };
    let router = tokio::spawn(routing::route(
        inner.clone(),
        client.clone(),
        out,
        handler.clone(),
    ));
    let mut link = Link {
        inner,
        config,
        held: HashMap::new(),
        ended: Vec::new(),
        handler,
        nats: client.clone(),
        subs: HashMap::new(),
    };
    link.serve(&client, &mut ops, &mut up).await;
    router.abort();
    for (_, sub) in link.subs.drain() {
        sub.abort();
    }
    // What was published before leaving goes out before the link stops.
    let _ = tokio::time::timeout(Duration::from_secs(1), client.flush()).await;
}

impl Link {
    /// Runs epochs until the server leaves.
    async fn serve(
        &mut self,
        client: &async_nats::Client,
        ops: &mut mpsc::UnboundedReceiver<Op>,
        up: &mut watch::Receiver<bool>,
    ) {
        let link = self;
        loop {
            // Wait for the connection, applying what the server says meanwhile.
            while !*up.borrow_and_update() {
                tokio::select! {
                    op = ops.recv() => match op {
                        Some(Op::Leave(done)) => { let _ = done.send(()); return; }
                        Some(op) => {
                            if let Some(Write::Delete(client, revision)) = link.hold(op) {
                                link.ended.push((client, revision));
                            }
                        }
                        None => return,
                    },
                    changed = up.changed() => if changed.is_err() { return },
                }
            }
            match link.epoch(client, ops, up).await {
                End::Stop => return,
                End::Again(why) => {
                    link.inner.view().clear();
                    // Until the first join, a failure is part of joining (the
                    // buckets of a new cluster take a moment to appear).
                    let state = match link.inner.state() {
                        LinkState::Joining => LinkState::Joining,
                        _ => LinkState::Down,
                    };
                    if state == LinkState::Joining {
                        tracing::info!(problem = %why, "cluster link still joining");
                    }
                    link.inner.set_state(state, Some(why));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}

fn key(fp: &Fingerprint) -> String {
    fp.to_hex()
}

impl Link {
    fn me(&self) -> Fingerprint {
        self.inner.me
    }

    fn presence_of(&self, s: &LocalSession) -> Presence {
        Presence {
            server: self.me(),
            incarnation: self.inner.incarnation,
            session: s.session,
            agent_id: s.agent_id.clone(),
            tree_path: s.tree_path.clone(),
            transport: s.transport.clone(),
            peer: s.peer.clone(),
            connected_at: s.connected_at.clone(),
        }
    }

    fn lease(&self) -> Lease {
        Lease {
            server: self.me(),
            incarnation: self.inner.incarnation,
            agent_id: self.config.agent_id.clone(),
        }
    }

    /// Deletes the entry of an ended session, unless another server wrote
    /// it since (then it is theirs and the delete is refused).
    async fn delete_entry(presence: &kv::Store, client: Fingerprint, revision: u64) {
        if let Err(e) = presence
            .delete_expect_revision(key(&client), Some(revision))
            .await
        {
            tracing::debug!(client = %client, error = %e, "presence entry not deleted");
        }
    }

    /// Writes the entry of every session this server holds.
    async fn put_all(&mut self, presence: &kv::Store) -> Result<(), String> {
        let clients: Vec<Fingerprint> = self.held.keys().copied().collect();
        for c in clients {
            self.put_entry(presence, c).await?;
        }
        Ok(())
    }

    async fn put_entry(&mut self, presence: &kv::Store, client: Fingerprint) -> Result<(), String> {
        let Some(held) = self.held.get(&client) else {
            return Ok(());
        };
        let value = serde_json::to_vec(&self.presence_of(&held.session))
            .map_err(|e| format!("cannot encode an entry: {e}"))?;
        let revision = presence
            .put(key(&client), Bytes::from(value))
            .await
            .map_err(|e| format!("cannot write the entry of {client}: {e}"))?;
        if let Some(held) = self.held.get_mut(&client) {
            held.revision = Some(revision);
        }
        Ok(())
    }

    /// Writes this server's lease; its revision.
    async fn put_lease(&self, servers: &kv::Store) -> Result<u64, String> {
        let value = serde_json::to_vec(&self.lease())
            .map_err(|e| format!("cannot encode the lease: {e}"))?;
        servers
            .put(key(&self.me()), Bytes::from(value))
            .await
            .map_err(|e| format!("cannot renew this server's lease: {e}"))
    }

    /// Withdraws the lease and every entry this server wrote.
    async fn leave(&mut self, servers: &kv::Store, presence: &kv::Store) {
        let _ = servers.delete(key(&self.me())).await;
        let _ = presence
            .delete(format!("{MARKER}{}", key(&self.me())))
            .await;
        for (client, held) in std::mem::take(&mut self.held) {
            if let Some(revision) = held.revision {
                Self::delete_entry(presence, client, revision).await;
            }
        }
        let _ = self.nats.flush().await;
        tracing::info!("left the cluster");
    }

    /// What a watched entry of the presence bucket changes.
    async fn presence_entry(&mut self, presence: &kv::Store, entry: kv::Entry) {
        let Ok(client) = entry.key.parse::<Fingerprint>() else {
            return;
        };
        if entry.operation != kv::Operation::Put {
            self.inner.view().entry_gone(&client);
            return;
        }
        let Ok(value) = serde_json::from_slice::<Presence>(&entry.value) else {
            tracing::warn!(key = %entry.key, "presence entry that is no presence: ignored");
            return;
        };
        let ours = value.server == self.me() && value.incarnation == self.inner.incarnation;
        if value.server == self.me() && !ours {
            // Left by an earlier run of this server.
            let _ = presence
                .delete_expect_revision(&entry.key, Some(entry.revision))
                .await;
        }
        if !ours
            && let Some(held) = self.held.get(&client)
            && held.revision.is_some_and(|r| r < entry.revision)
        {
            let session = held.session.session;
            self.held.remove(&client);
            self.unsubscribe(&client);
            tracing::info!(
                client = %client,
                session,
                server_fingerprint = %value.server,
                "client attached to another server since: dropping its session here"
            );
            self.handler.displaced(client, session);
        }
        self.inner.view().entry_seen(client, value, entry.revision);
    }

    fn lease_entry(&self, entry: kv::Entry) {
        let Ok(server) = entry.key.parse::<Fingerprint>() else {
            return;
        };
        if entry.operation != kv::Operation::Put {
            self.inner.view().lease_gone(&server);
            return;
        }
        if let Ok(lease) = serde_json::from_slice::<Lease>(&entry.value) {
            self.inner.view().lease_seen(lease, Instant::now());
        }
    }

    async fn epoch(
        &mut self,
        client: &async_nats::Client,
        ops: &mut mpsc::UnboundedReceiver<Op>,
        up: &mut watch::Receiver<bool>,
    ) -> End {
        let js = jetstream::new(client.clone());
        let replicas = self.config.replicas;
        let servers = match bucket(
            &js,
            SERVERS_BUCKET,
            "vigil server leases",
            self.config.lease,
            replicas,
        )
        .await
        {
            Ok(b) => b,
            Err(e) => return End::Again(e),
        };
        let presence = match bucket(
            &js,
            PRESENCE_BUCKET,
            "which vigil server holds which client",
            self.config.presence_age,
            replicas,
        )
        .await
        {
            Ok(b) => b,
            Err(e) => return End::Again(e),
        };
        let (mut leases, mut entries) = match (
            servers.watch_with_history(">").await,
            presence.watch_with_history(">").await,
        ) {
            (Ok(l), Ok(e)) => (l, e),
            (Err(e), _) | (_, Err(e)) => {
                return End::Again(format!("cannot watch the buckets: {e}"));
            }
        };
        let lease_revision = match self.put_lease(&servers).await {
            Ok(r) => r,
            Err(e) => return End::Again(e),
        };
        for (client, revision) in std::mem::take(&mut self.ended) {
            Self::delete_entry(&presence, client, revision).await;
        }
        if let Err(e) = self.put_all(&presence).await {
            return End::Again(e);
        }
        let mut lease_tick = tokio::time::interval(self.config.lease / 3);
        let mut entry_tick = tokio::time::interval(self.config.presence_age / 3);
        lease_tick.tick().await;
        entry_tick.tick().await;
        // The watches start from the last value of every key (`watch_all`
        // would start from now). Ready once both have replayed the buckets:
        // once each has shown something this server wrote after it
        // started (its lease; a marker in the presence bucket), as a watch
        // delivers in the order things were written and an empty bucket
        // replays nothing at all.
        let marker = format!("{MARKER}{}", key(&self.me()));
        let marker_revision = match presence
            .put(&marker, Bytes::from(self.inner.incarnation.to_string()))
            .await
        {
            Ok(r) => r,
            Err(e) => return End::Again(format!("cannot write to the presence bucket: {e}")),
        };
        let (mut leases_current, mut entries_current) = (false, false);
        let replay_deadline = tokio::time::sleep(REPLAY_WITHIN);
        tokio::pin!(replay_deadline);
        loop {
            tokio::select! {
                op = ops.recv() => {
                    let Some(op) = op else {
                        self.leave(&servers, &presence).await;
                        return End::Stop;
                    };
                    if let Op::Leave(done) = op {
                        self.leave(&servers, &presence).await;
                        let _ = done.send(());
                        return End::Stop;
                    }
                    match self.hold(op) {
                        Some(Write::Put(client)) => {
                            if let Err(e) = self.put_entry(&presence, client).await {
                                return End::Again(e);
                            }
                        }
                        Some(Write::Delete(client, revision)) => {
                            Self::delete_entry(&presence, client, revision).await;
                        }
                        None => {}
                    }
                }
                entry = leases.next() => match entry {
                    Some(Ok(entry)) => {
                        leases_current |= entry.revision >= lease_revision;
                        self.lease_entry(entry);
                    }
                    Some(Err(e)) => return End::Again(format!("the lease watch failed: {e}")),
                    None => return End::Again("the lease watch ended".into()),
                },
                entry = entries.next() => match entry {
                    Some(Ok(entry)) => {
                        entries_current |= entry.revision >= marker_revision;
                        if !entry.key.starts_with(MARKER) {
                            self.presence_entry(&presence, entry).await;
                        }
                    }
                    Some(Err(e)) => return End::Again(format!("the presence watch failed: {e}")),
                    None => return End::Again("the presence watch ended".into()),
                },
                _ = lease_tick.tick() => {
                    if let Err(e) = self.put_lease(&servers).await {
                        return End::Again(e);
                    }
                }
                _ = entry_tick.tick() => {
                    if let Err(e) = self.put_all(&presence).await {
                        return End::Again(e);
                    }
                }
                () = &mut replay_deadline, if !(leases_current && entries_current) => {
                    return End::Again(format!("the buckets were not replayed within {REPLAY_WITHIN:?}"));
                }
                changed = up.changed() => {
                    if changed.is_err() || !*up.borrow_and_update() {
                        return End::Again("disconnected from NATS".into());
                    }
                }
            }
            if leases_current && entries_current && self.inner.state() != LinkState::Ready {
                self.inner.set_state(LinkState::Ready, None);
            }
        }
    }
}

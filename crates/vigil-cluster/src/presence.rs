//! Presence: which server holds which client, as the cluster's two KV
//! buckets say and as each server mirrors them.
//!
//! - `vigil_servers`: one lease per server (its fingerprint as key),
//!   written every third of the lease time, in a bucket whose `max_age` is
//!   the lease time: a server that stops writing drops out of the bucket.
//! - `vigil_presence`: one entry per attached client (its fingerprint as
//!   key), written when a session starts and when the client says where it
//!   stands, deleted when it ends (only if no other server has written it
//!   since), rewritten every third of the bucket's `max_age`.
//!
//! An entry counts only while its server's lease, of the same
//! incarnation, was seen within the lease time: a killed server's clients
//! are attached nowhere at most a lease time later, without anyone
//! deleting their entries, and a restarted server's old entries are not
//! taken for sessions of its new incarnation. Freshness is judged by when
//! this server received a lease, not by a timestamp in it: the servers'
//! clocks need not agree.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use vigil_auth::Fingerprint;

/// A client's entry: where it is attached and what it said of itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    /// The fingerprint of the server holding the session.
    pub server: Fingerprint,
    /// That server's incarnation (random at each start).
    pub incarnation: u64,
    /// The session's number on that server.
    pub session: u64,
    /// The agent id the client said in `sys:hello`.
    #[serde(default)]
    pub agent_id: Option<String>,
    /// The tree path it said it stands in.
    #[serde(default)]
    pub tree_path: Option<Vec<String>>,
    /// `tls` or `wss`.
    pub transport: String,
    /// The client's address as the server saw it.
    pub peer: String,
    /// When the session started (RFC 3339, the holding server's clock).
    pub connected_at: String,
}

/// A server's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// Its fingerprint.
    pub server: Fingerprint,
    /// Its incarnation.
    pub incarnation: u64,
    /// Its agent id.
    pub agent_id: String,
}

/// A client attached to another server of the cluster, as this server
/// knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// The client's fingerprint.
    pub client: Fingerprint,
    /// Its entry.
    pub presence: Presence,
    /// The agent id of the server holding it.
    pub server_agent_id: String,
}

impl Remote {
    fn new(client: Fingerprint, presence: &Presence, server_agent_id: &str) -> Remote {
        Remote {
            client,
            presence: presence.clone(),
            server_agent_id: server_agent_id.to_owned(),
        }
    }
}

#[derive(Debug)]
struct SeenLease {
    lease: Lease,
    seen: Instant,
}

/// This server's mirror of both buckets.
#[derive(Debug, Default)]
pub(crate) struct View {
    leases: HashMap<Fingerprint, SeenLease>,
    clients: HashMap<Fingerprint, (Presence, u64)>,
}

impl View {
    pub(crate) fn lease_seen(&mut self, lease: Lease, now: Instant) {
        self.leases
            .insert(lease.server, SeenLease { lease, seen: now });
    }

    pub(crate) fn lease_gone(&mut self, server: &Fingerprint) {
        self.leases.remove(server);
    }

    pub(crate) fn entry_seen(&mut self, client: Fingerprint, presence: Presence, revision: u64) {
        self.clients.insert(client, (presence, revision));
    }

    pub(crate) fn entry_gone(&mut self, client: &Fingerprint) {
        self.clients.remove(client);
    }

    pub(crate) fn clear(&mut self) {
        self.leases.clear();
        self.clients.clear();
    }

    /// The agent id of a server whose lease of this incarnation is fresh.
    fn live_server(
        &self,
        server: &Fingerprint,
        incarnation: u64,
        lease_time: Duration,
        now: Instant,
    ) -> Option<&str> {
        self.leases
            .get(server)
            .filter(|l| l.lease.incarnation == incarnation)
            .filter(|l| now.saturating_duration_since(l.seen) <= lease_time)
            .map(|l| l.lease.agent_id.as_str())
    }

    /// The entries of clients attached to live servers other than `me`,
    /// with the agent id of their server.
    fn live_remotes<'a>(
        &'a self,
        me: &'a Fingerprint,
        lease_time: Duration,
        now: Instant,
    ) -> impl Iterator<Item = (&'a Fingerprint, &'a Presence, &'a str)> + 'a {
        self.clients
            .iter()
            .filter(move |(_, (p, _))| p.server != *me)
            .filter_map(move |(client, (p, _))| {
                self.live_server(&p.server, p.incarnation, lease_time, now)
                    .map(|agent| (client, p, agent))
            })
    }

    /// The clients attached to live servers other than `me`.
    pub(crate) fn remotes(
        &self,
        me: &Fingerprint,
        lease_time: Duration,
        now: Instant,
    ) -> Vec<Remote> {
        let mut out: Vec<Remote> = self
            .live_remotes(me, lease_time, now)
            .map(|(client, p, agent)| Remote::new(*client, p, agent))
            .collect();
        out.sort_unstable_by_key(|r| r.client);
        out
    }

    /// How many clients are attached to live servers other than `me`.
    pub(crate) fn remote_count(
        &self,
        me: &Fingerprint,
        lease_time: Duration,
        now: Instant,
    ) -> usize {
        self.live_remotes(me, lease_time, now).count()
    }

    /// The client that said `agent_id`, if on a live server other than `me`.
    pub(crate) fn remote_agent(
        &self,
        me: &Fingerprint,
        agent_id: &str,
        lease_time: Duration,
        now: Instant,
    ) -> Option<Remote> {
        self.live_remotes(me, lease_time, now)
            .find(|(_, p, _)| p.agent_id.as_deref() == Some(agent_id))
            .map(|(client, p, agent)| Remote::new(*client, p, agent))
    }

    /// Where `client` is, if on a live server other than `me`.
    pub(crate) fn remote(
        &self,
        me: &Fingerprint,
        client: &Fingerprint,
        lease_time: Duration,
        now: Instant,
    ) -> Option<Remote> {
        let (p, _) = self.clients.get(client).filter(|(p, _)| p.server != *me)?;
        let agent = self.live_server(&p.server, p.incarnation, lease_time, now)?;
        Some(Remote::new(*client, p, agent))
    }

    /// Whether `server` holds a fresh lease.
    pub(crate) fn is_live(&self, server: &Fingerprint, lease_time: Duration, now: Instant) -> bool {
        self.leases
            .get(server)
            .is_some_and(|l| now.saturating_duration_since(l.seen) <= lease_time)
    }

    /// The servers that hold a fresh lease.
    pub(crate) fn live(&self, lease_time: Duration, now: Instant) -> Vec<Fingerprint> {
        self.leases
            .iter()
            .filter(|(_, l)| now.saturating_duration_since(l.seen) <= lease_time)
            .map(|(s, _)| *s)
            .collect()
    }

    /// How many servers hold a fresh lease (this one included, once its
    /// lease was seen).
    pub(crate) fn live_servers(&self, lease_time: Duration, now: Instant) -> usize {
        self.leases
            .values()
            .filter(|l| now.saturating_duration_since(l.seen) <= lease_time)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(n: u8) -> Fingerprint {
        Fingerprint::of_spki(&[n])
    }

    fn presence(server: u8, incarnation: u64) -> Presence {
        Presence {
            server: fp(server),
            incarnation,
            session: 1,
            agent_id: None,
            tree_path: None,
            transport: "tls".into(),
            peer: "127.0.0.1:1".into(),
            connected_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn an_entry_counts_only_while_its_servers_lease_of_the_same_incarnation_is_fresh() {
        let mut view = View::default();
        let t0 = Instant::now();
        let lease = Duration::from_secs(15);
        view.entry_seen(fp(10), presence(2, 7), 1);
        assert!(view.remotes(&fp(1), lease, t0).is_empty(), "no lease yet");
        view.lease_seen(
            Lease {
                server: fp(2),
                incarnation: 7,
                agent_id: "b".into(),
            },
            t0,
        );
        let found = view.remotes(&fp(1), lease, t0);
        assert_eq!(found.len(), 1);
        assert_eq!(
            view.remote(&fp(1), &fp(10), lease, t0).as_ref(),
            found.first()
        );
        assert_eq!(found[0].server_agent_id, "b");
        assert!(
            view.remotes(&fp(2), lease, t0).is_empty(),
            "not remote to its own server"
        );
        assert!(
            view.remotes(&fp(1), lease, t0 + Duration::from_secs(16))
                .is_empty(),
            "the lease went stale"
        );
        view.lease_seen(
            Lease {
                server: fp(2),
                incarnation: 8,
                agent_id: "b".into(),
            },
            t0,
        );
        assert!(
            view.remotes(&fp(1), lease, t0).is_empty(),
            "the server restarted: its old entries are not its sessions"
        );
    }
}

//! vigil servers as one cluster over NATS JetStream.
//!
//! Each `vigil-server` started with `--cluster` holds a [`Cluster`]: one
//! NATS connection over mutual TLS (the server presents its own vigil
//! certificate; the NATS nodes are admitted by the fingerprints of their
//! keys, as vigil pins everything else), through which it
//!
//! - keeps a lease on its membership and says which clients it holds
//!   ([`presence`]: two JetStream KV buckets with a bounded age, mirrored
//!   by every server, so any server can list the fleet and find the
//!   server of a client without asking anyone);
//! - learns when a client it holds has attached to another server since,
//!   and drops its stale session ([`Handler::displaced`]);
//! - sends commands to the clients the other servers hold, and hears back
//!   what became of them ([`routing`]: a subject per client, one for
//!   broadcasts, one per server for its reports).
//!
//! No private key crosses NATS, and nothing read from NATS is trusted to
//! command a client: commands stay signed by an authority the client
//! pins, and the client checks them itself (see docs/security.md).
//!
//! NATS may be down. Then [`Cluster::status`] says so, [`Cluster::locate`]
//! cannot tell where a client is (the server answers 503, not 404), and
//! each server goes on serving its own clients; when NATS is back the
//! link rebuilds its mirror and writes its lease and entries again.
//!
//! [`local`] starts a NATS cluster on loopback for tests and the demo.
#![deny(missing_docs)]

mod bucket;
mod link;
pub mod local;
pub mod presence;
pub mod routing;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;
use vigil_auth::{Fingerprint, Identity};

pub use presence::{Lease, Presence, Remote};
pub use routing::{Handler, Incoming, Report, Scope, Settled};

/// How long a server's lease lasts unless renewed (it is renewed every
/// third of it): a killed server's clients are attached nowhere after at
/// most this long.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15);

/// The age past which a client's entry leaves the presence bucket unless
/// its server rewrote it (every third of it).
pub const DEFAULT_PRESENCE_AGE: Duration = Duration::from_secs(600);

/// The KV bucket of server leases.
pub const SERVERS_BUCKET: &str = "vigil_servers";
/// The KV bucket of client entries.
pub const PRESENCE_BUCKET: &str = "vigil_presence";

/// Why a cluster link could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// A NATS URL is not one.
    #[error("bad NATS URL {url:?}: {reason}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// No NATS URL was given.
    #[error("a cluster needs at least one NATS URL")]
    NoUrls,
    /// No NATS key is pinned, so no NATS node could be admitted.
    #[error(
        "no NATS node key is pinned (--cluster-pin): vigil admits NATS nodes by the fingerprints of their keys"
    )]
    NoPins,
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] vigil_auth::AuthError),
}

/// How a server joins its cluster.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClusterConfig {
    /// NATS URLs (`nats://host:port`; TLS is required either way).
    pub urls: Vec<String>,
    /// The fingerprints of the NATS nodes' keys.
    pub pins: Vec<Fingerprint>,
    /// What this server presents to NATS: its own vigil identity.
    pub identity: Identity,
    /// This server's agent id, shown to the others.
    pub agent_id: String,
    /// See [`DEFAULT_LEASE`].
    pub lease: Duration,
    /// See [`DEFAULT_PRESENCE_AGE`].
    pub presence_age: Duration,
    /// How many NATS nodes keep a copy of each bucket (at most the
    /// cluster's size; 1 for a single node).
    pub replicas: usize,
}

impl ClusterConfig {
    /// A configuration with the default lease and ages, and one replica
    /// per URL up to three.
    pub fn new(
        urls: Vec<String>,
        pins: Vec<Fingerprint>,
        identity: Identity,
        agent_id: impl Into<String>,
    ) -> ClusterConfig {
        let replicas = urls.len().clamp(1, 3);
        ClusterConfig {
            urls,
            pins,
            identity,
            agent_id: agent_id.into(),
            lease: DEFAULT_LEASE,
            presence_age: DEFAULT_PRESENCE_AGE,
            replicas,
        }
    }

    fn check(&self) -> Result<Vec<async_nats::ServerAddr>, ClusterError> {
        if self.urls.is_empty() {
            return Err(ClusterError::NoUrls);
        }
        if self.pins.is_empty() {
            return Err(ClusterError::NoPins);
        }
        self.urls.iter().map(|url| parse_url(url)).collect()
    }
}

/// A NATS URL, checked: `nats://HOST:PORT` or `tls://HOST:PORT` (or
/// `HOST:PORT`); TLS is required either way.
fn parse_url(url: &str) -> Result<async_nats::ServerAddr, ClusterError> {
    let bad = |reason: String| ClusterError::BadUrl {
        url: url.to_owned(),
        reason,
    };
    if let Some((scheme, _)) = url.split_once("://")
        && !matches!(scheme, "nats" | "tls")
    {
        return Err(bad(format!(
            "{scheme}:// is not a NATS URL (nats://HOST:PORT or tls://HOST:PORT)"
        )));
    }
    url.parse::<async_nats::ServerAddr>()
        .map_err(|e| bad(e.to_string()))
}

/// Checks NATS URLs as [`Cluster::start`] will, for a caller that wants to
/// refuse a bad one before it starts anything.
pub fn check_urls(urls: &[String]) -> Result<(), ClusterError> {
    if urls.is_empty() {
        return Err(ClusterError::NoUrls);
    }
    urls.iter().try_for_each(|url| parse_url(url).map(drop))
}

/// A session this server holds, as it tells the cluster.
#[derive(Debug, Clone)]
pub struct LocalSession {
    /// The client.
    pub client: Fingerprint,
    /// The session number.
    pub session: u64,
    /// Its agent id, once said.
    pub agent_id: Option<String>,
    /// Its tree path, once said.
    pub tree_path: Option<Vec<String>>,
    /// `tls` or `wss`.
    pub transport: String,
    /// The client's address.
    pub peer: String,
    /// When it connected (RFC 3339).
    pub connected_at: String,
}

/// Where the link stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Not connected yet, or connected and still reading the buckets.
    Joining,
    /// Connected, the buckets mirrored: lookups are answered.
    Ready,
    /// Connected once, not now (or the buckets cannot be used).
    Down,
}

impl LinkState {
    /// `joining`, `ready` or `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Joining => "joining",
            LinkState::Ready => "ready",
            LinkState::Down => "down",
        }
    }
}

/// What [`Cluster::status`] says.
#[derive(Debug, Clone)]
pub struct Status {
    /// The link's state.
    pub state: LinkState,
    /// Since when.
    pub since: SystemTime,
    /// What went wrong last, while not ready.
    pub problem: Option<String>,
    /// Servers with a fresh lease, this one included.
    pub servers: usize,
    /// Clients attached to other servers.
    pub remote_clients: usize,
}

/// Where a client is, as far as this server can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// On another live server.
    Remote(Box<Remote>),
    /// Attached to no live server.
    Nowhere,
    /// The link is not ready: it may be anywhere.
    Unknown,
}

struct StatusCell {
    state: LinkState,
    since: SystemTime,
    problem: Option<String>,
}

struct Inner {
    me: Fingerprint,
    incarnation: u64,
    lease: Duration,
    view: Mutex<presence::View>,
    status: Mutex<StatusCell>,
}

impl Inner {
    fn view(&self) -> std::sync::MutexGuard<'_, presence::View> {
        self.view.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set_state(&self, state: LinkState, problem: Option<String>) {
        let mut s = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        if s.state != state {
            s.since = SystemTime::now();
            match state {
                LinkState::Ready => tracing::info!("cluster link ready"),
                LinkState::Down => tracing::warn!(
                    problem = problem.as_deref().unwrap_or("disconnected"),
                    "cluster link down: serving this server's clients only"
                ),
                LinkState::Joining => {}
            }
        }
        s.state = state;
        if problem.is_some() || state == LinkState::Ready {
            s.problem = problem;
        }
    }

    fn state(&self) -> LinkState {
        self.status
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .state
    }
}

/// One server's link to its cluster; cheap to clone. The link runs on
/// the Tokio runtime it was started on until every clone is dropped or
/// [`Cluster::leave`] is called.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
    ops: mpsc::UnboundedSender<link::Op>,
    out: mpsc::UnboundedSender<routing::Out>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("server", &self.inner.me)
            .field("incarnation", &self.inner.incarnation)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Checks `config` and starts the link (on the current Tokio runtime):
    /// it connects, retrying for as long as it runs, so a NATS that is
    /// down does not stop the server from starting. `handler` hears what
    /// the cluster tells this server: displaced sessions, commands for its
    /// clients, reports on the commands it issued.
    pub fn start(
        config: ClusterConfig,
        handler: Arc<dyn Handler>,
    ) -> Result<Cluster, ClusterError> {
        let addrs = config.check()?;
        let tls = vigil_auth::client_config_any(&config.identity, &config.pins)
            .ok_or(ClusterError::NoPins)??;
        let mut seed = [0u8; 8];
        // A clock-based incarnation would do as well; it only has to
        // differ between two runs of the same server.
        if getrandom::fill(&mut seed).is_err() {
            seed = (SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos() as u64)
                .to_le_bytes();
        }
        let inner = Arc::new(Inner {
            me: config.identity.fingerprint(),
            incarnation: u64::from_le_bytes(seed),
            lease: config.lease,
            view: Mutex::new(presence::View::default()),
            status: Mutex::new(StatusCell {
                state: LinkState::Joining,
                since: SystemTime::now(),
                problem: None,
            }),
        });
        let (ops, rx) = mpsc::unbounded_channel();
        let (out, out_rx) = mpsc::unbounded_channel();
        tokio::spawn(link::run(
            inner.clone(),
            config,
            addrs,
            (*tls).clone(),
            rx,
            out_rx,
            handler,
        ));
        Ok(Cluster { inner, ops, out })
    }

    /// This server's fingerprint.
    pub fn fingerprint(&self) -> Fingerprint {
        self.inner.me
    }

    /// This run's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.inner.incarnation
    }

    /// Tells the cluster this server holds `session` (again, with what
    /// the client said of itself once it said it).
    pub fn attached(&self, session: LocalSession) {
        let _ = self.ops.send(link::Op::Attached(session));
    }

    /// Tells the cluster a session ended.
    pub fn detached(&self, client: Fingerprint, session: u64) {
        let _ = self.ops.send(link::Op::Detached(client, session));
    }

    /// Sends a command (the signed command's JSON, one line) to the clients
    /// `scope` names on the other servers, as delivery `reference`. Sent
    /// only while the link is ready; `false` if it is not (nothing sent).
    pub fn send(&self, reference: &str, scope: Scope, command: bytes::Bytes) -> bool {
        if self.inner.state() != LinkState::Ready {
            return false;
        }
        self.out
            .send(routing::Out::Command {
                reference: reference.to_owned(),
                scope,
                command,
            })
            .is_ok()
    }

    /// Tells the server `to` what became of its command here.
    pub fn report(&self, to: Fingerprint, report: Report) {
        let _ = self.out.send(routing::Out::Report { to, report });
    }

    /// Whether the link is ready (lookups answered, commands routed).
    pub fn is_ready(&self) -> bool {
        self.inner.state() == LinkState::Ready
    }

    /// Whether `server` holds a fresh lease (a killed server stops holding
    /// one at most a lease time after it died; one that left, at once).
    pub fn is_live(&self, server: &Fingerprint) -> bool {
        self.inner
            .view()
            .is_live(server, self.inner.lease, Instant::now())
    }

    /// The other servers with a fresh lease.
    pub fn other_servers(&self) -> Vec<Fingerprint> {
        self.inner
            .view()
            .live(self.inner.lease, Instant::now())
            .into_iter()
            .filter(|s| *s != self.inner.me)
            .collect()
    }

    /// Withdraws this server from the cluster (its lease and its clients'
    /// entries), waiting at most `within`; the link then stops.
    pub async fn leave(&self, within: Duration) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.ops.send(link::Op::Leave(tx)).is_ok() {
            let _ = tokio::time::timeout(within, rx).await;
        }
    }

    /// Where the link stands.
    pub fn status(&self) -> Status {
        let now = Instant::now();
        let (servers, remote_clients) = {
            let view = self.inner.view();
            (
                view.live_servers(self.inner.lease, now),
                view.remote_count(&self.inner.me, self.inner.lease, now),
            )
        };
        let s = self
            .inner
            .status
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        Status {
            state: s.state,
            since: s.since,
            problem: s.problem.clone(),
            servers,
            remote_clients,
        }
    }

    /// The clients attached to the other live servers; empty while the
    /// link is not ready.
    pub fn remotes(&self) -> Vec<Remote> {
        if self.inner.state() != LinkState::Ready {
            return Vec::new();
        }
        self.inner
            .view()
            .remotes(&self.inner.me, self.inner.lease, Instant::now())
    }

    /// Where the client that said `agent_id` is, if on another server.
    pub fn locate_agent(&self, agent_id: &str) -> Location {
        if self.inner.state() != LinkState::Ready {
            return Location::Unknown;
        }
        match self.inner.view().remote_agent(
            &self.inner.me,
            agent_id,
            self.inner.lease,
            Instant::now(),
        ) {
            Some(r) => Location::Remote(Box::new(r)),
            None => Location::Nowhere,
        }
    }

    /// Where a client this server does not hold is.
    pub fn locate(&self, client: &Fingerprint) -> Location {
        if self.inner.state() != LinkState::Ready {
            return Location::Unknown;
        }
        match self
            .inner
            .view()
            .remote(&self.inner.me, client, self.inner.lease, Instant::now())
        {
            Some(r) => Location::Remote(Box::new(r)),
            None => Location::Nowhere,
        }
    }
}

//! The cluster link (`vigil-cluster`) against a real NATS cluster: three `nats-server` nodes with
//! TLS on loopback (Debian's package, installed when missing), and links
//! of two servers with their own identities.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vigil_auth::{Fingerprint, GeneratedIdentity};
use vigil_cluster::local::LocalNats;
use vigil_cluster::{Cluster, ClusterConfig, LinkState, LocalSession, Location};

fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn until(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn session(client: Fingerprint, session: u64) -> LocalSession {
    LocalSession {
        client,
        session,
        agent_id: Some(format!("agent-{session}")),
        tree_path: Some(vec!["eu".into()]),
        transport: "tls".into(),
        peer: "127.0.0.1:1".into(),
        connected_at: "2026-12-03T00:00:00Z".into(),
    }
}

type Dropped = Arc<Mutex<Vec<(Fingerprint, u64)>>>;

/// Keeps the sessions the link says were displaced; commands and reports
/// are not this test's.
struct Sink(Dropped);

impl vigil_cluster::Handler for Sink {
    fn displaced(&self, client: Fingerprint, session: u64) {
        self.0.lock().expect("lock").push((client, session));
    }
    fn command(&self, _: vigil_cluster::Incoming) {}
    fn report(&self, _: vigil_cluster::Report) {}
}

fn link(nats: &LocalNats, id: &GeneratedIdentity, name: &str) -> (Cluster, Dropped) {
    let dropped: Dropped = Arc::default();
    let sink = dropped.clone();
    let mut config = ClusterConfig::new(
        nats.urls(),
        nats.pins(),
        id.identity().expect("identity"),
        name,
    );
    config.lease = Duration::from_secs(3);
    let cluster = Cluster::start(config, Arc::new(Sink(sink))).expect("start");
    (cluster, dropped)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_see_each_others_clients_drop_displaced_sessions_and_say_when_nats_is_gone() {
    let program = vigil_test_support::debian::program("nats-server", "nats-server");
    let dir = tempfile::tempdir().expect("tempdir");
    let a_id = GeneratedIdentity::generate("vigil-a").expect("a");
    let b_id = GeneratedIdentity::generate("vigil-b").expect("b");
    let stranger = GeneratedIdentity::generate("stranger").expect("stranger");
    let mut nats = LocalNats::start(
        &program,
        dir.path(),
        3,
        &[a_id.cert_pem.clone(), b_id.cert_pem.clone()],
    )
    .expect("nats");
    let (a, a_dropped) = link(&nats, &a_id, "a");
    let (b, _b_dropped) = link(&nats, &b_id, "b");
    let ready = Instant::now() + Duration::from_secs(30);
    while a.status().state != LinkState::Ready || b.status().state != LinkState::Ready {
        assert!(
            Instant::now() < ready,
            "both links ready: a {:?}, b {:?}; NATS logs in {}",
            a.status(),
            b.status(),
            dir.keep().display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A server NATS does not admit never joins.
    let (c, _) = link(&nats, &stranger, "stranger");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_ne!(c.status().state, LinkState::Ready, "{:?}", c.status());

    let client = GeneratedIdentity::generate("client")
        .expect("client")
        .fingerprint;
    assert_eq!(b.locate(&client), Location::Nowhere);
    a.attached(session(client, 7));
    until("b sees the client on a", Duration::from_secs(10), || {
        matches!(b.locate(&client), Location::Remote(_))
    })
    .await;
    let Location::Remote(found) = b.locate(&client) else {
        unreachable!()
    };
    assert_eq!(found.presence.server, a.fingerprint());
    assert_eq!(found.presence.session, 7);
    assert_eq!(found.presence.agent_id.as_deref(), Some("agent-7"));
    assert_eq!(found.server_agent_id, "a");
    assert_eq!(b.status().servers, 2);
    assert_eq!(b.status().remote_clients, 1);
    assert_eq!(
        a.locate(&client),
        Location::Nowhere,
        "not remote to its own server"
    );

    // The client attaches to b: a drops its session 7.
    b.attached(session(client, 1));
    until(
        "a drops the displaced session",
        Duration::from_secs(10),
        || a_dropped.lock().expect("lock").contains(&(client, 7)),
    )
    .await;
    until(
        "a sees the client on b",
        Duration::from_secs(10),
        || matches!(a.locate(&client), Location::Remote(r) if r.presence.server == b.fingerprint()),
    )
    .await;
    // a's late detach of session 7 does not delete b's entry.
    a.detached(client, 7);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(matches!(a.locate(&client), Location::Remote(_)));
    b.detached(client, 1);
    until(
        "the client is attached nowhere",
        Duration::from_secs(10),
        || a.locate(&client) == Location::Nowhere,
    )
    .await;

    // A server that leaves takes its lease with it; its clients are
    // attached nowhere at once.
    let other = GeneratedIdentity::generate("other")
        .expect("other")
        .fingerprint;
    b.attached(session(other, 2));
    until("a sees other on b", Duration::from_secs(10), || {
        matches!(a.locate(&other), Location::Remote(_))
    })
    .await;
    b.leave(Duration::from_secs(5)).await;
    until("b's client is gone", Duration::from_secs(5), || {
        a.locate(&other) == Location::Nowhere
    })
    .await;

    // A watcher in b's place (a new run of b), and a client of a.
    let (watcher, _) = link(&nats, &b_id, "b");
    until("the watcher is ready", Duration::from_secs(30), || {
        watcher.status().state == LinkState::Ready
    })
    .await;
    let late = GeneratedIdentity::generate("late")
        .expect("late")
        .fingerprint;
    a.attached(session(late, 9));
    until(
        "the watcher sees late on a",
        Duration::from_secs(10),
        || matches!(watcher.locate(&late), Location::Remote(_)),
    )
    .await;

    // NATS gone: a says so, and cannot tell where a client is.
    nats.stop();
    eventually("a sees NATS gone", Duration::from_secs(15), || {
        a.status().state == LinkState::Down
    });
    assert_eq!(a.locate(&client), Location::Unknown);
    assert!(a.status().problem.is_some());
    // A session that ends while NATS is gone...
    a.detached(late, 9);
    // Back: a rejoins by itself.
    for i in 0..3 {
        nats.start_node(i).expect("restart");
    }
    let back = Instant::now() + Duration::from_secs(60);
    while a.status().state != LinkState::Ready {
        assert!(Instant::now() < back, "a rejoins: {:?}", a.status());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // ... has its entry deleted once a is back: late is attached nowhere
    // while the watcher sees a's lease again (not merely a's lease gone
    // stale during the outage).
    until("late is attached nowhere", Duration::from_secs(30), || {
        let status = watcher.status();
        status.state == LinkState::Ready
            && status.servers == 2
            && watcher.locate(&late) == Location::Nowhere
    })
    .await;
}

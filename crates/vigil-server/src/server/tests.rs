//! One signature per heartbeat and one encoding per delivery, whatever
//! the number of sessions: every session's queue holds the same buffer.

use std::sync::OnceLock;
use std::time::Duration;

use super::*;
use crate::outbound::{Outbound, SharedOutbound};

async fn server_with_sessions(n: u64, heartbeats: bool) -> (Server, Vec<SharedOutbound>) {
    let identity = vigil_auth::GeneratedIdentity::generate("s")
        .and_then(|g| g.identity())
        .expect("identity");
    let trust = vigil_auth::TrustStore::from_fingerprints([]);
    let mut config = ServerConfig::new("127.0.0.1:0".parse().expect("addr"), identity, trust);
    config.dangerous().run_without_audit_log();
    if heartbeats {
        config.authority = Some(crate::Authority {
            key: vigil_command::SigningKey::from_bytes(&[7; 32]),
            id: "s".into(),
        });
        config.heartbeat_interval = Duration::from_secs(5);
    }
    let server = Server::bind(config).await.expect("bind");
    let mut queues = Vec::new();
    for id in 1..=n {
        let out: SharedOutbound = Arc::new(Outbound::new(1 << 20));
        server.shared.register(SessionHandle {
            info: SessionInfo {
                id,
                fingerprint: Fingerprint::from_bytes([id as u8; 32]),
                peer: SocketAddr::from(([127, 0, 0, 1], 4000)),
                connected_at: SystemTime::UNIX_EPOCH,
                place: None,
                clock_skew_ms: None,
                nonce_heartbeats: false,
                transport: crate::server::Transport::Tls,
            },
            out: out.clone(),
            place: Arc::new(OnceLock::new()),
            beat: Default::default(),
        });
        queues.push(out);
    }
    (server, queues)
}

/// The address of each buffer queued for each session.
fn queued(queues: &[SharedOutbound]) -> Vec<Vec<(usize, usize)>> {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    queues
        .iter()
        .map(|q| {
            let mut taken = Vec::new();
            let _ = q.poll_take(&mut cx, usize::MAX, 64, |item| {
                taken.push((item.bytes.as_ptr() as usize, item.bytes.len()))
            });
            taken
        })
        .collect()
}

#[tokio::test]
async fn a_delivery_is_encoded_once_for_every_session() {
    let (server, queues) = server_with_sessions(3, false).await;
    let handle = server.handle();
    let delivery = handle.deliver_raw(
        "c1",
        br#"{"command_id":"c1"}"#,
        &crate::Target::All,
        Lane::Command,
    );
    assert_eq!(delivery.sent(), 3);
    let seen = queued(&queues);
    assert!(seen.iter().all(|q| q.len() == 1), "{seen:?}");
    assert!(
        seen.iter().all(|q| q[0] == seen[0][0]),
        "one buffer: {seen:?}"
    );
    // A broadcast too.
    assert_eq!(handle.broadcast(&ServerMessage::Pong, "p").ok(), Some(3));
    let seen = queued(&queues);
    assert!(
        seen.iter().all(|q| q.len() == 1 && q[0] == seen[0][0]),
        "{seen:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_heartbeat_is_signed_once_for_every_session() {
    let (server, queues) = server_with_sessions(3, true).await;
    let shared = server.shared.clone();
    let authority = shared.config.authority.clone().expect("authority");
    let task = tokio::spawn(heartbeats(shared.clone(), authority));
    // The first tick is at once.
    tokio::time::sleep(Duration::from_millis(1)).await;
    assert_eq!(shared.stats.heartbeats.get(), 1);
    let seen = queued(&queues);
    assert!(seen.iter().all(|q| q.len() == 1), "{seen:?}");
    assert!(
        seen.iter().all(|q| q[0] == seen[0][0]),
        "one signed buffer: {seen:?}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(shared.stats.heartbeats.get(), 2, "one beat per interval");
    shared.shutdown.cancel();
    task.await.expect("heartbeat task");
}

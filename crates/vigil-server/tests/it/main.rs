//! Integration tests: a real server on loopback, real TLS, real files.

mod api;
mod commands;
mod modules;
mod support;

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use vigil_auth::{Fingerprint, GeneratedIdentity, Identity};
use vigil_client::{Client, ClientConfig, ClientError, ClientEvent, Connection};
use vigil_proto::ErrorCode;

use support::{TestServer, Via, client_config, raw_tls, read_frame, with_wss};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn trusted_client_connects_and_syncs() {
    let client = GeneratedIdentity::generate("c").expect("identity");
    let server = TestServer::start(&[client.fingerprint]).await;
    let conn = Connection::connect(&client_config(&server, &client))
        .await
        .expect("admitted");
    assert_eq!(conn.sync().await.expect("sync"), vec![]);
    let sessions = server.handle.sessions();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0].fingerprint, client.fingerprint);
}

#[tokio::test]
async fn openssl_client_certificate_is_served() {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../vigil-auth/tests/data");
    let identity = Identity::load(
        &data.join("openssl-client.crt"),
        &data.join("openssl-client.key"),
    )
    .expect("openssl identity");
    // The fingerprint as the openssl pipeline printed it.
    let fp: Fingerprint = std::fs::read_to_string(data.join("openssl-client.fingerprint"))
        .expect("fixture")
        .parse()
        .expect("hex");
    let server = TestServer::start(&[fp]).await;
    let config = ClientConfig::new(server.addr.to_string(), identity, server.fingerprint);
    let conn = Connection::connect(&config).await.expect("admitted");
    assert!(conn.sync().await.expect("sync").is_empty());
}

#[tokio::test]
async fn unknown_certificate_is_refused_during_the_handshake() {
    let trusted = GeneratedIdentity::generate("trusted").expect("identity");
    let stranger = GeneratedIdentity::generate("stranger").expect("identity");
    let server = TestServer::start(&[trusted.fingerprint]).await;
    let err = Connection::connect(&client_config(&server, &stranger))
        .await
        .expect_err("refused");
    assert!(
        matches!(err, ClientError::CertificateRefused { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("refused our certificate"), "{err}");
    assert_eq!(server.handle.stats().handshakes_failed.get(), 1);
    assert!(server.handle.sessions().is_empty());
}

#[tokio::test]
async fn missing_certificate_is_refused_during_the_handshake() {
    let server = TestServer::start(&[]).await;
    // A TLS 1.3 client that presents no certificate at all.
    let config = vigil_auth::rustls::ClientConfig::builder_with_provider(vigil_auth::provider())
        .with_protocol_versions(&[&vigil_auth::rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(
            vigil_auth::PinnedServerVerifier::new(server.fingerprint),
        ))
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("tcp");
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let name = vigil_auth::rustls::pki_types::ServerName::try_from("vigil").expect("name");
    let mut tls = connector
        .connect(name, tcp)
        .await
        .expect("client side completes");
    tls.write_all(b"mod:sync:1 {}\n").await.expect("write");
    let mut buf = [0u8; 64];
    let err = tls.read(&mut buf).await.expect_err("refused on first read");
    assert!(
        vigil_auth::refused_certificate_alert(&err).is_some(),
        "expected a certificate alert, got {err}"
    );
    support::eventually(|| server.handle.stats().handshakes_failed.get() == 1).await;
}

#[tokio::test]
async fn wrong_server_pin_is_refused_by_the_client() {
    let client = GeneratedIdentity::generate("c").expect("identity");
    let server = TestServer::start(&[client.fingerprint]).await;
    let mut config = client_config(&server, &client);
    config.server_fingerprint = Fingerprint::from_bytes([7; 32]);
    let err = Connection::connect(&config).await.expect_err("wrong pin");
    assert!(matches!(err, ClientError::WrongServer(_)), "{err}");
    assert!(
        err.to_string().contains(&server.fingerprint.to_hex()),
        "{err}"
    );
}

#[tokio::test]
async fn revocation_closes_the_live_session_at_once() {
    revocation_closes(Via::Tls).await;
}

#[tokio::test]
async fn revocation_closes_a_live_websocket_session_at_once() {
    revocation_closes(Via::WebSocket).await;
}

/// A session on `via` is closed as soon as its key leaves the trust file,
/// cannot come back, and is admitted again when the key returns; a
/// bystander is untouched.
async fn revocation_closes(via: Via) {
    let client = GeneratedIdentity::generate("c").expect("identity");
    let other = GeneratedIdentity::generate("other").expect("identity");
    let server = TestServer::start_with(&[client.fingerprint, other.fingerprint], with_wss).await;
    let conn = Connection::connect(&via.config(&server, &client))
        .await
        .expect("admitted");
    let bystander = Connection::connect(&via.config(&server, &other))
        .await
        .expect("admitted");

    let start = Instant::now();
    server.write_trust(&[other.fingerprint]);
    let reason = tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("closed");
    // Closed by the trust file's change, not by a timeout: the session's
    // idle timeout (90 s) is far past the wait. How fast is a figure, not
    // a limit here (the watcher and the sweep run at once; ~40 ms).
    eprintln!(
        "revoked session closed after {:?}: {reason}",
        start.elapsed()
    );

    // The other client is untouched, and the revoked one cannot come back.
    assert!(bystander.sync().await.is_ok());
    let err = Connection::connect(&via.config(&server, &client))
        .await
        .expect_err("revoked");
    assert!(
        matches!(err, ClientError::CertificateRefused { .. }),
        "{err}"
    );

    // Adding it back admits it at once, without a restart.
    server.write_trust(&[other.fingerprint, client.fingerprint]);
    support::eventually(|| server.trust.is_trusted(&client.fingerprint)).await;
    let again = Connection::connect(&via.config(&server, &client))
        .await
        .expect("admitted again");
    assert!(again.sync().await.is_ok());
}

#[tokio::test]
async fn invalid_trust_edit_keeps_the_last_good_list() {
    let client = GeneratedIdentity::generate("c").expect("identity");
    let server = TestServer::start(&[client.fingerprint]).await;
    let conn = Connection::connect(&client_config(&server, &client))
        .await
        .expect("admitted");
    std::fs::write(&server.trust_path, b"{\"trusted_fingerprints\": [oops").expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(conn.sync().await.is_ok(), "session survives a bad edit");
    assert!(
        Connection::connect(&client_config(&server, &client))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn bad_input_gets_err_frames_and_others_keep_being_served() {
    let client = GeneratedIdentity::generate("c").expect("identity");
    let other = GeneratedIdentity::generate("other").expect("identity");
    let server = TestServer::start(&[client.fingerprint, other.fingerprint]).await;
    let bystander = Connection::connect(&client_config(&server, &other))
        .await
        .expect("admitted");

    let (mut rd, mut wr) = tokio::io::split(raw_tls(&server, &client).await);
    let cases: &[(&[u8], ErrorCode, &str)] = &[
        (b"mod:sync:\xff\xfe {}\n", ErrorCode::InvalidUtf8, "-"),
        (b"modsync {}\n", ErrorCode::BadHeader, "-"),
        (b"mod:sync {}\n", ErrorCode::BadHeader, "-"),
        (b"\n", ErrorCode::BadHeader, "-"),
        (b"nope:sync:r1 {}\n", ErrorCode::UnknownApi, "r1"),
        (b"mod:dance:r2 {}\n", ErrorCode::UnknownType, "r2"),
        (b"mod:sync:r3 not json\n", ErrorCode::BadJson, "r3"),
        (b"mod:sync:r4 [1]\n", ErrorCode::BadJson, "r4"),
        (b"mod:verify:r5 {\"mod\": 5}\n", ErrorCode::BadPayload, "r5"),
        (
            b"mod:verify:r6 {\"mod\": \"nope.so\"}\n",
            ErrorCode::UnknownModule,
            "r6",
        ),
        (
            b"mod:exec:r7 {\"mod\": \"nope.so\", \"sum\": \"00\"}\n",
            ErrorCode::UnknownModule,
            "r7",
        ),
    ];
    let mut buf = bytes::BytesMut::new();
    for (input, code, reference) in cases {
        wr.write_all(input).await.expect("write");
        let frame = read_frame(&mut rd, &mut buf)
            .await
            .expect("an answer, never silence");
        assert_eq!(frame.api(), "err", "{input:?}");
        assert_eq!(frame.kind(), code.as_str(), "{input:?}");
        assert_eq!(frame.reference(), *reference, "{input:?}");
        let message = frame.payload()["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{input:?}: err frame has a message");
    }
    // The connection still works after all that.
    wr.write_all(b"mod:sync:ok {}\n").await.expect("write");
    let frame = read_frame(&mut rd, &mut buf).await.expect("sync_resp");
    assert_eq!((frame.kind(), frame.reference()), ("sync_resp", "ok"));

    // An oversized frame: an err frame, then the connection is closed.
    let big = vec![b'a'; vigil_proto::DEFAULT_CLIENT_TO_SERVER + 10];
    wr.write_all(&big).await.expect("write");
    let frame = read_frame(&mut rd, &mut buf).await.expect("err frame");
    assert_eq!(frame.kind(), "frame_too_large");
    assert!(read_frame(&mut rd, &mut buf).await.is_none(), "then closed");

    assert!(
        bystander.sync().await.is_ok(),
        "other clients keep being served"
    );
    assert!(server.handle.stats().bad_frames.get() >= 9);
}

#[tokio::test]
async fn half_open_handshakes_and_silent_sessions_are_dropped() {
    let client = GeneratedIdentity::generate("c").expect("identity");
    let server = TestServer::start_with(&[client.fingerprint], |c| {
        c.handshake_timeout = Duration::from_millis(300);
        c.idle_timeout = Duration::from_millis(300);
    })
    .await;
    // TCP connected, no ClientHello.
    let mut tcp = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("tcp");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
        .await
        .expect("server closes a stalled handshake")
        .unwrap_or(0);
    assert_eq!(n, 0);

    // Handshake done, then silence.
    let (mut rd, _wr) = tokio::io::split(raw_tls(&server, &client).await);
    let mut frames = bytes::BytesMut::new();
    let closed = tokio::time::timeout(WAIT, read_frame(&mut rd, &mut frames))
        .await
        .expect("server closes an idle session");
    assert!(closed.is_none());
    assert!(server.handle.sessions().is_empty());
}

#[tokio::test]
async fn connections_past_the_limit_shed_the_oldest_waiting_and_refuse_only_when_all_work() {
    let client = GeneratedIdentity::generate("c").expect("identity");
    let server = TestServer::start_with(&[client.fingerprint], |c| {
        c.max_connections = 2;
    })
    .await;
    let mut a = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("tcp");
    let _b = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("tcp");
    support::eventually(|| server.handle.stats().accepted.get() == 2).await;
    // A third: the oldest stalled handshake gives way.
    let _c = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("tcp");
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, a.read(&mut buf))
        .await
        .expect("the oldest closed")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(server.handle.stats().shed.get(), 1);
    // A real client is served while the others are held.
    let first = Connection::connect(&client_config(&server, &client))
        .await
        .expect("served: a stalled handshake gave way");
    let second = Connection::connect(&client_config(&server, &client))
        .await
        .expect("served: the other stalled handshake gave way");
    assert!(first.sync().await.is_ok() && second.sync().await.is_ok());
    // Two sessions: every slot works, and a new connection is refused.
    let mut d = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("tcp");
    let n = tokio::time::timeout(WAIT, d.read(&mut buf))
        .await
        .expect("closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert_eq!(server.handle.stats().refused_at_limit.get(), 1);
    drop(first);
    // A slot frees when a session ends.
    let conn = tokio::time::timeout(WAIT, async {
        loop {
            match Connection::connect(&client_config(&server, &client)).await {
                Ok(conn) => break conn,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("served after a session ends");
    assert!(conn.sync().await.is_ok());
}

#[tokio::test]
async fn shutdown_closes_sessions_and_returns() {
    let client = GeneratedIdentity::generate("c").expect("identity");
    let mut server = TestServer::start(&[client.fingerprint]).await;
    let conn = Connection::connect(&client_config(&server, &client))
        .await
        .expect("admitted");
    server.handle.shutdown();
    tokio::time::timeout(WAIT, conn.closed())
        .await
        .expect("session closed");
    let run = server.task.take().expect("task");
    tokio::time::timeout(WAIT, run)
        .await
        .expect("run returns")
        .expect("no panic")
        .expect("clean");
    assert!(
        tokio::net::TcpStream::connect(server.addr).await.is_err(),
        "listener closed"
    );
}

#[tokio::test]
async fn client_reconnects_with_backoff_after_the_server_restarts() {
    let client_id = GeneratedIdentity::generate("c").expect("identity");
    let mut server = TestServer::start(&[client_id.fingerprint]).await;
    let mut config = client_config(&server, &client_id);
    config.backoff = vigil_client::Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(400),
    };
    let client = std::sync::Arc::new(Client::new(config));
    let mut events = client.subscribe();
    let stop = tokio_util::sync::CancellationToken::new();
    let runner = tokio::spawn({
        let (client, stop) = (client.clone(), stop.clone());
        async move { client.run(stop).await }
    });
    support::next_event(&mut events, |e| matches!(e, ClientEvent::Synced { .. })).await;

    server.restart().await;
    support::next_event(&mut events, |e| {
        matches!(e, ClientEvent::Disconnected { .. })
    })
    .await;
    support::next_event(&mut events, |e| matches!(e, ClientEvent::Retrying { .. })).await;
    support::next_event(&mut events, |e| matches!(e, ClientEvent::Synced { .. })).await;

    stop.cancel();
    tokio::time::timeout(WAIT, runner)
        .await
        .expect("stops")
        .expect("no panic");
}

#[tokio::test]
async fn refused_client_says_so_and_keeps_retrying() {
    let stranger = GeneratedIdentity::generate("stranger").expect("identity");
    let server = TestServer::start(&[]).await;
    let mut config = client_config(&server, &stranger);
    config.backoff = vigil_client::Backoff {
        initial: Duration::from_millis(20),
        max: Duration::from_millis(40),
    };
    let client = std::sync::Arc::new(Client::new(config));
    let mut events = client.subscribe();
    let stop = tokio_util::sync::CancellationToken::new();
    let runner = tokio::spawn({
        let (client, stop) = (client.clone(), stop.clone());
        async move { client.run(stop).await }
    });
    for _ in 0..2 {
        let event = support::next_event(&mut events, |e| {
            matches!(e, ClientEvent::Disconnected { .. })
        })
        .await;
        let ClientEvent::Disconnected { reason } = event else {
            unreachable!()
        };
        assert!(reason.is_trust_problem(), "{reason}");
    }
    stop.cancel();
    tokio::time::timeout(WAIT, runner)
        .await
        .expect("stops")
        .expect("no panic");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped_and_others_are_served() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    let slow = GeneratedIdentity::generate("slow").expect("identity");
    let good = GeneratedIdentity::generate("good").expect("identity");
    let server = TestServer::start_with(&[slow.fingerprint, good.fingerprint], |c| {
        c.max_outbound_bytes = 64 * 1024;
    })
    .await;
    // The slow client never reads; the other one reads everything.
    let _slow_conn = support::raw_tls(&server, &slow).await;
    let mut good_conn = Connection::connect(&support::client_config(&server, &good))
        .await
        .expect("connect");
    let mut pushed = good_conn.take_pushed().expect("pushed").events;
    let received = Arc::new(AtomicU64::new(0));
    tokio::spawn({
        let received = received.clone();
        async move {
            while pushed.recv().await.is_some() {
                received.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    support::eventually(|| server.handle.sessions().len() == 2).await;
    // Broadcasts the client queues one by one (a heartbeat would only
    // replace the one before).
    let msg = vigil_proto::ServerMessage::ModUnload {
        module: "x".repeat(1024),
    };
    // Bursts of 32 KiB, each read by the good client before the next: its
    // queue never nears the limit, while the slow client's kernel buffers
    // fill and then its queue passes the limit.
    let mut sent = 0u64;
    while server.handle.stats().slow_consumers.get() == 0 {
        for _ in 0..32 {
            server.handle.broadcast(&msg, "b").expect("not a command");
            sent += 1;
        }
        assert!(sent < 200_000, "never counted as a slow consumer");
        let deadline = Instant::now() + WAIT;
        while received.load(Ordering::Relaxed) < sent {
            assert!(
                Instant::now() < deadline,
                "good client got {} of {sent}",
                received.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    support::eventually(|| !server.handle.is_connected(&slow.fingerprint)).await;
    // The other client kept being served, and missed nothing.
    assert!(server.handle.is_connected(&good.fingerprint));
    good_conn.sync().await.expect("still served");
    assert_eq!(server.handle.stats().slow_consumers.get(), 1);
}

#[tokio::test]
async fn a_client_that_blocks_writes_past_the_stall_timeout_is_dropped() {
    let slow = GeneratedIdentity::generate("slow").expect("identity");
    let server = TestServer::start_with(&[slow.fingerprint], |c| {
        // A queue too large to overflow here: only the stall bound acts.
        c.max_outbound_bytes = 1 << 30;
        c.write_stall_timeout = Duration::from_millis(300);
    })
    .await;
    let (mut rd, mut wr) = tokio::io::split(support::raw_tls(&server, &slow).await);
    // Requests answered with a whole module each would do; pings will too,
    // many of them, while the client reads nothing.
    let pings = b"sys:ping:p {}\n".repeat(20_000);
    let writer = tokio::spawn(async move {
        for _ in 0..50 {
            if wr.write_all(&pings).await.is_err() {
                return;
            }
        }
    });
    support::eventually(|| server.handle.stats().slow_consumers.get() == 1).await;
    support::eventually(|| server.handle.sessions().is_empty()).await;
    writer.abort();
    // The connection was closed by the server: reading ends.
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut sink)).await;
}

/// A server cannot be started without an audit log by accident: `bind`
/// refuses, and says how to allow it on purpose.
#[tokio::test]
async fn a_server_without_an_audit_log_is_refused_unless_allowed() {
    let identity = GeneratedIdentity::generate("s")
        .expect("identity")
        .identity()
        .expect("identity");
    let trust = vigil_auth::TrustStore::from_fingerprints([]);
    let mut config =
        vigil_server::ServerConfig::new("127.0.0.1:0".parse().expect("addr"), identity, trust);
    let refused = vigil_server::Server::bind(config.clone()).await;
    assert!(
        matches!(refused, Err(vigil_server::ServerError::NoAuditLog)),
        "{refused:?}"
    );
    config.dangerous().run_without_audit_log();
    assert!(vigil_server::Server::bind(config).await.is_ok());
}

/// `broadcast` cannot send a command around the audit log.
#[tokio::test]
async fn a_command_is_not_broadcast() {
    let server = TestServer::start(&[]).await;
    let command = vigil_proto::ServerMessage::Command(serde_json::Map::new());
    assert!(matches!(
        server.handle.broadcast(&command, "c"),
        Err(vigil_server::ServerError::BadCommand(_))
    ));
    assert_eq!(
        server
            .handle
            .broadcast(&vigil_proto::ServerMessage::Pong, "p")
            .ok(),
        Some(0)
    );
}

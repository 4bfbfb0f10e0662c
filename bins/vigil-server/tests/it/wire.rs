//! The mutual-TLS port: malformed, oversized and flooding frames, partial
//! handshakes, connection floods, strangers.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use vigil_auth::GeneratedIdentity;
use vigil_test_support::wait::{WAIT, eventually};

use crate::support::{Deployment, ask, frame_for};

/// W01: every malformed or meaningless frame gets an `err` frame with its
/// code, and the connection goes on.
#[tokio::test]
async fn w01_malformed_frames_get_err_frames_and_the_connection_goes_on() {
    let dep = Deployment::start(&[]).await;
    let mut tls = dep.tls(None).await;
    assert!(ask(&mut tls, b"sys:ping:a {}\n", "a").await.is_some());
    let rss = dep.server.rss_kib();
    let cases: &[(&[u8], &str, &str)] = &[
        (b"mod:sync:b1 {\n", "b1", "bad_json"),
        (b"mod:sync:b2 [1,2]\n", "b2", "bad_json"),
        (b"zzz:sync:b3 {}\n", "b3", "unknown_api"),
        (b"mod:nope:b4 {}\n", "b4", "unknown_type"),
        (b"mod:verify:b5 {}\n", "b5", "bad_payload"),
        (
            b"mod:exec:b6 {\"mod\":1,\"args\":\"x\",\"sum\":\"y\"}\n",
            "b6",
            "bad_payload",
        ),
        (
            b"mod:verify:b7 {\"mod\":\"nope.so\"}\n",
            "b7",
            "unknown_module",
        ),
        (
            b"cmd:ack:b8 {\"command_id\":\"never-sent\",\"status\":\"done\"}\n",
            "b8",
            "bad_payload",
        ),
    ];
    for (bytes, reference, code) in cases {
        let frame = ask(&mut tls, bytes, reference)
            .await
            .unwrap_or_else(|| panic!("{reference}: the connection closed"));
        assert_eq!(frame.api(), "err", "{reference}: {frame}");
        assert_eq!(frame.kind(), *code, "{reference}: {frame}");
        assert!(frame.payload()["message"].is_string(), "{reference}");
    }
    // No REF to echo: the header cannot be read, or it is not UTF-8.
    for bytes in [&b"no header at all\n"[..], b"mod:sync:\xff\xfe {}\n"] {
        tls.write_all(bytes).await.expect("write");
        let frame = frame_for(&mut tls, &mut Vec::new(), "-")
            .await
            .expect("answered");
        assert_eq!(frame.api(), "err", "{frame}");
    }
    assert!(
        ask(&mut tls, b"sys:ping:after {}\n", "after")
            .await
            .is_some()
    );
    dep.assert_serving().await;
    dep.assert_memory_bounded(rss, 8 * 1024);
}

/// W02: a frame past the 64 KiB limit gets `frame_too_large`, then the
/// connection is closed; nothing past the limit is buffered.
#[tokio::test]
async fn w02_an_oversized_frame_is_refused_and_the_connection_closed() {
    let dep = Deployment::start(&[]).await;
    let mut tls = dep.tls(None).await;
    let rss = dep.server.rss_kib();
    let mut huge = b"mod:sync:big {\"pad\":\"".to_vec();
    huge.extend(std::iter::repeat_n(b'x', 200 * 1024));
    let _ = tls.write_all(&huge).await;
    let frame = frame_for(&mut tls, &mut Vec::new(), "-")
        .await
        .expect("an err frame first");
    assert_eq!((frame.api(), frame.kind()), ("err", "frame_too_large"));
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(WAIT, tls.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the server closed the connection");
    dep.assert_serving().await;
    dep.assert_memory_bounded(rss, 8 * 1024);
}

/// W03: a client that floods requests and reads no answers is held back
/// (reading stops while its answers wait) and then dropped as a slow
/// consumer; the server's memory stays bounded.
#[tokio::test]
async fn w03_a_request_flood_without_reading_is_bounded_and_dropped() {
    let dep = Deployment::start(&["--write-stall-timeout", "1"]).await;
    let tls = dep.tls(None).await;
    let rss = dep.server.rss_kib();
    let (_rd, mut wr) = tokio::io::split(tls);
    let pings = b"sys:ping:p {}\n".repeat(64 * 1024);
    let total = 64 * pings.len();
    let flood = tokio::spawn(async move {
        let mut sent = 0usize;
        // 64 MiB at most; the server stops reading long before.
        for _ in 0..64 {
            match tokio::time::timeout(Duration::from_secs(5), wr.write_all(&pings)).await {
                Ok(Ok(())) => sent += pings.len(),
                _ => break,
            }
        }
        sent
    });
    eventually("the flooding client is dropped", || {
        dep.metric("vigil_slow_consumers_total") >= 1
    })
    .await;
    let sent = flood.await.expect("flood task");
    assert!(sent < total, "the server stopped taking the flood");
    dep.assert_serving().await;
    dep.assert_memory_bounded(rss, 16 * 1024);
}

/// W04: connections that start a TLS handshake and stall are closed at the
/// handshake timeout; meanwhile others are served.
#[tokio::test]
async fn w04_half_open_handshakes_are_closed_at_the_timeout() {
    let dep = Deployment::start(&["--handshake-timeout", "1"]).await;
    let rss = dep.server.rss_kib();
    let failed_before = dep.metric("vigil_handshakes_total{result=\"failed\"}");
    let mut stalled = Vec::new();
    for _ in 0..100 {
        let mut tcp = tokio::net::TcpStream::connect(dep.addr())
            .await
            .expect("connect");
        // The first bytes of a TLS ClientHello record, then nothing.
        tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc])
            .await
            .expect("write");
        stalled.push(tcp);
    }
    dep.assert_serving().await;
    for mut tcp in stalled {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(WAIT, tcp.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "closed by the server"
        );
    }
    assert!(dep.metric("vigil_handshakes_total{result=\"failed\"}") >= failed_before + 100);
    dep.assert_memory_bounded(rss, 8 * 1024);
}

/// W05: more idle TCP connections than the limit (60 against 20): the
/// oldest ones, still in their handshake, give way to the newer (40 closed,
/// counted), the trusted client is served while they are held, and once
/// they go the server is as before.
#[tokio::test]
async fn w05_connections_past_the_limit_give_way_and_service_goes_on() {
    let dep = Deployment::start(&["--max-connections", "20", "--handshake-timeout", "30"]).await;
    let rss = dep.server.rss_kib();
    let mut held = Vec::new();
    for _ in 0..60 {
        held.push(
            tokio::net::TcpStream::connect(dep.addr())
                .await
                .expect("connect"),
        );
    }
    eventually("connections shed at the limit", || {
        dep.metric("vigil_connections_shed_total{listener=\"tls\"}") >= 40
    })
    .await;
    // Served while they are held: the oldest of them gives way.
    dep.assert_serving().await;
    drop(held);
    dep.assert_serving().await;
    dep.assert_memory_bounded(rss, 8 * 1024);
}

/// W06: a stranger's certificate, no certificate, or plain text are
/// refused in the handshake; each refusal is counted and audited.
#[tokio::test]
async fn w06_strangers_are_refused_in_the_handshake() {
    let dep = Deployment::start(&[]).await;
    let failed_before = dep.metric("vigil_handshakes_total{result=\"failed\"}");
    let stranger = GeneratedIdentity::generate("stranger")
        .expect("identity")
        .identity()
        .expect("identity");
    // TLS 1.3: the client learns of the refusal on its first read.
    let mut tls = dep.tls(Some(&stranger)).await;
    let _ = tls.write_all(b"sys:ping:a {}\n").await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(WAIT, tls.read(&mut buf))
        .await
        .expect("in time");
    assert!(matches!(read, Ok(0) | Err(_)), "a stranger got {read:?}");
    // No certificate at all.
    let config = vigil_auth::rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        vigil_auth::rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&vigil_auth::rustls::version::TLS13])
    .expect("tls 1.3")
    .dangerous()
    .with_custom_certificate_verifier(std::sync::Arc::new(vigil_auth::PinnedServerVerifier::new(
        dep.server_fingerprint(),
    )))
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(dep.addr())
        .await
        .expect("connect");
    let name = vigil_auth::rustls::pki_types::ServerName::try_from("vigil").expect("name");
    if let Ok(mut tls) = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
    {
        let _ = tls.write_all(b"sys:ping:a {}\n").await;
        let read = tokio::time::timeout(WAIT, tls.read(&mut buf))
            .await
            .expect("in time");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "no certificate got {read:?}"
        );
    }
    // Plain text on the TLS port.
    let mut tcp = tokio::net::TcpStream::connect(dep.addr())
        .await
        .expect("connect");
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut answer)).await;
    assert!(
        !answer.starts_with(b"HTTP"),
        "no HTTP answer on the TLS port"
    );
    eventually("three refusals counted", || {
        dep.metric("vigil_handshakes_total{result=\"failed\"}") >= failed_before + 3
    })
    .await;
    dep.assert_serving().await;
}

/// The audit records of `kind` in the deployment's audit log.
pub(crate) fn audit_records(dep: &Deployment, kind: &str) -> Vec<serde_json::Value> {
    crate::support::audit_log(dep)
        .into_iter()
        .filter(|r| r["kind"] == kind)
        .collect()
}

/// W07: a client whose key was removed from the trust file offers the TLS
/// 1.3 session ticket it got while it was trusted (rustls restores a
/// resumed client's certificate from its session cache without asking the
/// verifier). It is refused in the handshake, and audited as refused, never
/// as accepted.
#[tokio::test]
async fn w07_a_revoked_key_cannot_resume_its_tls_session() {
    let dep = Deployment::start(&[]).await;
    let identity = dep.client_identity();
    // One client configuration, so that its session cache is kept.
    let config = vigil_auth::client_config(&identity, dep.server_fingerprint()).expect("config");
    let connector = tokio_rustls::TlsConnector::from(config);
    let name = vigil_auth::rustls::pki_types::ServerName::try_from("vigil").expect("name");
    let connect = || async {
        let tcp = tokio::net::TcpStream::connect(dep.addr())
            .await
            .expect("connect");
        connector.connect(name.clone(), tcp).await
    };
    let mut first = connect().await.expect("trusted: handshake");
    // The tickets come after the handshake; a round trip reads them.
    assert!(ask(&mut first, b"sys:ping:a {}\n", "a").await.is_some());
    drop(first);
    let accepted = audit_records(&dep, "handshake.accepted").len();
    dep.write_trust(&[]);
    dep.server.wait_logged("trust: fingerprint removed").await;
    // The second handshake offers the ticket; a refused client learns it
    // on its first read (TLS 1.3).
    let refused = match connect().await {
        Err(_) => true,
        Ok(mut tls) => ask(&mut tls, b"sys:ping:b {}\n", "b").await.is_none(),
    };
    assert!(refused, "a revoked key was served");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        audit_records(&dep, "handshake.accepted").len(),
        accepted,
        "the revoked key's handshake was audited as accepted"
    );
    assert!(dep.metric("vigil_handshakes_total{result=\"failed\"}") >= 1);
    dep.write_trust(&[identity.fingerprint()]);
    dep.server.wait_logged("trust: fingerprint added").await;
    dep.assert_serving().await;
}

/// W08: 1,000 connections that send garbage instead of a TLS handshake
/// (and some a stranger's certificate): each is refused, and the audit log
/// grows by a small, bounded amount: the first refusal of each source per
/// window is recorded, the rest counted in a `refusals.summary` record.
#[tokio::test]
async fn w08_refused_handshakes_cost_bounded_audit_space() {
    let mut dep = Deployment::start(&[]).await;
    let before = crate::support::audit_bytes(&dep);
    for i in 0..1_000u32 {
        let mut tcp = tokio::net::TcpStream::connect(dep.addr())
            .await
            .expect("connect");
        // Not TLS at all: refused as soon as it is read.
        let junk = format!("GET /{i} HTTP/1.1\r\nHost: {}\r\n\r\n", "z".repeat(300));
        let _ = tcp.write_all(junk.as_bytes()).await;
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut sink)).await;
    }
    let stranger = GeneratedIdentity::generate("stranger")
        .expect("identity")
        .identity()
        .expect("identity");
    for _ in 0..20 {
        let mut tls = dep.tls(Some(&stranger)).await;
        let _ = tls.write_all(b"sys:ping:a {}\n").await;
        let mut buf = [0u8; 16];
        let _ = tokio::time::timeout(WAIT, tls.read(&mut buf)).await;
    }
    let grown = crate::support::audit_bytes(&dep) - before;
    assert!(
        grown < 32 * 1024,
        "1,020 refused handshakes grew the audit log by {grown} bytes"
    );
    dep.assert_serving().await;
    dep.server.signal(rustix::process::Signal::TERM);
    let _ = dep.server.exited().await;
    let counted: u64 = audit_records(&dep, "refusals.summary")
        .iter()
        .filter_map(|r| r["details"]["total"].as_u64())
        .sum();
    assert!(counted >= 1_020, "the summaries count {counted} refusals");
}

/// Opens `n` TCP connections to the TLS port from `source`, each sending
/// the first bytes of a ClientHello and then nothing; made again (after a
/// short pause) whenever the server closes one, until `stop`.
async fn stalled_handshakes(
    addr: std::net::SocketAddr,
    sources: Vec<std::net::Ipv4Addr>,
    per_source: u32,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut tasks = Vec::new();
    for source in sources {
        for _ in 0..per_source {
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                while !stop.is_cancelled() {
                    let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
                        return;
                    };
                    if socket
                        .bind(std::net::SocketAddr::from((source, 0)))
                        .is_err()
                    {
                        return;
                    }
                    if let Ok(mut tcp) = socket.connect(addr).await {
                        let _ = tcp
                            .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc])
                            .await;
                        let mut buf = [0u8; 64];
                        tokio::select! {
                            () = stop.cancelled() => return,
                            _ = tcp.read(&mut buf) => {}
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }));
        }
    }
    for t in tasks {
        let _ = t.await;
    }
}

/// Connects the trusted client `times` times; how many were served.
/// `times` connections of the trusted client, each tried up to three
/// times as a reconnecting client would: how many got in, and how many of
/// those at the first attempt.
async fn honest_connects(dep: &Deployment, times: usize) -> (usize, usize) {
    let (mut served, mut first) = (0, 0);
    for i in 0..times {
        for attempt in 0..3 {
            let config = dep.client_config();
            let started = std::time::Instant::now();
            match tokio::time::timeout(WAIT, vigil_client::Connection::connect(&config)).await {
                Ok(Ok(conn)) => {
                    served += 1;
                    first += usize::from(attempt == 0);
                    conn.close();
                    break;
                }
                Ok(Err(e)) => eprintln!(
                    "honest connect {i}, attempt {attempt}: {e} after {:?}",
                    started.elapsed()
                ),
                Err(_) => {
                    eprintln!("honest connect {i}, attempt {attempt}: no answer within {WAIT:?}")
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (served, first)
}

/// W09: stalled TLS handshakes, kept up (each made again when closed):
/// (a) 300 from one address, (b) 400 from 200 addresses, against a limit
/// of 100 connections (with a 30 s handshake timeout). A source holds at
/// most its share of handshakes (here 20), and when the slots run out the
/// oldest handshake in progress gives way: the trusted client, connecting
/// again and again from another address, gets in every time within three
/// attempts, as a reconnecting client retries (before: refused at the
/// limit, every attempt). Under the fastest churn a connection lives only
/// slots / arrival rate before it is the oldest, so an honest handshake
/// whose ClientHello the server has not read yet is sometimes shed: about
/// one first attempt in ten here, printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w09_stalled_handshakes_cannot_take_every_slot() {
    let dep = Deployment::start(&[
        "--max-connections",
        "100",
        "--handshake-timeout",
        "30",
        "--max-handshakes-per-source",
        "20",
    ])
    .await;
    for (case, sources, per_source) in [
        (
            "one address",
            vec![std::net::Ipv4Addr::new(127, 0, 0, 9)],
            300,
        ),
        (
            "many addresses",
            (0..200u32)
                .map(|i| std::net::Ipv4Addr::new(127, 2, (i / 250) as u8, (i % 250 + 1) as u8))
                .collect(),
            2,
        ),
    ] {
        let stop = tokio_util::sync::CancellationToken::new();
        let flood = tokio::spawn(stalled_handshakes(
            dep.addr(),
            sources,
            per_source,
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (served, first) = honest_connects(&dep, 10).await;
        stop.cancel();
        let _ = flood.await;
        eprintln!("W09 {case}: served {served} of 10, {first} at the first attempt");
        assert_eq!(
            served, 10,
            "{case}: the trusted client was served {served} times of 10, each tried 3 times"
        );
    }
    assert!(dep.metric("vigil_connections_shed_total{listener=\"tls\"}") > 0);
    dep.assert_serving().await;
}

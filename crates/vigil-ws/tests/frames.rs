//! The adapter and both halves of the upgrade, over an in-memory pipe
//! (TLS is the caller's; here there is none to do).

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use vigil_ws::{UpgradeError, Violation, Violations, WsUrl};

const LIMIT: usize = 1024;

fn url() -> WsUrl {
    "wss://vigil.test:9443/vigil".parse().expect("ok")
}

/// A raw WebSocket client (any path, any subprotocol) against `accept`.
async fn raw(
    path: &str,
    protocol: Option<&str>,
) -> (
    Result<tokio_tungstenite::WebSocketStream<tokio::io::DuplexStream>, WsError>,
    tokio::task::JoinHandle<Result<vigil_ws::FrameStream<tokio::io::DuplexStream>, UpgradeError>>,
) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(vigil_ws::accept(b, LIMIT));
    let mut request = format!("wss://vigil.test{path}")
        .into_client_request()
        .expect("ok");
    if let Some(p) = protocol {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_str(p).expect("ok"),
        );
    }
    let client = tokio_tungstenite::client_async(request, a)
        .await
        .map(|(ws, _)| ws);
    (client, server)
}

#[tokio::test]
async fn frames_cross_as_one_text_message_each() {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(vigil_ws::accept(b, LIMIT));
    let client = vigil_ws::connect(a, &url(), LIMIT).await.expect("ok");
    let server = server.await.expect("ok").expect("ok");

    let (client_read, mut client_write) = tokio::io::split(client);
    // Two frames and a half in one write, the rest later: the half waits.
    client_write
        .write_all(b"sys:ping:1 {}\nsys:ping:2 {}\nsys:pi")
        .await
        .expect("ok");
    client_write.flush().await.expect("ok");
    client_write.write_all(b"ng:3 {}\n").await.expect("ok");
    client_write.flush().await.expect("ok");
    let mut lines = BufReader::new(server).lines();
    for want in ["sys:ping:1 {}", "sys:ping:2 {}", "sys:ping:3 {}"] {
        assert_eq!(lines.next_line().await.expect("ok").as_deref(), Some(want));
    }
    let mut server = lines.into_inner().into_inner();
    server.write_all(b"sys:pong:1 {}\n").await.expect("ok");
    server.flush().await.expect("ok");
    let mut lines = BufReader::new(client_read).lines();
    assert_eq!(
        lines.next_line().await.expect("ok").as_deref(),
        Some("sys:pong:1 {}")
    );
    // Without a flush, as a TLS stream's writes: they arrive.
    server.write_all(b"sys:pong:2 {}\n").await.expect("ok");
    assert_eq!(
        lines.next_line().await.expect("ok").as_deref(),
        Some("sys:pong:2 {}")
    );
    // A close from one side is the end of the other's stream.
    server.shutdown().await.expect("ok");
    assert_eq!(lines.next_line().await.expect("ok"), None);
}

async fn closed_with(message: Message) -> (u16, Violations) {
    let counts = std::sync::Arc::new(Violations::default());
    let (client, server) = raw("/vigil", Some("vigil.v1")).await;
    let mut client = client.expect("ok");
    let server = server
        .await
        .expect("ok")
        .expect("ok")
        .with_violations(counts.clone());
    let reader = tokio::spawn(async move {
        let mut lines = BufReader::new(server).lines();
        lines.next_line().await
    });
    client.send(message).await.expect("ok");
    let error = reader.await.expect("ok").expect_err("refused");
    assert_eq!(error.kind(), std::io::ErrorKind::InvalidData, "{error}");
    let code = loop {
        match client.next().await {
            Some(Ok(Message::Close(Some(frame)))) => break u16::from(frame.code),
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    let counts = std::sync::Arc::try_unwrap(counts).unwrap_or_default();
    (code, counts)
}

#[tokio::test]
async fn what_is_not_a_frame_closes_with_its_code() {
    let (code, counts) = closed_with(Message::Binary(vec![1, 2, 3].into())).await;
    assert_eq!((code, counts.count(Violation::Binary)), (1003, 1));
    let (code, counts) = closed_with(Message::Text("x".repeat(LIMIT + 1).into())).await;
    assert_eq!((code, counts.count(Violation::TooLarge)), (1009, 1));
    let (code, counts) = closed_with(Message::Text("sys:ping:1 {}\nsys:ping:2 {}".into())).await;
    assert_eq!((code, counts.count(Violation::BadText)), (1007, 1));
}

#[tokio::test]
async fn an_upgrade_elsewhere_or_without_the_subprotocol_is_refused() {
    let (client, server) = raw("/other", Some("vigil.v1")).await;
    match client {
        Err(WsError::Http(r)) => assert_eq!(r.status(), 404),
        other => panic!("{other:?}"),
    }
    assert!(matches!(server.await.expect("ok"), Err(UpgradeError::WrongPath(p)) if p == "/other"));

    for offered in [None, Some("vigil.v2"), Some("chat, superchat")] {
        let (client, server) = raw("/vigil", offered).await;
        match client {
            Err(WsError::Http(r)) => assert_eq!(r.status(), 400),
            other => panic!("{other:?}"),
        }
        let refused = server.await.expect("ok").map(|_| ()).expect_err("refused");
        assert_eq!(refused.reason(), "subprotocol", "{refused}");
    }

    // The client half reports the server's answer, body and all.
    let (a, b) = tokio::io::duplex(64 * 1024);
    tokio::spawn(vigil_ws::accept(b, LIMIT));
    let elsewhere: WsUrl = "wss://vigil.test/nope".parse().expect("ok");
    let error = vigil_ws::connect(a, &elsewhere, LIMIT)
        .await
        .map(|_| ())
        .expect_err("refused");
    let text = error.to_string();
    assert!(text.contains("404") && text.contains("/vigil"), "{text}");
}

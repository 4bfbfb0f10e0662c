//! Plain HTTP/1.1 on loopback, written by hand: the tests need requests no
//! well-behaved client sends (raw bytes, a chosen source address, many
//! requests on one keep-alive connection) and answers read as they came.
//! Answers are `(status, body)`, the body as JSON, or as a JSON string
//! when it is not JSON; status 0 when there was no status line.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::wait::WAIT;

/// The bytes of one request with `Connection: close`, a bearer `token` if
/// given, and `body` (with its `Content-Length`, 0 without one).
pub fn request_bytes(
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> Vec<u8> {
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or_default();
    req.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    let mut bytes = req.into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// One request to `addr` (see [`request_bytes`]): status and body.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&[u8]>,
) -> (u16, Value) {
    send_raw(addr, &request_bytes(method, path, token, body))
}

/// Writes `bytes` to `addr` and reads the answer to the end (or until no
/// byte came for [`WAIT`]).
pub fn exchange(addr: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(WAIT)).expect("timeout");
    tcp.write_all(bytes).expect("write");
    let mut raw = Vec::new();
    let _ = tcp.read_to_end(&mut raw);
    raw
}

/// As [`exchange`], the answer parsed: status and body.
pub fn send_raw(addr: SocketAddr, bytes: &[u8]) -> (u16, Value) {
    parse_response(&exchange(addr, bytes))
}

/// As [`request`] (without a token), from the loopback address `source`.
pub async fn request_from(
    source: Ipv4Addr,
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> (u16, Value) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from((source, 0)))
        .expect("bind the source address");
    let mut tcp = socket.connect(addr).await.expect("connect");
    tcp.write_all(&request_bytes(method, path, None, Some(body)))
        .await
        .expect("write");
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut raw)).await;
    parse_response(&raw)
}

/// Status and body of a whole answer.
pub fn parse_response(raw: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let value = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()));
    (status, value)
}

/// Posts each body to `path` on one keep-alive connection to `addr`, one
/// request after another; the status of each answer (0 when the
/// connection ended).
pub fn post_keepalive(addr: SocketAddr, path: &str, bodies: &[Vec<u8>]) -> Vec<u16> {
    let mut tcp = TcpStream::connect(addr).expect("connect");
    tcp.set_read_timeout(Some(WAIT)).expect("timeout");
    tcp.set_nodelay(true).expect("nodelay");
    let mut reader = BufReader::new(tcp.try_clone().expect("clone"));
    let mut statuses = Vec::with_capacity(bodies.len());
    for body in bodies {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        // One write: a head and a body written apart wait on Nagle's
        // algorithm and the peer's delayed ACK.
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        if tcp.write_all(&request).is_err() {
            statuses.push(0);
            continue;
        }
        let mut status = 0;
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            if let Some(rest) = trimmed.strip_prefix("HTTP/1.1 ") {
                status = rest.get(..3).and_then(|s| s.parse().ok()).unwrap_or(0);
            } else if let Some((name, value)) = trimmed.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut rest = vec![0u8; length];
        if reader.read_exact(&mut rest).is_err() {
            status = 0;
        }
        statuses.push(status);
    }
    statuses
}

//! The REST API end to end on an in-memory stream: raw HTTP bytes, or a
//! body for one of the routes, or a command signed by an enrolled key and
//! relayed. Every request is answered (when the stream holds a request)
//! and nothing answers 5xx: bad input is always the client's error.
//!
//! `cargo fuzz run rest --sanitizer none` (or `just fuzz rest`).
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use vigil_auth::{GeneratedIdentity, TrustStore};
use vigil_command::{
    Authorities, AuthorityKey, ReplayGuard, SignedCommand, SigningKey, Timestamp,
};
use vigil_server::{Authority, HttpConfig, HttpServer, Relay, Server, ServerConfig};

const TOKEN: &str = "fuzz-token";

struct Api {
    rt: tokio::runtime::Runtime,
    http: HttpServer,
    operator: SigningKey,
    _server: Server,
}

fn api() -> &'static Api {
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let operator = SigningKey::from_bytes(&[9u8; 32]);
        let (server, http) = rt.block_on(async {
            let identity = GeneratedIdentity::generate("fuzz")
                .expect("identity")
                .identity()
                .expect("identity");
            let addr: SocketAddr = "127.0.0.1:0".parse().expect("addr");
            let mut config = ServerConfig::new(addr, identity, TrustStore::from_fingerprints([]));
            config.authority = Some(Authority {
                key: SigningKey::from_bytes(&[3u8; 32]),
                id: "vigil-server".into(),
            });
            // The REST parsing and checks are fuzzed, not the audit log:
            // without one, the routes that send answer 503, as a server
            // whose audit log fails does.
            config.dangerous().run_without_audit_log();
            let server = Server::bind(config).await.expect("bind");
            let authorities = Authorities::from_keys([AuthorityKey::new(
                Some("wa_fuzz".into()),
                operator.verifying_key(),
                ["RUN", "SHUTDOWN_NOW"],
            )
            .expect("key")])
            .expect("authorities");
            let mut http_config = HttpConfig::new(addr, TOKEN);
            http_config.read_timeout = Duration::from_millis(50);
            http_config.relay = Some(Relay::new(authorities, Arc::new(ReplayGuard::in_memory())));
            let http = HttpServer::bind(http_config, server.handle())
                .await
                .expect("bind");
            (server, http)
        });
        Api {
            rt,
            http,
            operator,
            _server: server,
        }
    })
}

const ROUTES: &[&str] = &[
    "POST /send",
    "POST /send?wait=0.01",
    "POST /v1/commands",
    "POST /emergency/shutdown",
    "GET /emergency/test",
    "GET /v1/clients",
    "GET /metrics",
];

fn request(line: &str, body: &[u8], token: bool) -> Vec<u8> {
    let mut out = format!("{line} HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n").into_bytes();
    if token {
        out.extend_from_slice(format!("Authorization: Bearer {TOKEN}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}

/// A command with the input's fields, signed by the enrolled key and
/// issued now, so that it passes the signature and freshness checks.
fn signed(body: &[u8]) -> Option<Vec<u8>> {
    let command = SignedCommand::from_json(body).ok()?;
    let now = Timestamp::from_system_time(SystemTime::now()).ok()?;
    let mut unsigned = command.body;
    unsigned.wa_id = "wa_fuzz".into();
    unsigned.issued_at = now;
    unsigned.expires_at = None;
    let json = unsigned.sign(&api().operator).ok()?.to_json();
    Some(request("POST /v1/commands", json.as_bytes(), true))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (stream, expect_answer) = match mode % 4 {
        // Raw bytes on the socket.
        0 => (rest.to_vec(), false),
        // A body for a route, with and without the token.
        1 | 2 => {
            let Some((&pick, body)) = rest.split_first() else {
                return;
            };
            let line = ROUTES[usize::from(pick) % ROUTES.len()];
            (request(line, body, mode == 1), true)
        }
        _ => match signed(rest) {
            Some(stream) => (stream, true),
            None => return,
        },
    };
    let api = api();
    let answer = api.rt.block_on(async {
        let (mut client, server_side) = tokio::io::duplex(1 << 20);
        let peer: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let serve = api.http.serve_stream(server_side, peer);
        let talk = async {
            let _ = client.write_all(&stream).await;
            let _ = client.shutdown().await;
            let mut answer = Vec::new();
            let _ = client.read_to_end(&mut answer).await;
            answer
        };
        let (answer, ()) =
            tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(talk, serve) })
                .await
                .expect("the request is answered or dropped in time");
        answer
    });
    if answer.is_empty() {
        assert!(!expect_answer, "no answer to a well-formed request");
        return;
    }
    let head = String::from_utf8_lossy(&answer[..answer.len().min(32)]).into_owned();
    assert!(
        head.starts_with("HTTP/1.1 ") || head.starts_with("HTTP/1.0 "),
        "not an HTTP answer: {head:?}"
    );
    let status: u16 = head[9..12].parse().expect("a status code");
    assert!(
        status < 500,
        "bad input answered {status}: {}",
        String::from_utf8_lossy(&answer)
    );
});

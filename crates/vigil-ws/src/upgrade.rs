//! The upgrade: the server's [`accept`], the client's [`connect`], and the
//! `wss://` address ([`WsUrl`]).

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::{FrameStream, PATH, SUBPROTOCOL};

/// Bytes read from the TLS stream at a time (the WebSocket's read buffer,
/// allocated for every connection, idle or not).
const READ_BUFFER: usize = 8 * 1024;
/// Bytes gathered before they are written to the TLS stream; a flush
/// writes them sooner.
const WRITE_BUFFER: usize = 64 * 1024;

fn config(max_message: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(Some(max_message))
        .max_frame_size(Some(max_message))
}

/// Why an upgrade failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// The request was for another path (answered 404).
    #[error("upgrade refused: path {0:?} is not {PATH}")]
    WrongPath(String),
    /// The request did not offer the subprotocol (answered 400).
    #[error("upgrade refused: Sec-WebSocket-Protocol {offered:?} does not name {SUBPROTOCOL}")]
    Subprotocol {
        /// What the client offered, if anything.
        offered: Option<String>,
    },
    /// The server answered the client's request with this status.
    #[error("the server refused the WebSocket upgrade: HTTP {status}{}", body.as_deref().map(|b| format!(": {b}")).unwrap_or_default())]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The body, if the server sent one.
        body: Option<String>,
    },
    /// Not a WebSocket upgrade, or the handshake broke off.
    #[error("WebSocket handshake: {0}")]
    Handshake(#[source] WsError),
}

impl UpgradeError {
    /// The I/O error the upgrade broke off with (a TLS alert, say), if
    /// that is what happened.
    pub fn into_io(self) -> Result<std::io::Error, UpgradeError> {
        match self {
            UpgradeError::Handshake(WsError::Io(e)) => Ok(e),
            other => Err(other),
        }
    }

    /// A stable name for the reason, for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            UpgradeError::WrongPath(_) => "wrong_path",
            UpgradeError::Subprotocol { .. } => "subprotocol",
            UpgradeError::Refused { .. } => "refused",
            UpgradeError::Handshake(_) => "bad_upgrade",
        }
    }
}

fn refusal(status: StatusCode, body: String) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(body));
    *response.status_mut() = status;
    response
}

/// The server's half: reads the client's upgrade request from `stream`
/// (already TLS), which must ask for [`PATH`] and offer [`SUBPROTOCOL`],
/// answers it, and returns the frame stream. A message past `max_message`
/// bytes closes it with 1009.
// The callback's error is tungstenite's `ErrorResponse`, a whole HTTP
// response: its size is not ours to choose.
#[allow(clippy::result_large_err)]
pub async fn accept<S>(stream: S, max_message: usize) -> Result<FrameStream<S>, UpgradeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let refused: Arc<Mutex<Option<UpgradeError>>> = Arc::default();
    let why = refused.clone();
    let check = move |request: &Request, mut response: Response| {
        let path = request.uri().path();
        let refuse = |status, error: UpgradeError| {
            let body = format!("{error}\n");
            *why.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(error);
            Err(refusal(status, body))
        };
        if path != PATH {
            return refuse(StatusCode::NOT_FOUND, UpgradeError::WrongPath(path.into()));
        }
        let offered = request
            .headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect::<Vec<_>>()
            .join(", ");
        if !offered.split(',').any(|p| p.trim() == SUBPROTOCOL) {
            let offered = (!offered.is_empty()).then_some(offered);
            return refuse(
                StatusCode::BAD_REQUEST,
                UpgradeError::Subprotocol { offered },
            );
        }
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
        Ok(response)
    };
    match tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config(max_message)))
        .await
    {
        Ok(ws) => Ok(FrameStream::new(ws)),
        Err(e) => Err(refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .unwrap_or(UpgradeError::Handshake(e))),
    }
}

/// The client's half: asks for `url`'s path on `stream` (already TLS to
/// the pinned server), offering [`SUBPROTOCOL`], which the server must
/// accept. A message past `max_message` bytes closes it with 1009.
pub async fn connect<S>(
    stream: S,
    url: &WsUrl,
    max_message: usize,
) -> Result<FrameStream<S>, UpgradeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut request = url
        .to_string()
        .into_client_request()
        .map_err(UpgradeError::Handshake)?;
    request.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    match tokio_tungstenite::client_async_with_config(request, stream, Some(config(max_message)))
        .await
    {
        Ok((ws, _)) => Ok(FrameStream::new(ws)),
        Err(WsError::Http(response)) => Err(UpgradeError::Refused {
            status: response.status().as_u16(),
            body: response
                .body()
                .as_deref()
                .map(|b| String::from_utf8_lossy(b).trim().to_owned()),
        }),
        Err(e) => Err(UpgradeError::Handshake(e)),
    }
}

/// A `wss://host[:port][/path]` address (port 443 and path [`PATH`] when
/// left out). Plain `ws://` is refused: frames never travel without TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsUrl {
    host: String,
    port: u16,
    path: String,
}

/// Why a `wss://` address does not parse.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct UrlError(String);

impl WsUrl {
    /// The host, as written (an IPv6 address without its brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The path the upgrade asks for.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `host:port`, as a socket address is written (IPv6 in brackets).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// Whether `address` is a WebSocket address (starts `wss://` or
    /// `ws://`), to be parsed as one.
    pub fn is_websocket(address: &str) -> bool {
        let lower = address.to_ascii_lowercase();
        lower.starts_with("wss://") || lower.starts_with("ws://")
    }
}

impl std::fmt::Display for WsUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "wss://{}{}", self.authority(), self.path)
    }
}

impl std::str::FromStr for WsUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |why: &str| UrlError(format!("bad WebSocket address {s:?}: {why}"));
        let uri: tokio_tungstenite::tungstenite::http::Uri =
            s.parse().map_err(|_| bad("not a URL"))?;
        match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("wss") => {}
            Some("ws") => {
                return Err(bad(
                    "plain ws:// is refused; vigil's WebSocket always runs in pinned TLS (wss://)",
                ));
            }
            _ => return Err(bad("the scheme must be wss://")),
        }
        let authority = uri.authority().ok_or_else(|| bad("no host"))?;
        if authority.as_str().contains('@') {
            return Err(bad("credentials do not belong in the server's address"));
        }
        let host = authority.host().trim_matches(['[', ']']);
        if host.is_empty() {
            return Err(bad("no host"));
        }
        if uri.query().is_some() {
            return Err(bad("a query is not part of vigil's address"));
        }
        let path = match uri.path() {
            "" | "/" => PATH,
            p => p,
        };
        Ok(WsUrl {
            host: host.to_owned(),
            port: authority.port_u16().unwrap_or(443),
            path: path.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_with_their_defaults() {
        let url: WsUrl = "wss://h.example".parse().expect("ok");
        assert_eq!(url.to_string(), "wss://h.example:443/vigil");
        let url: WsUrl = "WSS://[::1]:9443/vigil".parse().expect("ok");
        assert_eq!((url.host(), url.authority()), ("::1", "[::1]:9443".into()));
        for bad in [
            "ws://h/vigil",
            "https://h/vigil",
            "wss://u:p@h/vigil",
            "wss://h/vigil?x=1",
            "wss://",
            "h:1",
        ] {
            assert!(bad.parse::<WsUrl>().is_err(), "{bad}");
        }
        assert!(WsUrl::is_websocket("wss://h"));
        assert!(!WsUrl::is_websocket("h:443"));
    }
}

//! vigil frames over WebSocket.
//!
//! The second transport carries exactly the frames of the first: one frame,
//! `API:TYPE:REF <json>`, is one WebSocket **text** message, without its
//! newline. The WebSocket runs inside the same pinned mutual TLS as the main
//! port (the caller does the TLS; this crate never sees a key), after an
//! HTTP/1.1 upgrade on [`PATH`] that names the protocol version in
//! `Sec-WebSocket-Protocol` ([`SUBPROTOCOL`]).
//!
//! [`FrameStream`] turns the WebSocket back into the byte stream of
//! newline-ended frames that vigil's codec reads and writes, so that a
//! session is the same code over either transport. What the frame grammar
//! cannot carry closes the connection with the close code for it:
//!
//! | the peer sent | close code |
//! |---|---|
//! | a binary message | 1003 (unsupported data) |
//! | a message past the size limit | 1009 (message too big) |
//! | a text message holding a newline, or not UTF-8 | 1007 (invalid payload) |
//!
//! [`accept`] is the server's half of the upgrade, [`connect`] the
//! client's; [`Proxy`] and [`tunnel`] reach a server through an HTTP
//! `CONNECT` proxy, with basic authentication, as networks that let only
//! HTTPS out require.
//!
//! ```
//! use vigil_ws::WsUrl;
//!
//! let url: WsUrl = "wss://vigil.example:443/vigil".parse().unwrap();
//! assert_eq!((url.host(), url.port(), url.path()), ("vigil.example", 443, "/vigil"));
//! assert!("ws://vigil.example/vigil".parse::<WsUrl>().is_err());
//! ```
#![deny(missing_docs)]

mod proxy;
mod stream;
mod upgrade;

pub use proxy::{Proxy, ProxyError, tunnel};
pub use stream::{FrameStream, Violation, Violations};
pub use upgrade::{UpgradeError, UrlError, WsUrl, accept, connect};

/// The one path the server upgrades.
pub const PATH: &str = "/vigil";

/// The subprotocol both sides must name: the frame protocol, version 1.
pub const SUBPROTOCOL: &str = "vigil.v1";

//! Reaching the server: TCP (through an HTTP proxy's tunnel if one is
//! set), the pinned TLS handshake, and for a `wss://` server the WebSocket
//! upgrade inside it.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::{ClientConfig, ClientError};

/// The stream a connection runs on: TLS, or a WebSocket inside TLS.
pub(super) trait Transport:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin
{
}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Transport for T {}

fn server_name(host: &str) -> ServerName<'static> {
    ServerName::try_from(host.trim_matches(['[', ']']).to_owned())
        .unwrap_or_else(|_| ServerName::try_from("vigil").expect("static name is valid"))
}

/// Connects as `config` says; the stream, the address dialled (the
/// proxy's, through one) and the fingerprint of the key the server
/// proved it holds (one of the pins).
pub(super) async fn dial(
    config: &ClientConfig,
    tls: Arc<rustls::ClientConfig>,
) -> Result<(Box<dyn Transport>, SocketAddr, vigil_auth::Fingerprint), ClientError> {
    let websocket = if vigil_ws::WsUrl::is_websocket(&config.server) {
        Some(
            config
                .server
                .parse::<vigil_ws::WsUrl>()
                .map_err(|e| ClientError::Address(e.to_string()))?,
        )
    } else {
        None
    };
    let authority = match &websocket {
        Some(url) => url.authority(),
        None => config.server.clone(),
    };
    let host = match &websocket {
        Some(url) => url.host().to_owned(),
        None => authority
            .rsplit_once(':')
            .map_or(authority.as_str(), |(h, _)| h)
            .to_owned(),
    };
    // Through a proxy, the TCP connection is to the proxy, then a
    // tunnel from it to the server.
    let dial = config
        .proxy
        .as_ref()
        .map_or(authority.as_str(), vigil_ws::Proxy::authority);
    let connect_error = |source| ClientError::Connect {
        server: match &config.proxy {
            Some(proxy) => format!("{authority} through the proxy {proxy}"),
            None => authority.clone(),
        },
        source: Arc::new(source),
    };
    let mut tcp = tokio::time::timeout(config.connect_timeout, TcpStream::connect(dial))
        .await
        .map_err(|_| ClientError::Timeout("TCP connect"))?
        .map_err(connect_error)?;
    let _ = tcp.set_nodelay(true);
    let peer = tcp.peer_addr().map_err(connect_error)?;
    if let Some(proxy) = &config.proxy {
        tokio::time::timeout(
            config.connect_timeout,
            vigil_ws::tunnel(&mut tcp, proxy, &authority),
        )
        .await
        .map_err(|_| ClientError::Timeout("proxy tunnel"))?
        .map_err(|e| ClientError::Proxy(Arc::new(e)))?;
    }
    let connector = TlsConnector::from(tls);
    let stream = tokio::time::timeout(
        config.connect_timeout,
        connector.connect(server_name(&host), tcp),
    )
    .await
    .map_err(|_| ClientError::Timeout("TLS handshake"))?
    .map_err(ClientError::from_io)?;
    // The verifier admitted only a pinned key, so this is one of them.
    let server = vigil_auth::peer_fingerprint(stream.get_ref().1.peer_certificates())
        .unwrap_or(config.server_fingerprint);
    let stream: Box<dyn Transport> = match &websocket {
        None => Box::new(stream),
        Some(url) => {
            let ws = tokio::time::timeout(
                config.connect_timeout,
                vigil_ws::connect(stream, url, config.limits.server_to_client),
            )
            .await
            .map_err(|_| ClientError::Timeout("WebSocket upgrade"))??;
            // Keeps NATs and proxies from dropping an idle connection;
            // only signed heartbeats feed the failsafe.
            Box::new(ws.with_ping_interval(config.ping_interval))
        }
    };

    Ok((stream, peer, server))
}

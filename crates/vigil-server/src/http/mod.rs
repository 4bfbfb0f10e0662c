//! The operator REST API (hyper 1.x, HTTP/1.1) and the CIRIS-compatible
//! emergency routes.
//!
//! Every answer is JSON; every error is `{"detail": "<reason>"}` with a
//! status that says what kind of error it is. Request heads and bodies are
//! bounded in size and in time. All routes but `/health` and the emergency
//! routes need `Authorization: Bearer <token>`, compared in constant time;
//! on the emergency routes the signature is the authentication.
//!
//! This module holds the listener, connection admission and routing;
//! `commands` the command routes (`/send`, `/v1/commands`), `emergency`
//! the CIRIS routes, `status` `/health` and `/metrics`, and `response` how
//! answers and errors are written.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use hyper::header::AUTHORIZATION;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Value, json};
use subtle::ConstantTimeEq as _;
use tokio::net::TcpListener;

use crate::{Relay, ServerError, ServerHandle};

mod commands;
mod emergency;
mod metrics;
mod response;
mod routes;
mod status;

pub(crate) use response::Resp;
use response::{ApiError, error, json_response, now_iso};
use routes::route;

/// Default port of the REST API.
pub const DEFAULT_HTTP_PORT: u16 = 8080;
/// Default largest request body.
pub const DEFAULT_MAX_BODY: usize = 64 * 1024;
/// Default time to receive a request's head, then its body.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap on REST connections at once.
pub const DEFAULT_MAX_HTTP_CONNECTIONS: usize = 1024;
/// Default cap on REST connections from one source waiting for a request.
pub const DEFAULT_HTTP_WAITING_PER_SOURCE: usize = 64;
/// Longest `?wait=` accepted.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// REST API settings.
#[derive(Clone)]
#[non_exhaustive]
pub struct HttpConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// The bearer token operators present.
    pub token: String,
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// Time allowed to send the request head, and then the body.
    pub read_timeout: Duration,
    /// REST connections at once. When they run out, the connection that
    /// has waited longest for (the rest of) a request, or idled longest, is
    /// closed to make room; with every one busy answering, 64 more are
    /// taken for the emergency routes only, then new ones are closed.
    pub max_connections: usize,
    /// Connections from one source address that may wait for a request at
    /// once; past it, that source's oldest gives way.
    pub max_waiting_per_source: usize,
    /// Checks commands posted to `/v1/commands` and `/emergency/shutdown`.
    /// Without it both routes answer 503.
    pub relay: Option<Relay>,
}

impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig")
            .field("listen", &self.listen)
            .field("max_body", &self.max_body)
            .field("read_timeout", &self.read_timeout)
            .field("relay", &self.relay.is_some())
            .finish_non_exhaustive()
    }
}

impl HttpConfig {
    /// Defaults for everything but the address and the token.
    pub fn new(listen: SocketAddr, token: impl Into<String>) -> Self {
        HttpConfig {
            listen,
            token: token.into(),
            max_body: DEFAULT_MAX_BODY,
            read_timeout: DEFAULT_READ_TIMEOUT,
            max_connections: DEFAULT_MAX_HTTP_CONNECTIONS,
            max_waiting_per_source: DEFAULT_HTTP_WAITING_PER_SOURCE,
            relay: None,
        }
    }
}

struct State {
    config: HttpConfig,
    server: ServerHandle,
    started: SystemTime,
    requests: std::sync::atomic::AtomicU64,
    /// REST connections shed to make room.
    shed: std::sync::atomic::AtomicU64,
}

/// The REST API, bound; [`HttpServer::run`] serves until the vigil server
/// shuts down.
pub struct HttpServer {
    listener: TcpListener,
    state: Arc<State>,
}

impl std::fmt::Debug for HttpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpServer")
            .field("listen", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl HttpServer {
    /// Binds the REST API's listener.
    pub async fn bind(config: HttpConfig, server: ServerHandle) -> Result<HttpServer, ServerError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        Ok(HttpServer {
            listener,
            state: Arc::new(State {
                config,
                server,
                started: SystemTime::now(),
                requests: std::sync::atomic::AtomicU64::new(0),
                shed: std::sync::atomic::AtomicU64::new(0),
            }),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    /// Serves until the vigil server shuts down.
    pub async fn run(self) {
        let HttpServer { listener, state } = self;
        tracing::info!(listen = ?listener.local_addr().ok(), "REST API listening");
        let stopped = state.server.stopping();
        tokio::pin!(stopped);
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        // Connections waiting for (the rest of) a request give way, the
        // oldest first, when the slots run out: slow clients cannot hold
        // them (see `admission.rs`).
        let slots = crate::admission::Admission::new(
            state.config.max_connections,
            state.config.max_waiting_per_source,
        );
        let reserve = Arc::new(tokio::sync::Semaphore::new(EMERGENCY_RESERVE));
        let mut last_limit_log: Option<std::time::Instant> = None;
        loop {
            let (tcp, peer) = tokio::select! {
                () = &mut stopped => break,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        tracing::error!(error = %e, "REST API accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            // With every slot working (requests being answered), a few more
            // connections are taken on a short leash (a 2 s head deadline)
            // for the emergency routes only.
            let (slot, mode) = match slots.admit(peer.ip()) {
                Ok(admitted) => {
                    if admitted.evicted > 0 {
                        state.shed.fetch_add(
                            admitted.evicted as u64,
                            std::sync::atomic::Ordering::Relaxed,
                        );
                    }
                    (Slot::Admitted(Arc::new(admitted.ticket)), Mode::Full)
                }
                Err(_) => match reserve.clone().try_acquire_owned() {
                    Ok(p) => (Slot::Reserve { _permit: p }, Mode::EmergencyOnly),
                    Err(_) => {
                        if last_limit_log.is_none_or(|t: std::time::Instant| {
                            t.elapsed() >= Duration::from_secs(1)
                        }) {
                            tracing::warn!(%peer, limit = state.config.max_connections, "REST connection limit reached");
                            last_limit_log = Some(std::time::Instant::now());
                        }
                        drop(tcp);
                        continue;
                    }
                },
            };
            let ticket = match &slot {
                Slot::Admitted(t) => Some(t.clone()),
                Slot::Reserve { .. } => None,
            };
            let conn = graceful.watch(connection(state.clone(), tcp, peer, mode, ticket.clone()));
            tokio::spawn(async move {
                let _slot = slot;
                let shed = async {
                    match &ticket {
                        Some(t) => t.evicted().await,
                        None => std::future::pending().await,
                    }
                };
                tokio::select! {
                    ended = conn => if let Err(e) = ended {
                        tracing::debug!(%peer, error = %e, "REST connection ended");
                    },
                    () = shed => tracing::debug!(%peer, "REST connection shed to make room"),
                }
            });
        }
        drop(listener);
        // Let requests in flight finish (an emergency shutdown's answer is
        // one of them); idle keep-alive connections are closed.
        if tokio::time::timeout(Duration::from_secs(15), graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("some REST requests did not finish in time");
        }
        tracing::info!("REST API stopped");
    }
}

impl HttpServer {
    /// Serves HTTP/1.1 on one stream accepted elsewhere (a Unix socket, a
    /// proxy's stream, an in-memory pipe) until it closes, with the same
    /// routes and limits as [`HttpServer::run`] (the connection cap is the
    /// caller's). `peer` is the address the logs and the emergency audit
    /// records name.
    pub async fn serve_stream<I>(&self, io: I, peer: SocketAddr)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        if let Err(e) = connection(self.state.clone(), io, peer, Mode::Full, None).await {
            tracing::debug!(%peer, error = %e, "REST connection ended");
        }
    }
}

/// REST connections taken past the limit, for the emergency routes only.
const EMERGENCY_RESERVE: usize = 64;
/// Time a connection taken past the limit has to send its request head.
const EMERGENCY_HEAD_TIMEOUT: Duration = Duration::from_secs(2);

/// A REST connection's slot.
enum Slot {
    Admitted(Arc<crate::admission::Ticket>),
    /// Past the limit, for the emergency routes only.
    Reserve {
        _permit: tokio::sync::OwnedSemaphorePermit,
    },
}

/// What a connection may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Full,
    /// Taken past the connection limit: `/emergency/*` and `/health` only.
    EmergencyOnly,
}

/// One HTTP/1.1 connection on `io`; `ticket`, its slot, is marked working
/// while a request is answered.
fn connection<I>(
    state: Arc<State>,
    io: I,
    peer: SocketAddr,
    mode: Mode,
    ticket: Option<Arc<crate::admission::Ticket>>,
) -> hyper::server::conn::http1::Connection<
    TokioIo<I>,
    impl hyper::service::Service<
        Request<Incoming>,
        Response = Resp,
        Error = std::convert::Infallible,
        Future = impl std::future::Future<Output = Result<Resp, std::convert::Infallible>> + Send,
    > + Send,
>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let read_timeout = match mode {
        Mode::Full => state.config.read_timeout,
        Mode::EmergencyOnly => state.config.read_timeout.min(EMERGENCY_HEAD_TIMEOUT),
    };
    let service_state = state.clone();
    let service = hyper::service::service_fn(move |req| {
        let state = service_state.clone();
        let ticket = ticket.clone();
        async move {
            Ok::<_, std::convert::Infallible>(
                handle(&state, req, peer, mode, ticket.as_deref()).await,
            )
        }
    });
    hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // A client that sends its request and then closes its side (as
        // `nc -N` or a script may) still gets the answer, also from a
        // route that takes time.
        .half_close(true)
        .header_read_timeout(read_timeout)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(io), service)
}

/// Reads the whole body within the size and time limits.
async fn read_body(state: &State, req: Request<Incoming>) -> Result<Bytes, Resp> {
    let limit = state.config.max_body;
    // A body announced (Content-Length) past the limit is refused before
    // it is waited for.
    let announced = hyper::body::Body::size_hint(req.body()).lower();
    if announced > limit as u64 {
        return Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body of {announced} bytes is larger than {limit} bytes"),
        ));
    }
    let collect = Limited::new(req.into_body(), limit).collect();
    match tokio::time::timeout(state.config.read_timeout, collect).await {
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "request body not received within {:?}",
                state.config.read_timeout
            ),
        )),
        Ok(Err(e)) => {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Err(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("request body larger than {limit} bytes"),
                ))
            } else {
                Err(error(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the request body: {e}"),
                ))
            }
        }
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

fn authorized(state: &State, req: &Request<Incoming>) -> bool {
    let Some(value) = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(token) = value.strip_prefix("Bearer ") else {
        return false;
    };
    let expected = state.config.token.as_bytes();
    // Constant time for equal lengths; the length itself is not a secret.
    token.len() == expected.len() && bool::from(token.as_bytes().ct_eq(expected))
}

async fn handle(
    state: &State,
    req: Request<Incoming>,
    peer: SocketAddr,
    mode: Mode,
    ticket: Option<&crate::admission::Ticket>,
) -> Resp {
    state
        .requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    if mode == Mode::EmergencyOnly && !(path.starts_with("/emergency/") || path == "/health") {
        let mut resp = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "REST connection limit reached: only the emergency routes are served now; try again",
        );
        resp.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static("1"),
        );
        return resp;
    }
    let resp = route(state, req, &method, &path, &query, peer, ticket).await;
    // Answered: an idle keep-alive connection waits again, and is the first
    // to give way when the slots run out.
    if let Some(ticket) = ticket {
        ticket.waiting();
    }
    tracing::debug!(%peer, %method, %path, status = resp.status().as_u16(), "REST request");
    resp
}

//! The listener: binding, the accept loop with its connection slots and
//! handshake deadline, and the start of each session.

use super::*;

/// The transports a session can come over; the session is the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transport {
    /// Frames as lines on the main port's TLS stream.
    Tls,
    /// Frames as WebSocket text messages, in the same pinned TLS, on the
    /// WebSocket port (`wss://HOST:PORT/vigil`).
    WebSocket,
}

impl Transport {
    /// Its name in the REST API and the metrics: `tls` or `wss`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tls => "tls",
            Transport::WebSocket => "wss",
        }
    }
}

/// A bound vigil server; [`Server::run`] serves until shutdown.
pub struct Server {
    listener: TcpListener,
    /// The WebSocket transport's listener, if it is served.
    wss: Option<TcpListener>,
    acceptor: TlsAcceptor,
    pub(super) shared: Arc<Shared>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listen", &self.listener.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Server {
    /// Builds the TLS configuration and binds the listening socket.
    pub async fn bind(mut config: ServerConfig) -> Result<Server, ServerError> {
        if config.audit.is_none() && !config.unaudited {
            return Err(ServerError::NoAuditLog);
        }
        let tls = vigil_auth::server_config(&config.identity, config.trust.clone())?;
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        // Port 0 asks the OS for a port: record the one we got.
        if let Ok(addr) = listener.local_addr() {
            config.listen = addr;
        }
        let wss = match config.wss_listen {
            Some(addr) => {
                let wss = TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::Bind { addr, source })?;
                config.wss_listen = wss.local_addr().ok().or(Some(addr));
                Some(wss)
            }
            None => None,
        };
        let config_audit = config
            .audit
            .clone()
            .map(|log| Arc::new(crate::audit::Audit::new(log)));
        Ok(Server {
            listener,
            wss,
            acceptor: TlsAcceptor::from(tls),
            shared: Arc::new(Shared {
                config,
                shutdown: CancellationToken::new(),
                stats: ServerStats::default(),
                sessions: Mutex::new(HashMap::new()),
                next_id: AtomicU64::new(1),
                next_delivery: AtomicU64::new(1),
                verify_bodies: Mutex::new(HashMap::new()),
                commands: CommandLog::default(),
                stopped: tokio::sync::watch::channel(false).0,
                audit_slots: Arc::new(Semaphore::new(AUDIT_BACKLOG)),
                audit: config_audit,
                refusals: crate::refusals::Refusals::default(),
                liveness: super::liveness::Liveness::default(),
                latencies: super::Latencies::default(),
                cluster: std::sync::OnceLock::new(),
                routed: Default::default(),
            }),
        })
        .and_then(|server| {
            server.shared.join_cluster()?;
            Ok(server)
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.config.listen
    }

    /// The address of the WebSocket transport, if it is served.
    pub fn wss_addr(&self) -> Option<SocketAddr> {
        self.shared.config.wss_listen
    }

    /// The server's fingerprint, for clients to pin.
    pub fn fingerprint(&self) -> vigil_auth::Fingerprint {
        self.shared.config.identity.fingerprint()
    }

    /// A handle to stop the server and look at it while it runs.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            shared: self.shared.clone(),
        }
    }

    /// Serves until [`ServerHandle::shutdown`], then closes every session
    /// and waits for them (at most the drain timeout).
    pub async fn run(self) -> Result<(), ServerError> {
        let Server {
            listener,
            wss,
            acceptor,
            shared,
        } = self;
        let tracker = TaskTracker::new();
        // Sessions keep their slot; handshakes in progress give way, the
        // oldest first, when the slots run out (see `admission.rs`).
        let slots = crate::admission::Admission::new(
            shared.config.max_connections,
            shared.config.max_handshakes_per_source,
        );
        tracker.spawn(revocation_sweeper(shared.clone()));
        tracker.spawn(refusal_summaries(shared.clone()));
        if let Some(registry) = shared.config.modules.clone() {
            tracker.spawn(module_broadcaster(shared.clone(), registry));
        }
        if let Some(authority) = shared.config.authority.clone() {
            tracker.spawn(heartbeats(shared.clone(), authority));
        } else {
            tracing::warn!(
                "no authority key: no heartbeats are sent, so clients' failsafes will fire"
            );
        }
        tracing::info!(
            listen = %shared.config.listen,
            server_fingerprint = %shared.config.identity.fingerprint(),
            trusted = shared.config.trust.snapshot().len(),
            "vigil server listening"
        );
        if let Some(addr) = shared.config.wss_listen {
            tracing::info!(
                listen = %addr,
                path = vigil_ws::PATH,
                subprotocol = vigil_ws::SUBPROTOCOL,
                "vigil WebSocket listening"
            );
        }
        let mut last_limit_log: Option<Instant> = None;
        let mut last_shed_log: Option<Instant> = None;
        let pulse = &shared.liveness.accept;
        let mut questions = pulse.listen();
        loop {
            let (accepted, transport) = tokio::select! {
                biased;
                () = shared.shutdown.cancelled() => break,
                () = shared.liveness.faults.accept_frozen.cancelled() => {
                    // Stuck as a hung loop would be, until shutdown.
                    shared.shutdown.cancelled().await;
                    break;
                }
                Ok(()) = questions.changed() => {
                    pulse.answer(&mut questions);
                    continue;
                }
                accepted = listener.accept() => (accepted, Transport::Tls),
                accepted = accept_on(wss.as_ref()) => (accepted, Transport::WebSocket),
            };
            let (tcp, peer) = {
                match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors, say: back off instead of spinning.
                        tracing::error!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
            };
            shared.stats.accepted.inc();
            let Ok(admitted) = slots.admit(peer.ip()) else {
                shared.stats.refused_at_limit.inc();
                if last_limit_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!(
                        %peer,
                        limit = shared.config.max_connections,
                        refused = shared.stats.refused_at_limit.get(),
                        "connection limit reached, every connection a session: refusing new connections"
                    );
                    last_limit_log = Some(Instant::now());
                }
                drop(tcp);
                continue;
            };
            if admitted.evicted > 0 {
                for _ in 0..admitted.evicted {
                    shared.stats.shed.inc();
                }
                if last_shed_log.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!(
                        %peer,
                        shed = shared.stats.shed.get(),
                        "connection slots short: the oldest handshakes in progress give way to new ones"
                    );
                    last_shed_log = Some(Instant::now());
                }
            }
            let _ = tcp.set_nodelay(true);
            tracker.spawn(connection(
                shared.clone(),
                acceptor.clone(),
                tcp,
                peer,
                transport,
                admitted.ticket,
            ));
        }
        drop(listener);
        drop(wss);
        tracing::info!(
            sessions = shared.sessions().len(),
            "shutting down: closing sessions"
        );
        shared.cancel_all();
        tracker.close();
        if tokio::time::timeout(shared.config.drain_timeout, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("some sessions did not finish within the drain timeout");
        }
        // The last window's counts are not lost.
        shared.flush_refusals().await;
        shared.leave_cluster().await;
        shared.stopped.send_replace(true);
        tracing::info!("server stopped");
        Ok(())
    }
}

/// Accepts on `listener`, or waits forever if there is none.
async fn accept_on(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn connection(
    shared: Arc<Shared>,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    transport: Transport,
    ticket: crate::admission::Ticket,
) {
    // Boxed: the handshake's state (a whole TLS connection) is freed when
    // it ends instead of sizing the task for the session's lifetime. It is
    // polled by reference, so that a connection that times out is counted
    // (and audited) before it is closed: whoever sees that close sees the
    // count. (A refused handshake's connection is closed by rustls's
    // acceptor as it fails, just before.)
    // The ClientHello is read first: a peer that sent one has shown it
    // means business, and is shed after those that have not
    // (`admission.rs`).
    let config = acceptor.config().clone();
    let mut handshake = Box::pin(tokio::time::timeout(
        shared.config.handshake_timeout,
        async {
            let start = tokio_rustls::LazyConfigAcceptor::new(
                tokio_rustls::rustls::server::Acceptor::default(),
                tcp,
            )
            .await?;
            ticket.progressed();
            start.into_stream(config).await
        },
    ));
    let tls = tokio::select! {
        () = shared.shutdown.cancelled() => return,
        () = ticket.evicted() => {
            shared.stats.handshakes_failed.inc();
            tracing::debug!(%peer, "handshake shed to make room");
            return;
        }
        result = &mut handshake => match result {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                shared.stats.handshakes_failed.inc();
                let error = e.to_string();
                let details = {
                    let (peer, error) = (peer.to_string(), error.clone());
                    move || {
                        let mut map = serde_json::Map::new();
                        map.insert("peer".into(), Value::String(peer));
                        crate::refusals::clip(&mut map, "error", &error, 256);
                        Value::Object(map)
                    }
                };
                if shared.refused(peer.ip(), "handshake", "handshake.refused", details) {
                    tracing::warn!(%peer, error = %error, "handshake refused (more from this source are counted, not logged, until the next summary)");
                } else {
                    tracing::debug!(%peer, error = %error, "handshake refused");
                }
                return;
            }
            Err(_) => {
                shared.stats.handshakes_failed.inc();
                let timeout = shared.config.handshake_timeout;
                let details = move || serde_json::json!({"peer": peer.to_string(), "error": "handshake timed out"});
                if shared.refused(peer.ip(), "handshake", "handshake.refused", details) {
                    tracing::warn!(%peer, ?timeout, "handshake timed out");
                } else {
                    tracing::debug!(%peer, ?timeout, "handshake timed out");
                }
                return;
            }
        },
    };
    drop(handshake);
    let Some(fingerprint) = peer_fingerprint(tls.get_ref().1.peer_certificates()) else {
        // Client authentication is mandatory, so this does not happen.
        shared.stats.handshakes_failed.inc();
        tracing::error!(%peer, "handshake completed without a client certificate");
        return;
    };
    // The verifier asked the trust store during the handshake; ask again,
    // so that nothing is counted or recorded as accepted for a key that
    // is not trusted now (one revoked a moment ago, say).
    if !shared.config.trust.is_trusted(&fingerprint) {
        shared.stats.handshakes_failed.inc();
        let details = move || serde_json::json!({"peer": peer.to_string(), "fingerprint": fingerprint.to_hex(), "error": "key not trusted"});
        if shared.refused(peer.ip(), "handshake", "handshake.refused", details) {
            tracing::warn!(%peer, client = %fingerprint, "handshake refused: the key is not trusted");
        }
        return;
    }
    // Over the WebSocket transport, the upgrade is part of the handshake:
    // the connection may still be shed, and has the same deadline.
    let upgraded = match transport {
        Transport::Tls => Ok(tls),
        Transport::WebSocket => {
            // By reference, as the handshake: a timed-out upgrade is
            // counted before its connection closes.
            let mut upgrade = Box::pin(tokio::time::timeout(
                shared.config.handshake_timeout,
                vigil_ws::accept(tls, shared.config.limits.client_to_server),
            ));
            let result = tokio::select! {
                () = shared.shutdown.cancelled() => return,
                () = ticket.evicted() => {
                    shared.stats.handshakes_failed.inc();
                    tracing::debug!(%peer, "WebSocket upgrade shed to make room");
                    return;
                }
                result = &mut upgrade => result,
            };
            match result {
                Ok(Ok(ws)) => {
                    drop(upgrade);
                    Err(ws.with_violations(shared.stats.websocket_violations.clone()))
                }
                Ok(Err(refused)) => {
                    upgrade_refused(
                        &shared,
                        peer,
                        fingerprint,
                        &refused.to_string(),
                        refused.reason(),
                    );
                    return;
                }
                Err(_) => {
                    upgrade_refused(
                        &shared,
                        peer,
                        fingerprint,
                        "the upgrade timed out",
                        "bad_upgrade",
                    );
                    return;
                }
            }
        }
    };
    // A session is never shed.
    ticket.working();
    shared.stats.handshakes_ok.inc();
    shared.audit_later(
        "handshake.accepted",
        serde_json::json!({"peer": peer.to_string(), "fingerprint": fingerprint.to_hex()}),
    );
    let info = SessionInfo {
        id: shared.next_id.fetch_add(1, Ordering::Relaxed),
        fingerprint,
        peer,
        connected_at: SystemTime::now(),
        place: None,
        clock_skew_ms: None,
        nonce_heartbeats: false,
        transport,
    };
    match upgraded {
        Ok(tls) => session::run(shared, tls, info).await,
        Err(ws) => {
            shared.stats.websocket_sessions.inc();
            session::run(shared, ws, info).await
        }
    }
    drop(ticket);
}

/// Counts, logs and audits an upgrade refused to a client whose key is
/// trusted (it is misconfigured, or not a vigil client).
fn upgrade_refused(
    shared: &Shared,
    peer: SocketAddr,
    fingerprint: Fingerprint,
    error: &str,
    reason: &'static str,
) {
    shared.stats.handshakes_failed.inc();
    match reason {
        "wrong_path" => shared.stats.websocket_wrong_path.inc(),
        "subprotocol" => shared.stats.websocket_subprotocol.inc(),
        _ => shared.stats.websocket_bad_upgrade.inc(),
    }
    let error = error.to_owned();
    let logged = error.clone();
    let details = move || {
        let mut map = serde_json::Map::new();
        map.insert("peer".into(), Value::String(peer.to_string()));
        map.insert("fingerprint".into(), Value::String(fingerprint.to_hex()));
        map.insert("reason".into(), Value::String(reason.into()));
        crate::refusals::clip(&mut map, "error", &error, 256);
        Value::Object(map)
    };
    if shared.refused(peer.ip(), "handshake", "websocket.refused", details) {
        tracing::warn!(%peer, client = %fingerprint, reason, error = %logged, "WebSocket upgrade refused");
    } else {
        tracing::debug!(%peer, client = %fingerprint, reason, error = %logged, "WebSocket upgrade refused");
    }
}

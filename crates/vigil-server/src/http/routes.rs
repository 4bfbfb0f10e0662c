//! Which handler answers a request: the routes, resolved once from the
//! method and the path, and the small read-only ones.

use super::*;
use commands::{relay, send};
use metrics::{metrics, wants_openmetrics};
use status::health;

/// The routes, resolved once from the method and the path.
pub(super) enum Route<'a> {
    EmergencyShutdown,
    EmergencyTest,
    Health,
    Send,
    Relay,
    Clients,
    Modules,
    Metrics,
    Command(&'a str),
}

impl<'a> Route<'a> {
    /// The route for `path`, or the error: 404 for an unknown path, 405 for
    /// a known path with another method.
    pub(super) fn resolve(method: &Method, path: &'a str) -> Result<(Route<'a>, bool), ApiError> {
        // (route, the method it takes, whether it needs the bearer token)
        let (route, wants, token) = match path {
            "/emergency/shutdown" => (Route::EmergencyShutdown, Method::POST, false),
            "/emergency/test" => (Route::EmergencyTest, Method::GET, false),
            "/health" => (Route::Health, Method::GET, false),
            "/send" => (Route::Send, Method::POST, true),
            "/v1/commands" => (Route::Relay, Method::POST, true),
            "/v1/clients" => (Route::Clients, Method::GET, true),
            "/v1/modules" => (Route::Modules, Method::GET, true),
            "/metrics" => (Route::Metrics, Method::GET, true),
            p => match p.strip_prefix("/v1/commands/") {
                Some(id) => (Route::Command(id), Method::GET, true),
                None => {
                    return Err(ApiError::new(
                        StatusCode::NOT_FOUND,
                        format!("no route {path}"),
                    ));
                }
            },
        };
        if *method != wants {
            let mut e = ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed on {path} (it takes {wants})"),
            );
            e.2 = Some(wants);
            return Err(e);
        }
        Ok((route, token))
    }
}

pub(super) async fn route(
    state: &State,
    req: Request<Incoming>,
    method: &Method,
    path: &str,
    query: &str,
    peer: SocketAddr,
    ticket: Option<&crate::admission::Ticket>,
) -> Resp {
    let (route, needs_token) = match Route::resolve(method, path) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    // The emergency routes need no token: the signature is the authentication.
    if needs_token && !authorized(state, &req) {
        let mut resp = error(
            StatusCode::UNAUTHORIZED,
            "missing or wrong bearer token (Authorization: Bearer <token>)",
        );
        resp.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer"),
        );
        return resp;
    }
    let openmetrics = wants_openmetrics(&req);
    let takes_body = matches!(route, Route::EmergencyShutdown | Route::Send | Route::Relay);
    let body = if takes_body {
        match read_body(state, req).await {
            Ok(body) => body,
            Err(resp) => return resp,
        }
    } else {
        Bytes::new()
    };
    // The whole request is here: from now on the connection works, and is
    // not shed to make room for another.
    if let Some(ticket) = ticket {
        ticket.working();
    }
    match route {
        Route::EmergencyShutdown => {
            emergency::shutdown(&state.server, state.config.relay.as_ref(), &body, peer.ip()).await
        }
        Route::EmergencyTest => json_response(
            StatusCode::OK,
            &json!({
                "status": "ok",
                "message": "Emergency endpoint accessible",
                "crypto_available": true,
                "timestamp": now_iso(),
            }),
        ),
        Route::Health => health(state),
        Route::Send => {
            let started = std::time::Instant::now();
            let resp = send(state, &body, query).await;
            state
                .server
                .latencies()
                .send
                .observe(started.elapsed().as_secs_f64());
            resp
        }
        Route::Relay => relay(state, &body, query).await,
        Route::Clients => clients(state),
        Route::Modules => modules(state),
        Route::Metrics => metrics(state, openmetrics),
        Route::Command(raw_id) => {
            let id = percent_encoding::percent_decode_str(raw_id).decode_utf8_lossy();
            match state.server.command(&id) {
                Some(record) => json_response(
                    StatusCode::OK,
                    &serde_json::to_value(record).unwrap_or(Value::Null),
                ),
                None => error(StatusCode::NOT_FOUND, format!("no recent command {id:?}")),
            }
        }
    }
}

fn clients(state: &State) -> Resp {
    let me = state.server.fingerprint().to_hex();
    let mut list: Vec<Value> = state
        .server
        .sessions()
        .iter()
        .map(|s| {
            json!({
                "server_fingerprint": me,
                "server_agent_id": state.server.agent_id(),
                "client_id": s.fingerprint.to_hex(),
                "agent_id": s.place.as_ref().and_then(|p| p.agent_id.clone()),
                "tree_path": s.place.as_ref().map(|p| p.tree_path.clone()),
                "session": s.id,
                "peer": s.peer.to_string(),
                "connected_at": vigil_command::Timestamp::from_system_time(s.connected_at).map(|t| t.isoformat()).unwrap_or_default(),
                "heartbeat": if s.nonce_heartbeats { "nonce" } else { "clock" },
                "transport": s.transport.as_str(),
                "clock_skew_ms": s.clock_skew_ms,
            })
        })
        .collect();
    // The rest of the fleet, as the cluster's presence says it.
    list.extend(state.server.remote_clients().into_iter().map(|r| {
        let p = r.presence;
        json!({
            "server_fingerprint": p.server.to_hex(),
            "server_agent_id": r.server_agent_id,
            "client_id": r.client.to_hex(),
            "agent_id": p.agent_id,
            "tree_path": p.tree_path,
            "session": p.session,
            "peer": p.peer,
            "connected_at": p.connected_at,
            "heartbeat": Value::Null,
            "transport": p.transport,
            "clock_skew_ms": Value::Null,
        })
    }));
    json_response(StatusCode::OK, &json!({ "clients": list }))
}

fn modules(state: &State) -> Resp {
    let health: std::collections::BTreeMap<String, vigil_modules::HostHealth> =
        state.server.module_health().into_iter().collect();
    let list: Vec<Value> = state
        .server
        .modules()
        .unwrap_or_default()
        .iter()
        .map(|m| {
            let host = health.get(&m.name).map(|h| {
                json!({
                    "state": h.state.as_str(),
                    "pid": h.pid,
                    "crashes": h.crashes,
                    "timeouts": h.timeouts,
                    "restarts": h.restarts,
                    "recent_failures": h.recent_failures,
                    "pending_calls": h.pending,
                    "confinement": h.confinement,
                })
            });
            let manifest = m.manifest.as_ref().map(|signed| {
                let body = signed.manifest();
                json!({
                    "version": body.version,
                    "key_id": signed.key_id(),
                    "not_before": body.not_before.isoformat(),
                    "expires": body.expires.isoformat(),
                })
            });
            json!({
                "mod": m.name, "sum": m.sum, "size": m.size, "desc": m.description,
                "manifest": manifest, "host": host,
            })
        })
        .collect();
    json_response(StatusCode::OK, &json!({ "modules": list }))
}

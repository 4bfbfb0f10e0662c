//! What the server says about itself: `/health` and `/metrics`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::CONTENT_TYPE;
use hyper::{Response, StatusCode};
use serde_json::json;

use super::State;
use super::response::{Resp, json_response};

/// Why the server is degraded, if it is: the audit log cannot record (so
/// no command is sent), or it has less than its reserve left for an
/// emergency shutdown.
fn audit_status(health: &crate::audit::AuditHealth) -> Option<&'static str> {
    if let Some(p) = &health.problem {
        return Some(p.reason);
    }
    if health.reserve_bytes < health.reserve_wanted {
        return Some("reserve_spent");
    }
    if health
        .free_bytes
        .is_some_and(|free| free < health.reserve_wanted.max(1 << 20))
    {
        return Some("low_space");
    }
    None
}

pub(super) fn health(state: &State) -> Resp {
    let uptime = state.started.elapsed().map(|d| d.as_secs()).unwrap_or(0);
    let audit = state.server.audit_health();
    let degraded = audit.as_ref().and_then(audit_status);
    let audit_json = audit.as_ref().map(|a| {
        json!({
            "writable": a.problem.is_none(),
            "problem": degraded,
            "detail": a.problem.as_ref().map(|p| p.detail.clone()),
            "since": a.problem.as_ref().and_then(|p| vigil_command::Timestamp::from_system_time(p.since).ok()).map(|t| t.isoformat()),
            "reserve_bytes": a.reserve_bytes,
            "free_bytes": a.free_bytes,
            "sealed_segments": a.sealed_segments,
        })
    });
    // 200 either way: a degraded server still holds its clients, sends
    // heartbeats and obeys a signed shutdown; restarting it would not
    // free the disk.
    json_response(
        StatusCode::OK,
        &json!({
            "status": if degraded.is_some() { "degraded" } else { "ok" },
            "clients": state.server.sessions().len(),
            "uptime_seconds": uptime,
            "server_fingerprint": state.server.fingerprint().to_hex(),
            "agent_id": state.server.agent_id(),
            "audit": audit_json,
        }),
    )
}

pub(super) fn metrics(state: &State) -> Resp {
    let s = state.server.stats();
    let sessions = state.server.sessions();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, u64)]| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (labels, value) in samples {
            if labels.is_empty() {
                out.push_str(&format!("{name} {value}\n"));
            } else {
                out.push_str(&format!("{name}{{{labels}}} {value}\n"));
            }
        }
    };
    metric(
        "vigil_connections",
        "gauge",
        "Clients connected now.",
        &[("", sessions.len() as u64)],
    );
    metric(
        "vigil_clients_clock_skew_max_milliseconds",
        "gauge",
        "Largest clock offset from this server that a connected client reported (absolute, milliseconds).",
        &[(
            "",
            sessions
                .iter()
                .filter_map(|c| c.clock_skew_ms)
                .map(i64::unsigned_abs)
                .max()
                .unwrap_or(0),
        )],
    );
    metric(
        "vigil_clients_nonce_heartbeats",
        "gauge",
        "Connected clients whose heartbeats are fresh by nonce (vigil-heartbeat-v2).",
        &[(
            "",
            sessions.iter().filter(|c| c.nonce_heartbeats).count() as u64,
        )],
    );
    metric(
        "vigil_clients_websocket",
        "gauge",
        "Connected clients whose session came over the WebSocket transport.",
        &[(
            "",
            sessions
                .iter()
                .filter(|c| c.transport == crate::Transport::WebSocket)
                .count() as u64,
        )],
    );
    {
        use vigil_ws::Violation;
        let v = &s.websocket_violations;
        metric(
            "vigil_websocket_sessions_total",
            "counter",
            "WebSocket upgrades by result: accepted (a session), or refused for another path (404), no vigil.v1 subprotocol (400), or not an upgrade.",
            &[
                ("result=\"accepted\"", s.websocket_sessions.get()),
                ("result=\"wrong_path\"", s.websocket_wrong_path.get()),
                ("result=\"subprotocol\"", s.websocket_subprotocol.get()),
                ("result=\"bad_upgrade\"", s.websocket_bad_upgrade.get()),
            ],
        );
        metric(
            "vigil_websocket_closed_total",
            "counter",
            "WebSocket sessions closed for what is not a frame: a binary message (1003), one past the size limit (1009), a newline or bad UTF-8 in a message (1007).",
            &[
                ("violation=\"binary\"", v.count(Violation::Binary)),
                ("violation=\"too_large\"", v.count(Violation::TooLarge)),
                ("violation=\"bad_text\"", v.count(Violation::BadText)),
            ],
        );
    }
    metric(
        "vigil_connections_accepted_total",
        "counter",
        "TCP connections accepted.",
        &[("", s.accepted.get())],
    );
    metric(
        "vigil_connections_refused_at_limit_total",
        "counter",
        "Connections refused at the connection limit.",
        &[("", s.refused_at_limit.get())],
    );
    metric(
        "vigil_handshakes_total",
        "counter",
        "TLS handshakes by result.",
        &[
            ("result=\"ok\"", s.handshakes_ok.get()),
            ("result=\"failed\"", s.handshakes_failed.get()),
        ],
    );
    metric(
        "vigil_commands_total",
        "counter",
        "Commands by outcome: sent to a session (or not queued, its queue full), then acknowledged done, failed or refused.",
        &[
            ("outcome=\"sent\"", s.commands_sent.get()),
            ("outcome=\"queue_full\"", s.commands_queue_full.get()),
            ("outcome=\"done\"", s.acks_done.get()),
            ("outcome=\"failed\"", s.acks_failed.get()),
            ("outcome=\"refused\"", s.acks_refused.get()),
        ],
    );
    metric(
        "vigil_module_events_total",
        "counter",
        "Module registry events by kind.",
        &[
            ("event=\"loaded\"", s.module_loaded.get()),
            ("event=\"reloaded\"", s.module_reloaded.get()),
            ("event=\"unloaded\"", s.module_unloaded.get()),
            ("event=\"rejected\"", s.module_rejected.get()),
        ],
    );
    fn borrow(v: &[(String, u64)]) -> Vec<(&str, u64)> {
        v.iter().map(|(l, n)| (l.as_str(), *n)).collect()
    }
    let hosts = state.server.module_health();
    let label = |name: &str| {
        format!(
            "module=\"{}\"",
            name.replace('\\', "\\\\").replace('"', "\\\"")
        )
    };
    let per_module = |f: &dyn Fn(&vigil_modules::HostHealth) -> u64| -> Vec<(String, u64)> {
        hosts.iter().map(|(n, h)| (label(n), f(h))).collect()
    };
    let crashes = per_module(&|h| h.crashes);
    let timeouts = per_module(&|h| h.timeouts);
    let restarts = per_module(&|h| h.restarts);
    let failing = per_module(&|h| u64::from(h.state == vigil_modules::HostState::Failing));
    metric(
        "vigil_module_host_crashes_total",
        "counter",
        "Times a module's host process died during a call or at its start (signal, exit, memory limit), by module.",
        &borrow(&crashes),
    );
    metric(
        "vigil_module_host_timeouts_total",
        "counter",
        "Module calls that ran past their timeout, each of which killed its host, by module.",
        &borrow(&timeouts),
    );
    metric(
        "vigil_module_host_restarts_total",
        "counter",
        "Times a module's host process was started again, by module.",
        &borrow(&restarts),
    );
    metric(
        "vigil_module_failing",
        "gauge",
        "1 for a module whose host failed 3 or more times within a minute.",
        &borrow(&failing),
    );
    metric(
        "vigil_failsafe_reports_total",
        "counter",
        "Failsafe transitions reported by clients.",
        &[("", s.failsafe_reports.get())],
    );
    metric(
        "vigil_audit_dropped_total",
        "counter",
        "Audit records dropped because the backlog was full.",
        &[("", s.audit_dropped.get())],
    );
    metric(
        "vigil_refusals_total",
        "counter",
        "Unauthenticated traffic refused: TLS handshakes and emergency shutdown attempts (the first from each source per window is audited one by one, the rest in refusals.summary records).",
        &[
            ("kind=\"handshake\"", s.refused_handshakes.get()),
            ("kind=\"emergency\"", s.refused_emergency.get()),
        ],
    );
    metric(
        "vigil_refusals_recorded_total",
        "counter",
        "Refusals written to the audit log one by one.",
        &[("", s.refusals_recorded.get())],
    );
    if let Some(a) = state.server.audit_health() {
        metric(
            "vigil_audit_writable",
            "gauge",
            "1 when the audit log records (so commands are sent), 0 when its last write failed.",
            &[("", u64::from(a.problem.is_none()))],
        );
        let reasons = ["disk_full", "file_size_limit", "read_only", "io_error"];
        let failing: Vec<(String, u64)> = reasons
            .iter()
            .map(|r| {
                (
                    format!("reason=\"{r}\""),
                    u64::from(a.problem.as_ref().is_some_and(|p| p.reason == *r)),
                )
            })
            .collect();
        let failing: Vec<(&str, u64)> = failing.iter().map(|(l, v)| (l.as_str(), *v)).collect();
        metric(
            "vigil_audit_failing",
            "gauge",
            "1 for the reason the audit log cannot record now.",
            &failing,
        );
        metric(
            "vigil_audit_reserve_bytes",
            "gauge",
            "Bytes the audit log holds in reserve for an emergency shutdown.",
            &[("", a.reserve_bytes)],
        );
        if let Some(free) = a.free_bytes {
            metric(
                "vigil_audit_disk_free_bytes",
                "gauge",
                "Free bytes on the audit log's file system.",
                &[("", free)],
            );
        }
        metric(
            "vigil_audit_sealed_segments",
            "gauge",
            "Sealed audit log segments kept.",
            &[("", a.sealed_segments)],
        );
    }
    metric(
        "vigil_heartbeats_total",
        "counter",
        "Signed heartbeats sent.",
        &[("", s.heartbeats.get())],
    );
    metric(
        "vigil_bad_frames_total",
        "counter",
        "Frames answered with an error.",
        &[("", s.bad_frames.get())],
    );
    metric(
        "vigil_slow_consumers_total",
        "counter",
        "Sessions closed because the client did not read.",
        &[("", s.slow_consumers.get())],
    );
    metric(
        "vigil_connections_shed_total",
        "counter",
        "Connections closed to make room for new ones: TLS handshakes in progress, REST connections waiting for a request.",
        &[
            ("listener=\"tls\"", s.shed.get()),
            (
                "listener=\"rest\"",
                state.shed.load(std::sync::atomic::Ordering::Relaxed),
            ),
        ],
    );
    metric(
        "vigil_http_requests_total",
        "counter",
        "REST requests received.",
        &[(
            "",
            state.requests.load(std::sync::atomic::Ordering::Relaxed),
        )],
    );
    let mut resp = Response::new(Full::new(Bytes::from(out)));
    resp.headers_mut().insert(
        CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}

//! What the server says about its health: `/health` (`/metrics` is
//! `metrics.rs`).

use hyper::StatusCode;
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
    let cluster = state.server.cluster_status();
    let cluster_down = cluster
        .as_ref()
        .is_some_and(|c| c.state != vigil_cluster::LinkState::Ready);
    let cluster_json = cluster.map(|c| {
        json!({
            "state": c.state.as_str(),
            "since": vigil_command::Timestamp::from_system_time(c.since).ok().map(|t| t.isoformat()),
            "problem": c.problem,
            "servers": c.servers,
            "remote_clients": c.remote_clients,
        })
    });
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
    // free the disk, nor bring NATS back.
    json_response(
        StatusCode::OK,
        &json!({
            "status": if degraded.is_some() || cluster_down { "degraded" } else { "ok" },
            "clients": state.server.session_count(),
            "uptime_seconds": uptime,
            "server_fingerprint": state.server.fingerprint().to_hex(),
            "agent_id": state.server.agent_id(),
            "audit": audit_json,
            "cluster": cluster_json,
        }),
    )
}

//! `POST /emergency/shutdown`: the CIRIS emergency-shutdown endpoint.
//!
//! Request and response as in the CIRIS document. Checks, in order, with
//! CIRIS's status codes: a malformed body is 422 (a timestamp without an
//! offset 400); a type other than `SHUTDOWN_NOW` 400; outside the time
//! window (or expired) 403 "Command timestamp outside acceptable window"; a
//! bad signature 403 "Invalid signature" (checked before the key); a key
//! not enrolled for `SHUTDOWN_NOW` 403 "Unauthorized public key". Beyond
//! CIRIS: a replayed `command_id` is 409, and an attempt that cannot be
//! audited is 503 (nothing happens).
//!
//! Then, by `target_agent_id` and `target_tree_path` (see `route.rs`):
//! this server's own id shuts down the server only; a connected client's
//! id relays the command to that client (which verifies it again) and the
//! server stays up; a subtree relays it to the clients in it, and shuts
//! the server down only if the server's own tree path is in it; no target
//! relays it to every client and then shuts the server down. The server
//! appends its id to `relay_chain` when it relays (that field is not
//! signed).

use crate::{DeliveryReport, Outcome};

use std::net::IpAddr;
use std::time::Duration;

use hyper::StatusCode;
use serde_json::{Value, json};
use vigil_command::{Refusal, SignedCommand};

use crate::ServerHandle;

use super::response::Resp;

/// How long to wait for clients to acknowledge a relayed shutdown.
const ACK_WAIT: Duration = Duration::from_secs(5);
/// How long to wait for the server's sessions to close.
const STOP_WAIT: Duration = Duration::from_secs(10);

use super::response::{error as detail, json_response, now_iso, server_error};

/// The CIRIS status and detail for a refusal.
pub(crate) fn refusal_response(refusal: &Refusal) -> Resp {
    let (status, text) = match refusal {
        Refusal::Malformed { .. } => (StatusCode::UNPROCESSABLE_ENTITY, refusal.message()),
        Refusal::UnsupportedCommandType { .. } => (StatusCode::BAD_REQUEST, refusal.message()),
        Refusal::OutsideWindow { .. } | Refusal::Expired => (
            StatusCode::FORBIDDEN,
            "Command timestamp outside acceptable window".to_owned(),
        ),
        Refusal::InvalidSignature | Refusal::WeakKey => {
            (StatusCode::FORBIDDEN, "Invalid signature".to_owned())
        }
        Refusal::UnauthorizedKey
        | Refusal::CommandTypeNotAllowed { .. }
        | Refusal::WaIdMismatch { .. } => {
            (StatusCode::FORBIDDEN, "Unauthorized public key".to_owned())
        }
        Refusal::Replayed { .. } => (StatusCode::CONFLICT, refusal.message()),
        Refusal::WrongTarget { .. } => (StatusCode::FORBIDDEN, refusal.message()),
        Refusal::ReplayStoreUnavailable { .. } => {
            (StatusCode::SERVICE_UNAVAILABLE, refusal.message())
        }
        _ => (StatusCode::FORBIDDEN, refusal.message()),
    };
    detail(status, text)
}

/// An attempt's audit details, with every field the caller chose cut to a
/// bounded length (and its real length noted): before verification they
/// are the attacker's.
fn attempt_details(outcome: &str, cmd: Option<&SignedCommand>, extra: Option<&str>) -> Value {
    use crate::refusals::clip;
    let mut map = serde_json::Map::new();
    map.insert("outcome".into(), Value::String(outcome.to_owned()));
    if let Some(c) = cmd {
        clip(&mut map, "command_id", &c.body.command_id, 128);
        clip(&mut map, "wa_id", &c.body.wa_id, 128);
        clip(&mut map, "wa_public_key", &c.wa_public_key, 64);
        if let Some(target) = &c.body.target_agent_id {
            clip(&mut map, "target_agent_id", target, 128);
        }
        if let Some(path) = &c.body.target_tree_path {
            let text = serde_json::to_string(path).unwrap_or_default();
            clip(&mut map, "target_tree_path", &text, 256);
        }
        clip(&mut map, "reason", &c.body.reason, 256);
    }
    if let Some(extra) = extra {
        clip(&mut map, "detail", extra, 256);
    }
    Value::Object(map)
}

/// Records an authorized attempt durably, using the audit log's reserve
/// if the disk is full; `Err` (a 503) if it cannot be recorded.
async fn audit_verified(
    server: &ServerHandle,
    outcome: &str,
    cmd: &SignedCommand,
) -> Result<(), Resp> {
    server
        .audit_essential(
            "emergency.attempt",
            attempt_details(outcome, Some(cmd), None),
        )
        .await
        .map_err(|e| detail(StatusCode::SERVICE_UNAVAILABLE, e))
}

/// Counts a refused attempt from `peer`; the first from each source per
/// window is also recorded (cut) and logged, the rest summed up (see
/// `refusals.rs`). Refusals do not wait for the disk.
fn note_refused(
    server: &ServerHandle,
    peer: IpAddr,
    outcome: &str,
    cmd: Option<&SignedCommand>,
    extra: &str,
) {
    let details = attempt_details(outcome, cmd, Some(extra));
    let recorded = details.clone();
    let logged = server.refused(peer, "emergency", "emergency.attempt", move || recorded);
    if logged {
        tracing::error!(%peer, outcome, attempt = %details, "EMERGENCY SHUTDOWN refused (more refusals from this source are counted, not logged, until the next summary)");
    } else {
        tracing::debug!(%peer, outcome, "EMERGENCY SHUTDOWN refused");
    }
}

/// Counts, perhaps records, and answers a refusal.
fn refuse(server: &ServerHandle, peer: IpAddr, command: &SignedCommand, refusal: &Refusal) -> Resp {
    let extra = format!("{}: {}", refusal.code(), refusal.message());
    note_refused(server, peer, "refused", Some(command), &extra);
    refusal_response(refusal)
}

/// Handles one emergency shutdown request from `peer`.
pub(crate) async fn shutdown(
    server: &ServerHandle,
    relay: Option<&super::Relay>,
    body: &[u8],
    peer: IpAddr,
) -> Resp {
    let received = now_iso();
    let command = match SignedCommand::from_json(body) {
        Ok(c) => c,
        Err(e) => {
            note_refused(server, peer, "malformed", None, &e.to_string());
            let status = if e.code() == "timestamp_without_offset" {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            return detail(status, e);
        }
    };
    if command.body.command_type != "SHUTDOWN_NOW" {
        note_refused(server, peer, "refused", Some(&command), "not SHUTDOWN_NOW");
        return detail(
            StatusCode::BAD_REQUEST,
            format!(
                "Only SHUTDOWN_NOW commands are accepted here, not {:?}",
                command.body.command_type
            ),
        );
    }
    let Some(relay) = relay else {
        note_refused(
            server,
            peer,
            "refused",
            Some(&command),
            "no authorities configured",
        );
        return detail(
            StatusCode::SERVICE_UNAVAILABLE,
            "this server has no emergency authorities (start it with --authorities)",
        );
    };
    let verified = match relay.verify(&command) {
        Ok(v) => v,
        Err(refusal) => return refuse(server, peer, &command, &refusal),
    };
    tracing::error!(
        %peer, command_id = %command.body.command_id, wa_id = ?command.body.wa_id,
        target = ?command.body.target_agent_id, tree = ?command.body.target_tree_path, reason = ?command.body.reason,
        "EMERGENCY SHUTDOWN: a verified SHUTDOWN_NOW"
    );
    // Where does it go? (`target_agent_id`, `target_tree_path`)
    let own = server.agent_id().to_owned();
    let resolved = match crate::route::resolve(
        server,
        command.body.target_agent_id.as_deref(),
        command.body.target_tree_path.as_deref(),
    ) {
        Ok(r) => r,
        Err(unresolved) => {
            // Verified, so recorded on its own, but it changes nothing.
            let why = unresolved.why().to_owned();
            let _ = server
                .audit_essential(
                    "emergency.attempt",
                    attempt_details("unknown_target", Some(&command), Some(&why)),
                )
                .await;
            return detail(unresolved.status(), why);
        }
    };
    // What the clients get: the command with this server's id appended to
    // its (unsigned) relay chain. A copy they would refuse (a chain
    // already at their limit) is refused here, before its id is spent.
    let mut relayed = command.clone();
    relayed.body.relay_chain.push(own.clone());
    let raw = relayed.to_json();
    if let Err(e) = SignedCommand::from_json(raw.as_bytes()) {
        let refusal = Refusal::Malformed {
            detail: format!("cannot relay it: once this server's id is added, {e}"),
        };
        return refuse(server, peer, &command, &refusal);
    }
    // Recorded before its id is spent: a command that cannot be recorded
    // (503) can be sent again once the audit log is writable. The audit
    // log keeps a reserve for it: a full disk does not stop it.
    if let Err(resp) = audit_verified(server, "verified", &command).await {
        return resp;
    }
    let initiated = now_iso();
    let mut services_stopped: Vec<String> = Vec::new();
    let final_message_sent;
    if let Some(target) = resolved.clients.clone() {
        // The id is spent once the relayed command is recorded, just
        // before it is sent.
        let relayed = server
            .relay_checked(
                &relayed,
                raw.as_bytes(),
                &target,
                "emergency",
                relay.record(&verified),
            )
            .await;
        match relayed {
            Ok(delivery) => {
                let report = delivery.wait(ACK_WAIT).await;
                final_message_sent = all_done(&report);
                let acked = report
                    .outcomes
                    .iter()
                    .filter(|o| matches!(&o.outcome, crate::Outcome::Acked(a) if a.status == vigil_proto::AckStatus::Done))
                    .count();
                services_stopped.push(format!("agents:{acked}/{}", report.outcomes.len()));
            }
            Err(crate::server::Relayed::Refused(refusal)) => {
                return refuse(server, peer, &command, &refusal);
            }
            Err(crate::server::Relayed::Server(e)) => {
                return server_error(e);
            }
        }
    } else {
        // Nobody to relay to: the id is spent now.
        if let Err(refusal) = relay.record(&verified).await {
            return refuse(server, peer, &command, &refusal);
        }
        // Nobody to tell: the message reached every agent it was for.
        final_message_sent = true;
    }
    let stops_server = resolved.server;
    let (completed, exit_code) = if stops_server {
        tracing::error!(command_id = %command.body.command_id, "EMERGENCY SHUTDOWN: stopping the server");
        server.shutdown();
        let stopped = tokio::time::timeout(STOP_WAIT, server.stopped())
            .await
            .is_ok();
        if stopped {
            services_stopped.extend(
                [
                    "client_sessions",
                    "mtls_listener",
                    "heartbeats",
                    "module_watcher",
                    "rest_api",
                ]
                .map(String::from),
            );
        }
        let _ = server
            .audit_essential(
                "emergency.completed",
                json!({"command_id": command.body.command_id, "stopped": stopped}),
            )
            .await;
        (stopped.then(now_iso), if stopped { Some(0) } else { None })
    } else {
        (None, None)
    };
    json_response(
        StatusCode::OK,
        &json!({
            "data": {
                "command_received": received,
                "command_verified": true,
                "verification_error": null,
                "shutdown_initiated": initiated,
                "services_stopped": services_stopped,
                "data_persisted": server.has_audit(),
                "final_message_sent": final_message_sent,
                "shutdown_completed": completed,
                "exit_code": exit_code,
            },
            "metadata": {
                "timestamp": now_iso(),
                "request_id": format!("req_{}", &crate::server::new_command_id()[4..]),
            }
        }),
    )
}

/// Whether every targeted client answered `done` (the CIRIS answer's
/// `final_message_sent`).
pub(crate) fn all_done(report: &DeliveryReport) -> bool {
    !report.outcomes.is_empty()
        && report.outcomes.iter().all(
            |o| matches!(&o.outcome, Outcome::Acked(a) if a.status == vigil_proto::AckStatus::Done),
        )
}

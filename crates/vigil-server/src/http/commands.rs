//! `POST /send` (the server signs) and `POST /v1/commands` (the server
//! relays what an authority signed), and how their answers are written.

use std::time::Duration;

use hyper::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use vigil_command::{Refusal, SignedCommand};

use super::response::{ApiError, Resp, bytes_response, error, json_response, server_error};
use super::{MAX_WAIT, State};
use crate::Target;

/// `?wait=SECONDS`.
fn wait_of(query: &str) -> Result<Option<Duration>, ApiError> {
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k == "wait" {
            let secs: f64 = v
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && *s >= 0.0)
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!("wait must be a number of seconds, got {v:?}"),
                    )
                })?;
            if secs > MAX_WAIT.as_secs_f64() {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    format!("wait may be at most {} seconds", MAX_WAIT.as_secs()),
                ));
            }
            return Ok(Some(Duration::from_secs_f64(secs)));
        }
    }
    Ok(None)
}

/// The clients a command for `agent` (an agent id or a key fingerprint)
/// and `tree` goes to: some must be connected (404 otherwise). The server
/// itself runs no relayed or `/send` commands.
fn target_of(
    state: &State,
    agent: Option<&str>,
    tree: Option<&[String]>,
) -> Result<Target, ApiError> {
    let resolved = crate::route::resolve(&state.server, agent, tree)
        .map_err(|u| ApiError::new(u.status(), u.why().to_owned()))?;
    resolved.clients.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            match agent {
                Some(id) => format!("{id:?} is this server, not a client: it runs no commands"),
                None => "no client is connected".to_owned(),
            },
        )
    })
}

async fn answer(delivery: crate::Delivery, wait: Option<Duration>) -> Resp {
    let command_id = delivery.command_id().to_owned();
    match wait {
        Some(d) => {
            let tracker = delivery.settle(d).await;
            bytes_response(StatusCode::OK, tracker.results_json())
        }
        None => {
            let sent: Vec<String> = delivery
                .queued()
                .iter()
                .map(|(fp, _)| fp.to_hex())
                .collect();
            let missed: Vec<Value> = delivery
                .immediate()
                .iter()
                .map(|o| json!({"client": o.client.to_hex(), "status": crate::record::TargetState::of_outcome(&o.outcome).status}))
                .collect();
            json_response(
                StatusCode::ACCEPTED,
                &json!({"command_id": command_id, "status": "sent", "sent_to": sent, "not_sent": missed}),
            )
        }
    }
}

/// Longest command name `/send` takes.
const MAX_COMMAND_NAME: usize = 64;
/// Longest `reason` `/send` takes, in characters: 4096, which in UTF-8
/// (at most 4 bytes each) is never past what a client parses.
const MAX_REASON_CHARS: usize = vigil_command::MAX_REASON_LEN / 4;

/// A name for `/send`: what a client's `[commands]` table can be keyed by
/// without quoting, and what a command name may hold in every client.
fn is_command_name(name: &str) -> bool {
    (1..=MAX_COMMAND_NAME).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SendBody {
    command: String,
    #[serde(default)]
    args: Value,
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /send`: FailsafeAPI's shape; the server signs and delivers.
pub(super) async fn send(state: &State, body: &[u8], query: &str) -> Resp {
    let wait = match wait_of(query) {
        Ok(w) => w,
        Err(e) => return e.into_response(),
    };
    let req: SendBody = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("bad /send body: {e}"),
            );
        }
    };
    if !is_command_name(&req.command) {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "command must be 1 to {MAX_COMMAND_NAME} letters, digits, '_', '.' or '-' (a name in the clients' [commands] table), got {:?}",
                crate::text::truncate(&req.command, 80)
            ),
        );
    }
    if let Some(reason) = &req.reason
        && reason.chars().count() > MAX_REASON_CHARS
    {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("reason is longer than {MAX_REASON_CHARS} characters"),
        );
    }
    let target = match target_of(state, req.client_id.as_deref(), None) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let reason = req
        .reason
        .unwrap_or_else(|| "sent through the REST API".into());
    match state
        .server
        .send_command(&req.command, req.args, &reason, &target)
        .await
    {
        Ok(delivery) => answer(delivery, wait).await,
        Err(e) => server_error(e),
    }
}

/// `POST /v1/commands`: a command signed elsewhere, checked and relayed
/// unchanged.
pub(super) async fn relay(state: &State, body: &[u8], query: &str) -> Resp {
    let wait = match wait_of(query) {
        Ok(w) => w,
        Err(e) => return e.into_response(),
    };
    let Some(relay_check) = &state.config.relay else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this server relays no signed commands (start it with --authorities)",
        );
    };
    let command = match SignedCommand::from_json(body) {
        Ok(c) => c,
        Err(e) => {
            let status = if e.code() == "timestamp_without_offset" {
                StatusCode::BAD_REQUEST
            } else {
                StatusCode::UNPROCESSABLE_ENTITY
            };
            return error(status, e);
        }
    };
    let refused = |refusal: Refusal| {
        state.server.audit_later(
            "command.refused",
            json!({"command_id": command.body.command_id, "wa_id": command.body.wa_id, "code": refusal.code(), "detail": refusal.message()}),
        );
        super::emergency::refusal_response(&refusal)
    };
    let verified = match relay_check.verify(&command) {
        Ok(v) => v,
        Err(refusal) => return refused(refusal),
    };
    let target = match target_of(
        state,
        command.body.target_agent_id.as_deref(),
        command.body.target_tree_path.as_deref(),
    ) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let raw = one_line(body);
    // The replay id is spent after the command is recorded, so that one
    // the audit log could not record (503) can be sent again.
    let relayed = state
        .server
        .relay_checked(
            &command,
            &raw,
            &target,
            "relay",
            relay_check.record(&verified),
        )
        .await;
    match relayed {
        Ok(delivery) => answer(delivery, wait).await,
        Err(crate::server::Relayed::Refused(refusal)) => refused(refusal),
        Err(crate::server::Relayed::Server(e)) => server_error(e),
    }
}

/// The body as one line: as it is when it already is one (byte for byte),
/// else re-encoded compactly (the signature does not cover formatting).
pub(crate) fn one_line(body: &[u8]) -> Vec<u8> {
    let trimmed = body.trim_ascii();
    if !trimmed.contains(&b'\n') && !trimmed.contains(&b'\r') {
        return trimmed.to_vec();
    }
    serde_json::from_slice::<Value>(body)
        .map(|v| v.to_string().into_bytes())
        .unwrap_or_else(|_| trimmed.to_vec())
}

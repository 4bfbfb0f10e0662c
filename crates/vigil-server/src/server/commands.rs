//! Commands out of the server: deliver (relayed unchanged), sign and
//! send, relay after a check ([`Relay`]: the policy for commands signed
//! elsewhere); each recorded before it is sent. Targets are resolved in
//! [`crate::route`]; the sessions they reach are found in `fanout.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use serde_json::{Map, Value};
use vigil_auth::Fingerprint;
use vigil_command::{Authorities, Refusal, ReplayGuard, SignedCommand, Verifier};

use super::ServerHandle;
use super::fanout::Reach;
use crate::ServerError;
use crate::delivery::{Delivery, Target, command_id_of};
use crate::outbound::Lane;
use crate::record::CommandRecord;

/// What the server checks before it relays a command signed elsewhere.
#[derive(Debug, Clone)]
pub struct Relay {
    verifier: Arc<Verifier>,
}

impl Relay {
    /// Relays `RUN` and `SHUTDOWN_NOW` commands signed by `authorities`
    /// (each key for its own types), fresh, and seen once by `replay`.
    ///
    /// The replay guard records a command only once it is known to be
    /// deliverable (after the signature, the authority and the target were
    /// checked), so that a command refused for an unknown target can be
    /// sent again once its target is there.
    pub fn new(authorities: Authorities, replay: Arc<ReplayGuard>) -> Self {
        Relay {
            verifier: Arc::new(
                Verifier::new(authorities)
                    .with_supported_types(["RUN", "SHUTDOWN_NOW"])
                    .with_replay_guard(replay),
            ),
        }
    }

    /// Checks signature, freshness and authority, and that the id was not
    /// accepted before (without recording it: no I/O).
    pub(crate) fn verify(
        &self,
        command: &SignedCommand,
    ) -> Result<vigil_command::VerifiedCommand, Refusal> {
        self.verifier.verify(command, SystemTime::now())
    }

    /// Records the command id; refuses one seen before. The record is
    /// synced to disk, on a blocking thread: a slow disk does not hold a
    /// runtime worker.
    pub(crate) async fn record(
        &self,
        verified: &vigil_command::VerifiedCommand,
    ) -> Result<(), Refusal> {
        let verifier = self.verifier.clone();
        let verified = verified.clone();
        // Each authority key has its own share of the guard, and a
        // SHUTDOWN_NOW is never refused for capacity.
        tokio::task::spawn_blocking(move || {
            verifier
                .record(&[&verified], SystemTime::now())
                .pop()
                .unwrap_or_else(|| {
                    Err(Refusal::ReplayStoreUnavailable {
                        detail: "no answer".into(),
                    })
                })
        })
        .await
        .map_err(|e| Refusal::ReplayStoreUnavailable {
            detail: format!("the replay store's writer failed: {e}"),
        })?
    }
}

/// Why [`ServerHandle::relay_checked`] did not send.
#[derive(Debug)]
pub(crate) enum Relayed {
    /// The server could not (the audit log, most likely).
    Server(ServerError),
    /// The check refused the command (its id was spent already).
    Refused(vigil_command::Refusal),
}

fn target_json(target: &Target) -> Value {
    match target {
        Target::All => Value::String("all".into()),
        Target::Clients(list) => list.iter().map(|f| Value::String(f.to_hex())).collect(),
        Target::Subtree(path) => serde_json::json!({ "tree_path": path }),
    }
}

/// The lane a command goes in: an emergency shutdown never waits behind
/// other commands, nor for the session's window.
pub(super) fn lane_of(command_type: Option<&str>) -> Lane {
    if command_type == Some(vigil_command::EMERGENCY_TYPE) {
        Lane::Control
    } else {
        Lane::Command
    }
}

/// A fresh command id: 128 random bits, hex.
pub(crate) fn new_command_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: fall back on time and a counter, still unique.
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes[..8].copy_from_slice(&(nanos as u64).to_le_bytes());
        bytes[8..].copy_from_slice(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    }
    format!("cmd_{}", hex::encode(bytes))
}

impl ServerHandle {
    /// Sends a signed command (its JSON object, relayed as it is) to the
    /// targeted clients, encoded once, and returns a [`Delivery`] that
    /// collects their acknowledgements. The server does not sign or alter
    /// the command: clients verify it with their own keys.
    ///
    /// The command is recorded in the audit log first (as `command.issued`
    /// via `deliver`); if it cannot be, nothing is sent. The server does not
    /// check the command: use it for commands checked elsewhere.
    pub async fn deliver(
        &self,
        command: &Map<String, Value>,
        target: &Target,
    ) -> Result<Delivery, ServerError> {
        let command_id = command_id_of(command);
        self.audit(
            "command.issued",
            serde_json::json!({"command_id": command_id, "via": "deliver", "target": target_json(target)}),
        )
        .await?;
        let lane = lane_of(command.get("command_type").and_then(Value::as_str));
        let raw =
            serde_json::to_vec(command).map_err(|e| ServerError::BadCommand(e.to_string()))?;
        Ok(self.deliver_payload(command_id, &raw, target, lane, Reach::Cluster))
    }

    /// Sends `raw` (one line of JSON, a signed command as it was received)
    /// byte for byte, to this server's clients and, in a cluster, the
    /// other servers'. The caller has audited it; `raw` must hold no line
    /// break (it would end the frame early).
    pub(crate) fn deliver_raw(
        &self,
        command_id: &str,
        raw: &[u8],
        target: &Target,
        lane: Lane,
    ) -> Delivery {
        debug_assert!(!raw.contains(&b'\n'));
        self.deliver_payload(command_id.to_owned(), raw, target, lane, Reach::Cluster)
    }

    /// Signs a `RUN` command with the server's authority key, records it
    /// durably in the audit log, and delivers it; if the record cannot be
    /// written, nothing is sent ([`ServerError::Audit`]). With one target
    /// client, the command names it in `target_agent_id` (its fingerprint),
    /// so that no other client would run it.
    pub async fn send_command(
        &self,
        command: &str,
        args: Value,
        reason: &str,
        target: &Target,
    ) -> Result<Delivery, ServerError> {
        let authority = self
            .shared
            .config
            .authority
            .as_ref()
            .ok_or(ServerError::NoAuthority)?;
        let now = vigil_command::Timestamp::from_system_time(SystemTime::now())
            .map_err(|e| ServerError::Sign(e.to_string()))?;
        let mut unsigned = vigil_command::UnsignedCommand::new(
            new_command_id(),
            "RUN",
            authority.id.clone(),
            now,
            reason,
        );
        unsigned.command = Some(command.to_owned());
        unsigned.args = Some(args);
        if let Target::Clients(list) = target
            && let [only] = list.as_slice()
        {
            // The agent id the client checks: the one it said in
            // `sys:hello`, else its fingerprint (its default).
            let said = self.agent_id_of(only);
            unsigned.target_agent_id = Some(said.unwrap_or_else(|| only.to_hex()));
        }
        if let Target::Subtree(path) = target {
            unsigned.target_tree_path = Some(path.clone());
        }
        // A field past its limit, or arguments with no canonical JSON form
        // (a non-finite number, nesting past the limit), are the caller's
        // fault, not the server's: signing refuses them.
        let signed = unsigned
            .sign(&authority.key)
            .map_err(|e| ServerError::BadCommand(e.to_string()))?;
        // `relay` checks the bytes as clients will read them (the whole
        // body's size, integers Python could not sign).
        let raw = signed.to_json();
        self.relay(&signed, raw.as_bytes(), target, "send").await
    }

    /// Records a verified, signed command in the audit log (failing
    /// closed), then delivers `raw` (its JSON, one line) unchanged, and
    /// tracks it for [`ServerHandle::command`].
    pub async fn relay(
        &self,
        command: &vigil_command::SignedCommand,
        raw: &[u8],
        target: &Target,
        via: &'static str,
    ) -> Result<Delivery, ServerError> {
        self.relay_checked(command, raw, target, via, async { Ok(()) })
            .await
            .map_err(|e| match e {
                Relayed::Server(e) => e,
                // The check above never refuses.
                Relayed::Refused(r) => ServerError::Sign(r.message()),
            })
    }

    /// As [`ServerHandle::relay`], with `check` (spending the command's
    /// replay id) run after the command is durably recorded and before it
    /// is sent: a command the audit log cannot record keeps its id, and
    /// can be sent again.
    pub(crate) async fn relay_checked(
        &self,
        command: &vigil_command::SignedCommand,
        raw: &[u8],
        target: &Target,
        via: &'static str,
        check: impl std::future::Future<Output = Result<(), vigil_command::Refusal>>,
    ) -> Result<Delivery, Relayed> {
        let targets = target_json(target);
        if raw.contains(&b'\n') || raw.contains(&b'\r') {
            return Err(Relayed::Server(ServerError::Sign(
                "a relayed command must be one line of JSON".into(),
            )));
        }
        // What the clients will parse: bytes they would refuse as
        // malformed (a field or a list past its limit) are refused here,
        // before anything is recorded or any id is spent.
        if let Err(e) = vigil_command::SignedCommand::from_json(raw) {
            return Err(Relayed::Server(ServerError::BadCommand(format!(
                "clients would refuse it: {e}"
            ))));
        }
        let issued = serde_json::json!({
            "command_id": command.body.command_id,
            "command_type": command.body.command_type,
            "command": command.body.command,
            "wa_id": command.body.wa_id,
            "via": via,
            "target": targets,
        });
        // An emergency shutdown may use the audit log's reserve.
        let recorded = if command.body.command_type == vigil_command::EMERGENCY_TYPE {
            self.audit_essential("command.issued", issued).await
        } else {
            self.audit("command.issued", issued).await
        };
        recorded.map_err(Relayed::Server)?;
        if let Err(refusal) = check.await {
            // Recorded, then not sent: the log may say more than
            // happened, never less.
            self.audit_later(
                "command.withdrawn",
                serde_json::json!({"command_id": command.body.command_id, "code": refusal.code(), "detail": refusal.message()}),
            );
            return Err(Relayed::Refused(refusal));
        }
        let lane = lane_of(Some(command.body.command_type.as_str()));
        let delivery = self.deliver_raw(&command.body.command_id, raw, target, lane);
        self.shared.commands.insert(
            CommandRecord {
                command_id: command.body.command_id.clone(),
                command_type: command.body.command_type.clone(),
                command: command.body.command.clone(),
                wa_id: command.body.wa_id.clone(),
                via,
                targets: Default::default(),
            },
            Some(delivery.tracker.clone()),
        );
        let queued: Vec<Fingerprint> = delivery.queued.iter().map(|(fp, _)| *fp).collect();
        let command_id = command.body.command_id.clone();
        self.shared.audit_later_with("command.delivered", move || {
            let clients: Vec<String> = queued.iter().map(Fingerprint::to_hex).collect();
            serde_json::json!({"command_id": command_id, "clients": clients})
        });
        Ok(delivery)
    }
}

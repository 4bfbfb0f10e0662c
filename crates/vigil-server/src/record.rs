//! What became of recent commands, per client: the answer to
//! `GET /v1/commands/{id}`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use serde::Serialize;
use serde_json::Value;
use vigil_auth::Fingerprint;
use vigil_proto::{Ack, AckStatus};

use crate::delivery::Outcome;

/// How many commands are remembered.
const KEEP: usize = 10_000;

/// One client's view of a command.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetState {
    /// `pending`, `done`, `failed`, `refused`, `not_connected`,
    /// `disconnected` or `queue_full`.
    pub status: &'static str,
    /// The client's reason or error.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// The refusal code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// What the client's handler returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

impl TargetState {
    pub(crate) fn of_outcome(outcome: &Outcome) -> TargetState {
        match outcome {
            Outcome::Acked(ack) => Self::of_ack(ack),
            Outcome::NotConnected => Self::status("not_connected"),
            Outcome::QueueFull => Self::status("queue_full"),
            Outcome::Disconnected => Self::status("disconnected"),
            _ => Self::status("pending"),
        }
    }

    pub(crate) fn of_ack(ack: &Ack) -> TargetState {
        TargetState {
            status: match ack.status {
                AckStatus::Done => "done",
                AckStatus::Failed => "failed",
                AckStatus::Refused => "refused",
            },
            detail: ack.detail.clone(),
            code: ack.code.clone(),
            result: ack.result.clone(),
        }
    }

    fn status(status: &'static str) -> TargetState {
        TargetState {
            status,
            detail: String::new(),
            code: None,
            result: None,
        }
    }
}

/// A command the server issued or relayed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CommandRecord {
    /// Its id.
    pub command_id: String,
    /// Its type (`RUN`, `SHUTDOWN_NOW`).
    pub command_type: String,
    /// The command name, for `RUN`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// Who signed it.
    pub wa_id: String,
    /// How it came: `send` (signed by this server), `relay` (signed
    /// elsewhere), `emergency`.
    pub via: &'static str,
    /// By client fingerprint.
    pub targets: BTreeMap<String, TargetState>,
}

/// Recent commands, bounded.
#[derive(Debug, Default)]
pub(crate) struct CommandLog {
    inner: Mutex<(HashMap<String, CommandRecord>, VecDeque<String>)>,
}

impl CommandLog {
    fn lock(&self) -> MutexGuard<'_, (HashMap<String, CommandRecord>, VecDeque<String>)> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn insert(&self, record: CommandRecord) {
        let mut guard = self.lock();
        let (map, order) = &mut *guard;
        if map
            .insert(record.command_id.clone(), record.clone())
            .is_none()
        {
            order.push_back(record.command_id);
        }
        while order.len() > KEEP {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    pub(crate) fn set(&self, command_id: &str, client: &Fingerprint, state: TargetState) {
        if let Some(record) = self.lock().0.get_mut(command_id) {
            record.targets.insert(client.to_hex(), state);
        }
    }

    pub(crate) fn get(&self, command_id: &str) -> Option<CommandRecord> {
        self.lock().0.get(command_id).cloned()
    }
}

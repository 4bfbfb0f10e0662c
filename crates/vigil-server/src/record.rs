//! What became of recent commands, per client: the answer to
//! `GET /v1/commands/{id}`.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use serde_json::Value;
use vigil_proto::Ack;

use crate::delivery::{Outcome, Tracker, ack_status};

/// How many commands are remembered.
const KEEP: usize = 10_000;
/// How many target slots the remembered commands may hold in all (about
/// 56 bytes each); past it the oldest commands are forgotten.
const KEEP_TARGETS: usize = 200_000;

/// One client's view of a command.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TargetState {
    /// `pending`, `done`, `failed`, `refused`, `not_connected`,
    /// `disconnected`, `queue_full` or `unanswered`.
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
            Outcome::Unanswered => Self::status("unanswered"),
            _ => Self::status("pending"),
        }
    }

    pub(crate) fn of_ack(ack: &Ack) -> TargetState {
        TargetState {
            status: ack_status(ack.status),
            detail: ack.detail.clone(),
            code: ack.code.as_ref().map(ToString::to_string),
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

/// A remembered command: what it was, and its delivery.
#[derive(Debug)]
struct Entry {
    record: CommandRecord,
    delivery: Option<Arc<Tracker>>,
}

impl Entry {
    fn targets(&self) -> usize {
        self.delivery.as_ref().map_or(0, |t| t.len())
    }
}

#[derive(Debug, Default)]
struct Log {
    map: HashMap<String, Entry>,
    order: VecDeque<String>,
    /// Target slots held by the remembered deliveries.
    targets: usize,
}

/// Recent commands, bounded in number and in the target slots their
/// deliveries hold (a fan-out to 10,000 clients holds 10,000).
#[derive(Debug, Default)]
pub(crate) struct CommandLog {
    inner: Mutex<Log>,
}

impl CommandLog {
    fn lock(&self) -> MutexGuard<'_, Log> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remembers a command and its delivery, forgetting the oldest ones
    /// past the bounds.
    pub(crate) fn insert(&self, record: CommandRecord, delivery: Option<Arc<Tracker>>) {
        let entry = Entry { record, delivery };
        let mut log = self.lock();
        let id = entry.record.command_id.clone();
        log.targets += entry.targets();
        match log.map.insert(id.clone(), entry) {
            Some(old) => log.targets -= old.targets().min(log.targets),
            None => log.order.push_back(id),
        }
        while log.order.len() > KEEP || (log.targets > KEEP_TARGETS && log.order.len() > 1) {
            let Some(old) = log.order.pop_front() else {
                break;
            };
            if let Some(gone) = log.map.remove(&old) {
                log.targets -= gone.targets().min(log.targets);
            }
        }
    }

    pub(crate) fn get(&self, command_id: &str) -> Option<CommandRecord> {
        let (mut record, delivery) = {
            let log = self.lock();
            let entry = log.map.get(command_id)?;
            (entry.record.clone(), entry.delivery.clone())
        };
        if let Some(tracker) = delivery {
            for o in tracker.report().outcomes {
                record
                    .targets
                    .insert(o.client.to_hex(), TargetState::of_outcome(&o.outcome));
            }
        }
        Some(record)
    }
}

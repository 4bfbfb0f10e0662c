//! The command worker: checks `cmd:exec` payloads in batches on a blocking
//! thread and runs those accepted, a bounded number at once.

use super::*;
use vigil_proto::AckCode;

/// Closes a connection when dropped.
pub(super) struct CloseOnDrop(pub(super) Arc<Connection>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// Checks `cmd:exec` payloads on a blocking thread (verifying records
/// their ids in the replay guard, synced to disk: a slow disk must hold up
/// neither heartbeats nor the failsafe), one answer each.
pub(super) async fn check(
    settings: &crate::CommandSettings,
    bodies: Vec<serde_json::Map<String, serde_json::Value>>,
) -> Vec<Result<Accepted, Refused>> {
    let verifier = settings.verifier.clone();
    let n = bodies.len();
    let shared = Arc::new(bodies);
    let checked = {
        let bodies = shared.clone();
        tokio::task::spawn_blocking(move || check_commands(&verifier, &bodies, SystemTime::now()))
            .await
    };
    checked.unwrap_or_else(|e| {
        (0..n)
            .map(|i| {
                Err(Refused::of(
                    &shared[i],
                    AckCode::Internal,
                    format!("command check failed: {e}"),
                ))
            })
            .collect()
    })
}

/// Takes the commands of one connection in order, checks them in batches
/// (one sync of the replay guard for each) and runs them, at most
/// [`MAX_RUNNING_COMMANDS`] at once: the 17th waits for a slot instead of
/// being refused. The queue in front of it is bounded by the connection
/// ([`crate::COMMAND_QUEUE`], past which the connection answers `busy`).
pub(super) struct Worker {
    pub(super) settings: Option<crate::CommandSettings>,
    pub(super) conn: Arc<Connection>,
    pub(super) feed: Option<FailsafeHandle>,
    pub(super) events: broadcast::Sender<ClientEvent>,
}

impl Worker {
    pub(super) async fn run(self, mut commands: tokio::sync::mpsc::Receiver<crate::PushedBody>) {
        let running = Arc::new(tokio::sync::Semaphore::new(MAX_RUNNING_COMMANDS));
        loop {
            let Some(first) = commands.recv().await else {
                return;
            };
            let mut batch = vec![first];
            while batch.len() < CHECK_BATCH {
                match commands.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
            if self.conn.is_closed() {
                // Not checked, so not spent: the server learns it was not
                // delivered, and it can be sent again.
                return;
            }
            let Some(settings) = &self.settings else {
                for (reference, body) in batch {
                    self.refuse(&reference, disabled(&body)).await;
                }
                continue;
            };
            let bodies: Vec<_> = batch.iter().map(|(_, b)| b.clone()).collect();
            let verdicts = check(settings, bodies).await;
            for ((reference, _), verdict) in batch.into_iter().zip(verdicts) {
                match verdict {
                    Ok(accepted) => {
                        self.accepted(&accepted);
                        // Checked, so spent: it runs, once a slot is free.
                        let Ok(permit) = running.clone().acquire_owned().await else {
                            return;
                        };
                        self.spawn_run(settings, reference, accepted.command, Some(permit));
                    }
                    Err(refused) => self.refuse(&reference, refused).await,
                }
            }
        }
    }

    /// Acknowledges a refusal, logs it and reports it.
    pub(super) async fn refuse(&self, reference: &str, refused: Refused) {
        tracing::warn!(
            command_id = ?refused.command_id, code = %refused.code, detail = ?refused.detail,
            "command refused"
        );
        let _ = self.conn.send_ack(refused.ack(), reference).await;
        let _ = self.events.send(ClientEvent::CommandRefused {
            command_id: refused.command_id,
            code: refused.code,
            detail: refused.detail,
        });
    }

    /// Feeds the failsafe and logs a verified command.
    pub(super) fn accepted(&self, accepted: &Accepted) {
        if let Some(feed) = &self.feed {
            feed.feed();
        }
        let cmd = &accepted.command;
        tracing::info!(
            command_id = %cmd.body.command_id, command_type = %cmd.body.command_type, authority = %accepted.authority,
            command = ?cmd.body.command, reason = ?cmd.body.reason,
            "verified command"
        );
    }

    /// Runs a verified command on a task of its own that holds `permit`,
    /// and acknowledges the outcome.
    pub(super) fn spawn_run(
        &self,
        settings: &crate::CommandSettings,
        reference: String,
        cmd: vigil_command::SignedCommand,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) {
        let name = cmd.body.command.clone().unwrap_or_default();
        let args = cmd.body.args.clone().unwrap_or(serde_json::Value::Null);
        let handler = settings.handler.clone();
        let timeout = settings.command_timeout;
        let conn = self.conn.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let outcome = tokio::time::timeout(timeout, handler.execute(&name, &args)).await;
            let ack = match outcome {
                Ok(Ok(result)) => Ack {
                    command_id: Some(cmd.body.command_id.clone()),
                    status: AckStatus::Done,
                    code: None,
                    detail: String::new(),
                    result: Some(result),
                },
                Ok(Err(e)) => Ack {
                    command_id: Some(cmd.body.command_id.clone()),
                    status: AckStatus::Failed,
                    code: None,
                    detail: e,
                    result: None,
                },
                Err(_) => Ack {
                    command_id: Some(cmd.body.command_id.clone()),
                    status: AckStatus::Failed,
                    code: Some(AckCode::Timeout),
                    detail: format!("command ran past its {timeout:?} timeout"),
                    result: None,
                },
            };
            tracing::info!(command_id = %cmd.body.command_id, command = %name, status = ?ack.status, "command ran");
            let _ = events.send(ClientEvent::CommandRan(ack.clone()));
            let _ = conn.send_ack(ack, &reference).await;
        });
    }
}

/// Most commands checked together (one sync of the replay guard).
const CHECK_BATCH: usize = 64;

/// The refusal of a client that takes no commands.
pub(super) fn disabled(body: &serde_json::Map<String, serde_json::Value>) -> Refused {
    Refused::of(
        body,
        AckCode::CommandsDisabled,
        "this client takes no commands (no authorities configured)".into(),
    )
}

/// How many verified commands run at once on one connection.
const MAX_RUNNING_COMMANDS: usize = 16;

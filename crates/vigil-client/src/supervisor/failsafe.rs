//! What the client does when its failsafe fires or re-arms, and with an
//! urgent `SHUTDOWN_NOW`.

use super::*;

impl Client {
    /// Runs the break commands when the failsafe fires; reports both
    /// transitions to the server as soon as it can be reached.
    pub(super) async fn on_failsafe(&self, event: vigil_failsafe::FailsafeEvent) {
        let Some(settings) = &self.config.commands else {
            return;
        };
        let report = match event {
            vigil_failsafe::FailsafeEvent::Fired {
                silent_for,
                late_by,
            } => {
                tracing::error!(
                    ?silent_for,
                    ?late_by,
                    "FAILSAFE FIRED: no verified message from the server; running break commands"
                );
                let outcomes =
                    run_break_commands(settings.handler.as_ref(), &settings.break_commands).await;
                self.emit(ClientEvent::FailsafeFired {
                    silent_for,
                    outcomes: outcomes.clone(),
                });
                FailsafeReport {
                    event: "fired".into(),
                    at: now_rfc3339(),
                    silent_ms: millis(silent_for),
                    break_commands: outcomes,
                    clock_skew_ms: self.state().skew_ms,
                }
            }
            vigil_failsafe::FailsafeEvent::Rearmed { outage } => {
                tracing::warn!(?outage, "failsafe re-armed: verified messages are back");
                self.emit(ClientEvent::FailsafeRearmed { outage });
                FailsafeReport {
                    event: "rearmed".into(),
                    at: now_rfc3339(),
                    silent_ms: millis(outage),
                    break_commands: Vec::new(),
                    clock_skew_ms: self.state().skew_ms,
                }
            }
        };
        lock(&self.reports).queue.push_back(report);
        self.flush_reports();
    }

    /// Sends the queued failsafe reports if connected, one at a time, each
    /// kept until the server confirms it: a report written to a connection
    /// that turns out to be dead (the path went silent, which is often why
    /// the failsafe fired) is sent again on the next one.
    pub(super) fn flush_reports(&self) {
        let Some(conn) = self.state().conn.clone() else {
            return;
        };
        {
            let mut reports = lock(&self.reports);
            if reports.sending || reports.queue.is_empty() {
                return;
            }
            reports.sending = true;
        }
        let reports = self.reports.clone();
        tokio::spawn(async move {
            loop {
                let next = {
                    let mut r = lock(&reports);
                    let next = r.queue.front().cloned();
                    if next.is_none() {
                        r.sending = false;
                    }
                    next
                };
                let Some(report) = next else {
                    return;
                };
                let sent = conn.request(ClientRequest::FailsafeReport(report)).await;
                let mut r = lock(&reports);
                match sent {
                    Ok(_) => {
                        r.queue.pop_front();
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "failsafe report not confirmed; kept for the next connection");
                        r.sending = false;
                        return;
                    }
                }
            }
        });
    }

    /// Handles one emergency command (`SHUTDOWN_NOW`), which never waits
    /// behind other commands. Returns its id if it was authorized (after
    /// its break commands ran).
    pub(super) async fn on_urgent(
        &self,
        conn: &Arc<Connection>,
        reference: &str,
        body: &serde_json::Map<String, serde_json::Value>,
        feed: Option<&FailsafeHandle>,
    ) -> Option<String> {
        let worker = Worker {
            settings: self.config.commands.clone(),
            conn: conn.clone(),
            feed: feed.cloned(),
            events: self.events.clone(),
        };
        let Some(settings) = &worker.settings else {
            worker.refuse(reference, disabled(body)).await;
            return None;
        };
        let verdict = check(settings, vec![body.clone()]).await.pop();
        let accepted = match verdict {
            Some(Ok(accepted)) => accepted,
            Some(Err(refused)) => {
                worker.refuse(reference, refused).await;
                return None;
            }
            None => return None,
        };
        worker.accepted(&accepted);
        let cmd = accepted.command;
        if cmd.body.command_type != vigil_command::EMERGENCY_TYPE {
            // Only a SHUTDOWN_NOW comes this way; anything else runs as usual.
            worker.spawn_run(settings, reference.to_owned(), cmd, None);
            return None;
        }
        tracing::error!(command_id = %cmd.body.command_id, reason = ?cmd.body.reason, "SHUTDOWN_NOW: running break commands, then exiting");
        let outcomes =
            run_break_commands(settings.handler.as_ref(), &settings.break_commands).await;
        let ack = Ack {
            command_id: Some(cmd.body.command_id.clone()),
            status: AckStatus::Done,
            code: None,
            detail: "shutting down".into(),
            result: Some(serde_json::json!({ "shutdown": true, "break_commands": outcomes })),
        };
        let _ = conn.send_ack(ack, reference).await;
        self.emit(ClientEvent::ShutdownRequested {
            command_id: cmd.body.command_id.clone(),
        });
        // Give the acknowledgement a moment to leave.
        let _ = tokio::time::timeout(Duration::from_secs(1), conn.flush()).await;
        Some(cmd.body.command_id)
    }
}

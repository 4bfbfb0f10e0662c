//! What the session does with each frame it reads: answers, module runs
//! in batches, hellos and acknowledgements.

use super::*;

impl<S> Session<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    /// Starts the module calls read so far as one batch, if a run slot of
    /// this session is free.
    ///
    /// Not while the session's answers wait unwritten past its outbound
    /// bound, nor while [`MAX_CALLS_IN_FLIGHT`] calls are unanswered: a
    /// client that stops reading cannot make module results pile up.
    pub(super) fn start_calls(&mut self) {
        if self.calls.is_empty()
            || self.execs.len() >= self.shared.config.max_execs_per_session
            || self.out_bytes >= self.shared.config.max_outbound_bytes
            || self.execs.iter().map(ExecBatch::pending).sum::<usize>() >= MAX_CALLS_IN_FLIGHT
        {
            return;
        }
        let calls = std::mem::take(&mut self.calls);
        match &self.shared.config.modules {
            Some(registry) => self.execs.push(registry.exec_batch(calls)),
            None => {
                for ((reference, module, _), _) in calls {
                    self.unknown_module(&module, &reference);
                }
            }
        }
    }

    /// Writes the answers of module runs that finished.
    pub(super) fn poll_execs(&mut self, cx: &mut Context<'_>) {
        let mut i = 0;
        while i < self.execs.len() {
            match self.execs[i].poll_next(cx) {
                Poll::Ready(Some(((reference, module, read_at), answer))) => {
                    self.shared
                        .latencies
                        .exec
                        .observe(read_at.elapsed().as_secs_f64());
                    let bytes = exec_answer(module, answer, &reference);
                    self.push_chunk(bytes, false);
                }
                Poll::Ready(None) => {
                    self.execs.swap_remove(i);
                }
                Poll::Pending => i += 1,
            }
        }
    }

    pub(super) fn unknown_module(&mut self, module: &str, reference: &str) {
        self.error_reply(
            ErrorCode::UnknownModule,
            format!("no module named {module:?} is loaded"),
            reference,
        );
    }

    /// Answers one well-formed frame.
    pub(super) fn dispatch(&mut self, frame: &Frame) {
        let reference = frame.reference();
        let request = match ClientRequest::from_frame(frame) {
            Ok(request) => request,
            Err(e) => {
                tracing::debug!(frame = %frame, error = %e, "request not understood");
                self.shared.stats.bad_frames.inc();
                self.reply(&ServerMessage::Error(e.to_body()), reference);
                return;
            }
        };
        let registry = self.shared.config.modules.as_ref();
        match request {
            ClientRequest::Sync => {
                let modules = registry
                    .map(|r| r.list().iter().map(|m| module_info_now(r, m)).collect())
                    .unwrap_or_default();
                self.reply(&ServerMessage::SyncResp { modules }, reference);
            }
            ClientRequest::Verify { module } => match registry.and_then(|r| r.get(&module)) {
                Some(m) => {
                    // The module's bytes are encoded once per version and
                    // shared by every reply.
                    let body = self.shared.verify_body(&m);
                    let header = format!("mod:verify_resp:{reference} ");
                    self.push_chunk(Bytes::from(header), false);
                    self.push_chunk(body, true);
                    self.push_chunk(Bytes::from_static(b"\n"), false);
                }
                None => self.unknown_module(&module, reference),
            },
            ClientRequest::Exec { module, args, sum } => {
                let call = ExecCall {
                    module: module.clone(),
                    args: args.into_bytes(),
                    sum,
                };
                self.calls
                    .push(((reference.to_owned(), module, Instant::now()), call));
            }
            ClientRequest::Ping => self.reply(&ServerMessage::Pong, reference),
            ClientRequest::Hello(hello) => self.hello(hello, reference),
            ClientRequest::Ack(ack) => self.acknowledged(ack, reference),
            ClientRequest::Nonce(body) => match vigil_command::decode_nonce(&body.nonce) {
                Some(nonce) => super::lock_beat(&self.beat).record(nonce, body.skew_ms),
                None => {
                    self.shared.stats.bad_frames.inc();
                    self.error_reply(
                        ErrorCode::BadPayload,
                        "nonce is not base64 of 32 bytes".to_owned(),
                        reference,
                    );
                }
            },
            ClientRequest::FailsafeReport(report) => {
                self.shared.stats.failsafe_reports.inc();
                self.shared.audit_later(
                    "failsafe.reported",
                    serde_json::json!({
                        "client": self.info.fingerprint.to_hex(),
                        "event": report.event,
                        "at": report.at,
                        "silent_ms": report.silent_ms,
                        "break_commands": report.break_commands,
                    }),
                );
                tracing::warn!(
                    event = %report.event, at = %report.at, silent_ms = report.silent_ms,
                    break_commands = report.break_commands.len(),
                    "client reports a failsafe transition"
                );
                // The answer tells the client it may forget the report.
                self.reply(&ServerMessage::ReportOk, reference);
            }
            // A request type added to the protocol but not served here.
            _ => self.error_reply(
                ErrorCode::UnknownType,
                format!(
                    "{}:{} is not served by this server",
                    frame.api(),
                    frame.kind()
                ),
                reference,
            ),
        }
    }

    /// Records where the client says it stands, once.
    pub(super) fn hello(&mut self, hello: vigil_proto::Hello, reference: &str) {
        if let Some(problem) = hello.problem() {
            self.shared.stats.bad_frames.inc();
            self.error_reply(ErrorCode::BadPayload, problem, reference);
            return;
        }
        tracing::info!(agent_id = ?hello.agent_id, tree_path = ?hello.tree_path, "client says where it stands");
        if self.place.set(hello).is_err() {
            self.error_reply(
                ErrorCode::BadPayload,
                "this session already said hello".into(),
                reference,
            );
            return;
        }
        self.shared.placed(self.info.id);
        self.reply(&ServerMessage::HelloOk, reference);
    }

    /// Counts an acknowledgement if it answers a command delivered to
    /// this session under that REF, for that command id.
    pub(super) fn acknowledged(&mut self, ack: vigil_proto::Ack, reference: &str) {
        let counter = match ack.status {
            AckStatus::Done => &self.shared.stats.acks_done,
            AckStatus::Failed => &self.shared.stats.acks_failed,
            AckStatus::Refused => &self.shared.stats.acks_refused,
        };
        counter.inc();
        match ack.status {
            AckStatus::Refused => tracing::warn!(
                command_id = ?ack.command_id, code = ?ack.code, detail = ?ack.detail,
                "client refused a command"
            ),
            _ => {
                tracing::debug!(command_id = ?ack.command_id, status = ?ack.status, "command acknowledged")
            }
        }
        let found = self
            .awaiting
            .iter()
            .position(|(_, a)| a.tracker.reference == reference);
        let effects = found.and_then(|i| {
            let effects = self.awaiting.get(i)?.1.acknowledge(self.info.id, ack);
            effects.counted.then_some((i, effects))
        });
        let Some((i, effects)) = effects else {
            self.error_reply(
                ErrorCode::BadPayload,
                format!(
                    "no command was delivered to this session with REF {reference:?} and that command_id"
                ),
                reference,
            );
            return;
        };
        let awaited = self.awaiting.remove(i);
        self.shared.audit_acks(effects.audit_now);
        if effects.audit_later
            && let Some((_, Awaited { tracker, .. })) = awaited
        {
            // The first ack of a group: record the group soon, even if
            // no more acks come to fill it.
            let shared = self.shared.clone();
            tokio::spawn(async move {
                tokio::time::sleep(ACK_AUDIT_DELAY).await;
                shared.audit_acks(tracker.take_audit());
            });
        }
    }
}

/// The protocol's view of a registry entry.
pub(crate) fn module_info(m: &ModuleSummary) -> ModuleInfo {
    ModuleInfo {
        name: m.name.clone(),
        sum: m.sum.clone(),
        size: m.size,
        desc: m.description.clone(),
        manifest: m
            .manifest
            .as_ref()
            .map(vigil_command::SignedManifest::to_map),
        state: None,
    }
}

/// As [`module_info`], saying whether the module is failing (for
/// `mod:sync_resp`).
pub(crate) fn module_info_now(
    registry: &vigil_modules::ModuleRegistry,
    m: &ModuleSummary,
) -> ModuleInfo {
    let failing = registry
        .get(&m.name)
        .is_some_and(|module| module.health().state == vigil_modules::HostState::Failing);
    ModuleInfo {
        state: failing.then(|| vigil_modules::HostState::Failing.as_str().to_owned()),
        ..module_info(m)
    }
}

/// Encodes a module run's answer.
fn exec_answer(module: String, answer: Result<ExecOutput, ExecError>, reference: &str) -> Bytes {
    let reply = match answer {
        Ok(out) => {
            tracing::debug!(module = %module, sum = %out.sum, "module ran");
            ServerMessage::ExecResp {
                module,
                sum: out.sum,
                result: out.result,
            }
        }
        Err(e) => {
            let code = match &e {
                ExecError::UnknownModule(_) => ErrorCode::UnknownModule,
                ExecError::StaleSum { .. } => ErrorCode::StaleSum,
                ExecError::Busy | ExecError::Abandoned(_) => ErrorCode::Busy,
                ExecError::Timeout(_) => ErrorCode::ExecTimeout,
                ExecError::Crashed { .. } => ErrorCode::ModuleCrashed,
                ExecError::Limit(_) => ErrorCode::ModuleLimit,
                ExecError::NotRun => ErrorCode::Busy,
                _ => ErrorCode::ExecFailed,
            };
            if matches!(
                e,
                ExecError::Panicked(_)
                    | ExecError::Timeout(_)
                    | ExecError::Crashed { .. }
                    | ExecError::Limit(_)
            ) {
                tracing::warn!(module = %module, error = %e, "module run failed");
            } else {
                tracing::debug!(module = %module, error = %e, "module run refused or failed");
            }
            let signal = match &e {
                ExecError::Crashed { signal, .. } => signal.clone(),
                _ => None,
            };
            ServerMessage::Error(ErrorBody::new(code, e.to_string()).with_signal(signal))
        }
    };
    encode(&reply, reference)
}

//! Signed commands, heartbeats and the failsafe, as the client sees them.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};
use vigil_command::{
    HeartbeatRefusal, HeartbeatVerifier, NonceHeartbeat, NonceVerifier, Refusal, SignedCommand,
    SignedHeartbeat, Verifier, VerifyingKey,
};
use vigil_proto::{Ack, AckCode, AckStatus};

use crate::ClientError;
use crate::handler::{BreakCommand, CommandHandler};

/// `command_type` of a general command, run by the [`CommandHandler`].
pub const RUN: &str = "RUN";
/// `command_type` of an emergency shutdown (CIRIS).
pub const SHUTDOWN_NOW: &str = "SHUTDOWN_NOW";

/// Default time a command may run before its acknowledgement says it failed.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// What a client needs to take signed commands and to run its failsafe.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CommandSettings {
    /// Checks each command: authorities, supported types (`RUN`,
    /// `SHUTDOWN_NOW`), freshness, this agent's id, replay guard.
    pub verifier: Verifier,
    /// The server's Ed25519 key that signs heartbeats.
    pub heartbeat_key: VerifyingKey,
    /// The keys of the other servers of its cluster, which sign the
    /// heartbeats of the servers this client fails over to: a beat signed
    /// by any of them feeds the failsafe as one signed by `heartbeat_key`
    /// does (each key's epoch and sequence are checked on their own).
    pub other_heartbeat_keys: Vec<VerifyingKey>,
    /// Silence (no verified heartbeat or command) after which the failsafe
    /// fires.
    pub failsafe_timeout: Duration,
    /// Time a command may run.
    pub command_timeout: Duration,
    /// Runs verified commands and break commands.
    pub handler: Arc<dyn CommandHandler>,
    /// Run in order when the failsafe fires, and before exiting on
    /// `SHUTDOWN_NOW`.
    pub break_commands: Vec<BreakCommand>,
    /// How a heartbeat is judged fresh.
    pub heartbeat_freshness: HeartbeatFreshness,
}

/// How a client judges that a heartbeat is fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeartbeatFreshness {
    /// The default: the beat must cover a nonce this client sent at most
    /// `max_age` ago on its monotonic clock (`vigil-heartbeat-v2`). No
    /// clock is shared with the server; clock-only beats are refused.
    Nonce {
        /// The oldest nonce a beat may cover.
        max_age: Duration,
    },
    /// The beat's wall-clock `sent_at` must be within 30 s of this
    /// client's clock (`vigil-heartbeat-v1`), for servers that send no
    /// nonce heartbeats. Needs synchronized clocks.
    Clock,
}

impl Default for HeartbeatFreshness {
    fn default() -> Self {
        HeartbeatFreshness::Nonce {
            max_age: NonceVerifier::DEFAULT_MAX_AGE,
        }
    }
}

/// The client's heartbeat check, by freshness mode, with one verifier per
/// server key; kept across connections so that each key's sequence and
/// epoch only move forward.
#[derive(Debug, Clone)]
pub(crate) enum BeatCheck {
    Clock(Vec<HeartbeatVerifier>),
    Nonce(Vec<NonceVerifier>),
}

impl CommandSettings {
    /// Settings with the FailsafeAPI default timeout (15 s) and no break
    /// commands. The verifier should be set up with the supported types
    /// and this agent's id.
    ///
    /// Refused, so that a client cannot run open by mistake: a weak
    /// heartbeat key (anyone could forge the heartbeats that keep the
    /// failsafe quiet) and a verifier without a replay guard (a recorded
    /// command would run again). [`Client::run`](crate::Client::run) also
    /// refuses to start when the failsafe cannot be armed.
    pub fn new(
        verifier: Verifier,
        heartbeat_key: VerifyingKey,
        handler: Arc<dyn CommandHandler>,
    ) -> Result<Self, ClientError> {
        HeartbeatVerifier::new(heartbeat_key).map_err(|_| ClientError::WeakHeartbeatKey)?;
        if !verifier.has_replay_guard() {
            return Err(ClientError::NoReplayGuard);
        }
        Ok(CommandSettings {
            verifier,
            heartbeat_key,
            other_heartbeat_keys: Vec::new(),
            failsafe_timeout: vigil_failsafe::DEFAULT_TIMEOUT,
            command_timeout: DEFAULT_COMMAND_TIMEOUT,
            handler,
            break_commands: Vec::new(),
            heartbeat_freshness: HeartbeatFreshness::default(),
        })
    }

    /// Every key whose heartbeats count: the server's, then its cluster's.
    fn heartbeat_keys(&self) -> impl Iterator<Item = VerifyingKey> + '_ {
        std::iter::once(self.heartbeat_key).chain(self.other_heartbeat_keys.iter().copied())
    }

    /// A heartbeat verifier for each key, or why there is none (a key was
    /// replaced by a weak one after [`CommandSettings::new`]).
    fn heartbeat_verifiers(&self) -> Result<Vec<HeartbeatVerifier>, ClientError> {
        self.heartbeat_keys()
            .map(|k| HeartbeatVerifier::new(k).map_err(|_| ClientError::WeakHeartbeatKey))
            .collect()
    }

    /// The heartbeat check for [`CommandSettings::heartbeat_freshness`].
    pub(crate) fn beat_check(&self) -> Result<BeatCheck, ClientError> {
        Ok(match self.heartbeat_freshness {
            HeartbeatFreshness::Clock => BeatCheck::Clock(self.heartbeat_verifiers()?),
            HeartbeatFreshness::Nonce { max_age } => BeatCheck::Nonce(
                self.heartbeat_keys()
                    .map(|k| {
                        NonceVerifier::new(k)
                            .map(|v| v.with_max_age(max_age))
                            .map_err(|_| ClientError::WeakHeartbeatKey)
                    })
                    .collect::<Result<_, _>>()?,
            ),
        })
    }

    /// What stops [`Client::run`](crate::Client::run) from starting with
    /// these settings, if anything: fields are public and may have been
    /// changed after [`CommandSettings::new`].
    pub(crate) fn check(&self) -> Result<(), ClientError> {
        self.heartbeat_verifiers()?;
        if !self.verifier.has_replay_guard() {
            return Err(ClientError::NoReplayGuard);
        }
        if self.failsafe_timeout.is_zero() {
            return Err(ClientError::Failsafe(
                vigil_failsafe::FailsafeError::ZeroTimeout,
            ));
        }
        Ok(())
    }
}

/// A command that passed every check.
#[derive(Debug, Clone)]
pub(crate) struct Accepted {
    pub(crate) command: SignedCommand,
    pub(crate) authority: String,
}

/// A command that did not.
#[derive(Debug, Clone)]
pub(crate) struct Refused {
    pub(crate) command_id: Option<String>,
    pub(crate) code: AckCode,
    pub(crate) detail: String,
}

impl Refused {
    /// A refusal of the command in `body`, named by its `command_id` when
    /// it has one (it may be malformed).
    pub(crate) fn of(body: &Map<String, Value>, code: AckCode, detail: String) -> Refused {
        Refused {
            command_id: body
                .get("command_id")
                .and_then(Value::as_str)
                .map(str::to_owned),
            code,
            detail,
        }
    }

    pub(crate) fn ack(&self) -> Ack {
        Ack {
            command_id: self.command_id.clone(),
            status: AckStatus::Refused,
            code: Some(self.code.clone()),
            detail: self.detail.clone(),
            result: None,
        }
    }
}

/// Parses and verifies `cmd:exec` payloads, one answer each in order;
/// the ids of those accepted are recorded in the replay guard together
/// (one `fsync`).
pub(crate) fn check_commands(
    verifier: &Verifier,
    bodies: &[Map<String, Value>],
    now: SystemTime,
) -> Vec<Result<Accepted, Refused>> {
    let mut answers: Vec<Option<Result<Accepted, Refused>>> = Vec::with_capacity(bodies.len());
    let mut parsed: Vec<(usize, SignedCommand)> = Vec::with_capacity(bodies.len());
    for (i, body) in bodies.iter().enumerate() {
        let raw = serde_json::to_vec(body).unwrap_or_default();
        match SignedCommand::from_json(&raw) {
            Ok(command) => {
                parsed.push((i, command));
                answers.push(None);
            }
            Err(e) => {
                // The parse error's own code tells a timestamp without an
                // offset from other malformed input.
                let code = AckCode::parse(e.code());
                answers.push(Some(Err(Refused::of(
                    body,
                    code,
                    Refusal::from(e).message(),
                ))));
            }
        }
    }
    let commands: Vec<SignedCommand> = parsed.iter().map(|(_, c)| c.clone()).collect();
    for ((i, _), verdict) in parsed.iter().zip(verifier.accept_batch(&commands, now)) {
        answers[*i] = Some(match verdict {
            Ok(verified) => Ok(Accepted {
                authority: verified.authority_id().to_owned(),
                command: verified.into_command(),
            }),
            Err(refusal) => Err(Refused::of(
                &bodies[*i],
                AckCode::parse(refusal.code()),
                refusal.message(),
            )),
        });
    }
    answers
        .into_iter()
        .zip(bodies)
        .map(|(a, body)| {
            a.unwrap_or_else(|| Err(Refused::of(body, AckCode::Internal, "not checked".into())))
        })
        .collect()
}

/// Checks a heartbeat: the clock offset a fresh one measured (nonce
/// heartbeats only), or why it was not taken.
pub(crate) fn check_heartbeat(
    check: &mut BeatCheck,
    body: &Map<String, Value>,
    now: Duration,
    wall: SystemTime,
) -> Result<Option<i64>, String> {
    let refused = |e: HeartbeatRefusal| format!("{} ({})", e, e.code());
    // The first key whose signature holds decides; a beat no key signed
    // is refused as a bad signature.
    let mut refusal = HeartbeatRefusal::InvalidSignature;
    let mut keep = |e: HeartbeatRefusal| {
        if matches!(refusal, HeartbeatRefusal::InvalidSignature) {
            refusal = e;
        }
    };
    match check {
        BeatCheck::Clock(verifiers) => {
            let beat: SignedHeartbeat = serde_json::from_value(Value::Object(body.clone()))
                .map_err(|e| format!("malformed heartbeat: {e}"))?;
            for verifier in verifiers {
                match verifier.verify(&beat, wall) {
                    Ok(_) => return Ok(None),
                    Err(e) => keep(e),
                }
            }
        }
        BeatCheck::Nonce(verifiers) => {
            if !body.contains_key("nonce") {
                return Err(refused(HeartbeatRefusal::NoNonce));
            }
            let beat: NonceHeartbeat = serde_json::from_value(Value::Object(body.clone()))
                .map_err(|e| format!("malformed heartbeat: {e}"))?;
            for verifier in verifiers {
                match verifier.verify(&beat, now, wall) {
                    Ok(fresh) => return Ok(Some(fresh.skew_ms)),
                    Err(e) => keep(e),
                }
            }
        }
    }
    Err(refused(refusal))
}

//! The one entry point that decides whether a command may run.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ed25519_dalek::VerifyingKey;

use crate::keys;
use crate::refusal::WindowSide;
use crate::replay::{ReplayEntry, ReplayGuard};
use crate::timestamp::{nanos_to_system_time, system_time_nanos};
use crate::{Authorities, Refusal, SignedCommand};

/// How old and how far in the future a command may be (CIRIS: 5 minutes
/// old, 1 minute ahead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Freshness {
    /// Oldest accepted: `now - issued_at` may be at most this.
    pub max_age: Duration,
    /// Clock skew allowed: `issued_at - now` may be at most this.
    pub max_future: Duration,
}

impl Default for Freshness {
    fn default() -> Self {
        Freshness {
            max_age: Duration::from_secs(5 * 60),
            max_future: Duration::from_secs(60),
        }
    }
}

/// The command type that is never refused for the replay guard's
/// capacity: an emergency shutdown must not be kept out by another key's
/// volume (CIRIS's `SHUTDOWN_NOW`).
pub const EMERGENCY_TYPE: &str = "SHUTDOWN_NOW";

/// A command that passed every check of a [`Verifier`].
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedCommand {
    command: SignedCommand,
    authority_id: String,
    forget_after: SystemTime,
    /// The signing key, standard base64: the replay guard's owner.
    key: String,
}

impl VerifiedCommand {
    /// The command.
    pub fn command(&self) -> &SignedCommand {
        &self.command
    }

    /// The command, owned.
    pub fn into_command(self) -> SignedCommand {
        self.command
    }

    /// The authority that issued it: its enrolled id, or the command's
    /// `wa_id` when the key was enrolled without one.
    pub fn authority_id(&self) -> &str {
        &self.authority_id
    }

    /// When the command stops passing the freshness checks; a replay guard
    /// need remember its id only until then.
    pub fn forget_after(&self) -> SystemTime {
        self.forget_after
    }

    /// What a replay guard records for it: its id, owned by the key that
    /// signed it (each key has its own share of the guard), and never
    /// refused for capacity if it is an emergency shutdown.
    pub fn replay_entry(&self) -> ReplayEntry<'_> {
        ReplayEntry {
            command_id: &self.command.body.command_id,
            owner: &self.key,
            forget_after: self.forget_after,
            uncapped: self.command.body.command_type == EMERGENCY_TYPE,
        }
    }
}

/// Checks commands against enrolled authorities, freshness, this agent's
/// id and a replay guard.
///
/// [`verify`](Self::verify) runs the checks in CIRIS's order, so that a
/// command refused by CIRIS for a reason is refused here for the same
/// reason:
///
/// 1. the command type is supported (else `unsupported_command_type`);
/// 2. `issued_at` is in the freshness window (`timestamp_outside_window`),
///    then `expires_at` has not passed (`expired`);
/// 3. the key in `wa_public_key` decodes (`malformed`), is not weak
///    (`weak_key`), and the signature verifies strictly over the signing
///    bytes (`invalid_signature`);
/// 4. that key is enrolled (`unauthorized_key`), under this `wa_id` if
///    enrolled with an id (`wa_id_mismatch`), for this command type
///    (`command_type_not_allowed`);
/// 5. if this verifier knows its agent id (it checks for an agent), the
///    command is not for another agent (`wrong_target`) and, when it is
///    scoped to a subtree, this agent is in it (`outside_tree`; an agent
///    with no tree path is in no subtree);
/// 6. if it has a replay guard, the id is new (`replayed`); when the
///    command is accepted ([`accept`](Self::accept), or
///    [`record`](Self::record) after checks of the caller's own), it is
///    recorded durably first (`replay_store_unavailable`), in the share of
///    the key that signed it (an emergency shutdown is never refused for
///    capacity). This comes last so that only commands that passed
///    everything else take space in the guard.
///
/// No check reads the clock: `now` is passed in. Only
/// [`record`](Self::record) (and so [`accept`](Self::accept)) does I/O.
#[derive(Clone)]
pub struct Verifier {
    authorities: Authorities,
    supported: Option<BTreeSet<String>>,
    freshness: Freshness,
    own_agent_id: Option<String>,
    own_tree_path: Option<Vec<String>>,
    replay: Option<Arc<ReplayGuard>>,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("authorities", &self.authorities.len())
            .field("supported", &self.supported)
            .field("freshness", &self.freshness)
            .field("own_agent_id", &self.own_agent_id)
            .field("own_tree_path", &self.own_tree_path)
            .field("replay", &self.replay.is_some())
            .finish()
    }
}

impl Verifier {
    /// A verifier for `authorities`, with CIRIS freshness, supporting every
    /// command type some authority may issue, with no target check and no
    /// replay guard.
    pub fn new(authorities: Authorities) -> Verifier {
        Verifier {
            authorities,
            supported: None,
            freshness: Freshness::default(),
            own_agent_id: None,
            own_tree_path: None,
            replay: None,
        }
    }

    /// Supports only these command types (a CIRIS endpoint:
    /// `["SHUTDOWN_NOW"]`); others are `unsupported_command_type` before any
    /// other check.
    pub fn with_supported_types<I, S>(mut self, types: I) -> Verifier
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.supported = Some(types.into_iter().map(Into::into).collect());
        self
    }

    /// Uses another freshness window.
    pub fn with_freshness(mut self, freshness: Freshness) -> Verifier {
        self.freshness = freshness;
        self
    }

    /// Refuses commands whose `target_agent_id` names another agent.
    pub fn with_own_agent_id(mut self, id: impl Into<String>) -> Verifier {
        self.own_agent_id = Some(id.into());
        self
    }

    /// This agent's place in the tree (CIRIS `target_tree_path`): a
    /// command scoped to a subtree is accepted only if this path is in it.
    /// Checked with the agent id ([`with_own_agent_id`](Self::with_own_agent_id)):
    /// an agent without a tree path refuses every scoped command.
    pub fn with_own_tree_path(mut self, path: Vec<String>) -> Verifier {
        self.own_tree_path = Some(path);
        self
    }

    /// Accepts each command id once, through `guard`.
    pub fn with_replay_guard(mut self, guard: Arc<ReplayGuard>) -> Verifier {
        self.replay = Some(guard);
        self
    }

    /// Whether command ids are checked against a replay guard (and
    /// recorded in it).
    pub fn has_replay_guard(&self) -> bool {
        self.replay.is_some()
    }

    /// The enrolled authorities.
    pub fn authorities(&self) -> &Authorities {
        &self.authorities
    }

    /// The freshness window.
    pub fn freshness(&self) -> Freshness {
        self.freshness
    }

    /// Whether `command_type` is supported here.
    pub fn supports(&self, command_type: &str) -> bool {
        match &self.supported {
            Some(set) => set.contains(command_type),
            None => self.authorities.iter().any(|a| a.allows(command_type)),
        }
    }

    /// Runs every check (see the type's documentation) without recording
    /// anything: with a replay guard, an id it already holds is refused
    /// (`replayed`), but a new one is not recorded. Does no I/O; call
    /// [`record`](Self::record) (or use [`accept`](Self::accept)) to take
    /// the id.
    pub fn verify(&self, cmd: &SignedCommand, now: SystemTime) -> Result<VerifiedCommand, Refusal> {
        let verified = self.check(cmd, now)?;
        if let Some(guard) = &self.replay
            && guard.contains(&cmd.body.command_id, now)
        {
            return Err(Refusal::Replayed {
                command_id: cmd.body.command_id.clone(),
            });
        }
        Ok(verified)
    }

    /// As [`verify`](Self::verify) for several commands, one answer each in
    /// order. Does no I/O.
    pub fn verify_batch(
        &self,
        cmds: &[SignedCommand],
        now: SystemTime,
    ) -> Vec<Result<VerifiedCommand, Refusal>> {
        cmds.iter().map(|c| self.verify(c, now)).collect()
    }

    /// Records verified commands' ids in the replay guard (step 6), with
    /// one write and one `fsync` for all of them; one answer each, in
    /// order: `replayed` for an id recorded meanwhile (or twice in
    /// `verified`), `replay_store_unavailable` when the guard cannot
    /// record. Without a replay guard every answer is `Ok`.
    ///
    /// This is the only step that does I/O: it may block on `fsync`; from
    /// async code, call it on a blocking thread.
    pub fn record(
        &self,
        verified: &[&VerifiedCommand],
        now: SystemTime,
    ) -> Vec<Result<(), Refusal>> {
        let Some(guard) = &self.replay else {
            return verified.iter().map(|_| Ok(())).collect();
        };
        let entries: Vec<ReplayEntry<'_>> = verified.iter().map(|v| v.replay_entry()).collect();
        guard
            .check_and_record_many(&entries, now)
            .into_iter()
            .map(|r| r.map_err(Refusal::from))
            .collect()
    }

    /// [`verify`](Self::verify), then [`record`](Self::record): the accept
    /// step of an agent, which runs a command only once it is recorded. A
    /// refused command leaves no trace.
    pub fn accept(&self, cmd: &SignedCommand, now: SystemTime) -> Result<VerifiedCommand, Refusal> {
        self.accept_batch(std::slice::from_ref(cmd), now)
            .pop()
            .unwrap_or(Err(Refusal::ReplayStoreUnavailable {
                detail: "no answer".into(),
            }))
    }

    /// As [`accept`](Self::accept) for several commands, one answer each in
    /// order; the ids of those that pass are recorded together, with one
    /// write and one `fsync`.
    pub fn accept_batch(
        &self,
        cmds: &[SignedCommand],
        now: SystemTime,
    ) -> Vec<Result<VerifiedCommand, Refusal>> {
        let mut answers = self.verify_batch(cmds, now);
        // 6. Replay, last: only fully verified commands are recorded.
        let passed: Vec<usize> = (0..answers.len()).filter(|&i| answers[i].is_ok()).collect();
        let recorded = {
            let verified: Vec<&VerifiedCommand> =
                answers.iter().filter_map(|a| a.as_ref().ok()).collect();
            self.record(&verified, now)
        };
        for (i, r) in passed.into_iter().zip(recorded) {
            if let Err(refusal) = r {
                answers[i] = Err(refusal);
            }
        }
        answers
    }

    /// Steps 1 to 5.
    fn check(&self, cmd: &SignedCommand, now: SystemTime) -> Result<VerifiedCommand, Refusal> {
        // 1. Command type.
        if !self.supports(&cmd.body.command_type) {
            return Err(Refusal::UnsupportedCommandType {
                command_type: cmd.body.command_type.clone(),
            });
        }

        // 2. Time window, then expiry (CIRIS's comparisons: strictly more
        // than the limits is refused).
        let now_ns = system_time_nanos(now);
        let issued_ns = cmd.body.issued_at.unix_nanos();
        let max_age = duration_nanos(self.freshness.max_age);
        let max_future = duration_nanos(self.freshness.max_future);
        if now_ns - issued_ns > max_age {
            return Err(Refusal::OutsideWindow {
                side: WindowSide::TooOld,
            });
        }
        if issued_ns - now_ns > max_future {
            return Err(Refusal::OutsideWindow {
                side: WindowSide::InFuture,
            });
        }
        let mut forget_after_ns = issued_ns.saturating_add(max_age);
        if let Some(expires_at) = &cmd.body.expires_at {
            let expires_ns = expires_at.unix_nanos();
            if now_ns > expires_ns {
                return Err(Refusal::Expired);
            }
            forget_after_ns = forget_after_ns.min(expires_ns);
        }

        // 3. Signature, over the key the command carries. An enrolled key
        // is taken already decompressed from the authorities (the same
        // key, so the same answer, without the ~10 µs of decompression);
        // whether it is enrolled is only reported after the signature.
        let key_bytes =
            keys::decode_fixed::<32>(&cmd.wa_public_key, "public key").map_err(malformed)?;
        let enrolled = self.authorities.get_bytes(&key_bytes);
        let key = match enrolled {
            Some(authority) => *authority.public_key(),
            None => VerifyingKey::from_bytes(&key_bytes)
                .map_err(|_| malformed(keys::KeyError::NotAPoint))?,
        };
        if key.is_weak() {
            return Err(Refusal::WeakKey);
        }
        let signature = keys::decode_signature(&cmd.signature).map_err(malformed)?;
        let message = cmd.signing_bytes().map_err(|e| Refusal::Malformed {
            detail: format!("args: {e}"),
        })?;
        key.verify_strict(&message, &signature)
            .map_err(|_| Refusal::InvalidSignature)?;

        // 4. Is that key an authority, for this wa_id and this type?
        let authority = enrolled.ok_or(Refusal::UnauthorizedKey)?;
        if let Some(id) = authority.id()
            && id != cmd.body.wa_id
        {
            return Err(Refusal::WaIdMismatch {
                wa_id: cmd.body.wa_id.clone(),
                enrolled: id.to_owned(),
            });
        }
        let authority_id = authority.id().unwrap_or(&cmd.body.wa_id).to_owned();
        if !authority.allows(&cmd.body.command_type) {
            return Err(Refusal::CommandTypeNotAllowed {
                authority: authority_id,
                command_type: cmd.body.command_type.clone(),
            });
        }

        // 5. Target: this agent, and its place in the tree.
        if let Some(own) = &self.own_agent_id {
            cmd.check_target(own)?;
            cmd.check_tree(self.own_tree_path.as_deref())?;
        }

        Ok(VerifiedCommand {
            command: cmd.clone(),
            authority_id,
            forget_after: nanos_to_system_time(forget_after_ns),
            key: keys::encode_public_key(authority.public_key()),
        })
    }
}

fn malformed(e: keys::KeyError) -> Refusal {
    Refusal::Malformed {
        detail: e.to_string(),
    }
}

fn duration_nanos(d: Duration) -> i128 {
    i128::try_from(d.as_nanos()).unwrap_or(i128::MAX)
}

//! Why a command was refused.

/// Which side of the freshness window a command fell on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WindowSide {
    /// Issued longer ago than the maximum age.
    TooOld,
    /// Issued further in the future than the allowed clock skew.
    InFuture,
}

/// Why [`Verifier::verify`](crate::Verifier::verify) refused a command.
///
/// Each variant has a stable machine code ([`code`](Self::code)) and a
/// message for people (`Display`). The messages of the variants CIRIS
/// defines are CIRIS's own `detail` strings.
///
/// | code | CIRIS status | message |
/// |---|---|---|
/// | `malformed` | 422 | Malformed command: … |
/// | `unsupported_command_type` | 400 | Unsupported command type … |
/// | `timestamp_outside_window` | 403 | Command timestamp outside acceptable window |
/// | `expired` | 403 | Command expired |
/// | `invalid_signature` | 403 | Invalid signature |
/// | `weak_key` | 403 | Weak public key (small order) |
/// | `unauthorized_key` | 403 | Unauthorized public key |
/// | `wa_id_mismatch` | 403 | wa_id … does not match … |
/// | `command_type_not_allowed` | 403 | Authority … may not issue … |
/// | `wrong_target` | 403 | Command is for agent …, not … |
/// | `outside_tree` | 403 | Command is for the subtree …, and this agent … |
/// | `replayed` | 409 | Command … was already accepted |
/// | `replay_store_unavailable` | 503 | Replay guard unavailable: … |
///
/// CIRIS itself answers an expired command with the window message; a
/// CIRIS-compatible endpoint can do the same.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// A field could not be decoded (base64, length, curve point), or the
    /// command could not be parsed at all.
    #[error("Malformed command: {detail}")]
    Malformed {
        /// What is wrong.
        detail: String,
    },
    /// No authority may issue this command type here.
    #[error("Unsupported command type {command_type:?}")]
    UnsupportedCommandType {
        /// The command's type.
        command_type: String,
    },
    /// `issued_at` is too old or too far in the future.
    #[error("Command timestamp outside acceptable window")]
    OutsideWindow {
        /// Which side.
        side: WindowSide,
    },
    /// `expires_at` has passed.
    #[error("Command expired")]
    Expired,
    /// The signature does not verify (strictly) against `wa_public_key`.
    #[error("Invalid signature")]
    InvalidSignature,
    /// `wa_public_key` is a small-order point, which signs anything.
    #[error("Weak public key (small order)")]
    WeakKey,
    /// `wa_public_key` is not an enrolled authority.
    #[error("Unauthorized public key")]
    UnauthorizedKey,
    /// The key is enrolled under another authority id.
    #[error("wa_id {wa_id:?} does not match the authority {enrolled:?} enrolled for this key")]
    WaIdMismatch {
        /// The command's `wa_id`.
        wa_id: String,
        /// The id the key was enrolled with.
        enrolled: String,
    },
    /// The authority is enrolled, but not for this command type.
    #[error("Authority {authority:?} may not issue {command_type:?}")]
    CommandTypeNotAllowed {
        /// The authority's id (or `wa_id` when enrolled without one).
        authority: String,
        /// The command's type.
        command_type: String,
    },
    /// The command names another agent.
    #[error("Command is for agent {target:?}, not {own:?}")]
    WrongTarget {
        /// The command's `target_agent_id`.
        target: String,
        /// This agent's id.
        own: String,
    },
    /// The command is scoped to a subtree (`target_tree_path`) that this
    /// agent is not in, or this agent has no place in the tree.
    #[error("Command is for the subtree {}, and this agent {}", path_text(target), match own {
        Some(own) => format!("is at {}, outside it", path_text(own)),
        None => "has no place in the tree".to_owned(),
    })]
    OutsideTree {
        /// The command's `target_tree_path`.
        target: Vec<String>,
        /// This agent's tree path, if it has one.
        own: Option<Vec<String>>,
    },
    /// The command id was already accepted.
    #[error("Command {command_id:?} was already accepted")]
    Replayed {
        /// The command id.
        command_id: String,
    },
    /// The replay guard could not record the command durably (or is full),
    /// so the command is refused rather than risk running it twice.
    #[error("Replay guard unavailable: {detail}")]
    ReplayStoreUnavailable {
        /// The guard's error.
        detail: String,
    },
}

impl Refusal {
    /// A stable machine-readable code (see the table on [`Refusal`]).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::Malformed { .. } => "malformed",
            Refusal::UnsupportedCommandType { .. } => "unsupported_command_type",
            Refusal::OutsideWindow { .. } => "timestamp_outside_window",
            Refusal::Expired => "expired",
            Refusal::InvalidSignature => "invalid_signature",
            Refusal::WeakKey => "weak_key",
            Refusal::UnauthorizedKey => "unauthorized_key",
            Refusal::WaIdMismatch { .. } => "wa_id_mismatch",
            Refusal::CommandTypeNotAllowed { .. } => "command_type_not_allowed",
            Refusal::WrongTarget { .. } => "wrong_target",
            Refusal::OutsideTree { .. } => "outside_tree",
            Refusal::Replayed { .. } => "replayed",
            Refusal::ReplayStoreUnavailable { .. } => "replay_store_unavailable",
        }
    }

    /// The message for people (the same as `Display`).
    pub fn message(&self) -> String {
        self.to_string()
    }
}

/// A tree path for people: its entries as JSON strings, joined by `/`.
fn path_text(path: &[String]) -> String {
    let parts: Vec<String> = path
        .iter()
        .map(|p| serde_json::to_string(p).unwrap_or_default())
        .collect();
    format!("[{}]", parts.join(", "))
}

impl From<crate::CommandParseError> for Refusal {
    fn from(e: crate::CommandParseError) -> Self {
        Refusal::Malformed {
            detail: e.to_string(),
        }
    }
}

//! What a client reports back: the bodies of `cmd:ack` and `fs:report`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How a client answered a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    /// Verified and run; `result` holds what the handler returned.
    Done,
    /// Verified, run, and the handler failed; `detail` says how.
    Failed,
    /// Not run: the command failed verification; `code` and `detail` say why.
    Refused,
}

/// Why a command was not done: the `code` of a `cmd:ack`, one name shared
/// by the client that writes it and the server that reads it.
///
/// The refusals of the command checks carry `vigil-command`'s
/// `Refusal::code` (a test there checks every one is named here); the
/// client adds its own. A code this version does not know (a newer
/// peer's) is kept as it was sent, in [`AckCode::Other`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum AckCode {
    /// The body is not a command of the right shape.
    Malformed,
    /// `issued_at` or `expires_at` has no UTC offset.
    TimestampWithoutOffset,
    /// The command type is not one this agent takes.
    UnsupportedCommandType,
    /// `issued_at` is outside the freshness window.
    TimestampOutsideWindow,
    /// `expires_at` has passed.
    Expired,
    /// The signature does not verify.
    InvalidSignature,
    /// The signing key is a weak (small-order) key.
    WeakKey,
    /// The signing key is not an enrolled authority.
    UnauthorizedKey,
    /// The key is enrolled under another `wa_id`.
    WaIdMismatch,
    /// The key may not issue this command type.
    CommandTypeNotAllowed,
    /// The command is for another agent.
    WrongTarget,
    /// The command is for a subtree this agent is not in.
    OutsideTree,
    /// The command id was accepted before.
    Replayed,
    /// The replay guard could not record the id, so the command did not run.
    ReplayStoreUnavailable,
    /// The client's queue of commands was full; the command was not
    /// checked, so it may be sent again.
    Busy,
    /// The client takes no commands.
    CommandsDisabled,
    /// The command ran past its time.
    Timeout,
    /// The client failed before it could answer otherwise.
    Internal,
    /// A code this version does not know, as it was sent.
    Other(String),
}

impl AckCode {
    const KNOWN: [(AckCode, &'static str); 18] = [
        (AckCode::Malformed, "malformed"),
        (AckCode::TimestampWithoutOffset, "timestamp_without_offset"),
        (AckCode::UnsupportedCommandType, "unsupported_command_type"),
        (AckCode::TimestampOutsideWindow, "timestamp_outside_window"),
        (AckCode::Expired, "expired"),
        (AckCode::InvalidSignature, "invalid_signature"),
        (AckCode::WeakKey, "weak_key"),
        (AckCode::UnauthorizedKey, "unauthorized_key"),
        (AckCode::WaIdMismatch, "wa_id_mismatch"),
        (AckCode::CommandTypeNotAllowed, "command_type_not_allowed"),
        (AckCode::WrongTarget, "wrong_target"),
        (AckCode::OutsideTree, "outside_tree"),
        (AckCode::Replayed, "replayed"),
        (AckCode::ReplayStoreUnavailable, "replay_store_unavailable"),
        (AckCode::Busy, "busy"),
        (AckCode::CommandsDisabled, "commands_disabled"),
        (AckCode::Timeout, "timeout"),
        (AckCode::Internal, "internal"),
    ];

    /// The wire name.
    pub fn as_str(&self) -> &str {
        match self {
            AckCode::Other(code) => code,
            known => AckCode::KNOWN
                .iter()
                .find(|(c, _)| c == known)
                .map_or("", |(_, name)| name),
        }
    }

    /// The code named `name`; [`AckCode::Other`] for a name not known here.
    pub fn parse(name: &str) -> AckCode {
        AckCode::KNOWN
            .iter()
            .find(|(_, n)| *n == name)
            .map_or_else(|| AckCode::Other(name.to_owned()), |(c, _)| c.clone())
    }

    /// Whether this version knows the code.
    pub fn is_known(&self) -> bool {
        !matches!(self, AckCode::Other(_))
    }
}

impl std::fmt::Display for AckCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<&str> for AckCode {
    fn from(name: &str) -> AckCode {
        AckCode::parse(name)
    }
}

impl Serialize for AckCode {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for AckCode {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<AckCode, D::Error> {
        let name = String::deserialize(deserializer)?;
        Ok(AckCode::parse(&name))
    }
}

/// The body of `cmd:ack:<ref>`: a client's answer to `cmd:exec:<ref>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The command's id (`null` if the command could not be parsed).
    pub command_id: Option<String>,
    /// What happened.
    pub status: AckStatus,
    /// A machine-readable reason for a refusal (or a failure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<AckCode>,
    /// A reason or error, for a person.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
    /// What the handler returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
}

/// The body of `fs:report:<ref>`: a failsafe transition, reported by a
/// client once it can reach the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailsafeReport {
    /// `fired` or `rearmed`.
    pub event: String,
    /// When it happened (RFC 3339, from the client's clock).
    pub at: String,
    /// How long no verified message had arrived (fired), or how long the
    /// outage lasted (rearmed), in milliseconds.
    pub silent_ms: u64,
    /// The break commands run when it fired, with their outcome.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub break_commands: Vec<BreakOutcome>,
    /// The client's last measured clock offset from the server (server
    /// minus client, milliseconds), if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew_ms: Option<i64>,
}

/// One break command's outcome in a [`FailsafeReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakOutcome {
    /// The command.
    pub command: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// Its result or error.
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_codes_keep_their_names_and_unknown_ones_survive() {
        for (code, name) in AckCode::KNOWN {
            assert_eq!(code.as_str(), name);
            assert_eq!(AckCode::parse(name), code);
        }
        let ack: Ack = serde_json::from_str(
            r#"{"command_id":"c","status":"refused","code":"from_a_newer_peer"}"#,
        )
        .expect("parse");
        assert_eq!(ack.code, Some(AckCode::Other("from_a_newer_peer".into())));
        assert!(!AckCode::parse("from_a_newer_peer").is_known());
        let back = serde_json::to_string(&ack).expect("write");
        assert!(back.contains(r#""code":"from_a_newer_peer""#), "{back}");
        assert_eq!(
            serde_json::to_string(&AckCode::Replayed).expect("write"),
            r#""replayed""#
        );
    }
    use crate::{ClientRequest, Frame};

    #[test]
    fn acks_and_reports_round_trip() {
        let ack = ClientRequest::Ack(Ack {
            command_id: Some("c-1".into()),
            status: AckStatus::Refused,
            code: Some("invalid_signature".into()),
            detail: "Invalid signature".into(),
            result: None,
        });
        let frame = ack.to_frame("d7");
        let bytes = frame.to_bytes();
        assert_eq!(
            bytes,
            b"cmd:ack:d7 {\"code\":\"invalid_signature\",\"command_id\":\"c-1\",\"detail\":\"Invalid signature\",\"status\":\"refused\"}\n"
        );
        let parsed = Frame::parse(&bytes[..bytes.len() - 1]).expect("frame");
        assert_eq!(ClientRequest::from_frame(&parsed).expect("ack"), ack);
        let report = ClientRequest::FailsafeReport(FailsafeReport {
            event: "fired".into(),
            at: "2026-01-01T00:00:00Z".into(),
            silent_ms: 15_000,
            break_commands: vec![BreakOutcome {
                command: "lock".into(),
                ok: true,
                detail: String::new(),
            }],
            clock_skew_ms: Some(-45_000),
        });
        let frame = report.to_frame("r1");
        let text = String::from_utf8_lossy(&frame.to_bytes()).into_owned();
        assert!(text.contains("\"clock_skew_ms\":-45000"), "{text}");
        assert_eq!(ClientRequest::from_frame(&frame).expect("report"), report);
    }
}

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

/// The body of `cmd:ack:<ref>`: a client's answer to `cmd:exec:<ref>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The command's id (`null` if the command could not be parsed).
    pub command_id: Option<String>,
    /// What happened.
    pub status: AckStatus,
    /// A machine-readable reason for a refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
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
        });
        let frame = report.to_frame("r1");
        assert_eq!(ClientRequest::from_frame(&frame).expect("report"), report);
    }
}

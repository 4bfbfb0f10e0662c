//! The signed command and its CIRIS signing bytes.

use ed25519_dalek::{Signer as _, SigningKey};
use serde::Deserialize;
use serde_json::Value;

use crate::pyjson::{self, CanonicalJsonError};
use crate::timestamp::{Timestamp, TimestampError};
use crate::{Refusal, keys};

mod signing;
mod wire;

use signing::SignView;
use wire::{Limits, RawCommand};

/// Largest command body [`SignedCommand::from_json`] reads, in bytes.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;
/// Longest identifier (`command_id`, `wa_id`, `target_agent_id`,
/// `parent_command_id`, `command`, each path or relay entry), in bytes.
pub const MAX_ID_LEN: usize = 256;
/// Longest `command_type`, in bytes.
pub const MAX_TYPE_LEN: usize = 64;
/// Longest `reason`, in bytes.
pub const MAX_REASON_LEN: usize = 16 * 1024;
/// Most entries in `target_tree_path` or `relay_chain`.
pub const MAX_LIST_LEN: usize = 64;

/// Why a command body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandParseError {
    /// `issued_at` or `expires_at` has no UTC offset. CIRIS answers 400.
    #[error("{field}: {source}")]
    MissingOffset {
        /// `issued_at` or `expires_at`.
        field: &'static str,
        /// The timestamp error.
        source: TimestampError,
    },
    /// `issued_at` or `expires_at` is not a valid timestamp.
    #[error("{field}: {source}")]
    Timestamp {
        /// `issued_at` or `expires_at`.
        field: &'static str,
        /// The timestamp error.
        source: TimestampError,
    },
    /// The body is not JSON of the right shape: a missing or unknown field,
    /// a wrong type, a duplicate key. CIRIS answers 422.
    #[error("malformed command: {0}")]
    Json(String),
    /// A field is longer than its limit.
    #[error("{field} is longer than {limit} {unit}")]
    TooLong {
        /// The field.
        field: &'static str,
        /// The limit.
        limit: usize,
        /// "bytes" or "entries".
        unit: &'static str,
    },
    /// The body is larger than [`MAX_COMMAND_BYTES`].
    #[error("command body of {0} bytes is larger than the {MAX_COMMAND_BYTES}-byte limit")]
    TooLarge(usize),
}

impl CommandParseError {
    /// A stable machine-readable code: `timestamp_without_offset` for
    /// [`MissingOffset`](Self::MissingOffset) (CIRIS: 400), `malformed` for
    /// everything else (CIRIS: 422).
    pub fn code(&self) -> &'static str {
        match self {
            CommandParseError::MissingOffset { .. } => "timestamp_without_offset",
            _ => "malformed",
        }
    }
}

/// A command signed by an authority key: the CIRIS `WASignedCommand`,
/// extended with an optional `command` and `args` for general commands.
///
/// Serde reads and writes exactly these JSON field names; an unknown field
/// is an error. Timestamps are written back as Python's `isoformat()` (`Z`
/// becomes `+00:00`), which is also their form in the signing bytes, so a
/// command survives a round trip with its signature intact.
///
/// Construct one with [`UnsignedCommand::sign`]; read one with
/// [`SignedCommand::from_json`]; check one with
/// [`Verifier::verify`](crate::Verifier::verify).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(try_from = "RawCommand")]
pub struct SignedCommand {
    /// What was signed, and the routing fields that travel with it
    /// unsigned (`parent_command_id`, `relay_chain`).
    pub body: UnsignedCommand,
    /// Base64 of the raw 32-byte Ed25519 public key that signed.
    pub wa_public_key: String,
    /// Base64 of the 64-byte Ed25519 signature over the signing bytes.
    pub signature: String,
}

impl SignedCommand {
    /// Reads a command from a JSON body.
    ///
    /// Besides the shape, this refuses bodies over [`MAX_COMMAND_BYTES`] and
    /// integers in `args` outside the 64-bit range (they could not be signed
    /// exactly as Python signs them). Deserializing through serde directly
    /// skips those two checks; such a command then fails verification.
    pub fn from_json(body: &[u8]) -> Result<SignedCommand, CommandParseError> {
        if body.len() > MAX_COMMAND_BYTES {
            return Err(CommandParseError::TooLarge(body.len()));
        }
        let raw: RawCommand =
            serde_json::from_slice(body).map_err(|e| CommandParseError::Json(e.to_string()))?;
        pyjson::check_integer_literals(body).map_err(CommandParseError::Json)?;
        SignedCommand::try_from(raw)
    }

    /// The JSON text of this command.
    pub fn to_json(&self) -> String {
        // Every field serializes infallibly: strings, timestamps as strings,
        // and a `Value`.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The exact bytes the signature covers: Python's
    /// `json.dumps(sign_data, sort_keys=True).encode()`.
    ///
    /// `sign_data` holds `command_id`, `command_type`, `wa_id`, `issued_at`
    /// (isoformat), `reason` and `target_agent_id` (`null` when absent),
    /// plus `expires_at` when set, `target_tree_path` when not empty, and
    /// `command` and `args` when present.
    pub fn signing_bytes(&self) -> Result<Vec<u8>, CanonicalJsonError> {
        self.body.signing_bytes()
    }

    /// Refuses the command when it names a target agent other than
    /// `own_agent_id`. A command without a target is for every agent.
    pub fn check_target(&self, own_agent_id: &str) -> Result<(), Refusal> {
        match &self.body.target_agent_id {
            Some(target) if target != own_agent_id => Err(Refusal::WrongTarget {
                target: target.clone(),
                own: own_agent_id.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// Refuses the command when it is scoped to a subtree
    /// (`target_tree_path`, not empty) that does not hold `own_tree_path`.
    /// CIRIS's semantics: the command applies to the agents at that path
    /// and below, so it applies here when it is a prefix of this agent's
    /// path. An agent with no place in the tree (`None`) is outside every
    /// subtree; an unscoped command is for every agent.
    pub fn check_tree(&self, own_tree_path: Option<&[String]>) -> Result<(), Refusal> {
        let Some(target) = self
            .body
            .target_tree_path
            .as_deref()
            .filter(|t| !t.is_empty())
        else {
            return Ok(());
        };
        match own_tree_path {
            Some(own) if own.starts_with(target) => Ok(()),
            own => Err(Refusal::OutsideTree {
                target: target.to_vec(),
                own: own.map(<[String]>::to_vec),
            }),
        }
    }

    /// Signs `fields` with `key`; shorthand for [`UnsignedCommand::sign`].
    pub fn sign(fields: UnsignedCommand, key: &SigningKey) -> Result<SignedCommand, SignError> {
        fields.sign(key)
    }
}

/// A command before signing: the signed fields and the unsigned routing
/// fields. [`sign`](Self::sign) fills in `wa_public_key` and `signature`.
///
/// ```
/// use vigil_command::{SigningKey, Timestamp, UnsignedCommand};
///
/// let key = SigningKey::from_bytes(&[1; 32]);
/// let issued = Timestamp::parse("2025-01-01T12:00:00Z")?;
/// let mut cmd = UnsignedCommand::new("cmd_1", "EXEC", "wa_ops", issued, "rotate logs");
/// cmd.command = Some("logrotate".into());
/// cmd.args = Some(serde_json::json!({"force": true}));
/// let signed = cmd.sign(&key)?;
/// assert!(signed.to_json().contains("\"signature\""));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct UnsignedCommand {
    /// Unique id.
    pub command_id: String,
    /// What kind of command, e.g. `SHUTDOWN_NOW`.
    pub command_type: String,
    /// The issuing authority's id.
    pub wa_id: String,
    /// When it was issued.
    pub issued_at: Timestamp,
    /// When it stops being valid.
    pub expires_at: Option<Timestamp>,
    /// Why.
    pub reason: String,
    /// The agent it is meant for; `None` for all.
    pub target_agent_id: Option<String>,
    /// Where in an agent tree it is meant for.
    pub target_tree_path: Option<Vec<String>>,
    /// The command it derives from (not signed).
    pub parent_command_id: Option<String>,
    /// Relays (not signed).
    pub relay_chain: Vec<String>,
    /// vigil extension: the command name.
    pub command: Option<String>,
    /// vigil extension: the arguments.
    pub args: Option<Value>,
}

impl UnsignedCommand {
    /// A command with the required fields and nothing optional.
    pub fn new(
        command_id: impl Into<String>,
        command_type: impl Into<String>,
        wa_id: impl Into<String>,
        issued_at: Timestamp,
        reason: impl Into<String>,
    ) -> UnsignedCommand {
        UnsignedCommand {
            command_id: command_id.into(),
            command_type: command_type.into(),
            wa_id: wa_id.into(),
            issued_at,
            expires_at: None,
            reason: reason.into(),
            target_agent_id: None,
            target_tree_path: None,
            parent_command_id: None,
            relay_chain: Vec::new(),
            command: None,
            args: None,
        }
    }

    /// The bytes [`sign`](Self::sign) signs; see
    /// [`SignedCommand::signing_bytes`].
    pub fn signing_bytes(&self) -> Result<Vec<u8>, CanonicalJsonError> {
        SignView::of_unsigned(self).bytes()
    }

    /// Refuses a command that clients would refuse to read: a field or a
    /// list past its limit. Signing checks this first.
    pub fn check(&self) -> Result<(), CommandParseError> {
        Limits {
            command_id: &self.command_id,
            command_type: &self.command_type,
            wa_id: &self.wa_id,
            reason: &self.reason,
            target_agent_id: self.target_agent_id.as_deref(),
            parent_command_id: self.parent_command_id.as_deref(),
            command: self.command.as_deref(),
            target_tree_path: self.target_tree_path.as_deref(),
            relay_chain: &self.relay_chain,
        }
        .check()
    }

    /// Checks the fields ([`check`](Self::check)) and signs with `key`,
    /// filling in `wa_public_key` (standard base64 of the public key) and
    /// `signature` (standard base64).
    pub fn sign(self, key: &SigningKey) -> Result<SignedCommand, SignError> {
        self.check()?;
        let message = self.signing_bytes()?;
        let signature = key.sign(&message);
        Ok(SignedCommand {
            wa_public_key: keys::encode_public_key(&key.verifying_key()),
            signature: keys::encode_signature(&signature),
            body: self,
        })
    }
}

/// Why a command could not be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// A field is past its limit: clients would refuse the command.
    #[error(transparent)]
    Invalid(#[from] CommandParseError),
    /// The arguments have no canonical JSON form (a non-finite number,
    /// nesting past the limit).
    #[error(transparent)]
    Canonical(#[from] CanonicalJsonError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse(s).expect("timestamp")
    }

    fn bytes(c: &UnsignedCommand) -> String {
        String::from_utf8(c.signing_bytes().expect("bytes")).expect("ascii")
    }

    fn base() -> UnsignedCommand {
        UnsignedCommand::new(
            "cmd_1",
            "SHUTDOWN_NOW",
            "wa_1",
            ts("2025-01-01T12:00:00Z"),
            "Emergency maintenance required",
        )
    }

    #[test]
    fn null_args_are_the_same_as_no_args() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let mut c = UnsignedCommand::new(
            "n1",
            "RUN",
            "wa",
            Timestamp::parse("2025-01-01T12:00:00Z").expect("ts"),
            "r",
        );
        c.command = Some("x".into());
        c.args = Some(Value::Null);
        let signed = c.sign(&key).expect("sign");
        let json = signed.to_json();
        assert!(!json.contains("\"args\""), "{json}");
        let back = SignedCommand::from_json(json.as_bytes()).expect("parse");
        assert_eq!(
            back.signing_bytes().expect("bytes"),
            signed.signing_bytes().expect("bytes")
        );
    }

    #[test]
    fn minimal_command_signs_the_seed_fields() {
        assert_eq!(
            bytes(&base()),
            r#"{"command_id": "cmd_1", "command_type": "SHUTDOWN_NOW", "issued_at": "2025-01-01T12:00:00+00:00", "reason": "Emergency maintenance required", "target_agent_id": null, "wa_id": "wa_1"}"#
        );
    }

    #[test]
    fn optional_fields_are_signed_only_when_present() {
        let mut c = base();
        c.issued_at = ts("2025-01-01T12:00:00.123+05:30");
        c.expires_at = Some(ts("2025-01-01T12:05:00.000001-03:00"));
        c.target_agent_id = Some("agent/7".into());
        c.target_tree_path = Some(vec!["root".into(), "é".into()]);
        c.parent_command_id = Some("not signed".into());
        c.relay_chain = vec!["not signed".into()];
        assert_eq!(
            bytes(&c),
            r#"{"command_id": "cmd_1", "command_type": "SHUTDOWN_NOW", "expires_at": "2025-01-01T12:05:00.000001-03:00", "issued_at": "2025-01-01T12:00:00.123000+05:30", "reason": "Emergency maintenance required", "target_agent_id": "agent/7", "target_tree_path": ["root", "\u00e9"], "wa_id": "wa_1"}"#
        );
        c.target_tree_path = Some(vec![]);
        assert!(!bytes(&c).contains("target_tree_path"));
    }

    #[test]
    fn tricky_reason_is_escaped_as_python_does() {
        let mut c = base();
        c.reason = "Arrêt — 緊急 🚨\n\t\r\u{8}\u{c}\u{1}\u{7f} \"q\" \\ /".into();
        assert_eq!(
            bytes(&c),
            r#"{"command_id": "cmd_1", "command_type": "SHUTDOWN_NOW", "issued_at": "2025-01-01T12:00:00+00:00", "reason": "Arr\u00eat \u2014 \u7dca\u6025 \ud83d\udea8\n\t\r\b\f\u0001\u007f \"q\" \\ /", "target_agent_id": null, "wa_id": "wa_1"}"#
        );
    }

    #[test]
    fn extension_fields_are_signed_and_sorted() {
        let mut c = base();
        c.command = Some("exec".into());
        c.args = Some(json!({"z": [1.0, 1e16, 1.5e-5, 0.1], "a": {"y": null, "b": "x"}, "n": -3}));
        assert_eq!(
            bytes(&c),
            r#"{"args": {"a": {"b": "x", "y": null}, "n": -3, "z": [1.0, 1e+16, 1.5e-05, 0.1]}, "command": "exec", "command_id": "cmd_1", "command_type": "SHUTDOWN_NOW", "issued_at": "2025-01-01T12:00:00+00:00", "reason": "Emergency maintenance required", "target_agent_id": null, "wa_id": "wa_1"}"#
        );
        c.args = Some(json!("plain string args"));
        assert!(bytes(&c).starts_with(r#"{"args": "plain string args", "command": "exec", "#));
    }

    #[test]
    fn hand_written_key_order_is_sorted() {
        let mut c = base();
        c.expires_at = Some(ts("2025-01-01T12:05:00Z"));
        c.target_tree_path = Some(vec!["p".into()]);
        c.command = Some("c".into());
        c.args = Some(json!(1));
        let text = bytes(&c);
        let names = [
            "args",
            "command",
            "command_id",
            "command_type",
            "expires_at",
            "issued_at",
            "reason",
            "target_agent_id",
            "target_tree_path",
            "wa_id",
        ];
        let mut sorted = names;
        sorted.sort_unstable();
        assert_eq!(names, sorted);
        let positions: Vec<usize> = names
            .iter()
            .map(|n| text.find(&format!("\"{n}\": ")).expect(n))
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
    }

    #[test]
    fn json_round_trip_keeps_the_signature_valid() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let mut c = base();
        c.args = Some(json!({"delay": 5}));
        let signed = c.sign(&key).expect("sign");
        let text = signed.to_json();
        let back = SignedCommand::from_json(text.as_bytes()).expect("parse");
        assert_eq!(back, signed);
        assert_eq!(back.signing_bytes(), signed.signing_bytes());
    }

    #[test]
    fn parse_errors_are_typed() {
        let key = SigningKey::from_bytes(&[9; 32]);
        let signed = base().sign(&key).expect("sign");
        let mut v = serde_json::to_value(&signed).expect("value");

        v["issued_at"] = json!("2025-01-01T12:00:00");
        let e = SignedCommand::from_json(v.to_string().as_bytes()).expect_err("naive");
        assert!(
            matches!(
                e,
                CommandParseError::MissingOffset {
                    field: "issued_at",
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(e.code(), "timestamp_without_offset");

        v["issued_at"] = json!("2025-01-01T12:00:00Z");
        v["expires_at"] = json!("2025-01-01T12:00:00");
        let e = SignedCommand::from_json(v.to_string().as_bytes()).expect_err("naive");
        assert!(
            matches!(
                e,
                CommandParseError::MissingOffset {
                    field: "expires_at",
                    ..
                }
            ),
            "{e}"
        );

        v["expires_at"] = json!("soon");
        let e = SignedCommand::from_json(v.to_string().as_bytes()).expect_err("bad");
        assert!(matches!(e, CommandParseError::Timestamp { .. }), "{e}");
        assert_eq!(e.code(), "malformed");

        v["expires_at"] = Value::Null;
        v["extra"] = json!(1);
        let e = SignedCommand::from_json(v.to_string().as_bytes()).expect_err("unknown");
        assert!(
            matches!(e, CommandParseError::Json(ref m) if m.contains("extra")),
            "{e}"
        );

        let mut v = serde_json::to_value(&signed).expect("value");
        v.as_object_mut().expect("object").remove("reason");
        assert!(matches!(
            SignedCommand::from_json(v.to_string().as_bytes()),
            Err(CommandParseError::Json(_))
        ));

        let mut v = serde_json::to_value(&signed).expect("value");
        v["args"] = json!([1]);
        let text = v.to_string().replace("[1]", "[18446744073709551616]");
        assert!(matches!(
            SignedCommand::from_json(text.as_bytes()),
            Err(CommandParseError::Json(_))
        ));

        v["command_id"] = json!("x".repeat(MAX_ID_LEN + 1));
        assert!(matches!(
            SignedCommand::from_json(v.to_string().as_bytes()),
            Err(CommandParseError::TooLong {
                field: "command_id",
                ..
            })
        ));
        assert!(matches!(
            SignedCommand::from_json(&vec![b' '; MAX_COMMAND_BYTES + 1]),
            Err(CommandParseError::TooLarge(_))
        ));
    }

    #[test]
    fn ciris_example_body_parses() {
        let body = br#"{
          "command_id": "cmd_unique_id",
          "command_type": "SHUTDOWN_NOW",
          "wa_id": "wa_authority_001",
          "wa_public_key": "base64_encoded_public_key",
          "issued_at": "2025-01-01T12:00:00Z",
          "expires_at": null,
          "reason": "Emergency maintenance required",
          "target_agent_id": null,
          "target_tree_path": null,
          "signature": "base64_encoded_signature",
          "parent_command_id": null,
          "relay_chain": []
        }"#;
        let c = SignedCommand::from_json(body).expect("parse");
        assert_eq!(c.body.issued_at.isoformat(), "2025-01-01T12:00:00+00:00");
        assert_eq!(c.body.expires_at, None);
        assert!(c.body.relay_chain.is_empty());
        let out: Value = serde_json::from_str(&c.to_json()).expect("json");
        for field in [
            "command_id",
            "command_type",
            "wa_id",
            "wa_public_key",
            "issued_at",
            "expires_at",
            "reason",
            "target_agent_id",
            "target_tree_path",
            "signature",
            "parent_command_id",
            "relay_chain",
        ] {
            assert!(out.get(field).is_some(), "{field} missing from output");
        }
        assert!(out.get("command").is_none());
        assert!(out.get("args").is_none());
        // relay_chain may be left out, but not null (as pydantic).
        let no_chain =
            String::from_utf8_lossy(body).replace(",\n          \"relay_chain\": []", "");
        assert!(SignedCommand::from_json(no_chain.as_bytes()).is_ok());
        let null_chain =
            String::from_utf8_lossy(body).replace("\"relay_chain\": []", "\"relay_chain\": null");
        assert!(SignedCommand::from_json(null_chain.as_bytes()).is_err());
    }

    #[test]
    fn target_check() {
        let mut c = base()
            .sign(&SigningKey::from_bytes(&[3; 32]))
            .expect("sign");
        assert_eq!(c.check_target("agent_a"), Ok(()));
        c.body.target_agent_id = Some("agent_a".into());
        assert_eq!(c.check_target("agent_a"), Ok(()));
        let e = c.check_target("agent_b").expect_err("wrong target");
        assert_eq!(e.code(), "wrong_target");
    }
}

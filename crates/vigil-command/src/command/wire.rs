//! The wire form of a signed command: how it is written and read, and the
//! field limits that reading and signing both check.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::*;

/// The wire form, field by field in the order CIRIS writes them.
impl Serialize for SignedCommand {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let b = &self.body;
        let mut st = serializer.serialize_struct("SignedCommand", 14)?;
        st.serialize_field("command_id", &b.command_id)?;
        st.serialize_field("command_type", &b.command_type)?;
        st.serialize_field("wa_id", &b.wa_id)?;
        st.serialize_field("wa_public_key", &self.wa_public_key)?;
        st.serialize_field("issued_at", &b.issued_at)?;
        st.serialize_field("expires_at", &b.expires_at)?;
        st.serialize_field("reason", &b.reason)?;
        st.serialize_field("target_agent_id", &b.target_agent_id)?;
        st.serialize_field("target_tree_path", &b.target_tree_path)?;
        st.serialize_field("signature", &self.signature)?;
        st.serialize_field("parent_command_id", &b.parent_command_id)?;
        st.serialize_field("relay_chain", &b.relay_chain)?;
        if let Some(command) = &b.command {
            st.serialize_field("command", command)?;
        } else {
            st.skip_field("command")?;
        }
        if absent_args(&b.args) {
            st.skip_field("args")?;
        } else {
            st.serialize_field("args", &b.args)?;
        }
        st.end()
    }
}

fn absent_args(args: &Option<Value>) -> bool {
    args.as_ref().is_none_or(Value::is_null)
}

/// The wire form, with timestamps still text so that a missing offset can
/// be told apart from other errors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCommand {
    command_id: String,
    command_type: String,
    wa_id: String,
    wa_public_key: String,
    issued_at: String,
    #[serde(default)]
    expires_at: Option<String>,
    reason: String,
    #[serde(default)]
    target_agent_id: Option<String>,
    #[serde(default)]
    target_tree_path: Option<Vec<String>>,
    signature: String,
    #[serde(default)]
    parent_command_id: Option<String>,
    #[serde(default)]
    relay_chain: Vec<String>,
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    args: Option<Value>,
}

fn parse_time(field: &'static str, text: &str) -> Result<Timestamp, CommandParseError> {
    Timestamp::parse(text).map_err(|source| match source {
        TimestampError::MissingOffset { .. } => CommandParseError::MissingOffset { field, source },
        _ => CommandParseError::Timestamp { field, source },
    })
}

fn check_len(field: &'static str, value: &str, limit: usize) -> Result<(), CommandParseError> {
    if value.len() > limit {
        return Err(CommandParseError::TooLong {
            field,
            limit,
            unit: "bytes",
        });
    }
    Ok(())
}

fn check_list(field: &'static str, list: &[String]) -> Result<(), CommandParseError> {
    if list.len() > MAX_LIST_LEN {
        return Err(CommandParseError::TooLong {
            field,
            limit: MAX_LIST_LEN,
            unit: "entries",
        });
    }
    for entry in list {
        check_len(field, entry, MAX_ID_LEN)?;
    }
    Ok(())
}

/// The text fields of a command, borrowed from either form: their limits
/// are checked here, once, for parsing and for signing alike.
pub(super) struct Limits<'a> {
    pub(super) command_id: &'a str,
    pub(super) command_type: &'a str,
    pub(super) wa_id: &'a str,
    pub(super) reason: &'a str,
    pub(super) target_agent_id: Option<&'a str>,
    pub(super) parent_command_id: Option<&'a str>,
    pub(super) command: Option<&'a str>,
    pub(super) target_tree_path: Option<&'a [String]>,
    pub(super) relay_chain: &'a [String],
}

impl Limits<'_> {
    pub(super) fn check(&self) -> Result<(), CommandParseError> {
        check_len("command_id", self.command_id, MAX_ID_LEN)?;
        check_len("command_type", self.command_type, MAX_TYPE_LEN)?;
        check_len("wa_id", self.wa_id, MAX_ID_LEN)?;
        check_len("reason", self.reason, MAX_REASON_LEN)?;
        for (field, value) in [
            ("target_agent_id", self.target_agent_id),
            ("parent_command_id", self.parent_command_id),
            ("command", self.command),
        ] {
            if let Some(v) = value {
                check_len(field, v, MAX_ID_LEN)?;
            }
        }
        if let Some(path) = self.target_tree_path {
            check_list("target_tree_path", path)?;
        }
        check_list("relay_chain", self.relay_chain)
    }
}

impl TryFrom<RawCommand> for SignedCommand {
    type Error = CommandParseError;

    fn try_from(raw: RawCommand) -> Result<Self, Self::Error> {
        Limits {
            command_id: &raw.command_id,
            command_type: &raw.command_type,
            wa_id: &raw.wa_id,
            reason: &raw.reason,
            target_agent_id: raw.target_agent_id.as_deref(),
            parent_command_id: raw.parent_command_id.as_deref(),
            command: raw.command.as_deref(),
            target_tree_path: raw.target_tree_path.as_deref(),
            relay_chain: &raw.relay_chain,
        }
        .check()?;
        let issued_at = parse_time("issued_at", &raw.issued_at)?;
        let expires_at = raw
            .expires_at
            .as_deref()
            .map(|t| parse_time("expires_at", t))
            .transpose()?;
        Ok(SignedCommand {
            body: UnsignedCommand {
                command_id: raw.command_id,
                command_type: raw.command_type,
                wa_id: raw.wa_id,
                issued_at,
                expires_at,
                reason: raw.reason,
                target_agent_id: raw.target_agent_id,
                target_tree_path: raw.target_tree_path,
                parent_command_id: raw.parent_command_id,
                relay_chain: raw.relay_chain,
                command: raw.command,
                args: raw.args,
            },
            wa_public_key: raw.wa_public_key,
            signature: raw.signature,
        })
    }
}

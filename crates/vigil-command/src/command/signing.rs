//! The bytes a command's signature covers: Python's
//! `json.dumps(sign_data, sort_keys=True)`.

use super::*;

/// The signed fields of a command, borrowed.
pub(super) struct SignView<'a> {
    command_id: &'a str,
    command_type: &'a str,
    wa_id: &'a str,
    issued_at: &'a Timestamp,
    expires_at: Option<&'a Timestamp>,
    reason: &'a str,
    target_agent_id: Option<&'a str>,
    target_tree_path: Option<&'a [String]>,
    command: Option<&'a str>,
    args: Option<&'a Value>,
}

impl<'a> SignView<'a> {
    pub(super) fn of_unsigned(c: &'a UnsignedCommand) -> Self {
        SignView {
            command_id: &c.command_id,
            command_type: &c.command_type,
            wa_id: &c.wa_id,
            issued_at: &c.issued_at,
            expires_at: c.expires_at.as_ref(),
            reason: &c.reason,
            target_agent_id: c.target_agent_id.as_deref(),
            target_tree_path: c.target_tree_path.as_deref(),
            command: c.command.as_deref(),
            // `args: null` reads back as absent, so it is signed as absent.
            args: c.args.as_ref().filter(|v| !v.is_null()),
        }
    }

    /// Writes `sign_data` with its keys in sorted order. The keys are fixed,
    /// so the order is written out by hand (a test checks it is sorted):
    /// args, command, command_id, command_type, expires_at, issued_at,
    /// reason, target_agent_id, target_tree_path, wa_id.
    pub(super) fn bytes(&self) -> Result<Vec<u8>, CanonicalJsonError> {
        let mut out = String::with_capacity(256);
        let mut first = true;
        let mut key = |out: &mut String, name: &str| {
            if !first {
                out.push_str(", ");
            }
            first = false;
            pyjson::write_str(out, name);
            out.push_str(": ");
        };
        out.push('{');
        if let Some(args) = self.args {
            key(&mut out, "args");
            pyjson::write_value(&mut out, args)?;
        }
        if let Some(command) = self.command {
            key(&mut out, "command");
            pyjson::write_str(&mut out, command);
        }
        key(&mut out, "command_id");
        pyjson::write_str(&mut out, self.command_id);
        key(&mut out, "command_type");
        pyjson::write_str(&mut out, self.command_type);
        if let Some(expires_at) = self.expires_at {
            key(&mut out, "expires_at");
            pyjson::write_str(&mut out, &expires_at.isoformat());
        }
        key(&mut out, "issued_at");
        pyjson::write_str(&mut out, &self.issued_at.isoformat());
        key(&mut out, "reason");
        pyjson::write_str(&mut out, self.reason);
        key(&mut out, "target_agent_id");
        match self.target_agent_id {
            Some(t) => pyjson::write_str(&mut out, t),
            None => out.push_str("null"),
        }
        if let Some(path) = self.target_tree_path.filter(|p| !p.is_empty()) {
            key(&mut out, "target_tree_path");
            out.push('[');
            for (i, entry) in path.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                pyjson::write_str(&mut out, entry);
            }
            out.push(']');
        }
        key(&mut out, "wa_id");
        pyjson::write_str(&mut out, self.wa_id);
        out.push('}');
        Ok(out.into_bytes())
    }
}

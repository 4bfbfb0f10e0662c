//! Signing commands offline: `vigilctl sign` and the command that
//! `vigilctl emergency-shutdown` posts.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use serde::Deserialize;
use serde_json::Value;
use vigil_command::{SignedCommand, SigningKey, Timestamp, UnsignedCommand};

/// The fields of a command given as flags.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct CommandFlags {
    /// The authority id to sign as (`wa_id`); it must be the id the key is
    /// enrolled under in the receivers' authorities file, if it has one.
    #[arg(long, value_name = "ID")]
    pub(crate) wa_id: Option<String>,
    /// Command type: RUN (run --command through the client's handler) or
    /// SHUTDOWN_NOW (run the break commands, then stop) [default: RUN].
    #[arg(long = "type", value_name = "TYPE")]
    pub(crate) command_type: Option<String>,
    /// For RUN: the command name the client maps to a program.
    #[arg(long, value_name = "NAME")]
    pub(crate) command: Option<String>,
    /// The command's arguments, as JSON (e.g. '{"force": true}').
    #[arg(long, value_name = "JSON")]
    pub(crate) args: Option<String>,
    /// The agent it is for (`target_agent_id`: a client's key fingerprint
    /// or configured agent id); without it, every agent that receives it.
    #[arg(long, value_name = "ID")]
    pub(crate) target: Option<String>,
    /// Why: free text, signed and recorded.
    #[arg(long, value_name = "TEXT")]
    pub(crate) reason: Option<String>,
    /// Seconds until it expires (`expires_at`); receivers refuse it after
    /// that, and after 5 minutes in any case.
    #[arg(long, value_name = "SECS")]
    pub(crate) expires_in: Option<f64>,
    /// The command id [default: a new random `cmd_` id]. Receivers accept
    /// each id once.
    #[arg(long, value_name = "ID")]
    pub(crate) command_id: Option<String>,
}

/// A new random command id, `cmd_` and 32 hex digits.
pub(crate) fn new_command_id() -> anyhow::Result<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    let hex: String = hex::encode(bytes);
    Ok(format!("cmd_{hex}"))
}

/// Now, as a command timestamp.
pub(crate) fn now() -> anyhow::Result<Timestamp> {
    Timestamp::from_system_time(SystemTime::now()).context("the system clock is out of range")
}

/// Reads an Ed25519 signing key: base64 of its 32-byte seed, as `vigilctl
/// keygen` and `vigilctl init` write it.
pub(crate) fn load_key(path: &Path) -> anyhow::Result<SigningKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the signing key {}", path.display()))?;
    vigil_command::decode_signing_key(text.trim()).with_context(|| {
        format!(
            "signing key {}: expected base64 of a 32-byte Ed25519 seed (as `vigilctl keygen` \
             writes)",
            path.display()
        )
    })
}

fn parse_args(text: &str) -> anyhow::Result<Value> {
    serde_json::from_str(text).with_context(|| format!("--args is not JSON: {text:?}"))
}

impl CommandFlags {
    /// The unsigned command these flags describe, issued now.
    pub(crate) fn build(&self, default_reason: &str) -> anyhow::Result<UnsignedCommand> {
        let Some(wa_id) = self.wa_id.clone() else {
            bail!("--wa-id is required: the authority id the key signs as");
        };
        let issued = now()?;
        let id = match &self.command_id {
            Some(id) => id.clone(),
            None => new_command_id()?,
        };
        let reason = self
            .reason
            .clone()
            .unwrap_or_else(|| default_reason.to_owned());
        let command_type = self
            .command_type
            .clone()
            .unwrap_or_else(|| "RUN".to_owned());
        let mut cmd = UnsignedCommand::new(id, command_type, wa_id, issued, reason);
        if let Some(secs) = self.expires_in {
            let d = Duration::try_from_secs_f64(secs)
                .ok()
                .filter(|d| !d.is_zero())
                .with_context(|| {
                    format!("--expires-in must be a positive number of seconds, got {secs}")
                })?;
            cmd.expires_at = Some(
                cmd.issued_at
                    .checked_add(d)
                    .context("--expires-in is too far in the future")?,
            );
        }
        cmd.target_agent_id = self.target.clone();
        cmd.command = self.command.clone();
        cmd.args = self.args.as_deref().map(parse_args).transpose()?;
        check(&cmd)?;
        Ok(cmd)
    }

    /// Whether any field flag was given (they cannot be mixed with a file).
    pub(crate) fn any(&self) -> bool {
        self.wa_id.is_some()
            || self.command_type.is_some()
            || self.command.is_some()
            || self.args.is_some()
            || self.target.is_some()
            || self.reason.is_some()
            || self.expires_in.is_some()
            || self.command_id.is_some()
    }
}

/// What a receiver would refuse for sure, said before signing.
fn check(cmd: &UnsignedCommand) -> anyhow::Result<()> {
    anyhow::ensure!(!cmd.command_type.is_empty(), "the command type is empty");
    anyhow::ensure!(!cmd.wa_id.is_empty(), "the wa_id is empty");
    if cmd.command_type == "RUN" && cmd.command.as_deref().is_none_or(str::is_empty) {
        bail!("a RUN command needs a command name (--command NAME, or \"command\" in the file)");
    }
    Ok(())
}

/// An unsigned command file: the fields of [`UnsignedCommand`];
/// `command_id` and `issued_at` may be left out (a new id, now).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct UnsignedFile {
    #[serde(default)]
    command_id: Option<String>,
    command_type: String,
    wa_id: String,
    #[serde(default)]
    issued_at: Option<Timestamp>,
    #[serde(default)]
    expires_at: Option<Timestamp>,
    reason: String,
    #[serde(default)]
    target_agent_id: Option<String>,
    #[serde(default)]
    target_tree_path: Option<Vec<String>>,
    #[serde(default)]
    parent_command_id: Option<String>,
    #[serde(default)]
    relay_chain: Vec<String>,
    #[serde(default)]
    command: Option<String>,
    #[serde(default)]
    args: Option<Value>,
}

/// Reads a file, or standard input for `-`.
pub(crate) fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    if path == Path::new("-") {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read standard input")?;
        Ok(buf)
    } else {
        std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
    }
}

/// Reads an unsigned command file.
pub(crate) fn from_file(path: &Path) -> anyhow::Result<UnsignedCommand> {
    let name = path.display();
    let bytes = read_input(path)?;
    let value: Value =
        serde_json::from_slice(&bytes).with_context(|| format!("{name} is not JSON"))?;
    if value.get("signature").is_some() || value.get("wa_public_key").is_some() {
        bail!(
            "{name} is already signed (it has signature or wa_public_key); to sign it again, \
             remove both"
        );
    }
    let file: UnsignedFile = serde_json::from_value(value).with_context(|| {
        format!(
            "{name}: not an unsigned command (fields: command_type, wa_id, reason, and \
             optionally command_id, issued_at, expires_at, target_agent_id, target_tree_path, \
             parent_command_id, relay_chain, command, args)"
        )
    })?;
    let command_id = match file.command_id {
        Some(id) => id,
        None => new_command_id()?,
    };
    let issued_at = match file.issued_at {
        Some(t) => t,
        None => now()?,
    };
    let mut cmd = UnsignedCommand::new(
        command_id,
        file.command_type,
        file.wa_id,
        issued_at,
        file.reason,
    );
    cmd.expires_at = file.expires_at;
    cmd.target_agent_id = file.target_agent_id;
    cmd.target_tree_path = file.target_tree_path;
    cmd.parent_command_id = file.parent_command_id;
    cmd.relay_chain = file.relay_chain;
    cmd.command = file.command;
    cmd.args = file.args;
    check(&cmd).with_context(|| name.to_string())?;
    Ok(cmd)
}

/// Signs `cmd`, and checks that the result reads back as a valid command.
pub(crate) fn sign(cmd: UnsignedCommand, key: &SigningKey) -> anyhow::Result<SignedCommand> {
    let signed = cmd.sign(key).context("cannot compute the signing bytes")?;
    SignedCommand::from_json(signed.to_json().as_bytes())
        .context("receivers would refuse this command as malformed")?;
    Ok(signed)
}

/// `vigilctl sign`: the signed command, one line of JSON.
pub(crate) fn run(key: &Path, file: Option<&PathBuf>, flags: &CommandFlags) -> anyhow::Result<()> {
    let key = load_key(key)?;
    let unsigned = match file {
        Some(path) => {
            if flags.any() {
                bail!(
                    "give the command either as a file or as flags (--wa-id, --command, ...), \
                     not both"
                );
            }
            from_file(path)?
        }
        None => flags.build("signed with vigilctl")?,
    };
    let signed = sign(unsigned, &key)?;
    println!("{}", signed.to_json());
    Ok(())
}

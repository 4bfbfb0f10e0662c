//! Authority keys: who may issue which command types.
//!
//! The authorities file lists each enrolled Ed25519 key with the command
//! types it may issue, and optionally the authority id (`wa_id`) it must
//! sign as:
//!
//! ```json
//! {
//!   "authorities": [
//!     {"id": "wa_ops", "public_key": "<base64 of 32 bytes>", "commands": ["SHUTDOWN_NOW", "EXEC"]},
//!     {"public_key": "<base64>", "commands": ["SHUTDOWN_NOW"]}
//!   ]
//! }
//! ```
//!
//! Unknown fields, duplicate keys, empty command lists and weak
//! (small-order) keys are errors: a file that does not mean exactly what it
//! says is refused as a whole.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use crate::keys::{self, KeyError};

/// Largest authorities file read.
const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// What is wrong with an authority key or an authorities file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthorityError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is larger than the limit.
    #[error("{path}: {len} bytes is larger than the {MAX_FILE_BYTES}-byte limit")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
    },
    /// The text is not a valid authorities file.
    #[error("authorities file{}: {detail}", path_suffix(path))]
    Parse {
        /// The file, when read from one.
        path: Option<PathBuf>,
        /// What is wrong.
        detail: String,
    },
    /// A public key could not be decoded.
    #[error("authority {entry}: {source}")]
    Key {
        /// Which entry (its id, or its position).
        entry: String,
        /// The decoding error.
        source: KeyError,
    },
    /// A public key is a small-order point, which would accept forgeries.
    #[error("authority {entry}: weak (small-order) public key refused")]
    WeakKey {
        /// Which entry.
        entry: String,
    },
    /// An authority lists no command types.
    #[error("authority {entry}: lists no command types")]
    NoCommands {
        /// Which entry.
        entry: String,
    },
    /// A command type or id is empty or too long.
    #[error("authority {entry}: {detail}")]
    BadName {
        /// Which entry.
        entry: String,
        /// What is wrong.
        detail: String,
    },
    /// The same public key is enrolled twice.
    #[error("public key {key} is enrolled twice")]
    DuplicateKey {
        /// The key, base64.
        key: String,
    },
}

fn path_suffix(path: &Option<PathBuf>) -> String {
    path.as_ref()
        .map(|p| format!(" {}", p.display()))
        .unwrap_or_default()
}

/// One enrolled authority: a public key, the command types it may issue,
/// and optionally the `wa_id` it must sign as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorityKey {
    id: Option<String>,
    key: VerifyingKey,
    commands: BTreeSet<String>,
}

impl AuthorityKey {
    /// Enrols `key` for `commands`. Refuses weak keys, an empty command
    /// list and empty or overlong names.
    pub fn new<I, S>(
        id: Option<String>,
        key: VerifyingKey,
        commands: I,
    ) -> Result<Self, AuthorityError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let entry = id.clone().unwrap_or_else(|| keys::encode_public_key(&key));
        if key.is_weak() {
            return Err(AuthorityError::WeakKey { entry });
        }
        if let Some(id) = &id {
            check_name(&entry, "id", id, crate::command::MAX_ID_LEN)?;
        }
        let commands: BTreeSet<String> = commands.into_iter().map(Into::into).collect();
        if commands.is_empty() {
            return Err(AuthorityError::NoCommands { entry });
        }
        for c in &commands {
            check_name(&entry, "command type", c, crate::command::MAX_TYPE_LEN)?;
        }
        Ok(AuthorityKey { id, key, commands })
    }

    /// Enrols a base64 public key (standard or URL-safe, padded or not).
    pub fn from_base64<I, S>(
        id: Option<String>,
        public_key: &str,
        commands: I,
    ) -> Result<Self, AuthorityError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let key = keys::decode_public_key(public_key).map_err(|source| AuthorityError::Key {
            entry: id
                .clone()
                .unwrap_or_else(|| public_key.chars().take(64).collect()),
            source,
        })?;
        AuthorityKey::new(id, key, commands)
    }

    /// The authority id the key must sign as, if it was enrolled with one.
    pub fn id(&self) -> Option<&str> {
        self.id.as_deref()
    }

    /// The public key.
    pub fn public_key(&self) -> &VerifyingKey {
        &self.key
    }

    /// The command types it may issue.
    pub fn commands(&self) -> impl Iterator<Item = &str> {
        self.commands.iter().map(String::as_str)
    }

    /// Whether it may issue `command_type`.
    pub fn allows(&self, command_type: &str) -> bool {
        self.commands.contains(command_type)
    }
}

fn check_name(entry: &str, what: &str, name: &str, limit: usize) -> Result<(), AuthorityError> {
    if name.is_empty() || name.len() > limit {
        return Err(AuthorityError::BadName {
            entry: entry.to_owned(),
            detail: format!("{what} must be 1 to {limit} bytes"),
        });
    }
    Ok(())
}

/// The set of enrolled authorities, keyed by public key.
///
/// ```
/// use vigil_command::{Authorities, SigningKey, encode_public_key};
///
/// let key = SigningKey::from_bytes(&[5; 32]).verifying_key();
/// let json = format!(
///     r#"{{"authorities":[{{"id":"wa_ops","public_key":"{}","commands":["SHUTDOWN_NOW"]}}]}}"#,
///     encode_public_key(&key),
/// );
/// let authorities = Authorities::from_json(json.as_bytes())?;
/// assert!(authorities.get(&key).is_some_and(|a| a.allows("SHUTDOWN_NOW")));
/// # Ok::<(), vigil_command::AuthorityError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Authorities {
    by_key: BTreeMap<[u8; 32], AuthorityKey>,
}

/// The file format.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthoritiesFile {
    authorities: Vec<AuthorityEntry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthorityEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    id: Option<String>,
    public_key: String,
    commands: Vec<String>,
}

impl Authorities {
    /// No authorities: every command is refused.
    pub fn new() -> Authorities {
        Authorities::default()
    }

    /// The given authorities; a key given twice is an error.
    pub fn from_keys(
        keys: impl IntoIterator<Item = AuthorityKey>,
    ) -> Result<Authorities, AuthorityError> {
        let mut out = Authorities::new();
        for k in keys {
            out.insert(k)?;
        }
        Ok(out)
    }

    /// Adds an authority; a key already enrolled is an error.
    pub fn insert(&mut self, key: AuthorityKey) -> Result<(), AuthorityError> {
        let bytes = key.key.to_bytes();
        if self.by_key.contains_key(&bytes) {
            return Err(AuthorityError::DuplicateKey {
                key: keys::encode_public_key(&key.key),
            });
        }
        self.by_key.insert(bytes, key);
        Ok(())
    }

    /// Parses the JSON text of an authorities file.
    pub fn from_json(text: &[u8]) -> Result<Authorities, AuthorityError> {
        Self::parse(text, None)
    }

    /// Reads an authorities file.
    pub fn load(path: &Path) -> Result<Authorities, AuthorityError> {
        let read_err = |source| AuthorityError::Read {
            path: path.to_owned(),
            source,
        };
        let len = std::fs::metadata(path).map_err(read_err)?.len();
        if len > MAX_FILE_BYTES {
            return Err(AuthorityError::TooLarge {
                path: path.to_owned(),
                len,
            });
        }
        let text = std::fs::read(path).map_err(read_err)?;
        Self::parse(&text, Some(path))
    }

    fn parse(text: &[u8], path: Option<&Path>) -> Result<Authorities, AuthorityError> {
        let file: AuthoritiesFile =
            serde_json::from_slice(text).map_err(|e| AuthorityError::Parse {
                path: path.map(Path::to_owned),
                detail: e.to_string(),
            })?;
        let mut out = Authorities::new();
        for (i, entry) in file.authorities.into_iter().enumerate() {
            let label = entry.id.clone().unwrap_or_else(|| format!("#{}", i + 1));
            let key = keys::decode_public_key(&entry.public_key).map_err(|source| {
                AuthorityError::Key {
                    entry: label.clone(),
                    source,
                }
            })?;
            let mut names = BTreeSet::new();
            for c in &entry.commands {
                if !names.insert(c) {
                    return Err(AuthorityError::BadName {
                        entry: label,
                        detail: format!("command type {c:?} listed twice"),
                    });
                }
            }
            let authority =
                AuthorityKey::new(entry.id, key, entry.commands).map_err(|e| match e {
                    // Name entries by position when they have no id.
                    AuthorityError::WeakKey { .. } => AuthorityError::WeakKey {
                        entry: label.clone(),
                    },
                    AuthorityError::NoCommands { .. } => AuthorityError::NoCommands {
                        entry: label.clone(),
                    },
                    other => other,
                })?;
            out.insert(authority)?;
        }
        Ok(out)
    }

    /// The JSON text of this set, in the file format, with a trailing newline.
    pub fn to_json(&self) -> String {
        let file = AuthoritiesFile {
            authorities: self
                .by_key
                .values()
                .map(|a| AuthorityEntry {
                    id: a.id.clone(),
                    public_key: keys::encode_public_key(&a.key),
                    commands: a.commands.iter().cloned().collect(),
                })
                .collect(),
        };
        let mut s = serde_json::to_string_pretty(&file).unwrap_or_default();
        s.push('\n');
        s
    }

    /// The authority enrolled with `key`.
    pub fn get(&self, key: &VerifyingKey) -> Option<&AuthorityKey> {
        self.by_key.get(key.as_bytes())
    }

    /// The authority enrolled with the key whose encoding is `bytes`.
    pub(crate) fn get_bytes(&self, bytes: &[u8; 32]) -> Option<&AuthorityKey> {
        self.by_key.get(bytes)
    }

    /// Every command type some authority may issue.
    pub fn command_types(&self) -> BTreeSet<&str> {
        self.by_key
            .values()
            .flat_map(AuthorityKey::commands)
            .collect()
    }

    /// The enrolled authorities, in key order.
    pub fn iter(&self) -> impl Iterator<Item = &AuthorityKey> {
        self.by_key.values()
    }

    /// How many authorities are enrolled.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn key(n: u8) -> VerifyingKey {
        SigningKey::from_bytes(&[n; 32]).verifying_key()
    }

    /// The identity point, encoded: small order.
    fn weak() -> VerifyingKey {
        let mut bytes = [0u8; 32];
        bytes[0] = 1;
        VerifyingKey::from_bytes(&bytes).expect("identity decodes")
    }

    #[test]
    fn file_round_trip() {
        let a =
            AuthorityKey::new(Some("wa_ops".into()), key(1), ["SHUTDOWN_NOW", "EXEC"]).expect("a");
        let b = AuthorityKey::new(None, key(2), ["SHUTDOWN_NOW"]).expect("b");
        let set = Authorities::from_keys([a.clone(), b]).expect("set");
        let back = Authorities::from_json(set.to_json().as_bytes()).expect("parse");
        assert_eq!(back, set);
        assert_eq!(back.get(&key(1)), Some(&a));
        assert_eq!(
            back.command_types(),
            BTreeSet::from(["EXEC", "SHUTDOWN_NOW"])
        );
    }

    #[test]
    fn bad_files_are_refused_whole() {
        let k = keys::encode_public_key(&key(1));
        let w = keys::encode_public_key(&weak());
        let cases = [
            ("{}".to_owned(), "missing field"),
            (r#"{"authorities": [], "x": 1}"#.to_owned(), "unknown field"),
            (
                format!(
                    r#"{{"authorities":[{{"public_key":"{k}","commands":["A"],"role":"x"}}]}}"#
                ),
                "unknown field",
            ),
            (
                format!(r#"{{"authorities":[{{"public_key":"{k}","commands":[]}}]}}"#),
                "no command types",
            ),
            (
                format!(r#"{{"authorities":[{{"public_key":"{k}","commands":["A","A"]}}]}}"#),
                "listed twice",
            ),
            (
                format!(r#"{{"authorities":[{{"public_key":"{k}","commands":[""]}}]}}"#),
                "1 to 64 bytes",
            ),
            (
                format!(r#"{{"authorities":[{{"public_key":"{w}","commands":["A"]}}]}}"#),
                "weak",
            ),
            (
                r#"{"authorities":[{"public_key":"AAAA","commands":["A"]}]}"#.to_owned(),
                "32 bytes",
            ),
            (
                format!(
                    r#"{{"authorities":[{{"public_key":"{k}","commands":["A"]}},{{"public_key":"{k}","commands":["B"]}}]}}"#
                ),
                "enrolled twice",
            ),
        ];
        for (text, want) in cases {
            let e = Authorities::from_json(text.as_bytes()).expect_err(&text);
            assert!(e.to_string().contains(want), "{text}: {e}");
        }
    }

    #[test]
    fn weak_keys_are_refused_at_enrolment() {
        assert!(matches!(
            AuthorityKey::new(Some("x".into()), weak(), ["A"]),
            Err(AuthorityError::WeakKey { .. })
        ));
    }

    #[test]
    fn load_reads_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("authorities.json");
        let set = Authorities::from_keys([AuthorityKey::new(None, key(3), ["A"]).expect("k")])
            .expect("set");
        std::fs::write(&path, set.to_json()).expect("write");
        assert_eq!(Authorities::load(&path).expect("load"), set);
        let missing = Authorities::load(&dir.path().join("nope.json")).expect_err("missing");
        assert!(matches!(missing, AuthorityError::Read { .. }));
        std::fs::write(&path, "{").expect("write");
        let e = Authorities::load(&path).expect_err("bad");
        assert!(e.to_string().contains("authorities.json"), "{e}");
    }
}

//! Module keys: the Ed25519 public keys whose manifests a server loads and
//! a client trusts, and their ids.
//!
//! The module keys file lists them, separately from command authorities:
//!
//! ```json
//! {"module_keys": [{"key_id": "<64 lowercase hex>", "public_key": "<base64 of 32 bytes>"}]}
//! ```
//!
//! `key_id` may be left out; when given it must be the key's id (a check
//! against a key pasted into the wrong entry). Unknown fields, an empty
//! list, duplicate keys and weak (small-order) keys are errors: a file
//! that does not mean exactly what it says is refused as a whole.

use std::collections::BTreeMap;

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::keys::{self, KeyError};

/// Largest module keys file read.
pub(crate) const MAX_KEYS_FILE_BYTES: u64 = 1024 * 1024;

/// A module key's id: the lowercase hex SHA-256 of its 32 raw public-key
/// bytes (the same digest `sha256sum` prints for a file holding them).
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// What is wrong with a module keys file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModuleKeysError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The text is not a module keys file.
    #[error("module keys{}: {detail}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    Parse {
        /// The file, when read from one.
        path: Option<std::path::PathBuf>,
        /// What is wrong.
        detail: String,
    },
    /// A public key could not be decoded.
    #[error("module key {entry}: {source}")]
    Key {
        /// Which entry (1-based).
        entry: usize,
        /// Why.
        source: KeyError,
    },
    /// A key is a small-order point, under which anyone could sign.
    #[error("module key {entry}: weak (small-order) public key refused")]
    WeakKey {
        /// Which entry (1-based).
        entry: usize,
    },
    /// The `key_id` given is not the key's id.
    #[error("module key {entry}: key_id {given} is not this key's id ({actual})")]
    WrongKeyId {
        /// Which entry (1-based).
        entry: usize,
        /// The id written.
        given: String,
        /// The key's id.
        actual: String,
    },
    /// The same key is listed twice.
    #[error("module key {key_id} is listed twice")]
    Duplicate {
        /// Its id.
        key_id: String,
    },
    /// The list is empty: nothing could ever be trusted.
    #[error("lists no module keys")]
    Empty,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    module_keys: Vec<Entry>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_id: Option<String>,
    public_key: String,
}

/// The trusted module keys, by key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleKeys {
    keys: BTreeMap<String, VerifyingKey>,
}

impl ModuleKeys {
    /// These keys. Refuses an empty list, weak keys and duplicates.
    pub fn from_keys(
        keys: impl IntoIterator<Item = VerifyingKey>,
    ) -> Result<ModuleKeys, ModuleKeysError> {
        let mut map = BTreeMap::new();
        for (i, key) in keys.into_iter().enumerate() {
            if key.is_weak() {
                return Err(ModuleKeysError::WeakKey { entry: i + 1 });
            }
            let id = key_id(&key);
            if map.insert(id.clone(), key).is_some() {
                return Err(ModuleKeysError::Duplicate { key_id: id });
            }
        }
        if map.is_empty() {
            return Err(ModuleKeysError::Empty);
        }
        Ok(ModuleKeys { keys: map })
    }

    /// Parses a module keys file's text.
    pub fn from_json(text: &[u8]) -> Result<ModuleKeys, ModuleKeysError> {
        let file: File = serde_json::from_slice(text).map_err(|e| ModuleKeysError::Parse {
            path: None,
            detail: e.to_string(),
        })?;
        let mut keys = Vec::with_capacity(file.module_keys.len());
        for (i, entry) in file.module_keys.iter().enumerate() {
            let key = keys::decode_public_key(entry.public_key.trim()).map_err(|source| {
                ModuleKeysError::Key {
                    entry: i + 1,
                    source,
                }
            })?;
            if let Some(given) = &entry.key_id {
                let actual = key_id(&key);
                if !given.eq_ignore_ascii_case(&actual) {
                    return Err(ModuleKeysError::WrongKeyId {
                        entry: i + 1,
                        given: given.clone(),
                        actual,
                    });
                }
            }
            keys.push(key);
        }
        ModuleKeys::from_keys(keys)
    }

    /// The file's text for these keys (pretty JSON, each with its id).
    pub fn to_json(&self) -> String {
        let file = File {
            module_keys: self
                .keys
                .iter()
                .map(|(id, key)| Entry {
                    key_id: Some(id.clone()),
                    public_key: keys::encode_public_key(key),
                })
                .collect(),
        };
        let mut text = serde_json::to_string_pretty(&file).unwrap_or_default();
        text.push('\n');
        text
    }

    /// The key with this id.
    pub fn get(&self, key_id: &str) -> Option<&VerifyingKey> {
        self.keys.get(key_id)
    }

    /// The keys, in the order of their ids.
    pub fn keys(&self) -> impl Iterator<Item = &VerifyingKey> {
        self.keys.values()
    }

    /// The key ids, in order.
    pub fn key_ids(&self) -> impl Iterator<Item = &str> {
        self.keys.keys().map(String::as_str)
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are none (never, for a value built by this type).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

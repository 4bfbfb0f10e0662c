//! Signed module manifests: which module bytes an offline module key
//! vouches for, in which version, and until when.
//!
//! A manifest sits beside its module (`hello.so.manifest`) and travels with
//! it (`mod:sync_resp`, `modload`, `modreload`, `mod:verify_resp`). It is a
//! JSON object:
//!
//! ```json
//! {"format": "vigil-module-manifest-v1", "name": "hello.so", "version": 3,
//!  "sha256": "<64 lowercase hex>", "size": 14336, "target": "x86_64-linux", "abi": 1,
//!  "not_before": "2026-11-22T14:00:00+00:00", "expires": "2027-02-20T14:00:00+00:00",
//!  "key_id": "<64 lowercase hex>", "signature": "<base64 of 64 bytes>"}
//! ```
//!
//! The signature is Ed25519 (`verify_strict`) over a fixed-format text
//! whose first line separates the domain, so that it can never be taken
//! for a command (JSON, starting with `{`) or a heartbeat
//! (`vigil-heartbeat-v1`) signature. See [`ModuleManifest::signing_bytes`].
//!
//! The module key is not a command key: it is listed in a module keys file
//! of its own ([`ModuleKeys`]), and its id is the lowercase hex SHA-256 of
//! its 32 raw public-key bytes ([`key_id`]).
//!
//! [`ModuleKeys::verify`] checks a manifest against the bytes of a module
//! and the highest version trusted before, in a fixed order, and refuses
//! with a [`ManifestRefusal`] that has a stable [code](ManifestRefusal::code).
//! It does no I/O and reads no clock: `now` is an argument. The highest
//! versions are kept by a [`VersionStore`], which writes them only after a
//! manifest verified.

mod keys;
mod store;
mod verify;

use ed25519_dalek::{Signer as _, SigningKey};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::keys as b64;
use crate::timestamp::Timestamp;
pub use keys::{ModuleKeys, ModuleKeysError, key_id};
pub use store::{HighWater, ModuleTrust, VersionStore, VersionStoreError};
pub use verify::{ManifestCheck, Platform, VerifiedManifest};

/// The manifest's `format` field and the first line of its signing bytes.
pub const MANIFEST_DOMAIN: &str = "vigil-module-manifest-v1";
/// Largest manifest read or parsed, in bytes.
pub const MAX_MANIFEST_BYTES: usize = 4096;
/// Longest module name in a manifest, in bytes.
pub const MAX_MANIFEST_NAME_LEN: usize = 255;
/// Longest `target` in a manifest, in bytes.
pub const MAX_TARGET_LEN: usize = 64;
/// What a file beside a module must be called to be its manifest:
/// `<module name>` followed by this.
pub const MANIFEST_SUFFIX: &str = ".manifest";

/// What a module key vouches for, before it is signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleManifest {
    /// The module's file name (`hello.so`): its name on the wire.
    pub name: String,
    /// Only goes up per name: a receiver refuses a version below the
    /// highest it trusted, and the same version with other bytes.
    pub version: u64,
    /// Lowercase hex SHA-256 of the module's exact bytes.
    pub sha256: String,
    /// The module's size in bytes.
    pub size: u64,
    /// The platform it was built for: `<arch>-<os>` as Rust names them
    /// (`x86_64-linux`, `aarch64-linux`).
    pub target: String,
    /// The module ABI version it exports (`vigil_module_abi_version()`).
    pub abi: u32,
    /// Not valid before this time.
    pub not_before: Timestamp,
    /// Not valid from this time on.
    pub expires: Timestamp,
}

/// A manifest with its key id and signature, as it is written and sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedManifest {
    manifest: ModuleManifest,
    key_id: String,
    signature: String,
}

/// The JSON form (file and wire).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    format: String,
    name: String,
    version: u64,
    sha256: String,
    size: u64,
    target: String,
    abi: u32,
    not_before: Timestamp,
    expires: Timestamp,
    key_id: String,
    signature: String,
}

/// Why a manifest is not trusted. Each kind has its own
/// [code](ManifestRefusal::code).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestRefusal {
    /// Module keys are configured, and the module has no manifest.
    #[error("no manifest: with module keys configured, a module needs a signed manifest")]
    Missing,
    /// The manifest is not a well-formed manifest.
    #[error("malformed manifest: {0}")]
    Malformed(String),
    /// The manifest names a key that is not in the module keys.
    #[error("signed by key {key_id}, which is not a trusted module key")]
    UnknownKey {
        /// The key id the manifest names.
        key_id: String,
    },
    /// The signature does not verify under the named key.
    #[error("the manifest's signature does not verify")]
    BadSignature,
    /// The manifest is for another module.
    #[error("the manifest is for {manifest:?}, not {module:?}")]
    WrongName {
        /// The name in the manifest.
        manifest: String,
        /// The module's name.
        module: String,
    },
    /// The manifest is for another platform or module ABI.
    #[error("built for {manifest}, this host takes {host}")]
    WrongTarget {
        /// The manifest's target and ABI.
        manifest: String,
        /// This host's.
        host: String,
    },
    /// The module's bytes are not the ones the manifest names.
    #[error("the bytes do not match the manifest: {0}")]
    Mismatch(String),
    /// The manifest's window has not begun.
    #[error("not valid before {not_before}")]
    NotYetValid {
        /// Its `not_before`.
        not_before: String,
    },
    /// The manifest's window has ended (a frozen or stale manifest).
    #[error("expired at {expires}")]
    Expired {
        /// Its `expires`.
        expires: String,
    },
    /// The version is below the highest trusted for this name.
    #[error("version {version} is below version {highest}, already trusted for this module")]
    Rollback {
        /// The manifest's version.
        version: u64,
        /// The highest trusted.
        highest: u64,
    },
    /// The version was trusted before for other bytes.
    #[error(
        "version {version} was already trusted with other bytes (sha256 {trusted}): a new build needs a new version"
    )]
    VersionReused {
        /// The version.
        version: u64,
        /// The sum trusted under it.
        trusted: String,
    },
    /// The highest version could not be recorded: the module is not
    /// trusted, so that a later start cannot forget it.
    #[error("cannot record the module's version: {0}")]
    StoreUnavailable(String),
}

impl ManifestRefusal {
    /// The stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ManifestRefusal::Missing => "manifest_missing",
            ManifestRefusal::Malformed(_) => "manifest_malformed",
            ManifestRefusal::UnknownKey { .. } => "manifest_unknown_key",
            ManifestRefusal::BadSignature => "manifest_bad_signature",
            ManifestRefusal::WrongName { .. } => "manifest_wrong_name",
            ManifestRefusal::WrongTarget { .. } => "manifest_wrong_target",
            ManifestRefusal::Mismatch(_) => "manifest_mismatch",
            ManifestRefusal::NotYetValid { .. } => "manifest_not_yet_valid",
            ManifestRefusal::Expired { .. } => "manifest_expired",
            ManifestRefusal::Rollback { .. } => "manifest_rollback",
            ManifestRefusal::VersionReused { .. } => "manifest_version_reused",
            ManifestRefusal::StoreUnavailable(_) => "manifest_store_unavailable",
        }
    }
}

pub(crate) fn malformed(detail: impl Into<String>) -> ManifestRefusal {
    ManifestRefusal::Malformed(detail.into())
}

fn is_lower_hex_64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl ModuleManifest {
    /// What a receiver would refuse as malformed, whoever signed it.
    pub fn check(&self) -> Result<(), ManifestRefusal> {
        if self.name.is_empty() || self.name.len() > MAX_MANIFEST_NAME_LEN {
            return Err(malformed(format!(
                "name must be 1 to {MAX_MANIFEST_NAME_LEN} bytes"
            )));
        }
        if self.name.chars().any(|c| c.is_control() || c == '/') || self.name.starts_with('.') {
            return Err(malformed(
                "name must be a file name: no '/', no control characters, not hidden",
            ));
        }
        if !is_lower_hex_64(&self.sha256) {
            return Err(malformed("sha256 must be 64 lowercase hex digits"));
        }
        let target_ok = !self.target.is_empty()
            && self.target.len() <= MAX_TARGET_LEN
            && self
                .target
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        if !target_ok {
            return Err(malformed(format!(
                "target must be 1 to {MAX_TARGET_LEN} of [A-Za-z0-9_.-]"
            )));
        }
        if self.not_before.unix_nanos() >= self.expires.unix_nanos() {
            return Err(malformed("not_before must be before expires"));
        }
        Ok(())
    }

    /// The exact bytes the signature covers: a fixed-format text whose
    /// first line separates the domain, one `key=value` line per field, in
    /// this order, each ended by `\n`:
    ///
    /// ```text
    /// vigil-module-manifest-v1
    /// name=<name>
    /// version=<u64, decimal>
    /// sha256=<64 lowercase hex>
    /// size=<u64, decimal>
    /// target=<target>
    /// abi=<u32, decimal>
    /// not_before=<not_before as Python's isoformat()>
    /// expires=<expires as Python's isoformat()>
    /// key_id=<64 lowercase hex>
    /// ```
    ///
    /// No field may hold a line break ([`ModuleManifest::check`]), so each
    /// text has one reading.
    pub fn signing_bytes(&self, key_id: &str) -> Vec<u8> {
        let mut s = String::with_capacity(256 + self.name.len());
        s.push_str(MANIFEST_DOMAIN);
        for (field, value) in [
            ("name", self.name.clone()),
            ("version", self.version.to_string()),
            ("sha256", self.sha256.clone()),
            ("size", self.size.to_string()),
            ("target", self.target.clone()),
            ("abi", self.abi.to_string()),
            ("not_before", self.not_before.isoformat()),
            ("expires", self.expires.isoformat()),
            ("key_id", key_id.to_owned()),
        ] {
            s.push('\n');
            s.push_str(field);
            s.push('=');
            s.push_str(&value);
        }
        s.push('\n');
        s.into_bytes()
    }

    /// Signs this manifest with a module key (its key id goes into the
    /// signed bytes). Refuses what receivers would refuse as malformed.
    pub fn sign(&self, key: &SigningKey) -> Result<SignedManifest, ManifestRefusal> {
        self.check()?;
        let key_id = key_id(&key.verifying_key());
        let signature = key.sign(&self.signing_bytes(&key_id));
        Ok(SignedManifest {
            manifest: self.clone(),
            key_id,
            signature: b64::encode_signature(&signature),
        })
    }
}

impl SignedManifest {
    /// The manifest (not verified).
    pub fn manifest(&self) -> &ModuleManifest {
        &self.manifest
    }

    /// The id of the key that signed it (as it claims).
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The base64 signature.
    pub fn signature(&self) -> &str {
        &self.signature
    }

    /// Reads a manifest file's bytes (at most [`MAX_MANIFEST_BYTES`]).
    pub fn from_json(bytes: &[u8]) -> Result<SignedManifest, ManifestRefusal> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(malformed(format!(
                "{} bytes is larger than the {MAX_MANIFEST_BYTES}-byte limit",
                bytes.len()
            )));
        }
        let wire: Wire = serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
        SignedManifest::from_wire(wire)
    }

    /// Reads a manifest from the JSON object a frame carries.
    pub fn from_map(map: &Map<String, Value>) -> Result<SignedManifest, ManifestRefusal> {
        let text = serde_json::to_vec(map).map_err(|e| malformed(e.to_string()))?;
        SignedManifest::from_json(&text)
    }

    fn from_wire(w: Wire) -> Result<SignedManifest, ManifestRefusal> {
        if w.format != MANIFEST_DOMAIN {
            return Err(malformed(format!(
                "format is {:?}, expected {MANIFEST_DOMAIN:?}",
                w.format
            )));
        }
        if !is_lower_hex_64(&w.key_id) {
            return Err(malformed("key_id must be 64 lowercase hex digits"));
        }
        b64::decode_signature(&w.signature).map_err(|e| malformed(e.to_string()))?;
        let manifest = ModuleManifest {
            name: w.name,
            version: w.version,
            sha256: w.sha256,
            size: w.size,
            target: w.target,
            abi: w.abi,
            not_before: w.not_before,
            expires: w.expires,
        };
        manifest.check()?;
        Ok(SignedManifest {
            manifest,
            key_id: w.key_id,
            signature: w.signature,
        })
    }

    fn to_wire(&self) -> Wire {
        let m = &self.manifest;
        Wire {
            format: MANIFEST_DOMAIN.to_owned(),
            name: m.name.clone(),
            version: m.version,
            sha256: m.sha256.clone(),
            size: m.size,
            target: m.target.clone(),
            abi: m.abi,
            not_before: m.not_before,
            expires: m.expires,
            key_id: self.key_id.clone(),
            signature: self.signature.clone(),
        }
    }

    /// The manifest as a file holds it: pretty JSON, fields in their
    /// order, ending with a newline.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_string_pretty(&self.to_wire()).unwrap_or_default();
        text.push('\n');
        text
    }

    /// The manifest as the JSON object a frame carries.
    pub fn to_map(&self) -> Map<String, Value> {
        match serde_json::to_value(self.to_wire()) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        }
    }
}

#[cfg(test)]
mod tests;

//! Checking a manifest against a module's bytes, the host and the
//! highest version trusted: [`ModuleKeys::verify`].

use std::time::SystemTime;

use ed25519_dalek::VerifyingKey;

use super::{HighWater, ManifestRefusal, ModuleKeys, SignedManifest, malformed};
use crate::keys as b64;

/// The platform a module must be built for, when the checker runs modules
/// (the server); a client, which runs none, leaves it out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Platform {
    /// `<arch>-<os>` (`x86_64-linux`): `std::env::consts::ARCH`, a
    /// dash, `std::env::consts::OS`.
    pub target: String,
    /// The module ABI version the host loads.
    pub abi: u32,
}

/// What a manifest is checked against.
#[derive(Debug, Clone, Copy)]
pub struct ManifestCheck<'a> {
    /// The module's file name.
    pub name: &'a str,
    /// Lowercase hex SHA-256 of the module's bytes, computed by the checker.
    pub sha256: &'a str,
    /// Their length.
    pub size: u64,
    /// The platform the module must be for; `None`: not checked.
    pub platform: Option<&'a Platform>,
    /// The highest version trusted before for this name, if any.
    pub highest: Option<&'a HighWater>,
    /// The current time.
    pub now: SystemTime,
}

/// A manifest that verified for one module's bytes, at one time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedManifest(SignedManifest);

impl VerifiedManifest {
    /// The signed manifest.
    pub fn signed(&self) -> &SignedManifest {
        &self.0
    }

    /// Its module name.
    pub fn name(&self) -> &str {
        &self.0.manifest.name
    }

    /// Its version.
    pub fn version(&self) -> u64 {
        self.0.manifest.version
    }

    /// The sum it vouches for.
    pub fn sha256(&self) -> &str {
        &self.0.manifest.sha256
    }
}

impl ModuleKeys {
    /// Checks `signed` for the module described by `check`, in this order
    /// (each with its code): the key is a module key (`manifest_unknown_key`),
    /// the signature verifies (`verify_strict`, `manifest_bad_signature`),
    /// the name is the module's (`manifest_wrong_name`), the platform is
    /// the host's (`manifest_wrong_target`), the sum and size are those of
    /// the bytes (`manifest_mismatch`), `not_before <= now < expires`
    /// (`manifest_not_yet_valid`, `manifest_expired`), and the version is
    /// not below the highest trusted (`manifest_rollback`), nor equal to it
    /// with other bytes (`manifest_version_reused`).
    pub fn verify(
        &self,
        signed: &SignedManifest,
        check: &ManifestCheck<'_>,
    ) -> Result<VerifiedManifest, ManifestRefusal> {
        let key = self
            .get(&signed.key_id)
            .ok_or_else(|| ManifestRefusal::UnknownKey {
                key_id: signed.key_id.clone(),
            })?;
        verify_signature(key, signed)?;
        let m = &signed.manifest;
        if m.name != check.name {
            return Err(ManifestRefusal::WrongName {
                manifest: m.name.clone(),
                module: check.name.to_owned(),
            });
        }
        if let Some(p) = check.platform
            && (m.target != p.target || m.abi != p.abi)
        {
            return Err(ManifestRefusal::WrongTarget {
                manifest: format!("{} (ABI {})", m.target, m.abi),
                host: format!("{} (ABI {})", p.target, p.abi),
            });
        }
        if !m.sha256.eq_ignore_ascii_case(check.sha256) {
            return Err(ManifestRefusal::Mismatch(format!(
                "the bytes hash to {}, the manifest names {}",
                check.sha256, m.sha256
            )));
        }
        if m.size != check.size {
            return Err(ManifestRefusal::Mismatch(format!(
                "the module is {} bytes, the manifest says {}",
                check.size, m.size
            )));
        }
        let now = crate::timestamp::system_time_nanos(check.now);
        if now < m.not_before.unix_nanos() {
            return Err(ManifestRefusal::NotYetValid {
                not_before: m.not_before.isoformat(),
            });
        }
        if now >= m.expires.unix_nanos() {
            return Err(ManifestRefusal::Expired {
                expires: m.expires.isoformat(),
            });
        }
        if let Some(highest) = check.highest {
            highest.admits(m.version, &m.sha256)?;
        }
        Ok(VerifiedManifest(signed.clone()))
    }
}

fn verify_signature(key: &VerifyingKey, signed: &SignedManifest) -> Result<(), ManifestRefusal> {
    let signature =
        b64::decode_signature(&signed.signature).map_err(|e| malformed(e.to_string()))?;
    key.verify_strict(&signed.manifest.signing_bytes(&signed.key_id), &signature)
        .map_err(|_| ManifestRefusal::BadSignature)
}

//! Manifests beside module files: with module keys configured
//! ([`RegistryConfig::manifests`](crate::RegistryConfig::manifests)), the
//! registry loads `hello.so` only if `hello.so.manifest`, next to it,
//! verifies for its exact bytes (see `vigil_command::SignedManifest`), and
//! never a version below the highest it loaded before.

use std::path::Path;
use std::time::SystemTime;

use vigil_command::{
    MANIFEST_SUFFIX, MAX_MANIFEST_BYTES, ManifestRefusal, ModuleTrust, Platform, SignedManifest,
    VerifiedManifest,
};

use crate::RegistryConfig;
use crate::registry::{is_module_name, read_module};

/// `<arch>-<os>` of this machine, as manifests name targets
/// (`x86_64-linux`): what `vigilctl module sign` writes by default and what
/// the registry requires.
pub fn host_target() -> String {
    format!("{}-{}", std::env::consts::ARCH, std::env::consts::OS)
}

/// The platform this registry loads modules for.
pub(crate) fn host_platform() -> Platform {
    Platform {
        target: host_target(),
        abi: vigil_module_sdk::ABI_VERSION,
    }
}

/// The module a manifest file belongs to: `hello.so` for
/// `hello.so.manifest`; `None` for anything else.
pub fn module_of_manifest(file_name: &str) -> Option<&str> {
    file_name
        .strip_suffix(MANIFEST_SUFFIX)
        .filter(|module| is_module_name(module))
}

/// A module refused before loading: a stable code and the reason.
pub(crate) struct Refused {
    pub(crate) code: &'static str,
    pub(crate) reason: String,
}

impl From<ManifestRefusal> for Refused {
    fn from(refusal: ManifestRefusal) -> Refused {
        Refused {
            code: refusal.code(),
            reason: refusal.to_string(),
        }
    }
}

/// With module keys configured, reads and checks the manifest of module
/// `name`, whose bytes hash to `sum` and are `size` long (`None` without
/// module keys). Records nothing: see [`record`].
pub(crate) fn gate(
    config: &RegistryConfig,
    name: &str,
    sum: &str,
    size: u64,
) -> Result<Option<VerifiedManifest>, Refused> {
    match &config.manifests {
        Some(trust) => check(trust, &config.dir, name, sum, size, SystemTime::now()).map(Some),
        None => Ok(None),
    }
}

/// Raises the version mark of a module that verified and loaded. If it
/// cannot be recorded, the module must not be served: a restart could
/// forget the mark and take an older version.
pub(crate) fn record(
    config: &RegistryConfig,
    verified: Option<&VerifiedManifest>,
) -> Result<(), Refused> {
    match (&config.manifests, verified) {
        (Some(trust), Some(verified)) => Ok(trust.record(verified)?),
        _ => Ok(()),
    }
}

/// Whether the module loaded is the one on disk: the same bytes with the
/// same manifest (a manifest signed again makes a new version).
pub(crate) fn unchanged(
    current: Option<&crate::Module>,
    sum: &str,
    manifest: Option<&SignedManifest>,
) -> bool {
    current.is_some_and(|m| m.summary().sum == sum && m.summary().manifest.as_ref() == manifest)
}

/// Reads and checks the manifest of module `name` in `dir`, whose bytes
/// hash to `sum` and are `size` long. Records nothing.
pub(crate) fn check(
    trust: &ModuleTrust,
    dir: &Path,
    name: &str,
    sum: &str,
    size: u64,
    now: SystemTime,
) -> Result<VerifiedManifest, Refused> {
    let path = dir.join(format!("{name}{MANIFEST_SUFFIX}"));
    let signed = match read_module(&path, MAX_MANIFEST_BYTES as u64) {
        Ok(Some(bytes)) => Some(SignedManifest::from_json(&bytes)?),
        Ok(None) => None,
        Err(reason) => {
            return Err(Refused {
                code: ManifestRefusal::Malformed(String::new()).code(),
                reason: format!("manifest {}: {reason}", path.display()),
            });
        }
    };
    Ok(trust.check(
        signed.as_ref(),
        name,
        sum,
        size,
        Some(&host_platform()),
        now,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_name_their_module() {
        assert_eq!(module_of_manifest("hello.so.manifest"), Some("hello.so"));
        assert_eq!(module_of_manifest(".hello.so.manifest"), None);
        assert_eq!(module_of_manifest("hello.so.manifest.tmp"), None);
        assert_eq!(module_of_manifest("hello.manifest"), None);
        assert!(host_target().contains('-'));
    }
}

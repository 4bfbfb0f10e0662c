//! The files of module trust: reading a module keys file, and the version
//! high-water marks ([`VersionStore`]), which survive restarts.
//!
//! The store is a JSON file, name -> highest version trusted and its sum:
//!
//! ```json
//! {"format": "vigil-module-versions-v1",
//!  "modules": {"hello.so": {"version": 3, "sha256": "<64 lowercase hex>"}}}
//! ```
//!
//! It is written only after a manifest verified, and only upwards, each
//! time whole: a temporary file (mode 0600) written and `fsync`ed, renamed
//! over the old one, and the directory `fsync`ed. A crash leaves the old
//! file or the new one, never a mix. If the write fails, the mark is not
//! raised in memory either, and the module is refused
//! (`manifest_store_unavailable`): trusting it without its mark on disk
//! would let a restart forget it, and take an older version.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::keys::MAX_KEYS_FILE_BYTES;
use super::{
    ManifestCheck, ManifestRefusal, ModuleKeys, ModuleKeysError, Platform, SignedManifest,
    VerifiedManifest,
};

/// The store file's `format`.
const STORE_FORMAT: &str = "vigil-module-versions-v1";
/// Largest store file read.
const MAX_STORE_BYTES: u64 = 16 * 1024 * 1024;

impl ModuleKeys {
    /// Reads a module keys file.
    pub fn load(path: &Path) -> Result<ModuleKeys, ModuleKeysError> {
        let read_err = |source| ModuleKeysError::Read {
            path: path.to_owned(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let mut text = Vec::new();
        file.take(MAX_KEYS_FILE_BYTES + 1)
            .read_to_end(&mut text)
            .map_err(read_err)?;
        if text.len() as u64 > MAX_KEYS_FILE_BYTES {
            return Err(ModuleKeysError::Parse {
                path: Some(path.to_owned()),
                detail: format!("larger than the {MAX_KEYS_FILE_BYTES}-byte limit"),
            });
        }
        ModuleKeys::from_json(&text).map_err(|e| match e {
            ModuleKeysError::Parse { detail, .. } => ModuleKeysError::Parse {
                path: Some(path.to_owned()),
                detail,
            },
            other => other,
        })
    }
}

/// The highest version trusted for one module name, and its sum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HighWater {
    /// The version.
    pub version: u64,
    /// Lowercase hex SHA-256 of the bytes trusted under it.
    pub sha256: String,
}

impl HighWater {
    /// Whether `version` with `sha256` may be trusted after this mark: a
    /// higher version, or the same version with the same bytes.
    pub fn admits(&self, version: u64, sha256: &str) -> Result<(), ManifestRefusal> {
        if version < self.version {
            return Err(ManifestRefusal::Rollback {
                version,
                highest: self.version,
            });
        }
        if version == self.version && !self.sha256.eq_ignore_ascii_case(sha256) {
            return Err(ManifestRefusal::VersionReused {
                version,
                trusted: self.sha256.clone(),
            });
        }
        Ok(())
    }
}

/// Why the version store could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VersionStoreError {
    /// The file could not be read.
    #[error("cannot read the module version store {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a version store, or is damaged. It is not
    /// overwritten: forgetting the marks would re-open every rollback.
    #[error("module version store {path}: {detail}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreFile {
    format: String,
    modules: BTreeMap<String, HighWater>,
}

/// The highest module version trusted per name, kept in a file across
/// restarts (or in memory only, for tests and embedders that want that).
#[derive(Debug)]
pub struct VersionStore {
    path: Option<PathBuf>,
    marks: Mutex<BTreeMap<String, HighWater>>,
}

impl VersionStore {
    /// Opens the store at `path`; a missing file is an empty store (made
    /// at the first record). An unreadable or damaged file is an error.
    pub fn open(path: impl Into<PathBuf>) -> Result<VersionStore, VersionStoreError> {
        let path = path.into();
        let marks = match std::fs::File::open(&path) {
            Ok(file) => read_store(&path, file)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(source) => return Err(VersionStoreError::Read { path, source }),
        };
        Ok(VersionStore {
            path: Some(path),
            marks: Mutex::new(marks),
        })
    }

    /// A store that forgets everything when dropped.
    pub fn in_memory() -> VersionStore {
        VersionStore {
            path: None,
            marks: Mutex::new(BTreeMap::new()),
        }
    }

    /// The file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    fn marks(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, HighWater>> {
        self.marks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The mark for `name`.
    pub fn get(&self, name: &str) -> Option<HighWater> {
        self.marks().get(name).cloned()
    }

    /// Every mark, by name.
    pub fn all(&self) -> BTreeMap<String, HighWater> {
        self.marks().clone()
    }

    /// Raises the mark of a verified manifest's module to its version.
    ///
    /// Checked again under the store's lock, so that of two manifests
    /// verified at once the lower cannot win: a version below the mark is
    /// `manifest_rollback`, the same version with other bytes
    /// `manifest_version_reused`. With a file, the new marks are on disk
    /// before this returns; if they cannot be written, nothing changes and
    /// the answer is `manifest_store_unavailable`.
    pub fn record(&self, verified: &VerifiedManifest) -> Result<(), ManifestRefusal> {
        let mut marks = self.marks();
        if let Some(mark) = marks.get(verified.name()) {
            mark.admits(verified.version(), verified.sha256())?;
            if mark.version == verified.version() {
                return Ok(());
            }
        }
        let mut next = marks.clone();
        next.insert(
            verified.name().to_owned(),
            HighWater {
                version: verified.version(),
                sha256: verified.sha256().to_ascii_lowercase(),
            },
        );
        if let Some(path) = &self.path {
            write_store(path, &next).map_err(|e| {
                ManifestRefusal::StoreUnavailable(format!("{}: {e}", path.display()))
            })?;
        }
        *marks = next;
        Ok(())
    }
}

fn read_store(
    path: &Path,
    file: std::fs::File,
) -> Result<BTreeMap<String, HighWater>, VersionStoreError> {
    let corrupt = |detail: String| VersionStoreError::Corrupt {
        path: path.to_owned(),
        detail,
    };
    let mut text = Vec::new();
    file.take(MAX_STORE_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|source| VersionStoreError::Read {
            path: path.to_owned(),
            source,
        })?;
    if text.len() as u64 > MAX_STORE_BYTES {
        return Err(corrupt(format!(
            "larger than the {MAX_STORE_BYTES}-byte limit"
        )));
    }
    let store: StoreFile = serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
    if store.format != STORE_FORMAT {
        return Err(corrupt(format!(
            "format is {:?}, expected {STORE_FORMAT:?}",
            store.format
        )));
    }
    Ok(store.modules)
}

fn write_store(path: &Path, marks: &BTreeMap<String, HighWater>) -> std::io::Result<()> {
    let body = StoreFile {
        format: STORE_FORMAT.to_owned(),
        modules: marks.clone(),
    };
    let mut text = serde_json::to_vec_pretty(&body).map_err(std::io::Error::other)?;
    text.push(b'\n');
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = (|| {
        let mut file = options.open(&tmp)?;
        file.write_all(&text)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Module keys and the version store together: what a server (before it
/// loads a module) and a client (before it trusts one) check with.
#[derive(Debug, Clone)]
pub struct ModuleTrust {
    /// The trusted module keys.
    pub keys: ModuleKeys,
    /// The highest versions trusted so far.
    pub versions: Arc<VersionStore>,
}

impl ModuleTrust {
    /// Checks a module's manifest (`None`: it has none, `manifest_missing`)
    /// against its bytes' sum and size and the highest version trusted
    /// for its name. Records nothing: call [`ModuleTrust::record`] once the
    /// module is trusted.
    pub fn check(
        &self,
        manifest: Option<&SignedManifest>,
        name: &str,
        sha256: &str,
        size: u64,
        platform: Option<&Platform>,
        now: SystemTime,
    ) -> Result<VerifiedManifest, ManifestRefusal> {
        let signed = manifest.ok_or(ManifestRefusal::Missing)?;
        let highest = self.versions.get(name);
        self.keys.verify(
            signed,
            &ManifestCheck {
                name,
                sha256,
                size,
                platform,
                highest: highest.as_ref(),
                now,
            },
        )
    }

    /// [`ModuleTrust::check`] of a manifest as a frame carries it.
    pub fn check_map(
        &self,
        manifest: Option<&Map<String, Value>>,
        name: &str,
        sha256: &str,
        size: u64,
        now: SystemTime,
    ) -> Result<VerifiedManifest, ManifestRefusal> {
        let signed = manifest.map(SignedManifest::from_map).transpose()?;
        self.check(signed.as_ref(), name, sha256, size, None, now)
    }

    /// Raises the version mark (see [`VersionStore::record`]).
    pub fn record(&self, verified: &VerifiedManifest) -> Result<(), ManifestRefusal> {
        self.versions.record(verified)
    }
}

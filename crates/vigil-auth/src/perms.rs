//! Who else may change the files vigil trusts: sshd's `StrictModes`, for
//! the trust file, keys, authorities, configuration and the directories
//! that hold modules and state.
//!
//! A file that others may write is as good as theirs: whoever can add a
//! fingerprint to `trusted-keys.json`, a key to `authorities.json` or a
//! `.so` to the mods directory commands the fleet. So a path is **refused**
//! when it, or the directory that holds it, is writable by others (a
//! directory with the sticky bit, as `/tmp`, is allowed to hold it: others
//! cannot rename over a file they do not own there). A group-writable path
//! is allowed but logged as a warning, as is a private key that others may
//! read.

use std::path::Path;

use crate::AuthError;

/// Refuses `path` (a file or a directory) when it, or the directory that
/// holds it, is writable by others; warns when either is group-writable.
/// `what` names the path in messages ("trust file", "mods directory").
///
/// On platforms without Unix permissions this checks nothing.
pub fn check_permissions(path: &Path, what: &str) -> Result<(), AuthError> {
    #[cfg(unix)]
    {
        check_one(path, what, false)?;
        if let Some(parent) = parent_of(path) {
            check_one(&parent, &format!("directory holding the {what}"), true)?;
        }
    }
    #[cfg(not(unix))]
    let _ = (path, what);
    Ok(())
}

/// As [`check_permissions`], and warns when the private key at `path` is
/// readable by group or others.
pub fn check_key_permissions(path: &Path, what: &str) -> Result<(), AuthError> {
    check_permissions(path, what)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o7777;
            if mode & 0o044 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format_args!("{mode:04o}"),
                    "{what} is readable by group or others: anyone who can read it can pose as this peer (chmod 600)"
                );
            }
        }
    }
    Ok(())
}

/// Creates `dir` and its missing parents with mode 0700, whatever the
/// umask (a directory that exists is left as it is, and
/// [`check_permissions`] judges it).
pub fn create_private_dir(dir: &Path) -> Result<(), AuthError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| AuthError::Write {
        path: dir.to_owned(),
        source,
    })
}

#[cfg(unix)]
fn parent_of(path: &Path) -> Option<std::path::PathBuf> {
    let parent = path.parent()?;
    if parent.as_os_str().is_empty() {
        Some(std::path::PathBuf::from("."))
    } else {
        Some(parent.to_owned())
    }
}

#[cfg(unix)]
fn check_one(path: &Path, what: &str, holder: bool) -> Result<(), AuthError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        // Whoever reads the path next reports it missing, with its own
        // words.
        Err(_) => return Ok(()),
    };
    let mode = meta.permissions().mode() & 0o7777;
    let sticky = meta.is_dir() && mode & 0o1000 != 0;
    if holder && sticky {
        return Ok(());
    }
    if mode & 0o002 != 0 {
        return Err(AuthError::Insecure {
            path: path.to_owned(),
            detail: format!(
                "the {what} is writable by others (mode {mode:04o}): anyone on this machine could change it; fix with chmod o-w"
            ),
        });
    }
    if mode & 0o020 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{mode:04o}"),
            "the {what} is group-writable: every member of its group can change it"
        );
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn others_writable_files_and_holders_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        chmod(dir.path(), 0o700);
        let file = dir.path().join("trusted-keys.json");
        std::fs::write(&file, b"{}").expect("write");
        chmod(&file, 0o644);
        check_permissions(&file, "trust file").expect("0644 in a 0700 directory");
        chmod(&file, 0o664);
        check_permissions(&file, "trust file").expect("group-writable is a warning");
        chmod(&file, 0o666);
        let err = check_permissions(&file, "trust file").expect_err("0666");
        assert!(err.to_string().contains("writable by others"), "{err}");
        assert!(err.to_string().contains("trusted-keys.json"), "{err}");
        chmod(&file, 0o644);
        chmod(dir.path(), 0o777);
        let err = check_permissions(&file, "trust file").expect_err("0777 directory");
        assert!(err.to_string().contains("directory holding"), "{err}");
        // The sticky bit keeps others from renaming over the file.
        chmod(dir.path(), 0o1777);
        check_permissions(&file, "trust file").expect("sticky directory");
        chmod(dir.path(), 0o700);
    }

    #[test]
    fn a_missing_path_is_left_to_its_reader() {
        check_permissions(Path::new("/no/such/file"), "trust file").expect("no opinion");
    }
}

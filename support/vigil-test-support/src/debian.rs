//! Programs from Debian packages that tests run (nats-server, tinyproxy,
//! promtool, ...): found on the PATH, or installed with apt-get when the
//! tests run as root, or the test fails saying what to install. A test
//! that needs one never skips.

use std::path::PathBuf;
use std::process::Command;

/// Where `name` is on the PATH (or in /usr/sbin, where Debian puts
/// daemons and which a user's PATH may lack), if it is.
pub fn found_on_path(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect())
        .unwrap_or_default();
    dirs.push(PathBuf::from("/usr/sbin"));
    dirs.into_iter().map(|p| p.join(name)).find(|p| p.is_file())
}

/// The program `name` from the Debian package `package`: found, or
/// installed with `apt-get install -y` when this runs as root, or the test
/// fails saying what to install.
pub fn program(name: &str, package: &str) -> PathBuf {
    if let Some(path) = found_on_path(name) {
        return path;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout == b"0\n");
    assert!(
        root,
        "this test needs `{name}`: install Debian's {package} package (apt-get install {package})"
    );
    eprintln!(
        "{name} is missing: installing Debian's {package} package (apt-get install -y {package})"
    );
    let out = Command::new("apt-get")
        .args(["install", "-y", package])
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .expect("run apt-get");
    assert!(
        out.status.success(),
        "apt-get install -y {package} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    found_on_path(name).unwrap_or_else(|| panic!("{package} installed, but no {name} on the PATH"))
}

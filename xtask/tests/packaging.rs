//! Every library crate can be packaged for a registry: internal dependencies
//! carry a version, and each crate has the metadata and README a registry
//! shows. `xtask/package-libs.sh` does the packaging itself (with
//! verification); these checks are the cheap part of it.

use toml::Value;
use xtask::{read_toml, root};

/// The library crates: the members under `crates/`.
fn libraries() -> Vec<String> {
    read_toml(&root().join("Cargo.toml"))["workspace"]["members"]
        .as_array()
        .expect("workspace.members")
        .iter()
        .filter_map(Value::as_str)
        .filter(|m| m.starts_with("crates/"))
        .map(str::to_owned)
        .collect()
}

/// crates.io category slugs in use here (all of them are listed at
/// crates.io/category_slugs; add one here once checked there).
const CATEGORIES: &[&str] = &[
    "asynchronous",
    "authentication",
    "cryptography",
    "development-tools",
    "development-tools::debugging",
    "development-tools::ffi",
    "encoding",
    "filesystem",
    "network-programming",
    "os",
    "os::unix-apis",
    "parser-implementations",
    "text-processing",
    "web-programming",
    "web-programming::http-server",
];

#[test]
fn internal_workspace_dependencies_have_a_version() {
    let manifest = read_toml(&root().join("Cargo.toml"));
    let version = manifest["workspace"]["package"]["version"]
        .as_str()
        .expect("workspace.package.version");
    let deps = manifest["workspace"]["dependencies"]
        .as_table()
        .expect("workspace.dependencies");
    for (name, spec) in deps {
        if spec.get("path").is_none() {
            continue;
        }
        assert_eq!(
            spec.get("version").and_then(Value::as_str),
            Some(version),
            "workspace.dependencies.{name}: a path dependency needs `version = \"{version}\"` \
             too, or crates depending on it cannot be packaged"
        );
    }
}

#[test]
fn library_crates_have_registry_metadata_and_a_readme() {
    let libs = libraries();
    assert!(!libs.is_empty());
    for dir in libs {
        let manifest = read_toml(&root().join(&dir).join("Cargo.toml"));
        let package = &manifest["package"];
        let description = package.get("description").and_then(Value::as_str);
        assert!(
            description.is_some_and(|d| !d.trim().is_empty()),
            "{dir}: needs a `description`"
        );
        assert_eq!(
            package.get("readme").and_then(Value::as_str),
            Some("README.md"),
            "{dir}: needs `readme = \"README.md\"`"
        );
        let readme = root().join(&dir).join("README.md");
        assert!(readme.is_file(), "{dir}: README.md is missing");
        assert_eq!(
            package
                .get("repository")
                .and_then(|r| r.get("workspace"))
                .and_then(Value::as_bool),
            Some(true),
            "{dir}: needs `repository.workspace = true`"
        );

        let keywords = package
            .get("keywords")
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("{dir}: needs `keywords`"));
        assert!((1..=5).contains(&keywords.len()), "{dir}: 1 to 5 keywords");
        for k in keywords {
            let k = k.as_str().expect("keyword");
            let ok = k.len() <= 20
                && k.starts_with(|c: char| c.is_ascii_alphabetic())
                && k.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
            assert!(
                ok,
                "{dir}: keyword {k:?}: lowercase ASCII, `-`, `_`, at most 20"
            );
        }

        let categories = package
            .get("categories")
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("{dir}: needs `categories`"));
        assert!(
            (1..=5).contains(&categories.len()),
            "{dir}: 1 to 5 categories"
        );
        for c in categories {
            let c = c.as_str().expect("category");
            assert!(
                CATEGORIES.contains(&c),
                "{dir}: category {c:?} is not a known crates.io slug"
            );
        }
    }
}

/// `cargo package` with verification, for every library crate in
/// dependency order (`xtask/package-libs.sh`): each `.crate` builds on its
/// own against the packaged contents of the crates it depends on. Builds in
/// its own target directory (`target/package-check`), so the first run
/// compiles the dependencies once more.
#[test]
fn every_library_crate_packages_with_verification() {
    let out = std::process::Command::new(root().join("xtask/package-libs.sh"))
        .env("CARGO_TARGET_DIR", root().join("target/package-check"))
        .output()
        .expect("run xtask/package-libs.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "xtask/package-libs.sh failed:\n{stdout}\n{}",
        // The end says which crate and why; the start is "patch unused" noise.
        stderr
            .lines()
            .rev()
            .take(60)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n")
    );
    for lib in libraries() {
        let name = lib.trim_start_matches("crates/");
        assert!(
            stderr.contains(&format!("Verifying {name} v")),
            "{name} was not verified:\n{stdout}"
        );
    }
}

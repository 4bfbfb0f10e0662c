//! Tidy: the workspace's own conventions, as tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml::Value;
use xtask::{read_toml, root};

struct Member {
    dir: String,
    manifest: Value,
}

impl Member {
    fn name(&self) -> &str {
        self.manifest["package"]["name"]
            .as_str()
            .expect("package.name")
    }

    fn deps(&self, table: &str) -> Vec<String> {
        self.manifest
            .get(table)
            .and_then(Value::as_table)
            .map(|t| t.keys().cloned().collect())
            .unwrap_or_default()
    }
}

fn members() -> Vec<Member> {
    let root_manifest = read_toml(&root().join("Cargo.toml"));
    root_manifest["workspace"]["members"]
        .as_array()
        .expect("workspace.members")
        .iter()
        .map(|m| {
            let dir = m.as_str().expect("member path").to_owned();
            let manifest = read_toml(&root().join(&dir).join("Cargo.toml"));
            Member { dir, manifest }
        })
        .collect()
}

#[test]
fn every_member_inherits_lints_and_package_settings() {
    for m in members() {
        assert_eq!(
            m.manifest
                .get("lints")
                .and_then(|l| l.get("workspace"))
                .and_then(Value::as_bool),
            Some(true),
            "{}: needs `[lints] workspace = true`",
            m.dir
        );
        for key in ["version", "edition", "rust-version", "license", "publish"] {
            assert_eq!(
                m.manifest["package"]
                    .get(key)
                    .and_then(|v| v.get("workspace"))
                    .and_then(Value::as_bool),
                Some(true),
                "{}: `{key}.workspace = true` expected",
                m.dir
            );
        }
        // Versions are chosen once, in the root manifest.
        for table in ["dependencies", "dev-dependencies", "build-dependencies"] {
            let Some(deps) = m.manifest.get(table).and_then(Value::as_table) else {
                continue;
            };
            for (dep, spec) in deps {
                assert_eq!(
                    spec.get("workspace").and_then(Value::as_bool),
                    Some(true),
                    "{}: {table}.{dep} must use `workspace = true`",
                    m.dir
                );
            }
        }
    }
}

#[test]
fn folder_name_is_package_name() {
    // Two binaries share their command name with their library crate, and
    // Cargo needs package names to be unique: those packages end in `-bin`.
    for m in members() {
        let folder = Path::new(&m.dir)
            .file_name()
            .and_then(|f| f.to_str())
            .expect("folder");
        let name = m.name();
        let ok = name == folder || (m.dir.starts_with("bins/") && name == format!("{folder}-bin"));
        assert!(
            ok,
            "{}: package {name:?} should be named after its folder",
            m.dir
        );
    }
}

/// The crate map's layering: a library may depend only on those listed for it.
fn allowed_internal_deps() -> BTreeMap<&'static str, &'static [&'static str]> {
    BTreeMap::from([
        ("vigil-proto", &[][..]),
        ("vigil-auth", &[][..]),
        ("vigil-command", &[][..]),
        ("vigil-module-sdk", &[][..]),
        // vigil-command for module manifests (sans-IO checks and the
        // version store; no tokio, no network).
        ("vigil-modules", &["vigil-module-sdk", "vigil-command"][..]),
        ("vigil-failsafe", &[][..]),
        ("vigil-audit", &[][..]),
        ("vigil-log", &[][..]),
        ("vigil-ws", &[][..]),
        // The NATS link: identities and pins from vigil-auth only.
        ("vigil-cluster", &["vigil-auth"][..]),
        // Test helpers (`support/`): generic, they know the binaries only
        // by name and log line.
        ("vigil-test-support", &[][..]),
        (
            "vigil-server",
            &[
                "vigil-proto",
                "vigil-auth",
                "vigil-command",
                "vigil-modules",
                "vigil-failsafe",
                "vigil-audit",
                "vigil-ws",
                "vigil-cluster",
            ][..],
        ),
        (
            "vigil-client",
            &[
                "vigil-proto",
                "vigil-auth",
                "vigil-command",
                "vigil-modules",
                "vigil-failsafe",
                "vigil-audit",
                "vigil-ws",
            ][..],
        ),
    ])
}

#[test]
fn libraries_never_depend_on_binaries_and_follow_the_crate_map() {
    let all = members();
    let bins: Vec<String> = all
        .iter()
        .filter(|m| m.dir.starts_with("bins/") || m.dir.starts_with("mods/") || m.dir == "xtask")
        .map(|m| m.name().to_owned())
        .collect();
    let internal: Vec<String> = all.iter().map(|m| m.name().to_owned()).collect();
    let layering = allowed_internal_deps();
    for m in all
        .iter()
        .filter(|m| m.dir.starts_with("crates/") || m.dir.starts_with("support/"))
    {
        for table in ["dependencies", "dev-dependencies", "build-dependencies"] {
            for dep in m.deps(table) {
                assert!(
                    !bins.contains(&dep),
                    "{}: {table} names the binary package {dep}",
                    m.dir
                );
            }
        }
        let allowed = layering.get(m.name()).unwrap_or_else(|| {
            panic!(
                "{}: add it to the crate map in this test and in docs/ARCHITECTURE.md",
                m.dir
            )
        });
        for dep in m.deps("dependencies") {
            if internal.contains(&dep) {
                assert!(
                    allowed.contains(&dep.as_str()),
                    "{}: depends on {dep}, which the crate map does not allow",
                    m.dir
                );
            }
        }
    }
}

/// Test helpers (the members under `support/`) are dev-dependencies only:
/// nothing that ships links them.
#[test]
fn test_support_is_only_a_dev_dependency() {
    let all = members();
    let support: Vec<String> = all
        .iter()
        .filter(|m| m.dir.starts_with("support/"))
        .map(|m| m.name().to_owned())
        .collect();
    for m in &all {
        for table in ["dependencies", "build-dependencies"] {
            for dep in m.deps(table) {
                assert!(
                    !support.contains(&dep),
                    "{}: {table} names the test helper {dep}; it may only be a dev-dependency",
                    m.dir
                );
            }
        }
    }
}

fn crate_roots(m: &Member) -> Vec<PathBuf> {
    let dir = root().join(&m.dir);
    let mut roots = Vec::new();
    for file in ["src/lib.rs", "src/main.rs"] {
        if dir.join(file).exists() {
            roots.push(dir.join(file));
        }
    }
    if let Some(bins) = m.manifest.get("bin").and_then(Value::as_array) {
        for b in bins {
            if let Some(p) = b.get("path").and_then(Value::as_str) {
                let p = dir.join(p);
                if !roots.contains(&p) {
                    roots.push(p);
                }
            }
        }
    }
    roots
}

#[test]
fn every_crate_has_top_level_docs() {
    for m in members() {
        let roots = crate_roots(&m);
        assert!(!roots.is_empty(), "{}: no crate root found", m.dir);
        for path in roots {
            let text = std::fs::read_to_string(&path).expect("read");
            assert!(
                text.trim_start().starts_with("//!"),
                "{}: must start with `//!` crate docs",
                path.display()
            );
            if path.ends_with("lib.rs") {
                assert!(
                    text.contains("#![deny(missing_docs)]"),
                    "{}: library crates deny missing docs",
                    path.display()
                );
            }
        }
    }
}

/// Files allowed to contain `unsafe`: the two sides of the module ABI.
const UNSAFE_ALLOWED: &[&str] = &[
    "crates/vigil-modules/src/loader.rs",
    "crates/vigil-module-sdk/src/lib.rs",
    "crates/vigil-module-sdk/src/ffi.rs",
];

#[test]
fn unsafe_code_is_confined_to_the_module_abi() {
    // The workspace denies unsafe code; only the module loader (host side)
    // and the module SDK (module side) may opt out.
    let root_manifest = read_toml(&root().join("Cargo.toml"));
    assert_eq!(
        root_manifest["workspace"]["lints"]["rust"]["unsafe_code"].as_str(),
        Some("deny")
    );
    for m in members() {
        let dir = root().join(&m.dir).join("src");
        for path in rust_files(&dir) {
            let text = std::fs::read_to_string(&path).expect("read");
            let rel = path
                .strip_prefix(root())
                .expect("inside root")
                .to_string_lossy()
                .into_owned();
            if UNSAFE_ALLOWED.contains(&rel.as_str()) {
                // Every unsafe block says why it is sound.
                let lines: Vec<&str> = text.lines().collect();
                for (i, line) in lines.iter().enumerate() {
                    if line.contains("unsafe {") || line.contains("unsafe impl") {
                        let window = &lines[i.saturating_sub(6)..=i];
                        assert!(
                            window.iter().any(|l| l.contains("SAFETY:")),
                            "{rel}:{}: unsafe without a `// SAFETY:` note just above",
                            i + 1
                        );
                    }
                }
            } else {
                for needle in [
                    "unsafe {",
                    "unsafe fn",
                    "unsafe impl",
                    "allow(unsafe_code)",
                    "unsafe extern",
                ] {
                    assert!(
                        !text.contains(needle),
                        "{rel}: `{needle}` outside the module ABI"
                    );
                }
            }
        }
    }
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

#[test]
fn docs_exist_and_name_every_crate() {
    let arch =
        std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).expect("docs/ARCHITECTURE.md");
    for m in members() {
        let folder = &m.dir;
        assert!(
            arch.contains(folder.as_str()),
            "docs/ARCHITECTURE.md does not mention {folder}"
        );
    }
    for doc in ["docs/protocol.md", "docs/dependencies.md", "README.md"] {
        assert!(root().join(doc).exists(), "{doc} missing");
    }
}

#[test]
fn every_external_dependency_is_listed_in_dependencies_md() {
    let listed =
        std::fs::read_to_string(root().join("docs/dependencies.md")).expect("docs/dependencies.md");
    let root_manifest = read_toml(&root().join("Cargo.toml"));
    let deps = root_manifest["workspace"]["dependencies"]
        .as_table()
        .expect("workspace.dependencies");
    for (name, spec) in deps {
        if spec.get("path").is_some() {
            continue;
        }
        assert!(
            listed.contains(&format!("`{name}`")),
            "docs/dependencies.md does not list `{name}`"
        );
    }
}

/// The reliability catalogue's case ids (`W01`, `F05`...) in
/// `text`.
fn case_ids(text: &str) -> std::collections::BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut ids = std::collections::BTreeSet::new();
    for i in 0..bytes.len().saturating_sub(2) {
        let word_start = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
        let word_end = bytes.get(i + 3).is_none_or(|b| !b.is_ascii_alphanumeric());
        if word_start
            && word_end
            && b"WRCMTF".contains(&bytes[i])
            && bytes[i + 1].is_ascii_digit()
            && bytes[i + 2].is_ascii_digit()
        {
            ids.insert(text[i..i + 3].to_owned());
        }
    }
    ids
}

/// The names of the functions defined in the workspace's Rust files.
fn function_names() -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for dir in ["crates", "bins", "xtask", "mods"] {
        for path in rust_files(&root().join(dir)) {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for (at, _) in text.match_indices("fn ") {
                let name: String = text[at + 3..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    names.insert(name);
                }
            }
        }
    }
    names
}

/// The test names in a catalogue cell: backticked snake_case words.
fn test_names(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .filter(|t| {
            t.contains('_')
                && t.starts_with(|c: char| c.is_ascii_lowercase())
                && t.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
        .map(str::to_owned)
        .collect()
}

/// Every catalogue row names the test that checks it (or says "(same)",
/// the test of the row above), and every name is a function that exists:
/// an id written only in a comment does not count. Every catalogue test
/// named after a case (`w09_...`) has its row.
#[test]
fn reliability_cases_in_the_docs_are_the_tested_ones() {
    let doc = std::fs::read_to_string(root().join("docs/reliability.md")).expect("reliability.md");
    let functions = function_names();
    let mut documented = std::collections::BTreeSet::new();
    let mut problems = Vec::new();
    let mut section = "";
    let mut previous: Vec<String> = Vec::new();
    for line in doc.lines() {
        if let Some(heading) = line.strip_prefix("## ") {
            section = heading;
            continue;
        }
        let Some(row) = line.strip_prefix("| ") else {
            continue;
        };
        let Some(id) = row.get(..3).filter(|id| case_ids(id).len() == 1) else {
            continue;
        };
        let cells: Vec<&str> = line.split('|').collect();
        let last = cells
            .get(cells.len().saturating_sub(2))
            .copied()
            .unwrap_or("");
        let findings = section.starts_with("Findings");
        let mut names = test_names(last);
        if last.trim() == "(same)" {
            names = previous.clone();
        }
        if !findings {
            documented.insert(id.to_owned());
            if names.is_empty() {
                problems.push(format!("{id}: the row names no test"));
            }
            previous = names.clone();
        }
        for name in &names {
            if !functions.contains(name) {
                problems.push(format!("{id}: no function `{name}` in the workspace"));
            }
        }
    }
    assert!(documented.len() >= 30, "{documented:?}");
    for path in rust_files(&root().join("bins/vigil-server/tests/it")) {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        for (at, _) in text.match_indices("fn ") {
            let name = &text[at + 3..];
            let prefix = name.get(..4).unwrap_or("");
            if prefix.ends_with('_') && case_ids(&prefix[..3].to_uppercase()).len() == 1 {
                let id = prefix[..3].to_uppercase();
                if !documented.contains(&id) {
                    problems.push(format!(
                        "{}: test for {id}, which docs/reliability.md does not list",
                        path.display()
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Lines of a library source file, not counting the unit tests at its end
/// (a trailing `#[cfg(test)]` module), past which the file must say at its
/// top why it is one file: a `//! Long file:` line in its module docs.
const LONG_FILE: usize = 520;

/// Lines a binary's `main.rs` may have: it is glue over the libraries.
const MAIN_RS: usize = 150;

fn code_lines(text: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .iter()
        .position(|l| l.starts_with("#[cfg(test)]"))
        .unwrap_or(lines.len())
}

fn top_docs(text: &str) -> impl Iterator<Item = &str> {
    text.lines().take_while(|l| l.starts_with("//!"))
}

#[test]
fn long_library_files_say_why_and_main_rs_is_glue() {
    let mut problems = Vec::new();
    for m in members() {
        let dir = root().join(&m.dir);
        if m.dir.starts_with("crates/") {
            for path in rust_files(&dir.join("src")) {
                let text = std::fs::read_to_string(&path).expect("read");
                let n = code_lines(&text);
                let says_why = top_docs(&text).any(|l| l.starts_with("//! Long file:"));
                if n > LONG_FILE && !says_why {
                    problems.push(format!(
                        "{}: {n} lines before its unit tests (past {LONG_FILE}): cut it along what it does, or say why not in a `//! Long file:` line at its top",
                        path.display()
                    ));
                }
            }
        }
        if m.dir.starts_with("bins/") {
            let main = dir.join("src/main.rs");
            let text = std::fs::read_to_string(&main).expect("read");
            let n = text.lines().count();
            if n >= MAIN_RS {
                problems.push(format!(
                    "{}: {n} lines; a binary's main.rs stays under {MAIN_RS} (move what it does into its modules or a library)",
                    main.display()
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_size_rule_counts_code_not_unit_tests() {
    let text = "//! Docs.\n//! Long file: a reason.\nfn a() {}\n\n#[cfg(test)]\nmod tests {}\n";
    assert_eq!(code_lines(text), 4);
    assert!(top_docs(text).any(|l| l.starts_with("//! Long file:")));
    assert_eq!(code_lines("fn a() {}\n"), 1);
}

/// The code of `path` before its unit tests, without comment lines.
fn code_of(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).expect("read");
    text.lines()
        .take(code_lines(&text))
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(str::to_owned)
        .collect()
}

/// What pure code must not name: I/O, processes, the environment, clocks.
const IMPURE: &[&str] = &[
    "std::fs",
    "std::net",
    "std::process",
    "std::env",
    "tokio::net",
    "tokio::fs",
    "tokio::time",
    "SystemTime::now",
    "Instant::now",
];

/// ARCHITECTURE.md: vigil-proto does no I/O and reads no clock;
/// vigil-command does no network I/O and reads no clock, and touches files
/// only in the authorities loader, the replay guard's driver and the
/// manifest store;
/// vigil-failsafe's core reads no clock.
#[test]
fn pure_code_does_no_io_and_reads_no_clock() {
    let mut problems = Vec::new();
    let mut check = |path: &Path, allowed: &[&str]| {
        for (i, line) in code_of(path).iter().enumerate() {
            for word in IMPURE.iter().filter(|w| !allowed.contains(w)) {
                if line.contains(word) {
                    problems.push(format!("{}:{}: {word}: {line}", path.display(), i + 1));
                }
            }
        }
    };
    for path in rust_files(&root().join("crates/vigil-proto/src")) {
        check(&path, &[]);
    }
    for path in rust_files(&root().join("crates/vigil-command/src")) {
        // The authorities loader, the replay guard's file, and the module
        // keys loader and version store of manifests.
        let files_allowed = path.ends_with("authority.rs")
            || path.ends_with("replay/mod.rs")
            || path.ends_with("manifest/store.rs");
        check(&path, if files_allowed { &["std::fs"] } else { &[] });
    }
    check(&root().join("crates/vigil-failsafe/src/core.rs"), &[]);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let proto = read_toml(&root().join("crates/vigil-proto/Cargo.toml"));
    assert!(
        proto["dependencies"].get("tokio").is_none(),
        "vigil-proto must not depend on tokio (its codec uses tokio-util's traits only)"
    );
}

/// ARCHITECTURE.md: only binaries read flags and environment variables;
/// only the composition root (`vigil_server::Settings`) reads config files.
#[test]
fn only_binaries_read_flags_and_the_environment() {
    // Helpers for tests and benchmarks that build module dylibs with the
    // cargo that runs them (`CARGO`).
    const ENV_ALLOWED: &[&str] = &["crates/vigil-modules/src/dev.rs"];
    let mut problems = Vec::new();
    for m in members().iter().filter(|m| m.dir.starts_with("crates/")) {
        for path in rust_files(&root().join(&m.dir).join("src")) {
            let rel = path.strip_prefix(root()).unwrap_or(&path).to_owned();
            let env_ok = ENV_ALLOWED.iter().any(|a| rel == Path::new(a));
            let in_root = rel.starts_with("crates/vigil-server/src/deployment");
            for (i, line) in code_of(&path).iter().enumerate() {
                let env = ["env::var", "env::args", "clap::Parser"]
                    .iter()
                    .any(|w| line.contains(w));
                if env && !env_ok {
                    problems.push(format!("{}:{}: {line}", rel.display(), i + 1));
                }
                if line.contains("toml::") && !in_root {
                    problems.push(format!("{}:{}: {line}", rel.display(), i + 1));
                }
                // Flags and variables only as `Settings`' `cli` derive.
                if line.contains("env = \"VIGIL_") && !in_root {
                    problems.push(format!("{}:{}: {line}", rel.display(), i + 1));
                }
            }
        }
        if let Some(clap) = m.manifest["dependencies"].get("clap") {
            assert!(
                m.name() == "vigil-server"
                    && clap.get("optional").and_then(Value::as_bool) == Some(true),
                "{}: a library depends on clap only as vigil-server's optional `cli` feature",
                m.dir
            );
        }
    }
    assert!(
        problems.is_empty(),
        "libraries read flags, the environment or config files:\n{}",
        problems.join("\n")
    );
}

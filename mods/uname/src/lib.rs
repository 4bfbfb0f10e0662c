//! `uname`: reports the host's system information as JSON.
//!
//! Reads the kernel's own files under `/proc/sys/kernel` (Linux), so it
//! needs no dependencies. The argument is ignored.

#![deny(missing_docs)]

use std::fmt::Write as _;

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
}

/// A JSON string literal for `s`.
fn json(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn uname(_args: &str) -> Result<String, String> {
    let field = |key: &str, value: Option<String>| {
        format!(
            "{}: {}",
            json(key),
            value.map_or("null".to_owned(), |v| json(&v))
        )
    };
    let fields = [
        field(
            "sysname",
            read("/proc/sys/kernel/ostype").or(Some(std::env::consts::OS.to_owned())),
        ),
        field("nodename", read("/proc/sys/kernel/hostname")),
        field("release", read("/proc/sys/kernel/osrelease")),
        field("version", read("/proc/sys/kernel/version")),
        field("machine", Some(std::env::consts::ARCH.to_owned())),
    ];
    Ok(format!("{{{}}}", fields.join(", ")))
}

vigil_module_sdk::export_module! {
    name: "uname",
    description: "Reports the host's system information (sysname, nodename, release, version, machine).",
    execute: uname,
}

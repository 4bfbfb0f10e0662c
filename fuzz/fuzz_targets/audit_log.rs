//! Reading an audit log (what `vigilctl audit verify` and the server's
//! start do with a file an attacker may have edited): never panics, and
//! memory stays bounded by the longest line.
//!
//! `cargo fuzz run audit_log --sanitizer none` (or `just fuzz audit_log`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let report = vigil_audit::verify_reader(data).expect("reading memory cannot fail");
    if report.problem.is_none() {
        assert!(report.records == 0 || data.ends_with(b"\n"));
    }
    let _ = report.to_string();
});

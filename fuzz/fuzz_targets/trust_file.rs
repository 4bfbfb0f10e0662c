//! `trusted-keys.json`: parsing never panics, and what parses writes back
//! to the same set of fingerprints.
//!
//! `cargo fuzz run trust_file --sanitizer none` (or `just fuzz trust_file`).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use vigil_auth::TrustFile;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("trusted-keys.json");
    let Ok(file) = TrustFile::parse(data, path) else {
        return;
    };
    let again = TrustFile::parse(file.to_json().as_bytes(), path).expect("what to_json writes parses");
    assert_eq!(again.trusted_fingerprints, file.trusted_fingerprints);
});

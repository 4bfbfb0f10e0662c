//! The authorities file (enrolled Ed25519 keys and the command types each
//! may issue): parsing never panics, weak keys never pass, and what parses
//! writes back to the same keys.
//!
//! `cargo fuzz run authorities --sanitizer none` (or `just fuzz authorities`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_command::Authorities;

fuzz_target!(|data: &[u8]| {
    let Ok(authorities) = Authorities::from_json(data) else {
        return;
    };
    for key in authorities.iter() {
        assert!(!key.public_key().is_weak(), "a weak key was enrolled");
    }
    let again = Authorities::from_json(authorities.to_json().as_bytes())
        .expect("what to_json writes parses");
    assert_eq!(again.len(), authorities.len());
    for key in authorities.iter() {
        let back = again.get(key.public_key()).expect("same keys");
        assert_eq!(back, key);
    }
});

//! Signed commands as JSON: parsing, the CIRIS signing bytes and
//! verification never panic; what parses writes back to the same command;
//! a command signed by an enrolled key keeps a valid signature across that
//! round trip.
//!
//! `cargo fuzz run command --sanitizer none` (or `just fuzz command`).
#![no_main]

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use libfuzzer_sys::fuzz_target;
use vigil_command::{
    Authorities, AuthorityKey, Refusal, SignedCommand, SigningKey, Timestamp,
    Verifier,
};

struct Fixed {
    key: SigningKey,
    verifier: Verifier,
}

fn fixed() -> &'static Fixed {
    static FIXED: OnceLock<Fixed> = OnceLock::new();
    FIXED.get_or_init(|| {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let authority = AuthorityKey::new(
            Some("wa_fuzz".into()),
            key.verifying_key(),
            ["RUN", "SHUTDOWN_NOW"],
        )
        .expect("a valid key");
        let authorities = Authorities::from_keys([authority]).expect("one key");
        let verifier = Verifier::new(authorities)
            .with_supported_types(["RUN", "SHUTDOWN_NOW"])
            .with_own_agent_id("agent");
        Fixed { key, verifier }
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(t) = Timestamp::parse(text)
    {
        assert_eq!(Timestamp::parse(&t.isoformat()), Ok(t));
    }
    let Ok(command) = SignedCommand::from_json(data) else {
        return;
    };
    let signing = command.signing_bytes();
    let again =
        SignedCommand::from_json(command.to_json().as_bytes()).expect("what to_json writes parses");
    assert_eq!(again, command);
    assert_eq!(again.signing_bytes().ok(), signing.as_ref().ok().cloned());
    let fixed = fixed();
    let now = command.body.issued_at.to_system_time();
    let _ = fixed.verifier.verify(&command, now);
    let _ = fixed.verifier.verify(&command, SystemTime::UNIX_EPOCH);

    // The same fields, signed by the enrolled key: the signature holds
    // after a JSON round trip, whatever the strings hold.
    let mut unsigned = command.body.clone();
    unsigned.wa_id = "wa_fuzz".into();
    let Ok(signed) = unsigned.sign(&fixed.key) else {
        return;
    };
    let relayed = SignedCommand::from_json(signed.to_json().as_bytes()).expect("parses");
    match fixed
        .verifier
        .verify(&relayed, now + Duration::from_secs(1))
    {
        Err(Refusal::InvalidSignature | Refusal::WeakKey | Refusal::UnauthorizedKey) => {
            panic!("a command signed by the enrolled key lost its signature: {relayed:?}")
        }
        _ => {}
    }
});

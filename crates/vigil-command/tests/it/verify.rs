//! The verifier: the order of its checks, its refusals, forgeries.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::Verifier as _;
use vigil_command::{
    Authorities, AuthorityKey, Refusal, ReplayGuard, Signature, SignedCommand, SigningKey,
    UnsignedCommand, Verifier, VerifyingKey, WindowSide, encode_public_key, encode_signature,
};

use crate::{at, ts};

fn ops() -> SigningKey {
    SigningKey::from_bytes(&[11; 32])
}

fn stranger() -> SigningKey {
    SigningKey::from_bytes(&[12; 32])
}

fn authorities() -> Authorities {
    Authorities::from_keys([
        AuthorityKey::new(
            Some("wa_ops".into()),
            ops().verifying_key(),
            ["SHUTDOWN_NOW", "EXEC"],
        )
        .expect("ops"),
        AuthorityKey::new(
            None,
            SigningKey::from_bytes(&[13; 32]).verifying_key(),
            ["FREEZE"],
        )
        .expect("anonymous"),
    ])
    .expect("authorities")
}

fn unsigned(command_type: &str, issued: i64) -> UnsignedCommand {
    UnsignedCommand::new("cmd_1", command_type, "wa_ops", ts(issued), "test")
}

fn sign(u: UnsignedCommand, key: &SigningKey) -> SignedCommand {
    u.sign(key).expect("sign")
}

fn code(v: &Verifier, c: &SignedCommand, now: i64) -> Result<(), &'static str> {
    v.verify(c, at(now)).map(|_| ()).map_err(|e| e.code())
}

#[test]
fn a_good_command_passes_and_names_its_authority() {
    let v = Verifier::new(authorities());
    let c = sign(unsigned("SHUTDOWN_NOW", 0), &ops());
    let ok = v.verify(&c, at(1)).expect("verified");
    assert_eq!(ok.authority_id(), "wa_ops");
    assert_eq!(ok.command(), &c);
    assert_eq!(ok.forget_after(), at(300));

    // A key enrolled without an id may sign as any wa_id.
    let mut u = unsigned("FREEZE", 0);
    u.wa_id = "wa_whoever".into();
    let ok = v
        .verify(&sign(u, &SigningKey::from_bytes(&[13; 32])), at(1))
        .expect("verified");
    assert_eq!(ok.authority_id(), "wa_whoever");
}

#[test]
fn checks_run_in_ciris_order() {
    let v = Verifier::new(authorities());
    // Unsupported type, stale, and signed by a stranger: the type wins.
    let c = sign(unsigned("REBOOT", -1000), &stranger());
    assert_eq!(code(&v, &c, 0), Err("unsupported_command_type"));
    // Stale and forged: the window wins.
    let mut c = sign(unsigned("SHUTDOWN_NOW", -1000), &stranger());
    c.body.reason = "forged".into();
    assert_eq!(code(&v, &c, 0), Err("timestamp_outside_window"));
    // Fresh, forged and from an unknown key: the signature wins (CIRIS
    // checks the signature before the key).
    let mut c = sign(unsigned("SHUTDOWN_NOW", 0), &stranger());
    c.body.reason = "forged".into();
    assert_eq!(code(&v, &c, 0), Err("invalid_signature"));
    // Genuinely signed by an unknown key.
    let c = sign(unsigned("SHUTDOWN_NOW", 0), &stranger());
    assert_eq!(code(&v, &c, 0), Err("unauthorized_key"));
    // An enrolled key signing as another authority.
    let mut u = unsigned("SHUTDOWN_NOW", 0);
    u.wa_id = "wa_other".into();
    let refusal = v.verify(&sign(u, &ops()), at(0)).expect_err("mismatch");
    assert_eq!(
        refusal,
        Refusal::WaIdMismatch {
            wa_id: "wa_other".into(),
            enrolled: "wa_ops".into()
        }
    );
    // An enrolled key, a type some other authority may issue.
    let c = sign(unsigned("FREEZE", 0), &ops());
    assert_eq!(code(&v, &c, 0), Err("command_type_not_allowed"));
}

#[test]
fn supported_types_narrow_the_endpoint() {
    // A CIRIS endpoint accepts SHUTDOWN_NOW only, even from an authority
    // that may issue more.
    let v = Verifier::new(authorities()).with_supported_types(["SHUTDOWN_NOW"]);
    assert_eq!(
        code(&v, &sign(unsigned("EXEC", 0), &ops()), 0),
        Err("unsupported_command_type")
    );
    assert_eq!(
        code(&v, &sign(unsigned("SHUTDOWN_NOW", 0), &ops()), 0),
        Ok(())
    );
    assert!(v.supports("SHUTDOWN_NOW") && !v.supports("EXEC"));
}

#[test]
fn freshness_edges_match_ciris() {
    let v = Verifier::new(authorities());
    let c = sign(unsigned("SHUTDOWN_NOW", 0), &ops());
    // At most five minutes old, inclusive.
    assert_eq!(code(&v, &c, 300), Ok(()));
    let just_late = at(300) + Duration::from_nanos(1);
    assert_eq!(
        v.verify(&c, just_late).map(|_| ()),
        Err(Refusal::OutsideWindow {
            side: WindowSide::TooOld
        })
    );
    // At most one minute ahead, inclusive.
    assert_eq!(code(&v, &c, -60), Ok(()));
    assert_eq!(
        v.verify(&c, at(-61)).map(|_| ()),
        Err(Refusal::OutsideWindow {
            side: WindowSide::InFuture
        })
    );
    // expires_at is honoured, inclusive, after the window check.
    let mut u = unsigned("SHUTDOWN_NOW", 0);
    u.expires_at = Some(ts(30));
    let c = sign(u, &ops());
    assert_eq!(code(&v, &c, 30), Ok(()));
    assert_eq!(code(&v, &c, 31), Err("expired"));
    assert_eq!(code(&v, &c, 400), Err("timestamp_outside_window"));
    assert_eq!(v.verify(&c, at(0)).expect("ok").forget_after(), at(30));
}

#[test]
fn malformed_keys_and_signatures_are_refused_as_such() {
    let v = Verifier::new(authorities());
    let good = sign(unsigned("SHUTDOWN_NOW", 0), &ops());
    let mut c = good.clone();
    c.wa_public_key = "AAAA".into();
    let e = v.verify(&c, at(0)).expect_err("short key");
    assert_eq!(e.code(), "malformed");
    assert!(e.to_string().contains("32 bytes"), "{e}");
    let mut c = good.clone();
    c.signature = c.signature[..40].to_owned();
    assert_eq!(code(&v, &c, 0), Err("malformed"));
    let mut c = good;
    c.signature = "not base64 at all".into();
    assert_eq!(code(&v, &c, 0), Err("malformed"));
}

/// The identity point as a public key, with R = identity and s = 0,
/// "verifies" for every message under the plain Ed25519 equation.
fn identity_forgery() -> (VerifyingKey, Signature) {
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let key = VerifyingKey::from_bytes(&identity).expect("identity decodes");
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(&identity);
    (key, Signature::from_bytes(&sig))
}

#[test]
fn verify_strict_refuses_the_identity_point_forgery_that_verify_accepts() {
    let (key, sig) = identity_forgery();
    assert!(key.is_weak());
    for msg in [&b"SHUTDOWN_NOW"[..], b"anything at all"] {
        assert!(
            key.verify(msg, &sig).is_ok(),
            "plain verify accepts the forgery"
        );
        assert!(
            key.verify_strict(msg, &sig).is_err(),
            "verify_strict refuses it"
        );
    }
}

#[test]
fn the_verifier_refuses_a_forged_command_under_a_weak_key() {
    let (key, sig) = identity_forgery();
    let mut c = sign(unsigned("SHUTDOWN_NOW", 0), &ops());
    c.wa_public_key = encode_public_key(&key);
    c.signature = encode_signature(&sig);
    let message = c.signing_bytes().expect("bytes");
    assert!(
        key.verify(&message, &sig).is_ok(),
        "the forgery is valid for plain verify"
    );
    let v = Verifier::new(authorities());
    assert_eq!(code(&v, &c, 0), Err("weak_key"));
    // And no weak key can be enrolled to make it pass.
    assert!(AuthorityKey::new(None, key, ["SHUTDOWN_NOW"]).is_err());
}

#[test]
fn target_is_checked_when_the_verifier_knows_its_agent() {
    let v = Verifier::new(authorities()).with_own_agent_id("agent-1");
    let mut u = unsigned("SHUTDOWN_NOW", 0);
    assert_eq!(code(&v, &sign(u.clone(), &ops()), 0), Ok(()));
    u.target_agent_id = Some("agent-1".into());
    assert_eq!(code(&v, &sign(u.clone(), &ops()), 0), Ok(()));
    u.target_agent_id = Some("agent-2".into());
    let c = sign(u, &ops());
    assert_eq!(code(&v, &c, 0), Err("wrong_target"));
    // A server-side verifier without an agent id accepts it.
    assert_eq!(code(&Verifier::new(authorities()), &c, 0), Ok(()));
}

#[test]
fn replay_is_last_and_only_records_good_commands() {
    let guard = Arc::new(ReplayGuard::in_memory());
    let v = Verifier::new(authorities())
        .with_own_agent_id("agent-1")
        .with_replay_guard(Arc::clone(&guard));
    let mut forged = sign(unsigned("SHUTDOWN_NOW", 0), &ops());
    forged.body.reason = "forged".into();
    assert_eq!(code(&v, &forged, 0), Err("invalid_signature"));
    let mut u = unsigned("SHUTDOWN_NOW", 0);
    u.target_agent_id = Some("agent-2".into());
    assert_eq!(code(&v, &sign(u, &ops()), 0), Err("wrong_target"));
    assert!(guard.is_empty(), "refused commands leave no trace");

    let c = sign(unsigned("SHUTDOWN_NOW", 0), &ops());
    assert_eq!(code(&v, &c, 0), Ok(()));
    assert!(guard.is_empty(), "verify records nothing (no I/O)");
    assert_eq!(
        v.accept(&c, at(0)).map(|_| ()).map_err(|e| e.code()),
        Ok(())
    );
    assert_eq!(code(&v, &c, 1), Err("replayed"));
    // After the window the command is stale, not replayed.
    assert_eq!(code(&v, &c, 301), Err("timestamp_outside_window"));
}

#[test]
fn every_refusal_has_a_distinct_code_and_message() {
    let refusals = [
        Refusal::Malformed { detail: "x".into() },
        Refusal::UnsupportedCommandType {
            command_type: "X".into(),
        },
        Refusal::OutsideWindow {
            side: WindowSide::TooOld,
        },
        Refusal::Expired,
        Refusal::InvalidSignature,
        Refusal::WeakKey,
        Refusal::UnauthorizedKey,
        Refusal::WaIdMismatch {
            wa_id: "a".into(),
            enrolled: "b".into(),
        },
        Refusal::CommandTypeNotAllowed {
            authority: "a".into(),
            command_type: "X".into(),
        },
        Refusal::WrongTarget {
            target: "a".into(),
            own: "b".into(),
        },
        Refusal::Replayed {
            command_id: "c".into(),
        },
        Refusal::ReplayStoreUnavailable { detail: "d".into() },
    ];
    let codes: BTreeSet<&str> = refusals.iter().map(Refusal::code).collect();
    assert_eq!(codes.len(), refusals.len());
    // Each is an ack code that client and server both know by name, and so
    // are the parse errors' codes.
    let parse_codes = ["malformed", "timestamp_without_offset"];
    for code in codes.iter().chain(&parse_codes) {
        let known = vigil_proto::AckCode::parse(code);
        assert!(known.is_known(), "{code} is not a vigil_proto::AckCode");
        assert_eq!(known.as_str(), *code);
    }
    let messages: BTreeSet<String> = refusals.iter().map(Refusal::message).collect();
    assert_eq!(messages.len(), refusals.len());
    // CIRIS's own detail strings.
    assert_eq!(
        Refusal::OutsideWindow {
            side: WindowSide::InFuture
        }
        .to_string(),
        "Command timestamp outside acceptable window"
    );
    assert_eq!(Refusal::InvalidSignature.to_string(), "Invalid signature");
    assert_eq!(
        Refusal::UnauthorizedKey.to_string(),
        "Unauthorized public key"
    );
}

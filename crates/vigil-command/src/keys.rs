//! Ed25519 keys and signatures as base64 text.
//!
//! Decoding is lenient about the form, as CIRIS clients vary: the standard
//! (`+/`) or URL-safe (`-_`) alphabet, with or without `=` padding. It is
//! strict about the content: exactly 32 bytes for a key, 64 for a
//! signature, and a key must be a valid curve point. Encoding always writes
//! standard padded base64, as Python's `base64.b64encode` does.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};

/// Longest base64 text looked at: a 64-byte signature needs 88 characters.
const MAX_B64_LEN: usize = 128;

const LENIENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
const STANDARD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
const URL_SAFE: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);

/// Why a key or signature could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The text is not base64.
    #[error("{what} is not valid base64: {detail}")]
    Base64 {
        /// "public key", "signature" or "signing key".
        what: &'static str,
        /// The decoder's message.
        detail: String,
    },
    /// The decoded bytes have the wrong length.
    #[error("{what} must be {expected} bytes, got {got}")]
    Length {
        /// "public key", "signature" or "signing key".
        what: &'static str,
        /// The required length.
        expected: usize,
        /// The decoded length (or a lower bound when the text is too long
        /// to decode).
        got: usize,
    },
    /// The 32 bytes are not the encoding of a point on the curve.
    #[error("public key is not a valid Ed25519 point")]
    NotAPoint,
    /// The operating system's random number generator failed.
    #[error("cannot get random bytes from the operating system: {0}")]
    Random(String),
}

/// Decodes lenient base64 into exactly `N` bytes.
pub(crate) fn decode_fixed<const N: usize>(
    text: &str,
    what: &'static str,
) -> Result<[u8; N], KeyError> {
    if text.len() > MAX_B64_LEN {
        return Err(KeyError::Length {
            what,
            expected: N,
            got: text.len() / 4 * 3,
        });
    }
    let url_safe = text.contains(['-', '_']);
    let standard = text.contains(['+', '/']);
    if url_safe && standard {
        return Err(KeyError::Base64 {
            what,
            detail: "mixes the standard (+/) and URL-safe (-_) alphabets".to_owned(),
        });
    }
    let engine = if url_safe { &URL_SAFE } else { &STANDARD };
    let bytes = engine.decode(text).map_err(|e| KeyError::Base64 {
        what,
        detail: e.to_string(),
    })?;
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Length {
        what,
        expected: N,
        got: bytes.len(),
    })
}

/// Decodes a base64 Ed25519 public key (32 bytes, standard or URL-safe,
/// padded or not).
///
/// This does not refuse weak keys; callers that enrol or trust a key check
/// [`VerifyingKey::is_weak`].
pub fn decode_public_key(text: &str) -> Result<VerifyingKey, KeyError> {
    let bytes = decode_fixed::<32>(text, "public key")?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::NotAPoint)
}

/// Decodes a base64 Ed25519 signature (64 bytes, standard or URL-safe,
/// padded or not).
pub fn decode_signature(text: &str) -> Result<Signature, KeyError> {
    Ok(Signature::from_bytes(&decode_fixed::<64>(
        text,
        "signature",
    )?))
}

/// Decodes a base64 Ed25519 private key seed (32 bytes).
pub fn decode_signing_key(text: &str) -> Result<SigningKey, KeyError> {
    Ok(SigningKey::from_bytes(&decode_fixed::<32>(
        text,
        "signing key",
    )?))
}

/// Standard padded base64 of a public key, as `wa_public_key` carries it.
pub fn encode_public_key(key: &VerifyingKey) -> String {
    STANDARD_PADDED.encode(key.as_bytes())
}

/// Standard padded base64 of a signature.
pub fn encode_signature(sig: &Signature) -> String {
    STANDARD_PADDED.encode(sig.to_bytes())
}

/// Standard padded base64 of a private key seed. Keep the result secret.
pub fn encode_signing_key(key: &SigningKey) -> String {
    STANDARD_PADDED.encode(key.as_bytes())
}

const STANDARD_PADDED: GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// A new signing key from the operating system's random number generator.
pub fn generate_signing_key() -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    seed.fill(0);
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_base64_form_decodes_to_the_same_key() {
        let key = SigningKey::from_bytes(&[7u8; 32]).verifying_key();
        let bytes = key.as_bytes();
        let forms = [
            base64::engine::general_purpose::STANDARD.encode(bytes),
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes),
            base64::engine::general_purpose::URL_SAFE.encode(bytes),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
        ];
        for form in forms {
            assert_eq!(decode_public_key(&form), Ok(key), "{form}");
        }
        assert_eq!(encode_public_key(&key), forms_standard(bytes));
    }

    fn forms_standard(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    #[test]
    fn signatures_accept_both_alphabets() {
        // 0xfb 0xff encodes to "+/8" in the standard alphabet, "-_8" URL-safe.
        let mut raw = [0u8; 64];
        raw[0] = 0xfb;
        raw[1] = 0xff;
        let std = base64::engine::general_purpose::STANDARD.encode(raw);
        assert!(std.starts_with("+/8"));
        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        assert!(url.starts_with("-_8"));
        assert_eq!(decode_signature(&std).expect("std").to_bytes(), raw);
        assert_eq!(decode_signature(&url).expect("url").to_bytes(), raw);
    }

    #[test]
    fn wrong_forms_are_clear_errors() {
        let short = base64::engine::general_purpose::STANDARD.encode([1u8; 31]);
        assert_eq!(
            decode_public_key(&short),
            Err(KeyError::Length {
                what: "public key",
                expected: 32,
                got: 31
            })
        );
        let key64 = base64::engine::general_purpose::STANDARD.encode([1u8; 64]);
        assert!(matches!(
            decode_public_key(&key64),
            Err(KeyError::Length { got: 64, .. })
        ));
        assert!(matches!(
            decode_signature(&short),
            Err(KeyError::Length {
                what: "signature",
                expected: 64,
                got: 31
            })
        ));
        assert!(matches!(
            decode_public_key("not base64!"),
            Err(KeyError::Base64 { .. })
        ));
        assert!(matches!(
            decode_public_key("ab+c-d"),
            Err(KeyError::Base64 { .. })
        ));
        assert!(matches!(
            decode_public_key(&"A".repeat(10_000)),
            Err(KeyError::Length { .. })
        ));
        // y = 2 is not on the curve.
        let mut not_point = [0u8; 32];
        not_point[0] = 2;
        let text = base64::engine::general_purpose::STANDARD.encode(not_point);
        assert_eq!(decode_public_key(&text), Err(KeyError::NotAPoint));
    }

    #[test]
    fn signing_keys_round_trip_and_generate() {
        let key = generate_signing_key().expect("random");
        let text = encode_signing_key(&key);
        assert_eq!(decode_signing_key(&text).expect("decode"), key);
        assert_ne!(generate_signing_key().expect("random"), key);
    }
}

//! SPKI SHA-256 fingerprints.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::AuthError;

/// SHA-256 of a DER `SubjectPublicKeyInfo`: the identity of a peer.
///
/// This is the value of
/// `openssl x509 -in c.crt -pubkey -noout | openssl pkey -pubin -outform der | sha256sum`.
/// It names the key, not the certificate: a certificate re-issued for the
/// same key keeps its fingerprint.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER `SubjectPublicKeyInfo`.
    pub fn of_spki(spki_der: &[u8]) -> Fingerprint {
        Fingerprint(Sha256::digest(spki_der).into())
    }

    /// The fingerprint of the public key in a DER X.509 certificate.
    pub fn of_cert_der(cert_der: &[u8]) -> Result<Fingerprint, AuthError> {
        let (rest, cert) =
            X509Certificate::from_der(cert_der).map_err(|e| AuthError::BadCertificate {
                detail: e.to_string(),
            })?;
        if !rest.is_empty() {
            return Err(AuthError::BadCertificate {
                detail: format!("{} trailing bytes after the certificate", rest.len()),
            });
        }
        Ok(Fingerprint::of_spki(cert.tbs_certificate.subject_pki.raw))
    }

    /// The fingerprint as raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Builds a fingerprint from raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Fingerprint {
        Fingerprint(bytes)
    }

    /// Lowercase hex, as `sha256sum` prints it.
    pub fn to_hex(&self) -> String {
        self.hex_in(&mut [0u8; 64]).to_owned()
    }

    /// Lowercase hex written into `buf`, without allocating.
    pub fn hex_in<'a>(&self, buf: &'a mut [u8; 64]) -> &'a str {
        // Cannot fail: the output is exactly twice the input, and hex
        // digits are ASCII.
        let _ = hex::encode_to_slice(self.0, buf);
        std::str::from_utf8(buf).unwrap_or_default()
    }

    /// Whether `text` is this fingerprint in lowercase hex, as
    /// [`to_hex`](Self::to_hex) writes it, without allocating.
    pub fn hex_eq(&self, text: &str) -> bool {
        let mut buf = [0u8; 64];
        self.hex_in(&mut buf) == text
    }

    /// The first 12 hex digits, for logs.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

/// Why a string is not a fingerprint.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a SHA-256 fingerprint: {reason}")]
pub struct FingerprintParseError {
    value: String,
    reason: &'static str,
}

impl FromStr for Fingerprint {
    type Err = FingerprintParseError;

    /// Accepts 64 hex digits in either case, optionally separated by `:`
    /// (as `openssl x509 -fingerprint` prints them). Surrounding whitespace
    /// is ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| FingerprintParseError {
            value: s.chars().take(80).collect(),
            reason,
        };
        let digits: String = s.trim().chars().filter(|&c| c != ':').collect();
        if digits.len() != 64 {
            return Err(err("expected 64 hex digits"));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(&digits, &mut out).map_err(|_| err("not hexadecimal"))?;
        Ok(Fingerprint(out))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

impl Serialize for Fingerprint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for Fingerprint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hex_forms() {
        let hex = "ab".repeat(32);
        let fp: Fingerprint = hex.parse().expect("hex");
        assert_eq!(fp.to_hex(), hex);
        let upper_colons = vec!["AB"; 32].join(":");
        assert_eq!(upper_colons.parse::<Fingerprint>().expect("colons"), fp);
        assert_eq!(format!(" {hex}\n").parse::<Fingerprint>().expect("ws"), fp);
    }

    #[test]
    fn rejects_bad_strings() {
        for bad in ["", "abc", &"zz".repeat(32), &"ab".repeat(33)] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(Fingerprint::of_cert_der(b"not der").is_err());
    }
}

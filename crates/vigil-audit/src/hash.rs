//! [`RecordHash`]: the SHA-256 digest that chains records.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};

/// A SHA-256 digest that links records: a record's `hash`, and the next
/// record's `prev`.
///
/// Written as 64 lowercase hex digits. The `prev` of the first record is
/// [`RecordHash::ZERO`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordHash([u8; 32]);

impl RecordHash {
    /// All zeros: the `prev` of the first record.
    pub const ZERO: RecordHash = RecordHash([0; 32]);

    /// The digest's bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// SHA-256 of `bytes`.
    pub(crate) fn of(bytes: &[u8]) -> RecordHash {
        RecordHash(Sha256::digest(bytes).into())
    }
}

impl From<[u8; 32]> for RecordHash {
    fn from(bytes: [u8; 32]) -> Self {
        RecordHash(bytes)
    }
}

impl fmt::Display for RecordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for RecordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordHash({})", self.to_hex())
    }
}

/// The text is not 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a record hash is 64 lowercase hex digits")]
pub struct RecordHashParseError;

impl FromStr for RecordHash {
    type Err = RecordHashParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // Lowercase only: the encoding is canonical, so "AB" and "ab" must
        // not both be accepted for the same digest.
        if s.len() != 64 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(RecordHashParseError);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| RecordHashParseError)?;
        Ok(RecordHash(out))
    }
}

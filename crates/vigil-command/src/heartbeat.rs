//! Signed heartbeats: how a client learns, end to end, that the server is
//! still there, even when TCP has not noticed a silent partition.
//!
//! The server signs each [`Heartbeat`] with its Ed25519 authority key. The
//! signing bytes are a fixed-format text with a domain-separation line, so
//! a heartbeat signature can never be taken for a command signature (those
//! sign a JSON object, which starts with `{`):
//!
//! ```text
//! vigil-heartbeat-v1\n
//! epoch=<u64, decimal>\n
//! seq=<u64, decimal>\n
//! sent_at=<isoformat of sent_at>\n
//! ```
//!
//! `epoch` changes when the server restarts (a random or stored counter);
//! `seq` counts up within an epoch. [`HeartbeatVerifier`] is a sans-IO
//! check: `now` is passed in.

use std::time::{Duration, SystemTime};

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::keys;
use crate::timestamp::{Timestamp, system_time_nanos};

/// The first line of the heartbeat signing bytes.
pub const HEARTBEAT_DOMAIN: &str = "vigil-heartbeat-v1";

/// One heartbeat, before or after signing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// Changes when the server restarts.
    pub epoch: u64,
    /// Counts up within an epoch.
    pub seq: u64,
    /// When the server sent it.
    pub sent_at: Timestamp,
}

impl Heartbeat {
    /// The exact bytes the signature covers: a fixed-format text whose
    /// first line separates the domain, so a heartbeat signature can never
    /// be taken for a command signature (those sign a JSON object, which
    /// starts with `{`):
    ///
    /// ```text
    /// vigil-heartbeat-v1\n
    /// epoch=<u64, decimal>\n
    /// seq=<u64, decimal>\n
    /// sent_at=<sent_at as Python's isoformat()>\n
    /// ```
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut s = String::with_capacity(96);
        s.push_str(HEARTBEAT_DOMAIN);
        s.push('\n');
        s.push_str("epoch=");
        s.push_str(&self.epoch.to_string());
        s.push_str("\nseq=");
        s.push_str(&self.seq.to_string());
        s.push_str("\nsent_at=");
        self.sent_at.write_isoformat(&mut s);
        s.push('\n');
        s.into_bytes()
    }

    /// Signs this heartbeat with the server's key.
    pub fn sign(&self, key: &SigningKey) -> SignedHeartbeat {
        let signature = key.sign(&self.signing_bytes());
        SignedHeartbeat {
            epoch: self.epoch,
            seq: self.seq,
            sent_at: self.sent_at,
            signature: keys::encode_signature(&signature),
        }
    }
}

/// A heartbeat with its signature, as it travels (JSON:
/// `{"epoch":1,"seq":2,"sent_at":"…","signature":"<base64>"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedHeartbeat {
    /// Changes when the server restarts.
    pub epoch: u64,
    /// Counts up within an epoch.
    pub seq: u64,
    /// When the server sent it.
    pub sent_at: Timestamp,
    /// Base64 of the 64-byte Ed25519 signature.
    pub signature: String,
}

impl SignedHeartbeat {
    /// The heartbeat without its signature (not verified).
    pub fn heartbeat(&self) -> Heartbeat {
        Heartbeat {
            epoch: self.epoch,
            seq: self.seq,
            sent_at: self.sent_at,
        }
    }
}

/// Why a heartbeat was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeartbeatRefusal {
    /// The signature is not base64 of 64 bytes.
    #[error("malformed heartbeat signature: {0}")]
    Malformed(String),
    /// The signature does not verify against the pinned server key.
    #[error("invalid heartbeat signature")]
    InvalidSignature,
    /// `sent_at` is older than the window allows.
    #[error("heartbeat is stale: sent {age:?} ago, limit {limit:?}")]
    Stale {
        /// How old it is.
        age: Duration,
        /// The limit.
        limit: Duration,
    },
    /// `sent_at` is further in the future than the window allows.
    #[error("heartbeat is from the future: {ahead:?} ahead, limit {limit:?}")]
    FromFuture {
        /// How far ahead.
        ahead: Duration,
        /// The limit.
        limit: Duration,
    },
    /// Same epoch, but the sequence number did not grow.
    #[error("heartbeat sequence {seq} is not after {last} in epoch {epoch}")]
    SequenceNotIncreasing {
        /// The epoch.
        epoch: u64,
        /// The last accepted sequence number.
        last: u64,
        /// This beat's.
        seq: u64,
    },
    /// A clock heartbeat (no nonce) where nonce heartbeats are expected.
    #[error(
        "heartbeat carries no nonce: this client checks freshness by nonce, the server sends clock-only heartbeats (upgrade the server, or set the client's heartbeat freshness to `clock`)"
    )]
    NoNonce,
    /// The nonce it covers is not one this client sent recently.
    #[error(
        "heartbeat covers a nonce this client did not send (or forgot): a replay or another client's beat"
    )]
    UnknownNonce,
    /// The nonce it covers was sent too long ago on the client's
    /// monotonic clock.
    #[error("heartbeat is stale: its nonce was sent {age:?} ago, limit {limit:?}")]
    StaleNonce {
        /// How long ago the nonce was sent.
        age: Duration,
        /// The limit.
        limit: Duration,
    },
    /// The nonce it covers is older than the last fresh beat's.
    #[error("heartbeat covers a nonce older than the last fresh beat's")]
    NonceNotNewer,
    /// A different epoch, but not sent after the last accepted beat.
    #[error(
        "heartbeat epoch {epoch} is not newer than the last accepted beat (epoch {last_epoch})"
    )]
    EpochNotNewer {
        /// This beat's epoch.
        epoch: u64,
        /// The last accepted beat's epoch.
        last_epoch: u64,
    },
}

impl HeartbeatRefusal {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            HeartbeatRefusal::Malformed(_) => "malformed",
            HeartbeatRefusal::InvalidSignature => "invalid_signature",
            HeartbeatRefusal::Stale { .. } => "stale",
            HeartbeatRefusal::FromFuture { .. } => "from_future",
            HeartbeatRefusal::SequenceNotIncreasing { .. } => "sequence_not_increasing",
            HeartbeatRefusal::EpochNotNewer { .. } => "epoch_not_newer",
            HeartbeatRefusal::NoNonce => "no_nonce",
            HeartbeatRefusal::UnknownNonce => "unknown_nonce",
            HeartbeatRefusal::StaleNonce { .. } => "stale_nonce",
            HeartbeatRefusal::NonceNotNewer => "nonce_not_newer",
        }
    }
}

/// The pinned server key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("weak (small-order) server key refused")]
pub struct WeakServerKey;

/// Checks heartbeats from one server.
///
/// A beat is accepted when, in this order:
/// 1. its signature verifies strictly against the pinned server key;
/// 2. `sent_at` is at most `max_age` before `now` and at most `max_future`
///    after it;
/// 3. in the epoch of the last accepted beat, its `seq` is greater; in any
///    other epoch, its `sent_at` is later than the last accepted beat's.
///
/// Only accepted beats change the state, so forged, stale or replayed
/// beats cannot move it.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use vigil_command::{Heartbeat, HeartbeatVerifier, SigningKey, Timestamp};
///
/// let server = SigningKey::from_bytes(&[7; 32]);
/// let mut verifier = HeartbeatVerifier::new(server.verifying_key())?;
/// let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_732_800);
/// let beat = Heartbeat { epoch: 1, seq: 1, sent_at: Timestamp::from_system_time(now)? }
///     .sign(&server);
/// assert!(verifier.verify(&beat, now).is_ok());
/// assert!(verifier.verify(&beat, now).is_err()); // a replay
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct HeartbeatVerifier {
    key: VerifyingKey,
    max_age: Duration,
    max_future: Duration,
    last: Option<Heartbeat>,
}

impl HeartbeatVerifier {
    /// Default oldest accepted beat.
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(30);
    /// Default clock skew allowed ahead of `now`.
    pub const DEFAULT_MAX_FUTURE: Duration = Duration::from_secs(30);

    /// A verifier pinned to `server_key`, with the default window
    /// (30 s either way). Refuses a weak key.
    pub fn new(server_key: VerifyingKey) -> Result<HeartbeatVerifier, WeakServerKey> {
        if server_key.is_weak() {
            return Err(WeakServerKey);
        }
        Ok(HeartbeatVerifier {
            key: server_key,
            max_age: Self::DEFAULT_MAX_AGE,
            max_future: Self::DEFAULT_MAX_FUTURE,
            last: None,
        })
    }

    /// Uses another freshness window. `max_future` must cover the clock
    /// skew between server and client; `max_age` bounds how long a delayed
    /// beat can still feed the failsafe.
    pub fn with_window(mut self, max_age: Duration, max_future: Duration) -> HeartbeatVerifier {
        self.max_age = max_age;
        self.max_future = max_future;
        self
    }

    /// The last accepted beat.
    pub fn last(&self) -> Option<&Heartbeat> {
        self.last.as_ref()
    }

    /// Checks `beat` at `now` and, if it is accepted, remembers it.
    pub fn verify(
        &mut self,
        beat: &SignedHeartbeat,
        now: SystemTime,
    ) -> Result<Heartbeat, HeartbeatRefusal> {
        let hb = beat.heartbeat();
        let signature = keys::decode_signature(&beat.signature)
            .map_err(|e| HeartbeatRefusal::Malformed(e.to_string()))?;
        self.key
            .verify_strict(&hb.signing_bytes(), &signature)
            .map_err(|_| HeartbeatRefusal::InvalidSignature)?;

        let now_ns = system_time_nanos(now);
        let sent_ns = hb.sent_at.unix_nanos();
        if now_ns > sent_ns {
            let age = nanos_duration(now_ns - sent_ns);
            if age > self.max_age {
                return Err(HeartbeatRefusal::Stale {
                    age,
                    limit: self.max_age,
                });
            }
        } else {
            let ahead = nanos_duration(sent_ns - now_ns);
            if ahead > self.max_future {
                return Err(HeartbeatRefusal::FromFuture {
                    ahead,
                    limit: self.max_future,
                });
            }
        }

        if let Some(last) = &self.last {
            if hb.epoch == last.epoch {
                if hb.seq <= last.seq {
                    return Err(HeartbeatRefusal::SequenceNotIncreasing {
                        epoch: hb.epoch,
                        last: last.seq,
                        seq: hb.seq,
                    });
                }
            } else if sent_ns <= last.sent_at.unix_nanos() {
                return Err(HeartbeatRefusal::EpochNotNewer {
                    epoch: hb.epoch,
                    last_epoch: last.epoch,
                });
            }
        }
        self.last = Some(hb);
        Ok(hb)
    }
}

fn nanos_duration(ns: i128) -> Duration {
    let ns = u128::try_from(ns).unwrap_or(0);
    let secs = u64::try_from(ns / 1_000_000_000).unwrap_or(u64::MAX);
    let sub = u32::try_from(ns % 1_000_000_000).unwrap_or(0);
    Duration::new(secs, sub)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_735_732_800 + secs)
    }

    fn beat(key: &SigningKey, epoch: u64, seq: u64, sent: u64) -> SignedHeartbeat {
        Heartbeat {
            epoch,
            seq,
            sent_at: Timestamp::from_system_time(at(sent)).expect("ts"),
        }
        .sign(key)
    }

    #[test]
    fn signing_bytes_are_the_documented_text() {
        let hb = Heartbeat {
            epoch: 7,
            seq: 42,
            sent_at: Timestamp::parse("2025-01-01T12:00:00.25+01:00").expect("ts"),
        };
        assert_eq!(
            hb.signing_bytes(),
            b"vigil-heartbeat-v1\nepoch=7\nseq=42\nsent_at=2025-01-01T12:00:00.250000+01:00\n"
        );
    }

    #[test]
    fn each_refusal_has_its_own_reason() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let mut v = HeartbeatVerifier::new(key.verifying_key()).expect("verifier");

        assert!(v.verify(&beat(&key, 1, 5, 100), at(100)).is_ok());
        let code = |v: &mut HeartbeatVerifier, b: &SignedHeartbeat, now| {
            v.verify(b, at(now)).map(|_| ()).map_err(|e| e.code())
        };

        // Replay and reorder within the epoch.
        assert_eq!(
            code(&mut v, &beat(&key, 1, 5, 101), 101),
            Err("sequence_not_increasing")
        );
        assert_eq!(
            code(&mut v, &beat(&key, 1, 4, 101), 101),
            Err("sequence_not_increasing")
        );
        // A forged beat, and another key.
        let mut forged = beat(&key, 1, 6, 101);
        forged.seq = 60;
        assert_eq!(code(&mut v, &forged, 101), Err("invalid_signature"));
        let other = SigningKey::from_bytes(&[2; 32]);
        assert_eq!(
            code(&mut v, &beat(&other, 1, 6, 101), 101),
            Err("invalid_signature")
        );
        let mut garbled = beat(&key, 1, 6, 101);
        garbled.signature = "!!".into();
        assert_eq!(code(&mut v, &garbled, 101), Err("malformed"));
        // Out of the window.
        assert_eq!(code(&mut v, &beat(&key, 1, 6, 100), 131), Err("stale"));
        assert_eq!(
            code(&mut v, &beat(&key, 1, 6, 140), 109),
            Err("from_future")
        );
        // A new epoch must be later than the last accepted beat.
        assert_eq!(
            code(&mut v, &beat(&key, 2, 1, 100), 101),
            Err("epoch_not_newer")
        );
        assert_eq!(
            code(&mut v, &beat(&key, 0, 1, 99), 101),
            Err("epoch_not_newer")
        );
        // None of the refusals moved the state.
        assert_eq!(v.last().map(|h| (h.epoch, h.seq)), Some((1, 5)));

        assert_eq!(code(&mut v, &beat(&key, 1, 9, 102), 102), Ok(()));
        assert_eq!(code(&mut v, &beat(&key, 2, 1, 103), 103), Ok(()));
        // Back in the old epoch, an old beat is refused.
        assert_eq!(
            code(&mut v, &beat(&key, 1, 10, 102), 103),
            Err("epoch_not_newer")
        );
        assert_eq!(code(&mut v, &beat(&key, 2, 2, 104), 104), Ok(()));
    }

    #[test]
    fn window_edges_are_inclusive() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let mut v = HeartbeatVerifier::new(key.verifying_key())
            .expect("verifier")
            .with_window(Duration::from_secs(10), Duration::from_secs(2));
        assert!(v.verify(&beat(&key, 1, 1, 100), at(110)).is_ok());
        assert!(v.verify(&beat(&key, 1, 2, 112), at(110)).is_ok());
    }

    #[test]
    fn weak_server_key_is_refused() {
        let mut bytes = [0u8; 32];
        bytes[0] = 1;
        let identity = VerifyingKey::from_bytes(&bytes).expect("identity");
        assert_eq!(HeartbeatVerifier::new(identity).err(), Some(WeakServerKey));
    }

    #[test]
    fn json_form() {
        let key = SigningKey::from_bytes(&[1; 32]);
        let b = beat(&key, 1, 2, 0);
        let text = serde_json::to_string(&b).expect("json");
        assert!(
            text.starts_with(
                r#"{"epoch":1,"seq":2,"sent_at":"2025-01-01T12:00:00+00:00","signature":""#
            ),
            "{text}"
        );
        assert_eq!(
            serde_json::from_str::<SignedHeartbeat>(&text).expect("back"),
            b
        );
        assert!(
            serde_json::from_str::<SignedHeartbeat>(&text.replace("\"seq\"", "\"x\":1,\"seq\""))
                .is_err()
        );
    }
}

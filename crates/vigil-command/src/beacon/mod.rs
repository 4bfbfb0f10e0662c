//! Heartbeats whose freshness needs no shared clock: the client sends a
//! random nonce, and the server's signed beat proves it saw it.
//!
//! The client remembers when it sent each nonce on its own monotonic
//! clock. Each beat, the server builds a Merkle tree over the latest nonce
//! of every client ([`merkle`]), signs the root once, and sends each
//! client the beat with its own nonce, leaf index and path. The client
//! recomputes the root from its nonce and path, checks the signature, and
//! takes the beat as fresh when the nonce is one it sent at most
//! `max_age` ago, measured on its monotonic clock. The server's wall-clock
//! `sent_at` is signed too, but only to report the clock offset.
//!
//! The signing bytes are a fixed-format text with its own domain line, so
//! a signature over them is neither a command's (JSON, starting with `{`)
//! nor a clock heartbeat's (`vigil-heartbeat-v1`):
//!
//! ```text
//! vigil-heartbeat-v2\n
//! epoch=<u64, decimal>\n
//! seq=<u64, decimal>\n
//! sent_at=<isoformat of sent_at>\n
//! root=<64 lowercase hex digits>\n
//! ```

pub mod merkle;

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::heartbeat::{HeartbeatRefusal, WeakServerKey};
use crate::keys;
use crate::timestamp::{Timestamp, system_time_nanos};
use merkle::Hash;

/// The first line of the signing bytes of a nonce heartbeat.
pub const NONCE_HEARTBEAT_DOMAIN: &str = "vigil-heartbeat-v2";

/// Bytes of a nonce.
pub const NONCE_LEN: usize = 32;

/// A nonce: random bytes from the client.
pub type Nonce = [u8; NONCE_LEN];

/// What one beat signs: the beat's place and the root over its nonces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchBeat {
    /// Changes when the server restarts.
    pub epoch: u64,
    /// Counts up within an epoch.
    pub seq: u64,
    /// When the server sent it (reported, never used for acceptance).
    pub sent_at: Timestamp,
    /// Merkle root over the nonces of the beat.
    pub root: Hash,
}

impl BatchBeat {
    /// The exact bytes the signature covers (see the module docs).
    pub fn signing_bytes(&self) -> Vec<u8> {
        let mut s = String::with_capacity(180);
        s.push_str(NONCE_HEARTBEAT_DOMAIN);
        s.push_str("\nepoch=");
        s.push_str(&self.epoch.to_string());
        s.push_str("\nseq=");
        s.push_str(&self.seq.to_string());
        s.push_str("\nsent_at=");
        self.sent_at.write_isoformat(&mut s);
        s.push_str("\nroot=");
        for b in self.root {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 15)]));
        }
        s.push('\n');
        s.into_bytes()
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// One beat signed for a batch of nonces, ready to be cut into one
/// [`NonceHeartbeat`] per client.
#[derive(Debug, Clone)]
pub struct SignedBatch {
    beat: BatchBeat,
    signature: String,
    nonces: Vec<Nonce>,
    paths: Vec<Vec<Hash>>,
}

impl SignedBatch {
    /// Builds the tree over `nonces` and signs its root: one signature for
    /// all. `None` when there are no nonces.
    pub fn sign(
        key: &SigningKey,
        epoch: u64,
        seq: u64,
        sent_at: Timestamp,
        nonces: Vec<Nonce>,
    ) -> Option<SignedBatch> {
        let leaves: Vec<Hash> = nonces.iter().map(|n| merkle::leaf(n)).collect();
        let (root, paths) = merkle::build(&leaves)?;
        let beat = BatchBeat {
            epoch,
            seq,
            sent_at,
            root,
        };
        let signature = keys::encode_signature(&key.sign(&beat.signing_bytes()));
        Some(SignedBatch {
            beat,
            signature,
            nonces,
            paths,
        })
    }

    /// How many nonces the beat covers.
    pub fn len(&self) -> usize {
        self.nonces.len()
    }

    /// Whether it covers none (never, once built).
    pub fn is_empty(&self) -> bool {
        self.nonces.is_empty()
    }

    /// What the signature covers.
    pub fn beat(&self) -> &BatchBeat {
        &self.beat
    }

    /// The beat for the client whose nonce is the `index`th given.
    pub fn for_leaf(&self, index: usize) -> Option<NonceHeartbeat> {
        let nonce = self.nonces.get(index)?;
        let path = self.paths.get(index)?;
        Some(NonceHeartbeat {
            epoch: self.beat.epoch,
            seq: self.beat.seq,
            sent_at: self.beat.sent_at,
            nonce: STANDARD.encode(nonce),
            index: u64::try_from(index).ok()?,
            path: STANDARD.encode(path.concat()),
            signature: self.signature.clone(),
        })
    }
}

/// A nonce heartbeat as one client gets it (JSON: `{"epoch":1,"seq":2,
/// "sent_at":"…","nonce":"<base64>","index":5,"path":"<base64>",
/// "signature":"<base64>"}`). The root is not sent: the client computes it
/// from its nonce and the path, and the signature checks it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NonceHeartbeat {
    /// Changes when the server restarts.
    pub epoch: u64,
    /// Counts up within an epoch.
    pub seq: u64,
    /// When the server sent it.
    pub sent_at: Timestamp,
    /// Base64 of the client's nonce that the beat covers.
    pub nonce: String,
    /// The nonce's leaf index in the tree.
    pub index: u64,
    /// Base64 of the sibling hashes, 32 bytes each, leaf upwards.
    pub path: String,
    /// Base64 of the Ed25519 signature over the [`BatchBeat`].
    pub signature: String,
}

/// A nonce heartbeat that was taken as fresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FreshBeat {
    /// Its epoch.
    pub epoch: u64,
    /// Its sequence number.
    pub seq: u64,
    /// How long ago, on the client's monotonic clock, the nonce it covers
    /// was sent: an upper bound on how old the beat is.
    pub nonce_age: Duration,
    /// The server's `sent_at` minus the client's wall clock when the beat
    /// arrived, in milliseconds: positive when the client's clock is
    /// behind. Off by the one-way delay at most.
    pub skew_ms: i64,
}

#[derive(Debug, Clone, Copy)]
struct Last {
    epoch: u64,
    seq: u64,
    nonce_at: Duration,
}

/// The client's side: issues nonces and checks the beats that cover them.
///
/// A beat is fresh when, in this order:
/// 1. its nonce is one this verifier issued, at most `max_age` ago on the
///    monotonic clock (times are passed in: the time since any fixed
///    origin the caller keeps);
/// 2. the root computed from the nonce, index and path, with `epoch`,
///    `seq` and `sent_at`, verifies strictly against the pinned key;
/// 3. its nonce was not issued before the nonce of the last fresh beat,
///    and in the same epoch its `seq` is greater.
///
/// Only fresh beats change the state. A recorded beat replayed later
/// covers a nonce that has aged out (or was never issued to this client);
/// a server frozen or a path that holds frames back lets the covered nonce
/// age until beats stop counting.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use vigil_command::{NonceVerifier, SignedBatch, SigningKey, Timestamp};
///
/// let server = SigningKey::from_bytes(&[7; 32]);
/// let mut client = NonceVerifier::new(server.verifying_key())?;
/// let sent = Duration::from_secs(100); // on the client's monotonic clock
/// let nonce = [9; 32];
/// client.issue(nonce, sent);
///
/// let now = Timestamp::from_system_time(SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_732_800))?;
/// let batch = SignedBatch::sign(&server, 1, 1, now, vec![[1; 32], nonce]).expect("batch");
/// let beat = batch.for_leaf(1).expect("leaf");
/// let fresh = client.verify(&beat, sent + Duration::from_secs(1), SystemTime::UNIX_EPOCH)?;
/// assert_eq!(fresh.nonce_age, Duration::from_secs(1));
/// assert!(client.verify(&beat, sent + Duration::from_secs(2), SystemTime::UNIX_EPOCH).is_err()); // a replay
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct NonceVerifier {
    key: VerifyingKey,
    max_age: Duration,
    sent: VecDeque<(Nonce, Duration)>,
    last: Option<Last>,
}

impl NonceVerifier {
    /// Default: a beat counts when the nonce it covers was sent at most
    /// this long ago. It must exceed the server's heartbeat interval
    /// (default 5 s) plus a round trip.
    pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(15);
    /// Nonces remembered at most; older ones are forgotten first.
    pub const MAX_KEPT: usize = 64;

    /// A verifier pinned to `server_key`, with the default `max_age`.
    /// Refuses a weak key.
    pub fn new(server_key: VerifyingKey) -> Result<NonceVerifier, WeakServerKey> {
        if server_key.is_weak() {
            return Err(WeakServerKey);
        }
        Ok(NonceVerifier {
            key: server_key,
            max_age: Self::DEFAULT_MAX_AGE,
            sent: VecDeque::new(),
            last: None,
        })
    }

    /// Uses another `max_age`.
    pub fn with_max_age(mut self, max_age: Duration) -> NonceVerifier {
        self.max_age = max_age;
        self
    }

    /// The bound on a nonce's age.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    /// A new random nonce from the operating system.
    pub fn random_nonce() -> Result<Nonce, keys::KeyError> {
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).map_err(|e| keys::KeyError::Random(e.to_string()))?;
        Ok(nonce)
    }

    /// Remembers that `nonce` was sent at `now`. Nonces older than twice
    /// `max_age`, and past [`Self::MAX_KEPT`], are forgotten.
    pub fn issue(&mut self, nonce: Nonce, now: Duration) {
        while self.sent.len() >= Self::MAX_KEPT
            || self
                .sent
                .front()
                .is_some_and(|(_, at)| now.saturating_sub(*at) > self.max_age.saturating_mul(2))
        {
            self.sent.pop_front();
        }
        self.sent.push_back((nonce, now));
    }

    /// Checks `beat` at monotonic `now` (`wall` only measures the skew)
    /// and, if it is fresh, remembers it.
    pub fn verify(
        &mut self,
        beat: &NonceHeartbeat,
        now: Duration,
        wall: SystemTime,
    ) -> Result<FreshBeat, HeartbeatRefusal> {
        let malformed = |what: &str| HeartbeatRefusal::Malformed(what.to_owned());
        let nonce: Nonce = decode_exact(&beat.nonce).ok_or_else(|| malformed("nonce"))?;
        let path = STANDARD
            .decode(&beat.path)
            .map_err(|_| malformed("path is not base64"))?;
        if path.len() % 32 != 0 || path.len() / 32 > merkle::MAX_PATH {
            return Err(malformed("path is not whole 32-byte hashes"));
        }
        let path: Vec<Hash> = path
            .chunks_exact(32)
            .filter_map(|c| c.try_into().ok())
            .collect();
        let Some(&(_, sent_at)) = self.sent.iter().rev().find(|(n, _)| *n == nonce) else {
            return Err(HeartbeatRefusal::UnknownNonce);
        };
        let age = now.saturating_sub(sent_at);
        if age > self.max_age {
            return Err(HeartbeatRefusal::StaleNonce {
                age,
                limit: self.max_age,
            });
        }
        let root = merkle::root_of(merkle::leaf(&nonce), beat.index, &path)
            .ok_or_else(|| malformed("index does not fit the path"))?;
        let signed = BatchBeat {
            epoch: beat.epoch,
            seq: beat.seq,
            sent_at: beat.sent_at,
            root,
        };
        let signature = keys::decode_signature(&beat.signature)
            .map_err(|e| HeartbeatRefusal::Malformed(e.to_string()))?;
        self.key
            .verify_strict(&signed.signing_bytes(), &signature)
            .map_err(|_| HeartbeatRefusal::InvalidSignature)?;
        if let Some(last) = self.last {
            if sent_at < last.nonce_at {
                return Err(HeartbeatRefusal::NonceNotNewer);
            }
            if beat.epoch == last.epoch && beat.seq <= last.seq {
                return Err(HeartbeatRefusal::SequenceNotIncreasing {
                    epoch: beat.epoch,
                    last: last.seq,
                    seq: beat.seq,
                });
            }
        }
        self.last = Some(Last {
            epoch: beat.epoch,
            seq: beat.seq,
            nonce_at: sent_at,
        });
        let skew_ns = beat.sent_at.unix_nanos() - system_time_nanos(wall);
        Ok(FreshBeat {
            epoch: beat.epoch,
            seq: beat.seq,
            nonce_age: age,
            skew_ms: i64::try_from((skew_ns / 1_000_000).clamp(i64::MIN.into(), i64::MAX.into()))
                .unwrap_or(0),
        })
    }
}

/// Decodes base64 of exactly [`NONCE_LEN`] bytes.
pub fn decode_nonce(text: &str) -> Option<Nonce> {
    decode_exact(text)
}

/// Base64 of a nonce, as it travels.
pub fn encode_nonce(nonce: &Nonce) -> String {
    STANDARD.encode(nonce)
}

fn decode_exact(text: &str) -> Option<Nonce> {
    if text.len() > 64 {
        return None;
    }
    STANDARD.decode(text).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests;

//! vigil signed commands: what may run, checked end to end.
//!
//! Commands are authorized by Ed25519 authority keys, never by the channel
//! they arrive on. This crate holds the model and every check, and does no
//! network I/O (the [`ReplayGuard`] and the [`VersionStore`] read and write
//! their own files):
//!
//! - [`SignedCommand`]: the CIRIS `WASignedCommand`, plus optional `command`
//!   and `args` for general commands. Its [signing
//!   bytes](SignedCommand::signing_bytes) are exactly Python's
//!   `json.dumps(sign_data, sort_keys=True).encode()`, so commands signed by
//!   CIRIS tooling verify here and the other way round.
//! - [`Timestamp`]: ISO-8601 with a required UTC offset, printed back as
//!   Python's `isoformat()`.
//! - [`Authorities`]: the enrolled keys and the command types each may
//!   issue, from a JSON file or from memory.
//! - [`Verifier`]: the single entry point. It checks, in CIRIS's order, the
//!   command type, the freshness window (at most 5 minutes old, at most 1
//!   minute ahead, `expires_at`), the signature (`verify_strict`), the
//!   authority, the target agent and replay, and answers with a typed
//!   [`Refusal`] that has a stable [code](Refusal::code).
//! - [`ReplayGuard`]: each command id is accepted once, also across a
//!   restart (an `fsync`ed append-only file).
//! - [`Heartbeat`] and [`HeartbeatVerifier`]: signed server heartbeats,
//!   checked for signature, wall-clock freshness and order (the
//!   `vigil-heartbeat-v1` protocol).
//! - [`SignedBatch`] and [`NonceVerifier`]: heartbeats whose freshness
//!   needs no shared clock: one signature over a Merkle root of every
//!   client's nonce, checked by each client against the nonces it sent, on
//!   its monotonic clock, to feed a failsafe.
//! - [`SignedManifest`] and [`ModuleKeys`]: module manifests signed by
//!   offline module keys (name, version, SHA-256 and size, target and ABI,
//!   validity window), checked against a module's bytes; [`VersionStore`]
//!   keeps the highest version trusted per module across restarts (its
//!   own file, written only after a manifest verified).
//!
//! No check reads the clock: the current time is an argument.
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use vigil_command::{
//!     Authorities, AuthorityKey, Refusal, SignedCommand, SigningKey, Timestamp, UnsignedCommand,
//!     Verifier,
//! };
//!
//! // An authority that may shut agents down.
//! let ops = SigningKey::from_bytes(&[42; 32]);
//! let authorities = Authorities::from_keys([AuthorityKey::new(
//!     Some("wa_ops".into()),
//!     ops.verifying_key(),
//!     ["SHUTDOWN_NOW"],
//! )?])?;
//! let verifier = Verifier::new(authorities).with_own_agent_id("agent-7");
//!
//! // It signs a command...
//! let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_732_800);
//! let cmd = UnsignedCommand::new(
//!     "cmd_1",
//!     "SHUTDOWN_NOW",
//!     "wa_ops",
//!     Timestamp::from_system_time(now)?,
//!     "Emergency maintenance required",
//! )
//! .sign(&ops)?;
//!
//! // ...which travels as JSON and is verified on arrival.
//! let received = SignedCommand::from_json(cmd.to_json().as_bytes())?;
//! let verified = verifier.verify(&received, now + Duration::from_secs(2))?;
//! assert_eq!(verified.authority_id(), "wa_ops");
//!
//! // Ten minutes later it is stale.
//! let late = verifier.verify(&received, now + Duration::from_secs(600));
//! assert_eq!(late.map_err(|r| r.code()).err(), Some("timestamp_outside_window"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod authority;
mod beacon;
mod command;
mod heartbeat;
mod keys;
mod manifest;
mod pyjson;
mod refusal;
mod replay;
mod timestamp;
mod verify;

pub use authority::{Authorities, AuthorityError, AuthorityKey};
pub use beacon::{
    BatchBeat, FreshBeat, NONCE_HEARTBEAT_DOMAIN, NONCE_LEN, Nonce, NonceHeartbeat, NonceVerifier,
    SignedBatch, decode_nonce, encode_nonce, merkle,
};
pub use command::{
    CommandParseError, MAX_COMMAND_BYTES, MAX_ID_LEN, MAX_LIST_LEN, MAX_REASON_LEN, MAX_TYPE_LEN,
    SignError, SignedCommand, UnsignedCommand,
};
pub use heartbeat::{
    HEARTBEAT_DOMAIN, Heartbeat, HeartbeatRefusal, HeartbeatVerifier, SignedHeartbeat,
    WeakServerKey,
};
pub use keys::{
    KeyError, decode_public_key, decode_signature, decode_signing_key, encode_public_key,
    encode_signature, encode_signing_key, generate_signing_key,
};
pub use manifest::{
    HighWater, MANIFEST_DOMAIN, MANIFEST_SUFFIX, MAX_MANIFEST_BYTES, MAX_MANIFEST_NAME_LEN,
    MAX_TARGET_LEN, ManifestCheck, ManifestRefusal, ModuleKeys, ModuleKeysError, ModuleManifest,
    ModuleTrust, Platform, SignedManifest, VerifiedManifest, VersionStore, VersionStoreError,
    key_id,
};
pub use pyjson::CanonicalJsonError;
pub use refusal::{Refusal, WindowSide};
pub use replay::{DEFAULT_CAPACITY, ReplayEntry, ReplayError, ReplayGuard, ReplayPlan, ReplaySet};
pub use timestamp::{MAX_TIMESTAMP_LEN, Timestamp, TimestampError};
pub use verify::{EMERGENCY_TYPE, Freshness, VerifiedCommand, Verifier};

/// Re-exported so that users of this crate name the same key types.
pub use ed25519_dalek::{Signature, SigningKey, VerifyingKey};

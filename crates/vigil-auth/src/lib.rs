//! vigil authentication: who is allowed to talk to whom.
//!
//! Peers are known only by the SHA-256 fingerprint of their public key
//! ([`Fingerprint`]), the same value as
//! `openssl x509 -in c.crt -pubkey -noout | openssl pkey -pubin -outform der | sha256sum`.
//!
//! - [`Identity`] loads a certificate and its private key from PEM files
//!   and checks that they belong together; [`GeneratedIdentity`] makes a new
//!   Ed25519 one.
//! - [`TrustStore`] holds the trusted client fingerprints from a
//!   `trusted-keys.json` file, reloads it when it changes and tells
//!   subscribers, so that a revoked client's sessions can be closed.
//! - [`server_config`] and [`client_config`] build rustls configurations
//!   that are TLS 1.3 only, use the ring provider, and pin peers by
//!   fingerprint while still checking the handshake signature.
//! - [`check_permissions`] refuses a file that others may write (sshd's
//!   `StrictModes`); loading an identity or a trust file checks it.
//!
//! ```
//! use vigil_auth::{client_config, server_config, GeneratedIdentity, TrustStore};
//!
//! let server = GeneratedIdentity::generate("vigil-server")?;
//! let client = GeneratedIdentity::generate("vigil-client")?;
//! let trust = TrustStore::from_fingerprints([client.fingerprint]);
//! let _server_tls = server_config(&server.identity()?, trust)?;
//! let _client_tls = client_config(&client.identity()?, server.fingerprint)?;
//! # Ok::<(), vigil_auth::AuthError>(())
//! ```
#![deny(missing_docs)]

mod error;
mod fingerprint;
mod identity;
mod perms;
mod tls;
mod trust;

pub use error::AuthError;
pub use fingerprint::{Fingerprint, FingerprintParseError};
pub use identity::{GeneratedIdentity, Identity, certs_from_pem, write_file};
pub use perms::{check_key_permissions, check_permissions, create_private_dir};
pub use tls::{
    PeerRejected, PinnedClientVerifier, PinnedServerVerifier, client_config, client_config_any,
    peer_fingerprint, provider, refused_certificate_alert, server_config, wrong_server,
};
pub use trust::{ReloadReport, TrustFile, TrustSet, TrustStore, TrustWatcher};

/// Re-exported so that users of this crate name the same types.
pub use rustls;

//! The error type of this crate.

use std::path::PathBuf;

/// What went wrong while loading, checking or using identities and trust.
///
/// Every variant that concerns a file names it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A PEM file is malformed or lacks what was expected.
    #[error("{path}: malformed PEM: {detail}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        detail: String,
    },
    /// A certificate could not be parsed.
    #[error("malformed certificate: {detail}")]
    BadCertificate {
        /// The parser's message.
        detail: String,
    },
    /// A certificate file holds a certificate that could not be parsed.
    #[error("{path}: {source}")]
    InFile {
        /// The file.
        path: PathBuf,
        /// What is wrong with its content.
        source: Box<AuthError>,
    },
    /// The private key is of a type the TLS stack cannot use.
    #[error("{path}: unsupported private key: {detail}")]
    UnsupportedKey {
        /// The key file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// The private key does not belong to the certificate.
    #[error("private key {key} does not match the public key in certificate {cert}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The trust file is not valid.
    #[error("trust file {path}: {detail}")]
    TrustFile {
        /// The trust file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The trust file could not be watched for changes.
    #[error("cannot watch {path} for changes: {source}")]
    Watch {
        /// The watched path.
        path: PathBuf,
        /// The watcher's error.
        source: notify::Error,
    },
    /// A file or directory that others may write (or replace): refused,
    /// since whoever can write it decides what it says.
    #[error("{path}: {detail}")]
    Insecure {
        /// The path.
        path: PathBuf,
        /// Who can write it, and how to fix it.
        detail: String,
    },
    /// Identity generation failed.
    #[error("cannot generate an identity: {0}")]
    Generate(#[from] rcgen::Error),
    /// The TLS stack refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

impl AuthError {
    pub(crate) fn in_file(self, path: &std::path::Path) -> AuthError {
        AuthError::InFile {
            path: path.to_owned(),
            source: Box::new(self),
        }
    }
}

//! rustls configurations pinned by fingerprint: TLS 1.3 only, ring provider.
//!
//! Neither side uses certificate authorities. The server admits a client
//! whose key fingerprint is in the [`TrustStore`]; the client admits a
//! server whose key fingerprint is the one it was given. Both still check
//! the TLS 1.3 `CertificateVerify` signature, which proves that the peer
//! holds the private key of the certificate it presented.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, SubjectPublicKeyInfoDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    AlertDescription, CertificateError, DigitallySignedStruct, DistinguishedName, OtherError,
    SignatureScheme,
};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::{AuthError, Fingerprint, Identity, TrustStore};

/// The crypto provider vigil uses: ring, chosen explicitly.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A peer presented a certificate whose key is not the one expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PeerRejected {
    /// The client's key is not in the trust store.
    #[error("client key {0} is not in the trust file")]
    UntrustedClient(Fingerprint),
    /// The server's key is not the pinned one.
    #[error("server key {presented} is not the pinned {expected}")]
    WrongServer {
        /// What the server presented.
        presented: Fingerprint,
        /// What the client was told to expect.
        expected: Fingerprint,
    },
    /// The server's key is none of the pinned ones.
    #[error("server key {presented} is none of the {pins} pinned keys")]
    UnpinnedServer {
        /// What the server presented.
        presented: Fingerprint,
        /// How many keys were pinned.
        pins: usize,
    },
    /// The certificate could not be parsed.
    #[error("peer certificate is malformed: {0}")]
    Malformed(String),
}

impl From<PeerRejected> for rustls::Error {
    fn from(e: PeerRejected) -> Self {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
    }
}

/// Parses a DER certificate and returns its SPKI bytes' fingerprint and the
/// SPKI itself.
fn spki_of(cert: &CertificateDer<'_>) -> Result<(Fingerprint, Vec<u8>), PeerRejected> {
    let (_, parsed) = X509Certificate::from_der(cert.as_ref())
        .map_err(|e| PeerRejected::Malformed(e.to_string()))?;
    let spki = parsed.tbs_certificate.subject_pki.raw;
    Ok((Fingerprint::of_spki(spki), spki.to_vec()))
}

/// The fingerprint of a peer's end-entity certificate, as a session learns
/// it after the handshake.
pub fn peer_fingerprint(certs: Option<&[CertificateDer<'_>]>) -> Option<Fingerprint> {
    let cert = certs?.first()?;
    spki_of(cert).ok().map(|(fp, _)| fp)
}

fn verify_tls13(
    algs: &WebPkiSupportedAlgorithms,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    // Check the signature with the same SPKI that was fingerprinted.
    let (_, spki) = spki_of(cert)?;
    rustls::crypto::verify_tls13_signature_with_raw_key(
        message,
        &SubjectPublicKeyInfoDer::from(spki.as_slice()),
        dss,
        algs,
    )
}

/// Server side: admits clients whose key is in the trust store.
pub struct PinnedClientVerifier {
    trust: TrustStore,
    algs: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for PinnedClientVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedClientVerifier")
            .field("trusted", &self.trust.snapshot().len())
            .finish_non_exhaustive()
    }
}

impl PinnedClientVerifier {
    /// A verifier backed by `trust`; it sees every later change of the store.
    pub fn new(trust: TrustStore) -> Self {
        PinnedClientVerifier {
            trust,
            algs: provider().signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for PinnedClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let (fp, _) = spki_of(end_entity)?;
        if self.trust.is_trusted(&fp) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(PeerRejected::UntrustedClient(fp).into())
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("vigil speaks TLS 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(&self.algs, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// Client side: admits only a server whose key has a pinned fingerprint.
/// The server name is not checked: the fingerprint is the identity.
pub struct PinnedServerVerifier {
    /// Never empty.
    expected: Vec<Fingerprint>,
    algs: WebPkiSupportedAlgorithms,
}

impl fmt::Debug for PinnedServerVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedServerVerifier")
            .field("expected", &self.expected)
            .finish_non_exhaustive()
    }
}

impl PinnedServerVerifier {
    /// A verifier that accepts only `expected`.
    pub fn new(expected: Fingerprint) -> Self {
        PinnedServerVerifier {
            expected: vec![expected],
            algs: provider().signature_verification_algorithms,
        }
    }

    /// A verifier that accepts any of `pins` (the nodes of a cluster, or
    /// a key and the one replacing it); `None` for an empty list.
    pub fn any_of(pins: &[Fingerprint]) -> Option<Self> {
        (!pins.is_empty()).then(|| PinnedServerVerifier {
            expected: pins.to_vec(),
            algs: provider().signature_verification_algorithms,
        })
    }
}

impl ServerCertVerifier for PinnedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let (presented, _) = spki_of(end_entity)?;
        match self.expected.as_slice() {
            pins if pins.contains(&presented) => Ok(ServerCertVerified::assertion()),
            [one] => Err(PeerRejected::WrongServer {
                presented,
                expected: *one,
            }
            .into()),
            pins => Err(PeerRejected::UnpinnedServer {
                presented,
                pins: pins.len(),
            }
            .into()),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("vigil speaks TLS 1.3 only".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13(&self.algs, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// A server configuration: TLS 1.3 only, client certificates mandatory and
/// checked against `trust` at each handshake.
///
/// Sessions are never resumed: no tickets are issued and no session is
/// cached. A resumed TLS 1.3 handshake restores the client's certificate
/// from the session without asking the verifier, so a key removed from
/// the trust store could come back in on an old ticket. Every handshake
/// is a full one, and every one asks the trust store.
pub fn server_config(
    identity: &Identity,
    trust: TrustStore,
) -> Result<Arc<rustls::ServerConfig>, AuthError> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(PinnedClientVerifier::new(trust)))
        .with_single_cert(identity.certs().to_vec(), identity.key())?;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// A client configuration: TLS 1.3 only, presents `identity`, admits only a
/// server whose key fingerprint is `server`.
pub fn client_config(
    identity: &Identity,
    server: Fingerprint,
) -> Result<Arc<rustls::ClientConfig>, AuthError> {
    client_config_with(identity, PinnedServerVerifier::new(server))
}

/// A client configuration like [`client_config`] that admits a server
/// whose key is any of `pins`; `None` for an empty list.
pub fn client_config_any(
    identity: &Identity,
    pins: &[Fingerprint],
) -> Option<Result<Arc<rustls::ClientConfig>, AuthError>> {
    PinnedServerVerifier::any_of(pins).map(|verifier| client_config_with(identity, verifier))
}

fn client_config_with(
    identity: &Identity,
    verifier: PinnedServerVerifier,
) -> Result<Arc<rustls::ClientConfig>, AuthError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(identity.certs().to_vec(), identity.key())?;
    // vigil servers issue no session tickets (see `server_config`).
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// If `err` is the TLS alert a server sends when it refuses the client's
/// certificate, the alert. In TLS 1.3 the client learns this only on its
/// first read after the handshake "succeeded".
pub fn refused_certificate_alert(err: &std::io::Error) -> Option<AlertDescription> {
    let tls = err.get_ref()?.downcast_ref::<rustls::Error>()?;
    match tls {
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::AccessDenied
            | AlertDescription::CertificateUnknown
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateRequired
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateExpired
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::DecryptError),
        ) => Some(*alert),
        _ => None,
    }
}

/// If `err` says the server's key was not the pinned one, why.
pub fn wrong_server(err: &std::io::Error) -> Option<PeerRejected> {
    let tls = err.get_ref()?.downcast_ref::<rustls::Error>()?;
    match tls {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(inner))) => {
            inner.downcast_ref::<PeerRejected>().cloned()
        }
        _ => None,
    }
}

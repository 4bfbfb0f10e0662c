//! Identities: a certificate chain, its private key and its fingerprint.

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use rustls::crypto::CryptoProvider;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::{AuthError, Fingerprint};

/// A certificate chain with its private key, checked to belong together and
/// to be usable by the TLS stack (Ed25519, ECDSA P-256/P-384 or RSA).
pub struct Identity {
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    fingerprint: Fingerprint,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            certs: self.certs.clone(),
            key: self.key.clone_key(),
            fingerprint: self.fingerprint,
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .field("certs", &self.certs.len())
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, AuthError> {
    fs::read(path).map_err(|source| AuthError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The PEM labels found in `bytes` (`CERTIFICATE`, `PRIVATE KEY`, ...), to
/// say what a file holds when it is not what was expected.
fn pem_labels(bytes: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(bytes);
    text.match_indices("-----BEGIN ")
        .filter_map(|(i, m)| {
            let rest = &text[i + m.len()..];
            rest.find("-----").map(|end| rest[..end].to_owned())
        })
        .collect()
}

fn found(bytes: &[u8]) -> String {
    let labels = pem_labels(bytes);
    if labels.is_empty() {
        "no PEM blocks".to_owned()
    } else {
        format!("PEM blocks: {}", labels.join(", "))
    }
}

/// Parses every certificate in a PEM buffer.
pub fn certs_from_pem(
    bytes: &[u8],
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, AuthError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| AuthError::Pem {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(AuthError::Pem {
            path: path.to_owned(),
            detail: format!("no certificate found ({})", found(bytes)),
        });
    }
    Ok(certs)
}

fn key_from_pem(bytes: &[u8], path: &Path) -> Result<PrivateKeyDer<'static>, AuthError> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => AuthError::Pem {
            path: path.to_owned(),
            detail: format!("no private key found ({})", found(bytes)),
        },
        other => AuthError::Pem {
            path: path.to_owned(),
            detail: other.to_string(),
        },
    })
}

impl Identity {
    /// Loads a PEM certificate chain and a PEM private key (PKCS#8, SEC1 or
    /// PKCS#1) and checks that they belong together.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Identity, AuthError> {
        // A key or certificate that others may replace is refused.
        crate::check_permissions(cert_path, "certificate")?;
        crate::check_key_permissions(key_path, "private key")?;
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        Self::from_pem_named(&cert_pem, cert_path, &key_pem, key_path)
    }

    /// Builds an identity from PEM text held in memory.
    pub fn from_pem(cert_pem: &[u8], key_pem: &[u8]) -> Result<Identity, AuthError> {
        Self::from_pem_named(
            cert_pem,
            Path::new("<certificate>"),
            key_pem,
            Path::new("<private key>"),
        )
    }

    fn from_pem_named(
        cert_pem: &[u8],
        cert_path: &Path,
        key_pem: &[u8],
        key_path: &Path,
    ) -> Result<Identity, AuthError> {
        let certs = certs_from_pem(cert_pem, cert_path)?;
        let fingerprint = Fingerprint::of_cert_der(&certs[0]).map_err(|e| e.in_file(cert_path))?;
        let key = key_from_pem(key_pem, key_path)?;
        let provider = crate::tls::provider();
        check_pair(&certs, &key, &provider, cert_path, key_path)?;
        Ok(Identity {
            certs,
            key,
            fingerprint,
        })
    }

    /// The fingerprint of the certificate's public key.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    /// The certificate chain, end entity first.
    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    /// A copy of the private key.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        self.key.clone_key()
    }
}

fn check_pair(
    certs: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    provider: &CryptoProvider,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), AuthError> {
    match CertifiedKey::from_der(certs.to_vec(), key.clone_key(), provider) {
        Ok(_) => Ok(()),
        Err(rustls::Error::InconsistentKeys(_)) => Err(AuthError::KeyMismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
        }),
        Err(rustls::Error::InvalidCertificate(e)) => Err(AuthError::BadCertificate {
            detail: e.to_string(),
        }
        .in_file(cert_path)),
        Err(other) => Err(AuthError::UnsupportedKey {
            path: key_path.to_owned(),
            detail: other.to_string(),
        }),
    }
}

/// A freshly generated Ed25519 identity as PEM text.
#[derive(Clone)]
pub struct GeneratedIdentity {
    /// Self-signed certificate, PEM.
    pub cert_pem: String,
    /// PKCS#8 private key, PEM.
    pub key_pem: String,
    /// Fingerprint of the public key.
    pub fingerprint: Fingerprint,
}

impl fmt::Debug for GeneratedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratedIdentity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl GeneratedIdentity {
    /// Generates an Ed25519 key and a self-signed certificate for it, with
    /// `common_name` as subject CN and DNS name.
    pub fn generate(common_name: &str) -> Result<GeneratedIdentity, AuthError> {
        GeneratedIdentity::generate_with_names(common_name, &[])
    }

    /// Like [`GeneratedIdentity::generate`], with more subject names: an
    /// IP address (`127.0.0.1`) becomes an IP name, anything else a DNS
    /// name. Peers that check names (a NATS route dialling another node
    /// checks its IP) need them; vigil checks only the key.
    pub fn generate_with_names(
        common_name: &str,
        names: &[&str],
    ) -> Result<GeneratedIdentity, AuthError> {
        let key = openssl_readable(rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519)?)?;
        let mut all = vec![common_name.to_owned()];
        all.extend(names.iter().map(|n| (*n).to_owned()));
        let mut params = rcgen::CertificateParams::new(all)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        let cert = params.self_signed(&key)?;
        let fingerprint = Fingerprint::of_cert_der(cert.der())?;
        Ok(GeneratedIdentity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            fingerprint,
        })
    }

    /// The identity, ready for TLS.
    pub fn identity(&self) -> Result<Identity, AuthError> {
        Identity::from_pem(self.cert_pem.as_bytes(), self.key_pem.as_bytes())
    }

    /// Writes the certificate (mode 0644) and the key (mode 0600). Refuses
    /// to replace existing files unless `overwrite` is set.
    pub fn write(
        &self,
        cert_path: &Path,
        key_path: &Path,
        overwrite: bool,
    ) -> Result<(), AuthError> {
        write_file(cert_path, self.cert_pem.as_bytes(), 0o644, overwrite)?;
        write_file(key_path, self.key_pem.as_bytes(), 0o600, overwrite)
    }
}

/// The start of an Ed25519 key in PKCS#8 v1 (RFC 8410): the private key
/// alone.
const PKCS8_V1_ED25519: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
/// The start of one in PKCS#8 v2 (RFC 5958) as ring writes it, with the
/// public key after the private one.
const PKCS8_V2_ED25519: [u8; 16] = [
    0x30, 0x51, 0x02, 0x01, 0x01, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The same key as PKCS#8 v1, which every tool reads: ring writes v2 (with
/// the public key), which OpenSSL 3.0 cannot load ("unsupported"), so an
/// operator could not use `openssl s_client` or `openssl pkey` on a key
/// `vigilctl` made. TLS loads both.
fn openssl_readable(key: rcgen::KeyPair) -> Result<rcgen::KeyPair, AuthError> {
    let der = key.serialize_der();
    let Some(seed) = der
        .strip_prefix(&PKCS8_V2_ED25519[..])
        .and_then(|rest| rest.get(..32))
    else {
        return Ok(key);
    };
    let mut v1 = PKCS8_V1_ED25519.to_vec();
    v1.extend_from_slice(seed);
    let pkcs8 = rustls_pki_types::PrivatePkcs8KeyDer::from(v1);
    Ok(rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &pkcs8,
        &rcgen::PKCS_ED25519,
    )?)
}

/// Writes `bytes` to `path` with the given Unix mode, durably.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32, overwrite: bool) -> Result<(), AuthError> {
    let err = |source| AuthError::Write {
        path: PathBuf::from(path),
        source,
    };
    let mut options = fs::OpenOptions::new();
    options.write(true);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path).map_err(err)?;
    #[cfg(unix)]
    {
        // The mode given to open() applies only to new files.
        use std::os::unix::fs::PermissionsExt as _;
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(err)?;
    }
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_identity_loads() {
        let generated = GeneratedIdentity::generate("test").expect("generate");
        let identity = generated.identity().expect("identity");
        assert_eq!(identity.fingerprint(), generated.fingerprint);
    }

    #[test]
    fn generated_keys_are_pkcs8_v1() {
        use rustls_pki_types::pem::PemObject as _;
        let generated = GeneratedIdentity::generate("test").expect("generate");
        let der =
            rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(generated.key_pem.as_bytes())
                .expect("PKCS#8 PEM");
        assert_eq!(der.secret_pkcs8_der().len(), 48);
        assert!(der.secret_pkcs8_der().starts_with(&PKCS8_V1_ED25519));
    }

    #[test]
    fn mismatched_key_is_refused() {
        let a = GeneratedIdentity::generate("a").expect("generate");
        let b = GeneratedIdentity::generate("b").expect("generate");
        let err =
            Identity::from_pem(a.cert_pem.as_bytes(), b.key_pem.as_bytes()).expect_err("mismatch");
        assert!(matches!(err, AuthError::KeyMismatch { .. }), "{err}");
    }

    #[test]
    fn swapped_files_say_what_they_hold() {
        let a = GeneratedIdentity::generate("a").expect("generate");
        let err =
            Identity::from_pem(a.key_pem.as_bytes(), a.cert_pem.as_bytes()).expect_err("swapped");
        let msg = err.to_string();
        assert!(
            msg.contains("no certificate found") && msg.contains("PRIVATE KEY"),
            "{msg}"
        );
    }
}

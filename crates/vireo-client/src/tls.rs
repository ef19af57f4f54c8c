//! TLS trust for `https://` remotes.
//!
//! Offline hosts have no system root store, so trust is explicit: either a PEM file of
//! certificates to use as trust anchors (a CA, or the daemon's self-signed certificate), or a
//! pinned SHA-256 fingerprint of the daemon's certificate. With a pin, the certificate's
//! chain, names and dates are not checked — the pin *is* the identity — but the handshake
//! signature is still verified against the pinned certificate's key with the crypto
//! provider's algorithms, so a peer that merely replays the certificate cannot complete the
//! handshake.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// Largest certificate file read (a CA bundle is far smaller).
const MAX_CA_FILE_BYTES: u64 = 4 << 20;

/// Why a TLS client configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("TLS fingerprint {0:?} is not 64 hexadecimal digits (colons allowed)")]
    Fingerprint(String),
    #[error("cannot read certificate file {}", path.display())]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate file {} is larger than {MAX_CA_FILE_BYTES} bytes", path.display())]
    CaTooLarge { path: PathBuf },
    #[error("certificate file {} contains no PEM certificate", path.display())]
    NoCertificates { path: PathBuf },
    #[error("certificate in {} is not a usable trust anchor", path.display())]
    BadCertificate {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("cannot build the TLS client configuration")]
    Build(#[source] rustls::Error),
    #[error(
        "no TLS trust configured for an https remote: pass --tls-ca FILE or --tls-fingerprint \
         HEX (VIREO_TLS_CA / VIREO_TLS_FINGERPRINT)"
    )]
    NoTrust,
}

/// A SHA-256 certificate fingerprint.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// Fingerprint of a DER-encoded certificate.
    pub fn of_der(der: &[u8]) -> Self {
        Fingerprint(Sha256::digest(der).into())
    }

    /// Parses 64 hex digits, optionally separated by `:` (as `openssl x509 -fingerprint`
    /// prints them), in either case.
    pub fn parse(s: &str) -> Result<Self, TlsConfigError> {
        let digits: String = s.trim().chars().filter(|c| *c != ':').collect();
        let mut out = [0u8; 32];
        if digits.len() != 64 {
            return Err(TlsConfigError::Fingerprint(s.to_string()));
        }
        hex::decode_to_slice(&digits, &mut out)
            .map_err(|_| TlsConfigError::Fingerprint(s.to_string()))?;
        Ok(Fingerprint(out))
    }

    /// Equality that takes the same time wherever the first difference is.
    fn matches(&self, other: &Fingerprint) -> bool {
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// How the server certificate of an `https://` remote is trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsTrust {
    /// Nothing configured: connecting to an `https://` remote fails with
    /// [`TlsConfigError::NoTrust`].
    Unconfigured,
    /// Certificates from a PEM file are the trust anchors (full WebPKI verification).
    CaFile(PathBuf),
    /// The server's end-entity certificate must have this SHA-256 fingerprint.
    Pinned(Fingerprint),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds a rustls client configuration for `trust`.
pub fn client_config(trust: &TlsTrust) -> Result<rustls::ClientConfig, TlsConfigError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsConfigError::Build)?;
    let config = match trust {
        TlsTrust::Unconfigured => return Err(TlsConfigError::NoTrust),
        TlsTrust::CaFile(path) => {
            let roots = load_roots(path)?;
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        TlsTrust::Pinned(fp) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedVerifier { pin: *fp, provider }))
            .with_no_client_auth(),
    };
    Ok(config)
}

fn load_roots(path: &Path) -> Result<rustls::RootCertStore, TlsConfigError> {
    use std::io::Read;
    let read_err = |source| TlsConfigError::ReadCa {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut pem = Vec::new();
    file.take(MAX_CA_FILE_BYTES + 1)
        .read_to_end(&mut pem)
        .map_err(read_err)?;
    if pem.len() as u64 > MAX_CA_FILE_BYTES {
        return Err(TlsConfigError::CaTooLarge {
            path: path.to_path_buf(),
        });
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(read_err)?;
        roots
            .add(cert)
            .map_err(|source| TlsConfigError::BadCertificate {
                path: path.to_path_buf(),
                source,
            })?;
    }
    if roots.is_empty() {
        return Err(TlsConfigError::NoCertificates {
            path: path.to_path_buf(),
        });
    }
    Ok(roots)
}

/// The server presented a certificate other than the pinned one (carried through rustls as
/// the cause of its certificate error, and turned into
/// [`crate::ClientError::PinMismatch`] by the transport).
#[derive(Debug, thiserror::Error)]
#[error("the server's certificate has SHA-256 fingerprint {presented}, not the pinned one")]
pub struct PinMismatch {
    pub presented: Fingerprint,
}

/// Finds a [`PinMismatch`] inside a failed handshake's I/O error.
pub(crate) fn pin_mismatch(err: &std::io::Error) -> Option<Fingerprint> {
    let rustls_err = err.get_ref()?.downcast_ref::<rustls::Error>()?;
    match rustls_err {
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => {
            other.0.downcast_ref::<PinMismatch>().map(|m| m.presented)
        }
        _ => None,
    }
}

/// Accepts exactly the server certificate whose SHA-256 is `pin`.
#[derive(Debug)]
struct PinnedVerifier {
    pin: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = Fingerprint::of_der(end_entity.as_ref());
        if self.pin.matches(&presented) {
            Ok(ServerCertVerified::assertion())
        } else {
            tracing::warn!(expected = %self.pin, presented = %presented, "TLS fingerprint mismatch");
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(PinMismatch { presented })),
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_parsing() {
        let hex64 = "ab".repeat(32);
        assert_eq!(Fingerprint::parse(&hex64).unwrap().0, [0xab; 32]);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(Fingerprint::parse(&colons).unwrap().0, [0xab; 32]);
        assert_eq!(Fingerprint::parse(&hex64).unwrap().to_string(), hex64);
        for bad in ["", "ab", &"zz".repeat(32), &"ab".repeat(33)] {
            assert!(Fingerprint::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fingerprint_matching() {
        let a = Fingerprint([1; 32]);
        let mut b = a;
        assert!(a.matches(&b));
        b.0[31] = 2;
        assert!(!a.matches(&b));
    }

    #[test]
    fn unconfigured_trust_is_an_error() {
        assert!(matches!(
            client_config(&TlsTrust::Unconfigured),
            Err(TlsConfigError::NoTrust)
        ));
    }

    #[test]
    fn ca_file_errors() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(matches!(
            client_config(&TlsTrust::CaFile(empty)),
            Err(TlsConfigError::NoCertificates { .. })
        ));
        assert!(matches!(
            client_config(&TlsTrust::CaFile(dir.path().join("missing.pem"))),
            Err(TlsConfigError::ReadCa { .. })
        ));
    }
}

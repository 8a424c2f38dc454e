//! A device's X.509 identity: its certificate chain and private key, read from PEM files, and
//! what IoT Hub will judge of it (`iothub-protocol.md` 1.6): the subject's common name, whether
//! it is self-signed (registered by thumbprint) or CA-signed (CN must be the device id), and
//! its validity period.
//!
//! `config` checks a device's files with [`load`] at `check` and reload time, and the session
//! loads them again before a connect when they changed on disk, so a renewed certificate is
//! used without a restart.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};

/// A certificate chain is a few KiB; a key file a few; anything far larger is not one.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// How long before its end a certificate is reported as expiring.
pub const EXPIRY_WARNING: std::time::Duration = std::time::Duration::from_secs(30 * 24 * 3600);

/// Why a device's certificate or key cannot be used. Messages name files, never key material.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        /// The private key's file failed (else the certificate's; they may be one file).
        key: bool,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{0} holds no PEM certificate (a -----BEGIN CERTIFICATE----- block); give the device certificate in PEM"
    )]
    NoCertificate(String),
    #[error("{path}: certificate {index} is not a readable X.509 certificate: {reason}")]
    BadCertificate {
        path: String,
        index: usize,
        reason: String,
    },
    #[error(
        "{0} holds no PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC); give the device's private key in PEM"
    )]
    NoKey(String),
    #[error("{path} holds no readable PEM private key (a block is malformed)")]
    MalformedKey { path: String },
    #[error("{path}: the key type is not supported (RSA, ECDSA P-256/P-384 and Ed25519 are)")]
    UnsupportedKey { path: String },
    #[error("the private key in {key} does not belong to the certificate in {certificate}")]
    KeyMismatch { certificate: String, key: String },
}

/// What IoT Hub looks at in a device certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    /// The subject's common name, if it has one.
    pub common_name: Option<String>,
    /// Issuer and subject are the same name: registered by thumbprint, not through a CA.
    pub self_signed: bool,
    /// Validity, as Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// SHA-256 of the certificate (DER), upper-case hex: what the portal shows as a thumbprint.
    pub thumbprint: String,
}

impl Info {
    /// Where the certificate stands at `now` (Unix seconds).
    #[must_use]
    pub fn validity_at(&self, now: i64) -> Validity {
        let warn = i64::try_from(EXPIRY_WARNING.as_secs()).unwrap_or(i64::MAX);
        if now < self.not_before {
            Validity::NotYetValid
        } else if now > self.not_after {
            // RFC 5280 4.1.2.5: valid through notAfter, inclusive.
            Validity::Expired
        } else if self.not_after - now <= warn {
            Validity::ExpiresSoon {
                days: (self.not_after - now) / 86_400,
            }
        } else {
            Validity::Valid
        }
    }

    /// `not_after` as a UTC time, for log lines.
    #[must_use]
    pub fn not_after_text(&self) -> String {
        utc_text(self.not_after)
    }

    /// `not_before` as a UTC time.
    #[must_use]
    pub fn not_before_text(&self) -> String {
        utc_text(self.not_before)
    }
}

fn utc_text(unix: i64) -> String {
    let at = u64::try_from(unix).unwrap_or(0);
    crate::utc::utc(std::time::UNIX_EPOCH + std::time::Duration::from_secs(at))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    Valid,
    /// Within [`EXPIRY_WARNING`] of its end; `days` left, rounded down.
    ExpiresSoon {
        days: i64,
    },
    Expired,
    NotYetValid,
}

/// A device's certificate chain (leaf first) and private key, checked to belong together.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    pub info: Info,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("chain", &self.chain.len())
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A TLS client configuration that presents this identity and trusts `roots`.
    ///
    /// # Errors
    /// When rustls refuses the key (checked by [`load`] already, so only on a rustls change).
    pub fn client_config(
        &self,
        roots: Arc<rustls::RootCertStore>,
    ) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
        let config = super::tls::client_builder(roots)?
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        Ok(Arc::new(config))
    }
}

/// Reads a device's certificate (chain, leaf first) and private key, and checks that the key is
/// the certificate's.
///
/// # Errors
/// When a file cannot be read or holds no usable certificate or key, or they do not match.
pub fn load(certificate: &Path, key: &Path) -> Result<Identity, Error> {
    let cert_name = certificate.display().to_string();
    let key_name = key.display().to_string();
    let read = |path: &Path, name: &str, key: bool| {
        crate::regular_file::read_regular(path, MAX_PEM_BYTES).map_err(|source| Error::Read {
            path: name.to_owned(),
            key,
            source,
        })
    };
    let pem = read(certificate, &cert_name, false)?;
    let mut chain = Vec::new();
    for (index, item) in rustls_pemfile::certs(&mut pem.as_slice()).enumerate() {
        let cert = item.map_err(|e| Error::BadCertificate {
            path: cert_name.clone(),
            index: index + 1,
            reason: e.to_string(),
        })?;
        chain.push(cert);
    }
    let Some(leaf) = chain.first() else {
        return Err(Error::NoCertificate(cert_name));
    };
    let info = info(leaf).map_err(|reason| Error::BadCertificate {
        path: cert_name.clone(),
        index: 1,
        reason,
    })?;
    let key_pem = read(key, &key_name, true)?;
    let private = match rustls_pemfile::private_key(&mut key_pem.as_slice()) {
        Ok(Some(private)) => private,
        Ok(None) => return Err(Error::NoKey(key_name)),
        Err(_) => return Err(Error::MalformedKey { path: key_name }),
    };
    let signing = rustls::crypto::ring::sign::any_supported_type(&private).map_err(|_| {
        Error::UnsupportedKey {
            path: key_name.clone(),
        }
    })?;
    let certified = rustls::sign::CertifiedKey::new(chain.clone(), signing);
    if certified.keys_match().is_err() {
        return Err(Error::KeyMismatch {
            certificate: cert_name,
            key: key_name,
        });
    }
    Ok(Identity {
        chain,
        key: private,
        info,
    })
}

/// Reads what IoT Hub judges from a DER certificate.
///
/// # Errors
/// A description of why the certificate cannot be parsed.
pub fn info(der: &CertificateDer<'_>) -> Result<Info, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| e.to_string())?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let validity = cert.validity();
    let digest = Sha256::digest(der.as_ref());
    Ok(Info {
        common_name,
        self_signed: cert.subject().as_raw() == cert.issuer().as_raw(),
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        thumbprint: digest.iter().map(|b| format!("{b:02X}")).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn self_signed(cn: &str, days: i64) -> (String, KeyPair) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        let now = time_now();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(days);
        (params.self_signed(&key).unwrap().pem(), key)
    }

    fn time_now() -> time::OffsetDateTime {
        time::OffsetDateTime::now_utc()
    }

    #[test]
    fn loads_a_self_signed_certificate_and_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = self_signed("meter-1", 365);
        let c = write(dir.path(), "c.pem", &cert);
        let k = write(dir.path(), "k.pem", &key.serialize_pem());
        let id = load(&c, &k).unwrap();
        assert_eq!(id.info.common_name.as_deref(), Some("meter-1"));
        assert!(id.info.self_signed);
        assert_eq!(id.info.thumbprint.len(), 64);
        let now = id.info.not_before + 86_400;
        assert_eq!(id.info.validity_at(now), Validity::Valid);
        assert_eq!(
            id.info.validity_at(id.info.not_after - 3 * 86_400 - 5),
            Validity::ExpiresSoon { days: 3 }
        );
        // Valid through notAfter, as webpki and RFC 5280 count it; expired the second after.
        assert_eq!(
            id.info.validity_at(id.info.not_after),
            Validity::ExpiresSoon { days: 0 }
        );
        assert_eq!(
            id.info.validity_at(id.info.not_after + 1),
            Validity::Expired
        );
        assert_eq!(
            id.info.validity_at(id.info.not_before - 1),
            Validity::NotYetValid
        );
        let roots = Arc::new(rustls::RootCertStore::empty());
        assert!(id.client_config(roots).is_ok());
        assert!(!format!("{id:?}").contains("PRIVATE"));
    }

    #[test]
    fn refuses_a_key_of_another_certificate_and_files_without_pem() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = self_signed("meter-1", 365);
        let other = KeyPair::generate().unwrap();
        let c = write(dir.path(), "c.pem", &cert);
        let k = write(dir.path(), "k.pem", &other.serialize_pem());
        let err = load(&c, &k).unwrap_err().to_string();
        assert!(err.contains("does not belong"), "{err}");
        let empty = write(dir.path(), "e.pem", "nothing here\n");
        assert!(matches!(
            load(&empty, &k).unwrap_err(),
            Error::NoCertificate(_)
        ));
        assert!(matches!(load(&c, &empty).unwrap_err(), Error::NoKey(_)));
        let err = load(&dir.path().join("missing.pem"), &k).unwrap_err();
        assert!(err.to_string().contains("cannot read"), "{err}");
    }
}

//! X.509 client-certificate authentication (`iothub-protocol.md` 1.6), decided at CONNECT time
//! from the certificate chain the TLS handshake carried (which only proved possession of the
//! key: `tls::OptionalClientCert`).
//!
//! A device is registered either with a thumbprint (SHA-1 or SHA-256 of its DER leaf
//! certificate, primary and optional secondary) or as CA-signed: its chain must verify against
//! a CA added with [`Emulator::add_verified_ca`](crate::Emulator::add_verified_ca) (rustls'
//! webpki verifier, which also checks the validity dates and the client-auth usage), and the
//! leaf's subject CN must be the device id. The hub checks a thumbprint device's certificate
//! only by its thumbprint; refusing one outside its validity period is the emulator's choice.
//!
//! Pure functions of the chain, the registration and the clock, so every refusal is unit
//! tested without a socket.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use leafgate::hub::certificate::{self, Info, Validity};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{CertificateError, RootCertStore};

use crate::credential::X509Auth;
use crate::lock::lock;
use crate::registry::RefusalReason;
use crate::tls::hex_upper;

/// Why a CA could not be added.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("no PEM certificate found")]
    NoCertificate(#[source] rustls::pki_types::pem::Error),
    #[error("certificate cannot be a trust anchor")]
    Rejected(#[source] rustls::Error),
    #[error("could not build a verifier from the CAs")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
}

/// Hex digits only, upper case: `aa:BB cc` → `AABBCC`.
fn normalize(thumbprint: &str) -> String {
    thumbprint
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect()
}

/// Whether `registered` is the thumbprint of `der`, by its length SHA-1 or SHA-256.
fn thumbprint_matches(registered: &str, der: &[u8]) -> bool {
    let want = normalize(registered);
    let algorithm = match want.len() {
        40 => &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        64 => &ring::digest::SHA256,
        _ => return false,
    };
    hex_upper(ring::digest::digest(algorithm, der).as_ref()) == want
}

/// What the emulator reads from a leaf certificate is what leafgate's `check` reads: the
/// subject CN and the validity period.
fn check_validity(leaf: &Info, now: u64) -> Result<(), RefusalReason> {
    match leaf.validity_at(i64::try_from(now).unwrap_or(i64::MAX)) {
        Validity::NotYetValid => Err(RefusalReason::CertificateNotYetValid),
        Validity::Expired => Err(RefusalReason::CertificateExpired),
        Validity::Valid | Validity::ExpiresSoon { .. } => Ok(()),
    }
}

/// The CAs verified with the hub (the emulator skips the proof of possession) and a webpki
/// verifier built from them.
#[derive(Default)]
pub(crate) struct VerifiedCas {
    state: Mutex<CaState>,
}

struct CaState {
    roots: RootCertStore,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
}

impl Default for CaState {
    fn default() -> Self {
        CaState {
            roots: RootCertStore::empty(),
            verifier: None,
        }
    }
}

impl VerifiedCas {
    /// Adds every certificate in `pem` as a trust anchor; returns how many.
    pub(crate) fn add(&self, pem: &str) -> Result<usize, CaError> {
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(CaError::NoCertificate)?;
        if certs.is_empty() {
            return Err(CaError::NoCertificate(
                rustls::pki_types::pem::Error::NoItemsFound,
            ));
        }
        let mut state = lock(&self.state);
        let mut roots = state.roots.clone();
        for cert in &certs {
            roots.add(cert.clone()).map_err(CaError::Rejected)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots.clone()), provider)
                .build()
                .map_err(CaError::Verifier)?;
        state.roots = roots;
        state.verifier = Some(verifier);
        Ok(certs.len())
    }

    /// Verifies `chain` (leaf first) against the CAs at `now` (Unix seconds).
    fn verify(&self, chain: &[CertificateDer<'_>], now: u64) -> Result<(), RefusalReason> {
        let verifier = lock(&self.state).verifier.clone();
        let Some(verifier) = verifier else {
            return Err(RefusalReason::CertificateNotTrusted(
                "no CA is verified with the hub".to_owned(),
            ));
        };
        let Some((leaf, intermediates)) = chain.split_first() else {
            return Err(RefusalReason::MissingClientCertificate);
        };
        let now = UnixTime::since_unix_epoch(Duration::from_secs(now));
        match verifier.verify_client_cert(leaf, intermediates, now) {
            Ok(_) => Ok(()),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            )) => Err(RefusalReason::CertificateExpired),
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
            )) => Err(RefusalReason::CertificateNotYetValid),
            Err(e) => Err(RefusalReason::CertificateNotTrusted(e.to_string())),
        }
    }
}

/// Checks the chain a device registered for X.509 presented (`chain`, leaf first, empty when
/// the handshake carried none) at `now` (Unix seconds).
///
/// # Errors
/// The first check that failed, each its own [`RefusalReason`].
pub(crate) fn authenticate(
    auth: &X509Auth,
    device_id: &str,
    chain: &[CertificateDer<'_>],
    cas: &VerifiedCas,
    now: u64,
) -> Result<(), RefusalReason> {
    let leaf_der = chain
        .first()
        .ok_or(RefusalReason::MissingClientCertificate)?;
    let leaf = certificate::info(leaf_der).map_err(|_| RefusalReason::BadClientCertificate)?;
    match auth {
        X509Auth::Thumbprint { primary, secondary } => {
            let matches = std::iter::once(primary)
                .chain(secondary)
                .any(|registered| thumbprint_matches(registered, leaf_der));
            if !matches {
                return Err(RefusalReason::ThumbprintMismatch);
            }
            check_validity(&leaf, now)
        }
        X509Auth::CaSigned => {
            cas.verify(chain, now)?;
            if leaf.common_name.as_deref() != Some(device_id) {
                return Err(RefusalReason::CommonNameMismatch);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{SystemTime, UNIX_EPOCH};

    use super::*;
    use crate::tls::{KeyKind, TestCa, self_signed, thumbprint_sha1, thumbprint_sha256};

    const DAY: Duration = Duration::from_secs(86_400);

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn unix(at: SystemTime) -> u64 {
        at.duration_since(UNIX_EPOCH).unwrap().as_secs()
    }

    #[test]
    fn thumbprints_compare_without_case_or_separators_by_length() {
        let now = SystemTime::now();
        let (cert, _) = self_signed("d", KeyKind::EcdsaP256, now - DAY, now + DAY).unwrap();
        let der = der(&cert);
        let sha1 = thumbprint_sha1(&cert).unwrap();
        let sha256 = thumbprint_sha256(&cert).unwrap();
        assert!(thumbprint_matches(&sha1, &der));
        assert!(thumbprint_matches(&sha256.to_ascii_lowercase(), &der));
        let colons: Vec<String> = sha1
            .as_bytes()
            .chunks(2)
            .map(|pair| String::from_utf8_lossy(pair).to_ascii_lowercase())
            .collect();
        assert!(thumbprint_matches(&colons.join(":"), &der));
        assert!(!thumbprint_matches(&sha1[..38], &der));
        assert!(!thumbprint_matches(&"0".repeat(40), &der));
        assert!(!thumbprint_matches("", &der));
    }

    #[test]
    fn thumbprint_devices_match_either_thumbprint_within_validity() {
        let now = SystemTime::now();
        let cas = VerifiedCas::default();
        let (cert, _) = self_signed("d", KeyKind::EcdsaP256, now - DAY, now + DAY).unwrap();
        let chain = [der(&cert)];
        let print = thumbprint_sha256(&cert).unwrap();
        let primary_only = X509Auth::Thumbprint {
            primary: print.clone(),
            secondary: None,
        };
        let secondary = X509Auth::Thumbprint {
            primary: "00".repeat(20),
            secondary: Some(print.clone()),
        };
        let neither = X509Auth::Thumbprint {
            primary: "00".repeat(20),
            secondary: Some("11".repeat(32)),
        };
        let at = unix(now);
        assert_eq!(authenticate(&primary_only, "d", &chain, &cas, at), Ok(()));
        // The CN does not matter for a thumbprint device.
        assert_eq!(authenticate(&secondary, "other", &chain, &cas, at), Ok(()));
        assert_eq!(
            authenticate(&neither, "d", &chain, &cas, at),
            Err(RefusalReason::ThumbprintMismatch)
        );
        assert_eq!(
            authenticate(&primary_only, "d", &chain, &cas, at + 2 * 86_400),
            Err(RefusalReason::CertificateExpired)
        );
        assert_eq!(
            authenticate(&primary_only, "d", &chain, &cas, at - 2 * 86_400),
            Err(RefusalReason::CertificateNotYetValid)
        );
        assert_eq!(
            authenticate(&primary_only, "d", &[], &cas, at),
            Err(RefusalReason::MissingClientCertificate)
        );
        let junk = [CertificateDer::from(vec![0x30, 0x03, 0x02, 0x01, 0x00])];
        assert_eq!(
            authenticate(&primary_only, "d", &junk, &cas, at),
            Err(RefusalReason::BadClientCertificate)
        );
    }

    #[test]
    fn ca_signed_devices_need_a_verified_ca_and_their_id_as_cn() {
        let now = SystemTime::now();
        let at = unix(now);
        let ca = TestCa::generate("fleet CA").unwrap();
        let (cert, _) = ca
            .issue("dev-1", KeyKind::EcdsaP256, now - DAY, now + DAY)
            .unwrap();
        let chain = [der(&cert)];
        let cas = VerifiedCas::default();
        assert!(matches!(
            authenticate(&X509Auth::CaSigned, "dev-1", &chain, &cas, at),
            Err(RefusalReason::CertificateNotTrusted(_))
        ));
        assert_eq!(cas.add(ca.ca_pem()).unwrap(), 1);
        assert_eq!(
            authenticate(&X509Auth::CaSigned, "dev-1", &chain, &cas, at),
            Ok(())
        );
        assert_eq!(
            authenticate(&X509Auth::CaSigned, "dev-2", &chain, &cas, at),
            Err(RefusalReason::CommonNameMismatch)
        );
        assert_eq!(
            authenticate(&X509Auth::CaSigned, "dev-1", &chain, &cas, at + 2 * 86_400),
            Err(RefusalReason::CertificateExpired)
        );
        assert_eq!(
            authenticate(&X509Auth::CaSigned, "dev-1", &chain, &cas, at - 2 * 86_400),
            Err(RefusalReason::CertificateNotYetValid)
        );
        // Signed by another CA: not trusted.
        let stranger = TestCa::generate("other CA").unwrap();
        let (foreign, _) = stranger
            .issue("dev-1", KeyKind::EcdsaP256, now - DAY, now + DAY)
            .unwrap();
        assert!(matches!(
            authenticate(&X509Auth::CaSigned, "dev-1", &[der(&foreign)], &cas, at),
            Err(RefusalReason::CertificateNotTrusted(_))
        ));
        assert!(matches!(cas.add("junk"), Err(CaError::NoCertificate(_))));
    }
}

//! Asking for a client certificate without requiring or judging one (`iothub-protocol.md` 1.1,
//! 1.6): the hub requests a certificate in every handshake, SAS devices present none, and
//! whether a certificate is acceptable depends on the device named in the CONNECT, which comes
//! after the handshake. So the handshake only proves the client holds the certificate's key
//! (its handshake signature is verified); the certificate itself is judged at CONNECT time
//! (`crate::x509`).

use std::sync::Arc;

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{
    CryptoProvider, WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature,
};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

/// Requests a client certificate, takes any (or none), and verifies the handshake signature
/// made with its key.
#[derive(Debug)]
pub(crate) struct OptionalClientCert {
    algorithms: WebPkiSupportedAlgorithms,
}

impl OptionalClientCert {
    /// Verifies handshake signatures with `provider`'s algorithms.
    pub(crate) fn new(provider: &Arc<CryptoProvider>) -> Self {
        OptionalClientCert {
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

impl ClientCertVerifier for OptionalClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    /// SAS devices connect without a certificate.
    fn client_auth_mandatory(&self) -> bool {
        false
    }

    /// No hints: a client with a certificate should always present it.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    /// Any certificate passes here; the CONNECT decides (see the module doc).
    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

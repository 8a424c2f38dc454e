//! The emulator's own PKI: a throwaway CA and a server certificate it signs, made fresh at every
//! start so no key material ever lives in the repository.
//!
//! Clients trust [`Certificates::ca_pem`] the way a leaf trusts an Edge gateway's root CA
//! (`iothub-protocol.md` 8). The server certificate names `localhost`, `127.0.0.1`, `::1` and
//! the configured host name, so a client may dial any of them.
//!
//! Every handshake asks for a client certificate without requiring one, as the hub does
//! (`client_auth`); a certificate is judged at CONNECT time, by the device it claims to be
//! (`crate::x509`).
//!
//! Public so that tests can stand up hostile hubs of their own that leafgate trusts the same way,
//! and make device certificates for X.509 authentication (`test_certs`).

mod client_auth;
mod test_certs;

pub(crate) use client_auth::OptionalClientCert;
pub(crate) use test_certs::hex_upper;
pub use test_certs::{
    CertError, KeyKind, TestCa, rsa_key_pem, self_signed, thumbprint_sha1, thumbprint_sha256,
};

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use super::Error;

/// The CA (PEM, for clients) and the TLS server configuration holding the server certificate.
pub struct Certificates {
    pub ca_pem: String,
    pub server_config: Arc<ServerConfig>,
}

/// The names the server certificate carries: the loopback names plus `host_name`.
fn subject_alt_names(host_name: &str) -> Vec<String> {
    let mut names: Vec<String> = ["localhost", "127.0.0.1", "::1"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    if !names.iter().any(|n| n.eq_ignore_ascii_case(host_name)) {
        names.push(host_name.to_owned());
    }
    names
}

/// Generates the CA and server certificate and builds a TLS 1.2/1.3 server configuration with
/// the ring provider (explicitly: the process may have no default provider, or another one)
/// that asks clients for an optional certificate (`client_auth::OptionalClientCert`).
///
/// # Errors
/// When `host_name` cannot go in a certificate, or rustls refuses the result.
pub fn generate(host_name: &str) -> Result<Certificates, Error> {
    generate_for(subject_alt_names(host_name), host_name)
}

/// As [`generate`], with a server certificate that names exactly `names` (subject CN
/// `common_name`): an IoT Edge parent's certificate names the parent, not the hub.
///
/// # Errors
/// When a name cannot go in a certificate, or rustls refuses the result.
pub fn generate_for(names: Vec<String>, common_name: &str) -> Result<Certificates, Error> {
    let ca_key = KeyPair::generate().map_err(Error::Certificate)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(Error::Certificate)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "leafgate IoT Hub emulator CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).map_err(Error::Certificate)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let mut server_params = CertificateParams::new(names).map_err(Error::Certificate)?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    server_params.is_ca = IsCa::ExplicitNoCa;
    server_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_key = KeyPair::generate().map_err(Error::Certificate)?;
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .map_err(Error::Certificate)?;

    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client_auth = Arc::new(OptionalClientCert::new(&provider));
    let server_config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(Error::Tls)?
        .with_client_cert_verifier(client_auth)
        .with_single_cert(vec![server_cert.der().clone(), ca_cert.der().clone()], key)
        .map_err(Error::Tls)?;
    Ok(Certificates {
        ca_pem: ca_cert.pem(),
        server_config: Arc::new(server_config),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_include_loopback_and_host_once() {
        assert_eq!(
            subject_alt_names("myhub.azure-devices.net"),
            ["localhost", "127.0.0.1", "::1", "myhub.azure-devices.net"]
        );
        assert_eq!(subject_alt_names("LOCALHOST").len(), 3);
    }

    #[test]
    fn generates_a_pem_ca_and_refuses_unusable_host_names() {
        let certs = generate("myhub.azure-devices.net").unwrap();
        assert!(certs.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(matches!(
            generate("hüb.example"),
            Err(Error::Certificate(_))
        ));
    }
}

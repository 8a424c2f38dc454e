//! TLS client settings for IoT Hub sessions: the system's trusted roots plus an optional
//! `ca_file` (an IoT Edge parent's root, or the emulator's), on rustls with the ring provider.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read CA file {path}")]
    ReadCa {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("CA file {0} holds no PEM certificate")]
    EmptyCa(String),
    #[error("CA file {path} has a certificate rustls refuses")]
    BadCa {
        path: String,
        #[source]
        source: rustls::Error,
    },
    #[error("no trusted root certificates: the system store is empty and no hub.ca_file is set")]
    NoRoots,
    #[error("cannot build TLS settings")]
    Config(#[source] rustls::Error),
}

/// Builds the client config shared by every session.
///
/// # Errors
/// When `ca_file` cannot be read or parsed, or no root at all is available.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, Error> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        log::debug!("skipping a system root certificate: {e}");
    }
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    log::debug!("{added} system root certificates loaded");
    if let Some(path) = ca_file {
        let shown = path.display().to_string();
        let pem = std::fs::read(path).map_err(|source| Error::ReadCa {
            path: shown.clone(),
            source,
        })?;
        let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
            .filter_map(Result::ok)
            .collect();
        if certs.is_empty() {
            return Err(Error::EmptyCa(shown));
        }
        for cert in certs {
            roots.add(cert).map_err(|source| Error::BadCa {
                path: shown.clone(),
                source,
            })?;
        }
    }
    if roots.is_empty() {
        return Err(Error::NoRoots);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(Error::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

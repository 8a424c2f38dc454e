//! TLS client settings for IoT Hub sessions: the system's trusted roots plus an optional
//! `ca_file` (an IoT Edge parent's root, or the emulator's), on rustls with the ring provider.

use std::path::Path;
use std::sync::Arc;

use rustls::RootCertStore;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}")]
    ReadCa {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is a directory; give the PEM file holding the CA certificate(s)")]
    CaIsDirectory(String),
    #[error(
        "{0} holds no PEM certificate (a -----BEGIN CERTIFICATE----- block); give the CA certificate(s) in PEM"
    )]
    EmptyCa(String),
    #[error("{path} holds no readable PEM certificate (a block is malformed)")]
    MalformedCa {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: certificate {index} is not a usable X.509 certificate")]
    BadCa {
        path: String,
        index: usize,
        #[source]
        source: rustls::Error,
    },
    #[error("no trusted root certificates: the system store is empty and no hub.ca_file is set")]
    NoRoots,
    #[error("cannot build TLS settings")]
    Config(#[source] rustls::Error),
}

/// A CA bundle is a few hundred KiB at most; the limit keeps a huge file from exhausting memory.
pub const MAX_CA_BYTES: u64 = 16 * 1024 * 1024;

/// Adds the certificates of a PEM file to `roots`; returns how many. Config validation calls
/// this too, so a file `leafgate check` accepts is exactly a file the daemon can use. PEM
/// sections that are not certificates (a key in a bundle) are skipped; at least one certificate
/// must be there and rustls must accept each.
///
/// # Errors
/// When the file cannot be read, is not a regular file, or holds no usable certificate.
pub fn add_ca_file(path: &Path, roots: &mut RootCertStore) -> Result<usize, Error> {
    let shown = path.display().to_string();
    if path.is_dir() {
        return Err(Error::CaIsDirectory(shown));
    }
    let pem =
        crate::regular_file::read_limited(path, MAX_CA_BYTES).map_err(|source| Error::ReadCa {
            path: shown.clone(),
            source,
        })?;
    let mut unreadable = None;
    let mut found = 0usize;
    for item in rustls_pemfile::certs(&mut pem.as_bytes()) {
        match item {
            Ok(cert) => {
                found += 1;
                roots.add(cert).map_err(|source| Error::BadCa {
                    path: shown.clone(),
                    index: found,
                    source,
                })?;
            }
            Err(e) => {
                unreadable.get_or_insert(e);
            }
        }
    }
    match (found, unreadable) {
        (0, Some(source)) => Err(Error::MalformedCa {
            path: shown,
            source,
        }),
        (0, None) => Err(Error::EmptyCa(shown)),
        (n, _) => Ok(n),
    }
}

/// What every session trusts: the roots (device certificates build their own TLS settings on
/// them) and the TLS settings of devices that authenticate with SAS tokens.
#[derive(Clone)]
pub struct Trust {
    pub roots: Arc<RootCertStore>,
    pub config: Arc<rustls::ClientConfig>,
}

/// Builds the trust shared by every session: the system roots plus `ca_file`.
///
/// # Errors
/// When `ca_file` cannot be read or parsed, or no root at all is available.
pub fn trust(ca_file: Option<&Path>) -> Result<Trust, Error> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        log::debug!("skipping a system root certificate: {e}");
    }
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    log::debug!("{added} system root certificates loaded");
    if let Some(path) = ca_file {
        add_ca_file(path, &mut roots)?;
    }
    if roots.is_empty() {
        return Err(Error::NoRoots);
    }
    let roots = Arc::new(roots);
    let config = client_builder(Arc::clone(&roots))
        .map_err(Error::Config)?
        .with_no_client_auth();
    Ok(Trust {
        roots,
        config: Arc::new(config),
    })
}

/// The one TLS policy of every hub connection (ring, TLS 1.2 and 1.3, verification against
/// `roots`), finished with or without a client certificate.
///
/// # Errors
/// When rustls refuses the protocol versions (only on a rustls change).
pub fn client_builder(
    roots: Arc<RootCertStore>,
) -> Result<
    rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>,
    rustls::Error,
> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])?
        .with_root_certificates(roots))
}

/// The TLS settings of sessions without a client certificate (see [`trust`]).
///
/// # Errors
/// As [`trust`].
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, Error> {
    trust(ca_file).map(|t| t.config)
}

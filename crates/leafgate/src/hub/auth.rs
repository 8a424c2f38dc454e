//! How a device proves who it is to IoT Hub: a SAS token signed with its key, or its X.509
//! certificate in the TLS handshake (`iothub-protocol.md` 1.6, 2).
//!
//! A certificate's files are read again before a connect whenever they changed on disk, so a
//! certificate renewed in place is used at the next connect without a restart, and an expired
//! one is caught here with a clear line instead of as the hub's bare "not authorized".

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use super::certificate::{self, Info, Validity};
use super::sas::Key;

/// A device's credentials, as the config names them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    Sas(Key),
    X509(X509Files),
}

/// Where a device's certificate and key are, and the certificate's thumbprint when the config
/// was read (so a reload notices a certificate replaced on disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct X509Files {
    pub certificate: PathBuf,
    pub key: PathBuf,
    pub thumbprint: String,
}

/// Why a device with a certificate cannot connect now. Shown as is in its log line.
#[derive(Debug, thiserror::Error)]
pub enum Unusable {
    #[error("{0}")]
    Files(#[from] certificate::Error),
    #[error(
        "its certificate {path} expired at {at}; IoT Hub refuses it: install a renewed certificate (leafgate reads it before the next connect)"
    )]
    Expired { path: String, at: String },
    #[error("its certificate {path} is not valid before {at}; check the gateway's clock")]
    NotYetValid { path: String, at: String },
    #[error("cannot use its certificate: {0}")]
    Tls(#[from] rustls::Error),
}

/// The file times a loaded identity was read at: a change reloads it.
type Stamp = (Option<SystemTime>, Option<SystemTime>);

/// A device's certificate, loaded and turned into TLS settings, and reloaded when it changes.
pub struct X509Source {
    files: X509Files,
    loaded: Option<(Stamp, Arc<rustls::ClientConfig>, Info)>,
}

impl X509Source {
    #[must_use]
    pub fn new(files: X509Files) -> Self {
        Self {
            files,
            loaded: None,
        }
    }

    fn stamp(&self) -> Stamp {
        let modified = |p: &PathBuf| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        (modified(&self.files.certificate), modified(&self.files.key))
    }

    /// The TLS settings to connect with now, and the certificate's facts; reads the files again
    /// if they changed since the last call.
    ///
    /// # Errors
    /// When the files cannot be used, or the certificate is outside its validity period at
    /// `now` (Unix seconds).
    pub fn tls(
        &mut self,
        roots: &Arc<rustls::RootCertStore>,
        now: i64,
    ) -> Result<(Arc<rustls::ClientConfig>, &Info), Unusable> {
        let stamp = self.stamp();
        let loaded = match self.loaded.take() {
            Some(loaded) if loaded.0 == stamp => loaded,
            _ => {
                let identity = certificate::load(&self.files.certificate, &self.files.key)?;
                let config = identity.client_config(Arc::clone(roots))?;
                (stamp, config, identity.info)
            }
        };
        let (_, config, info) = self.loaded.insert(loaded);
        let path = self.files.certificate.display().to_string();
        match info.validity_at(now) {
            Validity::Expired => Err(Unusable::Expired {
                path,
                at: info.not_after_text(),
            }),
            Validity::NotYetValid => Err(Unusable::NotYetValid {
                path,
                at: info.not_before_text(),
            }),
            Validity::Valid | Validity::ExpiresSoon { .. } => Ok((Arc::clone(config), info)),
        }
    }

    #[must_use]
    pub fn certificate(&self) -> &std::path::Path {
        &self.files.certificate
    }
}

/// The warning a certificate close to its end deserves at `now`, if any.
#[must_use]
pub fn expiry_warning(path: &std::path::Path, info: &Info, now: i64) -> Option<String> {
    match info.validity_at(now) {
        Validity::ExpiresSoon { days } => Some(format!(
            "its certificate {} expires at {} ({days} days left); renew it before then (leafgate reads a renewed certificate before the next connect)",
            path.display(),
            info.not_after_text()
        )),
        _ => None,
    }
}

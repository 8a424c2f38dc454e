//! How a device proves who it is to IoT Hub: a SAS token signed with its key, or its X.509
//! certificate in the TLS handshake (`iothub-protocol.md` 1.6, 2).
//!
//! A certificate's files are read again before a connect whenever they changed on disk, so a
//! certificate renewed in place is used at the next connect without a restart, and an expired
//! one is caught here with a clear line instead of as the hub's bare "not authorized".

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
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
    /// When the journal last warned of the coming expiry (Unix seconds; `i64::MIN`: never).
    warned_at: AtomicI64,
}

impl X509Source {
    #[must_use]
    pub fn new(files: X509Files) -> Self {
        Self {
            files,
            loaded: None,
            warned_at: AtomicI64::new(i64::MIN),
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
}

impl X509Source {
    /// The warning a certificate close to its end deserves at `now`, if any, and at most once
    /// per `every` for this device, whether it comes from a connect or from the daily look at
    /// a connection that stays up.
    pub fn expiry_warning(&self, info: &Info, now: i64, every: Duration) -> Option<String> {
        let Validity::ExpiresSoon { days } = info.validity_at(now) else {
            return None;
        };
        let every = i64::try_from(every.as_secs()).unwrap_or(i64::MAX);
        let last = self.warned_at.load(Ordering::Relaxed);
        if last != i64::MIN && now.saturating_sub(last) < every {
            return None;
        }
        self.warned_at.store(now, Ordering::Relaxed);
        Some(format!(
            "its certificate {} expires at {} ({days} days left); renew it before then (leafgate reads a renewed certificate before the next connect)",
            self.files.certificate.display(),
            info.not_after_text()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_expiry_warning_comes_at_most_once_per_period() {
        const DAY: i64 = 86_400;
        let source = X509Source::new(X509Files {
            certificate: PathBuf::from("/etc/leafgate/meter-1.pem"),
            key: PathBuf::from("/etc/leafgate/meter-1.key"),
            thumbprint: String::new(),
        });
        let info = Info {
            common_name: None,
            self_signed: true,
            not_before: 0,
            not_after: 100 * DAY,
            thumbprint: String::new(),
        };
        let every = Duration::from_secs(86_400);
        // Far from its end: nothing, and nothing remembered.
        assert_eq!(source.expiry_warning(&info, DAY, every), None);
        let first = source.expiry_warning(&info, 80 * DAY, every).unwrap();
        assert!(first.contains("meter-1.pem expires at") && first.contains("(20 days left)"));
        assert_eq!(source.expiry_warning(&info, 80 * DAY + 3600, every), None);
        assert!(source.expiry_warning(&info, 81 * DAY, every).is_some());
    }
}

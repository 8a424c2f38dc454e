//! Device keys, private keys and the proxy password must not be readable by every user on the
//! gateway. This only warns: a key file
//! left at the wrong mode should be fixed, but not stop the site.

use std::path::{Path, PathBuf};

use crate::config::error::Problem;
use crate::config::path::entry;
use crate::config::schema::FileConfig;

/// Files holding device keys (config files with inline keys, key files) should be readable by
/// root and the leafgate group only. Anything else is a warning: leafgate still runs.
pub(super) fn key_file_warnings(files: &[(PathBuf, FileConfig)]) -> Vec<Problem> {
    use std::os::unix::fs::PermissionsExt as _;
    let mut warnings = Vec::new();
    let mut check = |file: &Path, path: String, holder: &Path, what: &str| {
        if let Ok(meta) = std::fs::metadata(holder) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o007 != 0 {
                warnings.push(Problem {
                    file: file.to_path_buf(),
                    path,
                    message: format!(
                        "{} holds {what} and is accessible to every user (mode {mode:04o}); run chmod 0640 and chown root:leafgate",
                        holder.display()
                    ),
                });
            }
        }
    };
    for (file, f) in files {
        if f.device
            .iter()
            .any(|d| d.connection_string.is_some() || d.shared_access_key.is_some())
            || f.provisioning
                .as_ref()
                .is_some_and(|p| p.group_key.is_some())
        {
            check(file, String::new(), file, "device keys");
        }
        for (i, d) in f.device.iter().enumerate() {
            if let Some(key_file) = &d.shared_access_key_file {
                check(
                    file,
                    format!("{}.shared_access_key_file", entry("device", Some(&d.id), i)),
                    key_file,
                    "a device key",
                );
            }
            if let Some(key_file) = &d.private_key_file {
                check(
                    file,
                    format!("{}.private_key_file", entry("device", Some(&d.id), i)),
                    key_file,
                    "a device's private key",
                );
            }
        }
        if let Some(key_file) = f
            .provisioning
            .as_ref()
            .and_then(|p| p.group_key_file.as_ref())
        {
            check(
                file,
                "provisioning.group_key_file".to_owned(),
                key_file,
                "the enrollment group's key",
            );
        }
        if let Some(password) = f.hub.as_ref().and_then(|h| h.proxy_password_file.as_ref()) {
            check(
                file,
                "hub.proxy_password_file".to_owned(),
                password,
                "the proxy password",
            );
        }
    }
    warnings
}

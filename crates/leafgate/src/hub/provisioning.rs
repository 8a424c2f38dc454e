//! Where DPS put each device, kept across restarts: one small JSON file per device in the state
//! directory, written atomically, so a restart connects at once instead of registering all
//! devices again, and a registration of one device never rewrites the others'.
//!
//! A file is used only if it was written for the same id scope, endpoint and credentials (a
//! digest, not the key); a damaged or foreign file is ignored (the device registers again) and
//! replaced.

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::dps::Assignment;
use super::settings::Provisioning;

/// What a cache file holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct Entry {
    registration_id: String,
    /// Digest of the id scope, endpoint and credentials it was registered with.
    fingerprint: String,
    assignment: Assignment,
}

/// A digest of what a registration depends on: change any and the device registers again.
#[must_use]
pub fn fingerprint(settings: &Provisioning, credentials: &[u8]) -> String {
    let mut h = Sha256::new();
    for part in [
        settings.id_scope.as_bytes(),
        settings.endpoint.as_bytes(),
        credentials,
    ] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part);
    }
    h.finalize()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Registration ids are letters, digits and `-._:` (checked by the config), so they make safe
/// file names as they are.
fn path(dir: &Path, registration_id: &str) -> PathBuf {
    dir.join(format!("{registration_id}.json"))
}

/// The cached assignment of `registration_id`, if one was stored for `fingerprint`.
///
/// # Errors
/// A description when a file exists but cannot be used (the caller logs it and registers).
pub fn load(
    dir: &Path,
    registration_id: &str,
    fingerprint: &str,
) -> Result<Option<Assignment>, String> {
    let file = path(dir, registration_id);
    let bytes = match crate::regular_file::read_regular(&file, 64 * 1024) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
    };
    let entry: Entry = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is damaged ({e})", file.display()))?;
    if entry.registration_id != registration_id || entry.fingerprint != fingerprint {
        return Ok(None);
    }
    Ok(Some(entry.assignment))
}

/// Stores an assignment: written to a temporary file, synced, then renamed over the old one.
///
/// # Errors
/// When the directory cannot be created or the file cannot be written.
pub fn store(
    dir: &Path,
    registration_id: &str,
    fingerprint: &str,
    assignment: &Assignment,
) -> std::io::Result<()> {
    use std::io::Write as _;
    std::fs::create_dir_all(dir)?;
    let entry = Entry {
        registration_id: registration_id.to_owned(),
        fingerprint: fingerprint.to_owned(),
        assignment: assignment.clone(),
    };
    let text = serde_json::to_vec_pretty(&entry).map_err(std::io::Error::other)?;
    let file = path(dir, registration_id);
    let tmp = dir.join(format!(".{registration_id}.json.tmp"));
    {
        let mut out = std::fs::File::create(&tmp)?;
        out.write_all(&text)?;
        out.sync_all()?;
    }
    std::fs::rename(&tmp, &file)
}

/// Forgets a device's assignment (its hub refused it): the next connect registers again.
///
/// # Errors
/// When the file exists and cannot be removed.
pub fn forget(dir: &Path, registration_id: &str) -> std::io::Result<()> {
    match std::fs::remove_file(path(dir, registration_id)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(scope: &str) -> Provisioning {
        Provisioning {
            id_scope: scope.into(),
            endpoint: "global.azure-devices-provisioning.net".into(),
            port: 8883,
            max_registrations_per_s: 2,
            timeout: std::time::Duration::from_secs(60),
            cache: None,
        }
    }

    #[test]
    fn an_assignment_is_found_again_only_for_the_same_scope_and_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let a = Assignment {
            hub: "h1.azure-devices.net".into(),
            device_id: "pump-1".into(),
        };
        let fp = fingerprint(&settings("0ne1"), b"key");
        assert_eq!(load(dir.path(), "pump-1", &fp), Ok(None));
        store(dir.path(), "pump-1", &fp, &a).unwrap();
        assert_eq!(load(dir.path(), "pump-1", &fp), Ok(Some(a.clone())));
        let other_scope = fingerprint(&settings("0ne2"), b"key");
        let other_key = fingerprint(&settings("0ne1"), b"other");
        assert_ne!(fp, other_scope);
        assert_eq!(load(dir.path(), "pump-1", &other_scope), Ok(None));
        assert_eq!(load(dir.path(), "pump-1", &other_key), Ok(None));
        forget(dir.path(), "pump-1").unwrap();
        forget(dir.path(), "pump-1").unwrap();
        assert_eq!(load(dir.path(), "pump-1", &fp), Ok(None));
    }

    #[test]
    fn a_damaged_file_is_reported_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pump-1.json"), "{\"regis").unwrap();
        let err = load(dir.path(), "pump-1", "fp").unwrap_err();
        assert!(err.contains("is damaged"), "{err}");
    }
}

//! The rules that span files: `[hub]` and `[log]` appear in one file only, and every `[[bus]]`,
//! `[[device]]` and `[[profile]]` id is valid and defined once across the base file and its
//! drop-ins. Checked before any section's own keys, so later checks can look items up by id.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::Problems;
use crate::config::path::{check_id, entry};
use crate::config::schema::FileConfig;

/// A section that may appear in one file only.
pub(super) fn single<'a, T>(
    files: &'a [(PathBuf, FileConfig)],
    name: &str,
    get: impl Fn(&'a FileConfig) -> Option<&'a T>,
    p: &mut Problems,
) -> Option<(&'a PathBuf, &'a T)> {
    let mut found: Option<(&PathBuf, &T)> = None;
    for (file, f) in files {
        if let Some(section) = get(f) {
            match found {
                Some((first, _)) => p.add(
                    file,
                    name,
                    format!("[{name}] is already defined in {}", first.display()),
                ),
                None => found = Some((file, section)),
            }
        }
    }
    found
}

pub(super) type Indexed<'a, T> = Vec<(&'a PathBuf, String, &'a T)>;

/// Flattens `[[name]]` items across files, with their paths (`device "meter-a"`), refusing ids
/// defined twice.
pub(super) fn indexed<'a, T>(
    files: &'a [(PathBuf, FileConfig)],
    items: impl Fn(&'a FileConfig) -> &'a Vec<T>,
    id: impl Fn(&T) -> &String,
    name: &str,
    p: &mut Problems,
) -> Indexed<'a, T> {
    let mut seen: BTreeMap<&str, (&PathBuf, String)> = BTreeMap::new();
    let mut out = Vec::new();
    for (file, f) in files {
        for (i, item) in items(f).iter().enumerate() {
            let at = format!("{name}[{i}]");
            let item_id = id(item);
            if let Err(msg) = check_id(item_id) {
                p.add(file, format!("{at}.id"), msg);
                continue;
            }
            // A second entry with one id is named by its index: the id names the first.
            if let Some((first_file, first_path)) = seen.get(item_id.as_str()) {
                p.add(
                    file,
                    format!("{at}.id"),
                    format!(
                        "{name} {item_id:?} is already defined at {}: {first_path}",
                        first_file.display()
                    ),
                );
                continue;
            }
            seen.insert(item_id, (file, at));
            out.push((file, entry(name, Some(item_id), i), item));
        }
    }
    out
}

/// The port Prometheus registered for leafgate's exporter.
pub(super) const METRICS_DEFAULT: &str = "127.0.0.1:9464";

/// `[metrics]`: where to listen. Off the loopback interface it is a warning, not a problem: the
/// endpoint has no authentication, and an operator may mean it (a firewalled management LAN).
pub(super) fn resolve_metrics(
    file: &Path,
    m: &crate::config::schema::MetricsConfig,
    p: &mut Problems,
) -> Option<std::net::SocketAddr> {
    let listen = m.listen.as_deref().unwrap_or(METRICS_DEFAULT);
    match listen.trim().parse::<std::net::SocketAddr>() {
        Ok(addr) => {
            if !addr.ip().is_loopback() {
                p.warn(file, "metrics.listen", format!("{addr} is reachable from other machines, and the endpoint has no authentication: keep it on a management network or behind a firewall"));
            }
            Some(addr)
        }
        Err(_) => {
            p.add(
                file,
                "metrics.listen",
                format!("{listen:?} is not an ip:port (e.g. {METRICS_DEFAULT:?})"),
            );
            None
        }
    }
}

/// The longest path a Unix socket address holds (`sun_path`, with its NUL).
const MAX_SOCKET_PATH: usize = 107;

/// `[control] socket`: an absolute path short enough for a socket address; `""` is off.
pub(super) fn resolve_control(file: &Path, socket: &str, p: &mut Problems) -> Option<PathBuf> {
    if socket.is_empty() {
        return None;
    }
    let path = PathBuf::from(socket);
    if !path.is_absolute() {
        p.add(
            file,
            "control.socket",
            format!("{socket:?} is not an absolute path (\"\" turns the socket off)"),
        );
        return None;
    }
    if socket.len() > MAX_SOCKET_PATH {
        p.add(
            file,
            "control.socket",
            format!(
                "{} bytes is longer than a socket path may be ({MAX_SOCKET_PATH})",
                socket.len()
            ),
        );
        return None;
    }
    Some(path)
}

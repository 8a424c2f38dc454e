//! systemd integration: journald logging with structured fields when running under systemd,
//! stderr otherwise, and service notifications (`READY=1`, `STATUS=`, `RELOADING=1`,
//! `STOPPING=1`, `WATCHDOG=1`). What triggers them lives in `gateway::service`.

use std::io::Write as _;
use std::time::SystemTime;

use log::kv::{Key, Value, VisitSource};

/// Installs the logger: journald when stderr is connected to the journal (as under a systemd
/// unit), stderr otherwise. Record key-values become journal fields (`device_id` → `DEVICE_ID`).
/// Warnings and errors are also kept for `leafgate status` ([`crate::recent`]).
///
/// # Errors
/// When a logger is already installed or the journal socket cannot be opened.
pub fn init_logging(level: log::LevelFilter) -> Result<(), String> {
    let logger: Box<dyn log::Log> = if systemd_journal_logger::connected_to_journal() {
        Box::new(
            systemd_journal_logger::JournalLog::new()
                .map_err(|e| format!("cannot open the journal: {e}"))?,
        )
    } else {
        Box::new(StderrLog)
    };
    log::set_boxed_logger(Box::new(Recent(logger))).map_err(|e| e.to_string())?;
    log::set_max_level(level);
    Ok(())
}

/// Changes the level after the config is loaded (the logger is installed before, so config
/// errors are logged too).
pub fn set_level(level: log::LevelFilter) {
    log::set_max_level(level);
}

/// Writes to the journal or stderr, and keeps warnings and errors for `leafgate status`
/// ([`crate::recent`]).
struct Recent(Box<dyn log::Log>);

impl log::Log for Recent {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        crate::recent::note(record);
        self.0.log(record);
    }

    fn flush(&self) {
        self.0.flush();
    }
}

struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = format!("{} {:<5} {}", utc_now(), record.level(), record.args());
        let mut fields = Fields(String::new());
        let _ = record.key_values().visit(&mut fields);
        line.push_str(&fields.0);
        line.push('\n');
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

struct Fields(String);

impl<'kvs> VisitSource<'kvs> for Fields {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), log::kv::Error> {
        self.0.push_str(&format!(" {key}={value}"));
        Ok(())
    }
}

fn utc_now() -> String {
    utc(SystemTime::now())
}

pub use crate::utc::civil_from_days;
use crate::utc::utc;

// Notifications are best effort: outside systemd (no NOTIFY_SOCKET) they do nothing, and a
// notification that cannot be sent must never stop the gateway.

/// `READY=1` with a status line: startup (or a reload) is complete.
pub fn notify_ready(status: &str) {
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
}

/// `STATUS=...`: shown by `systemctl status`.
pub fn notify_status(status: &str) {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Status(status)]);
}

/// `RELOADING=1` with `MONOTONIC_USEC=` (systemd 253+ requires the timestamp with it); follow
/// with [`notify_ready`] when the reload is done.
pub fn notify_reloading(status: &str) {
    let mut states = vec![
        sd_notify::NotifyState::Reloading,
        sd_notify::NotifyState::Status(status),
    ];
    if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    let _ = sd_notify::notify(&states);
}

/// `STOPPING=1`: shutdown has begun.
pub fn notify_stopping(status: &str) {
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status(status),
    ]);
}

/// `WATCHDOG=1`: the main loop is alive.
pub fn notify_watchdog() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
}

/// How often to send `WATCHDOG=1`: half the unit's `WatchdogSec=` (from `WATCHDOG_USEC`, when
/// it is meant for this process), or `None` when no watchdog is set.
#[must_use]
pub fn watchdog_ping_interval() -> Option<std::time::Duration> {
    sd_notify::watchdog_enabled()
        .filter(|d| !d.is_zero())
        .map(|d| d / 2)
}

#[cfg(test)]
mod tests {
    #[test]
    fn civil_dates_match_known_days() {
        assert_eq!(super::civil_from_days(0), (1970, 1, 1));
        assert_eq!(super::civil_from_days(20_454), (2026, 1, 1));
        assert_eq!(super::civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn utc_timestamp_has_the_expected_shape() {
        let t = super::utc_now();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }
}

//! The last warnings and errors the daemon logged, kept in memory for `leafgate status`: an
//! operator in group leafgate may not read the journal, and one who can still wants the few
//! lines that matter next to the device list. The logger ([`crate::systemd`]) feeds it; it
//! holds at most [`KEPT`] lines of at most [`MAX_CHARS`] characters each.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::SystemTime;

/// Lines kept: enough for a burst of one failure across a few devices, small enough to read.
pub const KEPT: usize = 32;
/// A longer line is cut: the journal has it whole.
pub const MAX_CHARS: usize = 600;

/// One logged warning or error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub at: SystemTime,
    /// `error` or `warn`.
    pub level: log::Level,
    /// The line's `device_id` field, when it is about one device.
    pub device: Option<String>,
    pub message: String,
}

static LINES: Mutex<VecDeque<Line>> = Mutex::new(VecDeque::new());

/// Keeps `record` when it is a warning or an error.
pub fn note(record: &log::Record<'_>) {
    if record.level() > log::Level::Warn {
        return;
    }
    let mut message = record.args().to_string();
    if let Some((cut, _)) = message.char_indices().nth(MAX_CHARS) {
        message.truncate(cut);
        message.push('…');
    }
    let device = record
        .key_values()
        .get(log::kv::Key::from_str("device_id"))
        .map(|v| v.to_string());
    let line = Line {
        at: SystemTime::now(),
        level: record.level(),
        device,
        message,
    };
    let mut lines = LINES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if lines.len() == KEPT {
        lines.pop_front();
    }
    lines.push_back(line);
}

/// The kept lines, oldest first.
#[must_use]
pub fn lines() -> Vec<Line> {
    LINES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_the_last_warnings_and_errors_with_their_device_and_cut_long_lines() {
        let args = format_args!("not kept");
        super::note(
            &log::Record::builder()
                .level(log::Level::Info)
                .args(args)
                .build(),
        );
        let kvs = [("device_id", "meter-1")];
        for i in 0..super::KEPT + 5 {
            let text = format!("failure {i} {}", "x".repeat(if i == 0 { 0 } else { 700 }));
            super::note(
                &log::Record::builder()
                    .level(log::Level::Warn)
                    .args(format_args!("{text}"))
                    .key_values(&kvs)
                    .build(),
            );
        }
        let lines = super::lines();
        assert_eq!(lines.len(), super::KEPT);
        assert!(lines[0].message.starts_with("failure 5 "), "{:?}", lines[0]);
        assert!(lines.iter().all(|l| l.device.as_deref() == Some("meter-1")));
        assert!(
            lines
                .iter()
                .all(|l| l.message.chars().count() <= super::MAX_CHARS + 1)
        );
        assert!(!lines.iter().any(|l| l.message == "not kept"));
    }
}

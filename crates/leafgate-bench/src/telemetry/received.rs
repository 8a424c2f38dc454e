//! What the hub received, checked against what was polled.
//!
//! leafgate numbers each device's readings from 0 in a fresh store (`$.mid` = `{run}-{n}`), one
//! per poll, in poll order; the simulated units log every request they answer. So the readings a
//! device took up to a moment are its polls logged up to then, numbered 0..k, and a reading is
//! lost when its number never reached the hub. Counting against the units' logs (not against the
//! numbers that arrived) also catches a lost tail, which a gap check alone cannot see.
//!
//! Latency runs from the poll's start (`$.ctime`, the body's `ts`: UTC, whole milliseconds) to
//! the moment the emulator recorded the message, which is before it sends the PUBACK. Both are
//! this machine's wall clock; `$.ctime` is truncated to the millisecond, so each figure is up to
//! 1 ms (0.5 ms on average) longer than the truth.

use std::collections::HashSet;
use std::time::{SystemTime, UNIX_EPOCH};

use leafgate_emulator::D2cMessage;
use serde::Serialize;

/// The reading number of a message id `{run}-{n}`.
pub fn seq_of(mid: &str) -> Option<u64> {
    mid.rsplit_once('-')?.1.parse().ok()
}

/// Days from 1970-01-01 to a Gregorian date (Howard Hinnant's `days_from_civil`), the inverse of
/// [`leafgate::utc::civil_from_days`], for dates from 1970 on.
fn days_from_civil(year: u64, month: u64, day: u64) -> Option<u64> {
    let year = if month <= 2 {
        year.checked_sub(1)?
    } else {
        year
    };
    let era = year / 400;
    let yoe = year - era * 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day.checked_sub(1)?;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe).checked_sub(719_468)
}

/// Milliseconds since the epoch of a `YYYY-MM-DDTHH:MM:SS.mmmZ` timestamp, as leafgate writes
/// `$.ctime` ([`leafgate::utc::utc`]); `None` for anything else.
pub fn utc_ms(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() != 24 || b[23] != b'Z' {
        return None;
    }
    let num = |from: usize, to: usize| -> Option<u64> { text.get(from..to)?.parse().ok() };
    let days = days_from_civil(num(0, 4)?, num(5, 7)?, num(8, 10)?)?;
    let secs = days * 86_400 + num(11, 13)? * 3600 + num(14, 16)? * 60 + num(17, 19)?;
    Some(secs * 1000 + num(20, 23)?)
}

/// Milliseconds since the epoch, with fractions.
pub fn epoch_ms(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Loss and duplicates over a set of devices.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tally {
    pub devices: usize,
    /// Readings taken (polls the units answered) up to the cut.
    pub polled: u64,
    /// Of those, how many reached the hub at least once.
    pub received: u64,
    /// `polled − received`.
    pub lost: u64,
    /// Devices with at least one lost reading.
    pub devices_with_loss: usize,
    /// Up to five lost readings, `device #n`, to look for in leafgate's log.
    pub lost_examples: Vec<String>,
    /// Messages whose `$.mid` had arrived before (resent after a lost PUBACK).
    pub duplicates: u64,
    /// Duplicates that came on the same connection as the first copy (never expected).
    pub duplicates_same_connection: u64,
    /// First copies that arrived after a higher-numbered reading of the same device.
    pub out_of_order: u64,
    /// Messages whose `$.mid` is not `{run}-{n}`.
    pub unparsed: u64,
}

/// One device's check: `messages` in arrival order, `polled` its readings up to the cut.
pub fn check(tally: &mut Tally, device: &str, messages: &[D2cMessage], polled: u64) {
    let mut seen: HashSet<u64> = HashSet::with_capacity(messages.len());
    let mut first_connection = std::collections::HashMap::new();
    let mut highest: Option<u64> = None;
    for m in messages {
        let Some(seq) = m.message_id().and_then(seq_of) else {
            tally.unparsed += 1;
            continue;
        };
        if seen.insert(seq) {
            first_connection.insert(seq, m.connection);
            if highest.is_some_and(|h| seq < h) {
                tally.out_of_order += 1;
            }
            highest = highest.max(Some(seq));
        } else {
            tally.duplicates += 1;
            if first_connection.get(&seq) == Some(&m.connection) {
                tally.duplicates_same_connection += 1;
            }
        }
    }
    let received = (0..polled).filter(|s| seen.contains(s)).count() as u64;
    tally.devices += 1;
    tally.polled += polled;
    tally.received += received;
    let lost = polled - received;
    tally.lost += lost;
    if lost > 0 {
        tally.devices_with_loss += 1;
        for s in (0..polled).filter(|s| !seen.contains(s)) {
            if tally.lost_examples.len() >= 5 {
                break;
            }
            tally.lost_examples.push(format!("{device} #{s}"));
        }
    }
}

/// Poll → hub latencies (µs) of the first copies of `messages` whose poll started within
/// `[from_ms, to_ms)` (epoch ms), appended to `out`; returns how many readings that was.
pub fn latencies(messages: &[D2cMessage], from_ms: u64, to_ms: u64, out: &mut Vec<f64>) -> u64 {
    let mut seen = HashSet::new();
    let mut count = 0;
    for m in messages {
        let (Some(mid), Some(taken)) = (m.message_id(), m.system("$.ctime").and_then(utc_ms))
        else {
            continue;
        };
        if !(from_ms..to_ms).contains(&taken) || !seen.insert(mid) {
            continue;
        }
        count += 1;
        out.push((epoch_ms(m.received_utc) - taken as f64) * 1000.0);
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn ctime_parses_back_to_the_millisecond_leafgate_wrote() {
        for ms in [0u64, 951_782_400_000, 1_765_000_000_123, 4_102_444_799_999] {
            let t = UNIX_EPOCH + Duration::from_millis(ms);
            assert_eq!(utc_ms(&leafgate::utc::utc(t)), Some(ms), "{ms}");
        }
        assert_eq!(utc_ms("2025-12-06T05:46:40.123"), None);
        assert_eq!(utc_ms("2025-12-06T05:46:40.12xZ"), None);
        assert_eq!(seq_of("k3x9-42"), Some(42));
        assert_eq!(seq_of("nodash"), None);
    }

    fn message(mid: &str, connection: u64) -> D2cMessage {
        D2cMessage {
            seq: 0,
            received_at: tokio::time::Instant::now(),
            received_utc: SystemTime::now(),
            connection,
            qos: 1,
            system_properties: vec![("$.mid".to_owned(), mid.to_owned())],
            properties: Vec::new(),
            body: bytes::Bytes::new(),
            duplicate: false,
        }
    }

    #[test]
    fn lost_readings_are_counted_against_the_polls_including_a_lost_tail() {
        let mut t = Tally::default();
        // 0..5 polled; 2 never came, 3 came twice (once on a new connection), 4 came before 3.
        let ms: Vec<D2cMessage> = [("r-0", 1), ("r-1", 1), ("r-4", 1), ("r-3", 1), ("r-3", 2)]
            .into_iter()
            .map(|(m, c)| message(m, c))
            .collect();
        check(&mut t, "d", &ms, 5);
        assert_eq!((t.polled, t.received, t.lost), (5, 4, 1));
        assert_eq!(t.lost_examples, ["d #2"]);
        assert_eq!((t.duplicates, t.duplicates_same_connection), (1, 0));
        assert_eq!(t.out_of_order, 1);
        // A tail that never arrived is lost too; readings beyond the cut do not count.
        let mut t = Tally::default();
        check(&mut t, "e", &[message("r-0", 1), message("r-9", 1)], 3);
        assert_eq!((t.received, t.lost, t.devices_with_loss), (1, 2, 1));
    }
}

//! Device-to-cloud messages as the hub received them (`iothub-protocol.md` 6.1), kept per device
//! so a test or the demo can read back exactly what a device sent: properties decoded from the
//! topic's bag, system (`$.`) and application apart, the body, and whether the message id was
//! already seen.
//!
//! A device's log is bounded: past its capacity the oldest message is forgotten and counted, so
//! a demo or CLI emulator left running keeps flat memory. Duplicates are found among the
//! messages still kept, which is also what bounds the set of message ids.
//!
//! Plain data and a mutex; the registry owns one log per device and takes its lock only to
//! append or copy, never across an `.await`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::SystemTime;

use bytes::Bytes;
use tokio::time::Instant;

use crate::lock::lock;

/// Default of [`EmulatorConfig::telemetry_per_device`](crate::EmulatorConfig::telemetry_per_device).
pub const DEFAULT_TELEMETRY_PER_DEVICE: usize = 10_000;

/// The message-id system property, by which the back end (and this log) tells a retransmit from
/// a new message.
const MESSAGE_ID: &str = "$.mid";

/// One device-to-cloud message as the emulator received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct D2cMessage {
    /// Position in the device's log, from 0, over the emulator's life: it keeps counting when
    /// old messages are dropped, so `since` in the read endpoint never skips or repeats one.
    pub seq: u64,
    pub received_at: Instant,
    /// The same moment on the wall clock, for the HTTP read endpoint.
    pub received_utc: SystemTime,
    /// The connection that carried it ([`DeviceStats::connection`](crate::DeviceStats)), to tell
    /// a retransmit after a reconnect from the original.
    pub connection: u64,
    /// 0 or 1 (QoS 2 closes the connection before anything is recorded).
    pub qos: u8,
    /// The `$.`-prefixed properties (`$.mid`, `$.ct`, `$.ce`, `$.ctime`, ...), decoded, in topic
    /// order, keys as sent (with `$.`).
    pub system_properties: Vec<(String, String)>,
    /// Every other property of the bag, decoded, in topic order.
    pub properties: Vec<(String, String)>,
    pub body: Bytes,
    /// Its `$.mid` equals that of an earlier message of this device still in the log.
    pub duplicate: bool,
}

impl D2cMessage {
    /// The system property `key` (with its `$.`); when the bag repeats a key, the last wins.
    #[must_use]
    pub fn system(&self, key: &str) -> Option<&str> {
        last(&self.system_properties, key)
    }

    /// The application property `key`; when the bag repeats a key, the last wins.
    #[must_use]
    pub fn property(&self, key: &str) -> Option<&str> {
        last(&self.properties, key)
    }

    /// `$.mid`.
    #[must_use]
    pub fn message_id(&self) -> Option<&str> {
        self.system(MESSAGE_ID)
    }
}

fn last<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A message as the connection task hands it over, before the log numbers it.
#[derive(Debug)]
pub(crate) struct Received {
    pub(crate) connection: u64,
    pub(crate) qos: u8,
    /// The decoded bag, system and application properties mixed, in topic order.
    pub(crate) bag: Vec<(String, String)>,
    pub(crate) body: Bytes,
}

/// What appending did, for the device's stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Appended {
    pub(crate) seq: u64,
    pub(crate) duplicate: bool,
    /// Messages forgotten to make room (0 or 1; more only if the capacity shrank).
    pub(crate) dropped: u64,
}

/// A device's messages under one lock.
#[derive(Debug, Default)]
pub(crate) struct MessageLog {
    state: Mutex<Log>,
}

impl MessageLog {
    /// The log, locked: the registry appends and updates the device's stats under this one
    /// lock, so a stats count never runs ahead of the messages a reader finds.
    pub(crate) fn lock(&self) -> MutexGuard<'_, Log> {
        lock(&self.state)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Log {
    /// `seq` of the next message.
    next: u64,
    dropped: u64,
    messages: VecDeque<D2cMessage>,
    /// How many kept messages carry each `$.mid` (never 0: an id leaves with its last message).
    mids: HashMap<String, usize>,
}

impl Log {
    /// Numbers `received`, marks it a duplicate if its `$.mid` is among the kept messages, and
    /// keeps it, forgetting the oldest beyond `capacity`.
    pub(crate) fn append(&mut self, received: Received, capacity: usize) -> Appended {
        let (system_properties, properties) = received
            .bag
            .into_iter()
            .partition(|(key, _)| key.starts_with("$."));
        let now = Instant::now();
        let mut message = D2cMessage {
            seq: self.next,
            received_at: now,
            received_utc: SystemTime::now(),
            connection: received.connection,
            qos: received.qos,
            system_properties,
            properties,
            body: received.body,
            duplicate: false,
        };
        self.next += 1;
        if let Some(mid) = message.message_id().map(str::to_owned) {
            message.duplicate = self.mids.contains_key(&mid);
            *self.mids.entry(mid).or_default() += 1;
        }
        let appended = Appended {
            seq: message.seq,
            duplicate: message.duplicate,
            dropped: 0,
        };
        self.messages.push_back(message);
        let mut dropped = 0;
        while self.messages.len() > capacity {
            let Some(old) = self.messages.pop_front() else {
                break;
            };
            if let Some(mid) = old.message_id()
                && let Some(n) = self.mids.get_mut(mid)
            {
                *n -= 1;
                if *n == 0 {
                    self.mids.remove(mid);
                }
            }
            dropped += 1;
        }
        self.dropped += dropped;
        Appended {
            dropped,
            ..appended
        }
    }

    /// Copies of the kept messages numbered `since` or later, at most `limit` of them.
    pub(crate) fn since(&self, since: u64, limit: usize) -> Vec<D2cMessage> {
        let first = self.next - self.messages.len() as u64;
        let skip = usize::try_from(since.saturating_sub(first)).unwrap_or(usize::MAX);
        self.messages
            .iter()
            .skip(skip)
            .take(limit)
            .cloned()
            .collect()
    }

    /// `seq` of the next message to arrive.
    pub(crate) fn next(&self) -> u64 {
        self.next
    }

    /// Messages forgotten for lack of room, over the emulator's life.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received(bag: &[(&str, &str)], body: &str) -> Received {
        Received {
            connection: 7,
            qos: 1,
            bag: bag
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            body: Bytes::copy_from_slice(body.as_bytes()),
        }
    }

    #[test]
    fn splits_system_from_application_properties_in_order() {
        let mut log = Log::default();
        log.append(
            received(
                &[
                    ("$.mid", "m-1"),
                    ("unit", "°C"),
                    ("$.ct", "application/json"),
                    ("$x", "not system"),
                    ("unit", "K"),
                ],
                "{}",
            ),
            10,
        );
        let message = &log.since(0, 10)[0];
        assert_eq!(
            message.system_properties,
            [
                ("$.mid".to_owned(), "m-1".to_owned()),
                ("$.ct".to_owned(), "application/json".to_owned())
            ]
        );
        assert_eq!(message.properties.len(), 3);
        assert_eq!(message.property("unit"), Some("K"), "the last repeat wins");
        assert_eq!(message.property("$x"), Some("not system"));
        assert_eq!(message.message_id(), Some("m-1"));
        assert_eq!((message.seq, message.connection, message.qos), (0, 7, 1));
    }

    #[test]
    fn a_repeated_message_id_is_a_duplicate_while_the_first_is_kept() {
        let mut log = Log::default();
        let first = log.append(received(&[("$.mid", "a")], "1"), 2);
        let again = log.append(received(&[("$.mid", "a")], "1"), 2);
        let other = log.append(received(&[("$.mid", "b")], "2"), 2);
        let none = log.append(received(&[], "3"), 2);
        assert_eq!(
            [
                first.duplicate,
                again.duplicate,
                other.duplicate,
                none.duplicate
            ],
            [false, true, false, false]
        );
        // Both "a" messages are gone now, so "a" is new again.
        let later = log.append(received(&[("$.mid", "a")], "1"), 2);
        assert!(!later.duplicate);
        assert!(log.append(received(&[("$.mid", "a")], "1"), 2).duplicate);
    }

    #[test]
    fn keeps_at_most_capacity_and_counts_what_it_forgets() {
        let mut log = Log::default();
        for n in 0..5 {
            let appended = log.append(received(&[], &n.to_string()), 3);
            assert_eq!(appended.seq, n);
            assert_eq!(appended.dropped, u64::from(n >= 3));
        }
        assert_eq!((log.next(), log.dropped()), (5, 2));
        let seqs = |v: Vec<D2cMessage>| v.iter().map(|m| m.seq).collect::<Vec<_>>();
        assert_eq!(seqs(log.since(0, 10)), [2, 3, 4]);
        assert_eq!(seqs(log.since(3, 10)), [3, 4]);
        assert_eq!(seqs(log.since(3, 1)), [3]);
        assert!(log.since(5, 10).is_empty());
        assert!(log.since(u64::MAX, 10).is_empty());
        // Capacity 0 keeps nothing but still numbers and counts.
        let mut empty = Log::default();
        empty.append(received(&[("$.mid", "a")], ""), 0);
        assert!(!empty.append(received(&[("$.mid", "a")], ""), 0).duplicate);
        assert_eq!((empty.next(), empty.dropped()), (2, 2));
    }
}

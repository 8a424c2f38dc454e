//! Cloud-to-device messages as the hub keeps them (`iothub-protocol.md` 6.2): a queue per
//! registered device, each message locked while delivered, completed by the device's PUBACK,
//! unlocked again after the lock timeout, dead-lettered when it expires or has been delivered
//! too often. Pure data and rules, driven by the registry (which owns one queue per device) and
//! the connection task (which delivers and reads PUBACKs); time is passed in, never read here,
//! except for stamping.
//!
//! Choices where the hub's behaviour is undocumented:
//! - Every message that is due is delivered at once, in queue order (the hub lets a device hold
//!   several messages locked, "so other threads can receive"); the device may complete them in
//!   any order.
//! - A lock outlives its connection: a message delivered just before a disconnect is delivered
//!   again only when its lock times out, on whatever connection is current then.
//! - A TTL above 48 h is cut to 48 h; a TTL of zero expires the message at once.
//! - The 50-message limit counts messages queued or locked, not completed or dead-lettered ones.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use leafgate::hub::d2c;

/// Messages a device's queue holds (queued or locked).
pub const MAX_C2D_QUEUE: usize = 50;
/// Largest message body.
pub const MAX_C2D_BODY: usize = 64 * 1024;
/// Time to live when the sender gives none.
pub const DEFAULT_C2D_TTL: Duration = Duration::from_secs(3600);
/// Longest time to live.
pub const MAX_C2D_TTL: Duration = Duration::from_secs(48 * 3600);
/// Default of [`EmulatorConfig::c2d_lock_timeout`](crate::EmulatorConfig::c2d_lock_timeout).
pub const DEFAULT_C2D_LOCK_TIMEOUT: Duration = Duration::from_secs(60);
/// Default of [`EmulatorConfig::c2d_max_delivery_count`](crate::EmulatorConfig::c2d_max_delivery_count).
pub const DEFAULT_C2D_MAX_DELIVERY_COUNT: u32 = 10;
/// Completed and dead-lettered messages kept per device for [`crate::Emulator::c2d`]; older
/// ones are forgotten.
pub const MAX_C2D_FINISHED: usize = 1000;

/// A message for [`Emulator::send_c2d`](crate::Emulator::send_c2d).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct C2dSend {
    pub body: Vec<u8>,
    /// Application properties, in order.
    pub properties: Vec<(String, String)>,
    /// `$.mid`; a UUID-like id is generated when `None`.
    pub message_id: Option<String>,
    /// `$.cid`, when set.
    pub correlation_id: Option<String>,
    /// Time to live: default 1 h, at most 48 h.
    pub ttl: Option<Duration>,
}

/// Where a message is in its life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum C2dState {
    /// Waiting for delivery (the hub's *Enqueued*).
    Queued,
    /// Delivered, waiting for the device's PUBACK until the lock times out (*Invisible*).
    Locked,
    /// PUBACKed by the device.
    Completed,
    /// Expired, or delivered the maximum number of times without a PUBACK.
    DeadLettered,
}

/// A message as [`Emulator::c2d`](crate::Emulator::c2d) reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct C2dRecord {
    pub message_id: String,
    pub state: C2dState,
    /// How many times it was delivered.
    pub delivery_count: u32,
    pub completed_at: Option<Instant>,
}

/// Why a message was not queued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum C2dError {
    /// 404 / 404001 `DeviceNotFound`.
    #[error("device is not registered")]
    DeviceNotFound,
    /// 403 / 403004 `DeviceMaximumQueueDepthExceeded`.
    #[error("the device's queue already holds {MAX_C2D_QUEUE} messages")]
    QueueFull,
    /// 413 / 413001 `MessageTooLarge` (the emulator's choice of code; the hub documents only
    /// the 64 KB limit).
    #[error("a message body of {0} bytes is larger than 64 KB")]
    TooLarge(usize),
    /// 400 / 400004 `ArgumentInvalid`.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl C2dError {
    #[must_use]
    pub fn http_status(&self) -> u16 {
        match self {
            C2dError::DeviceNotFound => 404,
            C2dError::QueueFull => 403,
            C2dError::TooLarge(_) => 413,
            C2dError::InvalidArgument(_) => 400,
        }
    }

    #[must_use]
    pub fn error_code(&self) -> u32 {
        match self {
            C2dError::DeviceNotFound => 404_001,
            C2dError::QueueFull => 403_004,
            C2dError::TooLarge(_) => 413_001,
            C2dError::InvalidArgument(_) => 400_004,
        }
    }

    #[must_use]
    pub fn error_name(&self) -> &'static str {
        match self {
            C2dError::DeviceNotFound => "DeviceNotFound",
            C2dError::QueueFull => "DeviceMaximumQueueDepthExceeded",
            C2dError::TooLarge(_) => "MessageTooLarge",
            C2dError::InvalidArgument(_) => "ArgumentInvalid",
        }
    }
}

/// Who holds a message's lock: a connection and the packet id it was delivered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lock {
    connection: u64,
    pkid: u16,
    until: Instant,
}

#[derive(Debug)]
struct Message {
    record: C2dRecord,
    lock: Option<Lock>,
    expires: Instant,
    /// The whole PUBLISH topic (the bag does not change between deliveries).
    topic: String,
    /// Dropped once the message is finished.
    body: Bytes,
}

/// A message to write now: topic and body, to go out at QoS 1 with `pkid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Delivery {
    pub(crate) pkid: u16,
    pub(crate) topic: String,
    pub(crate) body: Bytes,
}

/// One device's messages, oldest first: the live ones (queued, locked) and the newest
/// finished ones.
#[derive(Debug, Default)]
pub(crate) struct C2dQueue {
    messages: Vec<Message>,
}

impl C2dQueue {
    fn live(&self) -> usize {
        self.messages
            .iter()
            .filter(|m| matches!(m.record.state, C2dState::Queued | C2dState::Locked))
            .count()
    }

    /// Queues a message for `device`; returns its message id.
    ///
    /// # Errors
    /// [`C2dError::QueueFull`], [`C2dError::TooLarge`], [`C2dError::InvalidArgument`] for an
    /// empty message id.
    pub(crate) fn push(
        &mut self,
        device: &str,
        message: C2dSend,
        max_delivery_count: u32,
        now: Instant,
    ) -> Result<String, C2dError> {
        self.sweep(now, max_delivery_count);
        if message.body.len() > MAX_C2D_BODY {
            return Err(C2dError::TooLarge(message.body.len()));
        }
        if self.live() >= MAX_C2D_QUEUE {
            return Err(C2dError::QueueFull);
        }
        let message_id = match message.message_id {
            Some(id) if id.is_empty() => {
                return Err(C2dError::InvalidArgument(
                    "the message id is empty".to_owned(),
                ));
            }
            Some(id) => id,
            None => generated_id(),
        };
        let ttl = message.ttl.unwrap_or(DEFAULT_C2D_TTL).min(MAX_C2D_TTL);
        let topic = topic(
            device,
            &message_id,
            message.correlation_id.as_deref(),
            &message.properties,
        );
        self.messages.push(Message {
            record: C2dRecord {
                message_id: message_id.clone(),
                state: C2dState::Queued,
                delivery_count: 0,
                completed_at: None,
            },
            lock: None,
            expires: now + ttl,
            topic,
            body: Bytes::from(message.body),
        });
        Ok(message_id)
    }

    /// Applies the clock: expired messages and locks that timed out on their last allowed
    /// delivery are dead-lettered, other timed-out locks are released. Returns whether anything
    /// changed.
    pub(crate) fn sweep(&mut self, now: Instant, max_delivery_count: u32) -> bool {
        let mut changed = false;
        for message in &mut self.messages {
            let live = matches!(message.record.state, C2dState::Queued | C2dState::Locked);
            if !live {
                continue;
            }
            let lock_over = message.lock.is_some_and(|lock| lock.until <= now);
            if message.expires <= now
                || (lock_over && message.record.delivery_count >= max_delivery_count)
            {
                message.finish(C2dState::DeadLettered, None);
                changed = true;
            } else if lock_over {
                message.lock = None;
                message.record.state = C2dState::Queued;
                changed = true;
            }
        }
        if changed {
            self.prune();
        }
        changed
    }

    /// Forgets the oldest finished messages beyond [`MAX_C2D_FINISHED`].
    fn prune(&mut self) {
        let finished = self.messages.len() - self.live();
        let mut excess = finished.saturating_sub(MAX_C2D_FINISHED);
        if excess > 0 {
            self.messages.retain(|m| {
                let drop = excess > 0
                    && matches!(m.record.state, C2dState::Completed | C2dState::DeadLettered);
                if drop {
                    excess -= 1;
                }
                !drop
            });
        }
    }

    /// Locks every queued message for delivery on `connection`, in queue order, until
    /// `now + lock_timeout`, each with a packet id from the connection's counter `next_pkid`
    /// (1–65535, skipping ids of messages the connection still holds locked).
    pub(crate) fn deliver(
        &mut self,
        connection: u64,
        now: Instant,
        lock_timeout: Duration,
        next_pkid: &mut u16,
    ) -> Vec<Delivery> {
        let queued: Vec<usize> = (0..self.messages.len())
            .filter(|&i| self.messages[i].record.state == C2dState::Queued)
            .collect();
        let mut out = Vec::with_capacity(queued.len());
        for i in queued {
            let Some(pkid) = self.free_pkid(connection, next_pkid) else {
                break;
            };
            let message = &mut self.messages[i];
            message.record.state = C2dState::Locked;
            message.record.delivery_count += 1;
            message.lock = Some(Lock {
                connection,
                pkid,
                until: now + lock_timeout,
            });
            out.push(Delivery {
                pkid,
                topic: message.topic.clone(),
                body: message.body.clone(),
            });
        }
        out
    }

    /// The next packet id from `next` that `connection` does not hold, advancing `next`.
    fn free_pkid(&self, connection: u64, next: &mut u16) -> Option<u16> {
        for _ in 0..u16::MAX {
            let candidate = (*next).max(1);
            *next = candidate.checked_add(1).unwrap_or(1);
            if !self.holds(connection, candidate) {
                return Some(candidate);
            }
        }
        None
    }

    /// Completes the message `connection` delivered with `pkid`, if it still holds the lock.
    /// Returns whether one was completed.
    pub(crate) fn complete(&mut self, connection: u64, pkid: u16, now: Instant) -> bool {
        let held = self.messages.iter_mut().find(|m| {
            m.record.state == C2dState::Locked
                && m.lock
                    .is_some_and(|lock| lock.connection == connection && lock.pkid == pkid)
        });
        match held {
            Some(message) => {
                message.finish(C2dState::Completed, Some(now));
                self.prune();
                true
            }
            None => false,
        }
    }

    /// Whether `connection` holds a lock with `pkid` (so the id is in use).
    fn holds(&self, connection: u64, pkid: u16) -> bool {
        self.messages.iter().any(|m| {
            m.record.state == C2dState::Locked
                && m.lock
                    .is_some_and(|lock| lock.connection == connection && lock.pkid == pkid)
        })
    }

    /// The next moment [`C2dQueue::sweep`] would change something.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.messages
            .iter()
            .filter(|m| matches!(m.record.state, C2dState::Queued | C2dState::Locked))
            .map(|m| m.lock.map_or(m.expires, |lock| lock.until.min(m.expires)))
            .min()
    }

    /// Messages queued or locked, as the service API's `cloudToDeviceMessageCount`.
    pub(crate) fn live_count(&self) -> usize {
        self.live()
    }

    pub(crate) fn records(&self) -> Vec<C2dRecord> {
        self.messages.iter().map(|m| m.record.clone()).collect()
    }
}

impl Message {
    fn finish(&mut self, state: C2dState, at: Option<Instant>) {
        self.record.state = state;
        self.record.completed_at = at;
        self.lock = None;
        self.body = Bytes::new();
    }
}

/// A message id in the shape of a GUID, as the service SDKs generate them.
fn generated_id() -> String {
    let n = rand::random::<u128>();
    let hex = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// `devices/{id}/messages/devicebound/{bag}`: `$.mid`, `$.to`, `$.cid` when set, then the
/// application properties, every key and value percent-encoded (`$` as `%24`).
pub(crate) fn topic(
    device: &str,
    message_id: &str,
    correlation_id: Option<&str>,
    properties: &[(String, String)],
) -> String {
    let to = format!("/devices/{device}/messages/deviceBound");
    let mut pairs: Vec<(&str, &str)> = vec![("$.mid", message_id), ("$.to", &to)];
    if let Some(cid) = correlation_id {
        pairs.push(("$.cid", cid));
    }
    pairs.extend(properties.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let mut topic = format!("devices/{device}/messages/devicebound/");
    for (i, (key, value)) in pairs.into_iter().enumerate() {
        if i > 0 {
            topic.push('&');
        }
        d2c::encode(key, &mut topic);
        topic.push('=');
        d2c::encode(value, &mut topic);
    }
    topic
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(mid: &str) -> C2dSend {
        C2dSend {
            body: b"x".to_vec(),
            message_id: Some(mid.to_owned()),
            ..C2dSend::default()
        }
    }

    #[test]
    fn the_topic_carries_system_then_application_properties_percent_encoded() {
        let properties = vec![("a b".to_owned(), "1&2".to_owned())];
        assert_eq!(
            topic("d-1", "m/1", Some("c"), &properties),
            "devices/d-1/messages/devicebound/%24.mid=m%2F1&%24.to=%2Fdevices%2Fd-1%2Fmessages%2FdeviceBound&%24.cid=c&a%20b=1%262"
        );
        let id = generated_id();
        assert_eq!((id.len(), id.matches('-').count()), (36, 4));
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_is_locked_completed_or_redelivered_then_dead_lettered() {
        let lock = Duration::from_secs(60);
        let mut queue = C2dQueue::default();
        let now = Instant::now();
        queue.push("d", send("a"), 2, now).unwrap();
        queue.push("d", send("b"), 2, now).unwrap();
        let mut ids = 1;
        let delivered = queue.deliver(7, now, lock, &mut ids);
        assert_eq!(delivered.iter().map(|d| d.pkid).collect::<Vec<_>>(), [1, 2]);
        assert!(
            queue.deliver(7, now, lock, &mut ids).is_empty(),
            "all locked"
        );
        assert!(!queue.complete(8, 1, now), "another connection's packet id");
        assert!(queue.complete(7, 1, now));
        assert!(!queue.complete(7, 1, now), "already completed");
        assert_eq!(queue.next_deadline(), Some(now + lock));
        // "b" times out: queued again, delivered a second time, times out again: dead.
        let later = now + lock;
        assert!(queue.sweep(later, 2));
        assert_eq!(queue.records()[1].state, C2dState::Queued);
        let again = queue.deliver(7, later, lock, &mut ids);
        assert_eq!(again.len(), 1);
        assert!(queue.sweep(later + lock, 2));
        let records = queue.records();
        assert_eq!(records[0].state, C2dState::Completed);
        assert_eq!(records[0].completed_at, Some(now));
        assert_eq!(
            (records[1].state, records[1].delivery_count),
            (C2dState::DeadLettered, 2)
        );
        assert_eq!(queue.next_deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_queue_holds_fifty_live_messages_and_expired_ones_die() {
        let now = Instant::now();
        let mut queue = C2dQueue::default();
        for n in 0..MAX_C2D_QUEUE {
            queue.push("d", send(&n.to_string()), 10, now).unwrap();
        }
        assert_eq!(
            queue.push("d", send("x"), 10, now),
            Err(C2dError::QueueFull)
        );
        let big = C2dSend {
            body: vec![0; MAX_C2D_BODY + 1],
            ..C2dSend::default()
        };
        assert_eq!(
            queue.push("d", big, 10, now),
            Err(C2dError::TooLarge(MAX_C2D_BODY + 1))
        );
        // Every message expires after the default hour, which frees the queue.
        let later = now + DEFAULT_C2D_TTL;
        let short = C2dSend {
            ttl: Some(Duration::from_secs(1)),
            ..send("short")
        };
        assert!(queue.sweep(later, 10));
        queue.push("d", short, 10, later).unwrap();
        assert!(queue.sweep(later + Duration::from_secs(1), 10));
        assert!(
            queue
                .records()
                .iter()
                .all(|r| r.state == C2dState::DeadLettered)
        );
        let long = C2dSend {
            ttl: Some(Duration::from_secs(1_000_000)),
            ..send("long")
        };
        queue.push("d", long, 10, later).unwrap();
        assert_eq!(queue.next_deadline(), Some(later + MAX_C2D_TTL));
    }

    #[test]
    fn packet_ids_wrap_and_skip_those_still_held() {
        let now = Instant::now();
        let mut queue = C2dQueue::default();
        queue.push("d", send("a"), 10, now).unwrap();
        queue.push("d", send("b"), 10, now).unwrap();
        let mut next = u16::MAX;
        let lock = Duration::from_secs(60);
        let first = queue.deliver(1, now, lock, &mut next);
        assert_eq!(
            first.iter().map(|d| d.pkid).collect::<Vec<_>>(),
            [u16::MAX, 1]
        );
        queue.push("d", send("c"), 10, now).unwrap();
        let mut next = 1;
        // 1 is still held (by "b"), so "c" gets 2.
        assert_eq!(queue.deliver(1, now, lock, &mut next)[0].pkid, 2);
        assert!(queue.complete(1, 1, now));
    }

    #[test]
    fn finished_messages_are_bounded() {
        let now = Instant::now();
        let mut queue = C2dQueue::default();
        let mut next = 1;
        for n in 0..MAX_C2D_FINISHED + 5 {
            queue.push("d", send(&n.to_string()), 10, now).unwrap();
            let delivered = queue.deliver(1, now, Duration::from_secs(60), &mut next);
            assert!(queue.complete(1, delivered[0].pkid, now));
        }
        let records = queue.records();
        assert_eq!(records.len(), MAX_C2D_FINISHED);
        assert_eq!(records[0].message_id, "5");
    }
}

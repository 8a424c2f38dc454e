//! What a device's services hand its session to publish, and the queue that carries it there.
//!
//! Kept apart from both the session (which drains the queue onto the connection) and the
//! service seam (which fills it), so neither imports the other for it.

use std::collections::VecDeque;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

/// A message a service hands to its session for publishing.
///
/// The session writes these itself, in batches, on whatever connection is current (see
/// `session::write`).
pub enum Outbound {
    Reply(Reply),
    Message(Message),
    Ack(Ack),
}

/// The PUBACK owed to one incoming QoS 1 publish (a cloud-to-device message), which a service
/// sends only once it has handled the message, so that the hub delivers it again after a crash.
/// It belongs to the connection the publish came on: packet ids mean nothing on another, and
/// the hub delivers an unacknowledged message again after a reconnect anyway. On a later
/// connection the session drops it unsent. PUBACKs leave in the order the publishes arrived:
/// an `Ack` dropped without being handed back holds back every later one on its connection
/// (the hub delivers them all again after the next connect).
#[derive(Debug)]
pub struct Ack {
    pub(super) pkid: u16,
    pub(super) connection: u64,
}

/// A QoS 0 publish that is pointless after its deadline: a method reply (the hub has answered
/// 504 by then), or a request whose answer the service correlates itself by `$rid` (twin).
pub struct Reply {
    pub topic: String,
    pub body: Vec<u8>,
    pub deadline: Instant,
    pub label: Label,
}

/// A QoS 1 publish whose PUBACK its sender awaits: a telemetry message. It goes out on the
/// current connection once fewer than the device's window of messages await their PUBACK; the
/// session reports what became of it on `delivery`. A message the session drops unsent (the
/// device stopped) closes `delivery` without a word: for the sender, that too means "not
/// confirmed, send it again later".
pub struct Message {
    pub topic: String,
    /// Shared with the sender, who keeps it until the PUBACK (at least once).
    pub body: Bytes,
    pub delivery: oneshot::Sender<Delivery>,
}

/// What became of a [`Message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// The hub acknowledged it (PUBACK): it is the hub's now.
    Acked,
    /// The connection it went out on ended before its PUBACK: the hub may or may not have it.
    /// The sender sends it again (with the same message id, so the back end can drop the
    /// duplicate).
    Unconfirmed,
}

/// What a log line about an outbound message names. Name and rid come from the network and
/// must already be bounded ([`crate::logtext::clip`]).
pub struct Label {
    /// What the message answers, as log lines begin: "method".
    pub kind: &'static str,
    pub name: String,
    pub rid: String,
    pub status: u16,
}

impl Label {
    /// `method NAME on DEVICE: reply STATUS WHAT`, at warn level, with structured fields.
    pub fn warn(&self, device_id: &str, what: std::fmt::Arguments<'_>) {
        let Self {
            kind,
            name,
            rid,
            status,
        } = self;
        log::warn!(device_id = device_id, method = &**name, rid = &**rid, status = *status;
            "{kind} {name} on {device_id}: reply {status} {what}");
    }
}

impl Outbound {
    /// What to name in a log line about this message, if the session logs it at all (a
    /// [`Message`]'s fate goes back to its sender instead).
    #[must_use]
    pub fn label(&self) -> Option<&Label> {
        match self {
            Outbound::Reply(reply) => Some(&reply.label),
            Outbound::Message(_) | Outbound::Ack(_) => None,
        }
    }
}

/// A service's lasting way to hand messages to its device's session (a telemetry sender's,
/// as opposed to a method task's one-off [`super::service::Context::spawn`]).
#[derive(Clone)]
pub struct Outlet {
    pub(super) tx: mpsc::Sender<Box<Outbound>>,
}

impl Outlet {
    /// Queues `message`; waits while the device's queue is full.
    ///
    /// # Errors
    /// The message back when the session has ended.
    pub async fn send(&self, message: Outbound) -> Result<(), Outbound> {
        self.tx
            .send(Box::new(message))
            .await
            .map_err(|mpsc::error::SendError(message)| *message)
    }
}

/// The session's side of the outbound queue and the service tasks it started. Lives as long as
/// the session, across reconnects: a reply whose connection dropped while the hardware was busy
/// goes out on the next one, within its deadline.
///
/// Messages are boxed in the queue: tokio allocates a bounded channel's first block of 32 slots
/// up front, and 32 inline replies cost every device 3.5 KiB of idle memory (heaptrack); 32
/// pointers cost 256 bytes.
pub struct Work {
    pub(super) tx: mpsc::Sender<Box<Outbound>>,
    pub(super) rx: mpsc::Receiver<Box<Outbound>>,
    /// Messages taken from `rx` (or answers made on the spot) and not yet written.
    pub(super) outbox: VecDeque<Box<Outbound>>,
    /// QoS 1 messages that found the window full, in order; they go before any newer one.
    pub(super) parked: VecDeque<Box<Outbound>>,
    pub(super) tasks: TaskTracker,
    /// Counts CONNACKs: which connection an [`Ack`] belongs to.
    pub(super) connection: u64,
    /// The QoS 1 publishes of the current connection not yet acknowledged, in the order they
    /// arrived, each with whether its service has handed its [`Ack`] back. PUBACKs go out in
    /// this order (MQTT 3.1.1 4.6; IoT Hub closes a connection that acknowledges out of order),
    /// so a quick message's PUBACK waits for a slow one delivered before it.
    pub(super) unacked: VecDeque<(u16, bool)>,
}

impl Work {
    /// Whether a write would send anything: the outbox holds something, or parked messages may
    /// go because the window has room again.
    pub(super) fn has_writable(&self, window_has_room: bool) -> bool {
        !self.outbox.is_empty() || (!self.parked.is_empty() && window_has_room)
    }

    /// Moves every message the tasks have handed over into the outbox.
    pub(super) fn collect(&mut self) {
        while let Ok(message) = self.rx.try_recv() {
            self.outbox.push_back(message);
        }
    }
}

//! What a device's services hand its session to publish, and the queue that carries it there.
//!
//! Kept apart from both the session (which drains the queue onto the connection) and the
//! service seam (which fills it), so neither imports the other for it.

use std::collections::VecDeque;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

/// A message a service hands to its session for publishing.
///
/// The session writes these itself, in batches, on whatever connection is current (see
/// `session::write`). QoS 1 messages whose PUBACK the sender awaits (telemetry) are to be a
/// variant of their own: they need a packet id from rumqttc's session state, which QoS 0 does
/// not.
pub enum Outbound {
    Reply(Reply),
}

/// A QoS 0 publish that is pointless after its deadline: a method reply (the hub has answered
/// 504 by then), or a request whose answer the service correlates itself by `$rid` (twin).
pub struct Reply {
    pub topic: String,
    pub body: Vec<u8>,
    pub deadline: Instant,
    pub label: Label,
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
    pub fn label(&self) -> &Label {
        match self {
            Outbound::Reply(reply) => &reply.label,
        }
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
    pub(super) tasks: TaskTracker,
}

impl Work {
    /// Moves every message the tasks have handed over into the outbox.
    pub(super) fn collect(&mut self) {
        while let Ok(message) = self.rx.try_recv() {
            self.outbox.push_back(message);
        }
    }
}

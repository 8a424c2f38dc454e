//! The registry's cloud-to-device operations: queueing a message for a device, delivering what
//! is due on a connection, completing on PUBACK, and reading the queue. Each runs under the
//! entry's state lock (the queue lives in [`EntryState`](super::EntryState)) and applies the
//! clock first (expiry, lock timeouts), then bumps the entry's `c2d_changed` counter if
//! anything changed, which wakes the device's connection task and waiting tests.

use tokio::sync::watch;
use tokio::time::Instant;

use super::{DeviceEntry, Registry};
use crate::c2d::{C2dError, C2dRecord, C2dSend, Delivery};
use crate::lock::lock;

/// What a connection should do about the queue now.
pub(crate) struct Due {
    /// Messages to publish now (already locked to the connection).
    pub(crate) deliveries: Vec<Delivery>,
    /// When the queue next changes by itself (a lock times out, a message expires).
    pub(crate) next: Option<Instant>,
}

impl DeviceEntry {
    fn bump_c2d(&self) {
        self.c2d_changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that wakes after every change of the queue.
    pub(crate) fn watch_c2d(&self) -> watch::Receiver<u64> {
        self.c2d_changed.subscribe()
    }
}

impl Registry {
    /// Queues `message` for registered device `id`; returns its message id.
    pub(crate) fn send_c2d(&self, id: &str, message: C2dSend) -> Result<String, C2dError> {
        let entry = self.existing(id).ok_or(C2dError::DeviceNotFound)?;
        let mut state = lock(&entry.state);
        if state.identity.is_none() {
            return Err(C2dError::DeviceNotFound);
        }
        let max = self.c2d_max_delivery_count;
        let queued = state.c2d.push(id, message, max, Instant::now());
        drop(state);
        // Also after a refusal: the sweep before it may have changed states.
        entry.bump_c2d();
        queued
    }

    /// `id`'s messages, oldest first (empty for a device that is not registered), the next
    /// moment they change by themselves, and a receiver that wakes on every other change.
    pub(crate) fn c2d_records(
        &self,
        id: &str,
    ) -> (Vec<C2dRecord>, Option<Instant>, watch::Receiver<u64>) {
        let entry = self.entry(id);
        let mut changes = entry.watch_c2d();
        changes.borrow_and_update();
        let mut state = lock(&entry.state);
        if state.identity.is_none() {
            return (Vec::new(), None, changes);
        }
        let changed = state.c2d.sweep(Instant::now(), self.c2d_max_delivery_count);
        let records = state.c2d.records();
        let next = state.c2d.next_deadline();
        drop(state);
        if changed {
            entry.bump_c2d();
            // This reader has seen the change it made.
            changes.borrow_and_update();
        }
        (records, next, changes)
    }

    /// Applies the clock to `entry`'s queue and, with `deliver`, locks every due message to
    /// `connection` (packet ids from `next_pkid`).
    pub(crate) fn c2d_due(
        &self,
        entry: &DeviceEntry,
        connection: u64,
        deliver: bool,
        next_pkid: &mut u16,
    ) -> Due {
        let now = Instant::now();
        let mut state = lock(&entry.state);
        if state.identity.is_none() {
            return Due {
                deliveries: Vec::new(),
                next: None,
            };
        }
        let swept = state.c2d.sweep(now, self.c2d_max_delivery_count);
        let deliveries = if deliver {
            state
                .c2d
                .deliver(connection, now, self.c2d_lock_timeout, next_pkid)
        } else {
            Vec::new()
        };
        let next = state.c2d.next_deadline();
        drop(state);
        if swept || !deliveries.is_empty() {
            entry.bump_c2d();
        }
        Due { deliveries, next }
    }

    /// Completes the message `connection` delivered with `pkid`; false if it holds none (a
    /// late PUBACK after the lock timed out, or a stray one).
    pub(crate) fn c2d_complete(&self, entry: &DeviceEntry, connection: u64, pkid: u16) -> bool {
        let mut state = lock(&entry.state);
        let completed = state.c2d.complete(connection, pkid, Instant::now());
        drop(state);
        if completed {
            entry.bump_c2d();
        }
        completed
    }
}

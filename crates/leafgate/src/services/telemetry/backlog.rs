//! A device's readings waiting to be sent, oldest first, until the hub acknowledged them.
//!
//! In memory and bounded: when full, the oldest reading goes, counted and logged. A durable
//! store takes this place once it lands; the sender's contract stays the same (read in order
//! from a cursor, remove on PUBACK).

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;

/// One reading, encoded once: the same topic (with its message id) and body go out on every
/// retransmit, so the back end can drop duplicates.
#[derive(Debug, Clone)]
pub struct Pending {
    pub seq: u64,
    pub topic: String,
    pub body: Bytes,
}

#[derive(Debug)]
pub struct Backlog {
    capacity: usize,
    state: Mutex<State>,
    /// Woken when a reading is added.
    added: Notify,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<Pending>,
    next_seq: u64,
    dropped: u64,
}

impl Backlog {
    #[must_use]
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            state: Mutex::new(State::default()),
            added: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves the queue consistent (every change is one
        // push or pop), so a poisoned lock is used as it is.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a reading built by `make` from its sequence number. Returns how many old readings
    /// were dropped to make room (0 or 1).
    pub fn push(&self, make: impl FnOnce(u64) -> (String, Bytes)) -> u64 {
        let dropped = {
            let mut state = self.state();
            let seq = state.next_seq;
            state.next_seq += 1;
            let (topic, body) = make(seq);
            let mut dropped = 0;
            while state.queue.len() >= self.capacity {
                state.queue.pop_front();
                state.dropped += 1;
                dropped += 1;
            }
            state.queue.push_back(Pending { seq, topic, body });
            dropped
        };
        self.added.notify_one();
        dropped
    }

    /// The oldest reading after `cursor` (all of them with `None`).
    #[must_use]
    pub fn next_after(&self, cursor: Option<u64>) -> Option<Pending> {
        let state = self.state();
        state
            .queue
            .iter()
            .find(|p| cursor.is_none_or(|c| p.seq > c))
            .cloned()
    }

    /// The hub has `seq`: it leaves the backlog.
    pub fn remove(&self, seq: u64) {
        let mut state = self.state();
        if let Some(i) = state.queue.iter().position(|p| p.seq == seq) {
            state.queue.remove(i);
        }
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.state().queue.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until a reading is added (or was added since the last wait).
    pub async fn added(&self) {
        self.added.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(b: &Backlog, n: u8) -> u64 {
        b.push(|seq| (format!("t{seq}"), Bytes::from(vec![n])))
    }

    #[test]
    fn readings_come_out_in_order_and_leave_only_when_removed() {
        let b = Backlog::new(10);
        for n in 0..3 {
            push(&b, n);
        }
        let first = b.next_after(None).unwrap();
        assert_eq!(first.seq, 0);
        assert_eq!(b.next_after(Some(0)).unwrap().seq, 1);
        b.remove(1);
        assert_eq!(b.next_after(Some(0)).unwrap().seq, 2);
        assert_eq!(
            b.next_after(None).unwrap().seq,
            0,
            "not removed: sent again"
        );
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn a_full_backlog_drops_the_oldest() {
        let b = Backlog::new(2);
        assert_eq!(push(&b, 0), 0);
        assert_eq!(push(&b, 1), 0);
        assert_eq!(push(&b, 2), 1);
        assert_eq!(b.next_after(None).unwrap().seq, 1);
        assert_eq!(b.len(), 2);
    }
}

//! A device's readings not yet acknowledged by the hub, oldest first.
//!
//! The readings are in three runs, in this order:
//! - `head`: the oldest, in memory and in the store (at most `head_limit` of them: what the
//!   sender needs next, its messages in flight among them);
//! - `stored_only` readings only in the store (a long outage's backlog), read back into
//!   `head` as the sender gets to them;
//! - `tail`: the newest, in memory, not yet in the store (taken since the last commit).
//!
//! The store's writer commits the tail every commit interval: a reading the hub acknowledged
//! before that never touches the disk, so a healthy link costs the flash almost nothing. A
//! reading leaves on its PUBACK; if it was stored, its row is deleted at the next commit.
//! Without a store (none configured, or it cannot be written) readings stay in the tail,
//! bounded by `memory`: when full, the oldest there goes, counted and logged.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

use super::store::db::{NewRow, Row};

/// One reading, encoded once: the same topic (with its message id) and body go out on every
/// retransmit, so the back end can drop duplicates.
#[derive(Debug, Clone)]
pub struct Pending {
    pub seq: u64,
    pub topic: String,
    pub body: Bytes,
    /// Its row in the store, once committed.
    row: Option<i64>,
}

/// What the sender gets next.
#[derive(Debug)]
pub enum Next {
    Ready(Pending),
    /// The next readings are only in the store: ask it to read them back.
    Fetch,
    Empty,
}

/// Where a backlog with readings to commit is listed for the store's writer.
pub type Dirty = Mutex<Vec<Arc<Backlog>>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Readings held in memory that are not in the store (the configured `backlog`).
    pub memory: usize,
    /// Stored readings kept in memory ahead of the sender; more than its window.
    pub head: usize,
}

#[derive(Debug)]
pub struct Backlog {
    pub device_id: Arc<str>,
    limits: Limits,
    state: Mutex<State>,
    /// Woken when a reading is added.
    added: Notify,
    /// Listed in `sink` since the writer last looked.
    dirty: AtomicBool,
    /// The store's list of backlogs to commit; `None` without a store.
    sink: Option<Arc<Dirty>>,
    /// Its `leafgate_telemetry_buffered` series, when metrics are on.
    buffered: Option<prometheus_client::metrics::gauge::Gauge>,
}

impl State {
    fn len(&self) -> u64 {
        (self.head.len() + self.tail.len()) as u64 + self.stored_only
    }
}

#[derive(Debug, Default)]
struct State {
    head: VecDeque<Pending>,
    stored_only: u64,
    tail: VecDeque<Pending>,
    next_seq: u64,
    /// The highest sequence number that left `head` (acknowledged or dropped): rows at or
    /// below it that are still in the file are deletes not yet committed, never to be read.
    floor: Option<u64>,
    /// Rows of acknowledged readings, to delete at the next commit.
    acked_rows: Vec<i64>,
    /// Dropped because memory was full.
    dropped: u64,
}

/// What the writer commits for one backlog.
pub struct Collected {
    pub inserts: Vec<NewRow>,
    pub deletes: Vec<i64>,
}

impl Backlog {
    /// A backlog whose device already has `stored` readings in the store, the last with
    /// sequence number `last_seq`; `sink` is the store's dirty list (`None`: memory only).
    #[must_use]
    pub fn new(
        device_id: Arc<str>,
        limits: Limits,
        sink: Option<Arc<Dirty>>,
        stored: u64,
        last_seq: Option<u64>,
    ) -> Self {
        let state = State {
            stored_only: if sink.is_some() { stored } else { 0 },
            next_seq: last_seq.map_or(0, |s| s + 1),
            ..State::default()
        };
        let buffered = crate::metrics::get().map(|m| {
            let gauge = m
                .telemetry_buffered
                .get_or_create_owned(&m.device(&device_id));
            gauge.set(i64::try_from(state.len()).unwrap_or(i64::MAX));
            gauge
        });
        Self {
            device_id,
            limits: Limits {
                memory: limits.memory.max(1),
                head: limits.head.max(2),
            },
            state: Mutex::new(state),
            added: Notify::new(),
            dirty: AtomicBool::new(false),
            sink,
            buffered,
        }
    }

    /// Sets the buffered gauge from `state` (under its lock, so updates never cross).
    fn publish(&self, state: &State) {
        if let Some(gauge) = &self.buffered {
            gauge.set(i64::try_from(state.len()).unwrap_or(i64::MAX));
        }
    }

    /// A backlog in memory only.
    #[must_use]
    pub fn in_memory(device_id: Arc<str>, limits: Limits) -> Self {
        Self::new(device_id, limits, None, 0, None)
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this lock leaves the runs consistent (every change is a push,
        // pop or count), so a poisoned lock is used as it is.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn mark_dirty(self: &Arc<Self>) {
        if let Some(sink) = &self.sink
            && !self.dirty.swap(true, Ordering::AcqRel)
        {
            sink.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(self.clone());
        }
    }

    /// Adds a reading built by `make` from its sequence number. Returns how many readings
    /// were dropped to make room in memory (0 or 1).
    pub fn push(self: &Arc<Self>, make: impl FnOnce(u64) -> (String, Bytes)) -> u64 {
        let dropped = {
            let mut state = self.state();
            let seq = state.next_seq;
            state.next_seq += 1;
            let (topic, body) = make(seq);
            let mut dropped = 0;
            while state.tail.len() >= self.limits.memory {
                state.tail.pop_front();
                state.dropped += 1;
                dropped += 1;
            }
            state.tail.push_back(Pending {
                seq,
                topic,
                body,
                row: None,
            });
            self.publish(&state);
            dropped
        };
        self.mark_dirty();
        self.added.notify_one();
        dropped
    }

    /// The oldest reading after `cursor` (all of them with `None`).
    #[must_use]
    pub fn next_after(&self, cursor: Option<u64>) -> Next {
        let state = self.state();
        let after = |p: &&Pending| cursor.is_none_or(|c| p.seq > c);
        if let Some(p) = state.head.iter().find(after) {
            return Next::Ready(p.clone());
        }
        if state.stored_only > 0 {
            return Next::Fetch;
        }
        match state.tail.iter().find(after) {
            Some(p) => Next::Ready(p.clone()),
            None => Next::Empty,
        }
    }

    /// The hub has `seq`: it leaves the backlog (and the store at the next commit).
    pub fn remove(self: &Arc<Self>, seq: u64) {
        let stored = {
            let mut state = self.state();
            let stored = if let Some(i) = state.head.iter().position(|p| p.seq == seq) {
                let gone = state.head.remove(i);
                state.floor = state.floor.max(Some(seq));
                match gone.and_then(|p| p.row) {
                    Some(row) => {
                        state.acked_rows.push(row);
                        true
                    }
                    None => false,
                }
            } else {
                if let Some(i) = state.tail.iter().position(|p| p.seq == seq) {
                    state.tail.remove(i);
                }
                false
            };
            self.publish(&state);
            stored
        };
        if stored {
            self.mark_dirty();
        }
    }

    /// Readings waiting, in memory and in the store.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.state().len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until a reading is added (or was added since the last wait).
    pub async fn added(&self) {
        self.added.notified().await;
    }

    // The store's side.

    /// Takes what the next commit writes: the readings not yet stored, and the rows of
    /// acknowledged ones. Clears the dirty mark first, so a reading pushed meanwhile lists
    /// the backlog again.
    pub(super) fn collect(&self) -> Collected {
        self.dirty.store(false, Ordering::Release);
        let mut state = self.state();
        let inserts = state
            .tail
            .iter()
            .filter(|p| p.row.is_none())
            .map(|p| NewRow {
                seq: p.seq,
                topic: p.topic.clone(),
                body: p.body.clone(),
            })
            .collect();
        let deletes = std::mem::take(&mut state.acked_rows);
        Collected { inserts, deletes }
    }

    /// The commit of `collect`ed readings failed: its deletes are kept for the next one, and
    /// the backlog is listed again.
    pub(super) fn commit_failed(self: &Arc<Self>, deletes: Vec<i64>) {
        self.state().acked_rows.extend(deletes);
        self.mark_dirty();
    }

    /// The readings `seqs` are stored as `rows`. Stored readings at the tail's front move to
    /// the head while it has room, or leave memory; readings acknowledged during the commit
    /// have their rows deleted by the next one.
    pub(super) fn stored(self: &Arc<Self>, seqs: &[u64], rows: &[i64]) {
        let late_acks = {
            let mut state = self.state();
            let mut late_acks = false;
            for (&seq, &row) in seqs.iter().zip(rows) {
                match state.tail.iter_mut().find(|p| p.seq == seq) {
                    Some(p) => p.row = Some(row),
                    None => {
                        state.acked_rows.push(row);
                        late_acks = true;
                    }
                }
            }
            while state.tail.front().is_some_and(|p| p.row.is_some()) {
                let Some(p) = state.tail.pop_front() else {
                    break;
                };
                if state.stored_only == 0 && state.head.len() < self.limits.head {
                    state.head.push_back(p);
                } else {
                    state.stored_only += 1;
                }
            }
            late_acks
        };
        if late_acks {
            self.mark_dirty();
        }
    }

    /// What to read back from the store: after which sequence number, and how many.
    pub(super) fn fetch_request(&self) -> Option<(Option<u64>, usize)> {
        let state = self.state();
        if state.stored_only == 0 {
            return None;
        }
        let after = state.head.back().map(|p| p.seq).max(state.floor);
        let room = self.limits.head.saturating_sub(state.head.len()).max(1);
        Some((after, room))
    }

    /// Rows read back for a [`Backlog::fetch_request`] of `limit`.
    pub(super) fn fetched(&self, rows: Vec<Row>, limit: usize) {
        let mut state = self.state();
        let n = rows.len();
        for row in rows {
            if state.head.back().is_some_and(|p| p.seq >= row.seq) {
                continue;
            }
            state.head.push_back(Pending {
                seq: row.seq,
                topic: row.topic,
                body: row.body,
                row: Some(row.id),
            });
        }
        state.stored_only = if n < limit {
            // The file has no more: whatever the count said.
            0
        } else {
            state.stored_only.saturating_sub(n as u64)
        };
        self.publish(&state);
    }

    /// The store dropped these readings (oldest first) for its bounds.
    pub(super) fn dropped_from_store(&self, seqs: &[u64]) {
        let mut state = self.state();
        for &seq in seqs {
            if let Some(i) = state.head.iter().position(|p| p.seq == seq) {
                state.head.remove(i);
                state.floor = state.floor.max(Some(seq));
            } else if !state.tail.iter().any(|p| p.seq == seq) {
                state.stored_only = state.stored_only.saturating_sub(1);
            }
        }
        self.publish(&state);
    }

    /// The store's file was lost (moved aside as corrupt): readings only in it are gone,
    /// those in memory are stored again. Returns how many were lost.
    pub fn store_lost(self: &Arc<Self>) -> u64 {
        let lost = {
            let mut state = self.state();
            let lost = std::mem::take(&mut state.stored_only);
            state.acked_rows.clear();
            let mut head = std::mem::take(&mut state.head);
            for p in &mut head {
                p.row = None;
            }
            for p in &mut state.tail {
                p.row = None;
            }
            head.extend(state.tail.drain(..));
            state.tail = head;
            self.publish(&state);
            lost
        };
        self.mark_dirty();
        lost
    }

    /// How many readings the sender may have in flight: fewer than the head holds, so a
    /// commit never moves one in flight out of memory.
    #[must_use]
    pub fn max_in_flight(&self, window: u16) -> usize {
        usize::from(window.max(1)).min(self.limits.head - 1)
    }

    /// Readings dropped because memory was full, since the start.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.state().dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        memory: 10,
        head: 4,
    };

    fn push(b: &Arc<Backlog>, n: u8) -> u64 {
        b.push(|seq| (format!("t{seq}"), Bytes::from(vec![n])))
    }

    fn seq(next: Next) -> Option<u64> {
        match next {
            Next::Ready(p) => Some(p.seq),
            Next::Fetch => panic!("fetch"),
            Next::Empty => None,
        }
    }

    fn stored() -> (Arc<Dirty>, Arc<Backlog>) {
        let sink = Arc::new(Dirty::default());
        let b = Arc::new(Backlog::new(
            "d".into(),
            LIMITS,
            Some(sink.clone()),
            0,
            None,
        ));
        (sink, b)
    }

    /// Stored readings `seqs` as the file gives them back, with row id = 100 + seq.
    fn rows(seqs: std::ops::Range<u64>) -> Vec<Row> {
        seqs.map(|s| Row {
            id: 100 + s as i64,
            seq: s,
            topic: format!("t{s}"),
            body: Bytes::new(),
        })
        .collect()
    }

    /// What the writer does for `b`, with row id = 100 + seq.
    fn commit(b: &Arc<Backlog>) -> Vec<i64> {
        let c = b.collect();
        let seqs: Vec<u64> = c.inserts.iter().map(|r| r.seq).collect();
        let rows: Vec<i64> = seqs.iter().map(|s| 100 + *s as i64).collect();
        b.stored(&seqs, &rows);
        c.deletes
    }

    #[test]
    fn readings_come_out_in_order_and_leave_only_when_removed() {
        let b = Arc::new(Backlog::in_memory("d".into(), LIMITS));
        for n in 0..3 {
            push(&b, n);
        }
        assert_eq!(seq(b.next_after(None)), Some(0));
        assert_eq!(seq(b.next_after(Some(0))), Some(1));
        b.remove(1);
        assert_eq!(seq(b.next_after(Some(0))), Some(2));
        assert_eq!(seq(b.next_after(None)), Some(0), "not removed: sent again");
        assert_eq!(b.len(), 2);
    }

    #[test]
    fn a_full_memory_drops_the_oldest() {
        let b = Arc::new(Backlog::in_memory(
            "d".into(),
            Limits { memory: 2, head: 4 },
        ));
        assert_eq!(push(&b, 0), 0);
        assert_eq!(push(&b, 1), 0);
        assert_eq!(push(&b, 2), 1);
        assert_eq!(seq(b.next_after(None)), Some(1));
        assert_eq!(b.len(), 2);
        assert_eq!(b.dropped(), 1);
    }

    #[test]
    fn a_reading_acknowledged_before_the_commit_is_never_stored() {
        let (sink, b) = stored();
        push(&b, 0);
        push(&b, 1);
        assert_eq!(sink.lock().unwrap().len(), 1, "listed once");
        b.remove(0);
        let c = b.collect();
        assert_eq!(c.inserts.iter().map(|r| r.seq).collect::<Vec<_>>(), [1]);
        assert!(c.deletes.is_empty());
    }

    #[test]
    fn a_stored_reading_acknowledged_is_deleted_at_the_next_commit() {
        let (_, b) = stored();
        push(&b, 0);
        commit(&b);
        b.remove(0);
        assert_eq!(commit(&b), [100]);
        assert!(b.is_empty());
    }

    #[test]
    fn an_acknowledgement_during_the_commit_deletes_the_row_next_time() {
        let (sink, b) = stored();
        push(&b, 0);
        let c = b.collect();
        sink.lock().unwrap().clear();
        b.remove(0);
        b.stored(&[0], &[100]);
        assert_eq!(sink.lock().unwrap().len(), 1, "listed again");
        assert_eq!(b.collect().deletes, [100]);
        drop(c);
    }

    #[test]
    fn a_long_backlog_leaves_memory_and_is_read_back_in_order() {
        let (_, b) = stored();
        for n in 0..10 {
            push(&b, n);
        }
        commit(&b);
        // Four stay ahead of the sender; six are only in the store.
        assert_eq!(b.len(), 10);
        for s in 0..4u64 {
            assert_eq!(seq(b.next_after(s.checked_sub(1))), Some(s));
        }
        assert!(matches!(b.next_after(Some(3)), Next::Fetch));
        // New readings after the stored ones wait their turn.
        push(&b, 10);
        assert!(matches!(b.next_after(Some(3)), Next::Fetch));
        for s in 0..4 {
            b.remove(s);
        }
        let (after, limit) = b.fetch_request().unwrap();
        assert_eq!((after, limit), (Some(3), 4));
        b.fetched(rows(4..8), limit);
        assert_eq!(seq(b.next_after(None)), Some(4));
        assert!(matches!(b.next_after(Some(7)), Next::Fetch));
        // The file had two left, not four: the count heals.
        b.fetched(rows(8..10), 4);
        assert_eq!(seq(b.next_after(Some(9))), Some(10));
    }

    #[test]
    fn readings_dropped_by_the_store_leave_head_and_count() {
        let (_, b) = stored();
        for n in 0..6 {
            push(&b, n);
        }
        commit(&b);
        assert_eq!(b.len(), 6);
        b.dropped_from_store(&[0, 1, 4]);
        assert_eq!(b.len(), 3);
        assert_eq!(seq(b.next_after(None)), Some(2));
    }

    #[test]
    fn a_lost_store_keeps_what_is_in_memory_and_counts_the_rest() {
        let (_, b) = stored();
        for n in 0..6 {
            push(&b, n);
        }
        commit(&b);
        assert_eq!(b.store_lost(), 2);
        assert_eq!(b.len(), 4);
        let c = b.collect();
        assert_eq!(
            c.inserts.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
    }

    #[test]
    fn numbering_continues_after_what_the_store_holds() {
        let sink = Arc::new(Dirty::default());
        let b = Arc::new(Backlog::new("d".into(), LIMITS, Some(sink), 3, Some(41)));
        push(&b, 0);
        assert_eq!(b.len(), 4);
        assert!(matches!(b.next_after(None), Next::Fetch));
        assert_eq!(b.fetch_request(), Some((None, 4)));
    }
}

//! Time-stamped records for tests that measure behaviour over time: every connection attempt the
//! MQTT listener saw (to compute connect rates and backoff gaps), every direct-method exchange
//! (to check that each request got exactly one response, and when), and every twin request a
//! device published (with the status it was answered, if any), and every DPS CONNECT and
//! request (with its answer).
//!
//! All are bounded ([`MAX_RECORDS`] each): when a log is full its older half is forgotten, so a
//! long-running demo or CLI emulator keeps flat memory. Each change bumps a `watch`
//! counter, so tests await a record instead of polling.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::dps::request::DpsRequest;
use super::faults::Fault;
use super::lock::lock;
use super::registry::RefusalReason;
use super::twin::TwinRequest;

/// Most records kept per log; when full, the older half is dropped.
pub const MAX_RECORDS: usize = 65_536;

/// One TCP connection to the MQTT listener and what became of its CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectAttempt {
    /// Position in the log, from 0, over the emulator's life.
    pub seq: u64,
    /// When the TCP connection was accepted.
    pub tcp_at: Instant,
    /// When its CONNECT arrived; `None` if the connection ended before one.
    pub connect_at: Option<Instant>,
    /// The CONNECT's client id, when there was a CONNECT.
    pub client_id: Option<String>,
    pub outcome: AttemptOutcome,
    /// When a stalled attempt's connection closed (the device gave up, or the stall ended).
    pub closed_at: Option<Instant>,
}

/// What the emulator did with a connection attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// CONNACK 0: the device is connected.
    Accepted,
    /// CONNACK 5 (or 1, or 3 for [`RefusalReason::Throttled`]), for this reason. Injected
    /// [`Fault::Refuse`] and [`Fault::Throttle`] faults show up here too.
    Refused(RefusalReason),
    /// A [`Fault::Stall`] or [`Fault::Hangup`] kept the CONNACK back.
    Faulted(Fault),
    /// Closed at once by a [`Fault::CloseTcp`], before TLS.
    ClosedTcp,
    /// The connection ended before a usable CONNECT: TLS failure, silence, another packet first.
    NoConnect,
}

/// One direct-method request the emulator sent to a device, and every response to its rid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodExchange {
    pub rid: u64,
    pub device: String,
    pub method: String,
    /// When the request was handed to the device's connection.
    pub sent_at: Instant,
    /// The caller's `responseTimeoutInSeconds`: a response later than `sent_at` + this is late.
    pub response_timeout: Duration,
    /// Every response the device published with this rid, in arrival order: when, and its
    /// status. More than one is a duplicate; the caller only ever sees the first one, and only
    /// if it came within the timeout.
    pub responses: Vec<(Instant, u16)>,
}

/// A bounded log of records with a change counter.
struct Ring<T> {
    /// The sequence number of the next record, and the records kept.
    records: Mutex<(u64, Vec<T>)>,
    changed: watch::Sender<u64>,
}

impl<T: Clone> Ring<T> {
    fn new() -> Self {
        Ring {
            records: Mutex::new((0, Vec::new())),
            changed: watch::Sender::new(0),
        }
    }

    /// Appends the record `make` builds from its sequence number; returns that number.
    fn push(&self, make: impl FnOnce(u64) -> T) -> u64 {
        let seq = {
            let mut guard = lock(&self.records);
            let (next, records) = &mut *guard;
            let seq = *next;
            *next += 1;
            if records.len() >= MAX_RECORDS {
                records.drain(..MAX_RECORDS / 2);
            }
            records.push(make(seq));
            seq
        };
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
        seq
    }

    /// Changes the record `seq` if it is still kept.
    fn update(&self, seq: u64, change: impl FnOnce(&mut T)) {
        self.update_where(
            |(next, records)| {
                let first = next - records.len() as u64;
                seq.checked_sub(first)
                    .and_then(|i| usize::try_from(i).ok())
                    .filter(|i| *i < records.len())
            },
            change,
        );
    }

    /// Changes the record at the index `find` picks (given the next sequence number and the
    /// records), under one lock.
    fn update_where(
        &self,
        find: impl FnOnce((u64, &[T])) -> Option<usize>,
        change: impl FnOnce(&mut T),
    ) {
        let updated = {
            let mut guard = lock(&self.records);
            let (next, records) = &mut *guard;
            match find((*next, records)).and_then(|i| records.get_mut(i)) {
                Some(record) => {
                    change(record);
                    true
                }
                None => false,
            }
        };
        if updated {
            self.changed.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    fn snapshot(&self) -> Vec<T> {
        lock(&self.records).1.clone()
    }

    /// Runs `f` on the records, under the lock.
    fn with<R>(&self, f: impl FnOnce(&[T]) -> R) -> R {
        f(&lock(&self.records).1)
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Waits until `predicate` holds for the records (checked at once, then on every change)
    /// and returns a copy of them; `None` when `timeout` passes first. The predicate runs under
    /// the lock; the copy is made only once it holds.
    async fn wait_until(
        &self,
        timeout: Duration,
        mut predicate: impl FnMut(&[T]) -> bool,
    ) -> Option<Vec<T>>
    where
        T: Clone,
    {
        let mut changes = self.subscribe();
        let wait = async {
            loop {
                changes.borrow_and_update();
                let done = self.with(|records| predicate(records).then(|| records.to_vec()));
                if done.is_some() {
                    return done;
                }
                if changes.changed().await.is_err() {
                    return None;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.ok().flatten()
    }
}

pub(crate) struct History {
    connects: Ring<ConnectAttempt>,
    methods: Ring<MethodExchange>,
    twin: Ring<TwinRequest>,
    dps: Ring<DpsRequest>,
}

impl History {
    pub(crate) fn new() -> Self {
        History {
            connects: Ring::new(),
            methods: Ring::new(),
            twin: Ring::new(),
            dps: Ring::new(),
        }
    }

    /// Records a twin request with the status it is answered (before the answer is written).
    pub(crate) fn twin_request(&self, request: TwinRequest) {
        self.twin.push(|_| request);
    }

    pub(crate) fn twin_requests(&self) -> Vec<TwinRequest> {
        self.twin.snapshot()
    }

    pub(crate) async fn wait_twin(
        &self,
        timeout: Duration,
        predicate: impl FnMut(&[TwinRequest]) -> bool,
    ) -> Option<Vec<TwinRequest>> {
        self.twin.wait_until(timeout, predicate).await
    }

    /// Records a DPS CONNECT or request (before it is answered).
    pub(crate) fn dps_request(&self, request: DpsRequest) {
        self.dps.push(|_| request);
    }

    pub(crate) fn dps_requests(&self) -> Vec<DpsRequest> {
        self.dps.snapshot()
    }

    pub(crate) async fn wait_dps(
        &self,
        timeout: Duration,
        predicate: impl FnMut(&[DpsRequest]) -> bool,
    ) -> Option<Vec<DpsRequest>> {
        self.dps.wait_until(timeout, predicate).await
    }

    /// Records an attempt; returns its sequence number for [`History::attempt_closed`].
    pub(crate) fn attempt(
        &self,
        tcp_at: Instant,
        connect_at: Option<Instant>,
        client_id: Option<String>,
        outcome: AttemptOutcome,
    ) -> u64 {
        self.connects.push(|seq| ConnectAttempt {
            seq,
            tcp_at,
            connect_at,
            client_id,
            outcome,
            closed_at: None,
        })
    }

    pub(crate) fn attempt_closed(&self, seq: u64) {
        let now = Instant::now();
        self.connects.update(seq, |a| a.closed_at = Some(now));
    }

    pub(crate) fn attempts(&self) -> Vec<ConnectAttempt> {
        self.connects.snapshot()
    }

    pub(crate) async fn wait_attempts(
        &self,
        timeout: Duration,
        predicate: impl FnMut(&[ConnectAttempt]) -> bool,
    ) -> Option<Vec<ConnectAttempt>> {
        self.connects.wait_until(timeout, predicate).await
    }

    pub(crate) async fn wait_methods(
        &self,
        timeout: Duration,
        predicate: impl FnMut(&[MethodExchange]) -> bool,
    ) -> Option<Vec<MethodExchange>> {
        self.methods.wait_until(timeout, predicate).await
    }

    pub(crate) fn method_sent(
        &self,
        rid: u64,
        device: &str,
        method: &str,
        response_timeout: Duration,
    ) {
        let sent_at = Instant::now();
        self.methods.push(|_| MethodExchange {
            rid,
            device: device.to_owned(),
            method: method.to_owned(),
            sent_at,
            response_timeout,
            responses: Vec::new(),
        });
    }

    /// Forgets a request that could not be queued after all (its connection had closed). The
    /// method log is searched by rid, never by position, so removing from its middle is fine.
    pub(crate) fn method_unsent(&self, rid: u64) {
        let mut guard = lock(&self.methods.records);
        if let Some(i) = guard.1.iter().rposition(|r| r.rid == rid) {
            guard.1.remove(i);
        }
    }

    /// Records a response from `device` to `rid` (decimal, as the device sent it), whether or
    /// not it still answered a live call. Responses to rids the emulator never sent to that
    /// device are not recorded here (the device's stats count them as ignored).
    pub(crate) fn method_response(&self, device: &str, rid: &str, status: u16) {
        let Some(rid) = rid.parse::<u64>().ok().filter(|n| n.to_string() == rid) else {
            return;
        };
        let now = Instant::now();
        // Requests are logged in about rid order (concurrent calls may swap neighbours), so the
        // record is found near the end: search backwards.
        self.methods.update_where(
            |(_, records)| {
                records
                    .iter()
                    .rposition(|r| r.rid == rid && r.device == device)
            },
            |record| record.responses.push((now, status)),
        );
    }

    pub(crate) fn methods(&self) -> Vec<MethodExchange> {
        self.methods.snapshot()
    }
}

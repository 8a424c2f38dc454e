//! The bus actor: one task owns a bus's transport and runs queued jobs one at a time, in arrival
//! order. A job is a method's whole list of operations, so a write and its read-back are never
//! split by another device's traffic.
//!
//! Rules that keep a factory floor safe:
//! - a job whose deadline passed while it waited is dropped unexecuted (never run a write after
//!   its caller was told it timed out);
//! - every operation runs under min(bus timeout, time left to the deadline);
//! - a job that would wait longer than its deadline allows behind the work already queued
//!   (estimated from how long recent jobs took) is answered at once (503): otherwise, under
//!   overload, most jobs would start too late, time out (504) after occupying the line, and the
//!   bus would serve almost nothing in time. That is the admission rule; the queue's capacity is
//!   only a memory bound (a full queue also answers 503 at once instead of growing), so a burst
//!   of quick jobs is served whole whenever their deadlines allow;
//! - the link reconnects in the background with backoff; jobs that arrive while it is down fail
//!   fast (503) rather than waiting for a connect;
//! - shutdown is honoured only between jobs;
//! - polls (telemetry reads) wait in a lane of their own, behind every method job: the actor
//!   takes a poll only when no method job waits, and between the reads of a poll it runs any
//!   method job that arrived meanwhile first. So a method waits behind at most the one poll
//!   read already on the wire, never behind queued polls. A poll that cannot start before its
//!   deadline (the next one is due) is skipped, never run late; polls of a unit marked down
//!   cost no line time.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::link::{Link, Wait};
use super::spec::Bus;
use super::{Error, Limit, Op, Output, Timeout};
use crate::backoff::Backoff;
use crate::metrics;

/// The least time an operation may have to wait for its reply; with less left before the
/// deadline it is not sent at all.
const MIN_REPLY_WAIT: Duration = Duration::from_millis(100);

/// Who a job is for, carried only for log lines.
#[derive(Debug, Clone, Default)]
pub struct Label {
    pub device: Arc<str>,
    pub method: Arc<str>,
    pub rid: Arc<str>,
}

pub struct Job {
    pub ops: Vec<Op>,
    /// When it was queued: its wait is measured ([`Handles`]).
    pub queued: Instant,
    pub deadline: Instant,
    pub label: Label,
    pub reply: oneshot::Sender<Result<Vec<Output>, Error>>,
}

/// A poll: independent reads, each answered on its own (one refused read does not void the
/// others), in the low-priority lane.
pub struct Poll {
    pub ops: Vec<Op>,
    /// When the poll is pointless (its next one is due): reads not started by then are not
    /// sent. A read that started gets the whole bus timeout.
    pub deadline: Instant,
    pub label: Label,
    pub reply: oneshot::Sender<Result<Vec<Result<Output, Error>>, Error>>,
}

/// A cheap, cloneable way to submit jobs to a bus.
#[derive(Debug, Clone)]
pub struct Handle {
    id: Arc<str>,
    tx: mpsc::Sender<Job>,
    /// The poll lane. Boxed: tokio allocates a channel's first block of 32 slots up front, and
    /// a bus without telemetry should not pay for 32 inline polls.
    polls: mpsc::Sender<Box<Poll>>,
    capacity: usize,
    up: watch::Receiver<bool>,
    /// Units the circuit breaker holds down, until they answer again.
    down: watch::Receiver<BTreeSet<u8>>,
    /// Moving average of how long a successful job held the bus, in µs (0: none yet).
    job_us: Arc<AtomicU64>,
    /// Jobs waiting, when metrics are on.
    depth: Option<Gauge>,
}

/// This bus's series in the metrics registry, made once when the actor starts (so no
/// transaction looks a label up).
#[derive(Debug, Clone)]
struct Handles {
    up: Gauge,
    depth: Gauge,
    queue_seconds: Histogram,
    wire_seconds: Histogram,
    busy_seconds: Counter<f64, AtomicU64>,
    transactions: Counter,
    timeouts: Counter,
    retries: Counter,
    units_down: Gauge,
}

impl Handles {
    fn new(bus: &str) -> Option<Handles> {
        let m = metrics::get()?;
        let labels = m.bus(bus);
        Some(Handles {
            up: m.bus_up.get_or_create(&labels).clone(),
            depth: m.bus_queue_depth.get_or_create(&labels).clone(),
            queue_seconds: m.bus_queue_seconds.get_or_create(&labels).clone(),
            wire_seconds: m.bus_wire_seconds.get_or_create(&labels).clone(),
            busy_seconds: m.bus_busy_seconds.get_or_create(&labels).clone(),
            transactions: m.bus_transactions.get_or_create(&labels).clone(),
            timeouts: m.bus_timeouts.get_or_create(&labels).clone(),
            retries: m.bus_retries.get_or_create(&labels).clone(),
            units_down: m.bus_units_down.get_or_create(&labels).clone(),
        })
    }
}

impl Handle {
    #[must_use]
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the transport is open right now.
    #[must_use]
    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    /// A receiver that changes when the transport opens or closes.
    #[must_use]
    pub fn up_watch(&self) -> watch::Receiver<bool> {
        self.up.clone()
    }

    /// A receiver of the units the circuit breaker holds down (marked down after consecutive
    /// timeouts, until they answer again); it changes only when a unit goes down or comes back.
    #[must_use]
    pub fn down_watch(&self) -> watch::Receiver<BTreeSet<u8>> {
        self.down.clone()
    }

    /// Jobs waiting in the method lane and polls waiting in the poll lane (not counting the
    /// one on the wire).
    #[must_use]
    pub fn queued(&self) -> (usize, usize) {
        let waiting = |max: usize, free: usize| max.saturating_sub(free);
        (
            waiting(self.tx.max_capacity(), self.tx.capacity()),
            waiting(self.polls.max_capacity(), self.polls.capacity()),
        )
    }

    /// Queues `ops` and waits for the result.
    ///
    /// # Errors
    /// `QueueFull` at once when the queue is full; `ShuttingDown` when the actor has stopped;
    /// otherwise whatever the bus reports.
    ///
    /// # Cancel safety
    /// Dropping the future before it completes leaves the job queued; the actor skips jobs whose
    /// caller has gone before it starts them.
    pub async fn submit(
        &self,
        ops: Vec<Op>,
        deadline: Instant,
        label: Label,
    ) -> Result<Vec<Output>, Error> {
        self.admit(deadline)?;
        let (reply, rx) = oneshot::channel();
        let job = Job {
            ops,
            queued: Instant::now(),
            deadline,
            label,
            reply,
        };
        // Counted before it is queued: the actor may take it (and count it out) at once.
        if let Some(depth) = &self.depth {
            depth.inc();
        }
        if let Err(e) = self.tx.try_send(job) {
            if let Some(depth) = &self.depth {
                depth.dec();
            }
            return Err(self.refused(&e));
        }
        rx.await.unwrap_or(Err(Error::ShuttingDown))
    }

    /// Queues a poll in the low-priority lane and waits for its reads' results, one per op in
    /// order. Reads that could not be sent before `deadline` come back `Expired`.
    ///
    /// # Errors
    /// The whole poll is refused, costing no line time, when: the lane is full (`QueueFull`),
    /// the actor stopped (`ShuttingDown`), it could not start before `deadline` (`Expired`:
    /// skipped), the link is down or the unit is marked down (`Unavailable`).
    pub async fn poll(
        &self,
        ops: Vec<Op>,
        deadline: Instant,
        label: Label,
    ) -> Result<Vec<Result<Output, Error>>, Error> {
        let (reply, rx) = oneshot::channel();
        let poll = Box::new(Poll {
            ops,
            deadline,
            label,
            reply,
        });
        self.polls.try_send(poll).map_err(|e| self.refused(&e))?;
        rx.await.unwrap_or(Err(Error::ShuttingDown))
    }

    /// Why a lane did not take a job: full (a memory bound, answered at once), or the actor
    /// has stopped.
    fn refused<T>(&self, error: &mpsc::error::TrySendError<T>) -> Error {
        match error {
            mpsc::error::TrySendError::Full(_) => Error::QueueFull(self.capacity),
            mpsc::error::TrySendError::Closed(_) => Error::ShuttingDown,
        }
    }

    /// Refuses a job that cannot finish in time behind the jobs already queued: each of them,
    /// the one in progress and this one are assumed to take the recent average. Only when jobs
    /// are queued: a job that finds the queue empty always runs, so a bus whose recent jobs were
    /// slow can never refuse everything, and the estimate keeps learning.
    fn admit(&self, deadline: Instant) -> Result<(), Error> {
        let queued = self.queued().0;
        let job_us = self.job_us.load(Ordering::Relaxed);
        if queued == 0 || job_us == 0 {
            return Ok(());
        }
        let jobs = u64::try_from(queued).unwrap_or(u64::MAX).saturating_add(2);
        let wait = Duration::from_micros(job_us.saturating_mul(jobs));
        let left = deadline.saturating_duration_since(Instant::now());
        if wait > left {
            let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            return Err(Error::Busy {
                wait_ms: ms(wait),
                left_ms: ms(left),
            });
        }
        Ok(())
    }
}

/// Starts the actor for `link`. It runs until `shutdown` is cancelled (finishing the job in
/// hand) or every handle is dropped; then it answers what is still queued with `ShuttingDown`.
pub fn spawn<L: Link>(
    bus: &Bus,
    link: L,
    shutdown: CancellationToken,
) -> (Handle, tokio::task::JoinHandle<()>) {
    spawn_after(bus, link, shutdown, std::future::ready(()))
}

/// Like [`spawn`], but the actor touches its transport only once `gate` completes: a bus
/// restarted by a config reload must not open a serial line its predecessor still holds. Jobs
/// submitted meanwhile wait in the queue (their deadlines still apply); if `shutdown` comes
/// first, the actor never starts and they are answered `ShuttingDown`.
pub fn spawn_after<L: Link>(
    bus: &Bus,
    link: L,
    shutdown: CancellationToken,
    gate: impl Future<Output = ()> + Send + 'static,
) -> (Handle, tokio::task::JoinHandle<()>) {
    let id: Arc<str> = bus.id.as_str().into();
    let (tx, rx) = mpsc::channel(bus.queue_capacity.max(1));
    let (polls_tx, polls) = mpsc::channel(bus.queue_capacity.max(1));
    let (up_tx, up) = watch::channel(false);
    let (down_tx, down) = watch::channel(BTreeSet::new());
    let job_us = Arc::new(AtomicU64::new(0));
    let metrics = Handles::new(&id);
    let handle = Handle {
        id: id.clone(),
        tx,
        polls: polls_tx,
        capacity: bus.queue_capacity,
        up,
        down,
        job_us: Arc::clone(&job_us),
        depth: metrics.as_ref().map(|m| m.depth.clone()),
    };
    let actor = Actor {
        backoff: Backoff::new(bus.reconnect_min, bus.reconnect_max),
        id,
        settings: bus.clone(),
        link,
        next_open: Instant::now(),
        last_error: String::from("not connected yet"),
        up: up_tx,
        down: down_tx,
        units: std::collections::HashMap::new(),
        job_us,
        metrics,
    };
    let task = tokio::spawn(async move {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return,
            () = gate => {}
        }
        actor.run(rx, polls, shutdown).await;
    });
    (handle, task)
}

struct Actor<L> {
    id: Arc<str>,
    /// The bus as configured: timeouts, retries, reconnect and circuit-breaker settings (its
    /// `spec` went into `link`).
    settings: Bus,
    link: L,
    backoff: Backoff,
    next_open: Instant,
    last_error: String,
    up: watch::Sender<bool>,
    down: watch::Sender<BTreeSet<u8>>,
    /// Health per unit id (0 on raw serial lines), for the circuit breaker.
    units: std::collections::HashMap<u8, UnitHealth>,
    /// Shared with the handles: see [`Handle::admit`].
    job_us: Arc<AtomicU64>,
    metrics: Option<Handles>,
}

/// Consecutive timeouts of one unit, and until when it is considered down.
#[derive(Debug, Default)]
struct UnitHealth {
    timeouts: u32,
    down_until: Option<Instant>,
}

fn unit_of(ops: &[Op]) -> u8 {
    match ops.first() {
        Some(Op::Read { unit, .. } | Op::Write { unit, .. }) => *unit,
        _ => 0,
    }
}

impl<L: Link> Actor<L> {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Job>,
        mut polls: mpsc::Receiver<Box<Poll>>,
        shutdown: CancellationToken,
    ) {
        loop {
            if !self.link.is_open() && Instant::now() >= self.next_open {
                self.try_open().await;
            }
            let reopen_at = self.next_open;
            let closed = !self.link.is_open();
            // The line's silence first, then the choice: a method that comes meanwhile is
            // taken before a poll that waited.
            if !closed {
                self.link.settle().await;
            }
            tokio::select! {
                // In this order: a method job always before a poll.
                biased;
                () = shutdown.cancelled() => break,
                job = rx.recv() => match job {
                    Some(job) => self.run_job(job).await,
                    None => break,
                },
                poll = polls.recv() => match poll {
                    Some(poll) => self.run_poll(*poll, &mut rx, &shutdown).await,
                    None => break,
                },
                () = tokio::time::sleep_until(reopen_at), if closed => {}
            }
        }
        rx.close();
        while let Ok(job) = rx.try_recv() {
            self.dequeued(&job);
            let _ = job.reply.send(Err(Error::ShuttingDown));
        }
        polls.close();
        while let Ok(poll) = polls.try_recv() {
            let _ = poll.reply.send(Err(Error::ShuttingDown));
        }
        self.link.close();
        self.set_up(false);
        log::debug!(bus = &*self.id; "bus {} stopped", self.id);
    }

    fn set_up(&self, up: bool) {
        self.up.send_replace(up);
        if let Some(m) = &self.metrics {
            m.up.set(i64::from(up));
        }
    }

    async fn try_open(&mut self) {
        let id = &*self.id;
        match tokio::time::timeout(
            self.settings.timeout.max(Duration::from_secs(1)),
            self.link.open(),
        )
        .await
        {
            Ok(Ok(())) => {
                log::info!(bus = id; "bus {id} is up");
                self.backoff.reset();
                self.set_up(true);
            }
            result => {
                // The reason alone: jobs meanwhile are answered `Unavailable` with `last_error`, which
                // adds "bus unavailable" itself.
                let error = match result {
                    Ok(Err(e)) => e.reason(),
                    _ => "open timed out".to_owned(),
                };
                let delay = self.backoff.next_delay();
                // The first failure and every change of reason go to warn; repeats to debug, so
                // an unplugged line does not flood the journal.
                if self.backoff.attempts() == 1 || error != self.last_error {
                    log::warn!(bus = id; "bus {id} is down: {error}; retrying in {} ms", delay.as_millis());
                } else {
                    log::debug!(bus = id; "bus {id} still down: {error}; retrying in {} ms", delay.as_millis());
                }
                self.last_error = error;
                self.next_open = Instant::now() + delay;
            }
        }
    }

    fn mark_down(&mut self, error: &Error) {
        self.link.close();
        self.set_up(false);
        // The reason alone, as in `try_open`: it is wrapped in `Unavailable` again for each job.
        self.last_error = error.reason();
        let delay = self.backoff.next_delay();
        self.next_open = Instant::now() + delay;
        let id = &*self.id;
        log::warn!(bus = id; "bus {id} lost its link: {}; reconnecting in {} ms", self.last_error, delay.as_millis());
    }

    /// A job left the queue: one fewer waiting, and how long it waited.
    fn dequeued(&self, job: &Job) {
        if let Some(m) = &self.metrics {
            m.depth.dec();
            m.queue_seconds.observe(job.queued.elapsed().as_secs_f64());
        }
    }

    async fn run_job(&mut self, job: Job) {
        self.dequeued(&job);
        let Job {
            ops,
            deadline,
            label,
            reply,
            ..
        } = job;
        let bus = &*self.id;
        if reply.is_closed() {
            log::debug!(bus = bus, device_id = &*label.device, method = &*label.method, rid = &*label.rid; "caller gone before the job started; skipped");
            return;
        }
        if Instant::now() >= deadline {
            log::warn!(bus = bus, device_id = &*label.device, method = &*label.method, rid = &*label.rid;
                "deadline passed while queued on bus {bus}; dropped unexecuted");
            let _ = reply.send(Err(Error::Expired));
            return;
        }
        let unit = unit_of(&ops);
        if let Some(refused) = self.refusal(unit) {
            let _ = reply.send(Err(refused));
            return;
        }
        let started = Instant::now();
        let mut outputs = Vec::with_capacity(ops.len());
        let mut result = Ok(());
        for op in &ops {
            match self.execute(op, deadline, &label).await {
                Ok(out) => outputs.push(out),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.record_health(unit, result.as_ref().err(), &label);
        if let Some(m) = &self.metrics {
            m.wire_seconds.observe(started.elapsed().as_secs_f64());
        }
        if result.is_ok() {
            self.record_duration(started.elapsed());
        }
        let _ = reply.send(result.map(|()| outputs));
    }

    /// Why nothing may be sent to `unit` right now, if anything: the link is down, or the unit
    /// is marked down by the circuit breaker. A unit whose cool-down is over is let through:
    /// this job is the probe that brings it back, or not.
    fn refusal(&self, unit: u8) -> Option<Error> {
        if !self.link.is_open() {
            return Some(Error::unavailable(self.last_error.as_str()));
        }
        let until = self.units.get(&unit).and_then(|h| h.down_until)?;
        let left = until.saturating_duration_since(Instant::now());
        (!left.is_zero()).then(|| {
            Error::unavailable(format!(
                "unit {unit} is marked down after {} consecutive timeouts; next try in {} ms",
                self.settings.down_after,
                left.as_millis()
            ))
        })
    }

    /// One poll: its reads one at a time, each preceded by every method job that is waiting.
    /// Reads only, so stopping between them is always safe: at shutdown, or when the unit
    /// stops answering (marked down) or the link drops, the rest are answered without being
    /// sent. A poll's duration is not folded into the method jobs' average.
    async fn run_poll(
        &mut self,
        poll: Poll,
        methods: &mut mpsc::Receiver<Job>,
        shutdown: &CancellationToken,
    ) {
        let Poll {
            ops,
            deadline,
            label,
            reply,
        } = poll;
        if reply.is_closed() {
            return;
        }
        if Instant::now() >= deadline {
            let _ = reply.send(Err(Error::Expired));
            return;
        }
        let unit = unit_of(&ops);
        if let Some(refused) = self.refusal(unit) {
            let _ = reply.send(Err(refused));
            return;
        }
        let mut results = Vec::with_capacity(ops.len());
        for op in &ops {
            self.link.settle().await;
            while let Ok(job) = methods.try_recv() {
                self.run_job(job).await;
                self.link.settle().await;
            }
            let result = if shutdown.is_cancelled() {
                Err(Error::ShuttingDown)
            } else if Instant::now() >= deadline {
                Err(Error::Expired)
            } else if let Some(refused) = self.refusal(unit) {
                Err(refused)
            } else {
                // The deadline says when a read may still start; once sent, it gets the whole
                // bus timeout (the next poll is skipped if it runs late), not the sliver left
                // of a short interval.
                let whole = Instant::now() + self.link.overhead(op) + self.settings.timeout;
                let result = self.execute(op, whole.max(deadline), &label).await;
                self.record_health(unit, result.as_ref().err(), &label);
                result
            };
            results.push(result);
        }
        let _ = reply.send(Ok(results));
    }

    /// Folds a successful job's duration into the average (weight 1/8: a few jobs follow a
    /// change of pace, one odd job does not swing it). Failed jobs are left out: a timeout says
    /// how long the bus waited, not how long the work takes.
    fn record_duration(&self, took: Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        let old = self.job_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            us
        } else {
            old.saturating_mul(7).saturating_add(us) / 8
        };
        self.job_us.store(new, Ordering::Relaxed);
    }

    /// The circuit breaker: `down_after` consecutive timeouts mark a unit down for `down_for`,
    /// so a dead unit stops costing its line-mates a timeout per request. Any answer from the
    /// unit (data, an exception, even a garbled frame) proves it is there.
    fn record_health(&mut self, unit: u8, error: Option<&Error>, label: &Label) {
        let bus = &*self.id;
        let health = self.units.entry(unit).or_default();
        match error {
            // Only a timeout that waited the full bus timeout says the unit is silent; one cut
            // short by the method's deadline (a job that waited long in a busy queue) does not.
            Some(Error::Timeout(Timeout {
                limit: Limit::Deadline { .. },
                ..
            })) => {}
            Some(Error::Timeout(_)) => {
                health.timeouts = health.timeouts.saturating_add(1);
                let threshold = self.settings.down_after;
                if threshold > 0 && health.timeouts >= threshold {
                    health.down_until = Some(Instant::now() + self.settings.down_for);
                    self.down.send_if_modified(|down| down.insert(unit));
                    if let Some(m) = &self.metrics {
                        m.units_down
                            .set(i64::try_from(self.down.borrow().len()).unwrap_or(0));
                    }
                    log::warn!(bus = bus, unit = unit, device_id = &*label.device;
                        "unit {unit} on bus {bus} marked down after {} consecutive timeouts; requests fail fast (503) for {} ms",
                        health.timeouts, self.settings.down_for.as_millis());
                }
            }
            None | Some(Error::Exception { .. } | Error::Protocol(_)) => {
                if health.down_until.take().is_some() {
                    self.down.send_if_modified(|down| down.remove(&unit));
                    if let Some(m) = &self.metrics {
                        m.units_down
                            .set(i64::try_from(self.down.borrow().len()).unwrap_or(0));
                    }
                    log::info!(bus = bus, unit = unit, device_id = &*label.device; "unit {unit} on bus {bus} answers again");
                }
                health.timeouts = 0;
            }
            Some(_) => {}
        }
    }

    /// One operation. Retries: a garbled reply is retried (up to `retries`) and a link that
    /// failed is reopened once, but only when repeating cannot act twice on the device: reads
    /// always, writes and serial sends only if nothing of them was sent.
    ///
    /// An operation starts only if the deadline leaves room to send it and to wait a moment for
    /// the reply (`MIN_REPLY_WAIT`, or the bus timeout if shorter). Otherwise it is refused as
    /// `Expired` without touching the line, so a write never goes out after its caller has been
    /// told it timed out.
    async fn execute(
        &mut self,
        op: &Op,
        deadline: Instant,
        label: &Label,
    ) -> Result<Output, Error> {
        let bus = &*self.id;
        let repeatable = matches!(op, Op::Read { .. });
        let mut garbled = 0;
        let mut reconnected = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let overhead = self.link.overhead(op);
            if left < overhead + self.settings.timeout.min(MIN_REPLY_WAIT) {
                log::debug!(bus = bus, device_id = &*label.device, method = &*label.method, rid = &*label.rid;
                    "{} ms left, too little to send and wait for a reply; not sent", left.as_millis());
                return Err(Error::Expired);
            }
            let full = overhead + self.settings.timeout;
            let unit = match op {
                Op::Read { unit, .. } | Op::Write { unit, .. } => Some(*unit),
                Op::Serial { .. } => None,
            };
            let wait = if left < full {
                Wait {
                    limit: left,
                    timeout: Timeout {
                        unit,
                        limit: Limit::Deadline {
                            ms: Timeout::ms(left),
                        },
                    },
                }
            } else {
                Wait {
                    limit: full,
                    timeout: Timeout {
                        unit,
                        limit: Limit::Bus {
                            ms: Timeout::ms(self.settings.timeout),
                        },
                    },
                }
            };
            let limit = wait.limit;
            let sent = Instant::now();
            let result = self.link.execute(op, wait).await;
            if let Some(m) = &self.metrics {
                m.transactions.inc();
                m.busy_seconds.inc_by(sent.elapsed().as_secs_f64());
                if matches!(result, Err(Error::Timeout(_))) {
                    m.timeouts.inc();
                }
                if garbled > 0 || reconnected {
                    m.retries.inc();
                }
            }
            match result {
                Ok(out) => return Ok(out),
                Err(Error::Protocol(msg))
                    if garbled < self.settings.retries && (repeatable || !self.link.sent()) =>
                {
                    garbled += 1;
                    log::debug!(bus = bus, device_id = &*label.device, method = &*label.method, rid = &*label.rid;
                        "unusable reply ({msg}); retry {garbled} of {}", self.settings.retries);
                }
                Err(e @ Error::Unavailable { .. })
                    if !reconnected && (repeatable || !self.link.sent()) =>
                {
                    reconnected = true;
                    log::info!(bus = bus, device_id = &*label.device, method = &*label.method, rid = &*label.rid;
                        "link failed during a request ({}); reconnecting once", e.reason());
                    self.link.close();
                    let open = tokio::time::timeout(limit, self.link.open()).await;
                    match open {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            self.mark_down(&e);
                            return Err(e);
                        }
                        Err(_) => {
                            let e = Error::unavailable("reconnect timed out");
                            self.mark_down(&e);
                            return Err(e);
                        }
                    }
                }
                Err(e @ Error::Unavailable { .. }) => {
                    self.mark_down(&e);
                    return Err(e);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default queue capacity is documented as a memory bound from these sizes (README,
    /// `queue_capacity`): keep them true.
    #[test]
    fn a_waiting_job_stays_small() {
        assert!(size_of::<Job>() <= 112, "{}", size_of::<Job>());
        assert!(size_of::<Op>() <= 40, "{}", size_of::<Op>());
        assert!(
            size_of::<Result<Vec<Output>, Error>>() <= 32,
            "{}",
            size_of::<Result<Vec<Output>, Error>>()
        );
    }
}

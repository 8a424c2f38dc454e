//! One device's twin task: reads the twin after every connect, applies desired values to the
//! hardware, reads properties from it, and keeps reported properties in step with PATCHes.
//!
//! One request (GET or PATCH) is in flight at a time; each waits for a gateway-wide slot
//! ([`super::Shared`]) and, for a PATCH, for `report_interval` since the last one, so rapid
//! changes go out together. After 429 it backs off as the hub asks of throttled clients (at
//! least 10 s); after an error or no answer within `request_timeout`, with jittered backoff.
//! The reconnect flow is the hub's (`iothub-protocol.md` 5): notifications at or below the
//! GET's desired `$version` are ignored, and a notification that skips a version makes the
//! task read the whole twin again.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::{Id, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::desired::{self, Wanted};
use super::health;
use super::reported::{Patch, Reported};
use super::{Incoming, Leaf, Link, Shared};
use crate::backoff::{self, Backoff};
use crate::chain::chain;
use crate::config::validate::HEALTH_KEY;
use crate::hub::service::{Label, Outbound, Outlet, Reply};
use crate::hub::twin as topics;
use crate::mapping::respond;
use crate::services::methods::MethodStats;
use crate::{logtext, metrics};

/// Notifications kept while the twin is being read.
const MAX_EARLY: usize = 16;

/// A desired value the hardware did not take for a passing reason (503, 504) is tried again
/// this long after, and whenever the unit comes back online.
const RETRY_FAILED: Duration = Duration::from_secs(30);

/// A wait for the next request's gateway-wide slot.
type Slot = Pin<Box<dyn Future<Output = ()> + Send>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ask {
    Get,
    Patch,
}

impl Ask {
    fn name(self) -> &'static str {
        match self {
            Ask::Get => "GET",
            Ask::Patch => "PATCH",
        }
    }
}

struct InFlight {
    rid: String,
    ask: Ask,
    /// What a PATCH carried, to settle when it is answered.
    patch: Patch,
    deadline: Instant,
}

/// A bus job the task started, and what it was for.
enum Job {
    Desired(String),
    Property(usize),
}

enum Done {
    Desired {
        name: String,
        wanted: Wanted,
        result: Result<Value, (u16, String)>,
    },
    Property {
        index: usize,
        result: Result<Value, (u16, String)>,
    },
}

struct Task {
    leaf: Leaf,
    outlet: Outlet,
    shared: Arc<Shared>,
    id: Arc<str>,
    /// The session's subscriptions seen so far (0: never subscribed).
    connection: u64,
    /// The subscribed connection is up: requests can reach the hub.
    up: bool,
    /// Dropped notifications seen so far.
    missed: u64,
    /// The connection whose properties have been read (they are read once per connection).
    read_connection: u64,
    /// Backing off after a 429 until then, across reconnects.
    throttled_until: Option<Instant>,
    /// The twin was read on the current connection.
    synced: bool,
    desired_version: u64,
    /// Notifications that came while the twin was being read: applied after the GET's answer
    /// when newer than it.
    early: Vec<(u64, Map<String, Value>)>,
    /// Notifications were dropped while the twin was read: read it once more.
    read_again: bool,
    inflight: Option<InFlight>,
    rid: u64,
    reported: Reported,
    /// No PATCH before this: changes made meanwhile go out together.
    next_patch: Instant,
    /// No request before this (backing off).
    retry_at: Instant,
    backoff: Backoff,
    /// The newest value asked for each desired property whose write has not started.
    pending: BTreeMap<String, Wanted>,
    /// The full desired value of each mapped property, to apply a notification's merge patch of
    /// an object value to.
    desired_values: BTreeMap<String, Value>,
    /// Values the hardware did not take for a passing reason, to try again.
    failed: BTreeMap<String, Wanted>,
    retry_failed_at: Option<Instant>,
    jobs: BTreeMap<Id, Job>,
    /// When each property is read next; `None`: being read, or only after connects.
    next_read: Vec<Option<Instant>>,
    online: bool,
    since: SystemTime,
}

pub(super) async fn run(
    leaf: Leaf,
    outlet: Outlet,
    shared: Arc<Shared>,
    mut inbox: mpsc::Receiver<Box<Incoming>>,
    mut links: watch::Receiver<Link>,
    stop: CancellationToken,
) {
    let mut up = leaf.device.bus.up_watch();
    let mut down = leaf.device.bus.down_watch();
    let mut stats = leaf.stats.clone();
    let id = leaf.device.id.clone();
    let properties = leaf.twin.properties.len();
    let mut task = Task {
        id,
        outlet,
        shared,
        connection: 0,
        up: false,
        missed: 0,
        read_connection: 0,
        throttled_until: None,
        synced: false,
        desired_version: 0,
        early: Vec::new(),
        read_again: false,
        inflight: None,
        rid: 0,
        reported: Reported::default(),
        next_patch: Instant::now(),
        retry_at: Instant::now(),
        backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
        pending: BTreeMap::new(),
        desired_values: BTreeMap::new(),
        failed: BTreeMap::new(),
        retry_failed_at: None,
        jobs: BTreeMap::new(),
        next_read: vec![None; properties],
        online: false,
        since: SystemTime::now(),
        leaf,
    };
    for (key, value) in &task.leaf.twin.reported {
        task.reported.set(key, value);
    }
    task.health(&up, &down, &stats);
    let mut jobs: JoinSet<Done> = JoinSet::new();
    let mut slot: Option<(Ask, Slot)> = None;
    loop {
        task.start_jobs(&mut jobs);
        if slot
            .as_ref()
            .is_some_and(|(ask, _)| Some(*ask) != task.wants())
        {
            slot = None;
        }
        if slot.is_none()
            && let Some(ask) = task.wants()
        {
            slot = Some((ask, task.slot(ask)));
        }
        let wake = task.wake();
        tokio::select! {
            () = stop.cancelled() => break,
            changed = links.changed() => {
                if changed.is_err() {
                    break;
                }
                let link = *links.borrow_and_update();
                task.link(link);
            }
            Some(incoming) = inbox.recv() => task.incoming(*incoming),
            Some(done) = jobs.join_next_with_id(), if !jobs.is_empty() => task.done(done),
            () = wait(&mut slot) => {
                if let Some((ask, _)) = slot.take()
                    && task.send(ask).await.is_err()
                {
                    // The session has ended: so has the device.
                    break;
                }
            }
            Ok(()) = up.changed() => task.health(&up, &down, &stats),
            Ok(()) = down.changed() => task.health(&up, &down, &stats),
            Ok(()) = stats.changed() => task.health(&up, &down, &stats),
            () = tokio::time::sleep_until(wake) => task.timers(),
        }
    }
}

/// Waits for the slot, if there is one; forever otherwise.
async fn wait(slot: &mut Option<(Ask, Slot)>) {
    match slot {
        Some((_, slot)) => slot.as_mut().await,
        None => std::future::pending().await,
    }
}

impl Task {
    /// Which request the task would send next, if any.
    fn wants(&self) -> Option<Ask> {
        if !self.up || self.inflight.is_some() {
            return None;
        }
        if !self.synced {
            return Some(Ask::Get);
        }
        self.reported.changed().then_some(Ask::Patch)
    }

    /// The wait for a request's turn: backoff and coalescing first, then the gateway-wide slot.
    fn slot(&self, ask: Ask) -> Slot {
        let shared = self.shared.clone();
        let not_before = match ask {
            Ask::Get => self.retry_at,
            Ask::Patch => self.retry_at.max(self.next_patch),
        };
        Box::pin(async move {
            tokio::time::sleep_until(not_before).await;
            match ask {
                Ask::Get => shared.gets.acquire().await,
                Ask::Patch => shared.patches.acquire().await,
            }
        })
    }

    fn wake(&self) -> Instant {
        let far = Instant::now() + Duration::from_secs(86_400);
        self.next_read
            .iter()
            .flatten()
            .copied()
            .chain(self.inflight.as_ref().map(|f| f.deadline))
            .chain(self.retry_failed_at)
            .min()
            .unwrap_or(far)
    }

    /// What the session says of the connection. A new one: whatever was asked on an earlier
    /// connection is lost, and the twin is read afresh, at once unless the hub throttled us. A
    /// lost one: nothing is asked until the next.
    fn link(&mut self, link: Link) {
        if link.connection != self.connection {
            self.connection = link.connection;
            self.synced = false;
            self.inflight = None;
            self.early.clear();
            self.read_again = false;
            self.backoff.reset();
            let now = Instant::now();
            self.retry_at = self.throttled_until.filter(|t| *t > now).unwrap_or(now);
        }
        if !link.up {
            self.inflight = None;
        }
        self.up = link.up;
        if link.missed != self.missed {
            self.missed = link.missed;
            self.resync();
        }
    }

    /// Reads the twin again (a notification skipped a version, or was dropped). A GET already
    /// in flight may have been answered before what was missed: it is followed by another.
    fn resync(&mut self) {
        if self.inflight.as_ref().is_some_and(|f| f.ask == Ask::Get) {
            self.read_again = true;
            return;
        }
        self.synced = false;
        self.early.clear();
    }

    /// leafgate's view of the device, from the bus's state and the method counts.
    fn health(
        &mut self,
        up: &watch::Receiver<bool>,
        down: &watch::Receiver<BTreeSet<u8>>,
        stats: &watch::Receiver<MethodStats>,
    ) {
        let unit = self.leaf.device.unit;
        let online = *up.borrow() && !down.borrow().contains(&unit);
        if online != self.online {
            self.online = online;
            self.since = SystemTime::now();
            if online {
                self.retry_failed();
            }
        }
        let stats = stats.borrow();
        let view = health::View {
            bus: self.leaf.device.bus.id(),
            unit,
            online,
            since: self.since,
            stats: &stats,
        };
        let report = health::report(&view);
        drop(stats);
        self.reported.set(HEALTH_KEY, &report);
    }

    fn next_rid(&mut self) -> String {
        self.rid += 1;
        self.rid.to_string()
    }

    /// Sends the request whose turn it is.
    async fn send(&mut self, ask: Ask) -> Result<(), ()> {
        let id = self.id.clone();
        let rid = self.next_rid();
        let (topic, body, patch) = match ask {
            Ask::Get => (topics::get(&rid), Vec::new(), Patch::default()),
            Ask::Patch => {
                let (mut patch, dropped) = self.reported.patch();
                if !dropped.is_empty() {
                    log::error!(device_id = &*id, service = "twin", rid = &*rid;
                        "device {id}: reported properties {} left out: the twin's reported properties would exceed IoT Hub's {} bytes", dropped.join(", "), crate::config::validate::MAX_REPORTED_BYTES);
                }
                if patch.is_empty() {
                    return Ok(());
                }
                let body = std::mem::take(&mut patch.body);
                (topics::patch_reported(&rid), body, patch)
            }
        };
        let now = Instant::now();
        let deadline = now + self.leaf.twin.settings.request_timeout;
        let label = Label {
            kind: "twin",
            name: ask.name().to_owned(),
            rid: rid.clone(),
            status: 0,
        };
        log::debug!(device_id = &*id, service = "twin", rid = &*rid; "device {id}: twin {} sent", ask.name());
        self.outlet
            .send(Outbound::Reply(Reply {
                topic,
                body,
                deadline,
                label,
            }))
            .await
            .map_err(|_| ())?;
        if ask == Ask::Patch {
            self.next_patch = now + self.leaf.twin.settings.report_interval;
        }
        self.inflight = Some(InFlight {
            rid,
            ask,
            patch,
            deadline,
        });
        Ok(())
    }

    fn incoming(&mut self, incoming: Incoming) {
        match incoming {
            Incoming::Answer { status, rid, body } => self.answer(status, &rid, &body),
            Incoming::Desired { version, body } => self.notification(version, &body),
        }
    }

    fn backing_off(&mut self, ask: Ask, why: &str, rid: &str, throttled: bool) {
        let delay = if throttled {
            self.backoff.next_delay().max(backoff::jitter(
                Duration::from_secs(10),
                Duration::from_secs(15),
            ))
        } else {
            self.backoff.next_delay()
        };
        self.retry_at = Instant::now() + delay;
        if throttled {
            self.throttled_until = Some(self.retry_at);
        }
        let id = &*self.id;
        log::warn!(device_id = id, service = "twin", rid = rid;
            "device {id}: twin {} {why}; retrying in {} ms", ask.name(), delay.as_millis());
    }

    fn answer(&mut self, status: u16, rid: &str, body: &[u8]) {
        let id = self.id.clone();
        let Some(request) = self.inflight.take_if(|f| f.rid == rid) else {
            log::debug!(device_id = &*id, service = "twin", rid = &*logtext::clip(rid); "device {id}: ignoring a twin answer to no request in flight");
            return;
        };
        let ask = request.ask;
        match (ask, status) {
            (Ask::Get, 200) => match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(document)) => {
                    metrics::count(&id, |m| &m.twin_reads);
                    self.read(&document);
                }
                _ => self.backing_off(ask, "answer is not a twin document", rid, false),
            },
            (Ask::Patch, 200 | 204) => {
                metrics::count(&id, |m| &m.twin_reported);
                self.backoff.reset();
                self.reported.accepted(request.patch);
            }
            (_, 429) => self.backing_off(ask, "throttled by IoT Hub (429)", rid, true),
            (Ask::Patch, 400..=499) => {
                let why = logtext::clip_to(&String::from_utf8_lossy(body), 4 * logtext::MAX_CHARS)
                    .into_owned();
                let keys = request.patch.names();
                log::error!(device_id = &*id, service = "twin", rid = rid, status = status;
                    "device {id}: IoT Hub refused reported properties {} ({status}: {why}); not sent again until they change", keys.join(", "));
                self.reported.refused(request.patch);
            }
            (_, status) => self.backing_off(ask, &format!("answered {status}"), rid, false),
        }
    }

    /// The twin as the hub holds it: what reported says and which desired values to apply.
    fn read(&mut self, document: &Map<String, Value>) {
        let id = self.id.clone();
        let empty = Map::new();
        let part = |key: &str| match document.get(key) {
            Some(Value::Object(m)) => m,
            _ => &empty,
        };
        let (desired_doc, reported_doc) = (part("desired"), part("reported"));
        self.backoff.reset();
        self.synced = true;
        self.reported.read(reported_doc);
        self.desired_version = desired::version(desired_doc).unwrap_or(0);
        let mapped = |name: &str| self.leaf.twin.desired.contains_key(name);
        let sync = desired::from_document(desired_doc, |n| reported_doc.get(n).cloned(), mapped);
        let unmapped = desired::unmapped(desired_doc, mapped);
        if !unmapped.is_empty() {
            log::debug!(device_id = &*id, service = "twin"; "device {id}: desired properties {} are not mapped; ignored", logtext::clip(&unmapped.join(", ")));
        }
        self.desired_values = desired_doc
            .iter()
            .filter(|(name, value)| !value.is_null() && mapped(name))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        log::info!(device_id = &*id, service = "twin";
            "device {id}: twin read (desired version {}, {} desired value(s) to apply)", self.desired_version, sync.apply.len());
        for (name, wanted, ack) in sync.reack {
            // Applied with this value before: the acknowledgement moves to this version.
            let description = ack.get("ad").and_then(Value::as_str).unwrap_or("applied");
            let value = ack.get("value").cloned().unwrap_or(wanted.value);
            let ack = desired::ack(value, 200, wanted.version, description);
            self.reported.set(&name, &ack);
        }
        for (name, wanted) in sync.apply {
            self.queue(name, wanted);
        }
        for (version, patch) in std::mem::take(&mut self.early) {
            self.notification(
                Some(version),
                &serde_json::to_vec(&patch).unwrap_or_default(),
            );
        }
        if std::mem::take(&mut self.read_again) {
            self.resync();
        }
        // Properties are read once per connection (not after every GET: a version gap reads
        // the twin again, and the hardware has not changed for it).
        if self.read_connection != self.connection {
            self.read_connection = self.connection;
            let now = Instant::now();
            for (i, next) in self.next_read.iter_mut().enumerate() {
                if !self
                    .jobs
                    .values()
                    .any(|j| matches!(j, Job::Property(k) if *k == i))
                {
                    *next = Some(now);
                }
            }
        }
    }

    fn notification(&mut self, version: Option<u64>, body: &[u8]) {
        let id = self.id.clone();
        let Ok(Value::Object(patch)) = serde_json::from_slice::<Value>(body) else {
            log::warn!(device_id = &*id, service = "twin"; "device {id}: ignoring a desired-property notification that is not a JSON object");
            return;
        };
        let Some(version) = version.or_else(|| desired::version(&patch)) else {
            log::warn!(device_id = &*id, service = "twin"; "device {id}: a desired-property notification without $version; reading the twin again");
            self.resync();
            return;
        };
        if !self.synced {
            if self.early.len() >= MAX_EARLY {
                // A hub pushing this many while the twin is read: its answer is stale already.
                self.early.clear();
                self.read_again = true;
            }
            self.early.push((version, patch));
            return;
        }
        if version <= self.desired_version {
            log::debug!(device_id = &*id, service = "twin"; "device {id}: ignoring desired version {version} (have {})", self.desired_version);
            return;
        }
        if version > self.desired_version + 1 {
            log::info!(device_id = &*id, service = "twin";
                "device {id}: desired version {version} follows {}; reading the twin again for what was skipped", self.desired_version);
            self.resync();
            return;
        }
        self.desired_version = version;
        let mapped = |name: &str| self.leaf.twin.desired.contains_key(name);
        let mut apply = desired::from_patch(&patch, version, mapped);
        // A notification is a merge patch: an object value holds only what changed.
        for (name, wanted) in &mut apply {
            wanted.value = desired::merge(self.desired_values.get(name), &wanted.value);
            self.desired_values
                .insert(name.clone(), wanted.value.clone());
        }
        for (name, value) in &patch {
            if value.is_null() {
                self.desired_values.remove(name);
            }
        }
        let unmapped = desired::unmapped(&patch, mapped);
        if !unmapped.is_empty() {
            log::info!(device_id = &*id, service = "twin"; "device {id}: desired properties {} are not mapped; ignored", logtext::clip(&unmapped.join(", ")));
        }
        for (name, wanted) in apply {
            self.queue(name, wanted);
        }
    }

    /// Queues a desired value; it replaces an older one of the same property that has not
    /// started.
    fn queue(&mut self, name: String, wanted: Wanted) {
        self.failed.remove(&name);
        let id = &*self.id;
        if let Some(older) = self.pending.insert(name.clone(), wanted) {
            log::info!(device_id = id, service = "twin", property = &*name;
                "device {id}: desired {name} of version {} superseded before it was applied", older.version);
        }
    }

    /// Starts the desired writes and property reads that are due.
    fn start_jobs(&mut self, jobs: &mut JoinSet<Done>) {
        let busy: BTreeSet<String> = self
            .jobs
            .values()
            .filter_map(|j| match j {
                Job::Desired(name) => Some(name.clone()),
                Job::Property(_) => None,
            })
            .collect();
        let ready: Vec<String> = self
            .pending
            .keys()
            .filter(|name| !busy.contains(*name))
            .cloned()
            .collect();
        for name in ready {
            let (Some(wanted), Some(method)) = (
                self.pending.remove(&name),
                self.leaf.twin.desired.get(&name).cloned(),
            ) else {
                continue;
            };
            let device = self.leaf.device.clone();
            let job_name = name.clone();
            let handle = jobs.spawn(async move {
                let payload = desired::payload(&job_name, &wanted.value);
                let result = device
                    .apply(&method, &format!("desired {job_name}"), &payload)
                    .await
                    .map_err(|failure| {
                        let (status, _, _) = respond(&failure);
                        (
                            status,
                            logtext::clip_to(&chain(&failure), 4 * logtext::MAX_CHARS).into_owned(),
                        )
                    });
                Done::Desired {
                    name: job_name,
                    wanted,
                    result,
                }
            });
            self.jobs.insert(handle.id(), Job::Desired(name));
        }
        let now = Instant::now();
        for index in 0..self.next_read.len() {
            if self.next_read[index].is_none_or(|at| at > now) {
                continue;
            }
            self.next_read[index] = None;
            let device = self.leaf.device.clone();
            let read = self.leaf.twin.properties[index].read.clone();
            let handle = jobs.spawn(async move {
                let result = device
                    .read(&read, &format!("property {}", read.name))
                    .await
                    .map_err(|failure| {
                        let (status, _, _) = respond(&failure);
                        (
                            status,
                            logtext::clip_to(&chain(&failure), 4 * logtext::MAX_CHARS).into_owned(),
                        )
                    });
                Done::Property { index, result }
            });
            self.jobs.insert(handle.id(), Job::Property(index));
        }
    }

    fn done(&mut self, done: Result<(Id, Done), tokio::task::JoinError>) {
        let id = self.id.clone();
        let done = match done {
            Ok((job, done)) => {
                self.jobs.remove(&job);
                done
            }
            Err(e) => {
                // Cannot happen unless a job panicked; its property is tried again later.
                log::error!(device_id = &*id, service = "twin"; "device {id}: a twin job failed: {e}");
                if let Some(Job::Property(index)) = self.jobs.remove(&e.id()) {
                    self.next_read[index] = Some(Instant::now() + Duration::from_secs(60));
                }
                return;
            }
        };
        match done {
            Done::Desired {
                name,
                wanted,
                result,
            } => {
                let version = wanted.version;
                if let Some(m) = metrics::get() {
                    let status = result.as_ref().map_or_else(|(status, _)| *status, |_| 200);
                    m.twin_desired
                        .get_or_create(&metrics::StatusLabels {
                            device: id.to_string(),
                            status,
                        })
                        .inc();
                }
                let ack = match result {
                    Ok(reply) => {
                        let value = desired::applied_value(&name, &wanted.value, &reply);
                        log::info!(device_id = &*id, service = "twin", property = &*name, status = 200;
                            "device {id}: desired {name} applied (version {version})");
                        desired::ack(value, 200, version, "applied")
                    }
                    Err((status, why)) => {
                        let again =
                            matches!(status, 503 | 504) && !self.pending.contains_key(&name);
                        let retry = if again {
                            "; tried again when the unit answers"
                        } else {
                            ""
                        };
                        log::warn!(device_id = &*id, service = "twin", property = &*name, status = status;
                            "device {id}: desired {name} (version {version}) not applied: {status} {why}{retry}");
                        let ack = desired::ack(wanted.value.clone(), status, version, &why);
                        if again {
                            self.failed.insert(name.clone(), wanted);
                            self.retry_failed_at
                                .get_or_insert(Instant::now() + RETRY_FAILED);
                        }
                        ack
                    }
                };
                self.reported.set(&name, &ack);
            }
            Done::Property { index, result } => {
                let property = &self.leaf.twin.properties[index];
                self.next_read[index] = property.interval.map(|every| Instant::now() + every);
                let name = &property.read.name;
                match result {
                    Ok(Value::Object(fields)) => {
                        for (key, value) in fields {
                            self.reported.set(&key, &value);
                        }
                    }
                    Ok(_) => {}
                    Err((status, why)) => {
                        log::warn!(device_id = &*id, service = "twin", property = &**name, status = status;
                            "device {id}: property {name} not read: {status} {why}");
                    }
                }
            }
        }
    }

    /// Queues again the desired values the hardware did not take for a passing reason.
    fn retry_failed(&mut self) {
        self.retry_failed_at = None;
        for (name, wanted) in std::mem::take(&mut self.failed) {
            self.pending.entry(name).or_insert(wanted);
        }
    }

    fn timers(&mut self) {
        if self.retry_failed_at.is_some_and(|at| at <= Instant::now()) {
            self.retry_failed();
        }
        if let Some(request) = self.inflight.take_if(|f| f.deadline <= Instant::now()) {
            let ms = self.leaf.twin.settings.request_timeout.as_millis();
            self.backing_off(
                request.ask,
                &format!("had no answer within {ms} ms"),
                &request.rid,
                false,
            );
        }
    }
}

//! The device registry and what the emulator observed per device.
//!
//! One entry per device id holds the identity (key, enabled), the connection currently attached
//! and a `watch` channel carrying the device's [`DeviceStats`], so tests await a change instead of
//! polling. Entries also exist for ids that were only seen in refused CONNECTs (capped, so a
//! client inventing ids cannot grow the map without bound).
//!
//! Locking: std mutexes, held for a few field updates and never across an `.await`. The order is
//! always registry map, then entry state (or the entry's message log), then the entry's `watch`
//! channel, so thousands of connection tasks neither deadlock nor queue behind each other for
//! long.
//!
//! A registered device's twin and cloud-to-device queue live in its entry state too, under the
//! same lock, so a desired-property change and its push to the device, or a queued message and
//! its delivery, happen in one critical section and in order.
//!
//! The registry's state and every operation on it stay in this file and its `twin` and `c2d`
//! children (which extend [`Registry`] under the same locking order); the data it reports
//! (reasons, stats, events) and the handle it keeps on a connection have their own files.

mod c2d;
mod connection;
mod reason;
mod stats;
mod twin;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{broadcast, watch};

use super::topic_filter::filter_matches;
use super::wire::ConnectRecord;
use crate::c2d::{C2dQueue, DEFAULT_C2D_LOCK_TIMEOUT, DEFAULT_C2D_MAX_DELIVERY_COUNT};
pub(crate) use crate::credential::Credential;
use crate::lock::lock;
use crate::telemetry::{D2cMessage, MessageLog, Received};
use crate::twin::TwinDoc;

pub(crate) use self::connection::{Connection, Outbound};
pub use self::reason::{DisconnectReason, RefusalReason};
pub use self::stats::{DeviceStats, Event, Subscription};
pub(crate) use self::twin::{ServiceTwin, TwinUpdate};

/// How many ids that are not registered get their own stats entry (refused CONNECTs).
const MAX_UNREGISTERED_ENTRIES: usize = 4096;

/// Capacity of the event broadcast; a receiver that falls further behind sees `Lagged`.
const EVENT_CAPACITY: usize = 1024;

#[derive(Clone)]
struct Identity {
    credential: Credential,
    enabled: bool,
}

struct EntryState {
    identity: Option<Identity>,
    current: Option<Arc<Connection>>,
    /// The persistent session's subscriptions (MQTT 3.1.1 CleanSession 0), kept across
    /// connections; `None` when the device has no session (never connected with CleanSession 0,
    /// or its last connection asked for a clean one).
    session: Option<Vec<Subscription>>,
    /// The device twin: created with the identity, kept across connections and re-keying,
    /// dropped with the identity.
    twin: TwinDoc,
    /// Cloud-to-device messages, likewise.
    c2d: C2dQueue,
}

/// What a new connection resumes from the device's persistent session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Resumed {
    /// CONNACK's session-present flag.
    pub(crate) session_present: bool,
    /// Subscriptions in force from the start, without a SUBSCRIBE.
    pub(crate) subscriptions: Vec<Subscription>,
}

/// One device id: identity, attached connection, observations.
pub(crate) struct DeviceEntry {
    id: String,
    state: Mutex<EntryState>,
    stats: watch::Sender<DeviceStats>,
    /// Its device-to-cloud messages. Locked before `stats`, never together with `state`.
    messages: MessageLog,
    /// Bumped after every change of the twin's reported properties.
    twin_changed: watch::Sender<u64>,
    /// Bumped after every change of the cloud-to-device queue (a message queued, delivered,
    /// completed, unlocked or dead-lettered); the connection task delivers on it.
    c2d_changed: watch::Sender<u64>,
}

/// Where a method request for a device can go right now.
pub(crate) enum Route {
    /// Online and subscribed to methods.
    Ready(Arc<Connection>),
    /// Registered and enabled, but not (yet) reachable.
    NotReady,
    /// Removed or disabled meanwhile.
    Gone,
}

impl DeviceEntry {
    fn new(id: &str) -> Self {
        DeviceEntry {
            id: id.to_owned(),
            state: Mutex::new(EntryState {
                identity: None,
                current: None,
                session: None,
                twin: TwinDoc::default(),
                c2d: C2dQueue::default(),
            }),
            stats: watch::Sender::new(DeviceStats::default()),
            messages: MessageLog::default(),
            twin_changed: watch::Sender::new(0),
            c2d_changed: watch::Sender::new(0),
        }
    }

    pub(crate) fn subscribe(&self) -> watch::Receiver<DeviceStats> {
        self.stats.subscribe()
    }

    /// Where a request on `topic` can go: the current connection if one of its subscriptions
    /// matches the topic.
    pub(crate) fn route(&self, topic: &str) -> Route {
        self.route_locked(&lock(&self.state), topic)
    }

    /// [`DeviceEntry::route`] with the state already locked.
    fn route_locked(&self, state: &EntryState, topic: &str) -> Route {
        match &state.identity {
            Some(identity) if identity.enabled => {}
            _ => return Route::Gone,
        }
        let subscribed = || {
            self.stats
                .borrow()
                .subscriptions
                .iter()
                .any(|s| filter_matches(&s.filter, topic))
        };
        match &state.current {
            Some(conn) if subscribed() => Route::Ready(Arc::clone(conn)),
            _ => Route::NotReady,
        }
    }

    fn is_registered_and_enabled(&self) -> bool {
        lock(&self.state)
            .identity
            .as_ref()
            .is_some_and(|identity| identity.enabled)
    }
}

/// All device entries plus the event stream.
pub(crate) struct Registry {
    entries: Mutex<Entries>,
    events: broadcast::Sender<Event>,
    next_connection: AtomicU64,
    /// Device-to-cloud messages kept per device.
    telemetry_capacity: usize,
    /// How long a delivered cloud-to-device message stays locked without a PUBACK.
    c2d_lock_timeout: Duration,
    /// Deliveries of a cloud-to-device message before it is dead-lettered.
    c2d_max_delivery_count: u32,
}

#[derive(Default)]
struct Entries {
    map: HashMap<String, Arc<DeviceEntry>>,
    unregistered: usize,
}

impl Registry {
    /// A registry keeping up to `telemetry_capacity` device-to-cloud messages per device.
    pub(crate) fn new(telemetry_capacity: usize) -> Self {
        Registry {
            entries: Mutex::new(Entries::default()),
            events: broadcast::Sender::new(EVENT_CAPACITY),
            next_connection: AtomicU64::new(1),
            telemetry_capacity,
            c2d_lock_timeout: DEFAULT_C2D_LOCK_TIMEOUT,
            c2d_max_delivery_count: DEFAULT_C2D_MAX_DELIVERY_COUNT,
        }
    }

    /// The same registry with these cloud-to-device lock timeout and maximum delivery count.
    #[must_use]
    pub(crate) fn with_c2d(mut self, lock_timeout: Duration, max_delivery_count: u32) -> Self {
        self.c2d_lock_timeout = lock_timeout;
        self.c2d_max_delivery_count = max_delivery_count;
        self
    }

    pub(crate) fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Sends an event if anyone listens; building it is skipped otherwise.
    pub(crate) fn emit(&self, event: impl FnOnce() -> Event) {
        if self.events.receiver_count() > 0 {
            // Only fails when the last receiver went away meanwhile: nobody to tell.
            let _ = self.events.send(event());
        }
    }

    /// The entry for `id`, created (unregistered) if missing. Used by explicit API calls, so not
    /// capped.
    pub(crate) fn entry(&self, id: &str) -> Arc<DeviceEntry> {
        let mut entries = lock(&self.entries);
        if let Some(entry) = entries.map.get(id) {
            return Arc::clone(entry);
        }
        let entry = Arc::new(DeviceEntry::new(id));
        entries.map.insert(id.to_owned(), Arc::clone(&entry));
        entries.unregistered += 1;
        entry
    }

    fn existing(&self, id: &str) -> Option<Arc<DeviceEntry>> {
        lock(&self.entries).map.get(id).cloned()
    }

    /// The entry for a registered, enabled device.
    pub(crate) fn registered(&self, id: &str) -> Option<Arc<DeviceEntry>> {
        self.existing(id)
            .filter(|entry| entry.is_registered_and_enabled())
    }

    /// Registers `id` with `credential`, or gives a registered device a new one (re-keying keeps
    /// its twin, queue and connection).
    pub(crate) fn add_device(&self, id: &str, credential: Credential) {
        let entry = {
            let mut entries = lock(&self.entries);
            let entry = match entries.map.get(id) {
                Some(entry) => Arc::clone(entry),
                None => {
                    let entry = Arc::new(DeviceEntry::new(id));
                    entries.map.insert(id.to_owned(), Arc::clone(&entry));
                    entries.unregistered += 1;
                    entry
                }
            };
            let mut state = lock(&entry.state);
            if state.identity.is_none() {
                entries.unregistered = entries.unregistered.saturating_sub(1);
                // A new registration starts with a new twin and queue; re-keying keeps them.
                state.twin = TwinDoc::default();
                state.c2d = C2dQueue::default();
            }
            state.identity = Some(Identity {
                credential,
                enabled: true,
            });
            drop(state);
            entry
        };
        entry.stats.send_modify(|stats| {
            stats.registered = true;
            stats.enabled = true;
        });
    }

    /// Removes the identity (stats stay) and closes its connection. Returns whether it existed.
    pub(crate) fn remove_device(&self, id: &str) -> bool {
        let mut entries = lock(&self.entries);
        let Some(entry) = entries.map.get(id).cloned() else {
            return false;
        };
        let mut state = lock(&entry.state);
        if state.identity.take().is_none() {
            return false;
        }
        state.session = None;
        state.twin = TwinDoc::default();
        state.c2d = C2dQueue::default();
        entries.unregistered += 1;
        drop(entries);
        if let Some(conn) = &state.current {
            conn.kick(DisconnectReason::DeviceRemoved);
        }
        entry.c2d_changed.send_modify(|n| *n = n.wrapping_add(1));
        entry.stats.send_modify(|stats| {
            stats.registered = false;
            stats.enabled = false;
        });
        true
    }

    /// Enables or disables a registered device; disabling closes its connection, as the hub
    /// does. Returns false when the device is not registered.
    pub(crate) fn set_device_enabled(&self, id: &str, enabled: bool) -> bool {
        let Some(entry) = self.existing(id) else {
            return false;
        };
        let state = &mut *lock(&entry.state);
        let Some(identity) = state.identity.as_mut() else {
            return false;
        };
        identity.enabled = enabled;
        if !enabled && let Some(conn) = &state.current {
            conn.kick(DisconnectReason::DeviceDisabled);
        }
        entry.stats.send_modify(|stats| stats.enabled = enabled);
        true
    }

    /// Closes `id`'s current connection as [`DisconnectReason::Dropped`]; false if it has none.
    pub(crate) fn drop_connection(&self, id: &str) -> bool {
        let Some(entry) = self.existing(id) else {
            return false;
        };
        let state = lock(&entry.state);
        match &state.current {
            Some(conn) => {
                conn.kick(DisconnectReason::Dropped);
                true
            }
            None => false,
        }
    }

    /// The credential of a registered, enabled device, for verifying its CONNECT.
    pub(crate) fn device_credential(
        &self,
        id: &str,
    ) -> Result<(Arc<DeviceEntry>, Credential), RefusalReason> {
        let entry = self.existing(id).ok_or(RefusalReason::UnknownDevice)?;
        let state = lock(&entry.state);
        let identity = state
            .identity
            .as_ref()
            .ok_or(RefusalReason::UnknownDevice)?;
        if !identity.enabled {
            return Err(RefusalReason::DeviceDisabled);
        }
        let credential = identity.credential.clone();
        drop(state);
        Ok((entry, credential))
    }

    /// The credential of a registered device (for connection strings in tests and the demo).
    pub(crate) fn credential_of(&self, id: &str) -> Option<Credential> {
        let entry = self.existing(id)?;
        let state = lock(&entry.state);
        state
            .identity
            .as_ref()
            .map(|identity| identity.credential.clone())
    }

    /// The entry for a client id a device sent, created (unregistered) if missing while fewer
    /// than [`MAX_UNREGISTERED_ENTRIES`] exist, so invented ids cannot grow the map without bound.
    fn entry_capped(&self, client_id: &str) -> Option<Arc<DeviceEntry>> {
        let mut entries = lock(&self.entries);
        match entries.map.get(client_id) {
            Some(entry) => Some(Arc::clone(entry)),
            None if entries.unregistered < MAX_UNREGISTERED_ENTRIES && !client_id.is_empty() => {
                let entry = Arc::new(DeviceEntry::new(client_id));
                entries.map.insert(client_id.to_owned(), Arc::clone(&entry));
                entries.unregistered += 1;
                Some(entry)
            }
            None => None,
        }
    }

    /// Keeps what a CONNECT carried (before it is checked) in the client id's stats.
    pub(crate) fn record_connect(&self, record: ConnectRecord) {
        if let Some(entry) = self.entry_capped(&record.client_id) {
            entry
                .stats
                .send_modify(|stats| stats.last_connect = Some(record));
        }
    }

    pub(crate) fn record_refusal(&self, client_id: &str, reason: &RefusalReason) {
        if let Some(entry) = self.entry_capped(client_id) {
            entry.stats.send_modify(|stats| {
                stats.connects_refused += 1;
                stats.last_refusal = Some(reason.clone());
            });
        }
        self.emit(|| Event::Refused {
            client_id: client_id.to_owned(),
            reason: reason.clone(),
        });
    }

    /// Makes `conn` the device's connection, closing the older one (one connection per
    /// identity), and starts or resumes its session: with `clean_session` any stored session is
    /// discarded, without it the stored subscriptions are resumed (MQTT 3.1.1 section 3.1.2.4).
    /// Fails if the device was removed or disabled since its key was checked.
    pub(crate) fn attach(
        &self,
        entry: &DeviceEntry,
        conn: Arc<Connection>,
        clean_session: bool,
    ) -> Result<Resumed, RefusalReason> {
        let mut state = lock(&entry.state);
        match &state.identity {
            None => return Err(RefusalReason::UnknownDevice),
            Some(identity) if !identity.enabled => return Err(RefusalReason::DeviceDisabled),
            Some(_) => {}
        }
        let id = conn.id;
        if let Some(old) = state.current.replace(conn) {
            old.kick(DisconnectReason::TakenOver);
        }
        let resumed = if clean_session {
            state.session = None;
            Resumed::default()
        } else if let Some(subscriptions) = &state.session {
            Resumed {
                session_present: true,
                subscriptions: subscriptions.clone(),
            }
        } else {
            state.session = Some(Vec::new());
            Resumed::default()
        };
        entry.stats.send_modify(|stats| {
            stats.online = true;
            stats.connection = Some(id);
            stats.connects_accepted += 1;
            stats.subscriptions.clear();
            stats.subscribe_requests.clear();
            stats.methods_subscribed = false;
        });
        drop(state);
        self.emit(|| Event::Connected {
            device: entry.id.clone(),
            connection: id,
        });
        Ok(resumed)
    }

    /// Records the end of connection `id`; clears the online state only if it is still the
    /// device's current connection (a takeover already replaced it otherwise).
    pub(crate) fn detach(&self, entry: &DeviceEntry, id: u64, reason: &DisconnectReason) {
        let mut state = lock(&entry.state);
        let current = state.current.as_ref().is_some_and(|conn| conn.id == id);
        if current {
            state.current = None;
        }
        entry.stats.send_modify(|stats| {
            stats.disconnects += 1;
            stats.last_disconnect = Some(reason.clone());
            if current {
                stats.online = false;
                stats.connection = None;
                stats.subscriptions.clear();
                stats.methods_subscribed = false;
            }
        });
        drop(state);
        self.emit(|| Event::Disconnected {
            device: entry.id.clone(),
            connection: id,
            reason: reason.clone(),
        });
    }

    /// Records the filters and QoS a SUBSCRIBE of connection `id` asked for, if it is still the
    /// current one.
    pub(crate) fn record_subscribe(
        &self,
        entry: &DeviceEntry,
        id: u64,
        requested: Vec<Subscription>,
    ) {
        let state = lock(&entry.state);
        if state.current.as_ref().is_none_or(|conn| conn.id != id) {
            return;
        }
        entry
            .stats
            .send_modify(|stats| stats.subscribe_requests.push(requested));
    }

    /// Publishes connection `id`'s subscriptions, if it is still the current one, and keeps
    /// them in the device's session when the connection is `persistent` (CleanSession 0).
    pub(crate) fn set_subscriptions(
        &self,
        entry: &DeviceEntry,
        id: u64,
        subscriptions: &[Subscription],
        methods: bool,
        persistent: bool,
    ) {
        let mut state = lock(&entry.state);
        if state.current.as_ref().is_none_or(|conn| conn.id != id) {
            return;
        }
        if persistent {
            state.session = Some(subscriptions.to_vec());
        }
        entry.stats.send_modify(|stats| {
            stats.subscriptions = subscriptions.to_vec();
            stats.methods_subscribed = methods;
        });
        drop(state);
        self.emit(|| Event::Subscribed {
            device: entry.id.clone(),
            subscriptions: subscriptions.to_vec(),
        });
    }

    pub(crate) fn record_method_request(&self, entry: &DeviceEntry, method: &str, rid: u64) {
        entry.stats.send_modify(|stats| stats.method_requests += 1);
        self.emit(|| Event::MethodRequest {
            device: entry.id.clone(),
            method: method.to_owned(),
            rid,
        });
    }

    pub(crate) fn record_method_response(
        &self,
        entry: &DeviceEntry,
        rid: &str,
        status: u16,
        qos: u8,
        accepted: bool,
    ) {
        entry.stats.send_modify(|stats| {
            stats.method_responses += 1;
            stats.last_method_response_qos = Some(qos);
            if !accepted {
                stats.method_responses_ignored += 1;
            }
        });
        self.emit(|| Event::MethodResponse {
            device: entry.id.clone(),
            rid: rid.to_owned(),
            status,
            accepted,
        });
    }

    /// Keeps a device-to-cloud message in the device's log and counts it. The stats change
    /// under the log's lock, so whoever sees `telemetry_messages` reach n finds n messages
    /// numbered in the log.
    pub(crate) fn record_telemetry(&self, entry: &DeviceEntry, topic: &str, received: Received) {
        let payload = received.body.clone();
        let mut log = entry.messages.lock();
        let appended = log.append(received, self.telemetry_capacity);
        entry.stats.send_modify(|stats| {
            stats.telemetry_messages += 1;
            stats.telemetry_bytes += payload.len() as u64;
            stats.telemetry_duplicates += u64::from(appended.duplicate);
            stats.telemetry_dropped += appended.dropped;
        });
        drop(log);
        self.emit(|| Event::Telemetry {
            device: entry.id.clone(),
            topic: topic.to_owned(),
            payload,
        });
    }

    /// `id`'s kept messages numbered `since` or later (at most `limit`), with the number the
    /// next message will get and how many were dropped for room; `None` for an id never seen.
    pub(crate) fn telemetry(
        &self,
        id: &str,
        since: u64,
        limit: usize,
    ) -> Option<(Vec<D2cMessage>, u64, u64)> {
        let entry = self.existing(id)?;
        let log = entry.messages.lock();
        Some((log.since(since, limit), log.next(), log.dropped()))
    }

    pub(crate) fn snapshot(&self, id: &str) -> DeviceStats {
        self.existing(id)
            .map(|entry| entry.stats.borrow().clone())
            .unwrap_or_default()
    }

    pub(crate) fn all(&self) -> BTreeMap<String, DeviceStats> {
        let entries: Vec<Arc<DeviceEntry>> = lock(&self.entries).map.values().cloned().collect();
        entries
            .iter()
            .map(|entry| (entry.id.clone(), entry.stats.borrow().clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sas::Key;
    use tokio::sync::mpsc;
    use tokio_util::sync::CancellationToken;

    fn key() -> Key {
        Key::from_base64("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap()
    }

    fn conn(registry: &Registry) -> Arc<Connection> {
        let (tx, _rx) = mpsc::channel(1);
        Arc::new(Connection::new(
            registry.next_connection_id(),
            tx,
            CancellationToken::new(),
        ))
    }

    #[test]
    fn attach_kicks_the_older_connection_and_detach_of_it_keeps_the_device_online() {
        let registry = Registry::new(10);
        registry.add_device("d", Credential::Sas(key()));
        let (entry, _) = registry.device_credential("d").unwrap();
        let first = conn(&registry);
        let second = conn(&registry);
        registry.attach(&entry, Arc::clone(&first), true).unwrap();
        registry.attach(&entry, Arc::clone(&second), true).unwrap();
        assert!(first.kill_token().is_cancelled());
        assert_eq!(first.kill_reason(), Some(DisconnectReason::TakenOver));
        registry.detach(&entry, first.id, &DisconnectReason::TakenOver);
        let stats = registry.snapshot("d");
        assert!(stats.online);
        assert_eq!(stats.connection, Some(second.id));
        assert_eq!((stats.connects_accepted, stats.disconnects), (2, 1));
        registry.detach(&entry, second.id, &DisconnectReason::ClientDisconnect);
        assert!(!registry.snapshot("d").online);
    }

    #[test]
    fn removing_or_disabling_refuses_and_closes() {
        let registry = Registry::new(10);
        registry.add_device("d", Credential::Sas(key()));
        let (entry, _) = registry.device_credential("d").unwrap();
        let c = conn(&registry);
        registry.attach(&entry, Arc::clone(&c), true).unwrap();
        assert!(registry.set_device_enabled("d", false));
        assert_eq!(c.kill_reason(), Some(DisconnectReason::DeviceDisabled));
        assert_eq!(
            registry.device_credential("d").err(),
            Some(RefusalReason::DeviceDisabled)
        );
        assert!(registry.remove_device("d"));
        assert!(!registry.remove_device("d"));
        assert_eq!(
            registry.device_credential("d").err(),
            Some(RefusalReason::UnknownDevice)
        );
        assert_eq!(
            registry.attach(&entry, conn(&registry), true).err(),
            Some(RefusalReason::UnknownDevice)
        );
        assert!(!registry.set_device_enabled("nope", true));
    }

    #[test]
    fn a_persistent_session_keeps_subscriptions_until_a_clean_one_or_removal() {
        let registry = Registry::new(10);
        registry.add_device("d", Credential::Sas(key()));
        let (entry, _) = registry.device_credential("d").unwrap();
        let methods = vec![Subscription {
            filter: "$iothub/methods/POST/#".to_owned(),
            qos: 1,
        }];
        let first = conn(&registry);
        assert_eq!(
            registry.attach(&entry, Arc::clone(&first), false).unwrap(),
            Resumed::default()
        );
        registry.set_subscriptions(&entry, first.id, &methods, true, true);
        registry.detach(&entry, first.id, &DisconnectReason::Dropped);
        // CleanSession 0 again: the subscriptions are back, session present.
        let second = conn(&registry);
        let resumed = registry.attach(&entry, Arc::clone(&second), false).unwrap();
        assert_eq!(
            resumed,
            Resumed {
                session_present: true,
                subscriptions: methods.clone(),
            }
        );
        // CleanSession 1 discards the session, for the next connection too.
        registry.detach(&entry, second.id, &DisconnectReason::Dropped);
        assert_eq!(
            registry.attach(&entry, conn(&registry), true).unwrap(),
            Resumed::default()
        );
        assert_eq!(
            registry.attach(&entry, conn(&registry), false).unwrap(),
            Resumed::default()
        );
        // A session does not outlive the device's registration.
        let third = conn(&registry);
        registry.attach(&entry, Arc::clone(&third), false).unwrap();
        registry.set_subscriptions(&entry, third.id, &methods, true, true);
        registry.remove_device("d");
        registry.add_device("d", Credential::Sas(key()));
        let (entry, _) = registry.device_credential("d").unwrap();
        assert_eq!(
            registry.attach(&entry, conn(&registry), false).unwrap(),
            Resumed::default()
        );
    }

    #[test]
    fn refusals_for_invented_ids_are_capped() {
        let registry = Registry::new(10);
        for i in 0..MAX_UNREGISTERED_ENTRIES + 10 {
            registry.record_refusal(&format!("ghost-{i}"), &RefusalReason::UnknownDevice);
        }
        assert_eq!(registry.all().len(), MAX_UNREGISTERED_ENTRIES);
        assert_eq!(registry.snapshot("ghost-0").connects_refused, 1);
    }
}

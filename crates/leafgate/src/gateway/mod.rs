//! The supervisor: builds bus actors, each device's services and its session from a config,
//! runs them, applies a reloaded config by restarting only what changed, and owns shutdown (stop
//! taking requests, let in-flight ones finish, disconnect).
//!
//! - [`reload`]: what a new config changes (pure).
//! - [`service`]: the daemon around it: signals, systemd notifications, watchdog.
//!
//! Restarts never overlap a device with itself: the new session of a restarted device connects
//! only after the old one drained (methods in flight answered, DISCONNECT sent), because IoT Hub
//! keeps one connection per device id and would cut the old one, replies and all. Likewise a
//! restarted bus opens its line only after every old device on it finished and the old actor
//! let go of the line.

pub mod reload;
pub mod service;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus;
use crate::config::schema::BusKind;
use crate::config::{self, Config};
use crate::hub::limiter::Pacer;
use crate::hub::presence::Presence;
use crate::hub::service::Service;
use crate::hub::{session, tls};
use crate::services::control::{self, Registry};
use crate::services::methods::MethodStats;
use crate::services::methods::{self, Methods};
use crate::services::{c2d, telemetry, twin};
pub use reload::HubIdentity;
use reload::Identity;
pub use reload::Plan;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot set up TLS")]
    Tls(#[from] tls::Error),
}

/// Time to disconnect every session after the last method finished.
const DISCONNECT_TIME: Duration = Duration::from_secs(2);

/// A running bus actor.
struct RunningBus {
    config: config::Bus,
    kind: BusKind,
    handle: bus::Handle,
    stop: CancellationToken,
    /// Cancelled once the actor (and any predecessor) let go of the transport.
    done: CancellationToken,
}

/// A running device session.
struct RunningDevice {
    bus: String,
    identity: Identity,
    longest_method: Duration,
    stop: CancellationToken,
    /// Its telemetry pollers' token (a child of `stop`), when it has telemetry groups.
    polling: Option<CancellationToken>,
    /// Cancelled once the session (and any predecessor) ended: replies sent, disconnected.
    done: CancellationToken,
}

/// A reloaded config with its files read, ready for [`Gateway::apply`].
pub struct Prepared {
    config: Config,
    hub: HubIdentity,
    /// New TLS settings, when `[hub]` changed.
    tls: Option<tls::Trust>,
}

impl Prepared {
    /// The new config's `[log] level`.
    #[must_use]
    pub fn log_level(&self) -> log::LevelFilter {
        self.config.log_level
    }

    /// The new config's `[metrics] listen`.
    #[must_use]
    pub fn metrics(&self) -> Option<std::net::SocketAddr> {
        self.config.metrics
    }

    /// The new config's `[control] socket`.
    #[must_use]
    pub fn control(&self) -> Option<&std::path::Path> {
        self.config.control.as_deref()
    }
}

/// A running gateway.
pub struct Gateway {
    shared: Arc<session::Shared>,
    /// What every device's telemetry shares, with the `[telemetry]` it was built from. A
    /// changed `[telemetry]` applies to devices started after the reload.
    telemetry: (config::Telemetry, Arc<telemetry::Shared>),
    /// Opened with the first device that has telemetry, for the life of the process.
    store: Option<(telemetry::store::Settings, telemetry::store::Store)>,
    /// What every device's twin shares (gateway-wide pacing), with the `[twin]` it was built
    /// from; built with the first device that has a twin, again when `[twin]` changes.
    twin: Option<(config::TwinSettings, Arc<twin::Shared>)>,
    hub: HubIdentity,
    connected: Arc<AtomicUsize>,
    /// Parent of every generation's `Shared::draining`.
    draining: CancellationToken,
    sessions: TaskTracker,
    bus_tasks: TaskTracker,
    buses: BTreeMap<String, RunningBus>,
    devices: BTreeMap<String, RunningDevice>,
    /// What the control socket sees: kept in step with `buses` and `devices`.
    registry: Arc<Registry>,
}

fn new_telemetry(config: &config::Telemetry) -> (config::Telemetry, Arc<telemetry::Shared>) {
    // Message ids are `{run}-{n}`: the run part is this process's start in ms (base 36), so a
    // restarted gateway never reuses an id the back end may have seen.
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let shared = telemetry::Shared {
        pacer: Pacer::new(config.max_messages_per_s),
        window: config.window,
        run_id: base36(started).into(),
    };
    (config.clone(), Arc::new(shared))
}

fn store_settings(config: &config::Telemetry) -> telemetry::store::Settings {
    let window = usize::from(config.window);
    telemetry::store::Settings {
        path: config.store.clone(),
        commit_interval: config.commit_interval,
        max_bytes: config.store_max_bytes,
        max_age: config.store_max_age,
        limits: telemetry::backlog::Limits {
            memory: config.backlog,
            // The sender's window in flight plus as many ready behind it.
            head: (2 * window).max(8),
        },
    }
}

fn base36(mut n: u128) -> String {
    let digits = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(digits[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

fn new_shared(
    hub: &config::Hub,
    tls: tls::Trust,
    connected: &Arc<AtomicUsize>,
    draining: &CancellationToken,
) -> Arc<session::Shared> {
    Arc::new(session::Shared {
        hub: hub.clone(),
        tls,
        pacer: Pacer::new(hub.max_connects_per_s),
        registrations: Pacer::new(
            hub.provisioning
                .as_ref()
                .map_or(1, |p| p.max_registrations_per_s),
        ),
        connected: connected.clone(),
        draining: draining.child_token(),
    })
}

impl Gateway {
    /// Starts every bus actor and device session. Returns once all are started (not connected).
    ///
    /// # Errors
    /// When the TLS settings cannot be built.
    pub fn start(config: &Config) -> Result<Gateway, Error> {
        let tls = tls::trust(config.hub.ca_file.as_deref())?;
        let connected = Arc::new(AtomicUsize::new(0));
        let draining = CancellationToken::new();
        let mut gateway = Gateway {
            shared: new_shared(&config.hub, tls, &connected, &draining),
            telemetry: new_telemetry(&config.telemetry),
            store: None,
            twin: None,
            hub: HubIdentity::of(&config.hub),
            connected,
            draining,
            sessions: TaskTracker::new(),
            bus_tasks: TaskTracker::new(),
            buses: BTreeMap::new(),
            devices: BTreeMap::new(),
            registry: Arc::new(Registry::new()),
        };
        for b in &config.buses {
            let running = gateway.spawn_bus(b, None);
            gateway.buses.insert(b.id.clone(), running);
        }
        for d in &config.devices {
            if let Some(running) = gateway.spawn_device(d, None) {
                gateway.devices.insert(d.id.clone(), running);
            }
        }
        log::info!(
            "started {} device session(s) on {} bus(es)",
            gateway.devices.len(),
            gateway.buses.len()
        );
        Ok(gateway)
    }

    /// Starts a bus actor; with `after`, it touches the transport only once `after` is cancelled
    /// (its predecessor let go of it).
    fn spawn_bus(&self, config: &config::Bus, after: Option<CancellationToken>) -> RunningBus {
        let stop = CancellationToken::new();
        let done = CancellationToken::new();
        let gate = after.clone();
        let (handle, task) = bus::start_after(config, stop.clone(), async move {
            if let Some(previous) = gate {
                previous.cancelled().await;
            }
        });
        let done_guard = done.clone().drop_guard();
        self.bus_tasks.spawn(async move {
            let _done = done_guard;
            let _ = task.await;
            // Stopped before its gate opened: the predecessor may still hold the line.
            if let Some(previous) = after {
                previous.cancelled().await;
            }
        });
        self.registry.add_bus(
            &config.id,
            control::registry::Bus {
                kind: config.spec.kind(),
                handle: handle.clone(),
            },
        );
        RunningBus {
            config: config.clone(),
            kind: config.spec.kind(),
            handle,
            stop,
            done,
        }
    }

    /// The twin pacing for `settings`: the running one, or a new one when `[twin]` changed.
    fn twin_shared(&mut self, settings: &config::TwinSettings) -> Arc<twin::Shared> {
        match &self.twin {
            Some((current, shared)) if current == settings => shared.clone(),
            _ => {
                let shared = Arc::new(twin::Shared::new(settings));
                self.twin = Some((settings.clone(), shared.clone()));
                shared
            }
        }
    }

    /// Starts a device session on its (already running) bus; with `after`, it connects only once
    /// `after` is cancelled (the previous session of the same id is gone).
    fn spawn_device(
        &mut self,
        config: &config::Device,
        after: Option<CancellationToken>,
    ) -> Option<RunningDevice> {
        let store = if config.telemetry.is_empty() {
            None
        } else {
            Some(self.store().clone())
        };
        let twin_shared = config.twin.as_ref().map(|t| self.twin_shared(&t.settings));
        // Validation guarantees the bus exists.
        let bus = self.buses.get(&config.bus)?;
        let id: Arc<str> = config.id.as_str().into();
        let (stats, stats_rx) = match &config.twin {
            Some(_) => {
                let (tx, rx) = tokio::sync::watch::channel(MethodStats::default());
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        let methods = Methods::new(methods::Device {
            id: id.clone(),
            unit: config.unit,
            bus_kind: bus.kind,
            bus: bus.handle.clone(),
            methods: config.methods.clone(),
            raw_methods: config.raw_methods,
            max_payload_bytes: self.shared.hub.max_payload_bytes,
            stats,
            latency: crate::metrics::get()
                .map(|m| m.method_seconds.get_or_create_owned(&m.device(&id))),
        });
        let c2d = config
            .c2d
            .clone()
            .map(|settings| (methods.device().clone(), settings));
        let twin_leaf = match (&config.twin, stats_rx) {
            (Some(t), Some(stats)) => Some(twin::Leaf {
                device: methods.device().clone(),
                twin: t.clone(),
                stats,
            }),
            _ => None,
        };
        let leaf = (!config.telemetry.is_empty()).then(|| telemetry::Leaf {
            device_id: id.clone(),
            unit: config.unit,
            bus: bus.handle.clone(),
            groups: config.telemetry.clone(),
        });
        let presence = Arc::new(Presence::new());
        self.registry.add_device(
            &config.id,
            control::registry::Device {
                methods: methods.device().clone(),
                groups: config.telemetry.clone(),
                presence: presence.clone(),
                bus: config.bus.clone(),
            },
        );
        let credentials = session::Credentials {
            device_id: id,
            auth: config.auth.clone(),
            transport: config.transport.unwrap_or(self.shared.hub.transport),
            provisioned: config.provisioned,
            model_id: config.model_id.as_deref().map(Arc::from),
            presence,
        };
        let tasks = self.sessions.clone();
        let telemetry = self.telemetry.1.clone();
        // What a stop may have to wait for: its methods, its desired-property writes, and the
        // raw methods' deadline only when it has them.
        let longest_method = config
            .methods
            .values()
            .map(|m| m.timeout)
            .chain(
                config
                    .twin
                    .iter()
                    .flat_map(|t| t.desired.values().map(|m| m.timeout)),
            )
            .chain(config.raw_methods)
            .fold(Duration::ZERO, Duration::max);
        let stop = CancellationToken::new();
        let polling = leaf.as_ref().map(|_| stop.child_token());
        let done = CancellationToken::new();
        let done_guard = done.clone().drop_guard();
        let shared = self.shared.clone();
        let session_stop = stop.clone();
        let session_polling = polling.clone();
        self.sessions.spawn(async move {
            let _done = done_guard;
            if let Some(previous) = after {
                previous.cancelled().await;
            }
            if !session_stop.is_cancelled() {
                let session = session::Session::new();
                let mut services: Vec<Box<dyn Service>> = vec![Box::new(methods)];
                if let (Some(leaf), Some(store), Some(polling)) = (leaf, store, session_polling) {
                    let outlet = session.outlet();
                    let service = telemetry::start(
                        leaf,
                        outlet,
                        &telemetry,
                        &store,
                        &tasks,
                        &session_stop,
                        &polling,
                    );
                    services.push(Box::new(service));
                }
                if let Some((device, settings)) = c2d {
                    let service = c2d::C2d::new(device, settings, session.outlet());
                    services.push(Box::new(service));
                }
                if let (Some(leaf), Some(shared)) = (twin_leaf, twin_shared) {
                    let service =
                        twin::start(leaf, session.outlet(), &shared, &tasks, &session_stop);
                    services.push(Box::new(service));
                }
                session
                    .run(credentials, services, shared, session_stop)
                    .await;
            }
        });
        Some(RunningDevice {
            bus: config.bus.clone(),
            identity: Identity::of(config),
            longest_method,
            stop,
            polling,
            done,
        })
    }

    /// Stops `config`'s device's pollers and starts new ones with its new groups.
    fn repoll(&mut self, config: &config::Device) {
        let store = self.store().clone();
        let Some(bus) = self.buses.get(&config.bus) else {
            return;
        };
        let leaf = telemetry::Leaf {
            device_id: config.id.as_str().into(),
            unit: config.unit,
            bus: bus.handle.clone(),
            groups: config.telemetry.clone(),
        };
        let Some(running) = self.devices.get_mut(&config.id) else {
            return;
        };
        let Some(old) = running.polling.take() else {
            return;
        };
        old.cancel();
        let polling = running.stop.child_token();
        telemetry::restart_polling(leaf, &self.telemetry.1, &store, &self.sessions, &polling);
        running.polling = Some(polling);
        running.identity = Identity::of(config);
        self.registry
            .set_groups(&config.id, config.telemetry.clone());
    }

    /// The telemetry store, opened (in the background) on first use.
    fn store(&mut self) -> &telemetry::store::Store {
        let config = &self.telemetry.0;
        &self
            .store
            .get_or_insert_with(|| {
                let settings = store_settings(config);
                let store = telemetry::store::Store::open(settings.clone());
                (settings, store)
            })
            .1
    }

    /// The part of a reload that reads files and may fail: `ca_file` and the system's trusted
    /// roots for a changed `[hub]`. It touches nothing that runs, so the daemon calls it off its
    /// main loop (a file on a stalled filesystem must not stop signals and the watchdog) and
    /// [`Gateway::apply`]s the result there.
    ///
    /// # Errors
    /// When `[hub]` changed and its TLS settings cannot be built.
    pub fn prepare(config: Config, running_hub: &HubIdentity) -> Result<Prepared, Error> {
        let hub = HubIdentity::of(&config.hub);
        let tls = if hub == *running_hub {
            None
        } else {
            Some(tls::trust(config.hub.ca_file.as_deref())?)
        };
        Ok(Prepared { config, hub, tls })
    }

    /// What [`Gateway::prepare`] compares a new `[hub]` with.
    #[must_use]
    pub fn hub_identity(&self) -> HubIdentity {
        self.hub.clone()
    }

    /// Applies a new, validated and [prepared](Gateway::prepare) config: restarts only the buses
    /// and devices whose config changed (see [`reload`] for the rules), starts new ones and stops
    /// removed ones. Devices being stopped drain as at shutdown: methods in flight finish and get
    /// their reply, new requests get 503. Reads no file and returns at once; restarts complete
    /// in the background.
    pub fn apply(&mut self, prepared: Prepared) -> Plan {
        let Prepared { config, hub, tls } = prepared;
        let config = &config;
        let hub_changed = tls.is_some();
        let running_buses = self
            .buses
            .iter()
            .map(|(id, b)| (id.clone(), b.config.clone()))
            .collect();
        let running_devices = self
            .devices
            .iter()
            .map(|(id, d)| (id.clone(), (d.bus.clone(), d.identity.clone())))
            .collect();
        let plan = reload::plan(&running_buses, &running_devices, config, hub_changed);

        // 1. Stop the devices that go away or restart; they drain in the background.
        let mut old_devices = BTreeMap::new();
        for id in plan.devices.stop.iter().chain(&plan.devices.restart) {
            if let Some(old) = self.devices.remove(id) {
                old.stop.cancel();
                old_devices.insert(id.clone(), old);
            }
        }
        // A restarted device's entry is replaced when it starts again (step 5), so a call in
        // between finds the old one (and waits on its bus) instead of "no such device".
        for id in &plan.devices.stop {
            self.registry.remove_device(id);
        }
        // 2. Buses that go away or restart stop once every old device on them is gone (their
        //    methods in flight run on the old actor); a restarted one reopens after that.
        let new_buses: BTreeMap<&str, &config::Bus> =
            config.buses.iter().map(|b| (b.id.as_str(), b)).collect();
        for id in plan.buses.stop.iter().chain(&plan.buses.restart) {
            let Some(old) = self.buses.remove(id) else {
                continue;
            };
            if !new_buses.contains_key(id.as_str()) {
                self.registry.remove_bus(id);
            }
            let users: Vec<CancellationToken> = old_devices
                .values()
                .filter(|d| d.bus == *id)
                .map(|d| d.done.clone())
                .collect();
            let stop = old.stop.clone();
            self.bus_tasks.spawn(async move {
                for user in users {
                    user.cancelled().await;
                }
                stop.cancel();
            });
            if let Some(new) = new_buses.get(id.as_str()) {
                let running = self.spawn_bus(new, Some(old.done.clone()));
                self.buses.insert(id.clone(), running);
            }
        }
        for id in &plan.buses.start {
            if let Some(new) = new_buses.get(id.as_str()) {
                let running = self.spawn_bus(new, None);
                self.buses.insert(id.clone(), running);
            }
        }
        // 3. A new [hub] gets new shared settings; sessions still draining keep the old ones.
        if let Some(tls) = tls {
            self.shared = new_shared(&config.hub, tls, &self.connected, &self.draining);
            self.hub = hub;
        }
        if config.telemetry != self.telemetry.0 {
            self.telemetry = new_telemetry(&config.telemetry);
            if let Some((running, _)) = &self.store
                && *running != store_settings(&config.telemetry)
            {
                log::warn!(
                    "reload: the telemetry store's settings (store, commit_interval_ms, store_max_mb, store_max_age_h, backlog, window) changed; the store keeps its old ones until leafgate restarts"
                );
            }
        }
        // 4. Devices whose telemetry groups alone changed: new pollers, same session and sender.
        for d in &config.devices {
            if plan.devices.repoll.binary_search(&d.id).is_ok() {
                self.repoll(d);
            }
        }
        // 5. Devices that restart (after their old session is gone) or are new.
        for d in &config.devices {
            let after = if plan.devices.restart.binary_search(&d.id).is_ok() {
                old_devices.get(&d.id).map(|old| old.done.clone())
            } else if plan.devices.start.binary_search(&d.id).is_ok() {
                None
            } else {
                continue;
            };
            if let Some(running) = self.spawn_device(d, after) {
                self.devices.insert(d.id.clone(), running);
            }
        }
        log_changes("device", &plan.devices);
        log_changes("bus", &plan.buses);
        plan
    }

    /// What runs, for the control socket.
    #[must_use]
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    /// Devices connected and subscribed right now.
    #[must_use]
    pub fn connected(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    #[must_use]
    pub fn devices(&self) -> usize {
        self.devices.len()
    }

    /// Buses whose transport is open right now.
    #[must_use]
    pub fn buses_up(&self) -> usize {
        self.buses.values().filter(|b| b.handle.is_up()).count()
    }

    #[must_use]
    pub fn buses(&self) -> usize {
        self.buses.len()
    }

    /// How long a shutdown may take so that every method in flight still gets its reply: the
    /// longest method deadline plus time to disconnect. systemd's `TimeoutStopSec` must exceed it
    /// (the unit allows 330 s; method deadlines are at most 300 s).
    #[must_use]
    pub fn drain_deadline(&self) -> Duration {
        self.devices
            .values()
            .map(|d| d.longest_method)
            .fold(Duration::ZERO, Duration::max)
            + DISCONNECT_TIME
    }

    /// From now on every device answers new requests 503 (it keeps publishing the replies of
    /// those in flight). Synchronous, so the "stopping" log line that follows it is true when
    /// it is written; [`Gateway::shutdown`] does the rest.
    pub fn stop_taking_requests(&self) {
        self.draining.cancel();
    }

    /// Stops: new requests get 503 at once, in-flight ones finish (each within its own
    /// deadline, all within `drain`), sessions disconnect, then buses stop.
    pub async fn shutdown(self, drain: Duration) {
        self.draining.cancel();
        for d in self.devices.values() {
            d.stop.cancel();
        }
        self.sessions.close();
        // Calls over the control socket run on the same buses: they finish first too.
        let calls = &self.registry.calls;
        calls.close();
        let finished = async {
            tokio::join!(self.sessions.wait(), calls.wait());
        };
        if tokio::time::timeout(drain, finished).await.is_err() {
            log::warn!(
                "{} session(s) and {} control call(s) still busy after {} ms; stopping anyway",
                self.sessions.len(),
                calls.len(),
                drain.as_millis()
            );
        }
        // Every sender has stopped: commit what they left.
        if let Some((_, store)) = &self.store {
            store.close().await;
        }
        for b in self.buses.values() {
            b.stop.cancel();
        }
        self.bus_tasks.close();
        let _ = tokio::time::timeout(DISCONNECT_TIME, self.bus_tasks.wait()).await;
        log::info!("stopped");
    }
}

/// One line per kind of change; ids listed when there are few (a `[hub]` change on a site with
/// thousands of devices should not flood the journal), each id at debug level otherwise.
fn log_changes(what: &str, changes: &reload::Changes) {
    const LISTED: usize = 20;
    for (verb, ids) in [
        ("restarting", &changes.restart),
        ("starting", &changes.start),
        ("stopping", &changes.stop),
    ] {
        if ids.is_empty() {
            continue;
        }
        if ids.len() <= LISTED {
            log::info!("reload: {verb} {what}(s) {}", ids.join(", "));
        } else {
            log::info!("reload: {verb} {} {what}(s)", ids.len());
            for id in ids {
                log::debug!("reload: {verb} {what} {id}");
            }
        }
    }
}

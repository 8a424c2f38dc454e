//! The supervisor: builds bus actors and device sessions from a config, runs them, and owns
//! shutdown (stop taking requests, let in-flight ones finish, disconnect).

pub mod device;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus;
use crate::config::schema::BusKind;
use crate::config::{BusSpec, Config};
use crate::hub::limiter::Pacer;
use crate::hub::{session, tls};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot set up TLS")]
    Tls(#[from] tls::Error),
}

/// A running gateway.
pub struct Gateway {
    shared: Arc<session::Shared>,
    sessions: TaskTracker,
    buses: TaskTracker,
    stop_sessions: CancellationToken,
    stop_buses: CancellationToken,
    devices: usize,
    bus_handles: Vec<bus::Handle>,
    longest_method: Duration,
}

fn kind_of(spec: &BusSpec) -> BusKind {
    match spec {
        BusSpec::ModbusTcp { .. } => BusKind::ModbusTcp,
        BusSpec::ModbusRtu { .. } => BusKind::ModbusRtu,
        BusSpec::Serial { .. } => BusKind::Serial,
    }
}

impl Gateway {
    /// Starts every bus actor and device session. Returns once all are started (not connected).
    ///
    /// # Errors
    /// When the TLS settings cannot be built.
    pub fn start(config: &Config) -> Result<Gateway, Error> {
        let tls = tls::client_config(config.hub.ca_file.as_deref())?;
        let shared = Arc::new(session::Shared {
            hub: config.hub.clone(),
            tls,
            pacer: Pacer::new(config.hub.max_connects_per_s),
            connected: AtomicUsize::new(0),
            draining: CancellationToken::new(),
        });
        let stop_buses = CancellationToken::new();
        let stop_sessions = CancellationToken::new();
        let buses = TaskTracker::new();
        let sessions = TaskTracker::new();
        let mut handles = BTreeMap::new();
        for b in &config.buses {
            let (handle, task) = bus::start(b, stop_buses.clone());
            buses.spawn(async move {
                let _ = task.await;
            });
            handles.insert(b.id.clone(), (handle, kind_of(&b.spec)));
        }
        let mut devices = 0;
        let mut longest_method = crate::mapping::raw::TIMEOUT;
        for d in &config.devices {
            for m in d.methods.values() {
                longest_method = longest_method.max(m.timeout);
            }
            let Some((handle, kind)) = handles.get(&d.bus) else {
                continue; // validation guarantees the bus exists
            };
            let device = Arc::new(device::Device {
                id: d.id.as_str().into(),
                key: d.key.clone(),
                unit: d.unit,
                bus_kind: *kind,
                bus: handle.clone(),
                methods: d.methods.clone(),
                raw_methods: d.raw_methods,
                max_payload_bytes: config.hub.max_payload_bytes,
            });
            sessions.spawn(session::run(device, shared.clone(), stop_sessions.clone()));
            devices += 1;
        }
        sessions.close();
        buses.close();
        log::info!(
            "started {devices} device session(s) on {} bus(es)",
            handles.len()
        );
        Ok(Gateway {
            shared,
            sessions,
            buses,
            stop_sessions,
            stop_buses,
            devices,
            bus_handles: handles.into_values().map(|(h, _)| h).collect(),
            longest_method,
        })
    }

    /// Devices connected and subscribed right now.
    #[must_use]
    pub fn connected(&self) -> usize {
        self.shared.connected.load(Ordering::Relaxed)
    }

    #[must_use]
    pub fn devices(&self) -> usize {
        self.devices
    }

    /// Buses whose transport is open right now.
    #[must_use]
    pub fn buses_up(&self) -> usize {
        self.bus_handles.iter().filter(|h| h.is_up()).count()
    }

    #[must_use]
    pub fn buses(&self) -> usize {
        self.bus_handles.len()
    }

    /// How long a shutdown may take so that every method in flight still gets its reply: the
    /// longest method deadline plus time to disconnect. systemd's `TimeoutStopSec` must exceed it.
    #[must_use]
    pub fn drain_deadline(&self) -> Duration {
        self.longest_method + Duration::from_secs(2)
    }

    /// Stops: new requests get 503 at once, in-flight ones finish (each within its own
    /// deadline, all within `drain`), sessions disconnect, then buses stop.
    pub async fn shutdown(self, drain: Duration) {
        self.shared.draining.cancel();
        self.stop_sessions.cancel();
        if tokio::time::timeout(drain, self.sessions.wait())
            .await
            .is_err()
        {
            log::warn!(
                "{} session(s) still busy after {} ms; stopping anyway",
                self.sessions.len(),
                drain.as_millis()
            );
        }
        self.stop_buses.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.buses.wait()).await;
        log::info!("stopped");
    }
}

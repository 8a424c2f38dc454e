//! Telemetry: each configured group of a device is polled on its interval through the bus's
//! poll lane (behind every method), and each reading goes to IoT Hub as a device-to-cloud
//! message at QoS 1, in order, at least once.
//!
//! - [`poller`]: one task per group: interval, spread start, skip instead of queueing,
//!   report-on-change, the message's topic and body.
//! - [`backlog`]: the device's readings not yet acknowledged by the hub.
//! - [`store`]: the gateway's SQLite file behind every backlog, and the thread that writes it.
//! - [`sender`]: one task per device: paced by the gateway-wide rate, a window of messages
//!   awaiting PUBACK, resend from the oldest unconfirmed after a lost connection.
//!
//! To the session this service only publishes: it subscribes to nothing and claims no topic.

pub mod backlog;
pub mod poller;
pub mod sender;
pub mod store;

use std::sync::Arc;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::bus;
use crate::hub::limiter::Pacer;
use crate::hub::service::{Context, Filter, Outlet, Service};
use crate::mapping::group::Group;

/// What every device's telemetry shares.
#[derive(Debug)]
pub struct Shared {
    /// Gateway-wide device-to-cloud rate (`max_messages_per_s`).
    pub pacer: Pacer,
    pub window: u16,
    /// Part of every message id, so ids of this run never repeat an earlier run's.
    pub run_id: Arc<str>,
}

/// One device's telemetry, for its session.
pub struct Telemetry {
    window: u16,
}

impl Service for Telemetry {
    fn name(&self) -> &'static str {
        "telemetry"
    }

    fn filters(&self, _device_id: &str) -> Vec<Filter> {
        Vec::new()
    }

    fn claims(&self, _topic: &str) -> bool {
        false
    }

    fn on_publish(&self, _topic: &str, _payload: Bytes, _ctx: &mut Context<'_>) {}

    fn window(&self) -> u16 {
        self.window
    }
}

/// What the pollers of one device need.
pub struct Leaf {
    pub device_id: Arc<str>,
    pub unit: u8,
    pub bus: bus::Handle,
    pub groups: Vec<Arc<Group>>,
}

/// Starts `leaf`'s pollers and sender on `tasks` and returns the service to hand its session
/// (whose `outlet` the sender sends on). The sender ends at `stop`, the pollers at `polling`
/// (a child of `stop` that a reload may cancel alone, see [`restart_polling`]). They start once
/// the store has the device's backlog ready (it may still be opening the file); the session
/// does not wait.
pub fn start(
    leaf: Leaf,
    outlet: Outlet,
    shared: &Arc<Shared>,
    store: &store::Store,
    tasks: &TaskTracker,
    stop: &CancellationToken,
    polling: &CancellationToken,
) -> Telemetry {
    let window = shared.window;
    let (shared, store, stop, polling, spawner) = (
        shared.clone(),
        store.clone(),
        stop.clone(),
        polling.clone(),
        tasks.clone(),
    );
    tasks.spawn(async move {
        let backlog = tokio::select! {
            () = stop.cancelled() => return,
            b = store.backlog(leaf.device_id.clone()) => b,
        };
        let device_id = leaf.device_id.clone();
        spawn_pollers(leaf, &backlog, &shared, &spawner, &polling);
        let sender = sender::Sender {
            device_id,
            backlog,
            store,
            outlet,
            shared,
        };
        sender.run(stop).await;
    });
    Telemetry { window }
}

/// Starts new pollers for `leaf` (its groups changed on reload) on the backlog its running
/// sender sends from; the old pollers were stopped by cancelling their token.
pub fn restart_polling(
    leaf: Leaf,
    shared: &Arc<Shared>,
    store: &store::Store,
    tasks: &TaskTracker,
    polling: &CancellationToken,
) {
    let (shared, store, polling, spawner) = (
        shared.clone(),
        store.clone(),
        polling.clone(),
        tasks.clone(),
    );
    tasks.spawn(async move {
        let backlog = tokio::select! {
            () = polling.cancelled() => return,
            b = store.backlog(leaf.device_id.clone()) => b,
        };
        spawn_pollers(leaf, &backlog, &shared, &spawner, &polling);
    });
}

fn spawn_pollers(
    leaf: Leaf,
    backlog: &Arc<backlog::Backlog>,
    shared: &Shared,
    tasks: &TaskTracker,
    polling: &CancellationToken,
) {
    for group in leaf.groups {
        let poller = poller::Poller {
            device_id: leaf.device_id.clone(),
            unit: leaf.unit,
            group,
            bus: leaf.bus.clone(),
            backlog: backlog.clone(),
            run_id: shared.run_id.clone(),
        };
        tasks.spawn(poller.run(polling.clone()));
    }
}

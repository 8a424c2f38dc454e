//! The device twin of each leaf (`iothub-protocol.md` 5): leafgate's view of the device under
//! `leafgate`, static and hardware-read properties, and desired properties written to the
//! hardware and acknowledged after IoT Plug and Play's convention.
//!
//! - [`health`]: the `leafgate` object (pure).
//! - [`reported`]: what the twin should say, what the hub holds, and the PATCH between them
//!   within 32 KB (pure).
//! - [`desired`]: which desired values to apply and their acknowledgements (pure).
//! - `task`: one task per device: GET after every connect, PATCH on change (coalesced, paced
//!   gateway-wide, backing off on 429), desired writes one per property on the bus's method
//!   lane, property reads after every connect and on their intervals.
//!
//! To the session, the service subscribes to twin answers and desired notifications, hands them
//! to the task, and hears when the device is subscribed (so the task reads the twin again).

pub mod desired;
pub mod health;
pub mod reported;
mod task;

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{self, TwinSettings};
use crate::hub::limiter::Pacer;
use crate::hub::service::{Context, Filter, Outlet, Service};
use crate::hub::twin as topics;
use crate::logtext;
use crate::services::methods::{self, MethodStats};

/// What every device's twin shares: the gateway-wide pace of twin reads and updates, below the
/// hub's throttles (a hub-wide reconnect of 10,000 devices must not read 10,000 twins at once).
#[derive(Debug)]
pub struct Shared {
    pub gets: Pacer,
    pub patches: Pacer,
}

impl Shared {
    #[must_use]
    pub fn new(settings: &TwinSettings) -> Self {
        Self {
            gets: Pacer::new(settings.max_gets_per_s),
            patches: Pacer::new(settings.max_patches_per_s),
        }
    }
}

/// One device, as its twin needs it.
pub struct Leaf {
    pub device: Arc<methods::Device>,
    pub twin: config::Twin,
    /// The device's method counts (the sender is in `device.stats`).
    pub stats: watch::Receiver<MethodStats>,
}

/// What the session hands the task.
enum Incoming {
    Answer {
        status: u16,
        rid: String,
        body: Bytes,
    },
    Desired {
        version: Option<u64>,
        body: Bytes,
    },
}

/// Publishes the task has not taken yet; beyond it a notification is dropped and the twin read
/// again, an answer dropped counts as lost.
const INBOX: usize = 16;

/// What the task hears of the device's connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Link {
    /// Subscriptions granted so far (0: never connected).
    connection: u64,
    /// The subscribed connection is up.
    up: bool,
    /// Desired-property notifications dropped because the task was busy (the twin is read
    /// again).
    missed: u64,
}

/// One device's twin, for its session.
pub struct Twin {
    id: Arc<str>,
    /// Boxed: tokio allocates a bounded channel's first block of 32 slots up front; 32 inline
    /// publishes would cost every device 2 KiB of idle memory.
    inbox: mpsc::Sender<Box<Incoming>>,
    link: watch::Sender<Link>,
}

/// Starts the device's twin task (tracked by `tasks`, ended by `stop`) and returns the service
/// for its session.
#[must_use]
pub fn start(
    leaf: Leaf,
    outlet: Outlet,
    shared: &Arc<Shared>,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> Twin {
    let (inbox, rx) = mpsc::channel(INBOX);
    let (link, links) = watch::channel(Link::default());
    let id = leaf.device.id.clone();
    tasks.spawn(task::run(
        leaf,
        outlet,
        shared.clone(),
        rx,
        links,
        stop.clone(),
    ));
    Twin { id, inbox, link }
}

impl Service for Twin {
    fn name(&self) -> &'static str {
        "twin"
    }

    fn filters(&self, _device_id: &str) -> Vec<Filter> {
        vec![
            Filter::at_most_once(topics::RESPONSES_FILTER),
            Filter::at_most_once(topics::DESIRED_FILTER),
        ]
    }

    fn claims(&self, topic: &str) -> bool {
        topics::is_twin(topic)
    }

    fn on_publish(&self, topic: &str, payload: Bytes, _ctx: &mut Context<'_>) {
        let id = &*self.id;
        let incoming = if let Some(answer) = topics::parse_response(topic) {
            Incoming::Answer {
                status: answer.status,
                rid: answer.rid.to_owned(),
                body: payload,
            }
        } else if let Some(version) = topics::parse_desired(topic) {
            Incoming::Desired {
                version,
                body: payload,
            }
        } else {
            log::warn!(device_id = id, service = "twin"; "device {id}: ignoring twin publish on {:?}: not an answer or a desired-property notification", logtext::clip(topic));
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(dropped)) =
            self.inbox.try_send(Box::new(incoming))
        {
            if matches!(*dropped, Incoming::Desired { .. }) {
                log::warn!(device_id = id, service = "twin"; "device {id}: twin busy; dropping a desired-property notification and reading the whole twin again");
                self.link.send_modify(|l| l.missed += 1);
            } else {
                log::warn!(device_id = id, service = "twin"; "device {id}: twin busy; dropping an answer (the request will time out and be retried)");
            }
        }
    }

    fn on_subscribed(&self) {
        self.link.send_modify(|l| {
            l.connection += 1;
            l.up = true;
        });
    }

    fn on_disconnected(&self) {
        self.link.send_modify(|l| l.up = false);
    }
}

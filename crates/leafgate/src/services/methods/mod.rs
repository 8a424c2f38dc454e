//! Direct methods: a request on `$iothub/methods/POST/{name}/?$rid={rid}` runs on the device's
//! bus, and its status and body go back on `$iothub/methods/res/{status}/?$rid={rid}` within
//! the method's timeout.
//!
//! The session hands this service every publish on the methods topics; this service decides
//! what to run, refuses what must not reach the hardware (the device is stopping, or has too
//! many requests in progress), and hands back one reply per request.

pub mod device;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

pub use device::{Device, LastError, MethodStats, Response};

use crate::hub::service::{Context, Filter, Label, Outbound, Reply, Service};
use crate::hub::topics;
use crate::logtext;
use crate::mapping::{Failure, respond};

/// Requests one device may have in progress: running on its bus, or with their reply not yet
/// written. A request beyond it is answered 503 at once and never reaches the hardware. It
/// bounds what a hub flooding one device can pin in memory (each request holds its payload);
/// the bus's own deadline admission usually refuses the excess long before this.
pub const MAX_IN_FLIGHT: usize = 1024;

/// How long a refusal made on the spot may wait for a connection to go out on.
const REFUSAL_DEADLINE: Duration = Duration::from_secs(5);

/// The direct-methods service of one device.
pub struct Methods {
    device: Arc<Device>,
}

impl Methods {
    #[must_use]
    pub fn new(device: Device) -> Self {
        Self {
            device: Arc::new(device),
        }
    }

    /// The device, for the services that run its methods too (twin, cloud-to-device).
    #[must_use]
    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }
}

/// The reply to one request, as the session publishes it. Takes the method name and rid by
/// value: the log label keeps them (clipped in place when long), so a reply copies neither.
fn reply(
    status: u16,
    body: &serde_json::Value,
    rid: String,
    deadline: Instant,
    name: String,
) -> Outbound {
    Outbound::Reply(Reply {
        topic: topics::response(status, &rid),
        body: serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec()),
        deadline,
        label: Label {
            kind: "method",
            name: logtext::clip_owned(name),
            rid: logtext::clip_owned(rid),
            status,
        },
    })
}

impl Service for Methods {
    fn name(&self) -> &'static str {
        "methods"
    }

    fn filters(&self, _device_id: &str) -> Vec<Filter> {
        vec![Filter::at_most_once(topics::METHODS_FILTER)]
    }

    fn claims(&self, topic: &str) -> bool {
        topics::is_method_request(topic)
    }

    fn on_publish(&self, topic: &str, payload: Bytes, ctx: &mut Context<'_>) {
        let received = Instant::now();
        let id = &self.device.id;
        let (name, rid) = match topics::parse_request(topic) {
            Ok(t) => (t.name.to_owned(), t.rid.to_owned()),
            Err(e) => {
                // Nothing to answer: without a rid the hub cannot correlate a reply.
                log::warn!(device_id = &**id; "device {id}: ignoring publish on {:?}: {e}", logtext::clip(topic));
                return;
            }
        };
        let bus = self.device.bus.id();
        let refusal = if ctx.stopping() {
            Some(Failure::ShuttingDown {
                bus: bus.to_owned(),
            })
        } else if ctx.in_progress() >= MAX_IN_FLIGHT {
            Some(Failure::TooManyInProgress {
                bus: bus.to_owned(),
                limit: MAX_IN_FLIGHT,
            })
        } else {
            None
        };
        if let Some(failure) = refusal {
            // Answered on the spot, without a task: the refusal cannot itself be refused.
            // Status, body and level come from the status map, like every other failure's.
            let (status, body, level) = respond(&failure);
            let shown = logtext::clip(&name);
            log::log!(level, device_id = &**id, method = &*shown, rid = &*logtext::clip(&rid), bus = bus, status = status, duration_ms = 0;
                "method {shown} on {id}: {status} {failure}");
            ctx.send(reply(status, &body, rid, received + REFUSAL_DEADLINE, name));
            return;
        }
        let device = self.device.clone();
        ctx.spawn(async move {
            let response = device.call(&name, &rid, &payload, received).await;
            reply(
                response.status,
                &response.body,
                rid,
                response.deadline,
                name,
            )
        });
    }
}

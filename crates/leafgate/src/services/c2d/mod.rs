//! Cloud-to-device commands (`iothub-protocol.md` 6.2): a message whose application property
//! (`method` unless `[c2d] method_property` says otherwise) names one of the device's methods
//! runs that method with the message body as its payload, exactly as a direct method would.
//!
//! The PUBACK, which completes the message at the hub, goes out only once the command has run:
//! if the gateway dies first, the hub delivers the message again. Every outcome is final and
//! acknowledged, failures included (unknown method, invalid payload, the hardware refusing, the
//! device having as many requests in progress as it may), so a message that can never succeed
//! does not come back until it is dead-lettered. Only a message that arrives while the device
//! is stopping is left with the hub, unacknowledged, to be delivered again. The session sends
//! PUBACKs in delivery order, as MQTT requires: a quick command's waits for a slow one
//! delivered before it.
//!
//! A message delivered again (same `$.mid`) within `dedup_window_s` is acknowledged without
//! running twice ([`seen`]). With `report = true` each outcome also goes to IoT Hub as a
//! device-to-cloud message whose correlation id (`$.cid`) is the command's message id.

pub mod seen;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde_json::json;
use tokio::time::Instant;

use self::seen::{Seen, Verdict};
use crate::config;
use crate::hub::c2d::{self as topics, CORRELATION_ID, MESSAGE_ID};
use crate::hub::d2c;
use crate::hub::service::{Ack, Context, Filter, Message, Outbound, Outlet, Service};
use crate::services::methods::{self, MAX_IN_FLIGHT};
use crate::{logtext, metrics};

/// One device's cloud-to-device commands, for its session.
pub struct C2d {
    device: Arc<methods::Device>,
    settings: Arc<config::C2d>,
    seen: Arc<Mutex<Seen>>,
    /// Where late acknowledgements and outcome reports go.
    outlet: Outlet,
}

impl C2d {
    #[must_use]
    pub fn new(device: Arc<methods::Device>, settings: Arc<config::C2d>, outlet: Outlet) -> Self {
        let seen = Arc::new(Mutex::new(Seen::new(settings.dedup_window)));
        Self {
            device,
            settings,
            seen,
            outlet,
        }
    }
}

/// Sends acknowledgements that waited for a run, on whatever connection is current (those of
/// an earlier connection are dropped there: the hub delivers again, and [`Seen`] answers).
async fn send_acks(outlet: &Outlet, acks: Vec<Ack>) {
    for ack in acks {
        let _ = outlet.send(Outbound::Ack(ack)).await;
    }
}

/// The ids seen; a panic elsewhere while it was held leaves it usable (it holds no invariant a
/// half-done update could break worse than running a duplicate).
fn lock(seen: &Mutex<Seen>) -> std::sync::MutexGuard<'_, Seen> {
    seen.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn property<'a>(props: &'a [(String, String)], key: &str) -> Option<&'a str> {
    props
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

impl Service for C2d {
    fn name(&self) -> &'static str {
        "cloud-to-device"
    }

    fn filters(&self, device_id: &str) -> Vec<Filter> {
        vec![Filter::at_least_once(topics::filter(device_id))]
    }

    fn claims(&self, topic: &str) -> bool {
        topics::is_c2d(topic)
    }

    fn window(&self) -> u16 {
        u16::from(self.settings.report)
    }

    fn on_publish(&self, topic: &str, payload: Bytes, ctx: &mut Context<'_>) {
        let ack = ctx.take_ack();
        let id = self.device.id.clone();
        let props = match topics::parse(topic) {
            Ok(props) => props,
            Err(e) => {
                log::warn!(device_id = &*id, service = "c2d"; "device {id}: cloud-to-device message on {:?} dropped: {e}; acknowledged", logtext::clip(topic));
                metrics::c2d(&id, "rejected");
                if let Some(ack) = ack {
                    ctx.send(Outbound::Ack(ack));
                }
                return;
            }
        };
        let mid = property(&props, MESSAGE_ID).unwrap_or_default().to_owned();
        let shown = logtext::clip(&mid).into_owned();
        if ctx.stopping() {
            // Dropping the acknowledgement leaves the message (and any delivered after it on
            // this connection, whose PUBACKs must follow its own) with the hub.
            log::info!(device_id = &*id, service = "c2d", rid = &*shown; "device {id}: cloud-to-device message {shown} left with IoT Hub for the next run: the device is stopping");
            return;
        }
        if ctx.in_progress() >= MAX_IN_FLIGHT {
            // A final outcome, as a direct method gets 503: leaving it unacknowledged would hold
            // back the PUBACK of every later message on this connection.
            log::warn!(device_id = &*id, service = "c2d", rid = &*shown, status = 503;
                "device {id}: cloud-to-device message {shown} not run: 503, the device has {MAX_IN_FLIGHT} requests in progress; acknowledged");
            metrics::c2d(&id, "rejected");
            if let Some(ack) = ack {
                ctx.send(Outbound::Ack(ack));
            }
            return;
        }
        let ack = if mid.is_empty() {
            ack
        } else {
            let verdict = lock(&self.seen).delivered(&mid, ack, Instant::now());
            match verdict {
                Verdict::New(ack) => ack,
                Verdict::Running => {
                    log::info!(device_id = &*id, service = "c2d", rid = &*shown; "device {id}: cloud-to-device message {shown} delivered again while it runs; acknowledged when it ends");
                    metrics::c2d(&id, "duplicate");
                    return;
                }
                Verdict::Done(ack) => {
                    log::info!(device_id = &*id, service = "c2d", rid = &*shown; "device {id}: cloud-to-device message {shown} delivered again; it ran already: acknowledged, not run twice");
                    metrics::c2d(&id, "duplicate");
                    if let Some(ack) = ack {
                        ctx.send(Outbound::Ack(ack));
                    }
                    return;
                }
            }
        };
        let Some(method) = property(&props, &self.settings.method_property).map(str::to_owned)
        else {
            log::warn!(device_id = &*id, service = "c2d", rid = &*shown;
                "device {id}: cloud-to-device message {shown} names no method (application property {:?}); acknowledged and dropped", self.settings.method_property);
            metrics::c2d(&id, "rejected");
            self.finish(&mid, ack, ctx);
            return;
        };
        metrics::c2d(&id, "run");
        let correlation = property(&props, CORRELATION_ID).map(str::to_owned);
        let device = self.device.clone();
        let seen = self.seen.clone();
        let outlet = self.outlet.clone();
        let report = self.settings.report;
        let received = Instant::now();
        ctx.spawn_then(async move {
            let rid = if mid.is_empty() { "c2d" } else { &mid };
            let response = device.call(&method, rid, &payload, received).await;
            let id = &device.id;
            let name = logtext::clip(&method);
            let level = if response.status == 200 {
                log::Level::Info
            } else {
                log::Level::Warn
            };
            log::log!(level, device_id = &**id, service = "c2d", method = &*name, rid = &*logtext::clip(rid), status = response.status;
                "device {id}: cloud-to-device message {} ran {name}: {}; acknowledged", logtext::clip(rid), response.status);
            let waiting = lock(&seen).finished(&mid);
            send_acks(&outlet, waiting).await;
            if report {
                let body = json!({
                    "method": method,
                    "status": response.status,
                    "payload": response.body,
                    "correlationId": correlation,
                });
                let mut props = vec![(d2c::CONTENT_TYPE, "application/json"), (d2c::CONTENT_ENCODING, "utf-8")];
                if !mid.is_empty() {
                    props.push((CORRELATION_ID, mid.as_str()));
                }
                let (delivery, _) = tokio::sync::oneshot::channel();
                let _ = outlet
                    .send(Outbound::Message(Message {
                        topic: d2c::topic(id, props),
                        body: Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
                        delivery,
                    }))
                    .await;
            }
            ack.map(Outbound::Ack)
        });
    }
}

impl C2d {
    /// A message that will not run: acknowledge it, and any deliveries of it that waited.
    fn finish(&self, mid: &str, ack: Option<Ack>, ctx: &mut Context<'_>) {
        let waiting = lock(&self.seen).finished(mid);
        for ack in ack.into_iter().chain(waiting) {
            ctx.send(Outbound::Ack(ack));
        }
    }
}

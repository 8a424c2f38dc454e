//! The seam between a device's MQTT session and the services that use it.
//!
//! The session owns the connection: identity, renewal, paced reconnects, backoff, writing on
//! whatever connection is current, clean stop. It knows no method, twin or telemetry
//! semantics. A service (direct methods today; telemetry, twin and C2D next) tells it which
//! topics to subscribe, is handed every incoming publish on a topic it claims, and hands back
//! typed [`Outbound`] messages. Services live above the hub side (`crate::services`) and join
//! these messages to the hardware; nothing here imports them.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;

use super::outbound::Work;
pub use super::outbound::{Ack, Delivery, Label, Message, Outbound, Outlet, Reply};
pub use rumqttc::QoS;

/// A topic filter a service subscribes after every CONNACK, and the QoS it asks for: QoS 0 for
/// requests the hub does not redeliver (methods, twin), QoS 1 where the hub keeps a message
/// until it is acknowledged (cloud-to-device).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub topic: String,
    pub qos: QoS,
}

impl Filter {
    #[must_use]
    pub fn at_most_once(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            qos: QoS::AtMostOnce,
        }
    }

    #[must_use]
    pub fn at_least_once(topic: impl Into<String>) -> Self {
        Self {
            topic: topic.into(),
            qos: QoS::AtLeastOnce,
        }
    }
}

/// What one device's session asks of each service it carries.
///
/// Calls come from the session's own task, between network reads: they must return at once.
/// Anything slow (a bus transaction) goes to [`Context::spawn`], whose result the session
/// publishes when it is ready.
pub trait Service: Send + Sync + 'static {
    /// What the service serves, for log lines ("listening for methods").
    fn name(&self) -> &'static str;

    /// The topic filters to subscribe after every CONNACK, for the device `device_id`.
    fn filters(&self, device_id: &str) -> Vec<Filter>;

    /// Whether an incoming publish on `topic` is this service's. The session offers each
    /// publish to its services in order and gives it to the first that claims it.
    fn claims(&self, topic: &str) -> bool;

    /// One incoming publish on a claimed topic.
    ///
    /// A QoS 1 publish is acknowledged (PUBACK) as soon as this returns, unless the service
    /// took its [`Ack`] with [`Context::take_ack`] to send it when the work is done.
    fn on_publish(&self, topic: &str, payload: Bytes, ctx: &mut Context<'_>);

    /// The device is connected and its subscriptions are granted: everything it subscribed to
    /// reaches it from now on. Called after every (re)connect, from the session's task: must
    /// return at once. A twin reads its document here.
    fn on_subscribed(&self) {}

    /// The connection that was subscribed has ended: nothing published now reaches the hub
    /// until the next [`Service::on_subscribed`]. From the session's task: must return at once.
    fn on_disconnected(&self) {}

    /// How many QoS 1 messages this service may have awaiting their PUBACK at once; the session
    /// allows the largest any of its services asks for. Services that publish no QoS 1
    /// messages ask for none, and their devices pay no memory for in-flight slots.
    fn window(&self) -> u16 {
        0
    }
}

/// What a service may do with the session while it handles a publish.
pub struct Context<'a> {
    pub(super) device_id: &'a Arc<str>,
    pub(super) stopping: bool,
    pub(super) work: &'a mut Work,
    /// The PUBACK the publish being handled is owed (QoS 1 only), until a service takes it.
    pub(super) ack: Option<Ack>,
}

impl Context<'_> {
    /// The device whose session this is.
    #[must_use]
    pub fn device_id(&self) -> &Arc<str> {
        self.device_id
    }

    /// The device is stopping (shutdown, or a restart for a changed config): its services
    /// should refuse new work; what is in progress still gets published.
    #[must_use]
    pub fn stopping(&self) -> bool {
        self.stopping
    }

    /// Tasks this device's services started with [`Context::spawn`] that have not ended.
    #[must_use]
    pub fn in_progress(&self) -> usize {
        self.work.tasks.len()
    }

    /// Takes over the PUBACK of the QoS 1 publish being handled: the session will not send it
    /// when `on_publish` returns. Hand it back as [`Outbound::Ack`] once the work is done, or
    /// drop it to leave the message with the hub, which delivers it again later. `None` for a
    /// QoS 0 publish.
    pub fn take_ack(&mut self) -> Option<Ack> {
        self.ack.take()
    }

    /// Queues `message` for the next write, without a task (an answer made on the spot).
    pub fn send(&mut self, message: Outbound) {
        self.work.outbox.push_back(Box::new(message));
    }

    /// Runs `task`; what it returns is published on whatever connection is current when it
    /// ends. The session waits for its tasks before it disconnects at a stop, so their answers
    /// still go out.
    pub fn spawn<F>(&mut self, task: F)
    where
        F: Future<Output = Outbound> + Send + 'static,
    {
        self.spawn_then(async move { Some(task.await) });
    }

    /// Like [`Context::spawn`], for work that may end with nothing to publish.
    pub fn spawn_then<F>(&mut self, task: F)
    where
        F: Future<Output = Option<Outbound>> + Send + 'static,
    {
        let tx = self.work.tx.clone();
        let device_id = self.device_id.clone();
        self.work.tasks.spawn(async move {
            let Some(message) = task.await else {
                return;
            };
            let message = Box::new(message);
            if let Err(tokio::sync::mpsc::error::SendError(message)) = tx.send(message).await
                && let Some(label) = message.label()
            {
                label.warn(
                    &device_id,
                    format_args!("not delivered: the device's session has ended"),
                );
            }
        });
    }
}

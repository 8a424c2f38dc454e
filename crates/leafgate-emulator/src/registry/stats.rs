//! What the emulator observed per device, as tests read it: the [`DeviceStats`] snapshot and the
//! [`Event`] stream. Plain data, kept apart from the registry's locking so it can be cloned and
//! compared freely.

use bytes::Bytes;

use super::reason::{DisconnectReason, RefusalReason};
use crate::wire::ConnectRecord;

/// A topic filter a connection subscribed to, with the QoS granted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub filter: String,
    pub qos: u8,
}

/// What the emulator observed for one device id. Counters cover the emulator's lifetime;
/// `online`, `connection`, `subscriptions` and `methods_subscribed` describe the current
/// connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceStats {
    pub registered: bool,
    pub enabled: bool,
    pub online: bool,
    /// Id of the attached connection (increasing over the emulator's life).
    pub connection: Option<u64>,
    pub connects_accepted: u64,
    pub connects_refused: u64,
    pub last_refusal: Option<RefusalReason>,
    pub disconnects: u64,
    pub last_disconnect: Option<DisconnectReason>,
    pub subscriptions: Vec<Subscription>,
    /// Subscribed to `$iothub/methods/POST/#`, so every method request can be routed here.
    /// (Requests are routed by filter match, so a per-method filter also receives its method.)
    pub methods_subscribed: bool,
    /// Method requests handed to the device's connection.
    pub method_requests: u64,
    /// Every method response the device published, including ignored ones.
    pub method_responses: u64,
    /// Responses that matched no live request: late, duplicate, or unknown `$rid`.
    pub method_responses_ignored: u64,
    /// Device-to-cloud messages recorded (QoS 0 and 1; not those a
    /// [`Fault::QuotaExceeded`](crate::Fault::QuotaExceeded) refused), kept or since dropped.
    pub telemetry_messages: u64,
    pub telemetry_bytes: u64,
    /// Messages whose `$.mid` repeated one still kept ([`D2cMessage::duplicate`](crate::D2cMessage::duplicate)).
    pub telemetry_duplicates: u64,
    /// Messages forgotten because the device's log was full
    /// ([`EmulatorConfig::telemetry_per_device`](crate::EmulatorConfig::telemetry_per_device)).
    pub telemetry_dropped: u64,
    /// The last CONNECT that named this client id, accepted or refused, password reduced to
    /// its shape.
    pub last_connect: Option<ConnectRecord>,
    /// Every SUBSCRIBE of the current connection, in order, each as its filters with the QoS the
    /// client *requested* (what was granted is in `subscriptions`).
    pub subscribe_requests: Vec<Vec<Subscription>>,
    /// QoS of the last method response the device published.
    pub last_method_response_qos: Option<u8>,
}

/// One thing that happened, for [`crate::Emulator::events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Connected {
        device: String,
        connection: u64,
    },
    Refused {
        client_id: String,
        reason: RefusalReason,
    },
    Disconnected {
        device: String,
        connection: u64,
        reason: DisconnectReason,
    },
    Subscribed {
        device: String,
        subscriptions: Vec<Subscription>,
    },
    MethodRequest {
        device: String,
        method: String,
        rid: u64,
    },
    MethodResponse {
        device: String,
        rid: String,
        status: u16,
        accepted: bool,
    },
    Telemetry {
        device: String,
        topic: String,
        payload: Bytes,
    },
}

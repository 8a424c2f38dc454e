//! Direct methods, hub side (`iothub-protocol.md` 3 and 4): validate a call, route it to the
//! device's current connection, wait for the first valid `$iothub/methods/res/{status}/?$rid=`.
//!
//! [`invoke`] is the one code path for both the HTTP service API and
//! [`Emulator::invoke`](super::Emulator::invoke), so in-process tests see exactly what an HTTP
//! caller sees. Request ids are hub-generated decimal integers, unique over the emulator's life,
//! as the cloud hub sends them.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::Shared;
use super::lock::lock;
use super::registry::{Connection, DeviceEntry, Outbound, Route};
use leafgate::hub::topics;

/// Largest request payload and response body the hub carries: 128 KB (the 8 KB limit of 2017 is
/// obsolete).
pub const MAX_METHOD_PAYLOAD: usize = 128 * 1024;
/// `responseTimeoutInSeconds` bounds enforced by the hub.
pub const RESPONSE_TIMEOUT_RANGE_S: (u64, u64) = (5, 300);
/// Largest `connectTimeoutInSeconds`.
pub const MAX_CONNECT_TIMEOUT_S: u64 = 300;
/// Longest method name the emulator puts in a topic; the hub documents no limit, this only keeps
/// topics well inside MQTT's 64 KiB.
pub const MAX_METHOD_NAME: usize = 1024;

/// One direct-method call, as the service API body describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodCall {
    pub method_name: String,
    /// Sent verbatim as the request body (`null` when the caller gave none).
    pub payload: serde_json::Value,
    /// How long to wait for the device's answer once the request is sent (5–300 s).
    pub response_timeout_s: u64,
    /// How long to wait for the device to come online and subscribe (0–300 s; 0 = must already be).
    pub connect_timeout_s: u64,
}

impl MethodCall {
    /// A call with the hub's defaults: response timeout 30 s, connect timeout 0.
    #[must_use]
    pub fn new(method_name: impl Into<String>, payload: serde_json::Value) -> Self {
        MethodCall {
            method_name: method_name.into(),
            payload,
            response_timeout_s: 30,
            connect_timeout_s: 0,
        }
    }

    #[must_use]
    pub fn response_timeout(mut self, seconds: u64) -> Self {
        self.response_timeout_s = seconds;
        self
    }

    #[must_use]
    pub fn connect_timeout(mut self, seconds: u64) -> Self {
        self.connect_timeout_s = seconds;
        self
    }

    /// Checks the arguments the hub checks; returns the serialized payload.
    fn validate(&self) -> Result<Vec<u8>, InvokeError> {
        let (min, max) = RESPONSE_TIMEOUT_RANGE_S;
        if !(min..=max).contains(&self.response_timeout_s) {
            return Err(InvokeError::InvalidArgument(format!(
                "responseTimeoutInSeconds must be within [{min}; {max}]."
            )));
        }
        if self.connect_timeout_s > MAX_CONNECT_TIMEOUT_S {
            return Err(InvokeError::InvalidArgument(format!(
                "connectTimeoutInSeconds must be within [0; {MAX_CONNECT_TIMEOUT_S}]."
            )));
        }
        let name = &self.method_name;
        if name.is_empty() {
            return Err(InvokeError::InvalidArgument(
                "methodName is required.".to_owned(),
            ));
        }
        // `#` and `+` are wildcards, not allowed in a topic name; control characters and over-long
        // names would make a topic no client can parse.
        if name.len() > MAX_METHOD_NAME
            || name
                .chars()
                .any(|c| c.is_control() || matches!(c, '#' | '+'))
        {
            return Err(InvokeError::InvalidArgument(
                "methodName contains characters not allowed in a method name.".to_owned(),
            ));
        }
        let payload = serde_json::to_vec(&self.payload)
            .map_err(|_| InvokeError::InvalidArgument("payload is not serializable.".to_owned()))?;
        if payload.len() > MAX_METHOD_PAYLOAD {
            return Err(InvokeError::PayloadTooLarge(payload.len()));
        }
        Ok(payload)
    }
}

/// The device's answer: its status and its body parsed as JSON (`null` when empty).
#[derive(Debug, Clone, PartialEq)]
pub struct MethodResult {
    pub status: u16,
    pub payload: serde_json::Value,
}

/// Why a call failed; each maps to the hub's HTTP status and error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvokeError {
    /// 400 / 400004 `ArgumentInvalid`.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// 404 / 404001 `DeviceNotFound`: unknown or disabled.
    #[error("device is not registered or is disabled")]
    DeviceNotFound,
    /// 404 / 404103 `DeviceNotOnline`: not connected or not subscribed to methods.
    #[error("device is not online or has not subscribed to direct methods")]
    DeviceNotOnline,
    /// 504 / 504101 `GatewayTimeout`.
    #[error("timed out waiting for the response from device")]
    Timeout,
    /// 413 / 413001 `MessageTooLarge` (the hub's code for this is undocumented).
    #[error("payload of {0} bytes exceeds 128 KB")]
    PayloadTooLarge(usize),
    /// 502 / 502001 `BadDeviceResponse`: emulator-specific, the hub's behaviour is undocumented.
    #[error("device response unusable: {0}")]
    BadDeviceResponse(String),
    /// 503 / 503001 `ServiceUnavailable`.
    #[error("emulator is shutting down")]
    ShuttingDown,
}

impl InvokeError {
    /// The HTTP status the service API answers with.
    #[must_use]
    pub fn http_status(&self) -> u16 {
        match self {
            InvokeError::InvalidArgument(_) => 400,
            InvokeError::DeviceNotFound | InvokeError::DeviceNotOnline => 404,
            InvokeError::Timeout => 504,
            InvokeError::PayloadTooLarge(_) => 413,
            InvokeError::BadDeviceResponse(_) => 502,
            InvokeError::ShuttingDown => 503,
        }
    }

    /// The numeric `errorCode` of the error body.
    #[must_use]
    pub fn error_code(&self) -> u32 {
        match self {
            InvokeError::InvalidArgument(_) => 400_004,
            InvokeError::DeviceNotFound => 404_001,
            InvokeError::DeviceNotOnline => 404_103,
            InvokeError::Timeout => 504_101,
            InvokeError::PayloadTooLarge(_) => 413_001,
            InvokeError::BadDeviceResponse(_) => 502_001,
            InvokeError::ShuttingDown => 503_001,
        }
    }

    /// The `iothub-errorcode` header value (the code's name).
    #[must_use]
    pub fn error_name(&self) -> &'static str {
        match self {
            InvokeError::InvalidArgument(_) => "ArgumentInvalid",
            InvokeError::DeviceNotFound => "DeviceNotFound",
            InvokeError::DeviceNotOnline => "DeviceNotOnline",
            InvokeError::Timeout => "GatewayTimeout",
            InvokeError::PayloadTooLarge(_) => "MessageTooLarge",
            InvokeError::BadDeviceResponse(_) => "BadDeviceResponse",
            InvokeError::ShuttingDown => "ServiceUnavailable",
        }
    }
}

/// What a device published on the response topic.
#[derive(Debug)]
struct DeviceResponse {
    status: u16,
    body: Bytes,
}

struct Waiter {
    device: String,
    tx: oneshot::Sender<DeviceResponse>,
}

/// A live request taken off the table by its response.
pub(crate) struct Answer(Waiter);

impl Answer {
    /// Wakes the caller with the response; false if it stopped waiting meanwhile.
    pub(crate) fn send(self, status: u16, body: Bytes) -> bool {
        self.0.tx.send(DeviceResponse { status, body }).is_ok()
    }
}

/// Outstanding requests by rid.
pub(crate) struct Methods {
    next_rid: AtomicU64,
    pending: Mutex<HashMap<u64, Waiter>>,
}

/// Removes a request from the table however the call ends, including when the caller's future
/// is dropped (an HTTP client hanging up).
struct PendingGuard<'a> {
    methods: &'a Methods,
    rid: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        lock(&self.methods.pending).remove(&self.rid);
    }
}

impl Methods {
    pub(crate) fn new() -> Self {
        Methods {
            next_rid: AtomicU64::new(1),
            pending: Mutex::new(HashMap::new()),
        }
    }

    fn register(&self, device: &str) -> (PendingGuard<'_>, oneshot::Receiver<DeviceResponse>) {
        let rid = self.next_rid.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(
            rid,
            Waiter {
                device: device.to_owned(),
                tx,
            },
        );
        (PendingGuard { methods: self, rid }, rx)
    }

    /// Takes the live request `rid` of `device` off the table, so that its response can be
    /// counted before the caller wakes. `None` (the response is ignored) when the rid is unknown,
    /// already answered, expired, or belongs to another device's request.
    pub(crate) fn take(&self, device: &str, rid: &str) -> Option<Answer> {
        // The device must echo the rid byte for byte: "007" or "+7" do not answer request 7.
        let number = rid.parse::<u64>().ok().filter(|n| n.to_string() == rid)?;
        let mut pending = lock(&self.pending);
        match pending.get(&number) {
            Some(waiter) if waiter.device == device => pending.remove(&number).map(Answer),
            _ => None,
        }
    }

    /// Hands a device's response to the waiting call; false when [`Methods::take`] finds none.
    #[cfg(test)]
    fn complete(&self, device: &str, rid: &str, status: u16, body: Bytes) -> bool {
        self.take(device, rid)
            .is_some_and(|answer| answer.send(status, body))
    }

    #[cfg(test)]
    fn pending_len(&self) -> usize {
        lock(&self.pending).len()
    }
}

/// Runs one call end to end.
///
/// # Errors
/// See [`InvokeError`]; the checks run in the hub's order: arguments, registry, connection,
/// response.
pub(crate) async fn invoke(
    shared: &Shared,
    device: &str,
    call: MethodCall,
) -> Result<MethodResult, InvokeError> {
    let payload = call.validate()?;
    let entry = shared
        .registry
        .registered(device)
        .ok_or(InvokeError::DeviceNotFound)?;
    let connect_deadline = Instant::now() + Duration::from_secs(call.connect_timeout_s);
    // Any rid gives the same match: a rid is one topic level, whatever its digits.
    let probe = topics::request(&call.method_name, "0");
    let conn = tokio::select! {
        biased;
        () = shared.shutdown.cancelled() => return Err(InvokeError::ShuttingDown),
        route = wait_for_route(&entry, &probe, connect_deadline) => route?,
    };
    let (guard, rx) = shared.methods.register(device);
    let rid = guard.rid;
    let outbound = Outbound {
        topic: topics::request(&call.method_name, &rid.to_string()),
        payload: Bytes::from(payload),
    };
    log::debug!(
        "emulator: method {} rid {rid} to device {device}",
        call.method_name
    );
    let deadline = Instant::now() + Duration::from_secs(call.response_timeout_s);
    let exchange = async {
        // Logged before it is queued, so that no response can arrive before its request.
        shared.history.method_sent(
            rid,
            device,
            &call.method_name,
            Duration::from_secs(call.response_timeout_s),
        );
        if conn.outbound.send(outbound).await.is_err() {
            shared.history.method_unsent(rid);
            return Err(InvokeError::DeviceNotOnline);
        }
        shared
            .registry
            .record_method_request(&entry, &call.method_name, rid);
        rx.await.map_err(|_| InvokeError::ShuttingDown)
    };
    let response = tokio::select! {
        biased;
        () = shared.shutdown.cancelled() => Err(InvokeError::ShuttingDown),
        outcome = tokio::time::timeout_at(deadline, exchange) => {
            outcome.unwrap_or(Err(InvokeError::Timeout))
        }
    };
    drop(guard);
    let response = response.inspect_err(|e| {
        log::debug!(
            "emulator: method {} rid {rid} to device {device}: {e}",
            call.method_name
        );
    })?;
    to_result(response)
}

/// Waits until the device is online with a subscription matching `topic`, or the deadline
/// passes.
async fn wait_for_route(
    entry: &DeviceEntry,
    topic: &str,
    deadline: Instant,
) -> Result<std::sync::Arc<Connection>, InvokeError> {
    // Subscribe before looking, so a change between the look and the wait is not missed.
    let mut changes = entry.subscribe();
    loop {
        match entry.route(topic) {
            Route::Ready(conn) => return Ok(conn),
            Route::Gone => return Err(InvokeError::DeviceNotFound),
            Route::NotReady => {}
        }
        match tokio::time::timeout_at(deadline, changes.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return Err(InvokeError::DeviceNotOnline),
        }
    }
}

/// The device's body as the caller sees it: empty is `null`, JSON is passed through, anything
/// else is refused (the hub requires JSON; what it does otherwise is undocumented).
fn to_result(response: DeviceResponse) -> Result<MethodResult, InvokeError> {
    if response.body.len() > MAX_METHOD_PAYLOAD {
        return Err(InvokeError::BadDeviceResponse(format!(
            "response body of {} bytes exceeds 128 KB",
            response.body.len()
        )));
    }
    let payload = if response.body.iter().all(u8::is_ascii_whitespace) {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&response.body).map_err(|e| {
            InvokeError::BadDeviceResponse(format!("response body is not JSON: {e}"))
        })?
    };
    Ok(MethodResult {
        status: response.status,
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validation_follows_the_hub_ranges() {
        let ok = MethodCall::new("reboot", json!({"delay": 5}));
        assert_eq!(ok.validate().unwrap(), br#"{"delay":5}"#);
        for seconds in [0, 4, 301, u64::MAX] {
            let err = ok.clone().response_timeout(seconds).validate().unwrap_err();
            assert_eq!(
                err,
                InvokeError::InvalidArgument(
                    "responseTimeoutInSeconds must be within [5; 300].".into()
                )
            );
            assert_eq!((err.http_status(), err.error_code()), (400, 400_004));
        }
        assert!(ok.clone().response_timeout(5).validate().is_ok());
        assert!(ok.clone().response_timeout(300).validate().is_ok());
        assert!(ok.clone().connect_timeout(300).validate().is_ok());
        assert!(ok.clone().connect_timeout(301).validate().is_err());
        for name in ["", "a#b", "a+b", "a\nb"] {
            assert!(
                MethodCall::new(name, json!(null)).validate().is_err(),
                "{name:?}"
            );
        }
        assert!(
            MethodCall::new("get/status", json!(null))
                .validate()
                .is_ok()
        );
        let big = json!("x".repeat(MAX_METHOD_PAYLOAD));
        assert!(matches!(
            MethodCall::new("m", big).validate(),
            Err(InvokeError::PayloadTooLarge(_))
        ));
    }

    #[test]
    fn first_response_for_the_right_device_wins() {
        let methods = Methods::new();
        let (guard, mut rx) = methods.register("a");
        let rid = guard.rid.to_string();
        assert!(
            !methods.complete("b", &rid, 200, Bytes::new()),
            "other device"
        );
        assert!(!methods.complete("a", &format!("0{rid}"), 200, Bytes::new()));
        assert!(!methods.complete("a", "x", 200, Bytes::new()));
        assert!(methods.complete("a", &rid, 201, Bytes::from_static(b"{}")));
        assert!(!methods.complete("a", &rid, 202, Bytes::new()), "duplicate");
        assert_eq!(rx.try_recv().unwrap().status, 201);
        let (guard2, rx2) = methods.register("a");
        let rid2 = guard2.rid.to_string();
        drop(guard2);
        drop(rx2);
        assert!(!methods.complete("a", &rid2, 200, Bytes::new()), "expired");
        drop(guard);
        assert_eq!(methods.pending_len(), 0);
    }

    #[test]
    fn response_bodies_map_like_the_hub() {
        let result = |body: &'static [u8]| {
            to_result(DeviceResponse {
                status: 299,
                body: Bytes::from_static(body),
            })
        };
        assert_eq!(
            result(br#"{"ok":true}"#).unwrap(),
            MethodResult {
                status: 299,
                payload: json!({"ok": true})
            }
        );
        assert_eq!(result(b"").unwrap().payload, json!(null));
        assert_eq!(result(b" \n").unwrap().payload, json!(null));
        assert_eq!(result(b"42").unwrap().payload, json!(42));
        let err = result(b"not json").unwrap_err();
        assert_eq!((err.http_status(), err.error_code()), (502, 502_001));
    }
}

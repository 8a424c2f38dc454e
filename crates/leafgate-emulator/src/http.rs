//! The service API over HTTP/1.1 on loopback, plain and optionally over TLS with the emulator's
//! certificate (the Azure service SDKs only build `https://{HostName}` URLs):
//! - `POST /twins/{deviceId}/methods?api-version=...`: direct methods (`iothub-protocol.md` 4);
//! - `GET`, `PATCH` and `PUT /twins/{deviceId}?api-version=...`: the device twin as the service
//!   SDKs read and change it (see [`twin`] for the shape);
//! - `POST /devices/{deviceId}/messages/deviceBound?api-version=...`: queue a cloud-to-device
//!   message (see [`device_bound`]). The SDKs send these over AMQP, which the emulator does not
//!   speak; this REST form is the emulator's stand-in.
//!
//! Beside it, one route of the emulator's own, which no IoT hub has (the real back end reads
//! telemetry from Event Hubs, not from the hub's REST API): `GET
//! /emulator/devices/{deviceId}/messages?since=N` returns what the device sent, as JSON, for
//! the demo and for tests in other languages. It takes the same service token as the methods
//! route; see [`messages`] for the shape.
//!
//! Requests are checked in the hub's order (route, auth, body, then the call itself) and every
//! failure answers with the hub's error shape: a JSON body whose `Message` is a JSON *string*
//! holding `errorCode`, `trackingId`, `message`, `info` and `timestampUtc`, plus the
//! `iothub-errorcode` header naming the code. Bodies are size-limited and header reads time out,
//! so no client can hold memory or a task forever.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{ALLOW, AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use super::Shared;
use super::clock::{timestamp_utc, unix_now};
use super::methods::{self, InvokeError, MAX_METHOD_PAYLOAD, MethodCall};
use crate::accept::accept_until_shutdown;
use crate::c2d::{C2dError, C2dSend};
use crate::registry::{ServiceTwin, TwinUpdate};
use crate::sas::{self, TokenError, percent_decode};
use crate::telemetry::D2cMessage;
use crate::twin::TwinError;

/// Largest request body read: a 128 KB payload plus the rest of the JSON envelope.
const MAX_BODY: usize = MAX_METHOD_PAYLOAD + 16 * 1024;
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_HEADER_BUFFER: usize = 64 * 1024;
/// How long a connection may take to deliver its last responses at shutdown.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);
/// Most messages in one answer of the read endpoint, so a full log of large messages is read in
/// pages rather than built as one huge body.
pub const MAX_MESSAGES_PER_READ: usize = 1000;

type Body = Full<Bytes>;

/// Serves the API until shutdown, one task per HTTP connection; over TLS when `tls` is given.
pub(crate) async fn run(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    done: mpsc::Sender<()>,
) {
    accept_until_shutdown(listener, &shared, "http", done, |tcp, peer| {
        let shared = Arc::clone(&shared);
        let tls = tls.clone();
        async move {
            match tls {
                None => serve(shared, tcp, peer).await,
                Some(acceptor) => {
                    if let Some(stream) = handshake(&shared, &acceptor, tcp, peer).await {
                        serve(shared, stream, peer).await;
                    }
                }
            }
        }
    })
    .await;
}

/// The TLS handshake of an HTTPS connection, bounded in time and by shutdown.
async fn handshake(
    shared: &Shared,
    acceptor: &TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    let handshake = tokio::select! {
        biased;
        () = shared.shutdown.cancelled() => return None,
        handshake = tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(tcp)) => handshake,
    };
    match handshake {
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            log::debug!("emulator: https {peer}: tls handshake failed: {e}");
            None
        }
        Err(_) => {
            log::debug!("emulator: https {peer}: tls handshake timed out");
            None
        }
    }
}

async fn serve<S>(shared: Arc<Shared>, io: S, peer: SocketAddr)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let shutdown = shared.shutdown.clone();
    let service = service_fn(move |request| {
        let shared = Arc::clone(&shared);
        async move { Ok::<_, Infallible>(handle(&shared, request).await) }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BUFFER);
    let connection = builder.serve_connection(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        served = connection.as_mut() => {
            if let Err(e) = served {
                log::debug!("emulator: http {peer}: {e}");
            }
            return;
        }
        () = shutdown.cancelled() => {}
    }
    // Calls in flight see the shutdown and answer 503; let those answers out before closing, so
    // every request gets exactly one response.
    connection.as_mut().graceful_shutdown();
    match tokio::time::timeout(SHUTDOWN_DRAIN, connection).await {
        Ok(Err(e)) => log::debug!("emulator: http {peer}: {e}"),
        Ok(Ok(())) => {}
        Err(_) => log::debug!("emulator: http {peer}: closed before its response was sent"),
    }
}

/// What the request path names.
#[derive(Debug, PartialEq, Eq)]
enum Target<'a> {
    /// `/twins/{id}/methods`, id still percent-encoded.
    DeviceMethods(&'a str),
    /// `/twins/{id}`, id still percent-encoded.
    Twin(&'a str),
    /// `/devices/{id}/messages/deviceBound`, id still percent-encoded.
    DeviceBound(&'a str),
    /// `/twins/{id}/modules/{module}/methods`.
    ModuleMethods,
    /// `/emulator/devices/{id}/messages`, id still percent-encoded.
    DeviceMessages(&'a str),
    Unknown,
}

fn target(path: &str) -> Target<'_> {
    if let Some(rest) = path.strip_prefix("/emulator/devices/") {
        return match rest.split_once('/') {
            Some((id, "messages")) if !id.is_empty() => Target::DeviceMessages(id),
            _ => Target::Unknown,
        };
    }
    if let Some(rest) = path.strip_prefix("/devices/") {
        return match rest.split_once('/') {
            Some((id, "messages/deviceBound" | "messages/devicebound")) if !id.is_empty() => {
                Target::DeviceBound(id)
            }
            _ => Target::Unknown,
        };
    }
    let Some(rest) = path.strip_prefix("/twins/") else {
        return Target::Unknown;
    };
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [id] if !id.is_empty() => Target::Twin(id),
        [id, "methods"] if !id.is_empty() => Target::DeviceMethods(id),
        [id, "modules", module, "methods"] if !id.is_empty() && !module.is_empty() => {
            Target::ModuleMethods
        }
        _ => Target::Unknown,
    }
}

/// The service API's request body. Unknown fields are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InvokeBody {
    method_name: Option<String>,
    #[serde(default)]
    payload: Value,
    response_timeout_in_seconds: Option<i64>,
    connect_timeout_in_seconds: Option<i64>,
}

impl InvokeBody {
    /// Negative timeouts become out of range, so they get the hub's range message.
    fn into_call(self) -> MethodCall {
        let seconds = |value: i64| u64::try_from(value).unwrap_or(u64::MAX);
        MethodCall {
            method_name: self.method_name.unwrap_or_default(),
            payload: self.payload,
            response_timeout_s: self.response_timeout_in_seconds.map_or(30, seconds),
            connect_timeout_s: self.connect_timeout_in_seconds.map_or(0, seconds),
        }
    }
}

async fn handle(shared: &Shared, request: Request<Incoming>) -> Response<Body> {
    let path = request.uri().path().to_owned();
    let device = match target(&path) {
        Target::DeviceMethods(device) => device,
        Target::DeviceMessages(device) => return messages(shared, &request, device),
        Target::Twin(device) => return twin(shared, request, device).await,
        Target::DeviceBound(device) => return device_bound(shared, request, device).await,
        Target::ModuleMethods => {
            return plain_error(
                StatusCode::NOT_FOUND,
                "module identities are not emulated".to_owned(),
            );
        }
        Target::Unknown => {
            return plain_error(
                StatusCode::NOT_FOUND,
                format!("No HTTP resource was found that matches the request URI '{path}'."),
            );
        }
    };
    if request.method() != Method::POST {
        return method_not_allowed(request.method(), "POST");
    }
    if let Some(response) = refusal(shared, &request) {
        return response;
    }
    let Some(device) = percent_decode(device) else {
        return invoke_error(
            &InvokeError::InvalidArgument("device id is not valid percent-encoding.".to_owned()),
            0,
        );
    };
    let body = match read_body(request.into_body()).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let call = match serde_json::from_slice::<InvokeBody>(&body) {
        Ok(parsed) => parsed.into_call(),
        Err(e) => {
            return invoke_error(
                &InvokeError::InvalidArgument(format!("request body is not valid: {e}")),
                0,
            );
        }
    };
    let connect_timeout_s = call.connect_timeout_s;
    match methods::invoke(shared, &device, call).await {
        Ok(result) => json_response(
            StatusCode::OK,
            &json!({"status": result.status, "payload": result.payload}),
            None,
        ),
        Err(e) => invoke_error(&e, connect_timeout_s),
    }
}

fn method_not_allowed(method: &Method, allow: &'static str) -> Response<Body> {
    let mut response = plain_error(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("The requested resource does not support http method '{method}'."),
    );
    response
        .headers_mut()
        .insert(ALLOW, HeaderValue::from_static(allow));
    response
}

/// The checks every hub route makes before its own, in the hub's order: `api-version` present,
/// then a valid service token. The error response when one fails.
fn refusal(shared: &Shared, request: &Request<Incoming>) -> Option<Response<Body>> {
    let has_api_version = request.uri().query().unwrap_or("").split('&').any(|pair| {
        pair.strip_prefix("api-version=")
            .is_some_and(|v| !v.is_empty())
    });
    if !has_api_version {
        return Some(hub_error(
            StatusCode::BAD_REQUEST,
            400_001,
            "InvalidProtocolVersion",
            "The api-version query parameter is required.",
            json!({}),
        ));
    }
    if let Err(why) = authorize(shared, request.headers().get(AUTHORIZATION)) {
        log::debug!("emulator: service api call refused: {why}");
        return Some(hub_error(
            StatusCode::UNAUTHORIZED,
            401_003,
            "IoTHubUnauthorized",
            why,
            json!({}),
        ));
    }
    None
}

/// A 400 / 400004 `ArgumentInvalid` with `message`.
fn invalid(message: &str) -> Response<Body> {
    hub_error(
        StatusCode::BAD_REQUEST,
        400_004,
        "ArgumentInvalid",
        message,
        json!({}),
    )
}

/// Reads a request body of at most [`MAX_BODY`] bytes; the error response otherwise.
async fn read_body(body: Incoming) -> Result<Bytes, Response<Body>> {
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(invoke_error(&InvokeError::PayloadTooLarge(MAX_BODY), 0))
        }
        Err(e) => {
            log::debug!("emulator: could not read service api request body: {e}");
            Err(invalid("could not read the request body."))
        }
    }
}

/// `GET`, `PATCH` and `PUT /twins/{id}?api-version=...`: the device twin for the service.
///
/// `GET` answers 200 with the twin in the shape the service SDKs deserialize (their `Twin`
/// model):
///
/// ```json
/// {"deviceId": "pump-1", "etag": "AAAAAAAAAAM=", "version": 3, "status": "enabled",
///  "connectionState": "Connected", "authenticationType": "sas", "tags": {},
///  "properties": {"desired": {"speed": 5, "$version": 2},
///                 "reported": {"speed": 4, "$version": 2}}}
/// ```
///
/// `PATCH` merges the body's `properties.desired` into the desired properties (a JSON merge
/// patch) and its `tags` into the tags; `PUT` replaces both (a missing part becomes empty).
/// Other fields of the body (`deviceId`, `etag`, reported properties, ...) are ignored, and so
/// are `$version` and `$metadata` at the top of the desired properties, so a twin read with
/// `GET` can be sent back. Both answer 200 with the updated twin, and a desired change is
/// pushed to the device as [`crate::Emulator::update_desired`] does. `If-Match` (`*`, or the
/// etag, quoted or not) is honoured: another etag is 412 / 412001. An unknown device is
/// 404 / 404001; a body that is not a JSON object, or a change breaking the twin limits, is
/// 400 / 400004. No `$metadata` is kept or shown.
async fn twin(shared: &Shared, request: Request<Incoming>, device: &str) -> Response<Body> {
    let method = request.method().clone();
    if ![Method::GET, Method::PATCH, Method::PUT].contains(&method) {
        return method_not_allowed(&method, "GET, PATCH, PUT");
    }
    if let Some(response) = refusal(shared, &request) {
        return response;
    }
    let Some(device) = percent_decode(device) else {
        return invalid("device id is not valid percent-encoding.");
    };
    if method == Method::GET {
        return match shared.registry.service_twin(&device) {
            Ok(twin) => json_response(StatusCode::OK, &twin_json(&device, &twin), None),
            Err(e) => twin_error(&e),
        };
    }
    let if_match = request
        .headers()
        .get("if-match")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = match read_body(request.into_body()).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let update = match twin_update(&body, method == Method::PUT) {
        Ok(mut update) => {
            update.if_match = if_match;
            update
        }
        Err(why) => return invalid(&why),
    };
    match shared.registry.update_twin(&device, &update) {
        Ok(twin) => json_response(StatusCode::OK, &twin_json(&device, &twin), None),
        Err(e) => twin_error(&e),
    }
}

/// The change a `PATCH` (merge) or `PUT` (`replace`) body asks for.
fn twin_update(body: &[u8], replace: bool) -> Result<TwinUpdate, String> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| format!("request body is not valid JSON: {e}"))?;
    let Value::Object(mut twin) = value else {
        return Err("request body must be a twin object.".to_owned());
    };
    let mut desired = match twin.get_mut("properties").map(Value::take) {
        None | Some(Value::Null) => None,
        Some(Value::Object(mut properties)) => match properties.remove("desired") {
            None | Some(Value::Null) => None,
            Some(desired) => Some(desired),
        },
        Some(_) => return Err("properties must be an object.".to_owned()),
    };
    if let Some(Value::Object(map)) = &mut desired {
        map.remove("$version");
        map.remove("$metadata");
    }
    let mut tags = twin.remove("tags").filter(|tags| !tags.is_null());
    if replace {
        desired.get_or_insert_with(|| json!({}));
        tags.get_or_insert_with(|| json!({}));
    }
    Ok(TwinUpdate {
        desired,
        tags,
        replace,
        if_match: None,
    })
}

fn twin_json(device: &str, twin: &ServiceTwin) -> Value {
    json!({
        "deviceId": device,
        "etag": twin.etag,
        "version": twin.version,
        "status": if twin.enabled { "enabled" } else { "disabled" },
        "connectionState": if twin.connected { "Connected" } else { "Disconnected" },
        "authenticationType": "sas",
        "cloudToDeviceMessageCount": twin.c2d_count,
        "tags": twin.tags,
        "properties": {
            "desired": twin.twin.desired,
            "reported": twin.twin.reported,
        },
    })
}

fn twin_error(error: &TwinError) -> Response<Body> {
    let status =
        StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let message = match error {
        TwinError::DeviceNotFound => "Device not found.".to_owned(),
        other => other.to_string(),
    };
    hub_error(
        status,
        error.error_code(),
        error.error_name(),
        &message,
        json!({}),
    )
}

/// `POST /devices/{id}/messages/deviceBound?api-version=...`: queues a cloud-to-device message
/// whose body is the request body, as [`crate::Emulator::send_c2d`] does, and answers 204.
/// Headers: `iothub-messageid` (`$.mid`; generated when absent), `iothub-correlationid`
/// (`$.cid`), `iothub-expiry` (absolute expiry, UTC, `2026-12-06T05:04:00Z` with optional
/// fraction; default 1 h from now, at most 48 h), and one `iothub-app-{name}` per application
/// property (HTTP lowercases header names, so `{name}` arrives in lower case). Errors:
/// 404001 unknown device, 403004 `DeviceMaximumQueueDepthExceeded` (50 messages queued),
/// 413001 body over 64 KB, 400004 a malformed header.
async fn device_bound(shared: &Shared, request: Request<Incoming>, device: &str) -> Response<Body> {
    if request.method() != Method::POST {
        return method_not_allowed(request.method(), "POST");
    }
    if let Some(response) = refusal(shared, &request) {
        return response;
    }
    let Some(device) = percent_decode(device) else {
        return invalid("device id is not valid percent-encoding.");
    };
    let message = match c2d_send(request.headers(), SystemTime::now()) {
        Ok(message) => message,
        Err(why) => return invalid(&why),
    };
    let body = match read_body(request.into_body()).await {
        Ok(body) => body,
        Err(response) => return response,
    };
    let message = C2dSend {
        body: body.to_vec(),
        ..message
    };
    match shared.registry.send_c2d(&device, message) {
        Ok(_) => {
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::NO_CONTENT;
            response
        }
        Err(e) => {
            let status =
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let message = match &e {
                C2dError::DeviceNotFound => "Device not found.".to_owned(),
                other => other.to_string(),
            };
            hub_error(status, e.error_code(), e.error_name(), &message, json!({}))
        }
    }
}

/// The message a `deviceBound` request's headers describe (without its body).
fn c2d_send(headers: &hyper::HeaderMap, now: SystemTime) -> Result<C2dSend, String> {
    let text = |name: &str| -> Result<Option<String>, String> {
        headers
            .get(name)
            .map(|v| {
                v.to_str()
                    .map(str::to_owned)
                    .map_err(|_| format!("header {name} is not text."))
            })
            .transpose()
    };
    let ttl = match text("iothub-expiry")? {
        None => None,
        Some(expiry) => {
            let at = parse_utc(&expiry)
                .ok_or_else(|| format!("iothub-expiry {expiry:?} is not a UTC time."))?;
            Some(at.duration_since(now).unwrap_or(Duration::ZERO))
        }
    };
    let mut properties = Vec::new();
    for (name, value) in headers {
        if let Some(key) = name.as_str().strip_prefix("iothub-app-") {
            let value = value
                .to_str()
                .map_err(|_| format!("header {name} is not text."))?;
            properties.push((key.to_owned(), value.to_owned()));
        }
    }
    Ok(C2dSend {
        body: Vec::new(),
        properties,
        message_id: text("iothub-messageid")?,
        correlation_id: text("iothub-correlationid")?,
        ttl,
    })
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` as a time.
fn parse_utc(text: &str) -> Option<SystemTime> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.splitn(3, '-');
    let year: i64 = date.next()?.parse().ok()?;
    let month: u32 = date.next()?.parse().ok()?;
    let day: u32 = date.next()?.parse().ok()?;
    let (hms, fraction) = time.split_once('.').unwrap_or((time, ""));
    let mut hms = hms.splitn(3, ':');
    let hour: u64 = hms.next()?.parse().ok()?;
    let minute: u64 = hms.next()?.parse().ok()?;
    let second: u64 = hms.next()?.parse().ok()?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    if !fraction.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let nanos: u32 = format!("{fraction:0<9}").get(..9)?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm), the inverse of
    // `civil_from_days`.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second;
    Some(UNIX_EPOCH + Duration::new(seconds, nanos))
}

/// `GET /emulator/devices/{id}/messages[?since=N]`: the device's kept device-to-cloud messages
/// numbered `N` (default 0) or later, at most [`MAX_MESSAGES_PER_READ`]:
///
/// ```json
/// {"device": "pump-1", "next": 3, "more": false, "dropped": 0,
///  "messages": [{"seq": 2, "receivedUtc": "2026-12-06T05:04:00.1230000Z", "qos": 1,
///                "connection": 1, "duplicate": false,
///                "systemProperties": {"$.mid": "m-2", "$.ct": "application/json"},
///                "properties": {"site": "hall A"},
///                "body": "{\"temp\":21}", "bodyEncoding": "utf-8"}]}
/// ```
///
/// `next` is the `since` of the following read (`more` says whether it has messages already);
/// a gap in `seq` means messages were dropped for room (`dropped` counts them over the
/// emulator's life). Properties are decoded; when a bag repeats a key, the last wins. A body
/// that is not UTF-8 comes as base64, `bodyEncoding: "base64"`. An id the emulator never saw
/// is 404001; a malformed `since` is 400004; auth is the service API's (401003).
fn messages(shared: &Shared, request: &Request<Incoming>, device: &str) -> Response<Body> {
    if request.method() != Method::GET {
        return method_not_allowed(request.method(), "GET");
    }
    if let Err(why) = authorize(shared, request.headers().get(AUTHORIZATION)) {
        log::debug!("emulator: message read refused: {why}");
        return hub_error(
            StatusCode::UNAUTHORIZED,
            401_003,
            "IoTHubUnauthorized",
            why,
            json!({}),
        );
    }
    let Some(device) = percent_decode(device) else {
        return invoke_error(
            &InvokeError::InvalidArgument("device id is not valid percent-encoding.".to_owned()),
            0,
        );
    };
    let Some(since) = since_param(request.uri().query().unwrap_or("")) else {
        return invoke_error(
            &InvokeError::InvalidArgument("since must be a whole number.".to_owned()),
            0,
        );
    };
    let Some((kept, log_next, dropped)) =
        shared
            .registry
            .telemetry(&device, since, MAX_MESSAGES_PER_READ)
    else {
        return invoke_error(&InvokeError::DeviceNotFound, 0);
    };
    let next = kept.last().map_or(log_next, |m| m.seq + 1);
    let body = json!({
        "device": device,
        "next": next,
        "more": next < log_next,
        "dropped": dropped,
        "messages": kept.iter().map(message_json).collect::<Vec<_>>(),
    });
    json_response(StatusCode::OK, &body, None)
}

/// The `since` query parameter; 0 when absent, `None` when it is not a whole number.
fn since_param(query: &str) -> Option<u64> {
    let mut since = 0;
    for pair in query.split('&') {
        if let Some(value) = pair.strip_prefix("since=") {
            since = value.parse().ok()?;
        }
    }
    Some(since)
}

fn message_json(message: &D2cMessage) -> Value {
    let object = |pairs: &[(String, String)]| {
        let map: serde_json::Map<String, Value> = pairs
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        Value::Object(map)
    };
    let (body, encoding) = match std::str::from_utf8(&message.body) {
        Ok(text) => (text.to_owned(), "utf-8"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(&message.body),
            "base64",
        ),
    };
    json!({
        "seq": message.seq,
        "receivedUtc": timestamp_utc(message.received_utc),
        "qos": message.qos,
        "connection": message.connection,
        "duplicate": message.duplicate,
        "systemProperties": object(&message.system_properties),
        "properties": object(&message.properties),
        "body": body,
        "bodyEncoding": encoding,
    })
}

/// Checks a service token: `skn` names the policy, `sr` covers the hub host, signed with the
/// policy key, not expired. The error text never includes the token.
fn authorize(shared: &Shared, header: Option<&HeaderValue>) -> Result<(), &'static str> {
    let token = header
        .ok_or("Authorization header missing")?
        .to_str()
        .map_err(|_| "Authorization header is not text")?;
    let parsed = sas::parse(token)
        .map_err(|_| "Authorization header is not a valid SharedAccessSignature")?;
    let (policy, key) = &shared.service_policy;
    let skn = parsed.skn.as_deref().and_then(percent_decode);
    if skn.as_deref() != Some(policy.as_str()) {
        return Err("Unknown shared access policy (skn)");
    }
    sas::verify(token, key, &shared.host_name, unix_now()).map_err(|e| match e {
        TokenError::Expired => "The token is expired",
        TokenError::WrongResource => "The token is scoped to another resource",
        TokenError::BadSignature => "The token signature does not match",
        TokenError::Prefix | TokenError::Missing(_) | TokenError::BadExpiry => {
            "The token is malformed"
        }
    })?;
    Ok(())
}

fn invoke_error(error: &InvokeError, connect_timeout_s: u64) -> Response<Body> {
    let status =
        StatusCode::from_u16(error.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let (message, info) = match error {
        InvokeError::DeviceNotOnline => (
            "The operation failed because the requested device isn't online or hasn't registered the direct method callback.".to_owned(),
            json!({"timeout": hh_mm_ss(connect_timeout_s)}),
        ),
        InvokeError::Timeout => (
            "Timed out waiting for the response from device.".to_owned(),
            json!({}),
        ),
        InvokeError::DeviceNotFound => ("Device not found.".to_owned(), json!({})),
        InvokeError::InvalidArgument(text) => (text.clone(), json!({})),
        other => (other.to_string(), json!({})),
    };
    hub_error(
        status,
        error.error_code(),
        error.error_name(),
        &message,
        info,
    )
}

/// The hub's error body: `Message` is a JSON string holding the error object.
pub(crate) fn hub_error_body(code: u32, message: &str, info: Value) -> Value {
    let inner = json!({
        "errorCode": code,
        "trackingId": tracking_id(),
        "message": message,
        "info": info,
        "timestampUtc": timestamp_utc(SystemTime::now()),
    });
    json!({"Message": inner.to_string(), "ExceptionMessage": ""})
}

fn hub_error(
    status: StatusCode,
    code: u32,
    name: &'static str,
    message: &str,
    info: Value,
) -> Response<Body> {
    json_response(status, &hub_error_body(code, message, info), Some(name))
}

/// Errors outside IoT Hub's own codes (unknown routes), in the ASP.NET shape the hub's front end
/// uses, without `iothub-errorcode`.
fn plain_error(status: StatusCode, message: String) -> Response<Body> {
    json_response(
        status,
        &json!({"Message": message, "ExceptionMessage": ""}),
        None,
    )
}

fn json_response(
    status: StatusCode,
    body: &Value,
    error_name: Option<&'static str>,
) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    if let Some(name) = error_name {
        headers.insert("iothub-errorcode", HeaderValue::from_static(name));
    }
    response
}

fn tracking_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A .NET `TimeSpan` as the hub prints it in `info.timeout`.
fn hh_mm_ss(seconds: u64) -> String {
    format!(
        "{:02}:{:02}:{:02}",
        seconds / 3600,
        seconds / 60 % 60,
        seconds % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(
            target("/twins/pump-7/methods"),
            Target::DeviceMethods("pump-7")
        );
        assert_eq!(
            target("/twins/a%2Fb/methods"),
            Target::DeviceMethods("a%2Fb")
        );
        assert_eq!(target("/twins/d/modules/m/methods"), Target::ModuleMethods);
        assert_eq!(target("/twins/a%20b"), Target::Twin("a%20b"));
        assert_eq!(
            target("/devices/a%20b/messages/deviceBound"),
            Target::DeviceBound("a%20b")
        );
        assert_eq!(
            target("/emulator/devices/a%20b/messages"),
            Target::DeviceMessages("a%20b")
        );
        for path in [
            "/",
            "/twins//methods",
            "/twins/d/methods/",
            "/twins/",
            "/twins/d/",
            "/devices/d/methods",
            "/devices/d",
            "/devices//messages/deviceBound",
            "/devices/d/messages/deviceBound/",
            "/devices/d/messages/events",
            "/emulator/devices//messages",
            "/emulator/devices/d/messages/",
            "/emulator/devices/d",
            "/emulator/devices/a/b/messages",
        ] {
            assert_eq!(target(path), Target::Unknown, "{path}");
        }
    }

    #[test]
    fn twin_bodies_name_desired_properties_and_tags() {
        let update = twin_update(
            br#"{"deviceId":"d","etag":"x","tags":{"a":1},"properties":{"desired":{"s":2,"$version":4,"$metadata":{}},"reported":{"r":1}}}"#,
            false,
        )
        .unwrap();
        assert_eq!(update.desired, Some(json!({"s": 2})));
        assert_eq!(update.tags, Some(json!({"a": 1})));
        let only_tags = twin_update(br#"{"tags":{"a":1},"properties":null}"#, false).unwrap();
        assert_eq!(only_tags.desired, None);
        let replace = twin_update(br#"{"deviceId":"d"}"#, true).unwrap();
        assert_eq!(
            (replace.desired, replace.tags),
            (Some(json!({})), Some(json!({})))
        );
        for bad in [&b"[]"[..], b"{", br#"{"properties":1}"#] {
            assert!(twin_update(bad, false).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn utc_times_parse_as_the_hub_writes_them() {
        for (text, secs, nanos) in [
            ("1970-01-01T00:00:00Z", 0, 0),
            ("2020-05-15T20:43:10.3899553Z", 1_589_575_390, 389_955_300),
            ("2000-02-29T00:00:00Z", 951_782_400, 0),
            ("2026-01-01T00:00:00.5Z", 1_767_225_600, 500_000_000),
        ] {
            let at = parse_utc(text).unwrap();
            assert_eq!(at, UNIX_EPOCH + Duration::new(secs, nanos), "{text}");
        }
        for bad in [
            "",
            "2026-01-01",
            "2026-01-01T00:00:00",
            "2026-13-01T00:00:00Z",
            "x-y-zTa:b:cZ",
            "2026-01-01T00:00:00.x1Z",
        ] {
            assert_eq!(parse_utc(bad), None, "{bad}");
        }
    }

    #[test]
    fn device_bound_headers_make_the_message() {
        let mut headers = hyper::HeaderMap::new();
        headers.insert("iothub-messageid", HeaderValue::from_static("m-1"));
        headers.insert("iothub-correlationid", HeaderValue::from_static("c-1"));
        headers.insert("iothub-app-Mode", HeaderValue::from_static("eco"));
        headers.insert(
            "iothub-expiry",
            HeaderValue::from_static("2026-01-01T00:10:00Z"),
        );
        let now = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        let send = c2d_send(&headers, now).unwrap();
        assert_eq!(send.message_id.as_deref(), Some("m-1"));
        assert_eq!(send.correlation_id.as_deref(), Some("c-1"));
        assert_eq!(send.properties, [("mode".to_owned(), "eco".to_owned())]);
        assert_eq!(send.ttl, Some(Duration::from_secs(600)));
        headers.insert("iothub-expiry", HeaderValue::from_static("yesterday"));
        assert!(c2d_send(&headers, now).is_err());
        assert_eq!(
            c2d_send(&hyper::HeaderMap::new(), now).unwrap(),
            C2dSend::default()
        );
    }

    #[test]
    fn since_defaults_to_zero_and_must_be_a_whole_number() {
        assert_eq!(since_param(""), Some(0));
        assert_eq!(since_param("since=12"), Some(12));
        assert_eq!(since_param("x=1&since=3"), Some(3));
        for bad in ["since=", "since=-1", "since=1.5", "since=a"] {
            assert_eq!(since_param(bad), None, "{bad}");
        }
    }

    #[test]
    fn messages_render_decoded_properties_and_a_binary_body_as_base64() {
        let message = D2cMessage {
            seq: 4,
            received_at: tokio::time::Instant::now(),
            received_utc: UNIX_EPOCH + Duration::from_secs(1_767_225_600),
            connection: 2,
            qos: 0,
            system_properties: vec![("$.mid".to_owned(), "m".to_owned())],
            properties: vec![("a b".to_owned(), "1".to_owned())],
            body: Bytes::from_static(&[0xff, 0x00]),
            duplicate: true,
        };
        assert_eq!(
            message_json(&message),
            json!({
                "seq": 4,
                "receivedUtc": "2026-01-01T00:00:00.0000000Z",
                "qos": 0,
                "connection": 2,
                "duplicate": true,
                "systemProperties": {"$.mid": "m"},
                "properties": {"a b": "1"},
                "body": "/wA=",
                "bodyEncoding": "base64",
            })
        );
    }

    #[test]
    fn error_body_holds_json_in_a_string() {
        let body = hub_error_body(
            504_101,
            "Timed out waiting for the response from device.",
            json!({}),
        );
        let inner: Value = serde_json::from_str(body["Message"].as_str().unwrap()).unwrap();
        assert_eq!(inner["errorCode"], 504_101);
        assert_eq!(
            inner["message"],
            "Timed out waiting for the response from device."
        );
        assert_eq!(inner["trackingId"].as_str().unwrap().len(), 32);
        assert_eq!(body["ExceptionMessage"], "");
    }

    #[test]
    fn timestamps_and_timespans_format_like_dotnet() {
        let t = UNIX_EPOCH + Duration::new(1_589_575_390, 389_955_300);
        assert_eq!(timestamp_utc(t), "2020-05-15T20:43:10.3899553Z");
        assert_eq!(timestamp_utc(UNIX_EPOCH), "1970-01-01T00:00:00.0000000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(timestamp_utc(leap), "2000-02-29T00:00:00.0000000Z");
        let new_year = UNIX_EPOCH + Duration::from_secs(1_767_225_600);
        assert_eq!(timestamp_utc(new_year), "2026-01-01T00:00:00.0000000Z");
        assert_eq!(hh_mm_ss(0), "00:00:00");
        assert_eq!(hh_mm_ss(300), "00:05:00");
        assert_eq!(hh_mm_ss(3725), "01:02:05");
    }

    #[test]
    fn body_defaults_and_negative_timeouts() {
        let call = serde_json::from_str::<InvokeBody>(r#"{"methodName":"m"}"#)
            .unwrap()
            .into_call();
        assert_eq!(call, MethodCall::new("m", Value::Null));
        let call = serde_json::from_str::<InvokeBody>(
            r#"{"methodName":"m","payload":[1],"responseTimeoutInSeconds":-1,"connectTimeoutInSeconds":7,"extra":1}"#,
        )
        .unwrap()
        .into_call();
        assert_eq!(call.response_timeout_s, u64::MAX);
        assert_eq!(call.connect_timeout_s, 7);
        assert_eq!(call.payload, json!([1]));
    }
}

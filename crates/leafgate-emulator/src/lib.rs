//! A local Azure IoT Hub for the integration tests and the demo: the device-side MQTT endpoint
//! (over TLS or WebSockets, SAS or X.509), the service-side API (direct methods, twins,
//! cloud-to-device messages) and optionally a Device Provisioning Service, behaving as
//! `iothub-protocol.md` describes the real services.
//!
//! Start one with [`Emulator::start`] on `127.0.0.1:0`, register devices with
//! [`Emulator::add_device`], point devices at [`Emulator::mqtt_addr`] trusting
//! [`Emulator::ca_pem`], and call methods through [`ServiceClient`] (HTTP) or
//! [`Emulator::invoke`] (in process, same code path). Device twins are read and changed with
//! [`Emulator::twin`], [`Emulator::update_desired`] and [`Emulator::wait_reported`], or over
//! HTTP (`/twins/{id}`); cloud-to-device messages are sent with [`Emulator::send_c2d`] (or
//! `POST /devices/{id}/messages/deviceBound`) and followed with [`Emulator::c2d`] and
//! [`Emulator::wait_c2d`]. Per-device [`DeviceStats`] live in a
//! `watch` channel, so tests await a state ([`Emulator::wait_for`]) instead of sleeping. What
//! devices send as telemetry is read back with [`Emulator::telemetry`] and
//! [`Emulator::wait_telemetry`], or over HTTP from `GET /emulator/devices/{id}/messages`.
//!
//! # What it emulates
//! - MQTT 3.1.1 over TLS 1.2/1.3 with a CA generated at start (server certificate for
//!   `localhost`, `127.0.0.1`, `::1` and the configured host name).
//! - MQTT over WebSockets (`iothub-protocol.md` 1.1) when [`EmulatorConfig::ws_addr`] is set:
//!   the same TLS, then an HTTP/1.1 upgrade on `/$iothub/websocket` only (another path: 404 and
//!   close) with the `mqtt` subprotocol, compared without case (none offered: 400 and close),
//!   then binary frames carrying the MQTT byte stream (a packet may span frames, a frame may
//!   hold several packets). From there a connection is served exactly as one on the MQTT
//!   listener: same faults (a [`Fault::RefuseTcp`] closes both listeners), history and
//!   registry; [`ConnectRecord::transport`] says which listener a CONNECT came through.
//! - CONNECT: client id = device id, username `{host}/{id}/?api-version=...` (or the legacy
//!   `/api-version=` form; unknown query keys ignored; api-version required), password = device
//!   SAS token verified with [`sas::verify`] for a device added with [`Emulator::add_device`].
//!   Every auth or identity failure gets CONNACK 5 and a close; MQTT 5 gets CONNACK 1. Refusal
//!   reasons are recorded, never keys or signatures.
//! - X.509 client certificates (`iothub-protocol.md` 1.6): every TLS handshake asks for a
//!   client certificate without requiring one (its handshake signature is verified, the
//!   certificate itself is judged at CONNECT). A device added with
//!   [`Emulator::add_device_x509`] sends no password and is checked by its
//!   [`X509Auth`]: a thumbprint (hex SHA-1 or SHA-256 of the DER leaf, primary or secondary,
//!   compared without case or `:` separators), or CA-signed: the chain verifies (rustls'
//!   webpki verifier: signatures, validity dates, client-auth usage) against a CA added with
//!   [`Emulator::add_verified_ca`], and the leaf's subject CN is the device id. No certificate,
//!   a thumbprint mismatch, an untrusted chain, a wrong CN, an expired or not yet valid
//!   certificate, or a password from an X.509 device: CONNACK 5, each with its own
//!   [`RefusalReason`]. [`ConnectRecord::client_cert`] says whether a certificate came.
//!   [`tls::TestCa`], [`tls::self_signed`] and the `tls::thumbprint_*` functions make the
//!   certificates for tests.
//! - One connection per device (a new CONNECT closes the older one), keep-alive enforcement at
//!   1.5 x keep-alive capped at 1767 s (also when keep-alive is 0), disconnect when the token's
//!   `se` passes (an X.509 connection has no token, so no such end), disconnect when a device is
//!   removed or disabled.
//! - Persistent sessions as far as subscriptions go: a CONNECT with CleanSession 0 resumes the
//!   subscriptions of the device's last CleanSession-0 connection (CONNACK session present = 1),
//!   so a method reaches a device that reconnected without subscribing again, as the Python SDK
//!   expects (it never re-subscribes); CleanSession 1 discards them. Removing a device ends its
//!   session.
//! - Records what each client put on the wire ([`DeviceStats::last_connect`],
//!   [`DeviceStats::subscribe_requests`]) for comparing clients; passwords only as their shape.
//! - SUBSCRIBE to filters under the hub's device topic trees (methods, twin responses, desired
//!   properties, the device's own C2D), granted at QoS <= 1; at most five per connection (more
//!   get the SUBACK failure code; per-method filters count, which is why the docs advise
//!   `$iothub/methods/POST/#`); UNSUBSCRIBE; PINGREQ; DISCONNECT. QoS 0 and 1 PUBLISH to method
//!   responses, twin requests and the device's own telemetry topic (256 KB limit, PUBACK for
//!   QoS 1).
//! - Telemetry (`iothub-protocol.md` 6.1): `devices/{id}/messages/events/{bag}`, the bag decoded
//!   with [`leafgate::hub::d2c::parse`] (`%24.` or `$.` keys, optional trailing `/`), recorded
//!   per device in arrival order as a [`D2cMessage`]: time, QoS, system (`$.`) and application
//!   properties apart, body, and whether its `$.mid` repeats a kept message's. Recorded before
//!   the PUBACK goes out, so a client that has its PUBACK finds its message. At most
//!   [`EmulatorConfig::telemetry_per_device`] are kept per device; older ones are dropped and
//!   counted ([`DeviceStats::telemetry_dropped`]).
//! - Closes the connection, without an error code as the hub does, on QoS 2 PUBLISH, publishes to
//!   unknown topics or another device's topics, telemetry whose property bag is not
//!   percent-encoded UTF-8, subscriptions to unknown filters, malformed or oversized
//!   (> 264 KiB) packets, and any packet that makes no sense from a device.
//! - Direct methods: `$iothub/methods/POST/{name}/?$rid={n}` at QoS 0 with the JSON payload as
//!   body, only to a device that is online with a subscription matching the request topic
//!   (normally `$iothub/methods/POST/#`); the first `$iothub/methods/res/{status}/?$rid={n}` from
//!   that device wins, late, duplicate and foreign answers are counted and ignored. `connectTimeoutInSeconds` waits for the device to come
//!   online and subscribe; the response timeout starts when the request is sent.
//! - Device twins (`iothub-protocol.md` 5), one per registered device, kept across connections
//!   and re-keying, dropped when the device is removed: desired and reported properties, each
//!   with its own `$version` (1 for a new twin, +1 per change), and tags for the service.
//!   `$iothub/twin/GET/?$rid=` (QoS 0 or 1, body ignored) answers
//!   `$iothub/twin/res/200/?$rid=` with `{"desired":{..,"$version":N},"reported":{..,"$version":M}}`;
//!   `$iothub/twin/PATCH/properties/reported/?$rid=` with a JSON merge patch (RFC 7386) answers
//!   `$iothub/twin/res/204/?$rid=..&$version={new}`. A patch that is not a JSON object, breaks
//!   a limit (depth, keys, strings, integers, 32 KB per document: see the `twin` module) or is
//!   not JSON answers 400 with `{"errorCode":400004,"message":..}` and changes nothing.
//!   Answers go out at QoS 0, only if the device subscribed to a filter matching them
//!   (`$iothub/twin/res/#`). A desired change by the service ([`Emulator::update_desired`],
//!   `PATCH`/`PUT /twins/{id}`) is pushed as `$iothub/twin/PATCH/properties/desired/?$version=`
//!   with the patch and `$version` to a device online and subscribed to
//!   `$iothub/twin/PATCH/properties/desired/#`, never queued for later. Hub-wide throttles
//!   ([`EmulatorConfig::twin_reads_per_s`], [`EmulatorConfig::twin_updates_per_s`]) answer 429
//!   with errorCode 429001 beyond the rate in the current 1-second window. A malformed twin
//!   topic or rid closes the connection.
//! - Cloud-to-device messages (`iothub-protocol.md` 6.2): a queue per registered device (at most
//!   50 queued or locked, bodies up to 64 KB, TTL 1 h by default and at most 48 h), kept across
//!   connections, dropped with the device. Delivered at QoS 1 on
//!   `devices/{id}/messages/devicebound/{bag}` to a device online and subscribed to a matching
//!   filter (normally `devices/{id}/messages/devicebound/#`, kept across CleanSession-0
//!   reconnects), the bag carrying `%24.mid`, `%24.to=%2Fdevices%2F{id}%2Fmessages%2FdeviceBound`,
//!   `%24.cid` when set, then the application properties, percent-encoded as the SDKs encode
//!   D2C bags. Delivery locks a message and counts it; the device's PUBACK completes it; without
//!   one it is delivered again (same `$.mid`) after [`EmulatorConfig::c2d_lock_timeout`], on
//!   whatever connection is current then, and dead-lettered after
//!   [`EmulatorConfig::c2d_max_delivery_count`] deliveries; an expired message is dead-lettered
//!   too. States, delivery counts and completion times are kept ([`C2dRecord`]).
//! - Service API `POST /twins/{id}/methods?api-version=...` with a policy SAS token: 200
//!   `{status, payload}`, 404001, 404103, 504101, 400004 (timeouts outside 5–300 s or 0–300 s,
//!   bad body), 401003, 413001 (payload > 128 KB), 503001 (shutting down), with the
//!   JSON-in-string error body and the `iothub-errorcode` header. `GET`, `PATCH` and `PUT
//!   /twins/{id}` read, merge into and replace a twin's desired properties and tags, in the
//!   shape the service SDKs' `Twin` model reads (`deviceId`, `etag`, `version`, `status`,
//!   `connectionState`, `tags`, `properties.desired`/`reported`); 404001 for an unknown
//!   device, 400004 for a change breaking the limits, 412001 for an `If-Match` that is not `*`
//!   or the etag. `POST /devices/{id}/messages/deviceBound` queues a cloud-to-device message
//!   (headers `iothub-messageid`, `iothub-correlationid`, `iothub-expiry`, `iothub-app-{name}`;
//!   204; 404001, 403004 `DeviceMaximumQueueDepthExceeded`, 413001 for a body over 64 KB,
//!   400004). This route is the emulator's stand-in, not a route of the hub's service API: the
//!   service SDKs send C2D messages over AMQP (`azure-iot-hub` 2.7's
//!   `IoTHubRegistryManager.send_c2d_message` goes through uamqp to
//!   `amqps://{host}/messages/devicebound`), which is not emulated.
//! - A Device Provisioning Service (`iothub-protocol.md` 9a) when [`EmulatorConfig::dps`] is
//!   set: MQTT over TLS on [`Emulator::dps_addr`] with the same CA (and the same optional client
//!   certificate). Enrollments: [`Emulator::dps_add_group`] (a symmetric group key; a device's
//!   key is [`sas::derive_device_key`] of its registration id) and
//!   [`Emulator::dps_add_individual`] (its own key, or an X.509 thumbprint), each linked to a
//!   hub ([`Emulator::hub_link`]: this emulator or another running one), changed for later
//!   registrations with [`Emulator::dps_set_hub`]. CONNECT: client id = registration id,
//!   username `{idScope}/registrations/{id}/api-version=...` (with or without `?`, other query
//!   keys such as `ClientVersion` ignored), password a SAS token for
//!   `{idScope}/registrations/{id}` (url-encoded as `sr`) with `skn=registration` or none;
//!   for an X.509 enrollment the certificate and no password. Unknown registration, wrong
//!   scope, bad signature and the like: CONNACK 5, the reason recorded. Every session is clean.
//!   Subscribe `$dps/registrations/res/#`; `$dps/registrations/PUT/iotdps-register/?$rid=`
//!   with `{"registrationId"}` answers `res/202/?$rid=..&retry-after={s}` and
//!   `{"operationId","status":"assigning"}`; a poll,
//!   `$dps/registrations/GET/iotdps-get-operationstatus/?$rid=..&operationId=..`,
//!   answers 202 again until [`DpsConfig::retry_after_s`] has passed
//!   since the register, then 200 with `{"operationId","status":"assigned","registrationState":
//!   {registrationId, assignedHub, deviceId, status, substatus, createdDateTimeUtc,
//!   lastUpdatedDateTimeUtc, etag}}`, having registered the device in that hub with the same
//!   credential (or re-keyed it there). A body naming another registration id: 400; an unknown
//!   operation: 404; beyond [`DpsConfig::registrations_per_s`] (registers and polls, over all
//!   devices): 429 with `retry-after`; errors carry `{errorCode, message, trackingId}`.
//!
//! # Fault hooks and records, for tests
//! - [`Emulator::drop_all_connections`] and [`Emulator::drop_connection`] close connections as
//!   the hub does (TCP close, no MQTT packet).
//! - [`Emulator::inject_fault`] switches a [`Fault`] on, for every device or some
//!   ([`Target`]), until cleared or for a given time: refuse at the TCP level (listener closed),
//!   close TCP at once, stall (never CONNACK), hang up after CONNECT, CONNACK 5, or CONNACK 3 as
//!   a throttled hub; and for telemetry: withhold PUBACKs (sent when the fault ends), close the
//!   connection after recording a message but before its PUBACK (N times), or close it without
//!   recording, as a hub whose message quota is used up; and for twins: answer every twin
//!   request 429 ([`Fault::TwinThrottle`]), or never answer ([`Fault::TwinSilent`]); and for
//!   cloud-to-device messages: lose the device's PUBACKs ([`Fault::LoseC2dAcks`]), so that a
//!   message is delivered again after its lock timeout.
//! - [`Emulator::telemetry`] and [`Emulator::wait_telemetry`] return what each device sent;
//!   `GET /emulator/devices/{id}/messages?since=N` (service token; not a route of the real hub,
//!   whose back end reads telemetry from Event Hubs) returns the same as JSON, in pages of at
//!   most [`MAX_MESSAGES_PER_READ`].
//! - [`Emulator::connect_attempts`] lists every connection attempt with its times (TCP accept,
//!   CONNECT) and outcome, to compute connect rates and backoff gaps;
//!   [`Emulator::method_exchanges`] lists every method request with the time it was sent and
//!   the time and status of every response to its rid; [`Emulator::twin_requests`] lists every
//!   twin request with its time and the status it was answered; [`Emulator::dps_requests`]
//!   lists every DPS CONNECT (with its CONNACK code and refusal reason), register and poll
//!   with its time and the status it was answered. All can be awaited.
//!
//! # Emulator choices where the hub's behaviour is undocumented
//! - A device response body that is not JSON (or larger than 128 KB) answers the caller HTTP 502,
//!   errorCode 502001, `iothub-errorcode: BadDeviceResponse` (the Node SDK maps 502 to
//!   `BadDeviceResponseError`; the code is the emulator's own). An empty body is `payload: null`.
//! - A missing `api-version` on the service API is 400001 `InvalidProtocolVersion`; a malformed
//!   body or method name is 400004. Method names may not contain `#`, `+` or control characters,
//!   and are at most 1 KiB.
//! - A rid is answered only by the device it was sent to, byte for byte.
//! - DPS: the operation is assigned by the first poll after `retry-after`, never in the
//!   background; its 200 is kept and repeated for later polls of the same operation (the newest
//!   4096 operations are kept). A registration assigned to another hub than its last one is
//!   `deviceDataMigrated` and its twin is copied from the last hub (DPS's default "re-provision
//!   and migrate data" policy, the only one emulated; the old hub keeps the device); one to the
//!   same hub keeps its substatus. The error codes are the hub's for the same statuses (400004,
//!   404001, 429001). Answers go out at QoS 0, and only once the device has subscribed. A
//!   subscription to any other filter, a publish to any other topic and QoS 2 close the
//!   connection. A register re-reads the enrollment, so [`Emulator::dps_set_hub`] applies to
//!   the next register even on a connection opened before. A registration whose hub has
//!   stopped ends `failed` (errorCode 500000). DPS connections are untouched by the hub's
//!   faults and [`Emulator::drop_all_connections`].
//! - X.509: a thumbprint device's certificate outside its validity period is refused
//!   ([`RefusalReason::CertificateExpired`], [`RefusalReason::CertificateNotYetValid`]), though
//!   the hub matches such a device by thumbprint alone; a client certificate presented by a
//!   SAS device is ignored (its token decides); an X.509 connection does not end at the
//!   certificate's expiry.
//! - The WebSocket upgrade answers `Sec-WebSocket-Protocol` with the `mqtt` token as the
//!   client spelled it (`mqtt`, or the C SDK's `MQTT`): RFC 6455 lets a client fail a
//!   connection whose answer names a subprotocol it did not offer. One WebSocket message may
//!   hold up to 4 x 264 KiB; larger ones close the connection.
//! - Subscriptions beyond five get the SUBACK failure code (0x80); a filter outside the hub's
//!   topic trees closes the connection.
//! - Twins: depth counts the objects and arrays nested below a patch's root (at most 10, as the
//!   hub's documented example); a document's 32 KB are its compact JSON without `$version`; no
//!   `$metadata` is kept or shown; every desired change bumps `$version`, even one that changes
//!   nothing; a replaced desired document is pushed as the merge patch from the old document to
//!   the new one (removed keys as `null`); the etag is the twin's version as 8 big-endian bytes
//!   in base64. A notification that finds the connection's queue full is dropped (the hub may
//!   coalesce notifications; a device seeing a gap reads the twin again). A twin request whose
//!   answer the device cannot receive (not subscribed) is still served and recorded with its
//!   status. A desired change by the service does not count towards the update throttle.
//! - C2D: every due message is delivered at once, in queue order, each locked on its own (the
//!   hub lets a device hold several locked); a lock outlives its connection, so a message
//!   delivered just before a disconnect comes again only when its lock times out; a
//!   redelivery is a new PUBLISH (new packet id, DUP not set) and a PUBACK for an older packet
//!   id completes nothing; a TTL above 48 h is cut to 48 h; a generated `$.mid` is a random
//!   GUID; `iothub-ack` and `%24.exp` are not put in the bag; the HTTP route takes application
//!   property names from lower-cased header names; completed and dead-lettered messages are
//!   kept for [`Emulator::c2d`] up to [`MAX_C2D_FINISHED`] per device, bodies dropped.
//! - A telemetry bag that repeats a key keeps every pair, in order
//!   ([`D2cMessage::properties`]); [`D2cMessage::property`], [`D2cMessage::system`] and the read
//!   endpoint take the last. A key without `=` reads as an empty value.
//!
//! # What it does not emulate
//! - Twin `$metadata`, the twin query language, module twins, PnP components, and the
//!   `/twins/{id}` routes' other fields (tags are kept; everything else in a body is ignored).
//! - C2D feedback (`iothub-ack`, the feedback endpoint), purging a queue, the AMQP service
//!   endpoint the SDKs send C2D messages on, and MQTT's own redelivery of unacknowledged QoS 1
//!   packets (DUP) on a resumed session: redelivery is the hub's lock timeout only.
//! - Persistent sessions beyond subscriptions and C2D messages (method requests and desired
//!   notifications are not queued while offline, as on the hub), retained messages, and will
//!   messages (accepted in CONNECT, never published).
//! - Telemetry routing, the Event Hubs-compatible endpoint, enrichments, and the properties the
//!   hub stamps (`iothub-connection-device-id` and the like, `mqtt-retain`): messages are kept
//!   as the device sent them, per device, in memory only. Duplicates are flagged, never
//!   removed, and only found among the messages still kept.
//! - Module identities, the CA proof of possession (a CA is verified by adding it), certificate
//!   revocation, X.509 devices behind an IoT Edge parent, `disableDeviceSAS`, shared access
//!   policies for device connections (`skn` tokens on CONNECT are refused), policy permissions
//!   (the one service policy may do everything), Azure AD bearer tokens.
//! - AMQP (so no SDK's own C2D send: see the `deviceBound` route), HTTPS device APIs, MQTT
//!   over plain (unencrypted) WebSockets. The service API is plain HTTP on loopback,
//!   and optionally also HTTPS ([`EmulatorConfig::https_addr`]) with the same CA as MQTT.
//! - Throttling and quotas (429001, 403002), connection-rate limits and the 1,000,000-device
//!   limit are not enforced by themselves (twin reads and updates only when configured); a
//!   test can only inject a throttled hub
//!   ([`Fault::Throttle`]: CONNACK 3, [`Fault::WithholdPubacks`]) or a used-up message quota
//!   ([`Fault::QuotaExceeded`]).
//! - DPS over WebSockets or HTTPS, TPM attestation, X.509 group enrollments (CA-signed
//!   devices), custom allocation policies and the request `payload` (ignored), reprovisioning
//!   policies other than "migrate data", enrollment and registration management APIs, the DPS
//!   service API (enrollments are added in process), DPS quotas other than
//!   [`DpsConfig::registrations_per_s`].
//! - IoT Edge gateway semantics, the registry REST API (devices are added in process), ETags
//!   and request-id headers, any other service API route.

mod accept;
mod c2d;
mod cli;
mod client;
mod clock;
mod connect;
mod credential;
mod dps;
#[cfg(test)]
mod e2e;
mod error;
mod faults;
mod history;
mod http;
mod lock;
mod methods;
mod mqtt;
mod registry;
pub mod sas;
mod telemetry;
pub mod tls;
mod topic_filter;
mod twin;
mod wire;
mod x509;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::sas::Key;
use lock::lock;
use registry::Registry;

pub use c2d::{
    C2dError, C2dRecord, C2dSend, C2dState, DEFAULT_C2D_LOCK_TIMEOUT,
    DEFAULT_C2D_MAX_DELIVERY_COUNT, DEFAULT_C2D_TTL, MAX_C2D_BODY, MAX_C2D_FINISHED, MAX_C2D_QUEUE,
    MAX_C2D_TTL,
};
pub use cli::{DeviceArg, EmulatorArgs, run_cli};
pub use client::{ClientError, ServiceClient, ServiceResponse};
pub use credential::X509Auth;
pub use dps::{Attestation, DpsConfig, DpsRequest, DpsRequestKind, HubLink};
pub use error::{Error, WaitTimeout};
pub use faults::{Fault, FaultId, Target};
pub use history::{AttemptOutcome, ConnectAttempt, MAX_RECORDS, MethodExchange};
pub use http::MAX_MESSAGES_PER_READ;
pub use methods::{
    InvokeError, MAX_CONNECT_TIMEOUT_S, MAX_METHOD_PAYLOAD, MethodCall, MethodResult,
    RESPONSE_TIMEOUT_RANGE_S,
};
pub use registry::{DeviceStats, DisconnectReason, Event, RefusalReason, Subscription};
pub use telemetry::{D2cMessage, DEFAULT_TELEMETRY_PER_DEVICE};
pub use twin::{
    MAX_TWIN_DEPTH, MAX_TWIN_DOCUMENT, MAX_TWIN_INTEGER, MAX_TWIN_KEY, MAX_TWIN_STRING,
    MAX_TWIN_TAGS, Twin, TwinError, TwinOp, TwinRequest,
};
pub use wire::{ConnectRecord, DeviceTransport, Escapes, TokenShape};
pub use x509::CaError;

/// How long [`Emulator::shutdown`] waits for connection tasks to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Where and as whom the emulator runs.
#[derive(Debug, Clone)]
pub struct EmulatorConfig {
    /// The IoT hub host name devices use in usernames and SAS scopes, e.g. `localhost`.
    pub host_name: String,
    /// The names the server certificate carries, if not the loopback names and `host_name`:
    /// to play an IoT Edge parent, whose certificate names the parent and not the hub.
    pub certificate_names: Option<Vec<String>>,
    /// MQTT-over-TLS device listener; port 0 picks a free one.
    pub mqtt_addr: SocketAddr,
    /// If set, MQTT over WebSockets (`wss://…/$iothub/websocket`, subprotocol `mqtt`) on this
    /// address, with the same certificate as [`EmulatorConfig::mqtt_addr`], for clients that
    /// can only leave a site on 443; port 0 picks a free one.
    pub ws_addr: Option<SocketAddr>,
    /// Plain-HTTP service API listener; keep it on loopback.
    pub http_addr: SocketAddr,
    /// If set, the same service API over HTTPS with the emulator's certificate, for clients
    /// that only speak `https://` (the Azure service SDKs); port 0 picks a free one.
    pub https_addr: Option<SocketAddr>,
    /// If set, the generated CA certificate (PEM) is written there.
    pub ca_path: Option<PathBuf>,
    /// Shared access policy (name, key) the service API accepts tokens from.
    pub service_policy: (String, Key),
    /// Device-to-cloud messages kept per device for [`Emulator::telemetry`] and the read
    /// endpoint; beyond it the oldest are dropped (and counted in
    /// [`DeviceStats::telemetry_dropped`]), so an emulator left running keeps bounded memory.
    pub telemetry_per_device: usize,
    /// Hub-wide twin GETs allowed per second (the hub's "twin reads" throttle, 100/s on S1);
    /// a GET beyond it in the current 1-second window is answered 429 / 429001. `None`:
    /// unlimited.
    pub twin_reads_per_s: Option<u32>,
    /// Hub-wide reported-property PATCHes allowed per second (the hub's "twin updates"
    /// throttle, 50/s on S1), likewise. `None`: unlimited.
    pub twin_updates_per_s: Option<u32>,
    /// How long a delivered cloud-to-device message stays locked waiting for the device's
    /// PUBACK before it is delivered again (the hub's is 1 minute).
    pub c2d_lock_timeout: Duration,
    /// Deliveries of a cloud-to-device message without a PUBACK before it is dead-lettered
    /// (the hub's default is 10; its range 1–100).
    pub c2d_max_delivery_count: u32,
    /// If set, a Device Provisioning Service endpoint (MQTT over TLS, same CA) next to the
    /// hub: see [`Emulator::dps_add_group`].
    pub dps: Option<DpsConfig>,
}

impl Default for EmulatorConfig {
    /// `localhost`, MQTT and HTTP listeners on `127.0.0.1:0`, no WebSocket or HTTPS listener, policy
    /// `service` with a random key, [`DEFAULT_TELEMETRY_PER_DEVICE`] messages kept per device,
    /// no twin throttling, the hub's C2D lock timeout (60 s) and maximum delivery count (10), no
    /// DPS.
    fn default() -> Self {
        let loopback = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        EmulatorConfig {
            host_name: "localhost".to_owned(),
            certificate_names: None,
            mqtt_addr: loopback,
            ws_addr: None,
            http_addr: loopback,
            https_addr: None,
            ca_path: None,
            service_policy: ("service".to_owned(), random_key()),
            telemetry_per_device: DEFAULT_TELEMETRY_PER_DEVICE,
            twin_reads_per_s: None,
            twin_updates_per_s: None,
            c2d_lock_timeout: DEFAULT_C2D_LOCK_TIMEOUT,
            c2d_max_delivery_count: DEFAULT_C2D_MAX_DELIVERY_COUNT,
            dps: None,
        }
    }
}

/// The timeout of a wait on one of the emulator's logs, which belong to no single device.
fn log_timeout(what: &str, timeout: Duration) -> WaitTimeout {
    WaitTimeout {
        device: what.to_owned(),
        timeout,
        last: DeviceStats::default(),
    }
}

/// A random 32-byte key, as the portal generates them.
#[must_use]
pub fn random_key() -> Key {
    let text = base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 32]>());
    #[expect(
        clippy::expect_used,
        reason = "32 random bytes always encode to valid, non-empty base64"
    )]
    Key::from_base64(&text).expect("base64 of 32 bytes decodes")
}

/// State shared by the listeners, the connection tasks and the [`Emulator`] handle.
pub(crate) struct Shared {
    pub(crate) host_name: String,
    pub(crate) service_policy: (String, Key),
    pub(crate) registry: Registry,
    pub(crate) methods: methods::Methods,
    /// Faults injected by tests, consulted for every connection attempt.
    pub(crate) faults: faults::Faults,
    /// Time-stamped connection attempts, method exchanges and twin requests.
    pub(crate) history: history::History,
    /// The Device Provisioning Service: enrollments, operations (and its settings when its
    /// endpoint runs).
    pub(crate) dps: dps::Dps,
    /// The CAs that CA-signed X.509 devices chain to.
    pub(crate) verified_cas: x509::VerifiedCas,
    /// The hub-wide twin throttles: GETs and reported PATCHes per second.
    pub(crate) twin_reads: twin::RateWindow,
    pub(crate) twin_updates: twin::RateWindow,
    /// How many device listeners (MQTT, WebSocket) a [`Fault::RefuseTcp`] holds closed now.
    pub(crate) closed_listeners: watch::Sender<usize>,
    /// How many device listeners there are.
    device_listeners: usize,
    /// Cancelled once, at shutdown; every task watches it.
    pub(crate) shutdown: CancellationToken,
    /// Parent of every connection's token; replaced by [`Emulator::drop_all_connections`], so
    /// cancelling it closes exactly the connections that existed then.
    generation: Mutex<CancellationToken>,
}

impl Shared {
    pub(crate) fn connection_token(&self) -> CancellationToken {
        lock(&self.generation).child_token()
    }

    fn drop_all_connections(&self) {
        let old = std::mem::replace(&mut *lock(&self.generation), self.shutdown.child_token());
        old.cancel();
    }
}

/// A running emulator. Dropping it stops every task; [`Emulator::shutdown`] also waits for them.
pub struct Emulator {
    shared: Arc<Shared>,
    mqtt_addr: SocketAddr,
    ws_addr: Option<SocketAddr>,
    dps_addr: Option<SocketAddr>,
    http_addr: SocketAddr,
    https_addr: Option<SocketAddr>,
    ca_pem: String,
    /// Closed when every task holding a sender has ended.
    tasks_done: mpsc::Receiver<()>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator")
            .field("host_name", &self.shared.host_name)
            .field("mqtt_addr", &self.mqtt_addr)
            .field("ws_addr", &self.ws_addr)
            .field("dps_addr", &self.dps_addr)
            .field("http_addr", &self.http_addr)
            .field("https_addr", &self.https_addr)
            .finish_non_exhaustive()
    }
}

impl Emulator {
    /// Generates certificates, binds the listeners and starts serving.
    ///
    /// # Errors
    /// When the host name cannot go into a certificate, a listener cannot bind, or the CA cannot
    /// be written to `ca_path`.
    pub async fn start(config: EmulatorConfig) -> Result<Emulator, Error> {
        let certs = match &config.certificate_names {
            Some(names) => tls::generate_for(
                names.clone(),
                names.first().map_or(&config.host_name, |n| n),
            )?,
            None => tls::generate(&config.host_name)?,
        };
        if let Some(path) = &config.ca_path {
            tokio::fs::write(path, &certs.ca_pem)
                .await
                .map_err(|source| Error::WriteCa {
                    path: path.clone(),
                    source,
                })?;
        }
        let bind_mqtt = |source| Error::BindMqtt {
            addr: config.mqtt_addr,
            source,
        };
        let bind_http = |source| Error::BindHttp {
            addr: config.http_addr,
            source,
        };
        let mqtt_listener = TcpListener::bind(config.mqtt_addr)
            .await
            .map_err(bind_mqtt)?;
        let mqtt_addr = mqtt_listener.local_addr().map_err(bind_mqtt)?;
        let http_listener = TcpListener::bind(config.http_addr)
            .await
            .map_err(bind_http)?;
        let http_addr = http_listener.local_addr().map_err(bind_http)?;
        let https_listener = accept::bind_optional(config.https_addr, |addr, source| {
            Error::BindHttps { addr, source }
        })
        .await?;
        let https_addr = https_listener.as_ref().map(|(_, addr)| *addr);
        let ws_listener = accept::bind_optional(config.ws_addr, |addr, source| Error::BindWs {
            addr,
            source,
        })
        .await?;
        let ws_addr = ws_listener.as_ref().map(|(_, addr)| *addr);
        let dps_listener =
            accept::bind_optional(config.dps.as_ref().map(|d| d.addr), |addr, source| {
                Error::BindDps { addr, source }
            })
            .await?;
        let dps_addr = dps_listener.as_ref().map(|(_, addr)| *addr);

        let shutdown = CancellationToken::new();
        let shared = Arc::new(Shared {
            host_name: config.host_name,
            service_policy: config.service_policy,
            registry: Registry::new(config.telemetry_per_device)
                .with_c2d(config.c2d_lock_timeout, config.c2d_max_delivery_count),
            methods: methods::Methods::new(),
            faults: faults::Faults::new(),
            history: history::History::new(),
            verified_cas: x509::VerifiedCas::default(),
            dps: dps::Dps::new(config.dps.clone()),
            twin_reads: twin::RateWindow::new(config.twin_reads_per_s),
            twin_updates: twin::RateWindow::new(config.twin_updates_per_s),
            closed_listeners: watch::Sender::new(0),
            device_listeners: 1 + usize::from(ws_listener.is_some()),
            generation: Mutex::new(shutdown.child_token()),
            shutdown,
        });
        let (done_tx, tasks_done) = mpsc::channel(1);
        let acceptor = TlsAcceptor::from(certs.server_config);
        tokio::spawn(mqtt::run(
            mqtt_listener,
            mqtt_addr,
            DeviceTransport::Mqtt,
            acceptor.clone(),
            Arc::clone(&shared),
            done_tx.clone(),
        ));
        if let Some((listener, addr)) = ws_listener {
            tokio::spawn(mqtt::run(
                listener,
                addr,
                DeviceTransport::WebSocket,
                acceptor.clone(),
                Arc::clone(&shared),
                done_tx.clone(),
            ));
            log::info!(
                "emulator: mqtt over websockets on wss://{addr}{}",
                mqtt::websocket::PATH
            );
        }
        if let Some((listener, addr)) = dps_listener {
            tokio::spawn(dps::run(
                listener,
                acceptor.clone(),
                Arc::clone(&shared),
                done_tx.clone(),
            ));
            log::info!("emulator: dps (mqtt over tls) on {addr}");
        }
        if let Some((listener, addr)) = https_listener {
            tokio::spawn(http::run(
                listener,
                Some(acceptor),
                Arc::clone(&shared),
                done_tx.clone(),
            ));
            log::info!("emulator: service api on https://{addr}");
        }
        tokio::spawn(http::run(http_listener, None, Arc::clone(&shared), done_tx));
        log::info!("emulator: mqtt on {mqtt_addr}, service api on http://{http_addr}");
        Ok(Emulator {
            shared,
            mqtt_addr,
            ws_addr,
            dps_addr,
            http_addr,
            https_addr,
            ca_pem: certs.ca_pem,
            tasks_done,
        })
    }

    #[must_use]
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
    }

    /// The MQTT-over-WebSockets listener, when [`EmulatorConfig::ws_addr`] asked for one;
    /// clients dial `wss://{host}:{port}/$iothub/websocket` with subprotocol `mqtt`.
    #[must_use]
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.ws_addr
    }

    /// The DPS endpoint (MQTT over TLS), when [`EmulatorConfig::dps`] asked for one.
    #[must_use]
    pub fn dps_addr(&self) -> Option<SocketAddr> {
        self.dps_addr
    }

    /// The DPS endpoint's ID scope, when it runs.
    #[must_use]
    pub fn dps_id_scope(&self) -> Option<&str> {
        self.shared.dps.config.as_ref().map(|c| c.id_scope.as_str())
    }

    #[must_use]
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The HTTPS service API listener, when [`EmulatorConfig::https_addr`] asked for one.
    #[must_use]
    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.https_addr
    }

    #[must_use]
    pub fn host_name(&self) -> &str {
        &self.shared.host_name
    }

    /// The CA (PEM) that signed the server certificate; devices must trust it.
    #[must_use]
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Registers (or re-keys and re-enables) a device that authenticates with SAS tokens signed
    /// with `key`. An open connection stays open.
    pub fn add_device(&self, id: &str, key: Key) {
        self.shared
            .registry
            .add_device(id, credential::Credential::Sas(key));
    }

    /// Registers (or re-keys and re-enables) a device that authenticates with an X.509 client
    /// certificate, as `auth` says (`iothub-protocol.md` 1.6): CONNECT without a password, the
    /// certificate in the TLS handshake. An open connection stays open.
    pub fn add_device_x509(&self, id: &str, auth: X509Auth) {
        self.shared
            .registry
            .add_device(id, credential::Credential::X509(auth));
    }

    /// Adds the CA certificate(s) in `pem` to those the hub has verified, for devices
    /// registered with [`X509Auth::CaSigned`] (the hub's proof of possession is skipped).
    ///
    /// # Errors
    /// When `pem` holds no certificate, or one that cannot be a trust anchor.
    pub fn add_verified_ca(&self, pem: &str) -> Result<(), CaError> {
        self.shared.verified_cas.add(pem).map(|_| ())
    }

    /// Unregisters a device and closes its connection; its stats remain. False if it was not
    /// registered.
    pub fn remove_device(&self, id: &str) -> bool {
        self.shared.registry.remove_device(id)
    }

    /// Enables or disables a device; disabling closes its connection and later CONNECTs get
    /// CONNACK 5. False if it is not registered.
    pub fn set_device_enabled(&self, id: &str, enabled: bool) -> bool {
        self.shared.registry.set_device_enabled(id, enabled)
    }

    /// This emulator as an IoT hub a DPS can assign registrations to (its own DPS, or another
    /// emulator's), answered as `assignedHub` by its host name.
    #[must_use]
    pub fn hub_link(&self) -> HubLink {
        HubLink::new(&self.shared)
    }

    /// Adds (or replaces) DPS group enrollment `name` with a symmetric group key: any
    /// registration id may register with the key [`sas::derive_device_key`] derives for it
    /// and is assigned to `hub`, where it is registered with that key. An individual
    /// enrollment of the same registration id takes precedence.
    pub fn dps_add_group(&self, name: &str, group_key: Key, hub: HubLink) {
        self.shared.dps.add_group(name, group_key, hub);
    }

    /// Adds (or replaces) the DPS individual enrollment of `registration_id` (compared without
    /// case): it registers with its own key or certificate and is assigned to `hub`, where it
    /// is registered with the same key, or as an X.509 thumbprint device.
    pub fn dps_add_individual(
        &self,
        registration_id: &str,
        attestation: Attestation,
        hub: HubLink,
    ) {
        self.shared
            .dps
            .add_individual(registration_id, attestation, hub);
    }

    /// Links the DPS enrollment named `name` (a group's name, or an individual enrollment's
    /// registration id; both, if both exist) to `hub` for registrations from now on: the next
    /// register request is assigned there, and the device's twin migrates from its last hub.
    /// False when there is no such enrollment.
    pub fn dps_set_hub(&self, name: &str, hub: HubLink) -> bool {
        self.shared.dps.set_hub(name, &hub)
    }

    /// Every DPS CONNECT and request so far (the newest [`MAX_RECORDS`]), in arrival order,
    /// with what it was answered.
    #[must_use]
    pub fn dps_requests(&self) -> Vec<DpsRequest> {
        self.shared.history.dps_requests()
    }

    /// Waits until the DPS requests satisfy `predicate` (checked at once, then on every new
    /// one); returns them. A request is recorded before its answer is written.
    ///
    /// # Errors
    /// [`WaitTimeout`] (its `last` stats are those of no device) when `timeout` passes first.
    pub async fn wait_dps_requests(
        &self,
        predicate: impl FnMut(&[DpsRequest]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<DpsRequest>, WaitTimeout> {
        let found = self.shared.history.wait_dps(timeout, predicate).await;
        found.ok_or_else(|| log_timeout("(dps requests)", timeout))
    }

    /// `HostName=..;SharedAccessKeyName=..;SharedAccessKey=..` for the service policy.
    #[must_use]
    pub fn service_connection_string(&self) -> String {
        let (policy, key) = &self.shared.service_policy;
        client::service_connection_string(&self.shared.host_name, policy, key)
    }

    /// `HostName=..;DeviceId=..;SharedAccessKey=..` for a registered SAS device,
    /// `HostName=..;DeviceId=..;x509=true` for an X.509 one.
    #[must_use]
    pub fn device_connection_string(&self, id: &str) -> Option<String> {
        let host = &self.shared.host_name;
        Some(match self.shared.registry.credential_of(id)? {
            credential::Credential::Sas(key) => format!(
                "HostName={host};DeviceId={id};SharedAccessKey={}",
                base64::engine::general_purpose::STANDARD.encode(key.as_bytes())
            ),
            credential::Credential::X509(_) => format!("HostName={host};DeviceId={id};x509=true"),
        })
    }

    /// Calls a direct method in process, through the same code as the HTTP API.
    ///
    /// # Errors
    /// Each error maps to the hub's HTTP status and code ([`InvokeError::http_status`]).
    pub async fn invoke(
        &self,
        device: &str,
        call: MethodCall,
    ) -> Result<MethodResult, InvokeError> {
        methods::invoke(&self.shared, device, call).await
    }

    /// What was observed for `id` so far (all zero if nothing).
    #[must_use]
    pub fn device_stats(&self, id: &str) -> DeviceStats {
        self.shared.registry.snapshot(id)
    }

    /// Stats of every device id seen or registered.
    #[must_use]
    pub fn stats(&self) -> BTreeMap<String, DeviceStats> {
        self.shared.registry.all()
    }

    /// A receiver that sees every change of `id`'s stats (the id need not exist yet).
    #[must_use]
    pub fn watch_device(&self, id: &str) -> watch::Receiver<DeviceStats> {
        self.shared.registry.entry(id).subscribe()
    }

    /// Everything that happens, as it happens. A receiver that falls more than 1024 events
    /// behind gets `Lagged`.
    #[must_use]
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.shared.registry.events()
    }

    /// Waits until `id`'s stats satisfy `predicate` (checked at once, then on every change).
    ///
    /// # Errors
    /// [`WaitTimeout`] with the last stats seen.
    pub async fn wait_for(
        &self,
        id: &str,
        timeout: Duration,
        mut predicate: impl FnMut(&DeviceStats) -> bool,
    ) -> Result<DeviceStats, WaitTimeout> {
        let mut changes = self.watch_device(id);
        let waited = tokio::time::timeout(timeout, async {
            changes
                .wait_for(|stats| predicate(stats))
                .await
                .map(|stats| stats.clone())
        })
        .await;
        match waited {
            Ok(Ok(stats)) => Ok(stats),
            Ok(Err(_)) | Err(_) => Err(WaitTimeout {
                device: id.to_owned(),
                timeout,
                last: changes.borrow().clone(),
            }),
        }
    }

    /// Waits until `id` has a connection attached.
    ///
    /// # Errors
    /// [`WaitTimeout`] with the last stats seen.
    pub async fn wait_connected(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<DeviceStats, WaitTimeout> {
        self.wait_for(id, timeout, |stats| stats.online).await
    }

    /// Waits until `id` is online and subscribed to methods, i.e. a call would be delivered.
    ///
    /// # Errors
    /// [`WaitTimeout`] with the last stats seen.
    pub async fn wait_method_ready(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<DeviceStats, WaitTimeout> {
        self.wait_for(id, timeout, |stats| {
            stats.online && stats.methods_subscribed
        })
        .await
    }

    /// The device-to-cloud messages `id` sent, oldest first: the newest
    /// [`EmulatorConfig::telemetry_per_device`] of them (empty for an id never seen).
    #[must_use]
    pub fn telemetry(&self, id: &str) -> Vec<D2cMessage> {
        self.shared
            .registry
            .telemetry(id, 0, usize::MAX)
            .map(|(messages, _, _)| messages)
            .unwrap_or_default()
    }

    /// Waits until `id` has sent at least `n` device-to-cloud messages over the emulator's life
    /// (checked at once, then on every message), and returns those kept, as
    /// [`Emulator::telemetry`]. A message counts as soon as it is recorded, which is before its
    /// PUBACK is sent.
    ///
    /// # Errors
    /// [`WaitTimeout`] with the last stats seen (`telemetry_messages` says how many came).
    pub async fn wait_telemetry(
        &self,
        id: &str,
        n: u64,
        timeout: Duration,
    ) -> Result<Vec<D2cMessage>, WaitTimeout> {
        self.wait_for(id, timeout, |stats| stats.telemetry_messages >= n)
            .await?;
        Ok(self.telemetry(id))
    }

    /// Fault hook: closes every device connection at once (TCP close, no MQTT packet, as the
    /// hub does), including ones still in their TLS handshake. Devices may reconnect at once.
    pub fn drop_all_connections(&self) {
        self.shared.drop_all_connections();
    }

    /// Fault hook: closes one device's connection (TCP close, no MQTT packet), recorded as
    /// [`DisconnectReason::Dropped`]. False if it had none.
    pub fn drop_connection(&self, id: &str) -> bool {
        self.shared.registry.drop_connection(id)
    }

    /// Fault hook: from now on, connection attempts (or, for the telemetry faults, telemetry
    /// publishes) meet `fault` (see [`Fault`] for each kind), until [`Emulator::clear_fault`],
    /// with `lasting` for that long, or for [`Fault::DropBeforePuback`] until used up.
    /// Connections already attached stay up until a telemetry fault strikes them. When several
    /// faults apply, the oldest wins. Returns once the fault is in force: for
    /// [`Fault::RefuseTcp`], once the device listeners (MQTT and WebSocket) are closed.
    pub async fn inject_fault(&self, fault: Fault, lasting: Option<Duration>) -> FaultId {
        log::info!("emulator: injecting fault {fault:?} for {lasting:?}");
        let refuse_tcp = fault == Fault::RefuseTcp;
        let id = self.shared.faults.inject(fault, lasting);
        if refuse_tcp {
            self.await_listening(false).await;
        }
        id
    }

    /// Ends an injected fault; false if it had already ended. Devices it stalled are closed;
    /// PUBACKs it withheld are sent.
    /// Returns once the device listeners are open again if no [`Fault::RefuseTcp`] remains.
    pub async fn clear_fault(&self, id: FaultId) -> bool {
        let cleared = self.shared.faults.clear(id);
        if self.shared.faults.refuse_tcp().is_none() {
            self.await_listening(true).await;
        }
        cleared
    }

    /// Ends every injected fault; returns once the device listeners are open.
    pub async fn clear_faults(&self) {
        self.shared.faults.clear_all();
        self.await_listening(true).await;
    }

    /// Waits (up to 5 s, or until shutdown) for the accept loops to have every device listener
    /// open (`true`) or every one closed (`false`).
    async fn await_listening(&self, state: bool) {
        let mut closed = self.shared.closed_listeners.subscribe();
        let want = if state {
            0
        } else {
            self.shared.device_listeners
        };
        tokio::select! {
            () = self.shared.shutdown.cancelled() => {}
            _ = tokio::time::timeout(SHUTDOWN_GRACE, closed.wait_for(|closed| *closed == want)) => {}
        }
    }

    /// The injected faults in force now, oldest first.
    #[must_use]
    pub fn active_faults(&self) -> Vec<(FaultId, Fault)> {
        self.shared.faults.active()
    }

    /// Every connection attempt so far (the newest [`MAX_RECORDS`]), in the order their outcome
    /// was decided: accepted, refused, faulted, or closed before a CONNECT.
    #[must_use]
    pub fn connect_attempts(&self) -> Vec<ConnectAttempt> {
        self.shared.history.attempts()
    }

    /// Waits until the connection attempts satisfy `predicate` (checked at once, then on every
    /// new or updated attempt); returns them.
    ///
    /// # Errors
    /// [`WaitTimeout`] (its `last` stats are those of no device) when `timeout` passes first.
    pub async fn wait_connect_attempts(
        &self,
        timeout: Duration,
        predicate: impl FnMut(&[ConnectAttempt]) -> bool,
    ) -> Result<Vec<ConnectAttempt>, WaitTimeout> {
        let found = self.shared.history.wait_attempts(timeout, predicate).await;
        found.ok_or_else(|| log_timeout("(connect attempts)", timeout))
    }

    /// Every direct-method request sent to a device so far (the newest [`MAX_RECORDS`]), with
    /// the responses published for it.
    #[must_use]
    pub fn method_exchanges(&self) -> Vec<MethodExchange> {
        self.shared.history.methods()
    }

    /// Waits until the method exchanges satisfy `predicate` (checked at once, then on every
    /// request and response); returns them.
    ///
    /// # Errors
    /// [`WaitTimeout`] (its `last` stats are those of no device) when `timeout` passes first.
    pub async fn wait_method_exchanges(
        &self,
        timeout: Duration,
        predicate: impl FnMut(&[MethodExchange]) -> bool,
    ) -> Result<Vec<MethodExchange>, WaitTimeout> {
        let found = self.shared.history.wait_methods(timeout, predicate).await;
        found.ok_or_else(|| log_timeout("(method exchanges)", timeout))
    }

    /// A registered device's twin: desired and reported properties, each with its `$version`.
    /// `None` for a device that is not registered.
    #[must_use]
    pub fn twin(&self, id: &str) -> Option<Twin> {
        self.shared.registry.twin(id)
    }

    /// Merges `patch` (a JSON merge patch: `null` removes a key) into `id`'s desired
    /// properties, as the service's `PATCH /twins/{id}` does, and pushes
    /// `$iothub/twin/PATCH/properties/desired/?$version={v}` with the patch and `$version` to
    /// the device if it is online and subscribed to `$iothub/twin/PATCH/properties/desired/#`
    /// (never queued otherwise). Returns the new desired `$version`.
    ///
    /// # Errors
    /// [`TwinError::DeviceNotFound`] for a device that is not registered,
    /// [`TwinError::InvalidPatch`] for a patch that breaks the hub's limits (the twin is then
    /// unchanged).
    pub fn update_desired(&self, id: &str, patch: serde_json::Value) -> Result<u64, TwinError> {
        let update = registry::TwinUpdate {
            desired: Some(patch),
            ..registry::TwinUpdate::default()
        };
        let twin = self.shared.registry.update_twin(id, &update)?;
        Ok(twin.twin.desired["$version"].as_u64().unwrap_or_default())
    }

    /// Waits until `id`'s reported properties (an object with `$version`) satisfy `predicate`
    /// (checked at once, then after every reported patch); returns them.
    ///
    /// # Errors
    /// [`WaitTimeout`] with the device's last stats, also when `id` is not registered.
    pub async fn wait_reported(
        &self,
        id: &str,
        mut predicate: impl FnMut(&serde_json::Value) -> bool,
        timeout: Duration,
    ) -> Result<serde_json::Value, WaitTimeout> {
        let wait = async {
            loop {
                let (reported, mut changes) = self.shared.registry.watch_reported(id);
                if let Some(reported) = reported.filter(|r| predicate(r)) {
                    return Some(reported);
                }
                changes.changed().await.ok()?;
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Some(reported)) => Ok(reported),
            Ok(None) | Err(_) => Err(WaitTimeout {
                device: id.to_owned(),
                timeout,
                last: self.device_stats(id),
            }),
        }
    }

    /// Every twin request devices published so far (the newest [`MAX_RECORDS`]), in arrival
    /// order, with the status each was answered.
    #[must_use]
    pub fn twin_requests(&self) -> Vec<TwinRequest> {
        self.shared.history.twin_requests()
    }

    /// Waits until the twin requests satisfy `predicate` (checked at once, then on every new
    /// request); returns them. A request is recorded before its answer is written.
    ///
    /// # Errors
    /// [`WaitTimeout`] (its `last` stats are those of no device) when `timeout` passes first.
    pub async fn wait_twin_requests(
        &self,
        predicate: impl FnMut(&[TwinRequest]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<TwinRequest>, WaitTimeout> {
        let found = self.shared.history.wait_twin(timeout, predicate).await;
        found.ok_or_else(|| log_timeout("(twin requests)", timeout))
    }

    /// Queues a cloud-to-device message for registered device `id`, as the service's
    /// `POST /devices/{id}/messages/deviceBound` does; it is delivered at QoS 1 on
    /// `devices/{id}/messages/devicebound/{bag}` as soon as the device is online and subscribed.
    /// Returns its message id (`$.mid`), generated when `message` names none.
    ///
    /// # Errors
    /// [`C2dError::DeviceNotFound`], [`C2dError::QueueFull`] (50 messages queued or locked),
    /// [`C2dError::TooLarge`] (body over 64 KB), [`C2dError::InvalidArgument`] (empty id).
    pub fn send_c2d(&self, id: &str, message: C2dSend) -> Result<String, C2dError> {
        self.shared.registry.send_c2d(id, message)
    }

    /// `id`'s cloud-to-device messages in the order they were sent: those queued or locked, and
    /// the newest [`MAX_C2D_FINISHED`] completed or dead-lettered (empty for a device that is
    /// not registered).
    #[must_use]
    pub fn c2d(&self, id: &str) -> Vec<C2dRecord> {
        self.shared.registry.c2d_records(id).0
    }

    /// Waits until `id`'s cloud-to-device messages (as [`Emulator::c2d`]) satisfy `predicate`,
    /// checked at once, then on every change: a message queued, delivered, completed,
    /// redelivered after its lock timed out, or dead-lettered (also while the device is
    /// offline). Returns them.
    ///
    /// # Errors
    /// [`WaitTimeout`] with the device's last stats.
    pub async fn wait_c2d(
        &self,
        id: &str,
        mut predicate: impl FnMut(&[C2dRecord]) -> bool,
        timeout: Duration,
    ) -> Result<Vec<C2dRecord>, WaitTimeout> {
        let wait = async {
            loop {
                let (records, next, mut changes) = self.shared.registry.c2d_records(id);
                if predicate(&records) {
                    return Some(records);
                }
                tokio::select! {
                    changed = changes.changed() => changed.ok()?,
                    // A lock times out or a message expires: read (and so sweep) again.
                    () = clock::sleep_until_some(next) => {}
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(Some(records)) => Ok(records),
            Ok(None) | Err(_) => Err(WaitTimeout {
                device: id.to_owned(),
                timeout,
                last: self.device_stats(id),
            }),
        }
    }

    /// Stops accepting, closes every connection, fails calls in flight with 503, and waits (up
    /// to 5 s) for all tasks to end.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.cancel();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, self.tasks_done.recv()).await;
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

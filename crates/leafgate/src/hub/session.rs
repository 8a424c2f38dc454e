//! One device's MQTT session with IoT Hub: connect under the device's own identity, subscribe to
//! what the device's services need after every CONNACK, hand each incoming publish to the
//! service that claims its topic, publish what the services hand back, renew the SAS token
//! before it expires, reconnect with jittered backoff, and stop cleanly.
//!
//! Each (re)connect builds a fresh rumqttc client and event loop, so one task never holds two
//! connections for its device id (IoT Hub would evict one with the other, forever).
//!
//! Service tasks do not publish themselves: they hand their message to the session, which
//! publishes it on whatever connection is current, as long as its deadline has not passed. A
//! method reply whose connection dropped (or was renewed) while the hardware was busy still
//! reaches the hub. The session knows no method semantics: see [`super::service`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, Packet, QoS, SubscribeFilter, SubscribeReasonCode};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Settings;
use super::auth::{self, Auth, X509Source};
use super::dps;
use super::limiter::Pacer;
use super::outbound::{Ack, Delivery, Label, Outbound, Outlet, Work};
use super::presence::Presence;
use super::sas::{self, Key};
use super::service::{Context, Filter, Service};
use super::settings::Transport;
use super::tls::Trust;
use super::transport::{Refusal, describe, disconnect, mqtt_options, shown_route};
use crate::backoff::{self, Backoff};
use crate::logtext;
use crate::metrics;
use crate::utc::{unix_now, unix_now_signed};

/// The API version IoT Hub recommends; see iothub-protocol.md 1.2.
pub const API_VERSION: &str = "2021-04-12";

/// Messages handed over by service tasks and not yet taken by the session, per device. Tasks
/// wait beyond it; the session takes them in batches.
const OUTBOUND_QUEUE: usize = 256;

/// QoS 1 publishes (cloud-to-device messages) a connection may hold unacknowledged; a hub that
/// delivers more is dropped (IoT Hub queues at most 50 messages per device).
const MAX_UNACKED: usize = 1024;

/// rumqttc's request channel carries only SUBSCRIBE and DISCONNECT: messages are written by the
/// session itself (see [`write`]).
const CLIENT_REQUESTS: usize = 4;

/// What every session shares.
pub struct Shared {
    pub hub: Settings,
    pub tls: Trust,
    pub pacer: Pacer,
    /// Paces DPS registrations gateway-wide (`[provisioning] max_registrations_per_s`).
    pub registrations: Pacer,
    /// Sessions currently connected and subscribed (for status lines). Shared with the sessions
    /// of earlier configs that are still draining after a reload.
    pub connected: Arc<AtomicUsize>,
    /// Services stop taking new work (methods answer 503), but sessions stay up to publish
    /// what is in progress.
    pub draining: CancellationToken,
}

/// Who a session connects as.
pub struct Credentials {
    pub device_id: Arc<str>,
    pub auth: Auth,
    /// MQTT over TLS, or over WebSockets.
    pub transport: Transport,
    /// Registers with DPS (`[provisioning]`) to learn its hub.
    pub provisioned: bool,
    /// The device's IoT Plug and Play model (DTMI), announced in the username.
    pub model_id: Option<Arc<str>>,
    /// Where the session records whether it is connected (for `leafgate status`).
    pub presence: Arc<Presence>,
}

/// The MQTT username for a device, with its IoT Plug and Play model when it has one
/// (`model-id` needs api-version 2020-09-30 or later; `iothub-protocol.md` 1.2).
#[must_use]
pub fn username(hostname: &str, device_id: &str, model_id: Option<&str>) -> String {
    let mut name = format!(
        "{hostname}/{device_id}/?api-version={API_VERSION}&DeviceClientType={}",
        sas::percent_encode(concat!("leafgate/", env!("CARGO_PKG_VERSION")))
    );
    if let Some(model) = model_id {
        name.push_str("&model-id=");
        name.push_str(&sas::percent_encode(model));
    }
    name
}

/// When to renew a token issued now with `ttl`: at 75–85 % of its life, spread per device so
/// renewals of thousands of devices do not land in the same second.
fn renewal_delay(ttl: Duration) -> Duration {
    backoff::jitter(ttl.mul_f64(0.75), ttl.mul_f64(0.85))
}

/// How long a connection must have been up (since its CONNACK) to count as stable, so that
/// backoff starts afresh when it drops: as long as the longest backoff delay, at most 60 s.
///
/// This used to be a fixed 60 s counted from the start of the attempt, so a connect that
/// stalled until a long `connect_timeout_s` also reset the backoff, and a test could not see a
/// reset without a minute-long connection.
fn stable_after(hub: &Settings) -> Duration {
    hub.reconnect_max.min(Duration::from_secs(60))
}

/// How often a session on a certificate looks at its expiry while it stays connected.
const CERTIFICATE_CHECK: Duration = Duration::from_secs(24 * 3600);

/// A device's credentials at run time: a certificate keeps its loaded TLS settings.
enum DeviceAuth {
    Sas(Key),
    X509(Box<X509Source>),
}

/// A provisioned device: the hub DPS assigned it, once known (its device id there is its own:
/// [`route`] refuses any other).
struct Provisioned {
    hub: Option<Box<str>>,
}

/// Which hub a connect goes to, and where the TCP/TLS connection goes (the hub, or an IoT
/// Edge parent).
struct Route {
    hub: String,
    connect: String,
}

/// What one connect attempt presents: its TLS settings and, on a certificate, its facts.
struct Dial {
    tls: Arc<rustls::ClientConfig>,
    certificate: Option<super::certificate::Info>,
}

enum Ended {
    Shutdown,
    Renew,
    Failed { error: String, refusal: Refusal },
}

/// A device's session and the services it carries.
struct Device {
    id: Arc<str>,
    auth: DeviceAuth,
    transport: Transport,
    /// Where DPS put it, for a provisioned device.
    provisioned: Option<Box<Provisioned>>,
    model_id: Option<Arc<str>>,
    presence: Arc<Presence>,
    services: Vec<Box<dyn Service>>,
    /// QoS 1 messages that may await their PUBACK at once: the largest any service asks for.
    window: u16,
}

impl Device {
    /// Hands one incoming publish to the first service that claims its topic, and acknowledges
    /// a QoS 1 publish unless that service took the acknowledgement over.
    fn on_publish(&self, work: &mut Work, publish: rumqttc::Publish, stopping: bool) {
        let ack = (publish.qos == QoS::AtLeastOnce).then_some(Ack {
            pkid: publish.pkid,
            connection: work.connection,
        });
        if ack.is_some() {
            work.unacked.push_back((publish.pkid, false));
        }
        let topic = &*publish.topic;
        let Some(service) = self.services.iter().find(|s| s.claims(topic)) else {
            // Nothing to answer: no service knows how to correlate a reply. A QoS 1 publish is
            // still acknowledged, or the hub would deliver it again and again.
            let id = &*self.id;
            log::warn!(device_id = id; "device {id}: ignoring publish on {:?}: no service of this device subscribed to it", logtext::clip(topic));
            if let Some(ack) = ack {
                work.outbox.push_back(Box::new(Outbound::Ack(ack)));
            }
            return;
        };
        let mut ctx = Context {
            device_id: &self.id,
            stopping,
            work,
            ack,
        };
        service.on_publish(topic, publish.payload, &mut ctx);
        if let Some(ack) = ctx.ack.take() {
            work.outbox.push_back(Box::new(Outbound::Ack(ack)));
        }
    }

    /// "methods", or "methods, twin" once a device carries several services.
    fn listening_for(&self) -> String {
        let names: Vec<&str> = self.services.iter().map(|s| s.name()).collect();
        names.join(", ")
    }
}

/// A device's session before it runs: its outbound queue exists already, so the services that
/// send on their own (telemetry) can be given an [`Outlet`] before they are handed over.
pub struct Session {
    work: Work,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

impl Session {
    #[must_use]
    pub fn new() -> Self {
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        Self {
            work: Work {
                tx,
                rx,
                outbox: VecDeque::new(),
                parked: VecDeque::new(),
                tasks: TaskTracker::new(),
                connection: 0,
                unacked: VecDeque::new(),
            },
        }
    }

    /// A lasting way for a service to hand this session messages.
    #[must_use]
    pub fn outlet(&self) -> Outlet {
        Outlet {
            tx: self.work.tx.clone(),
        }
    }

    /// Runs the device's session with its services until `shutdown` is cancelled.
    ///
    /// Not an `async fn`: that would wrap the session's future in one more that keeps its own
    /// copy of the arguments: 330 bytes more per device (`size_of` of the future, release build).
    pub fn run(
        self,
        credentials: Credentials,
        services: Vec<Box<dyn Service>>,
        shared: Arc<Shared>,
        shutdown: CancellationToken,
    ) -> impl Future<Output = ()> + Send {
        let window = services.iter().map(|s| s.window()).max().unwrap_or(0);
        let auth = match credentials.auth {
            Auth::Sas(key) => DeviceAuth::Sas(key),
            Auth::X509(files) => DeviceAuth::X509(Box::new(X509Source::new(files))),
        };
        let provisioned = credentials
            .provisioned
            .then(|| Box::new(Provisioned { hub: None }));
        let device = Device {
            id: credentials.device_id,
            auth,
            transport: credentials.transport,
            provisioned,
            model_id: credentials.model_id,
            presence: credentials.presence,
            services,
            window,
        };
        run(device, self.work, shared, shutdown)
    }
}

async fn run(mut device: Device, mut work: Work, shared: Arc<Shared>, shutdown: CancellationToken) {
    let id = device.id.clone();
    let hub = &shared.hub;
    let mut backoff = Backoff::new(hub.reconnect_min, hub.reconnect_max);
    loop {
        let prepared = tokio::select! {
            () = shutdown.cancelled() => break,
            prepared = prepare(&mut device, &shared) => prepared,
        };
        let (dial, route) = match prepared {
            Ok(prepared) => prepared,
            Err(error) => {
                // Nothing the hub would accept, or no hub to go to: look again (files may be
                // replaced, DPS may answer) at the pace of a refused connect.
                let delay = backoff.next_delay().max(backoff::jitter(
                    Duration::from_secs(10),
                    Duration::from_secs(15),
                ));
                log::error!(device_id = &*id; "device {id}: {error}; trying again in {} ms", delay.as_millis());
                device.presence.disconnected(Some(&error));
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = shared.pacer.acquire() => {}
        }
        let (ended, up_for) =
            connect_once(&device, &shared, &shutdown, &mut work, dial, &route).await;
        if let (
            Ended::Failed {
                refusal: Refusal::Identity,
                ..
            },
            Some(provisioned),
        ) = (&ended, device.provisioned.as_mut())
        {
            // The hub DPS named refuses the device: it may have been moved, or disabled there.
            // Ask DPS again (paced, and after the backoff below).
            provisioned.hub = None;
            if let Some(dir) = hub_cache(&shared.hub)
                && let Err(e) = super::provisioning::forget(dir, &id)
            {
                log::warn!(device_id = &*id; "device {id}: cannot remove its cached DPS assignment: {e}");
            }
            log::warn!(device_id = &*id; "device {id}: hub {} refused it; it registers with DPS again before its next connect", route.hub);
        }
        match ended {
            Ended::Shutdown => break,
            Ended::Renew => {
                log::info!(device_id = &*id; "device {id}: reconnecting to renew its SAS token");
                backoff.reset();
            }
            Ended::Failed { error, refusal } => {
                // A connection that stayed up for a while was healthy: start backoff afresh.
                if up_for.is_some_and(|up| up >= stable_after(hub)) {
                    backoff.reset();
                }
                let delay = if refusal != Refusal::None {
                    // The hub answers 5 for every identity problem and 3 when overloaded: back
                    // off at least 10 s ("throttled" profile in iothub-protocol.md 7).
                    backoff.next_delay().max(backoff::jitter(
                        Duration::from_secs(10),
                        Duration::from_secs(15),
                    ))
                } else {
                    backoff.next_delay()
                };
                log::warn!(device_id = &*id; "device {id}: hub connection failed: {error}; retrying in {} ms", delay.as_millis());
                device.presence.disconnected(Some(&error));
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    // Stopped while not connected: work in flight finishes on the hardware (a write is never
    // cut in half), but its replies have no connection to go to.
    work.tasks.close();
    if !work.tasks.is_empty() {
        log::warn!(device_id = &*id; "device {id}: stopping while disconnected; waiting for {} request(s) in flight, whose replies cannot be delivered", work.tasks.len());
    }
    work.tasks.wait().await;
    work.collect();
    // Messages go back unsent: their senders see `delivery` closed and keep them.
    for message in work.parked.drain(..).chain(work.outbox.drain(..)) {
        if let Some(label) = message.label() {
            label.warn(
                &id,
                format_args!("not delivered: the device stopped while disconnected from the hub"),
            );
        }
    }
}

/// What the next connect needs: the TLS settings to present, and where to go.
async fn prepare(device: &mut Device, shared: &Shared) -> Result<(Dial, Route), String> {
    let dial = dial(device, &shared.tls).map_err(|e| format!("cannot connect: {e}"))?;
    let route = route(device, shared, &dial).await?;
    Ok((dial, route))
}

fn hub_cache(hub: &Settings) -> Option<&std::path::Path> {
    hub.provisioning.as_ref().and_then(|p| p.cache.as_deref())
}

/// Where the next connect goes: `[hub] hostname`, or for a provisioned device the hub DPS
/// assigned it: from memory, else from the cache, else by registering (paced gateway-wide).
async fn route(device: &mut Device, shared: &Shared, dial: &Dial) -> Result<Route, String> {
    let hub = &shared.hub;
    let id = device.id.clone();
    let route = |host: &str| Route {
        hub: host.to_owned(),
        connect: hub.connect_host(host).to_owned(),
    };
    let (Some(provisioned), Some(settings)) = (device.provisioned.as_mut(), &hub.provisioning)
    else {
        return hub
            .hostname
            .as_deref()
            .map(route)
            .ok_or_else(|| "no [hub] hostname to connect to".to_owned());
    };
    if let Some(assigned) = &provisioned.hub {
        return Ok(route(assigned));
    }
    let credentials = match &device.auth {
        DeviceAuth::Sas(key) => key.as_bytes().to_vec(),
        DeviceAuth::X509(_) => dial
            .certificate
            .as_ref()
            .map(|c| c.thumbprint.as_bytes().to_vec())
            .unwrap_or_default(),
    };
    let fingerprint = super::provisioning::fingerprint(settings, &credentials);
    if let Some(dir) = &settings.cache {
        match super::provisioning::load(dir, &id, &fingerprint) {
            Ok(Some(assignment)) => {
                log::info!(device_id = &*id; "device {id}: assigned to hub {} (cached from DPS)", assignment.hub);
                let found = route(&assignment.hub);
                provisioned.hub = Some(assignment.hub.into());
                return Ok(found);
            }
            Ok(None) => {}
            Err(e) => {
                log::warn!(device_id = &*id; "device {id}: ignoring its cached DPS assignment: {e}");
            }
        }
    }
    shared.registrations.acquire().await;
    let attestation = match &device.auth {
        DeviceAuth::Sas(key) => dps::Attestation::Key(key),
        DeviceAuth::X509(_) => dps::Attestation::Certificate,
    };
    let started = Instant::now();
    log::info!(device_id = &*id; "device {id}: registering with DPS {}:{} (id scope {})", settings.endpoint, settings.port, settings.id_scope);
    let assignment = dps::register(
        settings,
        hub.proxy.as_ref(),
        &id,
        attestation,
        Arc::clone(&dial.tls),
    )
    .await
    .map_err(|e| format!("DPS registration failed: {e}"))?;
    if assignment.device_id != *id {
        return Err(format!(
            "DPS assigned it the device id {:?} in hub {}; leafgate needs the device id to be the registration id (set the enrollment's device id to {id:?})",
            logtext::clip(&assignment.device_id),
            assignment.hub
        ));
    }
    log::info!(device_id = &*id; "device {id}: registered with DPS in {} ms: assigned to hub {}", started.elapsed().as_millis(), assignment.hub);
    if let Some(dir) = &settings.cache
        && let Err(e) = super::provisioning::store(dir, &id, &fingerprint, &assignment)
    {
        log::warn!(device_id = &*id; "device {id}: cannot cache its DPS assignment in {}: {e}; it registers again after a restart", dir.display());
    }
    let found = route(&assignment.hub);
    provisioned.hub = Some(assignment.hub.into());
    Ok(found)
}

/// The TLS settings for the next connect: the shared ones for SAS, the device's own (read again
/// if its files changed) for a certificate, with a warning at most once a day when it is close
/// to its end.
fn dial(device: &mut Device, trust: &Trust) -> Result<Dial, auth::Unusable> {
    let source = match &mut device.auth {
        DeviceAuth::Sas(_) => {
            return Ok(Dial {
                tls: Arc::clone(&trust.config),
                certificate: None,
            });
        }
        DeviceAuth::X509(source) => source,
    };
    let now = unix_now_signed();
    let (tls, info) = source.tls(&trust.roots, now)?;
    let info = info.clone();
    if let Some(warning) = source.expiry_warning(&info, now, CERTIFICATE_CHECK) {
        let id = &*device.id;
        log::warn!(device_id = id; "device {id}: {warning}");
    }
    Ok(Dial {
        tls,
        certificate: Some(info),
    })
}

/// The QoS 1 messages of one connection that await their PUBACK, by packet id. Packet ids are
/// chosen here, from 1 to the window, so rumqttc (whose in-flight limit is the window) never
/// finds one taken, however the hub orders its PUBACKs.
struct Acks {
    window: u16,
    waiting: Vec<(u16, oneshot::Sender<Delivery>)>,
}

impl Acks {
    fn new(window: u16) -> Self {
        Self {
            window,
            waiting: Vec::new(),
        }
    }

    /// A free packet id, if the window has room.
    fn free(&self) -> Option<u16> {
        (1..=self.window).find(|p| self.waiting.iter().all(|(q, _)| q != p))
    }

    fn has_room(&self) -> bool {
        self.waiting.len() < usize::from(self.window)
    }

    /// The hub acknowledged `pkid`.
    fn acked(&mut self, pkid: u16) {
        if let Some(i) = self.waiting.iter().position(|(p, _)| *p == pkid) {
            let (_, delivery) = self.waiting.swap_remove(i);
            let _ = delivery.send(Delivery::Acked);
        }
    }
}

impl Drop for Acks {
    /// The connection ended: whatever still awaits its PUBACK may or may not have arrived.
    fn drop(&mut self) {
        for (_, delivery) in self.waiting.drain(..) {
            let _ = delivery.send(Delivery::Unconfirmed);
        }
    }
}

/// A device is connected and hears all it subscribed to: count it and say so.
fn announce(shared: &Shared, device: &Device, route: &Route) {
    for service in &device.services {
        service.on_subscribed();
    }
    let id = &*device.id;
    if let Some(m) = metrics::get() {
        let labels = m.device(id);
        // The gauge exists from the first connection on: any later one is a reconnect.
        let reconnects = m.device_reconnects.get_or_create(&labels);
        if m.device_connected.get(&labels).is_some() {
            reconnects.inc();
        }
        m.device_connected.get_or_create(&labels).set(1);
    }
    device.presence.connected();
    let n = shared.connected.fetch_add(1, Ordering::Relaxed) + 1;
    log::info!(device_id = id; "device {id}: connected to {} and listening for {} ({n} connected)", shown_route(&shared.hub, &route.connect, device.transport), device.listening_for());
}

/// One connection, from the attempt to its end; also returns how long it was up, if it got a
/// CONNACK.
async fn connect_once(
    device: &Device,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    work: &mut Work,
    dial: Dial,
    route: &Route,
) -> (Ended, Option<Duration>) {
    let hub = &shared.hub;
    let id = device.id.clone();
    // A certificate authenticates in the TLS handshake: no password at all (1.6).
    let password = match &device.auth {
        DeviceAuth::Sas(key) => sas::token(
            &sas::device_resource(&route.hub, &id),
            key,
            unix_now() + hub.sas_ttl.as_secs(),
            None,
        ),
        DeviceAuth::X509(_) => String::new(),
    };
    let mut options = mqtt_options(&id, hub, &route.connect, device.transport, dial.tls);
    let max_packet = hub.max_payload_bytes.max(256 * 1024) + 4096;
    options
        .set_credentials(
            username(&route.hub, &id, device.model_id.as_deref()),
            password,
        )
        .set_keep_alive(hub.keep_alive)
        .set_clean_session(false)
        // Cloud-to-device messages are acknowledged when they have been handled, not when they
        // arrive (`Context::take_ack`); the session sends every PUBACK itself.
        .set_manual_acks(true)
        // Replies go out at QoS 0 and subscriptions are QoS 0: only QoS 1 messages (telemetry)
        // are ever in flight, at most the window its service asks for. rumqttc keeps a slot per
        // allowed in-flight publish in every session (100 by default, 12 KiB per device at
        // 10,000 devices; heaptrack, issue 6).
        .set_inflight(device.window.max(1))
        // The hub's own message limit is 256 KiB; larger payloads are refused with 413 by us
        // rather than killing the connection inside rumqttc.
        .set_max_packet_size(max_packet, max_packet);
    let (client, mut eventloop) = AsyncClient::new(options, CLIENT_REQUESTS);
    // rumqttc reserves room for 100 buffered events per session; a device sees a handful at a
    // time, and the queue grows on demand. Starting empty saves 11 KiB per device.
    eventloop.state.events = std::collections::VecDeque::new();
    let mut net = eventloop.network_options();
    net.set_connection_timeout(hub.connect_timeout.as_secs().max(1));
    // Replies are small writes: with Nagle on, a reply sent while the previous one is still
    // unacknowledged waits for the hub's delayed ACK (40 ms on Linux). leafgate-bench showed
    // it as a p99 of 43 ms at 5,000 methods/s (issue 6).
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);

    // A SAS token is renewed by reconnecting; a certificate has nothing to renew, but its
    // expiry is looked at once a day.
    let mut renew_at = Instant::now()
        + match device.auth {
            DeviceAuth::Sas(_) => renewal_delay(hub.sas_ttl),
            DeviceAuth::X509(_) => CERTIFICATE_CHECK,
        };
    let renew = tokio::time::sleep_until(renew_at);
    tokio::pin!(renew);
    // Armed at CONNACK: a hub that never answers SUBSCRIBE would leave the device connected
    // but deaf to methods forever.
    let suback = tokio::time::sleep(hub.connect_timeout);
    tokio::pin!(suback);
    let mut connected_at: Option<Instant> = None;
    let mut subscribed = false;
    let filters: Vec<Filter> = device
        .services
        .iter()
        .flat_map(|s| s.filters(&id))
        .collect();
    let filter_names = || {
        filters
            .iter()
            .map(|f| f.topic.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut acks = Acks::new(device.window);
    let result = loop {
        if connected_at.is_some()
            && work.has_writable(acks.has_room())
            && let Err(error) =
                write(&id, &mut eventloop, work, &mut acks, hub.connect_timeout).await
        {
            break Ended::Failed {
                error,
                refusal: Refusal::None,
            };
        }
        tokio::select! {
            () = shutdown.cancelled() => break Ended::Shutdown,
            () = &mut renew => {
                let DeviceAuth::X509(source) = &device.auth else {
                    break Ended::Renew;
                };
                let now = unix_now_signed();
                if let Some(info) = &dial.certificate
                    && let Some(warning) = source.expiry_warning(info, now, CERTIFICATE_CHECK)
                {
                    log::warn!(device_id = &*id; "device {id}: {warning}");
                }
                renew_at = Instant::now() + CERTIFICATE_CHECK;
                renew.as_mut().reset(renew_at);
                if subscribed {
                    suback.as_mut().reset(renew_at);
                }
            }
            () = &mut suback, if connected_at.is_some() && !subscribed => {
                break Ended::Failed {
                    error: format!("the hub did not answer SUBSCRIBE to {} within {} s", filter_names(), hub.connect_timeout.as_secs()),
                    refusal: Refusal::None,
                };
            }
            // Not before CONNACK: a poll dropped while connecting would connect afresh, past
            // the pacer.
            Some(message) = work.rx.recv(), if connected_at.is_some() => {
                work.outbox.push_back(message);
                work.collect();
            }
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected_at = Some(Instant::now());
                    work.connection += 1;
                    work.unacked.clear();
                    if filters.is_empty() {
                        // Services that only publish: nothing to subscribe, nothing to await.
                        subscribed = true;
                        suback.as_mut().reset(renew_at);
                        announce(shared, device, route);
                        continue;
                    }
                    suback.as_mut().reset(Instant::now() + hub.connect_timeout);
                    // One SUBSCRIBE for every service's filters, so one SUBACK says the device
                    // hears everything it should.
                    let subscribe = filters.iter().map(|f| SubscribeFilter::new(f.topic.clone(), f.qos));
                    if let Err(e) = client.try_subscribe_many(subscribe) {
                        break Ended::Failed { error: format!("cannot subscribe to {}: {e}", filter_names()), refusal: Refusal::None };
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    let refused: Vec<&str> = ack.return_codes.iter().zip(&filters)
                        .filter(|(code, _)| matches!(code, SubscribeReasonCode::Failure))
                        .map(|(_, filter)| filter.topic.as_str())
                        .collect();
                    if !refused.is_empty() {
                        break Ended::Failed { error: format!("hub refused the subscription to {}", refused.join(", ")), refusal: Refusal::Load };
                    }
                    if !subscribed {
                        subscribed = true;
                        // The SUBACK timer stays registered even with its branch off, and would
                        // wake this task once for nothing (10,000 devices woke together 10 s
                        // after connecting: leafgate-bench saw it as idle CPU). Move it to the
                        // renewal, which wakes the task anyway.
                        suback.as_mut().reset(renew_at);
                        announce(shared, device, route);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    device.on_publish(work, p, shared.draining.is_cancelled());
                    if work.unacked.len() > MAX_UNACKED {
                        break Ended::Failed {
                            error: format!("the hub delivered more than {MAX_UNACKED} messages that are not acknowledged yet"),
                            refusal: Refusal::None,
                        };
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => acks.acked(ack.pkid),
                Ok(_) => {}
                Err(e) => {
                    let certificate = matches!(device.auth, DeviceAuth::X509(_));
                    let (error, refusal) = describe(&e, hub, &route.connect, device.transport, certificate);
                    break Ended::Failed { error, refusal };
                }
            }
        }
    };
    if subscribed {
        device.presence.disconnected(None);
        shared.connected.fetch_sub(1, Ordering::Relaxed);
        if let Some(m) = metrics::get() {
            m.device_connected
                .get_or_create(&m.device(&device.id))
                .set(0);
        }
        for service in &device.services {
            service.on_disconnected();
        }
    }
    // Without a CONNACK there is nothing to close, and polling again would open a connection
    // the pacer never approved.
    let up_for = connected_at.map(|at| at.elapsed());
    if up_for.is_some() {
        match result {
            Ended::Shutdown => {
                // Boxed: it runs once in a device's life, and inline its state made every idle
                // session's future 220 bytes larger (`size_of`, release build).
                Box::pin(drain(
                    device,
                    &client,
                    &mut eventloop,
                    work,
                    &mut acks,
                    hub.connect_timeout,
                ))
                .await
            }
            Ended::Renew => disconnect(&client, &mut eventloop).await,
            Ended::Failed { .. } => {}
        }
    }
    (result, up_for)
}

/// On shutdown: services refuse new work (methods answer 503), work in flight finishes and its
/// replies are published (each within its own deadline), then disconnect.
async fn drain(
    device: &Device,
    client: &AsyncClient,
    eventloop: &mut rumqttc::EventLoop,
    work: &mut Work,
    acks: &mut Acks,
    write_timeout: Duration,
) {
    let id = &*device.id;
    work.tasks.close();
    if !work.tasks.is_empty() {
        log::info!(device_id = id; "device {id}: waiting for {} request(s) in flight before disconnecting", work.tasks.len());
    }
    let tasks = work.tasks.clone();
    let done = tasks.wait();
    tokio::pin!(done);
    loop {
        if write(id, eventloop, work, acks, write_timeout)
            .await
            .is_err()
        {
            return;
        }
        tokio::select! {
            () = &mut done => break,
            Some(message) = work.rx.recv() => {
                work.outbox.push_back(message);
                work.collect();
            }
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::Publish(p))) => device.on_publish(work, p, true),
                Ok(Event::Incoming(Packet::PubAck(ack))) => acks.acked(ack.pkid),
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }
    work.collect();
    if write(id, eventloop, work, acks, write_timeout)
        .await
        .is_ok()
    {
        disconnect(client, eventloop).await;
    }
}

/// Writes every message in `outbox` to the connection and flushes once.
///
/// Messages bypass rumqttc's request channel on purpose. Its event loop reads up to ten incoming
/// packets for each outgoing request it takes, and hands buffered incoming packets out before
/// it takes any: under a burst of requests the channel filled and replies were lost (1,543 of
/// 3,000 in one outside run). Written here, every reply leaves as soon as it is ready, a burst
/// of replies costs one flush, and a hub that stops reading stalls this session's reads too
/// (TCP backpressure) instead of growing a queue. QoS 0 publishes carry no packet id and need
/// nothing of rumqttc's session state.
///
/// Replies past their deadline are dropped here (for a method, the hub has answered 504
/// already). With no connection the outbox is kept for the next one. On a write failure every
/// message of this batch is logged as possibly lost, and the error ends the connection.
async fn write(
    id: &str,
    eventloop: &mut rumqttc::EventLoop,
    work: &mut Work,
    acks: &mut Acks,
    timeout: Duration,
) -> Result<(), String> {
    let Some(network) = eventloop.network.as_mut() else {
        return Ok(());
    };
    let state = &mut eventloop.state;
    // Parked messages are older than anything in the outbox: they go first.
    if acks.has_room() {
        while let Some(message) = work.parked.pop_back() {
            work.outbox.push_front(message);
        }
    }
    let now = Instant::now();
    let connection = work.connection;
    let mut batch: Vec<Label> = Vec::new();
    let (outbox, parked, unacked) = (&mut work.outbox, &mut work.parked, &mut work.unacked);
    let written = tokio::time::timeout(timeout, async {
        while let Some(message) = outbox.pop_front() {
            let packet = match *message {
                Outbound::Reply(reply) => {
                    if now > reply.deadline {
                        reply
                            .label
                            .warn(id, format_args!("ready after its deadline; not published"));
                        continue;
                    }
                    batch.push(reply.label);
                    Packet::Publish(rumqttc::Publish::new(
                        reply.topic,
                        QoS::AtMostOnce,
                        reply.body,
                    ))
                }
                Outbound::Ack(ack) => {
                    if ack.connection != connection {
                        // The hub delivers the message again on this connection; that delivery
                        // gets its own acknowledgement.
                        log::debug!(device_id = id; "device {id}: not acknowledging packet {} of an earlier connection", ack.pkid);
                        continue;
                    }
                    if let Some(due) = unacked.iter_mut().find(|(p, ready)| *p == ack.pkid && !*ready) {
                        due.1 = true;
                    }
                    // In arrival order: everything ready at the front goes now.
                    while let Some(&(pkid, true)) = unacked.front() {
                        unacked.pop_front();
                        network
                            .write(Packet::PubAck(rumqttc::PubAck::new(pkid)))
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    continue;
                }
                Outbound::Message(message) => {
                    let Some(pkid) = acks.free() else {
                        parked.push_back(Box::new(Outbound::Message(message)));
                        continue;
                    };
                    let mut publish =
                        rumqttc::Publish::from_bytes(message.topic, QoS::AtLeastOnce, message.body);
                    publish.pkid = pkid;
                    // Through rumqttc's session state, so the PUBACK it reads is one it expects.
                    match state.handle_outgoing_packet(rumqttc::Request::Publish(publish)) {
                        Ok(Some(packet)) => {
                            acks.waiting.push((pkid, message.delivery));
                            packet
                        }
                        Ok(None) => return Err(format!("packet id {pkid} is still in use")),
                        Err(e) => return Err(e.to_string()),
                    }
                }
            };
            network.write(packet).await.map_err(|e| e.to_string())?;
        }
        network.flush().await.map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|_| {
        Err(format!(
            "writing replies timed out after {} s",
            timeout.as_secs()
        ))
    });
    if let Err(error) = &written {
        for label in &batch {
            label.warn(id, format_args!("may not have reached the hub: {error}"));
        }
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_follows_the_recommended_form() {
        assert_eq!(
            username("myhub.azure-devices.net", "pump-7", None),
            format!(
                "myhub.azure-devices.net/pump-7/?api-version=2021-04-12&DeviceClientType=leafgate%2F{}",
                env!("CARGO_PKG_VERSION")
            )
        );
        assert!(
            username("h", "d", Some("dtmi:com:example:Pump;1"))
                .ends_with("&model-id=dtmi%3Acom%3Aexample%3APump%3B1")
        );
    }

    #[test]
    fn renewals_land_between_75_and_85_percent_of_the_ttl_and_are_spread() {
        let ttl = Duration::from_secs(3600);
        let delays: std::collections::BTreeSet<_> = (0..100).map(|_| renewal_delay(ttl)).collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= Duration::from_secs(2700) && *d <= Duration::from_secs(3060))
        );
        assert!(
            delays.len() > 90,
            "renewals are not spread: {} distinct of 100",
            delays.len()
        );
    }
}

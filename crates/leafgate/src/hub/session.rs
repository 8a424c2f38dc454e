//! One device's MQTT session with IoT Hub: connect under the device's own identity, subscribe to
//! method requests after every CONNACK, serve requests, renew the SAS token before it expires,
//! reconnect with jittered backoff, and stop cleanly.
//!
//! Each (re)connect builds a fresh rumqttc client and event loop, so one task never holds two
//! connections for its device id (IoT Hub would evict one with the other, forever).
//!
//! Method tasks do not publish themselves: they hand their reply to the session, which publishes
//! it on whatever connection is current, as long as the method's deadline has not passed. A reply
//! whose connection dropped (or was renewed) while the hardware was busy still reaches the hub.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, QoS,
    SubscribeReasonCode, TlsConfiguration, Transport,
};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::Settings;
use super::limiter::Pacer;
use super::{sas, topics};
use crate::backoff::{self, Backoff};
use crate::gateway::device::Device;
use crate::logtext;

/// The API version IoT Hub recommends; see iothub-protocol.md 1.2.
pub const API_VERSION: &str = "2021-04-12";

/// Replies handed over by method tasks and not yet taken by the session, per device. Tasks wait
/// (within their deadline) beyond it; the session takes them in batches.
const REPLY_QUEUE: usize = 256;

/// Requests one device may have in progress: running on its bus, or with their reply not yet
/// written. A request beyond it is answered 503 at once and never reaches the hardware. It
/// bounds what a hub flooding one device can pin in memory (each request holds its payload);
/// the bus's own deadline admission usually refuses the excess long before this.
pub const MAX_IN_FLIGHT: usize = 1024;

/// rumqttc's request channel now carries only SUBSCRIBE and DISCONNECT: replies are written by
/// the session itself (see [`write_replies`]).
const CLIENT_REQUESTS: usize = 4;

/// What every session shares.
pub struct Shared {
    pub hub: Settings,
    pub tls: Arc<rustls::ClientConfig>,
    pub pacer: Pacer,
    /// Sessions currently connected and subscribed (for status lines). Shared with the sessions
    /// of earlier configs that are still draining after a reload.
    pub connected: Arc<AtomicUsize>,
    /// Stop taking new requests (answer 503) but keep sessions up to publish in-flight replies.
    pub draining: CancellationToken,
}

/// The MQTT username for a device.
#[must_use]
pub fn username(hostname: &str, device_id: &str) -> String {
    format!(
        "{hostname}/{device_id}/?api-version={API_VERSION}&DeviceClientType={}",
        sas::percent_encode(concat!("leafgate/", env!("CARGO_PKG_VERSION")))
    )
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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

/// A method reply on its way to the hub. Boxed in the queue: tokio allocates a bounded
/// channel's first block of 32 slots up front, and 32 inline replies cost every device 3.5 KiB
/// of idle memory (heaptrack, issue 6); 32 pointers cost 256 bytes.
struct Reply {
    topic: String,
    body: Vec<u8>,
    status: u16,
    deadline: Instant,
    /// Method name and rid as log lines show them ([`logtext::clip`]).
    method: String,
    rid: String,
}

enum Ended {
    Shutdown,
    Renew,
    Failed { error: String, refused: bool },
}

/// The session's side of the reply queue and the method tasks it started. Lives as long as the
/// session, across reconnects: a reply whose connection dropped while the hardware was busy
/// goes out on the next one, within its deadline.
struct Work {
    tx: mpsc::Sender<Box<Reply>>,
    rx: mpsc::Receiver<Box<Reply>>,
    /// Replies taken from `rx` (or refusals made on the spot) and not yet written.
    outbox: VecDeque<Box<Reply>>,
    tasks: TaskTracker,
}

impl Work {
    /// Moves every reply the tasks have handed over into the outbox.
    fn collect(&mut self) {
        while let Ok(reply) = self.rx.try_recv() {
            self.outbox.push_back(reply);
        }
    }
}

/// Runs a device's session until `shutdown` is cancelled.
pub async fn run(device: Arc<Device>, shared: Arc<Shared>, shutdown: CancellationToken) {
    let id = device.id.clone();
    let hub = &shared.hub;
    let mut backoff = Backoff::new(hub.reconnect_min, hub.reconnect_max);
    let (tx, rx) = mpsc::channel(REPLY_QUEUE);
    let mut work = Work {
        tx,
        rx,
        outbox: VecDeque::new(),
        tasks: TaskTracker::new(),
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = shared.pacer.acquire() => {}
        }
        let (ended, up_for) = connect_once(&device, &shared, &shutdown, &mut work).await;
        match ended {
            Ended::Shutdown => break,
            Ended::Renew => {
                log::info!(device_id = &*id; "device {id}: reconnecting to renew its SAS token");
                backoff.reset();
            }
            Ended::Failed { error, refused } => {
                // A connection that stayed up for a while was healthy: start backoff afresh.
                if up_for.is_some_and(|up| up >= stable_after(hub)) {
                    backoff.reset();
                }
                let delay = if refused {
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
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    // Stopped while not connected: methods in flight finish on the hardware (a write is never
    // cut in half), but their replies have no connection to go to.
    work.tasks.close();
    if !work.tasks.is_empty() {
        log::warn!(device_id = &*id; "device {id}: stopping while disconnected; waiting for {} method(s) in flight, whose replies cannot be delivered", work.tasks.len());
    }
    work.tasks.wait().await;
    work.collect();
    for reply in work.outbox.drain(..) {
        let Reply {
            status,
            method,
            rid,
            ..
        } = *reply;
        log::warn!(device_id = &*id, method = &*method, rid = &*rid, status = status;
            "method {method} on {id}: reply {status} not delivered: the device stopped while disconnected from the hub");
    }
}

fn describe(error: &ConnectionError) -> (String, bool) {
    match error {
        ConnectionError::ConnectionRefused(code) => {
            let hint = match code {
                ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword => {
                    " (check the device id and key, and that the device is enabled in IoT Hub)"
                }
                _ => "",
            };
            (format!("{error}{hint}"), true)
        }
        other => (other.to_string(), false),
    }
}

/// One connection, from the attempt to its end; also returns how long it was up, if it got a
/// CONNACK.
async fn connect_once(
    device: &Arc<Device>,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
    work: &mut Work,
) -> (Ended, Option<Duration>) {
    let hub = &shared.hub;
    let id = device.id.clone();
    let expiry = unix_now() + hub.sas_ttl.as_secs();
    let token = sas::token(
        &sas::device_resource(&hub.hostname, &id),
        &device.key,
        expiry,
        None,
    );
    let mut options = MqttOptions::new(&*id, &hub.connect_host, hub.port);
    let max_packet = hub.max_payload_bytes.max(256 * 1024) + 4096;
    options
        .set_credentials(username(&hub.hostname, &id), token)
        .set_keep_alive(hub.keep_alive)
        .set_clean_session(false)
        // Replies go out at QoS 0 and the subscription is QoS 0, so nothing is ever in flight;
        // rumqttc keeps a slot per allowed in-flight publish in every session (100 by default,
        // 12 KiB per device at 10,000 devices; heaptrack, issue 6).
        .set_inflight(1)
        // The hub's own message limit is 256 KiB; larger payloads are refused with 413 by us
        // rather than killing the connection inside rumqttc.
        .set_max_packet_size(max_packet, max_packet)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            shared.tls.clone(),
        )));
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

    let renew_at = Instant::now() + renewal_delay(hub.sas_ttl);
    let renew = tokio::time::sleep_until(renew_at);
    tokio::pin!(renew);
    // Armed at CONNACK: a hub that never answers SUBSCRIBE would leave the device connected
    // but deaf to methods forever.
    let suback = tokio::time::sleep(hub.connect_timeout);
    tokio::pin!(suback);
    let mut connected_at: Option<Instant> = None;
    let mut subscribed = false;
    let result = loop {
        if connected_at.is_some() && !work.outbox.is_empty() {
            if let Err(error) =
                write_replies(&id, &mut eventloop, &mut work.outbox, hub.connect_timeout).await
            {
                break Ended::Failed {
                    error,
                    refused: false,
                };
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break Ended::Shutdown,
            () = &mut renew => break Ended::Renew,
            () = &mut suback, if connected_at.is_some() && !subscribed => {
                break Ended::Failed {
                    error: format!("the hub did not answer SUBSCRIBE to {} within {} s", topics::METHODS_FILTER, hub.connect_timeout.as_secs()),
                    refused: false,
                };
            }
            // Not before CONNACK: a poll dropped while connecting would connect afresh, past
            // the pacer.
            Some(reply) = work.rx.recv(), if connected_at.is_some() => {
                work.outbox.push_back(reply);
                work.collect();
            }
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    connected_at = Some(Instant::now());
                    suback.as_mut().reset(Instant::now() + hub.connect_timeout);
                    if let Err(e) = client.try_subscribe(topics::METHODS_FILTER, QoS::AtMostOnce) {
                        break Ended::Failed { error: format!("cannot subscribe to methods: {e}"), refused: false };
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack.return_codes.iter().any(|c| matches!(c, SubscribeReasonCode::Failure)) {
                        break Ended::Failed { error: format!("hub refused the subscription to {}", topics::METHODS_FILTER), refused: true };
                    }
                    if !subscribed {
                        subscribed = true;
                        // The SUBACK timer stays registered even with its branch off, and would
                        // wake this task once for nothing (10,000 devices woke together 10 s
                        // after connecting: leafgate-bench saw it as idle CPU). Move it to the
                        // renewal, which wakes the task anyway.
                        suback.as_mut().reset(renew_at);
                        let n = shared.connected.fetch_add(1, Ordering::Relaxed) + 1;
                        log::info!(device_id = &*id; "device {id}: connected to {} and listening for methods ({n} connected)", hub.connect_host);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    on_publish(device, work, &p.topic, p.payload, shared.draining.is_cancelled());
                }
                Ok(_) => {}
                Err(e) => {
                    let (error, refused) = describe(&e);
                    break Ended::Failed { error, refused };
                }
            }
        }
    };
    if subscribed {
        shared.connected.fetch_sub(1, Ordering::Relaxed);
    }
    // Without a CONNACK there is nothing to close, and polling again would open a connection
    // the pacer never approved.
    let up_for = connected_at.map(|at| at.elapsed());
    if up_for.is_some() {
        match result {
            Ended::Shutdown => {
                drain(device, &client, &mut eventloop, work, hub.connect_timeout).await
            }
            Ended::Renew => disconnect(&client, &mut eventloop).await,
            Ended::Failed { .. } => {}
        }
    }
    (result, up_for)
}

/// On shutdown: answer new requests 503, let methods in flight finish and publish their replies
/// (each within its own deadline), then disconnect.
async fn drain(
    device: &Arc<Device>,
    client: &AsyncClient,
    eventloop: &mut rumqttc::EventLoop,
    work: &mut Work,
    write_timeout: Duration,
) {
    let id = &*device.id;
    work.tasks.close();
    if !work.tasks.is_empty() {
        log::info!(device_id = id; "device {id}: waiting for {} method(s) in flight before disconnecting", work.tasks.len());
    }
    let tasks = work.tasks.clone();
    let done = tasks.wait();
    tokio::pin!(done);
    loop {
        if write_replies(id, eventloop, &mut work.outbox, write_timeout)
            .await
            .is_err()
        {
            return;
        }
        tokio::select! {
            () = &mut done => break,
            Some(reply) = work.rx.recv() => {
                work.outbox.push_back(reply);
                work.collect();
            }
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::Publish(p))) => on_publish(device, work, &p.topic, p.payload, true),
                Ok(_) => {}
                Err(_) => return,
            }
        }
    }
    work.collect();
    if write_replies(id, eventloop, &mut work.outbox, write_timeout)
        .await
        .is_ok()
    {
        disconnect(client, eventloop).await;
    }
}

/// Sends DISCONNECT (after whatever is queued) so the hub sees a clean close.
async fn disconnect(client: &AsyncClient, eventloop: &mut rumqttc::EventLoop) {
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok(event) = eventloop.poll().await {
            if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
}

/// Writes every reply in `outbox` to the connection and flushes once.
///
/// Replies bypass rumqttc's request channel on purpose. Its event loop reads up to ten incoming
/// packets for each outgoing request it takes, and hands buffered incoming packets out before
/// it takes any: under a burst of requests the channel filled and replies were lost (1,543 of
/// 3,000 in one outside run). Written here, every reply leaves as soon as it is ready, a burst
/// of replies costs one flush, and a hub that stops reading stalls this session's reads too
/// (TCP backpressure) instead of growing a queue. QoS 0 publishes carry no packet id and need
/// nothing of rumqttc's session state.
///
/// Replies past their deadline are dropped here (the hub has answered 504 already). With no
/// connection the outbox is kept for the next one. On a write failure every reply of this batch
/// is logged as possibly lost, and the error ends the connection.
async fn write_replies(
    id: &str,
    eventloop: &mut rumqttc::EventLoop,
    outbox: &mut VecDeque<Box<Reply>>,
    timeout: Duration,
) -> Result<(), String> {
    let Some(network) = eventloop.network.as_mut() else {
        return Ok(());
    };
    let now = Instant::now();
    let mut batch: Vec<(String, String, u16)> = Vec::new();
    let written = tokio::time::timeout(timeout, async {
        while let Some(reply) = outbox.pop_front() {
            let Reply {
                topic,
                body,
                status,
                deadline,
                method,
                rid,
            } = *reply;
            if now > deadline {
                log::warn!(device_id = id, method = &*method, rid = &*rid, status = status;
                    "method {method} on {id}: reply {status} ready after its deadline; not published");
                continue;
            }
            batch.push((method, rid, status));
            let publish = rumqttc::Publish::new(topic, QoS::AtMostOnce, body);
            network
                .write(Packet::Publish(publish))
                .await
                .map_err(|e| e.to_string())?;
        }
        network.flush().await.map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|_| Err(format!("writing replies timed out after {} s", timeout.as_secs())));
    if let Err(error) = &written {
        for (method, rid, status) in &batch {
            log::warn!(device_id = id, method = &**method, rid = &**rid, status = *status;
                "method {method} on {id}: reply {status} may not have reached the hub: {error}");
        }
    }
    written
}

fn on_publish(
    device: &Arc<Device>,
    work: &mut Work,
    topic: &str,
    payload: bytes::Bytes,
    // The device is stopping (shutdown, or a restart for a changed config): new requests get
    // 503 and are not run.
    stopping: bool,
) {
    let received = Instant::now();
    let id = &device.id;
    let (name, rid) = match topics::parse_request(topic) {
        Ok(t) => (t.name.to_owned(), t.rid.to_owned()),
        Err(e) => {
            // Nothing to answer: without a rid the hub cannot correlate a reply.
            log::warn!(device_id = &**id; "device {id}: ignoring publish on {:?}: {e}", logtext::clip(topic));
            return;
        }
    };
    let bus = device.bus.id();
    let refusal = if stopping {
        Some(crate::mapping::Failure::ShuttingDown {
            bus: bus.to_owned(),
        })
    } else if work.tasks.len() >= MAX_IN_FLIGHT {
        Some(crate::mapping::Failure::TooManyInProgress {
            bus: bus.to_owned(),
            limit: MAX_IN_FLIGHT,
        })
    } else {
        None
    };
    if let Some(failure) = refusal {
        // Answered on the spot, without a task: the refusal cannot itself be refused. Status,
        // body and level come from the status map, like every other failure's.
        let (status, body, level) = crate::mapping::respond(&failure);
        let (shown, shown_rid) = (logtext::clip(&name), logtext::clip(&rid));
        log::log!(level, device_id = &**id, method = &*shown, rid = &*shown_rid, bus = bus, status = status, duration_ms = 0;
            "method {shown} on {id}: {status} {failure}");
        work.outbox.push_back(Box::new(Reply {
            topic: topics::response(status, &rid),
            body: serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec()),
            status,
            deadline: received + Duration::from_secs(5),
            method: shown.into_owned(),
            rid: shown_rid.into_owned(),
        }));
        return;
    }
    let device = device.clone();
    let tx = work.tx.clone();
    work.tasks.spawn(async move {
        let response = device.call(&name, &rid, &payload, received).await;
        let body = serde_json::to_vec(&response.body).unwrap_or_else(|_| b"{}".to_vec());
        let reply = Box::new(Reply {
            topic: topics::response(response.status, &rid),
            body,
            status: response.status,
            deadline: response.deadline,
            method: logtext::clip_owned(name),
            rid: logtext::clip_owned(rid),
        });
        if let Err(mpsc::error::SendError(reply)) = tx.send(reply).await {
            let id = &*device.id;
            let Reply { method, rid, status, .. } = *reply;
            log::warn!(device_id = id, method = &*method, rid = &*rid, status = status;
                "method {method} on {id}: reply {status} not delivered: the device's session has ended");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn username_follows_the_recommended_form() {
        assert_eq!(
            username("myhub.azure-devices.net", "pump-7"),
            format!(
                "myhub.azure-devices.net/pump-7/?api-version=2021-04-12&DeviceClientType=leafgate%2F{}",
                env!("CARGO_PKG_VERSION")
            )
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

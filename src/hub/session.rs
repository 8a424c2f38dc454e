//! One device's MQTT session with IoT Hub: connect under the device's own identity, subscribe to
//! method requests after every CONNACK, serve requests, renew the SAS token before it expires,
//! reconnect with jittered backoff, and stop cleanly.
//!
//! Each (re)connect builds a fresh rumqttc client and event loop, so one task never holds two
//! connections for its device id (IoT Hub would evict one with the other, forever).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, QoS,
    TlsConfiguration, Transport,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::limiter::Pacer;
use super::{sas, topics};
use crate::backoff::{self, Backoff};
use crate::config;
use crate::gateway::device::Device;

/// The API version IoT Hub recommends; see iothub-protocol.md 1.2.
pub const API_VERSION: &str = "2021-04-12";

/// What every session shares.
pub struct Shared {
    pub hub: config::Hub,
    pub tls: Arc<rustls::ClientConfig>,
    pub pacer: Pacer,
    /// Sessions currently connected and subscribed (for status lines).
    pub connected: AtomicUsize,
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

enum Ended {
    Shutdown,
    Renew,
    Failed(ConnectionError),
}

/// Runs a device's session until `shutdown` is cancelled.
pub async fn run(device: Arc<Device>, shared: Arc<Shared>, shutdown: CancellationToken) {
    let id = device.id.clone();
    let hub = &shared.hub;
    let mut backoff = Backoff::new(hub.reconnect_min, hub.reconnect_max);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = shared.pacer.acquire() => {}
        }
        let connected_at = Instant::now();
        match connect_once(&device, &shared, &shutdown).await {
            Ended::Shutdown => break,
            Ended::Renew => {
                log::info!(device_id = &*id; "device {id}: reconnected to renew its SAS token");
                backoff.reset();
                continue;
            }
            Ended::Failed(e) => {
                // A connection that stayed up for a while was healthy: start backoff afresh.
                if connected_at.elapsed() > Duration::from_secs(60) {
                    backoff.reset();
                }
                let refused = matches!(e, ConnectionError::ConnectionRefused(_));
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
                let hint = match &e {
                    ConnectionError::ConnectionRefused(
                        ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword,
                    ) => {
                        " (check the device id and key, and that the device is enabled in IoT Hub)"
                    }
                    _ => "",
                };
                log::warn!(device_id = &*id; "device {id}: hub connection failed: {e}{hint}; retrying in {} ms", delay.as_millis());
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

async fn connect_once(
    device: &Arc<Device>,
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) -> Ended {
    let hub = &shared.hub;
    // Methods received on this connection; a planned disconnect waits for them.
    let tracker = &TaskTracker::new();
    let id = device.id.clone();
    let expiry = unix_now() + hub.sas_ttl.as_secs();
    let token = sas::token(
        &sas::device_resource(&hub.hostname, &id),
        &device.key,
        expiry,
        None,
    );
    let mut options = MqttOptions::new(&*id, &hub.connect_host, hub.port);
    options
        .set_credentials(username(&hub.hostname, &id), token)
        .set_keep_alive(hub.keep_alive)
        .set_clean_session(false)
        // The hub's own message limit is 256 KiB; larger payloads are refused with 413 by us
        // rather than killing the connection inside rumqttc.
        .set_max_packet_size(
            hub.max_payload_bytes.max(256 * 1024) + 4096,
            hub.max_payload_bytes.max(256 * 1024) + 4096,
        )
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            shared.tls.clone(),
        )));
    let (client, mut eventloop) = AsyncClient::new(options, 64);
    let mut net = eventloop.network_options();
    net.set_connection_timeout(hub.connect_timeout.as_secs().max(1));
    eventloop.set_network_options(net);

    let renew_at = Instant::now() + renewal_delay(hub.sas_ttl);
    let mut subscribed = false;
    let result = loop {
        tokio::select! {
            () = shutdown.cancelled() => break Ended::Shutdown,
            () = tokio::time::sleep_until(renew_at) => break Ended::Renew,
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Err(e) = client.try_subscribe(topics::METHODS_FILTER, QoS::AtMostOnce) {
                        log::warn!(device_id = &*id; "device {id}: cannot subscribe to methods: {e}");
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if !subscribed {
                        subscribed = true;
                        let n = shared.connected.fetch_add(1, Ordering::Relaxed) + 1;
                        log::info!(device_id = &*id; "device {id}: connected to {} and listening for methods ({n} connected)", hub.connect_host);
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let stopping = shared.draining.is_cancelled().then_some(SHUTTING_DOWN);
                    on_publish(device, &client, tracker, &publish.topic, publish.payload, stopping);
                }
                Ok(_) => {}
                Err(e) => break Ended::Failed(e),
            }
        }
    };
    if subscribed {
        shared.connected.fetch_sub(1, Ordering::Relaxed);
    }
    if matches!(result, Ended::Shutdown | Ended::Renew) {
        let reason = if matches!(result, Ended::Shutdown) {
            SHUTTING_DOWN
        } else {
            RENEWING
        };
        finish(device, &client, &mut eventloop, tracker, reason).await;
    }
    result
}

/// Before a planned disconnect: let in-flight methods publish their replies (bounded by their
/// own deadlines), then send DISCONNECT so the hub sees a clean close.
async fn finish(
    device: &Arc<Device>,
    client: &AsyncClient,
    eventloop: &mut rumqttc::EventLoop,
    tracker: &TaskTracker,
    reason: &'static str,
) {
    let id = &*device.id;
    tracker.close();
    let in_flight = tracker.len();
    if in_flight > 0 {
        log::info!(device_id = id; "device {id}: waiting for {in_flight} method(s) in flight before disconnecting");
    }
    // Requests that still arrive on this connection get a 503 at once: every request gets
    // exactly one reply, and new work must not hold the connection open.
    let flush = async {
        loop {
            tokio::select! {
                () = tracker.wait() => break,
                event = eventloop.poll() => match event {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        on_publish(device, client, tracker, &p.topic, p.payload, Some(reason));
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        }
        let _ = client.try_disconnect();
        // Poll until the DISCONNECT is written (rumqttc then reports an error or closes).
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Ok(event) = eventloop.poll().await {
                if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                    break;
                }
            }
        })
        .await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(330), flush).await;
}

const SHUTTING_DOWN: &str = "leafgate is shutting down";
const RENEWING: &str = "device is reconnecting to renew its credentials; retry in a few seconds";

fn on_publish(
    device: &Arc<Device>,
    client: &AsyncClient,
    tracker: &TaskTracker,
    topic: &str,
    payload: bytes::Bytes,
    stopping: Option<&'static str>,
) {
    let received = Instant::now();
    let id = &device.id;
    let (name, rid) = match topics::parse_request(topic) {
        Ok(t) => (t.name.to_owned(), t.rid.to_owned()),
        Err(e) => {
            // Nothing to answer: without a rid the hub cannot correlate a reply.
            log::warn!(device_id = &**id; "device {id}: ignoring publish on {topic:?}: {e}");
            return;
        }
    };
    let device = device.clone();
    let client = client.clone();
    tracker.spawn(async move {
        let response = if let Some(reason) = stopping {
            let body = serde_json::json!({"error": "bus_unavailable", "message": reason});
            log::info!(device_id = &*device.id, method = &*name, rid = &*rid, status = 503; "method {name} on {}: 503 {reason}", device.id);
            crate::gateway::device::Response { status: 503, body, deadline: received + Duration::from_secs(5) }
        } else {
            device.call(&name, &rid, &payload, received).await
        };
        if Instant::now() > response.deadline {
            log::warn!(device_id = &*device.id, method = &*name, rid = &*rid, status = response.status;
                "method {name} on {}: reply ready after its deadline; not published", device.id);
            return;
        }
        let body = serde_json::to_vec(&response.body).unwrap_or_else(|_| b"{}".to_vec());
        if let Err(e) = client.publish(topics::response(response.status, &rid), QoS::AtMostOnce, false, body).await {
            log::warn!(device_id = &*device.id, method = &*name, rid = &*rid, status = response.status;
                "method {name} on {}: reply not sent, connection gone: {e}", device.id);
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

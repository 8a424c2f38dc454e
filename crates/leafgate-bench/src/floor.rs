//! The floor: devices that answer every method at once, without hardware, over the same
//! emulator, TLS and MQTT path as leafgate. A call to them costs what the caller, the emulator,
//! TLS and MQTT cost; what leafgate adds on top is the difference.
//!
//! Each responder is a rumqttc client (the MQTT client leafgate uses) with its own TLS session,
//! running in the harness process. It answers on its event loop task with a fixed body shaped
//! like leafgate's reply to `read10`, so the bytes on the wire match.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use leafgate::hub::sas::{self, Key};
use leafgate::hub::topics;
use leafgate_emulator::Emulator;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::task::JoinSet;

/// Running responders; dropping it stops them.
pub struct Floor {
    pub ids: Vec<String>,
    tasks: JoinSet<()>,
}

impl Floor {
    /// Registers `count` devices `floor-N` in the emulator, connects a responder for each, and
    /// waits until every one is subscribed.
    pub async fn start(
        emu: &Emulator,
        tls: Arc<rustls::ClientConfig>,
        count: usize,
        body: Vec<u8>,
    ) -> Result<Floor> {
        let body = bytes::Bytes::from(body);
        let mut tasks = JoinSet::new();
        let mut ids = Vec::with_capacity(count);
        for i in 0..count {
            let id = format!("floor-{i:05}");
            let key = leafgate_emulator::random_key();
            emu.add_device(&id, key.clone());
            let options = options(emu, &id, &key, tls.clone());
            tasks.spawn(respond(options, body.clone()));
            ids.push(id);
        }
        for id in &ids {
            emu.wait_method_ready(id, Duration::from_secs(60))
                .await
                .with_context(|| format!("floor responder {id} did not connect"))?;
        }
        Ok(Floor { ids, tasks })
    }

    pub fn stop(mut self) {
        self.tasks.abort_all();
    }
}

fn options(emu: &Emulator, id: &str, key: &Key, tls: Arc<rustls::ClientConfig>) -> MqttOptions {
    let host = emu.host_name();
    let expiry = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
        + 24 * 3600;
    let token = sas::token(&sas::device_resource(host, id), key, expiry, None);
    let mut options = MqttOptions::new(id, "localhost", emu.mqtt_addr().port());
    options
        .set_credentials(
            format!("{host}/{id}/?api-version=2021-04-12&DeviceClientType=leafgate-bench-floor"),
            token,
        )
        .set_keep_alive(Duration::from_secs(120))
        .set_clean_session(false)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(tls)));
    options
}

/// Answers every method request with 200 and `body`, until aborted; reconnects after errors.
async fn respond(options: MqttOptions, body: bytes::Bytes) {
    let (client, mut eventloop) = AsyncClient::new(options, 256);
    // The floor is the best a responder can do: no Nagle delay on its small replies.
    let mut net = eventloop.network_options();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                let _ = client.try_subscribe(topics::METHODS_FILTER, QoS::AtMostOnce);
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if let Ok(request) = topics::parse_request(&publish.topic) {
                    let topic = topics::response(200, request.rid);
                    if let Err(e) = client.try_publish(topic, QoS::AtMostOnce, false, body.clone())
                    {
                        log::warn!("floor: reply not queued: {e}");
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                log::warn!("floor: connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

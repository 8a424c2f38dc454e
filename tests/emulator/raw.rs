//! A device speaking raw MQTT over TLS (rumqttc's packet codec, no client state machine), so a
//! test sends every PUBLISH, PUBACK and SUBSCRIBE itself and sees every packet and close. Shared
//! by the telemetry, twin and C2D tests.

use bytes::BytesMut;
use leafgate::hub::sas::Key;
use leafgate_emulator::Emulator;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{ConnectReturnCode, Publish, Subscribe, SubscribeFilter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Packet, WAIT, raw_tls, send_connect, write_packet};

/// A device speaking raw MQTT: it reads with one buffer for the whole connection, so packets
/// that arrive in one TLS record are all seen.
pub(super) struct RawDevice {
    pub(super) stream: tokio_rustls::client::TlsStream<TcpStream>,
    pub(super) rbuf: BytesMut,
    pub(super) next_pkid: u16,
}

impl RawDevice {
    /// Connects as `id` (CleanSession 0) and takes its CONNACK, which must accept.
    pub(super) async fn connect(emu: &Emulator, id: &str, key: &Key) -> RawDevice {
        let mut stream = raw_tls(emu).await;
        send_connect(&mut stream, emu, id, key, 60).await;
        let mut device = RawDevice {
            stream,
            rbuf: BytesMut::new(),
            next_pkid: 1,
        };
        // Session present or not (CleanSession 0 reconnects resume one): accepted is enough.
        let accepted = device.read().await;
        assert!(
            matches!(accepted, Some(Packet::ConnAck(ref ack)) if ack.code == ConnectReturnCode::Success),
            "{accepted:?}"
        );
        device
    }

    /// Publishes `body` on `topic`; returns the packet id (0 for QoS 0).
    pub(super) async fn publish(&mut self, topic: &str, qos: QoS, body: &[u8]) -> u16 {
        let mut publish = Publish::new(topic, qos, body.to_vec());
        if qos != QoS::AtMostOnce {
            publish.pkid = self.next_pkid;
            self.next_pkid += 1;
        }
        let pkid = publish.pkid;
        write_packet(&mut self.stream, Packet::Publish(publish)).await;
        pkid
    }

    pub(super) async fn send(&mut self, packet: Packet) {
        write_packet(&mut self.stream, packet).await;
    }

    /// The next packet from the emulator; `None` once it closed the connection.
    pub(super) async fn read(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, async {
            loop {
                match Packet::read(&mut self.rbuf, 1 << 20) {
                    Ok(packet) => return Some(packet),
                    Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                    Err(e) => panic!("emulator sent a malformed packet: {e}"),
                }
                match self.stream.read_buf(&mut self.rbuf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("emulator neither answered nor closed")
    }

    /// Proves that nothing was queued for this device before now: the emulator answers packets
    /// in order, so whatever it would send for the earlier ones comes before this PINGRESP.
    pub(super) async fn assert_nothing_before_pingresp(&mut self) {
        self.send(Packet::PingReq).await;
        assert_eq!(self.read().await, Some(Packet::PingResp));
    }

    pub(super) async fn assert_closed(&mut self) {
        assert_eq!(self.read().await, None, "the emulator should have closed");
        let _ = self.stream.shutdown().await;
    }
}

impl RawDevice {
    /// Subscribes to `filters` at QoS 1 and takes the SUBACK, which must grant them all.
    pub(super) async fn subscribe(&mut self, filters: &[&str]) {
        let pkid = self.next_pkid;
        self.next_pkid += 1;
        let filters: Vec<SubscribeFilter> = filters
            .iter()
            .map(|f| SubscribeFilter::new((*f).to_owned(), QoS::AtLeastOnce))
            .collect();
        let mut subscribe = Subscribe::new_many(filters);
        subscribe.pkid = pkid;
        self.send(Packet::Subscribe(subscribe)).await;
        match self.read().await {
            Some(Packet::SubAck(ack)) => {
                assert_eq!(ack.pkid, pkid);
                assert!(
                    ack.return_codes.iter().all(|c| matches!(
                        c,
                        rumqttc::mqttbytes::v4::SubscribeReasonCode::Success(_)
                    )),
                    "{ack:?}"
                );
            }
            other => panic!("expected a SUBACK, got {other:?}"),
        }
    }
}

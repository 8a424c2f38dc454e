//! MQTT over WebSockets: rumqttc's `Transport::Wss` gets CONNACK 0 and serves a direct method;
//! the upgrade is refused on another path and without the `mqtt` subprotocol; the MQTT byte
//! stream is independent of the frames carrying it.

use async_tungstenite::tungstenite::client::IntoClientRequest as _;
use async_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use bytes::BytesMut;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{ConnectReturnCode, Packet, Subscribe};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ws_stream_tungstenite::WsStream;

use super::{
    Dial, WAIT, assert_method_round_trip, connect_once, hub_options, key, raw_tls, serve_methods,
    start_with_ws, token,
};
use crate::{AttemptOutcome, DeviceTransport, Emulator, EmulatorConfig, Fault};

#[tokio::test]
async fn rumqttc_over_wss_connects_and_serves_a_method() {
    let emu = start_with_ws().await;
    emu.add_device("ws-1", key(1));
    let options = hub_options(
        &emu,
        "ws-1",
        Some(token(&emu, "ws-1", &key(1))),
        None,
        Dial::Wss,
    );
    let (client, eventloop) = connect_once(options).await.unwrap();
    let device = serve_methods(client, eventloop);
    assert_method_round_trip(&emu, "ws-1").await;
    let record = emu.device_stats("ws-1").last_connect.unwrap();
    assert_eq!(record.transport, DeviceTransport::WebSocket);
    assert_eq!(record.transport.as_str(), "websocket");
    assert!(record.tls_version.is_some());
    device.abort();

    // The same device over the 8883 listener is recorded as such.
    let options = hub_options(
        &emu,
        "ws-1",
        Some(token(&emu, "ws-1", &key(1))),
        None,
        Dial::Tls,
    );
    let (_client, _eventloop) = connect_once(options).await.unwrap();
    let record = emu.device_stats("ws-1").last_connect.unwrap();
    assert_eq!(record.transport, DeviceTransport::Mqtt);
}

#[tokio::test]
async fn a_wrong_key_over_wss_gets_connack_5() {
    let emu = start_with_ws().await;
    emu.add_device("ws-1", key(1));
    let options = hub_options(
        &emu,
        "ws-1",
        Some(token(&emu, "ws-1", &key(2))),
        None,
        Dial::Wss,
    );
    assert_eq!(
        super::refused_with(connect_once(options).await),
        rumqttc::ConnectReturnCode::NotAuthorized
    );
}

/// The status a raw WebSocket client gets for an upgrade of `path` offering `protocol`.
async fn upgrade_status(emu: &Emulator, path: &str, protocol: Option<&str>) -> StatusCode {
    let addr = emu.ws_addr().unwrap();
    let tls = raw_tls(emu, addr).await;
    let mut request = format!("wss://localhost:{}{path}", addr.port())
        .into_client_request()
        .unwrap();
    if let Some(protocol) = protocol {
        request.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_str(protocol).unwrap(),
        );
    }
    match async_tungstenite::tokio::client_async(request, tls).await {
        Ok((_, response)) => response.status(),
        Err(async_tungstenite::tungstenite::Error::Http(response)) => response.status(),
        Err(other) => panic!("upgrade of {path} failed without an HTTP answer: {other}"),
    }
}

#[tokio::test]
async fn upgrades_only_the_hub_path_with_the_mqtt_subprotocol() {
    let emu = start_with_ws().await;
    assert_eq!(
        upgrade_status(&emu, "/$iothub/websocket", Some("MQTT")).await,
        StatusCode::SWITCHING_PROTOCOLS
    );
    assert_eq!(
        upgrade_status(&emu, "/mqtt", Some("mqtt")).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        upgrade_status(&emu, "/$iothub/websocket", None).await,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        upgrade_status(&emu, "/$iothub/websocket", Some("wamp")).await,
        StatusCode::BAD_REQUEST
    );
    // The refused upgrades count as attempts without a CONNECT; the accepted one sent none.
    let attempts = emu
        .wait_connect_attempts(WAIT, |a| a.len() == 4)
        .await
        .unwrap();
    assert!(
        attempts
            .iter()
            .all(|a| a.outcome == AttemptOutcome::NoConnect)
    );
}

fn encode(packet: Packet) -> Vec<u8> {
    let mut buf = BytesMut::new();
    packet.write(&mut buf, 1 << 20).unwrap();
    buf.to_vec()
}

/// A CONNECT split over two WebSocket messages, then SUBSCRIBE and PINGREQ in one message: the
/// emulator reads MQTT packets from the byte stream, not from frames.
#[tokio::test]
async fn packets_span_frames_and_frames_hold_several_packets() {
    let emu = start_with_ws().await;
    emu.add_device("ws-2", key(2));
    let addr = emu.ws_addr().unwrap();
    let tls = raw_tls(&emu, addr).await;
    let mut request = format!("wss://localhost:{}/$iothub/websocket", addr.port())
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static("mqtt"),
    );
    let (socket, response) = async_tungstenite::tokio::client_async(request, tls)
        .await
        .unwrap();
    assert_eq!(
        response
            .headers()
            .get(header::SEC_WEBSOCKET_PROTOCOL)
            .unwrap(),
        "mqtt"
    );
    // Each write of a WsStream is one binary message.
    let mut ws = WsStream::new(socket);
    let mut connect = rumqttc::mqttbytes::v4::Connect::new("ws-2");
    connect.keep_alive = 60;
    connect.set_login(
        format!("{}/ws-2/?api-version=2021-04-12", emu.host_name()),
        token(&emu, "ws-2", &key(2)),
    );
    let connect = encode(Packet::Connect(connect));
    let (head, tail) = connect.split_at(7);
    for part in [head, tail] {
        ws.write_all(part).await.unwrap();
        ws.flush().await.unwrap();
    }
    let mut two = encode(Packet::Subscribe(Subscribe::new(
        "$iothub/methods/POST/#",
        QoS::AtMostOnce,
    )));
    two.extend(encode(Packet::PingReq));
    ws.write_all(&two).await.unwrap();
    ws.flush().await.unwrap();

    let mut rbuf = BytesMut::new();
    let mut seen = Vec::new();
    tokio::time::timeout(WAIT, async {
        while seen.len() < 3 {
            match Packet::read(&mut rbuf, 1 << 20) {
                Ok(packet) => seen.push(packet),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {
                    assert_ne!(ws.read_buf(&mut rbuf).await.unwrap(), 0, "closed");
                }
                Err(e) => panic!("malformed packet from the emulator: {e}"),
            }
        }
    })
    .await
    .unwrap();
    assert!(
        matches!(&seen[0], Packet::ConnAck(ack) if ack.code == ConnectReturnCode::Success),
        "{seen:?}"
    );
    assert!(matches!(seen[1], Packet::SubAck(_)), "{seen:?}");
    assert!(matches!(seen[2], Packet::PingResp), "{seen:?}");
    assert!(emu.device_stats("ws-2").methods_subscribed);
}

/// [`Fault::RefuseTcp`] closes the WebSocket listener too, and `inject_fault` returns only once
/// both are closed; clearing it opens both again.
#[tokio::test]
async fn refuse_tcp_closes_and_reopens_both_listeners() {
    let emu = Emulator::start(EmulatorConfig {
        ws_addr: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let fault = emu.inject_fault(Fault::RefuseTcp, None).await;
    for addr in [emu.mqtt_addr(), emu.ws_addr().unwrap()] {
        let refused = tokio::net::TcpStream::connect(addr).await;
        assert!(refused.is_err(), "{addr} still accepts");
    }
    emu.clear_fault(fault).await;
    for addr in [emu.mqtt_addr(), emu.ws_addr().unwrap()] {
        tokio::net::TcpStream::connect(addr).await.unwrap();
    }
}

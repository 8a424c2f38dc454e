//! Cloud-to-device messages: `azure-iot-device`'s `on_message_received` against the emulator's
//! MQTT side. The service side cannot be the SDK's own `send_c2d_message`, which speaks AMQP
//! (uamqp) and is not emulated: messages are sent in process, and through the emulator's REST
//! stand-in `POST /devices/{id}/messages/deviceBound` by `azure-iot-hub`'s own HTTP plumbing
//! (see `send_c2d_rest` in `python/service_peer.py`), labelled as such.

use std::time::Duration;

use leafgate_emulator::{C2dSend, C2dState, Emulator, EmulatorConfig, Fault, Target};
use serde_json::json;

use super::device_sdk::Sdk;
use super::peer::{Peer, Venv, WAIT};
use super::service_sdk::service_peer;

const C2D: &str = "devices/c2d-sdk/messages/devicebound/#";

/// Connects SDK client "a" as `device` with a C2D handler, and waits until the emulator would
/// deliver to it.
async fn listening(sdk: &mut Sdk, device: &str) {
    let cs = sdk.emu.device_connection_string(device).unwrap();
    sdk.connect_with("a", &cs, false, json!({}))
        .await
        .unwrap_or_else(|e| panic!("could not connect: {e}"));
    sdk.peer.call("listen_c2d", json!({"name": "a"})).await;
    let filter = format!("devices/{device}/messages/devicebound/#");
    sdk.emu
        .wait_for(device, WAIT, |s| {
            s.subscriptions.iter().any(|sub| sub.filter == filter)
        })
        .await
        .unwrap();
}

#[tokio::test]
async fn device_sdk_receives_a_message_with_its_properties_and_completes_it() {
    let mut sdk = Sdk::start(&["c2d-sdk"]).await;
    listening(&mut sdk, "c2d-sdk").await;
    let stats = sdk.emu.device_stats("c2d-sdk");
    assert!(
        stats
            .subscriptions
            .iter()
            .any(|s| s.filter == C2D && s.qos == 1),
        "{stats:?}"
    );
    let mid = sdk
        .emu
        .send_c2d(
            "c2d-sdk",
            C2dSend {
                body: br#"{"cmd":"start","pump":3}"#.to_vec(),
                properties: vec![
                    ("mode".to_owned(), "eco & quiet".to_owned()),
                    ("unit".to_owned(), "°C".to_owned()),
                ],
                message_id: Some("m 1/a".to_owned()),
                correlation_id: Some("corr-9".to_owned()),
                ttl: None,
            },
        )
        .unwrap();
    let event = sdk.peer.event("c2d", |_| true).await;
    assert_eq!(event["data"], r#"{"cmd":"start","pump":3}"#);
    assert_eq!(event["message_id"], mid);
    assert_eq!(event["correlation_id"], "corr-9");
    // $.to is read (and dropped) by the SDK; only the application properties remain.
    assert_eq!(
        event["properties"],
        json!({"mode": "eco & quiet", "unit": "°C"})
    );
    // The SDK acknowledges at once (before the handler runs): completed.
    let records = sdk
        .emu
        .wait_c2d("c2d-sdk", |r| r[0].state == C2dState::Completed, WAIT)
        .await
        .unwrap();
    assert_eq!(records[0].delivery_count, 1);

    // Several messages in a row arrive in the order they were sent.
    for n in 0..3 {
        sdk.emu
            .send_c2d(
                "c2d-sdk",
                C2dSend {
                    body: format!("n{n}").into_bytes(),
                    ..C2dSend::default()
                },
            )
            .unwrap();
    }
    for n in 0..3 {
        let event = sdk.peer.event("c2d", |_| true).await;
        assert_eq!(event["data"], format!("n{n}"));
    }
    sdk.emu
        .wait_c2d(
            "c2d-sdk",
            |r| r.iter().all(|m| m.state == C2dState::Completed),
            WAIT,
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_lost_puback_makes_the_device_sdk_see_the_message_twice() {
    // What the gateway must guard against: the SDK hands the same $.mid to the application
    // again after the hub's lock timed out.
    let emu = Emulator::start(EmulatorConfig {
        c2d_lock_timeout: Duration::from_millis(500),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    emu.add_device("c2d-lost", super::key());
    let peer = Peer::start(
        Venv::Device,
        "device_peer.py",
        &[("LEAFGATE_COMPAT_PORT", emu.mqtt_addr().port().to_string())],
    )
    .await;
    let service =
        leafgate_emulator::ServiceClient::new(emu.http_addr(), &emu.service_connection_string())
            .unwrap();
    let mut sdk = Sdk { emu, peer, service };
    listening(&mut sdk, "c2d-lost").await;
    let fault = sdk
        .emu
        .inject_fault(Fault::LoseC2dAcks(Target::All), None)
        .await;
    let mid = sdk
        .emu
        .send_c2d(
            "c2d-lost",
            C2dSend {
                body: b"reboot".to_vec(),
                ..C2dSend::default()
            },
        )
        .unwrap();
    let first = sdk.peer.event("c2d", |_| true).await;
    let second = sdk.peer.event("c2d", |_| true).await;
    assert_eq!(
        (&first["message_id"], &second["message_id"]),
        (&json!(mid), &json!(mid))
    );
    sdk.emu.clear_fault(fault).await;
    let records = sdk
        .emu
        .wait_c2d("c2d-lost", |r| r[0].state == C2dState::Completed, WAIT)
        .await
        .unwrap();
    assert!(records[0].delivery_count >= 2, "{records:?}");
}

/// Not the service SDK's C2D send (AMQP): its REST plumbing on the emulator's stand-in route.
#[tokio::test]
async fn service_sdk_http_plumbing_sends_through_the_rest_stand_in() {
    let mut sdk = Sdk::start(&["c2d-sdk"]).await;
    listening(&mut sdk, "c2d-sdk").await;
    let dir = tempfile::tempdir().unwrap();
    let mut service = service_peer(&sdk.emu, &dir).await;
    let cs = sdk.emu.service_connection_string();
    let reply = service
        .call(
            "send_c2d_rest",
            json!({"connection_string": cs, "device": "c2d-sdk", "body": "stop now",
                   "message_id": "svc-1", "correlation_id": "c-1",
                   "properties": {"reason": "maintenance"}}),
        )
        .await;
    assert_eq!(reply["http_status"], 204, "{reply}");
    let event = sdk.peer.event("c2d", |_| true).await;
    assert_eq!(event["data"], "stop now");
    assert_eq!(event["message_id"], "svc-1");
    assert_eq!(event["correlation_id"], "c-1");
    assert_eq!(event["properties"], json!({"reason": "maintenance"}));
    // The emulator's errors reach it as the hub's error shape.
    let reply = service
        .call(
            "send_c2d_rest",
            json!({"connection_string": cs, "device": "c2d-nobody", "body": "x"}),
        )
        .await;
    assert_eq!(
        (&reply["http_status"], &reply["errorcode"]),
        (&json!(404), &json!("DeviceNotFound")),
        "{reply}"
    );
}

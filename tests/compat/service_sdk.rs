//! The emulator's service API over HTTPS against `azure-iot-hub`'s
//! `IoTHubRegistryManager.invoke_device_method`, with a device made with the device SDK on the
//! other end: Microsoft's code on both sides of the emulator.

use leafgate_emulator::Emulator;
use serde_json::{Value, json};

use super::device_sdk::Sdk;
use super::peer::{Peer, Venv};

pub async fn service_peer(emu: &Emulator, dir: &tempfile::TempDir) -> Peer {
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, emu.ca_pem()).unwrap();
    Peer::start(
        Venv::Service,
        "service_peer.py",
        &[
            (
                "LEAFGATE_COMPAT_PORT",
                emu.https_addr().unwrap().port().to_string(),
            ),
            ("REQUESTS_CA_BUNDLE", ca.display().to_string()),
        ],
    )
    .await
}

fn invoke(connection_string: &str, device: &str, method: &str, payload: Value) -> Value {
    json!({
        "connection_string": connection_string,
        "device": device,
        "method": method,
        "payload": payload,
        "timeout": 10,
    })
}

#[tokio::test]
async fn service_sdk_invokes_a_method_over_https() {
    let mut sdk = Sdk::start(&["svc-1"]).await;
    sdk.connect_device("a", "svc-1").await;
    let dir = tempfile::tempdir().unwrap();
    let mut service = service_peer(&sdk.emu, &dir).await;
    let cs = sdk.emu.service_connection_string();

    let reply = service
        .call(
            "invoke",
            invoke(&cs, "svc-1", "setSpeed", json!({"speed": 12.5})),
        )
        .await;
    assert_eq!(reply["status"], 200, "{reply}");
    assert_eq!(
        reply["payload"],
        json!({"client": "a", "method": "setSpeed", "payload": {"speed": 12.5}})
    );
    // The device's own status comes back unchanged inside an HTTP 200.
    let answer = json!({"status": 404, "payload": {"error": "no such pump"}});
    let reply = service
        .call("invoke", invoke(&cs, "svc-1", "reply", answer))
        .await;
    assert_eq!(
        (&reply["status"], &reply["payload"]),
        (&json!(404), &json!({"error": "no such pump"}))
    );
    // The SDK sends a missing payload as "" (invoke_device_method), which the device receives.
    let reply = service
        .call("invoke", invoke(&cs, "svc-1", "empty", Value::Null))
        .await;
    assert_eq!(reply["payload"]["payload"], "", "{reply}");
    assert_eq!(sdk.emu.device_stats("svc-1").method_requests, 3);
}

#[tokio::test]
async fn service_sdk_sees_the_hubs_errors() {
    let mut sdk = Sdk::start(&["svc-off"]).await;
    let dir = tempfile::tempdir().unwrap();
    let mut service = service_peer(&sdk.emu, &dir).await;
    let cs = sdk.emu.service_connection_string();

    // Registered but offline: HttpOperationError 404 with DeviceNotOnline / 404103.
    let reply = service
        .call("invoke", invoke(&cs, "svc-off", "ping", json!({})))
        .await;
    assert_eq!(
        (&reply["http_status"], &reply["errorcode"]),
        (&json!(404), &json!("DeviceNotOnline")),
        "{reply}"
    );
    let body: Value = serde_json::from_str(reply["body"].as_str().unwrap()).unwrap();
    let inner: Value = serde_json::from_str(body["Message"].as_str().unwrap()).unwrap();
    assert_eq!(inner["errorCode"], 404_103);

    // Unknown device: 404001.
    let reply = service
        .call("invoke", invoke(&cs, "svc-nobody", "ping", json!({})))
        .await;
    assert_eq!(
        (&reply["http_status"], &reply["errorcode"]),
        (&json!(404), &json!("DeviceNotFound"))
    );

    // A policy key the emulator does not know: 401.
    let (head, _) = cs.rsplit_once("SharedAccessKey=").unwrap();
    let wrong = format!("{head}SharedAccessKey=AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=");
    let reply = service
        .call("invoke", invoke(&wrong, "svc-off", "ping", json!({})))
        .await;
    assert_eq!(
        (&reply["http_status"], &reply["errorcode"]),
        (&json!(401), &json!("IoTHubUnauthorized")),
        "{reply}"
    );
    // None of it reached a device.
    assert!(sdk.peer.drain_events("method").await.is_empty());
}

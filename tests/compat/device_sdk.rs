//! The emulator against `azure-iot-device` 2.14's `IoTHubDeviceClient` over MQTT + TLS: what a
//! device built with Microsoft's SDK expects from the hub, each as its own test. Methods are
//! called through the emulator's HTTP service API, as a back-end application would.

use leafgate_emulator::sas::TokenError;
use leafgate_emulator::{
    DisconnectReason, Emulator, MethodCall, RefusalReason, ServiceClient, Subscription,
};
use serde_json::{Value, json};

use super::emulator;
use super::peer::{Peer, Venv, WAIT};

/// An emulator, a device-SDK peer dialing it, and an HTTP service client for calls.
pub struct Sdk {
    pub emu: Emulator,
    pub peer: Peer,
    pub service: ServiceClient,
}

impl Sdk {
    pub async fn start(devices: &[&str]) -> Sdk {
        let emu = emulator(devices).await;
        let peer = Peer::start(
            Venv::Device,
            "device_peer.py",
            &[("LEAFGATE_COMPAT_PORT", emu.mqtt_addr().port().to_string())],
        )
        .await;
        let service =
            ServiceClient::new(emu.http_addr(), &emu.service_connection_string()).unwrap();
        Sdk { emu, peer, service }
    }

    /// Creates SDK client `name` for `connection_string` and connects it; with `methods`, a
    /// method handler is set (the SDK subscribes then). `extra` adds client options.
    pub async fn connect_with(
        &mut self,
        name: &str,
        connection_string: &str,
        methods: bool,
        extra: Value,
    ) -> Result<Value, Value> {
        let mut args = json!({
            "name": name,
            "connection_string": connection_string,
            "ca": self.emu.ca_pem(),
            "methods": methods,
        });
        if let Value::Object(extra) = extra {
            args.as_object_mut().unwrap().extend(extra);
        }
        self.peer.try_call("connect", args).await
    }

    /// Connects client `name` as registered `device` with a method handler, and waits until the
    /// emulator would deliver methods to it.
    pub async fn connect_device(&mut self, name: &str, device: &str) {
        let cs = self.emu.device_connection_string(device).unwrap();
        self.connect_with(name, &cs, true, json!({}))
            .await
            .unwrap_or_else(|e| panic!("{name} could not connect: {e}"));
        self.emu.wait_method_ready(device, WAIT).await.unwrap();
    }

    /// A method call through the HTTP service API: (HTTP status, body).
    pub async fn call(
        &self,
        device: &str,
        method: &str,
        payload: Value,
        timeout_s: u64,
    ) -> (u16, Value) {
        self.service
            .invoke(device, method, payload, timeout_s)
            .await
            .unwrap()
    }
}

/// The connection string of a device that is not registered, or with another key.
fn connection_string_with(emu: &Emulator, device: &str, key: &str) -> String {
    format!(
        "HostName={};DeviceId={device};SharedAccessKey={key}",
        emu.host_name()
    )
}

#[tokio::test]
async fn device_sdk_connects_with_the_right_key() {
    let mut sdk = Sdk::start(&["sdk-ok"]).await;
    let cs = sdk.emu.device_connection_string("sdk-ok").unwrap();
    sdk.connect_with("a", &cs, false, json!({})).await.unwrap();
    let stats = sdk.emu.wait_connected("sdk-ok", WAIT).await.unwrap();
    assert_eq!(stats.connects_accepted, 1);
    // What the SDK dialed, before the port shim: the connection string's host on 8883.
    let dial = sdk.peer.event("dial", |_| true).await;
    assert_eq!(
        (&dial["host"], &dial["port"]),
        (&json!("localhost"), &json!(8883))
    );
    // It insists on TLS 1.2, and its username carries its own api-version.
    let connect = stats.last_connect.unwrap();
    assert_eq!(connect.tls_version.as_deref(), Some("TLSv1_2"));
    let username = connect.username.unwrap();
    assert!(
        username.starts_with("localhost/sdk-ok/?api-version=2019-10-01&DeviceClientType=azure-iot-device-iothub-py%2F2.14.0"),
        "{username}"
    );
    let event = sdk.peer.event("state", |e| e["client"] == "a").await;
    assert_eq!(event["connected"], true);
}

#[tokio::test]
async fn device_sdk_is_refused_with_a_wrong_key() {
    let mut sdk = Sdk::start(&["sdk-key"]).await;
    let wrong = connection_string_with(
        &sdk.emu,
        "sdk-key",
        "AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=",
    );
    let refused = sdk
        .connect_with("a", &wrong, false, json!({}))
        .await
        .unwrap_err();
    // CONNACK 5 reaches the application as the SDK's CredentialError.
    assert_eq!(refused["error"], "CredentialError", "{refused}");
    let stats = sdk.emu.device_stats("sdk-key");
    assert_eq!(
        stats.last_refusal,
        Some(RefusalReason::Token(TokenError::BadSignature))
    );
    assert_eq!((stats.connects_accepted, stats.online), (0, false));
}

#[tokio::test]
async fn device_sdk_is_refused_as_an_unknown_device() {
    let mut sdk = Sdk::start(&[]).await;
    let ghost = connection_string_with(&sdk.emu, "sdk-ghost", super::KEY);
    let refused = sdk
        .connect_with("a", &ghost, false, json!({}))
        .await
        .unwrap_err();
    assert_eq!(refused["error"], "CredentialError", "{refused}");
    let stats = sdk.emu.device_stats("sdk-ghost");
    assert_eq!(stats.last_refusal, Some(RefusalReason::UnknownDevice));
    assert_eq!(stats.connects_accepted, 0);
}

#[tokio::test]
async fn device_sdk_handler_answers_a_method_called_through_the_http_api() {
    let mut sdk = Sdk::start(&["sdk-m"]).await;
    sdk.connect_device("a", "sdk-m").await;
    // The SDK subscribes to every method at QoS 1, once.
    let stats = sdk.emu.device_stats("sdk-m");
    let methods = Subscription {
        filter: "$iothub/methods/POST/#".to_owned(),
        qos: 1,
    };
    assert_eq!(stats.subscribe_requests, vec![vec![methods]]);

    let answer = json!({"speed": 12.5, "list": [1, "two", null], "nested": {"ok": true}});
    let (http, body) = sdk
        .call(
            "sdk-m",
            "reply",
            json!({"status": 201, "payload": answer}),
            10,
        )
        .await;
    assert_eq!(
        (http, body),
        (200, json!({"status": 201, "payload": answer}))
    );
    let request = sdk.peer.event("method", |_| true).await;
    assert_eq!(request["method"], "reply");
    assert_eq!(request["payload"]["payload"], answer);
    // The SDK answers at QoS 1 and its send returns only after the emulator's PUBACK.
    let responded = sdk.peer.event("responded", |_| true).await;
    assert_eq!(responded["rid"], request["rid"]);
    let stats = sdk.emu.device_stats("sdk-m");
    assert_eq!(stats.last_method_response_qos, Some(1));
    assert_eq!(
        (stats.method_requests, stats.method_responses_ignored),
        (1, 0)
    );

    // A null payload reaches the handler as None and comes back as null.
    let (http, body) = sdk.call("sdk-m", "ping", Value::Null, 10).await;
    assert_eq!(http, 200, "{body}");
    assert_eq!(
        body,
        json!({"status": 200, "payload": {"client": "a", "method": "ping", "payload": null}})
    );
}

#[tokio::test]
async fn methods_reach_only_the_addressed_device_of_three_sdk_clients() {
    let devices = ["sdk-1", "sdk-2", "sdk-3"];
    let mut sdk = Sdk::start(&devices).await;
    for (i, device) in devices.iter().enumerate() {
        sdk.connect_device(&format!("c{i}"), device).await;
    }
    for (i, device) in devices.iter().enumerate() {
        let (http, body) = sdk.call(device, "whoami", json!({"n": i}), 10).await;
        assert_eq!(http, 200, "{body}");
        assert_eq!(
            body["payload"],
            json!({"client": format!("c{i}"), "method": "whoami", "payload": {"n": i}})
        );
    }
    let requests = sdk.peer.drain_events("method").await;
    let seen: Vec<(Value, Value)> = requests
        .iter()
        .map(|r| (r["client"].clone(), r["payload"]["n"].clone()))
        .collect();
    assert_eq!(
        seen,
        [
            (json!("c0"), json!(0)),
            (json!("c1"), json!(1)),
            (json!("c2"), json!(2))
        ]
    );
    for device in devices {
        assert_eq!(sdk.emu.device_stats(device).method_requests, 1, "{device}");
    }
}

#[tokio::test]
async fn call_to_a_disconnected_sdk_device_gets_404103() {
    let mut sdk = Sdk::start(&["sdk-off"]).await;
    sdk.connect_device("a", "sdk-off").await;
    sdk.peer.call("disconnect", json!({"name": "a"})).await;
    let stats = sdk
        .emu
        .wait_for("sdk-off", WAIT, |s| !s.online)
        .await
        .unwrap();
    assert_eq!(
        stats.last_disconnect,
        Some(DisconnectReason::ClientDisconnect)
    );
    let response = sdk
        .service
        .call(
            "sdk-off",
            &MethodCall::new("ping", json!({})).response_timeout(10),
        )
        .await
        .unwrap();
    assert_eq!(response.status, 404, "{:?}", response.body);
    assert_eq!(response.error_code(), Some(404_103));
    assert_eq!(response.error_name.as_deref(), Some("DeviceNotOnline"));
    assert!(sdk.peer.drain_events("method").await.is_empty());
}

#[tokio::test]
async fn sdk_handler_that_does_not_answer_gets_504101() {
    let mut sdk = Sdk::start(&["sdk-slow"]).await;
    sdk.connect_device("a", "sdk-slow").await;
    let started = std::time::Instant::now();
    // 5 s is the shortest responseTimeoutInSeconds the hub accepts.
    let response = sdk
        .service
        .call(
            "sdk-slow",
            &MethodCall::new("silent", json!({})).response_timeout(5),
        )
        .await
        .unwrap();
    assert_eq!(response.status, 504, "{:?}", response.body);
    assert_eq!(response.error_code(), Some(504_101));
    assert_eq!(response.error_name.as_deref(), Some("GatewayTimeout"));
    assert!(started.elapsed() >= std::time::Duration::from_secs(5));
    let request = sdk.peer.event("method", |_| true).await;
    assert_eq!(request["method"], "silent");
}

#[tokio::test]
async fn a_second_sdk_client_with_the_same_id_kicks_the_first() {
    let mut sdk = Sdk::start(&["sdk-dup"]).await;
    // Without retry, the kicked client stays down; with it (the default), the two would take the
    // identity from each other forever, which is why leafgate never opens two connections for
    // one device.
    let cs = sdk.emu.device_connection_string("sdk-dup").unwrap();
    sdk.connect_with("first", &cs, true, json!({"retry": false}))
        .await
        .unwrap();
    let first = sdk.emu.wait_method_ready("sdk-dup", WAIT).await.unwrap();
    sdk.connect_with("second", &cs, true, json!({"retry": false}))
        .await
        .unwrap();
    let kicked = sdk
        .peer
        .event("state", |e| {
            e["client"] == "first" && e["connected"] == false
        })
        .await;
    assert_eq!(kicked["connected"], false);
    let second = sdk
        .emu
        .wait_for("sdk-dup", WAIT, |s| {
            s.methods_subscribed && s.connection != first.connection
        })
        .await
        .unwrap();
    assert_eq!(second.last_disconnect, Some(DisconnectReason::TakenOver));
    let (http, body) = sdk.call("sdk-dup", "who", json!({}), 10).await;
    assert_eq!(
        (http, &body["payload"]["client"]),
        (200, &json!("second")),
        "{body}"
    );
}

#[tokio::test]
async fn device_sdk_reconnects_by_itself_after_the_emulator_drops_all_connections() {
    let mut sdk = Sdk::start(&["sdk-re"]).await;
    sdk.connect_device("a", "sdk-re").await;
    let before = sdk.emu.device_stats("sdk-re");
    sdk.peer.event("state", |e| e["connected"] == true).await;
    sdk.emu.drop_all_connections();
    sdk.peer.event("state", |e| e["connected"] == false).await;
    sdk.peer.event("state", |e| e["connected"] == true).await;
    // Reconnected under a new connection, and subscribed again to methods by itself.
    let after = sdk
        .emu
        .wait_for("sdk-re", WAIT, |s| {
            s.methods_subscribed && s.connection != before.connection
        })
        .await
        .unwrap();
    assert_eq!(after.last_disconnect, Some(DisconnectReason::Dropped));
    assert_eq!(after.connects_accepted, 2);
    let (http, body) = sdk.call("sdk-re", "again", json!({}), 10).await;
    assert_eq!(
        (http, &body["payload"]["client"]),
        (200, &json!("a")),
        "{body}"
    );
}

//! The emulator against `azure-iot-device` 2.14 as a device on a locked-down site connects: MQTT
//! over WebSockets on 443 (`websockets=True`), and X.509 client certificates instead of keys
//! (`create_from_x509_certificate`), self-signed (thumbprint) or signed by a verified CA
//! (`iothub-protocol.md` 1.1, 1.6). Each device serves a method called through the emulator's
//! HTTP service API, and the emulator's record of the CONNECT says how it came.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use leafgate_emulator::tls::{self, KeyKind, TestCa};
use leafgate_emulator::{
    DeviceTransport, Emulator, EmulatorConfig, RefusalReason, ServiceClient, X509Auth,
};
use serde_json::{Value, json};

use super::device_sdk::Sdk;
use super::peer::{Peer, Venv, WAIT};

/// The username prefix every `IoTHubDeviceClient` 2.14 CONNECT of device `id` carries, SAS or
/// X.509, over TCP or WebSockets.
fn sdk_username(id: &str) -> String {
    format!(
        "localhost/{id}/?api-version=2019-10-01&DeviceClientType=azure-iot-device-iothub-py%2F2.14.0"
    )
}

/// An emulator with the WebSocket listener and the HTTPS service API, SAS devices `devices`
/// registered with the suite's key, and a device-SDK peer whose shim routes 8883 to the MQTT
/// listener and 443 to the WebSocket one (tests/compat/python/device_peer.py).
async fn start(devices: &[&str]) -> Sdk {
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let emu = Emulator::start(EmulatorConfig {
        https_addr: Some(loopback),
        ws_addr: Some(loopback),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    for id in devices {
        emu.add_device(id, super::key());
    }
    let peer = Peer::start(
        Venv::Device,
        "device_peer.py",
        &[
            ("LEAFGATE_COMPAT_PORT", emu.mqtt_addr().port().to_string()),
            (
                "LEAFGATE_COMPAT_WS_PORT",
                emu.ws_addr().unwrap().port().to_string(),
            ),
        ],
    )
    .await;
    let service = ServiceClient::new(emu.http_addr(), &emu.service_connection_string()).unwrap();
    Sdk { emu, peer, service }
}

/// Valid from yesterday for a year.
fn valid() -> (SystemTime, SystemTime) {
    let now = SystemTime::now();
    (
        now - Duration::from_secs(86_400),
        now + Duration::from_secs(365 * 86_400),
    )
}

/// A device certificate and its key as PEM files, for the SDK's `X509(cert_file, key_file)`.
pub struct CertFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl CertFiles {
    pub fn write(dir: &Path, name: &str, (cert, key): &(String, String)) -> CertFiles {
        let files = CertFiles {
            cert_file: dir.join(format!("{name}.pem")),
            key_file: dir.join(format!("{name}.key.pem")),
        };
        std::fs::write(&files.cert_file, cert).unwrap();
        std::fs::write(&files.key_file, key).unwrap();
        files
    }

    /// The peer's `x509` argument.
    pub fn arg(&self) -> Value {
        json!({"cert_file": self.cert_file, "key_file": self.key_file})
    }
}

/// A self-signed ECDSA device certificate for `cn`: (certificate PEM, key PEM).
pub fn self_signed(cn: &str) -> (String, String) {
    let (from, to) = valid();
    tls::self_signed(cn, KeyKind::EcdsaP256, from, to).unwrap()
}

/// Creates SDK client `name` with `create_from_x509_certificate` as `device` on the emulator's
/// host, with a method handler, and connects it (`extra` adds options, e.g. websockets).
async fn connect_x509(
    sdk: &mut Sdk,
    name: &str,
    device: &str,
    files: &CertFiles,
    extra: Value,
) -> Result<Value, Value> {
    let mut args = json!({
        "name": name,
        "hostname": sdk.emu.host_name(),
        "device_id": device,
        "x509": files.arg(),
        "ca": sdk.emu.ca_pem(),
        "methods": true,
    });
    if let Value::Object(extra) = extra {
        args.as_object_mut().unwrap().extend(extra);
    }
    sdk.peer.try_call("connect", args).await
}

/// Calls method `whoami` on `device` and checks that SDK client `name` answered it.
async fn assert_serves_methods(sdk: &mut Sdk, name: &str, device: &str) {
    let (http, body) = sdk
        .call(device, "whoami", json!({"device": device}), 10)
        .await;
    assert_eq!(http, 200, "{body}");
    assert_eq!(
        body,
        json!({"status": 200, "payload": {
            "client": name, "method": "whoami", "payload": {"device": device}
        }})
    );
    let request = sdk.peer.event("method", |e| e["client"] == name).await;
    assert_eq!(request["payload"], json!({"device": device}));
    assert_eq!(sdk.emu.device_stats(device).method_requests, 1);
}

#[tokio::test]
async fn device_sdk_over_websockets_serves_a_method() {
    let mut sdk = start(&["ws-sdk"]).await;
    let cs = sdk.emu.device_connection_string("ws-sdk").unwrap();
    sdk.connect_with("a", &cs, true, json!({"websockets": true}))
        .await
        .unwrap_or_else(|e| panic!("could not connect over websockets: {e}"));
    let stats = sdk.emu.wait_method_ready("ws-sdk", WAIT).await.unwrap();

    // What the SDK asked paho for before the shim: the hub's host on 443, over WebSockets on the
    // hub's path. That the emulator, which answers only `/$iothub/websocket` with subprotocol
    // `mqtt` (404 and 400 otherwise), accepted the upgrade shows what paho sent.
    let dial = sdk.peer.event("dial", |_| true).await;
    assert_eq!(
        dial,
        json!({"event": "dial", "host": "localhost", "port": 443,
               "transport": "websockets", "ws_path": "/$iothub/websocket"})
    );
    let connect = stats.last_connect.unwrap();
    assert_eq!(connect.transport, DeviceTransport::WebSocket);
    assert_eq!(connect.transport.as_str(), "websocket");
    // The same MQTT CONNECT as over 8883: TLS 1.2, the SDK's username, a SAS password.
    assert_eq!(connect.tls_version.as_deref(), Some("TLSv1_2"));
    let username = connect.username.unwrap();
    assert!(username.starts_with(&sdk_username("ws-sdk")), "{username}");
    assert!(
        matches!(connect.password, Some(Ok(_))),
        "{:?}",
        connect.password
    );
    assert!(!connect.client_cert);
    assert_eq!(stats.connects_accepted, 1);

    assert_serves_methods(&mut sdk, "a", "ws-sdk").await;
}

#[tokio::test]
async fn device_sdk_with_a_self_signed_certificate_connects_by_its_thumbprint() {
    let mut sdk = start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let cert = self_signed("x509-thumb");
    // Registered by its SHA-256 thumbprint as the secondary one, as a rolled-over device is.
    sdk.emu.add_device_x509(
        "x509-thumb",
        X509Auth::Thumbprint {
            primary: "AB".repeat(32),
            secondary: Some(tls::thumbprint_sha256(&cert.0).unwrap()),
        },
    );
    let files = CertFiles::write(dir.path(), "x509-thumb", &cert);
    connect_x509(&mut sdk, "a", "x509-thumb", &files, json!({}))
        .await
        .unwrap_or_else(|e| panic!("could not connect with its certificate: {e}"));
    let stats = sdk.emu.wait_method_ready("x509-thumb", WAIT).await.unwrap();

    let dial = sdk.peer.event("dial", |_| true).await;
    assert_eq!(
        (&dial["host"], &dial["port"]),
        (&json!("localhost"), &json!(8883))
    );
    // The certificate came in the TLS handshake; the CONNECT has the SAS username and no
    // password (iothub-protocol.md 1.6).
    let connect = stats.last_connect.unwrap();
    assert_eq!(connect.transport, DeviceTransport::Mqtt);
    assert!(connect.client_cert);
    assert_eq!(connect.password, None);
    let username = connect.username.unwrap();
    assert!(
        username.starts_with(&sdk_username("x509-thumb")),
        "{username}"
    );
    assert_eq!(stats.connects_accepted, 1);

    assert_serves_methods(&mut sdk, "a", "x509-thumb").await;
}

#[tokio::test]
async fn device_sdk_with_a_ca_signed_certificate_connects() {
    let mut sdk = start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::generate("compat device CA").unwrap();
    sdk.emu.add_verified_ca(ca.ca_pem()).unwrap();
    sdk.emu.add_device_x509("x509-ca", X509Auth::CaSigned);
    let (from, to) = valid();
    let cert = ca.issue("x509-ca", KeyKind::EcdsaP256, from, to).unwrap();
    let files = CertFiles::write(dir.path(), "x509-ca", &cert);
    connect_x509(&mut sdk, "a", "x509-ca", &files, json!({}))
        .await
        .unwrap_or_else(|e| panic!("could not connect with its certificate: {e}"));
    let stats = sdk.emu.wait_method_ready("x509-ca", WAIT).await.unwrap();

    let connect = stats.last_connect.unwrap();
    assert_eq!(connect.transport, DeviceTransport::Mqtt);
    assert!(connect.client_cert);
    assert_eq!(connect.password, None);
    let username = connect.username.unwrap();
    assert!(username.starts_with(&sdk_username("x509-ca")), "{username}");

    assert_serves_methods(&mut sdk, "a", "x509-ca").await;
}

#[tokio::test]
async fn device_sdk_with_a_certificate_over_websockets_serves_a_method() {
    let mut sdk = start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let cert = self_signed("x509-ws");
    sdk.emu.add_device_x509(
        "x509-ws",
        X509Auth::Thumbprint {
            primary: tls::thumbprint_sha1(&cert.0).unwrap(),
            secondary: None,
        },
    );
    let files = CertFiles::write(dir.path(), "x509-ws", &cert);
    connect_x509(
        &mut sdk,
        "a",
        "x509-ws",
        &files,
        json!({"websockets": true}),
    )
    .await
    .unwrap_or_else(|e| panic!("could not connect with its certificate: {e}"));
    let stats = sdk.emu.wait_method_ready("x509-ws", WAIT).await.unwrap();
    let dial = sdk.peer.event("dial", |_| true).await;
    assert_eq!(
        (&dial["port"], &dial["transport"]),
        (&json!(443), &json!("websockets"))
    );
    let connect = stats.last_connect.unwrap();
    assert_eq!(connect.transport, DeviceTransport::WebSocket);
    assert!(connect.client_cert);
    assert_eq!(connect.password, None);

    assert_serves_methods(&mut sdk, "a", "x509-ws").await;
}

#[tokio::test]
async fn device_sdk_with_a_certificate_of_another_thumbprint_is_refused() {
    let mut sdk = start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let registered = self_signed("x509-wrong");
    sdk.emu.add_device_x509(
        "x509-wrong",
        X509Auth::Thumbprint {
            primary: tls::thumbprint_sha1(&registered.0).unwrap(),
            secondary: Some(tls::thumbprint_sha256(&registered.0).unwrap()),
        },
    );
    // Same subject, another key: another thumbprint.
    let stranger = self_signed("x509-wrong");
    let files = CertFiles::write(dir.path(), "stranger", &stranger);
    let refused = connect_x509(&mut sdk, "a", "x509-wrong", &files, json!({"retry": false}))
        .await
        .unwrap_err();
    // CONNACK 5 reaches the application as the SDK's CredentialError.
    assert_eq!(refused["error"], "CredentialError", "{refused}");
    let stats = sdk.emu.device_stats("x509-wrong");
    assert_eq!(stats.last_refusal, Some(RefusalReason::ThumbprintMismatch));
    assert_eq!((stats.connects_accepted, stats.online), (0, false));
    assert!(stats.last_connect.unwrap().client_cert);

    // The registered certificate is accepted by the same emulator, from the same peer.
    let files = CertFiles::write(dir.path(), "registered", &registered);
    connect_x509(&mut sdk, "b", "x509-wrong", &files, json!({}))
        .await
        .unwrap_or_else(|e| panic!("the registered certificate could not connect: {e}"));
    let stats = sdk.emu.wait_method_ready("x509-wrong", WAIT).await.unwrap();
    assert_eq!(stats.connects_accepted, 1);
}

//! The IoT Hub emulator against real clients: rumqttc devices over TLS trusting the emulator's
//! CA, and the hyper `ServiceClient` on the service API. Every test starts its own emulator on
//! `127.0.0.1:0` and waits on the emulator's events, never on sleeps.

// clippy's allow-*-in-tests covers #[test] fns only, not the helpers of an integration test crate.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::BytesMut;
use leafgate::hub::sas::{self, Key};
use leafgate::hub::topics;
use leafgate_emulator::sas::TokenError;
use leafgate_emulator::{
    DeviceStats, DisconnectReason, Emulator, EmulatorConfig, InvokeError, MethodCall,
    RefusalReason, ServiceClient,
};
use rumqttc::mqttbytes::v4::{Connect, Packet};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Incoming, MqttOptions, QoS,
    SubscribeReasonCode, TlsConfiguration, Transport,
};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A device speaking raw MQTT, for the telemetry, twin and C2D tests.
mod raw;

/// Device-to-cloud telemetry: what the emulator records, the read API and endpoint, and the
/// telemetry faults, against raw MQTT clients.
mod telemetry;

/// Device twins: GET, reported patches and their limits, desired pushes, throttling and the twin
/// faults, and the service's twin routes.
mod twin;

/// Cloud-to-device messages: delivery and its bag, completion, lock timeouts, dead letters, the
/// queue limit, lost PUBACKs, and the service's deviceBound route.
mod c2d;

/// Generous bound for things that take milliseconds; only reached when a test fails.
const WAIT: Duration = Duration::from_secs(10);

async fn start() -> Emulator {
    Emulator::start(EmulatorConfig::default()).await.unwrap()
}

fn key(seed: u8) -> Key {
    Key::from_base64(&base64::engine::general_purpose::STANDARD.encode([seed; 32])).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(emu: &Emulator, id: &str, key: &Key, expiry: u64) -> String {
    sas::token(
        &sas::device_resource(emu.host_name(), id),
        key,
        expiry,
        None,
    )
}

/// A rustls client config trusting only the emulator's CA, with the ring provider given
/// explicitly, as the gateway builds it.
fn tls_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

fn options_with_token(emu: &Emulator, id: &str, password: String) -> MqttOptions {
    let mut options = MqttOptions::new(id, "localhost", emu.mqtt_addr().port());
    options.set_credentials(
        format!(
            "{}/{id}/?api-version=2021-04-12&DeviceClientType=leafgate-test%2F1",
            emu.host_name()
        ),
        password,
    );
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        tls_config(emu.ca_pem()),
    )));
    options.set_keep_alive(Duration::from_secs(60));
    options.set_clean_session(false);
    options.set_max_packet_size(200 * 1024, 200 * 1024);
    options
}

pub(crate) fn options(emu: &Emulator, id: &str, key: &Key) -> MqttOptions {
    options_with_token(emu, id, token(emu, id, key, now() + 3600))
}

/// Polls until the first CONNACK or error.
pub(crate) async fn connect_once(
    options: MqttOptions,
) -> Result<(AsyncClient, EventLoop), ConnectionError> {
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let first = tokio::time::timeout(WAIT, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("no CONNACK and no error");
    first.map(|()| (client, eventloop))
}

fn refused_with(result: Result<(AsyncClient, EventLoop), ConnectionError>) -> ConnectReturnCode {
    match result {
        Err(ConnectionError::ConnectionRefused(code)) => code,
        Err(other) => panic!("expected a CONNACK refusal, got {other:?}"),
        Ok(_) => panic!("expected a CONNACK refusal, got accepted"),
    }
}

/// What a test device answers to a method request: zero or more (status, body) responses.
type Handler = Arc<dyn Fn(&str, &[u8]) -> Vec<(u16, Vec<u8>)> + Send + Sync>;

/// A device like the gateway's session: subscribes to methods on every CONNACK and answers
/// requests with `handler`. With `reconnect`, it reconnects after errors (rumqttc does so on the
/// next poll); otherwise it stops at the first error. Each request is also reported on
/// `requests` as (method, rid).
struct TestDevice {
    client: AsyncClient,
    requests: mpsc::UnboundedReceiver<(String, String)>,
    task: JoinHandle<()>,
}

impl Drop for TestDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn spawn_device(
    emu: &Emulator,
    id: &str,
    key: &Key,
    reconnect: bool,
    handler: Handler,
) -> TestDevice {
    let (client, mut eventloop) = AsyncClient::new(options(emu, id, key), 64);
    let (tx, requests) = mpsc::unbounded_channel();
    let responder = client.clone();
    let task = tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                    responder
                        .try_subscribe(topics::METHODS_FILTER, QoS::AtLeastOnce)
                        .unwrap();
                }
                Ok(Event::Incoming(Incoming::Publish(publish))) => {
                    let Ok(request) = topics::parse_request(&publish.topic) else {
                        continue;
                    };
                    let _ = tx.send((request.name.to_owned(), request.rid.to_owned()));
                    for (status, body) in handler(request.name, &publish.payload) {
                        responder
                            .try_publish(
                                topics::response(status, request.rid),
                                QoS::AtMostOnce,
                                false,
                                body,
                            )
                            .unwrap();
                    }
                }
                Ok(_) => {}
                Err(_) if reconnect => {
                    // Backoff so a refused device does not spin; not used for synchronisation.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(_) => return,
            }
        }
    });
    TestDevice {
        client,
        requests,
        task,
    }
}

/// Answers every method with status 200 and `{"device": id, "method": .., "echo": payload}`.
fn echo(id: &str) -> Handler {
    let id = id.to_owned();
    Arc::new(move |method, payload| {
        let echo: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
        let body = json!({"device": id, "method": method, "echo": echo});
        vec![(200, body.to_string().into_bytes())]
    })
}

fn silent() -> Handler {
    Arc::new(|_, _| Vec::new())
}

fn service(emu: &Emulator) -> ServiceClient {
    ServiceClient::new(emu.http_addr(), &emu.service_connection_string()).unwrap()
}

/// The numeric code inside the JSON-in-string `Message`.
fn error_code(body: &Value) -> u64 {
    let message = body["Message"].as_str().expect("Message is a string");
    let inner: Value = serde_json::from_str(message).expect("Message holds JSON");
    inner["errorCode"].as_u64().expect("errorCode is a number")
}

async fn wait(
    emu: &Emulator,
    id: &str,
    predicate: impl FnMut(&DeviceStats) -> bool,
) -> DeviceStats {
    emu.wait_for(id, WAIT, predicate).await.unwrap()
}

#[tokio::test]
async fn device_with_the_right_key_connects_and_subscribes_at_qos_1() {
    let emu = start().await;
    emu.add_device("pump-1", key(1));
    let _device = spawn_device(&emu, "pump-1", &key(1), false, echo("pump-1"));
    let stats = emu.wait_method_ready("pump-1", WAIT).await.unwrap();
    assert_eq!(stats.connects_accepted, 1);
    assert_eq!(stats.connects_refused, 0);
    assert_eq!(stats.subscriptions.len(), 1);
    assert_eq!(stats.subscriptions[0].filter, "$iothub/methods/POST/#");
    assert_eq!(stats.subscriptions[0].qos, 1);
}

#[tokio::test]
async fn wrong_key_unknown_device_expired_token_and_disabled_device_get_connack_5() {
    let emu = start().await;
    emu.add_device("pump-1", key(1));
    emu.add_device("pump-off", key(2));
    assert!(emu.set_device_enabled("pump-off", false));

    let wrong_key = connect_once(options(&emu, "pump-1", &key(9))).await;
    assert_eq!(refused_with(wrong_key), ConnectReturnCode::NotAuthorized);
    let unknown = connect_once(options(&emu, "ghost", &key(1))).await;
    assert_eq!(refused_with(unknown), ConnectReturnCode::NotAuthorized);
    let expired = options_with_token(&emu, "pump-1", token(&emu, "pump-1", &key(1), now() - 10));
    assert_eq!(
        refused_with(connect_once(expired).await),
        ConnectReturnCode::NotAuthorized
    );
    let disabled = connect_once(options(&emu, "pump-off", &key(2))).await;
    assert_eq!(refused_with(disabled), ConnectReturnCode::NotAuthorized);

    let pump = emu.device_stats("pump-1");
    assert_eq!((pump.connects_refused, pump.connects_accepted), (2, 0));
    assert_eq!(
        pump.last_refusal,
        Some(RefusalReason::Token(TokenError::Expired))
    );
    assert_eq!(
        emu.device_stats("ghost").last_refusal,
        Some(RefusalReason::UnknownDevice)
    );
    assert_eq!(
        emu.device_stats("pump-off").last_refusal,
        Some(RefusalReason::DeviceDisabled)
    );
    // Re-enabled, the same credentials work.
    assert!(emu.set_device_enabled("pump-off", true));
    assert!(
        connect_once(options(&emu, "pump-off", &key(2)))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn method_round_trip_through_the_service_api_returns_the_device_status_and_payload() {
    let emu = start().await;
    emu.add_device("pump-1", key(1));
    let handler: Handler = Arc::new(|method, payload| {
        let request: Value = serde_json::from_slice(payload).unwrap();
        let body = json!({"method": method, "speed": request["speed"], "ok": true});
        vec![(201, body.to_string().into_bytes())]
    });
    let _device = spawn_device(&emu, "pump-1", &key(1), false, handler);
    emu.wait_method_ready("pump-1", WAIT).await.unwrap();

    let (status, body) = service(&emu)
        .invoke("pump-1", "setSpeed", json!({"speed": 12.5}), 30)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"status": 201, "payload": {"method": "setSpeed", "speed": 12.5, "ok": true}})
    );

    // The in-process path is the same code and gives the same answer.
    let result = emu
        .invoke("pump-1", MethodCall::new("setSpeed", json!({"speed": 1})))
        .await
        .unwrap();
    assert_eq!(result.status, 201);
    assert_eq!(result.payload["speed"], json!(1));
    let stats = emu.device_stats("pump-1");
    assert_eq!((stats.method_requests, stats.method_responses), (2, 2));
    assert_eq!(stats.method_responses_ignored, 0);
}

#[tokio::test]
async fn empty_and_non_json_device_bodies_map_to_null_and_502() {
    let emu = start().await;
    emu.add_device("d", key(1));
    let handler: Handler = Arc::new(|method, _| match method {
        "empty" => vec![(204, Vec::new())],
        _ => vec![(200, b"not json".to_vec())],
    });
    let _device = spawn_device(&emu, "d", &key(1), false, handler);
    emu.wait_method_ready("d", WAIT).await.unwrap();
    let client = service(&emu);
    let (status, body) = client.invoke("d", "empty", Value::Null, 5).await.unwrap();
    assert_eq!(
        (status, body),
        (200, json!({"status": 204, "payload": null}))
    );
    let (status, body) = client.invoke("d", "garbage", Value::Null, 5).await.unwrap();
    assert_eq!((status, error_code(&body)), (502, 502_001));
}

#[tokio::test]
async fn offline_or_unsubscribed_device_gets_404103_and_unknown_device_404001() {
    let emu = start().await;
    emu.add_device("pump-1", key(1));
    emu.add_device("quiet", key(2));
    let client = service(&emu);

    let response = client
        .call("pump-1", &MethodCall::new("reboot", Value::Null))
        .await
        .unwrap();
    assert_eq!(response.status, 404);
    assert_eq!(response.error_code(), Some(404_103));
    assert_eq!(response.error_name.as_deref(), Some("DeviceNotOnline"));
    let inner: Value = serde_json::from_str(response.body["Message"].as_str().unwrap()).unwrap();
    assert_eq!(inner["info"]["timeout"], "00:00:00");
    assert!(inner["timestampUtc"].as_str().unwrap().ends_with('Z'));
    assert_eq!(response.body["ExceptionMessage"], "");

    // Connected but never subscribed to methods: still not online for methods.
    let (_quiet, mut eventloop) = connect_once(options(&emu, "quiet", &key(2))).await.unwrap();
    let _poller = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    emu.wait_connected("quiet", WAIT).await.unwrap();
    let (status, body) = client
        .invoke("quiet", "reboot", Value::Null, 5)
        .await
        .unwrap();
    assert_eq!((status, error_code(&body)), (404, 404_103));

    let response = client
        .call("nobody", &MethodCall::new("reboot", Value::Null))
        .await
        .unwrap();
    assert_eq!(response.status, 404);
    assert_eq!(response.error_code(), Some(404_001));
    assert_eq!(response.error_name.as_deref(), Some("DeviceNotFound"));

    let err = emu
        .invoke("nobody", MethodCall::new("reboot", Value::Null))
        .await
        .unwrap_err();
    assert_eq!(err, InvokeError::DeviceNotFound);
    assert_eq!((err.http_status(), err.error_code()), (404, 404_001));
}

#[tokio::test]
async fn silent_device_gets_504101_and_its_late_answer_is_counted_and_ignored() {
    let emu = start().await;
    emu.add_device("mute", key(1));
    let mut device = spawn_device(&emu, "mute", &key(1), false, silent());
    emu.wait_method_ready("mute", WAIT).await.unwrap();

    let started = Instant::now();
    let response = service(&emu)
        .call(
            "mute",
            &MethodCall::new("reboot", Value::Null).response_timeout(5),
        )
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert_eq!(response.status, 504);
    assert_eq!(response.error_code(), Some(504_101));
    assert_eq!(response.error_name.as_deref(), Some("GatewayTimeout"));
    assert!(
        elapsed >= Duration::from_secs(5) && elapsed < Duration::from_secs(7),
        "{elapsed:?}"
    );

    let (_, rid) = device.requests.recv().await.unwrap();
    device
        .client
        .publish(topics::response(200, &rid), QoS::AtLeastOnce, false, "{}")
        .await
        .unwrap();
    let stats = wait(&emu, "mute", |s| s.method_responses == 1).await;
    assert_eq!(stats.method_responses_ignored, 1);
}

#[tokio::test]
async fn duplicate_answers_count_but_only_the_first_reaches_the_caller() {
    let emu = start().await;
    emu.add_device("d", key(1));
    let handler: Handler =
        Arc::new(|_, _| vec![(200, br#"{"n":1}"#.to_vec()), (500, br#"{"n":2}"#.to_vec())]);
    let _device = spawn_device(&emu, "d", &key(1), false, handler);
    emu.wait_method_ready("d", WAIT).await.unwrap();
    let result = emu
        .invoke("d", MethodCall::new("m", Value::Null))
        .await
        .unwrap();
    assert_eq!((result.status, result.payload), (200, json!({"n": 1})));
    let stats = wait(&emu, "d", |s| s.method_responses == 2).await;
    assert_eq!(stats.method_responses_ignored, 1);
}

#[tokio::test]
async fn calls_reach_only_the_addressed_device_among_three() {
    let emu = start().await;
    let ids = ["pump-a", "pump-b", "pump-c"];
    let mut devices = Vec::new();
    for (n, id) in ids.iter().enumerate() {
        emu.add_device(id, key(n as u8 + 1));
        devices.push(spawn_device(&emu, id, &key(n as u8 + 1), false, echo(id)));
    }
    for id in ids {
        emu.wait_method_ready(id, WAIT).await.unwrap();
    }
    let client = service(&emu);
    let (status, body) = client
        .invoke("pump-b", "getStatus", json!({"x": 1}), 5)
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_eq!(body["payload"]["device"], "pump-b");
    assert_eq!(body["payload"]["echo"], json!({"x": 1}));
    let (_, body) = client
        .invoke("pump-c", "getStatus", Value::Null, 5)
        .await
        .unwrap();
    assert_eq!(body["payload"]["device"], "pump-c");
    let requests: Vec<u64> = ids
        .iter()
        .map(|id| emu.device_stats(id).method_requests)
        .collect();
    assert_eq!(requests, [0, 1, 1]);
    assert!(devices[0].requests.try_recv().is_err());
}

#[tokio::test]
async fn a_second_connection_with_the_same_client_id_kicks_the_first() {
    let emu = start().await;
    emu.add_device("twin", key(1));
    let first = spawn_device(
        &emu,
        "twin",
        &key(1),
        false,
        Arc::new(|_, _| vec![(200, br#""first""#.to_vec())]),
    );
    let before = emu.wait_method_ready("twin", WAIT).await.unwrap();
    let _second = spawn_device(
        &emu,
        "twin",
        &key(1),
        false,
        Arc::new(|_, _| vec![(200, br#""second""#.to_vec())]),
    );
    let stats = wait(&emu, "twin", |s| {
        s.connects_accepted == 2 && s.disconnects == 1 && s.methods_subscribed
    })
    .await;
    assert_eq!(stats.last_disconnect, Some(DisconnectReason::TakenOver));
    assert!(stats.online);
    assert_ne!(stats.connection, before.connection);
    // The kicked client saw its connection end (its loop stops at the first error).
    let mut first = first;
    tokio::time::timeout(WAIT, &mut first.task)
        .await
        .unwrap()
        .unwrap();
    let result = emu
        .invoke("twin", MethodCall::new("who", Value::Null))
        .await
        .unwrap();
    assert_eq!(result.payload, json!("second"));
}

#[tokio::test]
async fn drop_all_connections_closes_every_device_and_they_reconnect() {
    let emu = start().await;
    let ids = ["r-1", "r-2"];
    let mut devices = Vec::new();
    for id in ids {
        emu.add_device(id, key(7));
        devices.push(spawn_device(&emu, id, &key(7), true, echo(id)));
    }
    for id in ids {
        emu.wait_method_ready(id, WAIT).await.unwrap();
    }
    emu.drop_all_connections();
    for id in ids {
        let stats = wait(&emu, id, |s| {
            s.connects_accepted == 2 && s.online && s.methods_subscribed
        })
        .await;
        assert_eq!(stats.disconnects, 1);
        assert_eq!(stats.last_disconnect, Some(DisconnectReason::Dropped));
    }
    let (status, body) = service(&emu)
        .invoke("r-2", "ping", Value::Null, 5)
        .await
        .unwrap();
    assert_eq!((status, &body["payload"]["device"]), (200, &json!("r-2")));
}

/// Connects and returns the CONNACK's session-present flag with the client and its loop.
async fn connect_session(options: MqttOptions) -> (bool, AsyncClient, EventLoop) {
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let present = tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Incoming(Incoming::ConnAck(ack)) = eventloop.poll().await.unwrap() {
                return ack.session_present;
            }
        }
    })
    .await
    .expect("no CONNACK");
    (present, client, eventloop)
}

/// Issue 3: azure-iot-device sends CleanSession 0 and never subscribes again after a reconnect;
/// it relies on the hub keeping its subscriptions, so the emulator must too.
#[tokio::test]
async fn clean_session_0_keeps_method_subscriptions_across_reconnects() {
    let emu = start().await;
    emu.add_device("keep", key(5));
    let (present, client, mut eventloop) = connect_session(options(&emu, "keep", &key(5))).await;
    assert!(!present, "a first connection has no session");
    client
        .subscribe(topics::METHODS_FILTER, QoS::AtLeastOnce)
        .await
        .unwrap();
    let _poller = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let first = emu.wait_method_ready("keep", WAIT).await.unwrap();
    emu.drop_all_connections();
    wait(&emu, "keep", |s| !s.online).await;

    // Reconnect without subscribing: session present, and methods are delivered.
    let (present, client, mut eventloop) = connect_session(options(&emu, "keep", &key(5))).await;
    assert!(present);
    let stats = emu.wait_method_ready("keep", WAIT).await.unwrap();
    assert_ne!(stats.connection, first.connection);
    assert_eq!(stats.subscriptions, first.subscriptions);
    assert!(stats.subscribe_requests.is_empty());
    let responder = client.clone();
    let _answer = tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(Incoming::Publish(publish)) = event {
                let request = topics::parse_request(&publish.topic).unwrap();
                responder
                    .try_publish(
                        topics::response(200, request.rid),
                        QoS::AtMostOnce,
                        false,
                        "1",
                    )
                    .unwrap();
            }
        }
    });
    let (status, body) = service(&emu)
        .invoke("keep", "ping", Value::Null, 5)
        .await
        .unwrap();
    assert_eq!((status, body), (200, json!({"status": 200, "payload": 1})));

    // CleanSession 1 discards the session: no subscriptions, not even for the next
    // CleanSession 0 connection.
    let mut clean = options(&emu, "keep", &key(5));
    clean.set_clean_session(true);
    let (present, _clean, mut eventloop) = connect_session(clean).await;
    assert!(!present);
    let _poller = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let stats = wait(&emu, "keep", |s| s.online && s.connects_accepted == 3).await;
    assert!(stats.subscriptions.is_empty() && !stats.methods_subscribed);
    let (present, _again, _loop) = connect_session(options(&emu, "keep", &key(5))).await;
    assert!(!present);
}

/// Issue 3: the Azure service SDKs only build `https://{HostName}` URLs, so the emulator can
/// serve the same API over TLS with its own CA.
#[tokio::test]
async fn https_listener_serves_the_service_api_under_the_emulators_ca() {
    assert_eq!(start().await.https_addr(), None, "off by default");
    let emu = Emulator::start(EmulatorConfig {
        https_addr: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    emu.add_device("d", key(1));
    let tcp = TcpStream::connect(emu.https_addr().unwrap()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(tls_config(emu.ca_pem()))
        .connect(name, tcp)
        .await
        .unwrap();
    let body = r#"{"methodName":"reboot","responseTimeoutInSeconds":5}"#;
    let request = format!(
        "POST /twins/d/methods?api-version=2021-04-12 HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        service(&emu).token(),
        body.len()
    );
    tls.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    // The server closes after answering; a missing close_notify is no concern here.
    let _ = tls.read_to_end(&mut response).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 404"), "{response}");
    assert!(
        response.contains("iothub-errorcode: DeviceNotOnline"),
        "{response}"
    );
}

#[tokio::test]
async fn bad_service_credentials_get_401() {
    let emu = start().await;
    emu.add_device("d", key(1));
    let good = emu.service_connection_string();
    let wrong_key = good.replace(
        good.rsplit_once("SharedAccessKey=").unwrap().1,
        &base64::engine::general_purpose::STANDARD.encode([9u8; 32]),
    );
    let wrong_policy = good.replace(
        "SharedAccessKeyName=service",
        "SharedAccessKeyName=iothubowner",
    );
    for cs in [wrong_key, wrong_policy] {
        let client = ServiceClient::new(emu.http_addr(), &cs).unwrap();
        let response = client
            .call("d", &MethodCall::new("m", Value::Null))
            .await
            .unwrap();
        assert_eq!(response.status, 401);
        assert_eq!(response.error_code(), Some(401_003));
        assert_eq!(response.error_name.as_deref(), Some("IoTHubUnauthorized"));
    }
    let client = service(&emu);
    let path = "/twins/d/methods?api-version=2021-04-12";
    let body = r#"{"methodName":"m"}"#;
    let missing = client.post_raw(path, None, body).await.unwrap();
    assert_eq!((missing.status, missing.error_code()), (401, Some(401_003)));
    // A device-scoped token is not a service token.
    let device_token = token(&emu, "d", &key(1), now() + 60);
    let scoped = client
        .post_raw(path, Some(&device_token), body)
        .await
        .unwrap();
    assert_eq!(scoped.status, 401);
}

#[tokio::test]
async fn out_of_range_timeouts_and_malformed_bodies_get_400004() {
    let emu = start().await;
    emu.add_device("d", key(1));
    let client = service(&emu);
    for seconds in [0, 4, 301] {
        let (status, body) = client.invoke("d", "m", Value::Null, seconds).await.unwrap();
        assert_eq!((status, error_code(&body)), (400, 400_004), "{seconds}");
        let message: Value = serde_json::from_str(body["Message"].as_str().unwrap()).unwrap();
        assert_eq!(
            message["message"],
            "responseTimeoutInSeconds must be within [5; 300]."
        );
    }
    let call = MethodCall::new("m", Value::Null).connect_timeout(301);
    assert_eq!(
        client.call("d", &call).await.unwrap().error_code(),
        Some(400_004)
    );

    let path = "/twins/d/methods?api-version=2021-04-12";
    let auth = client.token();
    for body in [
        "",
        "{",
        "[]",
        r#"{"payload":1}"#,
        r#"{"methodName":"m","responseTimeoutInSeconds":"30"}"#,
        r#"{"methodName":"m","responseTimeoutInSeconds":-5}"#,
        r#"{"methodName":"a#b"}"#,
    ] {
        let response = client.post_raw(path, Some(&auth), body).await.unwrap();
        assert_eq!(
            (response.status, response.error_code()),
            (400, Some(400_004)),
            "{body}"
        );
        assert_eq!(response.error_name.as_deref(), Some("ArgumentInvalid"));
    }
    let no_version = client
        .post_raw("/twins/d/methods", Some(&auth), r#"{"methodName":"m"}"#)
        .await
        .unwrap();
    assert_eq!(no_version.status, 400);
    let unknown = client
        .post_raw("/devices/d", Some(&auth), "{}")
        .await
        .unwrap();
    assert_eq!(unknown.status, 404);
    let too_big = format!(
        r#"{{"methodName":"m","payload":"{}"}}"#,
        "x".repeat(200 * 1024)
    );
    let response = client.post_raw(path, Some(&auth), too_big).await.unwrap();
    assert_eq!(
        (response.status, response.error_code()),
        (413, Some(413_001))
    );
}

#[tokio::test]
async fn connect_timeout_waits_for_the_device_to_come_online() {
    let emu = start().await;
    emu.add_device("late", key(3));
    let client = service(&emu);
    let call = MethodCall::new("hello", json!(1))
        .response_timeout(5)
        .connect_timeout(10);
    let pending = tokio::spawn(async move { client.call("late", &call).await });
    // The call is waiting; now the device shows up and subscribes.
    let _device = spawn_device(&emu, "late", &key(3), false, echo("late"));
    let response = tokio::time::timeout(WAIT, pending)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.body["payload"]["device"], "late");
}

#[tokio::test]
async fn subscriptions_are_granted_at_qos_1_at_most_and_capped_at_five() {
    let emu = start().await;
    emu.add_device("subs", key(4));
    let (client, mut eventloop) = connect_once(options(&emu, "subs", &key(4))).await.unwrap();
    let requests = [
        ("$iothub/methods/POST/#", QoS::ExactlyOnce),
        ("$iothub/twin/res/#", QoS::AtMostOnce),
        ("$iothub/methods/POST/a/#", QoS::AtLeastOnce),
        ("$iothub/methods/POST/b/#", QoS::AtLeastOnce),
        // The same filter again replaces its QoS and takes no new slot.
        ("$iothub/methods/POST/#", QoS::AtMostOnce),
        ("devices/subs/messages/devicebound/#", QoS::AtLeastOnce),
        ("$iothub/methods/POST/c/#", QoS::AtLeastOnce),
    ];
    for (filter, qos) in requests {
        client.subscribe(filter, qos).await.unwrap();
    }
    let mut granted = Vec::new();
    while granted.len() < requests.len() {
        if let Event::Incoming(Incoming::SubAck(ack)) = eventloop.poll().await.unwrap() {
            granted.extend(ack.return_codes);
        }
    }
    let ok = |qos| SubscribeReasonCode::Success(qos);
    assert_eq!(
        granted,
        [
            ok(QoS::AtLeastOnce),
            ok(QoS::AtMostOnce),
            ok(QoS::AtLeastOnce),
            ok(QoS::AtLeastOnce),
            ok(QoS::AtMostOnce),
            ok(QoS::AtLeastOnce),
            SubscribeReasonCode::Failure,
        ]
    );
    let stats = emu.device_stats("subs");
    assert_eq!(stats.subscriptions.len(), 5);
    assert!(stats.methods_subscribed);

    // A filter outside the hub's topics closes the connection.
    client.subscribe("#", QoS::AtMostOnce).await.unwrap();
    let _poller = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let stats = wait(&emu, "subs", |s| s.disconnects == 1).await;
    assert!(matches!(
        stats.last_disconnect,
        Some(DisconnectReason::ProtocolViolation(ref why)) if why.contains("unsupported topic filter")
    ));
}

#[tokio::test]
async fn a_per_method_subscription_receives_only_its_method() {
    let emu = start().await;
    emu.add_device("picky", key(4));
    let (client, mut eventloop) = connect_once(options(&emu, "picky", &key(4))).await.unwrap();
    client
        .subscribe("$iothub/methods/POST/reboot/#", QoS::AtMostOnce)
        .await
        .unwrap();
    let responder = client.clone();
    let _poller = tokio::spawn(async move {
        while let Ok(event) = eventloop.poll().await {
            if let Event::Incoming(Incoming::Publish(publish)) = event {
                let request = topics::parse_request(&publish.topic).unwrap();
                responder
                    .try_publish(
                        topics::response(200, request.rid),
                        QoS::AtMostOnce,
                        false,
                        "true",
                    )
                    .unwrap();
            }
        }
    });
    wait(&emu, "picky", |s| s.subscriptions.len() == 1).await;
    let result = emu
        .invoke("picky", MethodCall::new("reboot", Value::Null))
        .await
        .unwrap();
    assert_eq!(result.payload, json!(true));
    let err = emu
        .invoke("picky", MethodCall::new("other", Value::Null))
        .await
        .unwrap_err();
    assert_eq!(err, InvokeError::DeviceNotOnline);
}

#[tokio::test]
async fn qos_2_publish_and_unknown_topics_close_the_connection() {
    let emu = start().await;
    emu.add_device("bad", key(4));

    let (client, mut eventloop) = connect_once(options(&emu, "bad", &key(4))).await.unwrap();
    client
        .publish(
            "$iothub/methods/res/200/?$rid=1",
            QoS::ExactlyOnce,
            false,
            "{}",
        )
        .await
        .unwrap();
    let err = tokio::time::timeout(WAIT, async {
        loop {
            if let Err(e) = eventloop.poll().await {
                return e;
            }
        }
    })
    .await
    .unwrap();
    assert!(
        !matches!(err, ConnectionError::ConnectionRefused(_)),
        "{err:?}"
    );
    let stats = wait(&emu, "bad", |s| s.disconnects == 1).await;
    assert_eq!(
        stats.last_disconnect,
        Some(DisconnectReason::ProtocolViolation("QoS 2 publish".into()))
    );

    for (n, topic) in ["some/random/topic", "devices/other/messages/events/"]
        .into_iter()
        .enumerate()
    {
        let (client, mut eventloop) = connect_once(options(&emu, "bad", &key(4))).await.unwrap();
        client
            .publish(topic, QoS::AtLeastOnce, false, "x")
            .await
            .unwrap();
        let _poller = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
        let stats = wait(&emu, "bad", |s| s.disconnects == n as u64 + 2).await;
        assert!(
            matches!(
                stats.last_disconnect,
                Some(DisconnectReason::ProtocolViolation(_))
            ),
            "{topic}: {:?}",
            stats.last_disconnect
        );
    }

    // A twin topic the hub does not serve closes the connection too (twin requests themselves
    // are tested in emulator/twin.rs).
    let (client, mut eventloop) = connect_once(options(&emu, "bad", &key(4))).await.unwrap();
    client
        .publish("$iothub/twin/GET/?rid=1", QoS::AtMostOnce, false, "")
        .await
        .unwrap();
    let _poller = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let stats = wait(&emu, "bad", |s| s.disconnects == 4).await;
    assert!(
        matches!(
            stats.last_disconnect,
            Some(DisconnectReason::ProtocolViolation(ref why)) if why.contains("malformed twin topic")
        ),
        "{:?}",
        stats.last_disconnect
    );
}

/// A TLS connection to the MQTT port, for speaking raw bytes.
async fn raw_tls(emu: &Emulator) -> tokio_rustls::client::TlsStream<TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(tls_config(emu.ca_pem()));
    let tcp = TcpStream::connect(emu.mqtt_addr()).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

async fn write_packet(stream: &mut (impl AsyncWriteExt + Unpin), packet: Packet) {
    let mut buf = BytesMut::new();
    packet.write(&mut buf, 1 << 20).unwrap();
    stream.write_all(&buf).await.unwrap();
    stream.flush().await.unwrap();
}

async fn send_connect(
    stream: &mut (impl AsyncWriteExt + Unpin),
    emu: &Emulator,
    id: &str,
    key: &Key,
    keep_alive: u16,
) {
    let mut connect = Connect::new(id);
    connect.keep_alive = keep_alive;
    connect.clean_session = false;
    connect.set_login(
        format!("{}/{id}/?api-version=2021-04-12", emu.host_name()),
        token(emu, id, key, now() + 3600),
    );
    write_packet(stream, Packet::Connect(connect)).await;
}

/// Reads one packet; `None` once the server closed the connection.
async fn read_packet(stream: &mut (impl AsyncReadExt + Unpin)) -> Option<Packet> {
    let mut buf = BytesMut::new();
    tokio::time::timeout(WAIT, async {
        loop {
            match Packet::read(&mut buf, 1 << 20) {
                Ok(packet) => return Some(packet),
                Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => {}
                Err(e) => panic!("server sent a malformed packet: {e}"),
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("server neither answered nor closed")
}

fn connack(code: u8) -> Packet {
    let code = match code {
        0 => ConnectReturnCode::Success,
        1 => ConnectReturnCode::RefusedProtocolVersion,
        _ => ConnectReturnCode::NotAuthorized,
    };
    Packet::ConnAck(rumqttc::mqttbytes::v4::ConnAck::new(code, false))
}

#[tokio::test]
async fn keep_alive_is_enforced_at_one_and_a_half_times() {
    let emu = start().await;
    emu.add_device("idle", key(6));
    let mut stream = raw_tls(&emu).await;
    send_connect(&mut stream, &emu, "idle", &key(6), 1).await;
    assert_eq!(read_packet(&mut stream).await, Some(connack(0)));
    let started = Instant::now();
    assert_eq!(read_packet(&mut stream).await, None);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1400) && elapsed < Duration::from_secs(3),
        "{elapsed:?}"
    );
    let stats = wait(&emu, "idle", |s| s.disconnects == 1).await;
    assert_eq!(
        stats.last_disconnect,
        Some(DisconnectReason::KeepAliveTimeout)
    );
}

#[tokio::test]
async fn the_device_is_disconnected_when_its_token_expires() {
    let emu = start().await;
    emu.add_device("short", key(8));
    let expiry = now() + 2;
    let options = options_with_token(&emu, "short", token(&emu, "short", &key(8), expiry));
    let (_client, mut eventloop) = connect_once(options).await.unwrap();
    let _poller = tokio::spawn(async move { while eventloop.poll().await.is_ok() {} });
    let stats = emu
        .wait_for("short", Duration::from_secs(5), |s| s.disconnects == 1)
        .await
        .unwrap();
    assert_eq!(stats.last_disconnect, Some(DisconnectReason::TokenExpired));
    assert!(now() >= expiry);
}

#[tokio::test]
async fn telemetry_is_acknowledged_and_counted() {
    let emu = start().await;
    emu.add_device("t", key(1));
    let mut events = emu.events();
    let (client, mut eventloop) = connect_once(options(&emu, "t", &key(1))).await.unwrap();
    client
        .publish(
            "devices/t/messages/events/%24.ct=application%2Fjson",
            QoS::AtLeastOnce,
            false,
            r#"{"temp":21}"#,
        )
        .await
        .unwrap();
    loop {
        if let Event::Incoming(Incoming::PubAck(_)) = eventloop.poll().await.unwrap() {
            break;
        }
    }
    let stats = emu.device_stats("t");
    assert_eq!((stats.telemetry_messages, stats.telemetry_bytes), (1, 11));
    loop {
        if let leafgate_emulator::Event::Telemetry {
            device, payload, ..
        } = events.recv().await.unwrap()
        {
            assert_eq!(
                (device.as_str(), &payload[..]),
                ("t", &br#"{"temp":21}"#[..])
            );
            break;
        }
    }
}

#[tokio::test]
async fn garbage_on_either_port_closes_only_that_connection() {
    let emu = start().await;
    emu.add_device("ok", key(1));
    let _device = spawn_device(&emu, "ok", &key(1), false, echo("ok"));
    emu.wait_method_ready("ok", WAIT).await.unwrap();

    // Plain TCP garbage where TLS is expected.
    let mut tcp = TcpStream::connect(emu.mqtt_addr()).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\n\r\n\x00\xff\xfe")
        .await
        .unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(WAIT, tcp.read_to_end(&mut sink))
        .await
        .unwrap();

    // TLS, then bytes that are not MQTT.
    let mut tls = raw_tls(&emu).await;
    tls.write_all(&[0xff; 64]).await.unwrap();
    tls.flush().await.unwrap();
    assert_eq!(read_packet(&mut tls).await, None);

    // TLS, then a PUBLISH header announcing 200 MB: refused before buffering.
    let mut tls = raw_tls(&emu).await;
    tls.write_all(&[0x30, 0x80, 0x80, 0x80, 0x64])
        .await
        .unwrap();
    tls.flush().await.unwrap();
    assert_eq!(read_packet(&mut tls).await, None);

    // TLS, a valid CONNECT, then a malformed SUBSCRIBE (QoS 3).
    emu.add_device("rude", key(2));
    let mut tls = raw_tls(&emu).await;
    send_connect(&mut tls, &emu, "rude", &key(2), 60).await;
    assert_eq!(read_packet(&mut tls).await, Some(connack(0)));
    tls.write_all(&[0x82, 0x06, 0x00, 0x01, 0x00, 0x01, b'#', 0x03])
        .await
        .unwrap();
    tls.flush().await.unwrap();
    assert_eq!(read_packet(&mut tls).await, None);
    let rude = wait(&emu, "rude", |s| s.disconnects == 1).await;
    assert!(matches!(
        rude.last_disconnect,
        Some(DisconnectReason::ProtocolViolation(_))
    ));

    // MQTT 5 CONNECT: CONNACK 1 and close.
    let mut tls = raw_tls(&emu).await;
    let mut connect = Connect::new("ok");
    connect.protocol = rumqttc::mqttbytes::Protocol::V5;
    write_packet(&mut tls, Packet::Connect(connect)).await;
    let answer = read_packet(&mut tls).await;
    assert!(
        matches!(answer, Some(Packet::ConnAck(ref ack)) if ack.code != ConnectReturnCode::Success),
        "{answer:?}"
    );

    // Garbage HTTP on the service port gets a 4xx from hyper, not a crash.
    let mut http = TcpStream::connect(emu.http_addr()).await.unwrap();
    http.write_all(b"\x16\x03\x01garbage\r\n\r\n")
        .await
        .unwrap();
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(WAIT, http.read_to_end(&mut reply))
        .await
        .unwrap();
    assert!(
        reply.starts_with(b"HTTP/1.1 4"),
        "{:?}",
        String::from_utf8_lossy(&reply)
    );

    // The well-behaved device never noticed.
    let (status, body) = service(&emu)
        .invoke("ok", "ping", Value::Null, 5)
        .await
        .unwrap();
    assert_eq!((status, &body["payload"]["device"]), (200, &json!("ok")));
    assert_eq!(emu.device_stats("ok").disconnects, 0);
}

#[tokio::test]
async fn removing_a_device_disconnects_it_and_shutdown_fails_calls_with_503() {
    let emu = start().await;
    emu.add_device("gone", key(1));
    emu.add_device("mute", key(2));
    let _gone = spawn_device(&emu, "gone", &key(1), false, echo("gone"));
    let _mute = spawn_device(&emu, "mute", &key(2), false, silent());
    emu.wait_method_ready("gone", WAIT).await.unwrap();
    emu.wait_method_ready("mute", WAIT).await.unwrap();

    assert!(emu.remove_device("gone"));
    let stats = wait(&emu, "gone", |s| s.disconnects == 1).await;
    assert_eq!(stats.last_disconnect, Some(DisconnectReason::DeviceRemoved));
    assert!(!stats.registered);
    let (status, body) = service(&emu)
        .invoke("gone", "m", Value::Null, 5)
        .await
        .unwrap();
    assert_eq!((status, error_code(&body)), (404, 404_001));

    let client = service(&emu);
    let mut mute = emu.watch_device("mute");
    let in_flight = tokio::spawn(async move { client.invoke("mute", "m", Value::Null, 300).await });
    mute.wait_for(|s| s.method_requests == 1).await.unwrap();
    emu.shutdown().await;
    let (status, body) = tokio::time::timeout(WAIT, in_flight)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!((status, error_code(&body)), (503, 503_001));
    mute.wait_for(|s| s.disconnects == 1).await.unwrap();
    assert_eq!(
        mute.borrow().last_disconnect,
        Some(DisconnectReason::Shutdown)
    );
}

/// Scale smoke test. The clients share the process, so give them two workers (as the gateway
/// has) and let a client whose handshake timed out on a loaded machine simply reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_devices_connect_and_answer_concurrently() {
    let emu = start().await;
    let ids: Vec<String> = (0..200).map(|n| format!("leaf-{n:03}")).collect();
    let mut devices = Vec::new();
    for id in &ids {
        emu.add_device(id, key(3));
        devices.push(spawn_device(&emu, id, &key(3), true, echo(id)));
    }
    for id in &ids {
        emu.wait_method_ready(id, WAIT).await.unwrap();
    }
    let client = service(&emu);
    let calls = ids.iter().map(|id| {
        let client = client.clone();
        let id = id.clone();
        tokio::spawn(async move {
            let (status, body) = client.invoke(&id, "ping", Value::Null, 30).await.unwrap();
            assert_eq!(status, 200);
            assert_eq!(body["payload"]["device"], json!(id));
        })
    });
    for call in calls.collect::<Vec<_>>() {
        call.await.unwrap();
    }
    assert!(
        ids.iter()
            .all(|id| emu.device_stats(id).method_requests == 1)
    );
}

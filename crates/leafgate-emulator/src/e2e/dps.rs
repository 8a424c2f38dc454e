//! DPS with rumqttc devices: group-derived and individual keys and X.509 register, are
//! assigned and then connect to the hub DPS named; 429 beyond the rate; refusals; reassignment
//! to a second emulator. The client honours `retry-after` as the SDKs do; that wait is the
//! protocol's, not a synchronisation.

use std::time::{Duration, SystemTime};

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Incoming, MqttOptions, QoS,
    TlsConfiguration, Transport,
};
use serde_json::{Value, json};

use super::{
    Dial, Identity, WAIT, client_tls, connect_once, hub_options, key, refused_with, token,
};
use crate::clock::unix_now;
use crate::sas::{self, Key};
use crate::tls::{self as tls_certs, KeyKind, thumbprint_sha256};
use crate::{Attestation, DpsConfig, DpsRequestKind, Emulator, EmulatorConfig, RefusalReason};

const SCOPE: &str = "0ne00TEST01";

async fn start_with_dps(retry_after_s: u32, registrations_per_s: Option<u32>) -> Emulator {
    Emulator::start(EmulatorConfig {
        dps: Some(DpsConfig {
            id_scope: SCOPE.to_owned(),
            retry_after_s,
            registrations_per_s,
            ..DpsConfig::default()
        }),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap()
}

/// A registration's SAS token for DPS, as the Python SDK signs it (no `skn`).
fn dps_token(id: &str, key: &Key, skn: Option<&str>) -> String {
    sas::token(
        &format!("{SCOPE}/registrations/{id}"),
        key,
        unix_now() + 3600,
        skn,
    )
}

/// A DPS answer: status, `retry-after`, body.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    body: Value,
}

/// A device talking to DPS.
struct DpsDevice {
    client: AsyncClient,
    eventloop: EventLoop,
    id: String,
    next_rid: u32,
}

impl DpsDevice {
    async fn connect(
        emu: &Emulator,
        id: &str,
        password: Option<String>,
        identity: Option<&Identity>,
    ) -> Result<DpsDevice, ConnectionError> {
        let mut options = MqttOptions::new(id, "localhost", emu.dps_addr().unwrap().port());
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            client_tls(emu.ca_pem(), identity),
        )));
        options.set_credentials(
            format!(
                "{}/registrations/{id}/api-version=2019-03-31&ClientVersion=leafgate-test%2F1",
                emu.dps_id_scope().unwrap()
            ),
            password.unwrap_or_default(),
        );
        options.set_clean_session(true);
        options.set_keep_alive(Duration::from_secs(60));
        let (client, eventloop) = connect_once(options).await?;
        client
            .subscribe("$dps/registrations/res/#", QoS::AtLeastOnce)
            .await
            .unwrap();
        Ok(DpsDevice {
            client,
            eventloop,
            id: id.to_owned(),
            next_rid: 1,
        })
    }

    /// Publishes on `topic(rid)` and returns the answer to that rid.
    async fn request(&mut self, topic: impl FnOnce(u32) -> String, body: Vec<u8>) -> Answer {
        let rid = self.next_rid;
        self.next_rid += 1;
        self.client
            .publish(topic(rid), QoS::AtLeastOnce, false, body)
            .await
            .unwrap();
        let wanted = format!("?$rid={rid}");
        tokio::time::timeout(WAIT, async {
            loop {
                let event = self.eventloop.poll().await.unwrap();
                let Event::Incoming(Incoming::Publish(publish)) = event else {
                    continue;
                };
                let Some(rest) = publish.topic.strip_prefix("$dps/registrations/res/") else {
                    continue;
                };
                let (status, query) = rest.split_once('/').unwrap();
                if !query.starts_with(&wanted) {
                    continue;
                }
                let retry_after = query
                    .split('&')
                    .find_map(|pair| pair.strip_prefix("retry-after="))
                    .map(|s| s.parse().unwrap());
                return Answer {
                    status: status.parse().unwrap(),
                    retry_after,
                    body: serde_json::from_slice(&publish.payload).unwrap(),
                };
            }
        })
        .await
        .expect("no answer from DPS")
    }

    async fn register_as(&mut self, registration_id: &str) -> Answer {
        let body = json!({"registrationId": registration_id}).to_string();
        self.request(
            |rid| format!("$dps/registrations/PUT/iotdps-register/?$rid={rid}"),
            body.into_bytes(),
        )
        .await
    }

    async fn poll(&mut self, operation_id: &str) -> Answer {
        self.request(
            |rid| {
                format!(
                    "$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={operation_id}"
                )
            },
            Vec::new(),
        )
        .await
    }

    /// Registers and polls, honouring every `retry-after`, until DPS answers 200; returns the
    /// `registrationState`.
    async fn provision(&mut self) -> Value {
        let id = self.id.clone();
        let mut answer = self.register_as(&id).await;
        assert_eq!(answer.status, 202, "{answer:?}");
        let operation_id = answer.body["operationId"].as_str().unwrap().to_owned();
        while answer.status != 200 {
            assert!(
                matches!(answer.status, 202 | 429),
                "unexpected answer {answer:?}"
            );
            let wait = answer.retry_after.unwrap();
            tokio::time::sleep(Duration::from_secs(wait)).await;
            answer = self.poll(&operation_id).await;
        }
        assert_eq!(answer.body["status"], "assigned", "{answer:?}");
        answer.body["registrationState"].clone()
    }
}

/// Connects `id` to `hub` with a SAS token signed with `key`; CONNACK 0 expected.
async fn connect_to_hub(hub: &Emulator, id: &str, key: &Key) {
    let options = hub_options(hub, id, Some(token(hub, id, key)), None, Dial::Tls);
    connect_once(options)
        .await
        .unwrap_or_else(|e| panic!("{id} on {}: {e}", hub.host_name()));
    hub.wait_connected(id, WAIT).await.unwrap();
}

fn kinds_and_statuses(emu: &Emulator, id: &str) -> Vec<(DpsRequestKind, u16)> {
    emu.dps_requests()
        .iter()
        .filter(|r| r.registration_id == id)
        .map(|r| (r.kind, r.status))
        .collect()
}

#[tokio::test]
async fn a_group_derived_key_registers_and_connects_to_the_assigned_hub() {
    let emu = start_with_dps(1, None).await;
    let group_key = key(7);
    emu.dps_add_group("fleet", group_key.clone(), emu.hub_link());
    let device_key = sas::derive_device_key(&group_key, "sensor-1");
    let mut device = DpsDevice::connect(
        &emu,
        "sensor-1",
        Some(dps_token("sensor-1", &device_key, None)),
        None,
    )
    .await
    .unwrap();
    let accepted = device.register_as("sensor-1").await;
    assert_eq!((accepted.status, accepted.retry_after), (202, Some(1)));
    assert_eq!(accepted.body["status"], "assigning");
    let operation_id = accepted.body["operationId"].as_str().unwrap().to_owned();
    // Polled at once, before retry-after has passed: still assigning.
    let early = device.poll(&operation_id).await;
    assert_eq!((early.status, early.retry_after), (202, Some(1)));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let done = device.poll(&operation_id).await;
    assert_eq!(done.status, 200, "{done:?}");
    assert_eq!(done.body["operationId"], operation_id.as_str());
    assert_eq!(done.body["status"], "assigned");
    let state = &done.body["registrationState"];
    assert_eq!(state["registrationId"], "sensor-1");
    assert_eq!(state["deviceId"], "sensor-1");
    assert_eq!(state["assignedHub"], emu.host_name());
    assert_eq!(state["status"], "assigned");
    assert_eq!(state["substatus"], "initialAssignment");
    for field in ["createdDateTimeUtc", "lastUpdatedDateTimeUtc", "etag"] {
        assert!(state[field].is_string(), "{field}: {state}");
    }

    connect_to_hub(&emu, "sensor-1", &device_key).await;
    // A key derived for another id is not this device's.
    let wrong = sas::derive_device_key(&group_key, "sensor-2");
    let options = hub_options(
        &emu,
        "sensor-1",
        Some(token(&emu, "sensor-1", &wrong)),
        None,
        Dial::Tls,
    );
    assert_eq!(
        refused_with(connect_once(options).await),
        ConnectReturnCode::NotAuthorized
    );

    let requests = kinds_and_statuses(&emu, "sensor-1");
    assert_eq!(
        requests,
        [
            (DpsRequestKind::Connect, 0),
            (DpsRequestKind::Register, 202),
            (DpsRequestKind::Poll, 202),
            (DpsRequestKind::Poll, 200),
        ]
    );
}

#[tokio::test]
async fn individual_keys_and_certificates_register_and_connect() {
    let emu = start_with_dps(0, None).await;
    emu.dps_add_individual("solo-1", Attestation::SymmetricKey(key(3)), emu.hub_link());
    // The doc's form, with skn=registration.
    let mut device = DpsDevice::connect(
        &emu,
        "solo-1",
        Some(dps_token("solo-1", &key(3), Some("registration"))),
        None,
    )
    .await
    .unwrap();
    let state = device.provision().await;
    assert_eq!(state["assignedHub"], emu.host_name());
    connect_to_hub(&emu, "solo-1", &key(3)).await;

    let now = SystemTime::now();
    let day = Duration::from_secs(86_400);
    let (chain_pem, key_pem) =
        tls_certs::self_signed("cam-1", KeyKind::EcdsaP256, now - day, now + day).unwrap();
    let identity = Identity { chain_pem, key_pem };
    emu.dps_add_individual(
        "cam-1",
        Attestation::X509Thumbprint(thumbprint_sha256(&identity.chain_pem).unwrap()),
        emu.hub_link(),
    );
    let mut camera = DpsDevice::connect(&emu, "cam-1", None, Some(&identity))
        .await
        .unwrap();
    let state = camera.provision().await;
    assert_eq!(state["deviceId"], "cam-1");
    let options = hub_options(&emu, "cam-1", None, Some(&identity), Dial::Tls);
    connect_once(options).await.unwrap();
}

#[tokio::test]
async fn requests_beyond_the_rate_get_429_with_retry_after() {
    let emu = start_with_dps(0, Some(1)).await;
    emu.dps_add_group("fleet", key(1), emu.hub_link());
    let device_key = sas::derive_device_key(&key(1), "busy-1");
    let mut device = DpsDevice::connect(
        &emu,
        "busy-1",
        Some(dps_token("busy-1", &device_key, None)),
        None,
    )
    .await
    .unwrap();
    let accepted = device.register_as("busy-1").await;
    assert_eq!(accepted.status, 202);
    let operation_id = accepted.body["operationId"].as_str().unwrap().to_owned();
    // The window's one request is used: the poll right after is throttled.
    let throttled = device.poll(&operation_id).await;
    assert_eq!((throttled.status, throttled.retry_after), (429, Some(1)));
    assert!(throttled.body["trackingId"].is_string());
    // Honouring retry-after lands in a new window.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let done = device.poll(&operation_id).await;
    assert_eq!(done.status, 200, "{done:?}");
    let statuses: Vec<u16> = kinds_and_statuses(&emu, "busy-1")
        .into_iter()
        .map(|(_, status)| status)
        .collect();
    assert_eq!(statuses, [0, 202, 429, 200]);
}

#[tokio::test]
async fn wrong_keys_scopes_and_registrations_are_refused() {
    let emu = start_with_dps(0, None).await;
    emu.dps_add_individual("solo-1", Attestation::SymmetricKey(key(3)), emu.hub_link());
    let refused = DpsDevice::connect(
        &emu,
        "solo-1",
        Some(dps_token("solo-1", &key(4), None)),
        None,
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(
        refused,
        ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized)
    ));
    let refused = DpsDevice::connect(
        &emu,
        "stranger",
        Some(dps_token("stranger", &key(3), None)),
        None,
    )
    .await
    .err()
    .unwrap();
    assert!(matches!(
        refused,
        ConnectionError::ConnectionRefused(ConnectReturnCode::NotAuthorized)
    ));
    // Signed for another scope, and named so in the username.
    let mut options = MqttOptions::new("solo-1", "localhost", emu.dps_addr().unwrap().port());
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        client_tls(emu.ca_pem(), None),
    )));
    options.set_credentials(
        "0ne00OTHER0/registrations/solo-1/api-version=2019-03-31",
        dps_token("solo-1", &key(3), None),
    );
    assert_eq!(
        refused_with(connect_once(options).await),
        ConnectReturnCode::NotAuthorized
    );

    let requests = emu.wait_dps_requests(|r| r.len() == 3, WAIT).await.unwrap();
    let refusals: Vec<_> = requests
        .iter()
        .map(|r| (r.kind, r.status, r.refusal.clone().unwrap()))
        .collect();
    assert_eq!(
        refusals,
        [
            (
                DpsRequestKind::Connect,
                5,
                RefusalReason::Token(crate::sas::TokenError::BadSignature)
            ),
            (
                DpsRequestKind::Connect,
                5,
                RefusalReason::UnknownRegistration
            ),
            (DpsRequestKind::Connect, 5, RefusalReason::WrongIdScope),
        ]
    );
    // Nothing was registered in the hub.
    assert!(emu.device_connection_string("solo-1").is_none());
}

#[tokio::test]
async fn a_body_for_another_registration_is_400_and_an_unknown_operation_404() {
    let emu = start_with_dps(0, None).await;
    emu.dps_add_group("fleet", key(1), emu.hub_link());
    let device_key = sas::derive_device_key(&key(1), "dev-1");
    let mut device = DpsDevice::connect(
        &emu,
        "dev-1",
        Some(dps_token("dev-1", &device_key, None)),
        None,
    )
    .await
    .unwrap();
    let answer = device.register_as("dev-2").await;
    assert_eq!(answer.status, 400);
    for field in ["errorCode", "message", "trackingId"] {
        assert!(!answer.body[field].is_null(), "{field}: {}", answer.body);
    }
    let answer = device.poll("4.0000000000000000.none").await;
    assert_eq!(answer.status, 404);
    assert!(emu.device_connection_string("dev-2").is_none());
}

/// `dps_set_hub` sends the next registration to a second emulator: it answers that hub, the
/// device connects there with its derived key, and its twin comes along.
#[tokio::test]
async fn dps_set_hub_reassigns_to_a_second_emulator() {
    let hub_a = start_with_dps(0, None).await;
    let hub_b = Emulator::start(EmulatorConfig {
        host_name: "hub-b.localhost".to_owned(),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let group_key = key(9);
    hub_a.dps_add_group("fleet", group_key.clone(), hub_a.hub_link());
    let device_key = sas::derive_device_key(&group_key, "mover-1");
    let password = || Some(dps_token("mover-1", &device_key, None));

    let mut device = DpsDevice::connect(&hub_a, "mover-1", password(), None)
        .await
        .unwrap();
    let first = device.provision().await;
    assert_eq!(first["assignedHub"], hub_a.host_name());
    assert_eq!(first["substatus"], "initialAssignment");
    connect_to_hub(&hub_a, "mover-1", &device_key).await;
    hub_a
        .update_desired("mover-1", json!({"setpoint": 42}))
        .unwrap();

    assert!(hub_a.dps_set_hub("fleet", hub_b.hub_link()));
    assert!(!hub_a.dps_set_hub("no-such-enrollment", hub_b.hub_link()));
    let mut again = DpsDevice::connect(&hub_a, "mover-1", password(), None)
        .await
        .unwrap();
    let second = again.provision().await;
    assert_eq!(second["assignedHub"], "hub-b.localhost");
    assert_eq!(second["substatus"], "deviceDataMigrated");
    assert_eq!(second["createdDateTimeUtc"], first["createdDateTimeUtc"]);
    assert_ne!(second["etag"], first["etag"]);
    connect_to_hub(&hub_b, "mover-1", &device_key).await;
    assert_eq!(hub_b.twin("mover-1").unwrap().desired["setpoint"], 42);
}

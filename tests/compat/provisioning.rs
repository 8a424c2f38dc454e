//! The emulator's Device Provisioning Service against `azure-iot-device` 2.14's
//! `ProvisioningDeviceClient` (`iothub-protocol.md` 9a): a device registers through a group
//! enrollment with the key the Azure docs' formula derives, or through an individual
//! enrollment (symmetric key or X.509 thumbprint), is assigned to the emulator's hub, and then
//! connects there with `IoTHubDeviceClient` and the same credential, as the SDK's provisioning
//! samples do. What the SDK sent is read back from the emulator's DPS request log.
//!
//! The SDK dials DPS and the hub both on 8883. The hub is `localhost` (the suite's host name);
//! DPS is given as `127.0.0.1` (the emulator's certificate names both), and the peer's shim
//! routes `127.0.0.1:8883` to the DPS listener and any other 8883 to the hub's.

use std::time::Duration;

use leafgate::hub::sas::Key;
use leafgate_emulator::sas::{TokenError, derive_device_key};
use leafgate_emulator::{
    Attestation, DpsConfig, DpsRequest, DpsRequestKind, Emulator, EmulatorConfig, RefusalReason,
    ServiceClient,
};
use serde_json::{Value, json};

use super::device_sdk::Sdk;
use super::firewall::{CertFiles, self_signed};
use super::peer::{Peer, Venv, WAIT};

/// The ID scope of every test's DPS.
const SCOPE: &str = "0ne00C0FFEE";
/// The host the SDK is given for DPS: another name than the hub's, for the shim to route by.
const DPS_HOST: &str = "127.0.0.1";
/// A group enrollment's key (bytes 0x20..0x3f), not a device's.
const GROUP_KEY: &str = "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";

fn group_key() -> Key {
    Key::from_base64(GROUP_KEY).unwrap()
}

/// An emulator with DPS (`retry_after_s` in its 202s) and the HTTPS service API, and a
/// device-SDK peer whose shim routes DPS and the hub.
async fn start(retry_after_s: u32) -> Sdk {
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let emu = Emulator::start(EmulatorConfig {
        https_addr: Some(loopback),
        dps: Some(DpsConfig {
            addr: loopback,
            id_scope: SCOPE.to_owned(),
            retry_after_s,
            registrations_per_s: None,
        }),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let dps_port = emu.dps_addr().unwrap().port();
    let peer = Peer::start(
        Venv::Device,
        "device_peer.py",
        &[
            ("LEAFGATE_COMPAT_PORT", emu.mqtt_addr().port().to_string()),
            (
                "LEAFGATE_COMPAT_ROUTES",
                format!("{DPS_HOST}:8883={dps_port}"),
            ),
        ],
    )
    .await;
    let service = ServiceClient::new(emu.http_addr(), &emu.service_connection_string()).unwrap();
    Sdk { emu, peer, service }
}

/// `ProvisioningDeviceClient` for `registration_id` with credential `credential` (the peer's
/// `symmetric_key`, `group_key` or `x509`) and `register()`: its result, or the error.
async fn provision(
    sdk: &mut Sdk,
    registration_id: &str,
    credential: Value,
) -> Result<Value, Value> {
    let mut args = json!({
        "provisioning_host": DPS_HOST,
        "registration_id": registration_id,
        "id_scope": sdk.emu.dps_id_scope().unwrap(),
        "ca": sdk.emu.ca_pem(),
    });
    args.as_object_mut()
        .unwrap()
        .extend(credential.as_object().unwrap().clone());
    sdk.peer.try_call("provision", args).await
}

/// Checks that `register()` reported `registration_id` assigned to the emulator's hub as a
/// device of the same id, and that the SDK dialed DPS as told.
async fn assert_assigned(sdk: &mut Sdk, result: &Value, registration_id: &str) {
    assert_eq!(result["status"], "assigned", "{result}");
    let state = &result["registration_state"];
    assert_eq!(state["assigned_hub"], sdk.emu.host_name(), "{result}");
    assert_eq!(state["device_id"], registration_id, "{result}");
    assert_eq!(state["sub_status"], "initialAssignment", "{result}");
    assert!(result["operation_id"].is_string(), "{result}");
    let dial = sdk.peer.event("dial", |_| true).await;
    assert_eq!(
        dial,
        json!({"event": "dial", "host": DPS_HOST, "port": 8883, "transport": "tcp",
               "ws_path": null})
    );
}

/// The emulator's DPS log for `registration_id`, once it holds a 200.
async fn dps_log(emu: &Emulator, registration_id: &str) -> Vec<DpsRequest> {
    let mine = |requests: &[DpsRequest]| -> Vec<DpsRequest> {
        requests
            .iter()
            .filter(|r| r.registration_id == registration_id)
            .cloned()
            .collect()
    };
    let requests = emu
        .wait_dps_requests(
            |requests| mine(requests).iter().any(|r| r.status == 200),
            WAIT,
        )
        .await
        .unwrap();
    mine(&requests)
}

/// (kind, status) of each request.
fn kinds(requests: &[DpsRequest]) -> Vec<(DpsRequestKind, u16)> {
    requests.iter().map(|r| (r.kind, r.status)).collect()
}

/// Connects SDK client `name` to the hub DPS assigned, with `create_from_symmetric_key` or
/// `create_from_x509_certificate` (`credential`), with a method handler, and checks that it
/// answers a method called through the service API.
async fn connect_to_assigned_hub(sdk: &mut Sdk, name: &str, result: &Value, credential: Value) {
    let state = &result["registration_state"];
    let device = state["device_id"].as_str().unwrap().to_owned();
    let mut args = json!({
        "name": name,
        "hostname": state["assigned_hub"],
        "device_id": device,
        "ca": sdk.emu.ca_pem(),
        "methods": true,
    });
    args.as_object_mut()
        .unwrap()
        .extend(credential.as_object().unwrap().clone());
    sdk.peer
        .try_call("connect", args)
        .await
        .unwrap_or_else(|e| panic!("{device} could not connect to its assigned hub: {e}"));
    let stats = sdk.emu.wait_method_ready(&device, WAIT).await.unwrap();
    assert_eq!(stats.connects_accepted, 1);
    let dial = sdk.peer.event("dial", |e| e["host"] == "localhost").await;
    assert_eq!(dial["port"], 8883);
    let (http, body) = sdk.call(&device, "whoami", json!({}), 10).await;
    assert_eq!(http, 200, "{body}");
    assert_eq!(body["payload"]["client"], name, "{body}");
}

#[tokio::test]
async fn group_keys_from_the_azure_sdk_formula_match_derive_device_key() {
    let mut peer = Peer::start(Venv::Device, "device_peer.py", &[]).await;
    // Registration ids as DPS allows them: short, every allowed punctuation, the longest.
    let long = format!("a{}z", &"0123456789".repeat(13)[..126]);
    let ids = ["dev-1", "Sensor.42:a_b-c", long.as_str()];
    for group in [GROUP_KEY, super::KEY] {
        let group_key = Key::from_base64(group).unwrap();
        for id in ids {
            let reply = peer
                .call(
                    "derive_key",
                    json!({"group_key": group, "registration_id": id}),
                )
                .await;
            let theirs = Key::from_base64(reply["key"].as_str().unwrap()).unwrap();
            assert!(
                theirs == derive_device_key(&group_key, id),
                "the keys for {id} differ"
            );
            assert_eq!(theirs.as_bytes().len(), 32);
        }
    }
    // Different ids, different keys.
    let a = peer
        .call(
            "derive_key",
            json!({"group_key": GROUP_KEY, "registration_id": "dev-1"}),
        )
        .await;
    let b = peer
        .call(
            "derive_key",
            json!({"group_key": GROUP_KEY, "registration_id": "dev-2"}),
        )
        .await;
    assert_ne!(a["key"], b["key"]);
}

#[tokio::test]
async fn provisioning_sdk_registers_through_a_group_enrollment_and_connects_to_its_hub() {
    let mut sdk = start(1).await;
    sdk.emu
        .dps_add_group("fleet", group_key(), sdk.emu.hub_link());
    let id = "group-dev-1";
    assert!(!sdk.emu.device_stats(id).registered);

    // The device derives its key from the group key as the Azure samples do.
    let derived = sdk
        .peer
        .call(
            "derive_key",
            json!({"group_key": GROUP_KEY, "registration_id": id}),
        )
        .await;
    let key = derived["key"].as_str().unwrap().to_owned();
    assert!(Key::from_base64(&key).unwrap() == derive_device_key(&group_key(), id));

    let result = provision(&mut sdk, id, json!({"symmetric_key": key}))
        .await
        .unwrap_or_else(|e| panic!("register() failed: {e}"));
    assert_assigned(&mut sdk, &result, id).await;
    // CONNECT accepted, register answered 202 assigning, then (after the SDK's fixed 2 s wait,
    // longer than the 1 s retry-after) the poll answered 200.
    assert_eq!(
        kinds(&dps_log(&sdk.emu, id).await),
        [
            (DpsRequestKind::Connect, 0),
            (DpsRequestKind::Register, 202),
            (DpsRequestKind::Poll, 200)
        ]
    );
    // Assignment registered the device in the hub, with the derived key.
    assert!(sdk.emu.device_stats(id).registered);

    connect_to_assigned_hub(&mut sdk, "a", &result, json!({"symmetric_key": key})).await;
}

#[tokio::test]
async fn provisioning_sdk_registers_an_individual_enrollment_and_polls_until_assigned() {
    // A retry-after longer than the SDK's fixed first wait: its first poll comes too early and
    // is answered 202 again, and it honours the retry-after of that one.
    let mut sdk = start(4).await;
    let id = "solo-dev-1";
    sdk.emu.dps_add_individual(
        id,
        Attestation::SymmetricKey(super::key()),
        sdk.emu.hub_link(),
    );
    let result = provision(&mut sdk, id, json!({"symmetric_key": super::KEY}))
        .await
        .unwrap_or_else(|e| panic!("register() failed: {e}"));
    assert_assigned(&mut sdk, &result, id).await;
    let log = dps_log(&sdk.emu, id).await;
    assert_eq!(
        kinds(&log),
        [
            (DpsRequestKind::Connect, 0),
            (DpsRequestKind::Register, 202),
            (DpsRequestKind::Poll, 202),
            (DpsRequestKind::Poll, 200)
        ]
    );
    // The first poll came after the SDK's own 2 s, the second after the 4 s retry-after of the
    // 202 that answered the first (iothub-protocol.md 9a), all on one operation.
    let (register, early, done) = (&log[1], &log[2], &log[3]);
    assert!(early.at - register.at >= Duration::from_secs(2), "{log:?}");
    assert!(done.at - early.at >= Duration::from_secs(4), "{log:?}");
    assert!(register.operation_id.is_some());
    assert_eq!(early.operation_id, register.operation_id);
    assert_eq!(done.operation_id, register.operation_id);
    assert_eq!(result["operation_id"], json!(register.operation_id));
    connect_to_assigned_hub(&mut sdk, "a", &result, json!({"symmetric_key": super::KEY})).await;
}

#[tokio::test]
async fn provisioning_sdk_registers_an_individual_x509_enrollment() {
    let mut sdk = start(1).await;
    let dir = tempfile::tempdir().unwrap();
    // The registration id is the certificate's subject CN.
    let id = "cam-dev-1";
    let cert = self_signed(id);
    let thumbprint = leafgate_emulator::tls::thumbprint_sha256(&cert.0).unwrap();
    sdk.emu.dps_add_individual(
        id,
        Attestation::X509Thumbprint(thumbprint),
        sdk.emu.hub_link(),
    );
    let files = CertFiles::write(dir.path(), id, &cert);
    let result = provision(&mut sdk, id, json!({"x509": files.arg()}))
        .await
        .unwrap_or_else(|e| panic!("register() failed: {e}"));
    assert_assigned(&mut sdk, &result, id).await;
    assert_eq!(
        kinds(&dps_log(&sdk.emu, id).await),
        [
            (DpsRequestKind::Connect, 0),
            (DpsRequestKind::Register, 202),
            (DpsRequestKind::Poll, 200)
        ]
    );
    connect_to_assigned_hub(&mut sdk, "a", &result, json!({"x509": files.arg()})).await;
    let connect = sdk.emu.device_stats(id).last_connect.unwrap();
    assert!(connect.client_cert);
    assert_eq!(connect.password, None);
}

#[tokio::test]
async fn provisioning_sdk_with_a_key_of_another_group_is_refused() {
    let mut sdk = start(1).await;
    sdk.emu
        .dps_add_group("fleet", group_key(), sdk.emu.hub_link());
    let id = "group-dev-x";
    // Derived from another group's key: a signature DPS cannot verify.
    let refused = provision(&mut sdk, id, json!({"group_key": super::KEY}))
        .await
        .unwrap_err();
    assert_eq!(refused["error"], "CredentialError", "{refused}");
    let requests = sdk
        .emu
        .wait_dps_requests(|r| r.iter().any(|r| r.registration_id == id), WAIT)
        .await
        .unwrap();
    let mine: Vec<&DpsRequest> = requests
        .iter()
        .filter(|r| r.registration_id == id)
        .collect();
    assert_eq!(mine.len(), 1, "{mine:?}");
    assert_eq!((mine[0].kind, mine[0].status), (DpsRequestKind::Connect, 5));
    assert_eq!(
        mine[0].refusal,
        Some(RefusalReason::Token(TokenError::BadSignature))
    );
    // Nothing was assigned: the hub does not know the device.
    assert!(!sdk.emu.device_stats(id).registered);
}

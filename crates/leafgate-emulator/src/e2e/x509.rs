//! X.509 client-certificate authentication with rumqttc devices, over the MQTT listener and
//! over WebSockets alike: thumbprint and CA-signed devices connect and serve a method; each
//! refusal gets CONNACK 5 and its own recorded reason.

use std::time::{Duration, SystemTime};

use rumqttc::ConnectReturnCode;

use super::{
    Dial, Identity, assert_method_round_trip, connect_once, hub_options, key, refused_with,
    serve_methods, start_with_ws, token,
};
use crate::tls::{self, KeyKind, TestCa, thumbprint_sha1, thumbprint_sha256};
use crate::{Emulator, RefusalReason, X509Auth};

const DAY: Duration = Duration::from_secs(86_400);

/// A certificate valid from yesterday to tomorrow.
fn valid() -> (SystemTime, SystemTime) {
    let now = SystemTime::now();
    (now - DAY, now + DAY)
}

fn self_signed(cn: &str, (not_before, not_after): (SystemTime, SystemTime)) -> Identity {
    let (chain_pem, key_pem) =
        tls::self_signed(cn, KeyKind::EcdsaP256, not_before, not_after).unwrap();
    Identity { chain_pem, key_pem }
}

fn issued(ca: &TestCa, cn: &str, (not_before, not_after): (SystemTime, SystemTime)) -> Identity {
    let (chain_pem, key_pem) = ca
        .issue(cn, KeyKind::EcdsaP256, not_before, not_after)
        .unwrap();
    Identity { chain_pem, key_pem }
}

/// Connects `id` with `identity` and no password, expects CONNACK 0 and a method round trip,
/// and checks the record says a certificate came over `dial`.
async fn assert_connects(emu: &Emulator, id: &str, identity: &Identity, dial: Dial) {
    let options = hub_options(emu, id, None, Some(identity), dial);
    let (client, eventloop) = connect_once(options)
        .await
        .unwrap_or_else(|e| panic!("{id} over {dial:?}: {e}"));
    let device = serve_methods(client, eventloop);
    assert_method_round_trip(emu, id).await;
    let record = emu.device_stats(id).last_connect.unwrap();
    assert!(record.client_cert, "{id}: {record:?}");
    assert_eq!(record.password, None);
    let expected = match dial {
        Dial::Tls => crate::DeviceTransport::Mqtt,
        Dial::Wss => crate::DeviceTransport::WebSocket,
    };
    assert_eq!(record.transport, expected);
    device.abort();
}

/// Connects `id` with `password` and `identity`, expects CONNACK 5 and `reason` recorded.
async fn assert_refused(
    emu: &Emulator,
    id: &str,
    password: Option<String>,
    identity: Option<&Identity>,
    dial: Dial,
    reason: &RefusalReason,
) {
    let options = hub_options(emu, id, password, identity, dial);
    assert_eq!(
        refused_with(connect_once(options).await),
        ConnectReturnCode::NotAuthorized,
        "{id} over {dial:?}"
    );
    let stats = emu.device_stats(id);
    assert_eq!(
        stats.last_refusal.as_ref(),
        Some(reason),
        "{id} over {dial:?}"
    );
    let record = stats.last_connect.unwrap();
    assert_eq!(record.client_cert, identity.is_some());
}

async fn thumbprint_devices(dial: Dial) {
    let emu = start_with_ws().await;
    let cert = self_signed("thumb-1", valid());
    emu.add_device_x509(
        "thumb-1",
        X509Auth::Thumbprint {
            primary: thumbprint_sha1(&cert.chain_pem).unwrap(),
            secondary: None,
        },
    );
    assert_connects(&emu, "thumb-1", &cert, dial).await;

    // The secondary thumbprint, SHA-256, lower case with colons.
    let second = self_signed("thumb-2", valid());
    let colons = thumbprint_sha256(&second.chain_pem)
        .unwrap()
        .to_ascii_lowercase()
        .as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8_lossy(pair).into_owned())
        .collect::<Vec<_>>()
        .join(":");
    emu.add_device_x509(
        "thumb-2",
        X509Auth::Thumbprint {
            primary: "AB".repeat(20),
            secondary: Some(colons),
        },
    );
    assert_connects(&emu, "thumb-2", &second, dial).await;

    let stranger = self_signed("thumb-1", valid());
    let mismatch = RefusalReason::ThumbprintMismatch;
    assert_refused(&emu, "thumb-1", None, Some(&stranger), dial, &mismatch).await;

    let now = SystemTime::now();
    let expired = self_signed("thumb-3", (now - 2 * DAY, now - DAY));
    emu.add_device_x509(
        "thumb-3",
        X509Auth::Thumbprint {
            primary: thumbprint_sha1(&expired.chain_pem).unwrap(),
            secondary: None,
        },
    );
    let reason = RefusalReason::CertificateExpired;
    assert_refused(&emu, "thumb-3", None, Some(&expired), dial, &reason).await;

    // No certificate and no password.
    let reason = RefusalReason::MissingClientCertificate;
    assert_refused(&emu, "thumb-1", None, None, dial, &reason).await;
    // A SAS password from an X.509 device, with its certificate.
    let password = Some(token(&emu, "thumb-1", &key(1)));
    let reason = RefusalReason::PasswordForX509Device;
    assert_refused(&emu, "thumb-1", password, Some(&cert), dial, &reason).await;
    // A SAS device with neither password nor certificate.
    emu.add_device("sas-1", key(1));
    let reason = RefusalReason::MissingPassword;
    assert_refused(&emu, "sas-1", None, None, dial, &reason).await;
}

async fn ca_signed_devices(dial: Dial) {
    let emu = start_with_ws().await;
    let ca = TestCa::generate("fleet CA").unwrap();
    emu.add_verified_ca(ca.ca_pem()).unwrap();
    for id in ["ca-1", "ca-2", "ca-3", "ca-4"] {
        emu.add_device_x509(id, X509Auth::CaSigned);
    }
    let cert = issued(&ca, "ca-1", valid());
    assert_connects(&emu, "ca-1", &cert, dial).await;

    // ca-1's certificate presented by ca-2: the CN is not the device id.
    let reason = RefusalReason::CommonNameMismatch;
    assert_refused(&emu, "ca-2", None, Some(&cert), dial, &reason).await;

    let now = SystemTime::now();
    let expired = issued(&ca, "ca-3", (now - 2 * DAY, now - DAY));
    let reason = RefusalReason::CertificateExpired;
    assert_refused(&emu, "ca-3", None, Some(&expired), dial, &reason).await;

    // Signed by a CA the hub has not verified.
    let stranger = TestCa::generate("other CA").unwrap();
    let foreign = issued(&stranger, "ca-4", valid());
    let options = hub_options(&emu, "ca-4", None, Some(&foreign), dial);
    assert_eq!(
        refused_with(connect_once(options).await),
        ConnectReturnCode::NotAuthorized
    );
    assert!(matches!(
        emu.device_stats("ca-4").last_refusal,
        Some(RefusalReason::CertificateNotTrusted(_))
    ));

    let reason = RefusalReason::MissingClientCertificate;
    assert_refused(&emu, "ca-1", None, None, dial, &reason).await;
}

#[tokio::test]
async fn thumbprint_devices_over_tls() {
    thumbprint_devices(Dial::Tls).await;
}

#[tokio::test]
async fn thumbprint_devices_over_websockets() {
    thumbprint_devices(Dial::Wss).await;
}

#[tokio::test]
async fn ca_signed_devices_over_tls() {
    ca_signed_devices(Dial::Tls).await;
}

#[tokio::test]
async fn ca_signed_devices_over_websockets() {
    ca_signed_devices(Dial::Wss).await;
}

/// RSA keys (from `openssl genpkey`, which rcgen with ring cannot make) sign the handshake as
/// well as ECDSA ones, for both kinds of device.
#[tokio::test]
async fn rsa_device_keys_from_openssl() {
    let emu = start_with_ws().await;
    let (not_before, not_after) = valid();
    let (chain_pem, key_pem) =
        tls::self_signed("rsa-1", KeyKind::Rsa2048, not_before, not_after).unwrap();
    emu.add_device_x509(
        "rsa-1",
        X509Auth::Thumbprint {
            primary: thumbprint_sha1(&chain_pem).unwrap(),
            secondary: None,
        },
    );
    assert_connects(&emu, "rsa-1", &Identity { chain_pem, key_pem }, Dial::Tls).await;

    let ca = TestCa::generate("fleet CA").unwrap();
    emu.add_verified_ca(ca.ca_pem()).unwrap();
    emu.add_device_x509("rsa-2", X509Auth::CaSigned);
    let key_pem = tls::rsa_key_pem(2048).unwrap();
    let chain_pem = ca
        .issue_with_key("rsa-2", &key_pem, not_before, not_after)
        .unwrap();
    assert_connects(&emu, "rsa-2", &Identity { chain_pem, key_pem }, Dial::Wss).await;
}

#[tokio::test]
async fn connection_strings_name_x509_devices() {
    let emu = start_with_ws().await;
    emu.add_device_x509("x-1", X509Auth::CaSigned);
    assert_eq!(
        emu.device_connection_string("x-1").unwrap(),
        format!("HostName={};DeviceId=x-1;x509=true", emu.host_name())
    );
    assert!(matches!(
        emu.add_verified_ca("no pem here"),
        Err(crate::CaError::NoCertificate(_))
    ));
}

//! Issue 5, items 1, 2 and 4: leafgate against a failing hub and a flood of calls.
//!
//! The emulator's fault hooks refuse, close, stall, hang up on and throttle connection attempts,
//! and its history records every attempt and every method exchange with their times; these tests
//! read connect rates, backoff gaps, renewal times and reply latencies from that history. They
//! wait on the emulator's watch channels, not on sleeps, except where the passing of time is the
//! behaviour under test (a backoff, a token's lifetime), which the comments say.

use std::path::Path;
use std::time::Duration;

use leafgate::emulator::{AttemptOutcome, Emulator, EmulatorConfig, Fault, RefusalReason, Target};
use leafgate::hub::sas::Key;
use tokio::time::Instant;

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// One plain MQTT connection attempt as device `id` (rumqttc, as leafgate uses it, without
/// leafgate's session): the first CONNACK or error, and how long it took.
async fn plain_connect(
    emu: &Emulator,
    ca: &Path,
    id: &str,
) -> (Result<(), rumqttc::ConnectionError>, Duration) {
    use rumqttc::{
        AsyncClient, Event as MqttEvent, MqttOptions, Packet, TlsConfiguration, Transport,
    };
    let token = leafgate::hub::sas::token(
        &leafgate::hub::sas::device_resource(emu.host_name(), id),
        &Key::from_base64(KEY).unwrap(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 3600,
        None,
    );
    let mut options = MqttOptions::new(id, "127.0.0.1", emu.mqtt_addr().port());
    options
        .set_credentials(leafgate::hub::session::username(emu.host_name(), id), token)
        .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            leafgate::hub::tls::client_config(Some(ca)).unwrap(),
        )));
    let (_client, mut eventloop) = AsyncClient::new(options, 4);
    let mut net = eventloop.network_options();
    net.set_connection_timeout(1);
    eventloop.set_network_options(net);
    let started = Instant::now();
    let result = loop {
        match eventloop.poll().await {
            Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => break Ok(()),
            Ok(_) => {}
            Err(e) => break Err(e),
        }
    };
    (result, started.elapsed())
}

/// The fault hooks against a plain MQTT client: each one answers on the wire as documented, is
/// recorded with its outcome, applies only to its target, and ends when cleared or timed out.
#[tokio::test]
async fn each_hub_fault_meets_a_plain_client_as_documented() {
    use rumqttc::{ConnectReturnCode, ConnectionError};
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, emu.ca_pem()).unwrap();
    for id in ["d", "e"] {
        emu.add_device(id, Key::from_base64(KEY).unwrap());
    }
    let only_d = || Target::devices(["d"]);

    let refuse = emu.inject_fault(Fault::Refuse(only_d()), None).await;
    let (result, _) = plain_connect(&emu, &ca, "d").await;
    assert!(
        matches!(
            result,
            Err(ConnectionError::ConnectionRefused(
                ConnectReturnCode::NotAuthorized
            ))
        ),
        "{result:?}"
    );
    assert_eq!(
        plain_connect(&emu, &ca, "e").await.0.ok(),
        Some(()),
        "not a target"
    );
    assert!(emu.clear_fault(refuse).await);

    let throttle = emu.inject_fault(Fault::Throttle(only_d()), None).await;
    let (result, _) = plain_connect(&emu, &ca, "d").await;
    assert!(
        matches!(
            result,
            Err(ConnectionError::ConnectionRefused(
                ConnectReturnCode::ServiceUnavailable
            ))
        ),
        "{result:?}"
    );
    assert!(emu.clear_fault(throttle).await);

    let hangup = emu.inject_fault(Fault::Hangup(only_d()), None).await;
    let (result, took) = plain_connect(&emu, &ca, "d").await;
    assert!(
        matches!(
            result,
            Err(ConnectionError::Io(_) | ConnectionError::MqttState(_))
        ),
        "{result:?}"
    );
    assert!(
        took < Duration::from_secs(1),
        "a hang-up is not a stall: {took:?}"
    );
    assert!(emu.clear_fault(hangup).await);

    let stall = emu.inject_fault(Fault::Stall(only_d()), None).await;
    let (result, took) = plain_connect(&emu, &ca, "d").await;
    assert!(
        matches!(result, Err(ConnectionError::NetworkTimeout)),
        "{result:?}"
    );
    assert!(took >= Duration::from_secs(1));
    assert!(emu.clear_fault(stall).await);

    let close = emu.inject_fault(Fault::CloseTcp, None).await;
    let (result, _) = plain_connect(&emu, &ca, "e").await;
    assert!(
        matches!(
            result,
            Err(ConnectionError::Io(_) | ConnectionError::Tls(_))
        ),
        "{result:?}"
    );
    assert!(emu.clear_fault(close).await);

    let refuse_tcp = emu.inject_fault(Fault::RefuseTcp, None).await;
    let (result, _) = plain_connect(&emu, &ca, "e").await;
    match result {
        Err(ConnectionError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused),
        other => panic!("{other:?}"),
    }
    assert_eq!(emu.active_faults(), vec![(refuse_tcp, Fault::RefuseTcp)]);
    assert!(emu.clear_fault(refuse_tcp).await);
    // The same port is open again.
    assert_eq!(plain_connect(&emu, &ca, "e").await.0.ok(), Some(()));

    // A timed fault ends by itself; waiting it out is the behaviour under test.
    emu.inject_fault(Fault::Refuse(Target::All), Some(Duration::from_millis(300)))
        .await;
    assert!(plain_connect(&emu, &ca, "d").await.0.is_err());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(plain_connect(&emu, &ca, "d").await.0.ok(), Some(()));
    assert!(emu.active_faults().is_empty());

    let outcomes: Vec<(Option<String>, AttemptOutcome)> = emu
        .connect_attempts()
        .into_iter()
        .map(|a| (a.client_id, a.outcome))
        .collect();
    let d = || Some("d".to_owned());
    let e = || Some("e".to_owned());
    let expected_start = [
        (d(), AttemptOutcome::Refused(RefusalReason::Injected)),
        (e(), AttemptOutcome::Accepted),
        (d(), AttemptOutcome::Refused(RefusalReason::Throttled)),
        (d(), AttemptOutcome::Faulted(Fault::Hangup(only_d()))),
        (d(), AttemptOutcome::Faulted(Fault::Stall(only_d()))),
        (None, AttemptOutcome::ClosedTcp),
    ];
    assert_eq!(outcomes[..6], expected_start[..]);
    assert_eq!(outcomes.last(), Some(&(d(), AttemptOutcome::Accepted)));
    let stalled = &emu.connect_attempts()[4];
    assert!(stalled.closed_at.unwrap() - stalled.connect_at.unwrap() < Duration::from_secs(2));
    // Refusals also count in the device's stats, as real ones do.
    assert_eq!(emu.device_stats("d").connects_refused, 3);
}

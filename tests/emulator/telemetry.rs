//! Device-to-cloud telemetry in the emulator: what it records per device, how tests and the demo
//! read it back (in process and over HTTP), and the telemetry faults. Devices are raw MQTT
//! clients (rumqttc's packet codec over TLS), so every PUBLISH, PUBACK and close is the test's
//! to send and see.

use std::time::Duration;

use leafgate::hub::d2c;
use leafgate_emulator::{
    D2cMessage, DisconnectReason, Emulator, EmulatorConfig, Fault, MAX_MESSAGES_PER_READ, Target,
};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::PubAck;
use serde_json::{Value, json};

use super::raw::RawDevice;
use super::{Packet, WAIT, key, service, start, wait};

fn puback(pkid: u16) -> Option<Packet> {
    Some(Packet::PubAck(PubAck::new(pkid)))
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// The topic the gateway would build for a message with id `mid`.
fn topic_with_mid(device: &str, mid: &str) -> String {
    d2c::topic(device, [(d2c::MESSAGE_ID, mid)])
}

#[tokio::test]
async fn telemetry_is_recorded_decoded_before_its_puback() {
    let emu = start().await;
    emu.add_device("t-1", key(1));
    let mut device = RawDevice::connect(&emu, "t-1", &key(1)).await;
    let topic = d2c::topic(
        "t-1",
        [
            (d2c::MESSAGE_ID, "m 1/a"),
            (d2c::CONTENT_TYPE, "application/json"),
            (d2c::CONTENT_ENCODING, "utf-8"),
            (d2c::CREATION_TIME, "2026-12-06T05:04:00.123Z"),
            ("$.cid", "c&1"),
            ("site name", "Hall A&B=1"),
            ("unit", "°C"),
        ],
    );
    assert!(topic.contains("%24.mid=m%201%2Fa&"), "{topic}");
    let pkid = device
        .publish(&topic, QoS::AtLeastOnce, br#"{"temp":21.5}"#)
        .await;
    assert_eq!(device.read().await, puback(pkid));
    // No wait: the message was recorded before its PUBACK was written.
    let messages = emu.telemetry("t-1");
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(
        message.system_properties,
        pairs(&[
            ("$.mid", "m 1/a"),
            ("$.ct", "application/json"),
            ("$.ce", "utf-8"),
            ("$.ctime", "2026-12-06T05:04:00.123Z"),
            ("$.cid", "c&1"),
        ])
    );
    assert_eq!(
        message.properties,
        pairs(&[("site name", "Hall A&B=1"), ("unit", "°C")])
    );
    assert_eq!(&message.body[..], br#"{"temp":21.5}"#);
    assert_eq!((message.seq, message.qos, message.duplicate), (0, 1, false));
    assert_eq!(message.message_id(), Some("m 1/a"));
    let stats = emu.device_stats("t-1");
    assert_eq!(Some(message.connection), stats.connection);
    assert_eq!((stats.telemetry_messages, stats.telemetry_bytes), (1, 13));
    assert!(message.received_at <= tokio::time::Instant::now());
}

#[tokio::test]
async fn every_form_of_the_topic_the_sdks_and_docs_use_is_decoded() {
    let emu = start().await;
    emu.add_device("forms", key(1));
    let mut device = RawDevice::connect(&emu, "forms", &key(1)).await;
    let topics = [
        // No bag at all.
        "devices/forms/messages/events/",
        // The docs' unencoded `$`, and the .NET SDK's trailing slash.
        "devices/forms/messages/events/$.ct=application%2Fjson&$.ce=utf-8/",
        // A key without `=` and an empty value.
        "devices/forms/messages/events/flag&empty=",
    ];
    for topic in topics {
        device.publish(topic, QoS::AtMostOnce, b"x").await;
    }
    device.assert_nothing_before_pingresp().await;
    let messages = emu.wait_telemetry("forms", 3, WAIT).await.unwrap();
    let bags: Vec<_> = messages
        .iter()
        .map(|m| (m.system_properties.clone(), m.properties.clone()))
        .collect();
    assert_eq!(
        bags,
        [
            (vec![], vec![]),
            (
                pairs(&[("$.ct", "application/json"), ("$.ce", "utf-8")]),
                vec![]
            ),
            (vec![], pairs(&[("flag", ""), ("empty", "")])),
        ]
    );
    assert!(messages.iter().all(|m| m.qos == 0));
    assert_eq!(
        messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        [0, 1, 2]
    );
}

#[tokio::test]
async fn a_repeated_message_id_is_flagged_per_device() {
    let emu = start().await;
    emu.add_device("dup-a", key(1));
    emu.add_device("dup-b", key(2));
    let mut a = RawDevice::connect(&emu, "dup-a", &key(1)).await;
    let mut b = RawDevice::connect(&emu, "dup-b", &key(2)).await;
    for mid in ["1", "2", "1"] {
        let pkid = a
            .publish(&topic_with_mid("dup-a", mid), QoS::AtLeastOnce, b"{}")
            .await;
        assert_eq!(a.read().await, puback(pkid));
    }
    // The same id from another device is that device's first.
    let pkid = b
        .publish(&topic_with_mid("dup-b", "1"), QoS::AtLeastOnce, b"{}")
        .await;
    assert_eq!(b.read().await, puback(pkid));
    // No id, twice: nothing to compare.
    for _ in 0..2 {
        let pkid = a
            .publish("devices/dup-a/messages/events/", QoS::AtLeastOnce, b"{}")
            .await;
        assert_eq!(a.read().await, puback(pkid));
    }
    let flags: Vec<bool> = emu.telemetry("dup-a").iter().map(|m| m.duplicate).collect();
    assert_eq!(flags, [false, false, true, false, false]);
    assert!(!emu.telemetry("dup-b")[0].duplicate);
    assert_eq!(emu.device_stats("dup-a").telemetry_duplicates, 1);
    assert_eq!(emu.device_stats("dup-b").telemetry_duplicates, 0);
}

#[tokio::test]
async fn only_the_newest_messages_are_kept_and_the_dropped_are_counted() {
    let emu = Emulator::start(EmulatorConfig {
        telemetry_per_device: 3,
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    emu.add_device("small", key(1));
    let mut device = RawDevice::connect(&emu, "small", &key(1)).await;
    for n in 0..5 {
        device
            .publish(
                &topic_with_mid("small", &n.to_string()),
                QoS::AtMostOnce,
                b"x",
            )
            .await;
    }
    let kept = emu.wait_telemetry("small", 5, WAIT).await.unwrap();
    let mids: Vec<&str> = kept.iter().filter_map(D2cMessage::message_id).collect();
    assert_eq!(mids, ["2", "3", "4"]);
    assert_eq!(kept.iter().map(|m| m.seq).collect::<Vec<_>>(), [2, 3, 4]);
    let stats = emu.device_stats("small");
    assert_eq!((stats.telemetry_messages, stats.telemetry_dropped), (5, 2));
    // An id that was dropped is no longer known: sending it again is no duplicate.
    device
        .publish(&topic_with_mid("small", "0"), QoS::AtMostOnce, b"x")
        .await;
    let kept = emu.wait_telemetry("small", 6, WAIT).await.unwrap();
    assert!(!kept.last().unwrap().duplicate);
    let (_, body) = read_messages(&emu, "small", 0).await;
    assert_eq!(
        (body["dropped"].as_u64(), body["next"].as_u64()),
        (Some(3), Some(6))
    );
    assert_eq!(body["messages"][0]["seq"], 3);
}

#[tokio::test]
async fn a_property_bag_that_does_not_decode_closes_the_connection_unrecorded() {
    let emu = start().await;
    emu.add_device("bad-bag", key(1));
    let bad = [
        "devices/bad-bag/messages/events/a=%ZZ",
        "devices/bad-bag/messages/events/%24.mid=%2",
        "devices/bad-bag/messages/events/a=%FF%FE",
    ];
    for (n, topic) in bad.into_iter().enumerate() {
        let mut device = RawDevice::connect(&emu, "bad-bag", &key(1)).await;
        device.publish(topic, QoS::AtLeastOnce, b"{}").await;
        device.assert_closed().await;
        let stats = wait(&emu, "bad-bag", |s| s.disconnects == n as u64 + 1).await;
        assert!(
            matches!(
                stats.last_disconnect,
                Some(DisconnectReason::ProtocolViolation(ref why)) if why.contains("percent-encoded")
            ),
            "{topic}: {:?}",
            stats.last_disconnect
        );
    }
    // Another device's topic, and a module's, close it as before.
    for topic in [
        "devices/other/messages/events/",
        "devices/bad-bag/modules/m/messages/events/",
    ] {
        let mut device = RawDevice::connect(&emu, "bad-bag", &key(1)).await;
        device.publish(topic, QoS::AtLeastOnce, b"{}").await;
        device.assert_closed().await;
    }
    assert!(emu.telemetry("bad-bag").is_empty());
    assert_eq!(emu.device_stats("bad-bag").telemetry_messages, 0);
}

#[tokio::test]
async fn wait_telemetry_wakes_on_the_nth_message_and_times_out_with_the_count() {
    let emu = start().await;
    emu.add_device("w", key(1));
    let mut device = RawDevice::connect(&emu, "w", &key(1)).await;
    let waiter = {
        let emu = &emu;
        async move { emu.wait_telemetry("w", 2, WAIT).await }
    };
    let publisher = async {
        for mid in ["a", "b"] {
            let pkid = device
                .publish(&topic_with_mid("w", mid), QoS::AtLeastOnce, b"1")
                .await;
            assert_eq!(device.read().await, puback(pkid));
        }
    };
    let (waited, ()) = tokio::join!(waiter, publisher);
    let mids: Vec<_> = waited
        .unwrap()
        .iter()
        .map(|m| m.message_id().unwrap().to_owned())
        .collect();
    assert_eq!(mids, ["a", "b"]);
    let timeout = emu
        .wait_telemetry("w", 3, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert_eq!(timeout.last.telemetry_messages, 2);
    assert!(emu.telemetry("never-seen").is_empty());
}

/// `GET /emulator/devices/{id}/messages?since=N` through the service client: (status, body).
async fn read_messages(emu: &Emulator, device: &str, since: u64) -> (u16, Value) {
    let response = service(emu).messages(device, since).await.unwrap();
    (response.status, response.body)
}

#[tokio::test]
async fn the_read_endpoint_returns_messages_as_json_in_pages() {
    let emu = start().await;
    emu.add_device("http-1", key(1));
    let mut device = RawDevice::connect(&emu, "http-1", &key(1)).await;
    let topic = d2c::topic(
        "http-1",
        [
            (d2c::MESSAGE_ID, "m-1"),
            (d2c::CONTENT_TYPE, "application/json"),
            ("site", "hall A"),
        ],
    );
    let pkid = device
        .publish(&topic, QoS::AtLeastOnce, br#"{"temp":21}"#)
        .await;
    assert_eq!(device.read().await, puback(pkid));
    device
        .publish(
            "devices/http-1/messages/events/",
            QoS::AtMostOnce,
            &[0xff, 0x00],
        )
        .await;
    emu.wait_telemetry("http-1", 2, WAIT).await.unwrap();

    let (status, body) = read_messages(&emu, "http-1", 0).await;
    assert_eq!(status, 200, "{body}");
    let connection = emu.device_stats("http-1").connection.unwrap();
    let first = &body["messages"][0];
    assert!(
        first["receivedUtc"].as_str().unwrap().ends_with('Z'),
        "{first}"
    );
    let mut first = first.clone();
    first.as_object_mut().unwrap().remove("receivedUtc");
    assert_eq!(
        first,
        json!({
            "seq": 0,
            "qos": 1,
            "connection": connection,
            "duplicate": false,
            "systemProperties": {"$.mid": "m-1", "$.ct": "application/json"},
            "properties": {"site": "hall A"},
            "body": "{\"temp\":21}",
            "bodyEncoding": "utf-8",
        })
    );
    assert_eq!(
        (
            &body["messages"][1]["body"],
            &body["messages"][1]["bodyEncoding"]
        ),
        (&json!("/wA="), &json!("base64"))
    );
    assert_eq!(
        (
            &body["device"],
            &body["next"],
            &body["more"],
            &body["dropped"]
        ),
        (&json!("http-1"), &json!(2), &json!(false), &json!(0))
    );
    // From `next` on, nothing yet.
    let (_, body) = read_messages(&emu, "http-1", 2).await;
    assert_eq!(body["messages"], json!([]));
    assert_eq!(body["next"], 2);

    // More than a page: MAX_MESSAGES_PER_READ, then the rest from `next`.
    let total = MAX_MESSAGES_PER_READ as u64 + 3;
    for _ in 2..total {
        device
            .publish("devices/http-1/messages/events/", QoS::AtMostOnce, b"x")
            .await;
    }
    emu.wait_telemetry("http-1", total, WAIT).await.unwrap();
    let (_, page) = read_messages(&emu, "http-1", 1).await;
    assert_eq!(
        page["messages"].as_array().unwrap().len(),
        MAX_MESSAGES_PER_READ
    );
    assert_eq!(page["messages"][0]["seq"], 1);
    let next = page["next"].as_u64().unwrap();
    assert_eq!(
        (next, &page["more"]),
        (MAX_MESSAGES_PER_READ as u64 + 1, &json!(true))
    );
    let (_, rest) = read_messages(&emu, "http-1", next).await;
    assert_eq!(rest["messages"].as_array().unwrap().len(), 2);
    assert_eq!(
        (&rest["next"], &rest["more"]),
        (&json!(total), &json!(false))
    );
}

#[tokio::test]
async fn the_read_endpoint_checks_auth_method_device_and_since() {
    let emu = start().await;
    emu.add_device("d", key(1));
    let client = service(&emu);
    let path = "/emulator/devices/d/messages";
    let (status, body) = read_messages(&emu, "d", 0).await;
    assert_eq!(status, 200, "a registered device without messages: {body}");
    assert_eq!(body["messages"], json!([]));

    let missing = client.get_raw(path, None).await.unwrap();
    assert_eq!((missing.status, missing.error_code()), (401, Some(401_003)));
    let device_token = super::token(&emu, "d", &key(1), super::now() + 60);
    let scoped = client.get_raw(path, Some(&device_token)).await.unwrap();
    assert_eq!(scoped.status, 401);

    let auth = client.token();
    let unknown = client
        .get_raw("/emulator/devices/ghost/messages", Some(&auth))
        .await
        .unwrap();
    assert_eq!((unknown.status, unknown.error_code()), (404, Some(404_001)));
    assert_eq!(unknown.error_name.as_deref(), Some("DeviceNotFound"));
    for bad in ["?since=-1", "?since=x", "?since="] {
        let response = client
            .get_raw(&format!("{path}{bad}"), Some(&auth))
            .await
            .unwrap();
        assert_eq!(
            (response.status, response.error_code()),
            (400, Some(400_004)),
            "{bad}"
        );
    }
    let posted = client.post_raw(path, Some(&auth), "{}").await.unwrap();
    assert_eq!(posted.status, 405);
}

#[tokio::test]
async fn withheld_pubacks_are_sent_in_order_when_the_fault_is_cleared() {
    let emu = start().await;
    emu.add_device("slow", key(1));
    emu.add_device("fast", key(2));
    let mut device = RawDevice::connect(&emu, "slow", &key(1)).await;
    let mut other = RawDevice::connect(&emu, "fast", &key(2)).await;
    let fault = emu
        .inject_fault(Fault::WithholdPubacks(Target::devices(["slow"])), None)
        .await;
    let first = device
        .publish(&topic_with_mid("slow", "1"), QoS::AtLeastOnce, b"1")
        .await;
    let second = device
        .publish(&topic_with_mid("slow", "2"), QoS::AtLeastOnce, b"2")
        .await;
    // QoS 0 has no PUBACK to withhold; it is recorded all the same.
    device
        .publish(&topic_with_mid("slow", "3"), QoS::AtMostOnce, b"3")
        .await;
    device.assert_nothing_before_pingresp().await;
    let kept = emu.telemetry("slow");
    assert_eq!(kept.len(), 3, "recorded although not acknowledged");
    // Another device is not affected.
    let pkid = other
        .publish(&topic_with_mid("fast", "1"), QoS::AtLeastOnce, b"1")
        .await;
    assert_eq!(other.read().await, puback(pkid));

    assert!(emu.clear_fault(fault).await);
    assert_eq!(device.read().await, puback(first));
    assert_eq!(device.read().await, puback(second));
    let third = device
        .publish(&topic_with_mid("slow", "4"), QoS::AtLeastOnce, b"4")
        .await;
    assert_eq!(device.read().await, puback(third));
    assert_eq!(emu.device_stats("slow").disconnects, 0);
}

#[tokio::test]
async fn withheld_pubacks_go_out_when_a_lasting_fault_expires() {
    let emu = start().await;
    emu.add_device("slow", key(1));
    let mut device = RawDevice::connect(&emu, "slow", &key(1)).await;
    // The expiry itself is the behaviour under test: the PUBACK must come without a clear.
    emu.inject_fault(
        Fault::WithholdPubacks(Target::All),
        Some(Duration::from_millis(300)),
    )
    .await;
    let started = std::time::Instant::now();
    let pkid = device
        .publish(&topic_with_mid("slow", "1"), QoS::AtLeastOnce, b"1")
        .await;
    assert_eq!(device.read().await, puback(pkid));
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert!(emu.active_faults().is_empty());
}

#[tokio::test]
async fn drop_before_puback_records_the_message_and_closes_n_times() {
    let emu = start().await;
    emu.add_device("flaky", key(1));
    emu.inject_fault(
        Fault::DropBeforePuback {
            target: Target::devices(["flaky"]),
            times: 2,
        },
        None,
    )
    .await;
    // QoS 0 is not struck: there is no PUBACK to drop before.
    let mut device = RawDevice::connect(&emu, "flaky", &key(1)).await;
    device
        .publish(&topic_with_mid("flaky", "q0"), QoS::AtMostOnce, b"0")
        .await;
    device.assert_nothing_before_pingresp().await;
    // The device resends the same message after each drop, as an SDK does.
    for attempt in 1..=2u64 {
        if attempt > 1 {
            device = RawDevice::connect(&emu, "flaky", &key(1)).await;
        }
        device
            .publish(&topic_with_mid("flaky", "m"), QoS::AtLeastOnce, b"{}")
            .await;
        device.assert_closed().await;
        let stats = wait(&emu, "flaky", |s| s.disconnects == attempt).await;
        assert_eq!(
            stats.last_disconnect,
            Some(DisconnectReason::DroppedBeforePuback)
        );
    }
    assert!(emu.active_faults().is_empty(), "used up after two strikes");
    let mut device = RawDevice::connect(&emu, "flaky", &key(1)).await;
    let pkid = device
        .publish(&topic_with_mid("flaky", "m"), QoS::AtLeastOnce, b"{}")
        .await;
    assert_eq!(device.read().await, puback(pkid));
    let kept = emu.telemetry("flaky");
    let seen: Vec<(&str, bool)> = kept
        .iter()
        .map(|m| (m.message_id().unwrap(), m.duplicate))
        .collect();
    assert_eq!(
        seen,
        [("q0", false), ("m", false), ("m", true), ("m", true)]
    );
    let connections: std::collections::BTreeSet<u64> =
        kept[1..].iter().map(|m| m.connection).collect();
    assert_eq!(connections.len(), 3, "one message per connection");
}

#[tokio::test]
async fn quota_exceeded_closes_on_telemetry_without_recording_it() {
    let emu = start().await;
    emu.add_device("over", key(1));
    let quota = emu
        .inject_fault(Fault::QuotaExceeded(Target::devices(["over"])), None)
        .await;
    for (n, qos) in [QoS::AtLeastOnce, QoS::AtMostOnce].into_iter().enumerate() {
        // Connecting still works; the first telemetry publish ends it.
        let mut device = RawDevice::connect(&emu, "over", &key(1)).await;
        device
            .publish(&topic_with_mid("over", "m"), qos, b"{}")
            .await;
        device.assert_closed().await;
        let stats = wait(&emu, "over", |s| s.disconnects == n as u64 + 1).await;
        assert_eq!(stats.last_disconnect, Some(DisconnectReason::QuotaExceeded));
    }
    assert!(emu.telemetry("over").is_empty());
    assert_eq!(emu.device_stats("over").telemetry_messages, 0);

    assert!(emu.clear_fault(quota).await);
    let mut device = RawDevice::connect(&emu, "over", &key(1)).await;
    let pkid = device
        .publish(&topic_with_mid("over", "m"), QoS::AtLeastOnce, b"{}")
        .await;
    assert_eq!(device.read().await, puback(pkid));
    assert_eq!(emu.telemetry("over").len(), 1);
}

//! Cloud-to-device messages in the emulator (`iothub-protocol.md` 6.2), with raw MQTT devices
//! that choose when (and whether) to PUBACK: delivery with the property bag, completion, the
//! lock timeout and redelivery, dead-lettering, the queue limit, expiry, the lost-PUBACK fault,
//! and the service's REST route.

use std::time::{Duration, Instant};

use leafgate_emulator::{
    C2dError, C2dRecord, C2dSend, C2dState, Emulator, EmulatorConfig, Fault, MAX_C2D_BODY,
    MAX_C2D_QUEUE, Target,
};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{PubAck, Publish};

use super::raw::RawDevice;
use super::{Packet, WAIT, key, service, start, wait};

fn filter(id: &str) -> String {
    format!("devices/{id}/messages/devicebound/#")
}

/// An emulator whose locks time out after `lock` and that dead-letters after `max` deliveries.
async fn start_with(lock: Duration, max: u32) -> Emulator {
    Emulator::start(EmulatorConfig {
        c2d_lock_timeout: lock,
        c2d_max_delivery_count: max,
        ..EmulatorConfig::default()
    })
    .await
    .unwrap()
}

/// A registered device, connected, subscribed to its C2D messages.
async fn subscribed(emu: &Emulator, id: &str) -> RawDevice {
    emu.add_device(id, key(1));
    let mut device = RawDevice::connect(emu, id, &key(1)).await;
    device.subscribe(&[&filter(id)]).await;
    device
}

/// The next packet, which must be a QoS 1 PUBLISH.
async fn delivery(device: &mut RawDevice) -> Publish {
    match device.read().await {
        Some(Packet::Publish(publish)) => {
            assert_eq!(publish.qos, QoS::AtLeastOnce, "{publish:?}");
            publish
        }
        other => panic!("expected a C2D delivery, got {other:?}"),
    }
}

async fn puback(device: &mut RawDevice, pkid: u16) {
    device.send(Packet::PubAck(PubAck::new(pkid))).await;
}

fn message(mid: &str) -> C2dSend {
    C2dSend {
        body: format!("body of {mid}").into_bytes(),
        message_id: Some(mid.to_owned()),
        ..C2dSend::default()
    }
}

fn states(records: &[C2dRecord]) -> Vec<(&str, C2dState, u32)> {
    records
        .iter()
        .map(|r| (r.message_id.as_str(), r.state, r.delivery_count))
        .collect()
}

#[tokio::test]
async fn a_message_is_delivered_at_qos_1_with_its_bag_and_its_puback_completes_it() {
    let emu = start().await;
    let mut device = subscribed(&emu, "c-1").await;
    let mid = emu
        .send_c2d(
            "c-1",
            C2dSend {
                body: br#"{"cmd":"start"}"#.to_vec(),
                properties: vec![
                    ("mode".to_owned(), "eco & quiet".to_owned()),
                    ("unit".to_owned(), "°C".to_owned()),
                ],
                message_id: Some("m 1/a".to_owned()),
                correlation_id: Some("c-7".to_owned()),
                ttl: None,
            },
        )
        .unwrap();
    assert_eq!(mid, "m 1/a");
    let publish = delivery(&mut device).await;
    assert_eq!(
        publish.topic,
        "devices/c-1/messages/devicebound/%24.mid=m%201%2Fa&%24.to=%2Fdevices%2Fc-1%2Fmessages%2FdeviceBound&%24.cid=c-7&mode=eco%20%26%20quiet&unit=%C2%B0C"
    );
    assert_eq!(&publish.payload[..], br#"{"cmd":"start"}"#);
    assert_ne!(publish.pkid, 0);
    assert_eq!(states(&emu.c2d("c-1")), [("m 1/a", C2dState::Locked, 1)]);
    let sent = Instant::now();
    puback(&mut device, publish.pkid).await;
    let records = emu
        .wait_c2d("c-1", |r| r[0].state == C2dState::Completed, WAIT)
        .await
        .unwrap();
    assert_eq!(states(&records), [("m 1/a", C2dState::Completed, 1)]);
    assert!(records[0].completed_at.unwrap() >= tokio::time::Instant::from_std(sent));
    // A second PUBACK for the same id completes nothing more; nothing else is sent.
    puback(&mut device, publish.pkid).await;
    device.assert_nothing_before_pingresp().await;

    // Without a message id, one is generated and carried in the bag.
    let mid = emu.send_c2d("c-1", C2dSend::default()).unwrap();
    assert_eq!(mid.len(), 36, "{mid}");
    let publish = delivery(&mut device).await;
    assert_eq!(
        publish.topic,
        format!(
            "devices/c-1/messages/devicebound/%24.mid={mid}&%24.to=%2Fdevices%2Fc-1%2Fmessages%2FdeviceBound"
        )
    );
    assert!(publish.payload.is_empty());
}

#[tokio::test]
async fn messages_wait_for_the_subscription_and_arrive_in_queue_order() {
    let emu = start().await;
    emu.add_device("c-order", key(1));
    for mid in ["a", "b", "c"] {
        emu.send_c2d("c-order", message(mid)).unwrap();
    }
    let mut device = RawDevice::connect(&emu, "c-order", &key(1)).await;
    // Connected but not subscribed: nothing.
    device.assert_nothing_before_pingresp().await;
    assert!(
        emu.c2d("c-order")
            .iter()
            .all(|r| r.state == C2dState::Queued)
    );
    device.subscribe(&[&filter("c-order")]).await;
    let mut pkids = Vec::new();
    for mid in ["a", "b", "c"] {
        let publish = delivery(&mut device).await;
        assert!(
            publish.topic.contains(&format!("%24.mid={mid}&")),
            "{}",
            publish.topic
        );
        assert_eq!(publish.payload, format!("body of {mid}").as_bytes());
        pkids.push(publish.pkid);
    }
    // All three are locked at once; they may be completed in any order.
    let mut distinct = pkids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "{pkids:?}");
    puback(&mut device, pkids[2]).await;
    puback(&mut device, pkids[0]).await;
    let records = emu
        .wait_c2d(
            "c-order",
            |r| r.iter().filter(|m| m.state == C2dState::Completed).count() == 2,
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(
        states(&records),
        [
            ("a", C2dState::Completed, 1),
            ("b", C2dState::Locked, 1),
            ("c", C2dState::Completed, 1)
        ]
    );
}

#[tokio::test]
async fn without_a_puback_a_message_is_delivered_again_after_the_lock_timeout() {
    let lock = Duration::from_millis(300);
    let emu = start_with(lock, 10).await;
    let mut device = subscribed(&emu, "c-lock").await;
    emu.send_c2d("c-lock", message("m-1")).unwrap();
    let first = delivery(&mut device).await;
    let delivered = Instant::now();
    // No PUBACK: after the lock timeout the same message comes again, on the same connection.
    let second = delivery(&mut device).await;
    assert!(delivered.elapsed() >= lock - Duration::from_millis(20));
    assert_eq!(second.topic, first.topic, "same $.mid and bag");
    assert_eq!(second.payload, first.payload);
    assert_eq!(states(&emu.c2d("c-lock")), [("m-1", C2dState::Locked, 2)]);
    // A late PUBACK for the first delivery's id completes nothing if the id changed; the
    // second delivery's PUBACK completes it.
    if first.pkid != second.pkid {
        puback(&mut device, first.pkid).await;
        device.assert_nothing_before_pingresp().await;
        assert_eq!(emu.c2d("c-lock")[0].state, C2dState::Locked);
    }
    puback(&mut device, second.pkid).await;
    let records = emu
        .wait_c2d("c-lock", |r| r[0].state == C2dState::Completed, WAIT)
        .await
        .unwrap();
    assert_eq!(states(&records), [("m-1", C2dState::Completed, 2)]);
}

#[tokio::test]
async fn a_message_locked_by_a_lost_connection_comes_again_on_the_next_one() {
    let lock = Duration::from_millis(300);
    let emu = start_with(lock, 10).await;
    let mut device = subscribed(&emu, "c-next").await;
    emu.send_c2d("c-next", message("m-1")).unwrap();
    delivery(&mut device).await;
    drop(device);
    wait(&emu, "c-next", |s| !s.online).await;
    // CleanSession 0: the subscription is resumed, and the message is redelivered once its
    // lock has timed out.
    let mut device = RawDevice::connect(&emu, "c-next", &key(1)).await;
    let again = delivery(&mut device).await;
    assert!(again.topic.contains("%24.mid=m-1&"));
    assert_eq!(states(&emu.c2d("c-next")), [("m-1", C2dState::Locked, 2)]);
    puback(&mut device, again.pkid).await;
    emu.wait_c2d("c-next", |r| r[0].state == C2dState::Completed, WAIT)
        .await
        .unwrap();
}

#[tokio::test]
async fn after_the_maximum_delivery_count_a_message_is_dead_lettered() {
    let emu = start_with(Duration::from_millis(150), 3).await;
    let mut device = subscribed(&emu, "c-dead").await;
    emu.send_c2d("c-dead", message("m-1")).unwrap();
    for _ in 0..3 {
        delivery(&mut device).await;
    }
    let records = emu
        .wait_c2d("c-dead", |r| r[0].state == C2dState::DeadLettered, WAIT)
        .await
        .unwrap();
    assert_eq!(states(&records), [("m-1", C2dState::DeadLettered, 3)]);
    assert_eq!(records[0].completed_at, None);
    // Never delivered a fourth time.
    device.assert_nothing_before_pingresp().await;
}

#[tokio::test]
async fn lost_pubacks_make_the_hub_deliver_again_until_the_fault_ends() {
    let emu = start_with(Duration::from_millis(300), 10).await;
    let mut device = subscribed(&emu, "c-lost").await;
    let fault = emu
        .inject_fault(Fault::LoseC2dAcks(Target::devices(["c-lost"])), None)
        .await;
    emu.send_c2d("c-lost", message("cmd-1")).unwrap();
    let first = delivery(&mut device).await;
    puback(&mut device, first.pkid).await;
    device.assert_nothing_before_pingresp().await;
    assert_eq!(states(&emu.c2d("c-lost")), [("cmd-1", C2dState::Locked, 1)]);
    let second = delivery(&mut device).await;
    assert_eq!(second.topic, first.topic);
    assert_eq!(states(&emu.c2d("c-lost")), [("cmd-1", C2dState::Locked, 2)]);
    emu.clear_fault(fault).await;
    puback(&mut device, second.pkid).await;
    let records = emu
        .wait_c2d("c-lost", |r| r[0].state == C2dState::Completed, WAIT)
        .await
        .unwrap();
    assert_eq!(states(&records), [("cmd-1", C2dState::Completed, 2)]);
}

#[tokio::test]
async fn a_queue_holds_fifty_messages() {
    let emu = start().await;
    emu.add_device("c-full", key(1));
    for n in 0..MAX_C2D_QUEUE {
        emu.send_c2d("c-full", message(&n.to_string())).unwrap();
    }
    assert_eq!(
        emu.send_c2d("c-full", message("one too many")),
        Err(C2dError::QueueFull)
    );
    let response = service(&emu)
        .send_c2d("c-full", "x", &[("iothub-messageid", "http")])
        .await
        .unwrap();
    assert_eq!(
        (response.status, response.error_code()),
        (403, Some(403_004))
    );
    assert_eq!(
        response.error_name.as_deref(),
        Some("DeviceMaximumQueueDepthExceeded")
    );
    // A completed message frees its place.
    let mut device = RawDevice::connect(&emu, "c-full", &key(1)).await;
    device.subscribe(&[&filter("c-full")]).await;
    let first = delivery(&mut device).await;
    puback(&mut device, first.pkid).await;
    emu.wait_c2d("c-full", |r| r[0].state == C2dState::Completed, WAIT)
        .await
        .unwrap();
    emu.send_c2d("c-full", message("fits")).unwrap();
    assert_eq!(emu.c2d("c-full").len(), MAX_C2D_QUEUE + 1);
}

#[tokio::test]
async fn an_expired_message_is_dead_lettered_even_while_the_device_is_away() {
    let emu = start().await;
    emu.add_device("c-exp", key(1));
    let short = C2dSend {
        ttl: Some(Duration::from_millis(100)),
        ..message("short")
    };
    emu.send_c2d("c-exp", short).unwrap();
    emu.send_c2d("c-exp", message("long")).unwrap();
    let records = emu
        .wait_c2d("c-exp", |r| r[0].state == C2dState::DeadLettered, WAIT)
        .await
        .unwrap();
    assert_eq!(
        states(&records),
        [
            ("short", C2dState::DeadLettered, 0),
            ("long", C2dState::Queued, 0)
        ]
    );
    // Only the live one is delivered.
    let mut device = subscribed(&emu, "c-exp").await;
    let publish = delivery(&mut device).await;
    assert!(publish.topic.contains("%24.mid=long&"));
    device.assert_nothing_before_pingresp().await;
    // Removing the device drops its queue.
    assert!(emu.remove_device("c-exp"));
    assert!(emu.c2d("c-exp").is_empty());
    assert_eq!(
        emu.send_c2d("c-exp", message("x")),
        Err(C2dError::DeviceNotFound)
    );
}

#[tokio::test]
async fn the_service_sends_through_the_device_bound_route() {
    let emu = start().await;
    let mut device = subscribed(&emu, "c-http").await;
    let client = service(&emu);
    let response = client
        .send_c2d(
            "c-http",
            r#"{"cmd":"stop"}"#,
            &[
                ("iothub-messageid", "h-1"),
                ("iothub-correlationid", "corr"),
                ("iothub-app-reason", "maintenance"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(response.status, 204, "{:?}", response.body);
    let publish = delivery(&mut device).await;
    assert_eq!(
        publish.topic,
        "devices/c-http/messages/devicebound/%24.mid=h-1&%24.to=%2Fdevices%2Fc-http%2Fmessages%2FdeviceBound&%24.cid=corr&reason=maintenance"
    );
    assert_eq!(&publish.payload[..], br#"{"cmd":"stop"}"#);
    puback(&mut device, publish.pkid).await;
    emu.wait_c2d("c-http", |r| r[0].state == C2dState::Completed, WAIT)
        .await
        .unwrap();

    // An expiry in the past: accepted, dead at once, never delivered.
    let response = client
        .send_c2d(
            "c-http",
            "late",
            &[
                ("iothub-messageid", "h-2"),
                ("iothub-expiry", "2020-01-01T00:00:00Z"),
            ],
        )
        .await
        .unwrap();
    assert_eq!(response.status, 204);
    let records = emu
        .wait_c2d(
            "c-http",
            |r| r.len() == 2 && r[1].state == C2dState::DeadLettered,
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(records[1].delivery_count, 0);
    device.assert_nothing_before_pingresp().await;

    // The twin counts what is queued for the device.
    emu.add_device("c-count", key(1));
    emu.send_c2d("c-count", message("q")).unwrap();
    let twin = client.get_twin("c-count").await.unwrap().body;
    assert_eq!(twin["cloudToDeviceMessageCount"], 1);
}

#[tokio::test]
async fn the_device_bound_route_checks_auth_device_size_and_headers() {
    let emu = start().await;
    emu.add_device("c-svc", key(1));
    let client = service(&emu);
    let path = "/devices/c-svc/messages/deviceBound?api-version=2021-04-12";
    let anonymous = client.request("POST", path, None, &[], "x").await.unwrap();
    assert_eq!(
        (anonymous.status, anonymous.error_code()),
        (401, Some(401_003))
    );
    let unknown = client.send_c2d("nobody", "x", &[]).await.unwrap();
    assert_eq!((unknown.status, unknown.error_code()), (404, Some(404_001)));
    let big = vec![b'x'; MAX_C2D_BODY + 1];
    let too_big = client.send_c2d("c-svc", big, &[]).await.unwrap();
    assert_eq!((too_big.status, too_big.error_code()), (413, Some(413_001)));
    let bad_expiry = client
        .send_c2d("c-svc", "x", &[("iothub-expiry", "tomorrow")])
        .await
        .unwrap();
    assert_eq!(
        (bad_expiry.status, bad_expiry.error_code()),
        (400, Some(400_004))
    );
    let get = client
        .request("GET", path, Some(&client.token()), &[], "")
        .await
        .unwrap();
    assert_eq!(get.status, 405);
    // None of it was queued.
    assert!(emu.c2d("c-svc").is_empty());
    let exactly = client
        .send_c2d("c-svc", vec![b'x'; MAX_C2D_BODY], &[])
        .await
        .unwrap();
    assert_eq!(exactly.status, 204);
}

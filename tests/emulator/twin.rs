//! Device twins in the emulator (`iothub-protocol.md` 5), device side with raw MQTT clients and
//! service side in process and over HTTP: GET, reported patches with their versions and limits,
//! desired pushes, the twin throttles and faults, and what is recorded.

use std::time::Duration;

use leafgate_emulator::{
    DisconnectReason, Emulator, EmulatorConfig, Fault, Target, TwinError, TwinOp,
};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{PubAck, Publish};
use serde_json::{Value, json};

use super::raw::RawDevice;
use super::{Packet, WAIT, error_code, key, service, start, wait};

const RES: &str = "$iothub/twin/res/#";
const DESIRED: &str = "$iothub/twin/PATCH/properties/desired/#";

fn get(rid: &str) -> String {
    format!("$iothub/twin/GET/?$rid={rid}")
}

fn patch(rid: &str) -> String {
    format!("$iothub/twin/PATCH/properties/reported/?$rid={rid}")
}

/// The next packet, which must be a PUBLISH from the emulator.
async fn next_publish(device: &mut RawDevice) -> Publish {
    match device.read().await {
        Some(Packet::Publish(publish)) => publish,
        other => panic!("expected a PUBLISH, got {other:?}"),
    }
}

/// The body of a publish as JSON.
fn json_of(publish: &Publish) -> Value {
    serde_json::from_slice(&publish.payload).unwrap()
}

/// A registered device connected and subscribed to `filters`.
async fn device(emu: &Emulator, id: &str, filters: &[&str]) -> RawDevice {
    emu.add_device(id, key(1));
    let mut device = RawDevice::connect(emu, id, &key(1)).await;
    device.subscribe(filters).await;
    device
}

/// Publishes a reported patch at QoS 0 and returns the response.
async fn report(device: &mut RawDevice, rid: &str, body: &Value) -> Publish {
    device
        .publish(&patch(rid), QoS::AtMostOnce, body.to_string().as_bytes())
        .await;
    next_publish(device).await
}

#[tokio::test]
async fn get_answers_200_with_both_documents_and_their_versions() {
    let emu = start().await;
    let mut device = device(&emu, "tw-get", &[RES]).await;
    device.publish(&get("1"), QoS::AtMostOnce, b"").await;
    let response = next_publish(&mut device).await;
    assert_eq!(response.topic, "$iothub/twin/res/200/?$rid=1");
    assert_eq!(response.qos, QoS::AtMostOnce);
    assert_eq!(
        json_of(&response),
        json!({"desired": {"$version": 1}, "reported": {"$version": 1}})
    );
    // QoS 1 with a space for a body, as the Node SDK sends: PUBACK first, then the answer.
    let pkid = device
        .publish(&get("a1b2-c3"), QoS::AtLeastOnce, b" ")
        .await;
    assert_eq!(device.read().await, Some(Packet::PubAck(PubAck::new(pkid))));
    let response = next_publish(&mut device).await;
    assert_eq!(response.topic, "$iothub/twin/res/200/?$rid=a1b2-c3");
    let records = emu.twin_requests();
    assert_eq!(records.len(), 2);
    assert_eq!(
        (
            &records[1].device[..],
            records[1].op,
            &records[1].rid[..],
            records[1].status
        ),
        ("tw-get", TwinOp::Get, "a1b2-c3", Some(200))
    );
    assert!(records[0].at <= records[1].at);
}

#[tokio::test]
async fn a_reported_patch_answers_204_with_the_new_version_and_null_deletes() {
    let emu = start().await;
    let mut device = device(&emu, "tw-rep", &[RES]).await;
    let pkid = device
        .publish(
            &patch("7"),
            QoS::AtLeastOnce,
            br#"{"temp": 21.5, "fw": {"version": "1.2", "build": 7}}"#,
        )
        .await;
    assert_eq!(device.read().await, Some(Packet::PubAck(PubAck::new(pkid))));
    let response = next_publish(&mut device).await;
    assert_eq!(response.topic, "$iothub/twin/res/204/?$rid=7&$version=2");
    assert!(response.payload.is_empty());
    let response = report(
        &mut device,
        "8",
        &json!({"fw": {"build": null}, "temp": null}),
    )
    .await;
    assert_eq!(response.topic, "$iothub/twin/res/204/?$rid=8&$version=3");
    let expected = json!({"fw": {"version": "1.2"}, "$version": 3});
    // Applied before the answer went out: no wait needed.
    assert_eq!(emu.twin("tw-rep").unwrap().reported, expected);
    assert_eq!(
        emu.wait_reported("tw-rep", |r| r["$version"] == 3, WAIT)
            .await
            .unwrap(),
        expected
    );
    device.publish(&get("9"), QoS::AtMostOnce, b"").await;
    let twin = json_of(&next_publish(&mut device).await);
    assert_eq!(twin["reported"], expected);
    assert_eq!(twin["desired"], json!({"$version": 1}));
    let statuses: Vec<_> = emu
        .twin_requests()
        .iter()
        .map(|r| (r.op, r.status))
        .collect();
    assert_eq!(
        statuses,
        [
            (TwinOp::PatchReported, Some(204)),
            (TwinOp::PatchReported, Some(204)),
            (TwinOp::Get, Some(200))
        ]
    );
}

#[tokio::test]
async fn wait_reported_wakes_on_a_later_patch_and_times_out_otherwise() {
    let emu = start().await;
    let mut device = device(&emu, "tw-wait", &[RES]).await;
    let waiting = emu.wait_reported("tw-wait", |r| r["state"] == "ready", WAIT);
    let patched = async {
        report(&mut device, "1", &json!({"state": "booting"})).await;
        report(&mut device, "2", &json!({"state": "ready"})).await;
    };
    let (reported, ()) = tokio::join!(waiting, patched);
    assert_eq!(reported.unwrap()["$version"], 3);
    let short = Duration::from_millis(50);
    assert!(
        emu.wait_reported("tw-wait", |r| r["state"] == "off", short)
            .await
            .is_err()
    );
    assert!(emu.wait_reported("nobody", |_| true, short).await.is_err());
}

#[tokio::test]
async fn patches_breaking_the_limits_get_400004_and_change_nothing() {
    let emu = start().await;
    let mut device = device(&emu, "tw-lim", &[RES]).await;
    report(&mut device, "0", &json!({"keep": 1})).await;
    // The root plus 11 nested objects: depth 11.
    let mut deep = json!(1);
    for n in (0..12).rev() {
        deep = json!({ format!("l{n}"): deep });
    }
    let big = json!({"a": "x".repeat(4000), "b": "x".repeat(4000), "c": "x".repeat(4000),
        "d": "x".repeat(4000), "e": "x".repeat(4000), "f": "x".repeat(4000),
        "g": "x".repeat(4000), "h": "x".repeat(4000), "i": "x".repeat(1000)});
    let bad = [
        json!({"$version": 5}),
        json!({"a.b": 1}),
        json!({"s": "x".repeat(4097)}),
        json!({"n": 4_503_599_627_370_496_u64}),
        json!([1, 2]),
        deep,
        big,
    ];
    for (n, body) in bad.iter().enumerate() {
        let rid = format!("bad-{n}");
        let response = report(&mut device, &rid, body).await;
        assert_eq!(
            response.topic,
            format!("$iothub/twin/res/400/?$rid={rid}"),
            "{body:.60}"
        );
        let error = json_of(&response);
        assert_eq!(error["errorCode"], 400_004, "{error}");
        assert!(error["message"].as_str().is_some());
    }
    // Depth 10 below the root is the limit, and allowed.
    let mut ten = json!(1);
    for n in (0..11).rev() {
        ten = json!({ format!("l{n}"): ten });
    }
    let response = report(&mut device, "ten", &ten).await;
    assert_eq!(response.topic, "$iothub/twin/res/204/?$rid=ten&$version=3");
    // Malformed JSON is a 400 too.
    device
        .publish(&patch("junk"), QoS::AtMostOnce, b"{not json")
        .await;
    let response = next_publish(&mut device).await;
    assert_eq!(response.topic, "$iothub/twin/res/400/?$rid=junk");
    let reported = emu.twin("tw-lim").unwrap().reported;
    assert_eq!(reported["keep"], 1);
    assert_eq!(reported["$version"], 3);
    assert_eq!(reported.as_object().unwrap().len(), 3, "{reported}");
}

#[tokio::test]
async fn a_desired_update_is_pushed_with_its_version_to_a_subscribed_device() {
    let emu = start().await;
    let mut device = device(&emu, "tw-des", &[RES, DESIRED]).await;
    assert_eq!(
        emu.update_desired("tw-des", json!({"speed": 5, "mode": {"eco": true}})),
        Ok(2)
    );
    let push = next_publish(&mut device).await;
    assert_eq!(
        push.topic,
        "$iothub/twin/PATCH/properties/desired/?$version=2"
    );
    assert_eq!(push.qos, QoS::AtMostOnce);
    assert_eq!(
        json_of(&push),
        json!({"speed": 5, "mode": {"eco": true}, "$version": 2})
    );
    // Nulls delete, and reach the device as nulls.
    assert_eq!(emu.update_desired("tw-des", json!({"mode": null})), Ok(3));
    let push = next_publish(&mut device).await;
    assert_eq!(json_of(&push), json!({"mode": null, "$version": 3}));
    assert_eq!(
        emu.twin("tw-des").unwrap().desired,
        json!({"speed": 5, "$version": 3})
    );
    // A GET agrees.
    device.publish(&get("g"), QoS::AtMostOnce, b"").await;
    let twin = json_of(&next_publish(&mut device).await);
    assert_eq!(twin["desired"], json!({"speed": 5, "$version": 3}));

    assert_eq!(
        emu.update_desired("nobody", json!({"a": 1})),
        Err(TwinError::DeviceNotFound)
    );
    assert!(matches!(
        emu.update_desired("tw-des", json!({"$bad": 1})),
        Err(TwinError::InvalidPatch(_))
    ));
    assert_eq!(emu.twin("tw-des").unwrap().desired["$version"], 3);
    device.assert_nothing_before_pingresp().await;
}

#[tokio::test]
async fn nothing_reaches_a_device_that_did_not_subscribe() {
    let emu = start().await;
    // Subscribed to responses only: desired changes are not pushed, and never queued.
    let mut device = device(&emu, "tw-quiet", &[RES]).await;
    assert_eq!(emu.update_desired("tw-quiet", json!({"a": 1})), Ok(2));
    device.assert_nothing_before_pingresp().await;
    device.subscribe(&[DESIRED]).await;
    device.assert_nothing_before_pingresp().await;
    assert_eq!(emu.update_desired("tw-quiet", json!({"a": 2})), Ok(3));
    assert_eq!(
        next_publish(&mut device).await.topic,
        "$iothub/twin/PATCH/properties/desired/?$version=3"
    );
    // Offline: not queued for the next connection either.
    drop(device);
    wait(&emu, "tw-quiet", |s| !s.online).await;
    assert_eq!(emu.update_desired("tw-quiet", json!({"a": 3})), Ok(4));
    let mut device = RawDevice::connect(&emu, "tw-quiet", &key(1)).await;
    device.assert_nothing_before_pingresp().await;

    // Not subscribed to responses: the request is served (and recorded), the answer not sent.
    emu.add_device("tw-mute", key(1));
    let mut mute = RawDevice::connect(&emu, "tw-mute", &key(1)).await;
    mute.publish(&patch("p"), QoS::AtMostOnce, br#"{"x": 1}"#)
        .await;
    mute.assert_nothing_before_pingresp().await;
    let records = emu.twin_requests();
    assert_eq!(records.last().unwrap().status, Some(204));
    assert_eq!(emu.twin("tw-mute").unwrap().reported["x"], 1);
}

#[tokio::test]
async fn the_twin_survives_reconnects_and_goes_with_the_device() {
    let emu = start().await;
    let mut device = device(&emu, "tw-life", &[RES]).await;
    report(&mut device, "1", &json!({"n": 1})).await;
    emu.update_desired("tw-life", json!({"d": 1})).unwrap();
    drop(device);
    wait(&emu, "tw-life", |s| !s.online).await;
    // Re-keying keeps the twin; a CleanSession-0 reconnect resumes the subscription.
    emu.add_device("tw-life", key(1));
    let mut device = RawDevice::connect(&emu, "tw-life", &key(1)).await;
    device.publish(&get("2"), QoS::AtMostOnce, b"").await;
    assert_eq!(
        json_of(&next_publish(&mut device).await),
        json!({"desired": {"d": 1, "$version": 2}, "reported": {"n": 1, "$version": 2}})
    );
    assert!(emu.remove_device("tw-life"));
    assert_eq!(emu.twin("tw-life"), None);
    emu.add_device("tw-life", key(1));
    assert_eq!(
        emu.twin("tw-life").unwrap().reported,
        json!({"$version": 1})
    );
}

#[tokio::test]
async fn twin_reads_and_updates_beyond_the_hub_rate_get_429001() {
    let emu = Emulator::start(EmulatorConfig {
        twin_reads_per_s: Some(2),
        twin_updates_per_s: Some(1),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    let mut device = device(&emu, "tw-rate", &[RES]).await;
    // Five requests well within one second (each is a few milliseconds on loopback).
    let mut statuses = Vec::new();
    for rid in ["g1", "g2", "g3"] {
        device.publish(&get(rid), QoS::AtMostOnce, b"").await;
        statuses.push(next_publish(&mut device).await);
    }
    let first = report(&mut device, "p1", &json!({"a": 1})).await;
    let second = report(&mut device, "p2", &json!({"a": 2})).await;
    let topics: Vec<&str> = statuses.iter().map(|p| p.topic.as_str()).collect();
    assert_eq!(
        topics,
        [
            "$iothub/twin/res/200/?$rid=g1",
            "$iothub/twin/res/200/?$rid=g2",
            "$iothub/twin/res/429/?$rid=g3"
        ]
    );
    assert_eq!(json_of(&statuses[2])["errorCode"], 429_001);
    assert_eq!(first.topic, "$iothub/twin/res/204/?$rid=p1&$version=2");
    assert_eq!(second.topic, "$iothub/twin/res/429/?$rid=p2");
    assert_eq!(json_of(&second)["errorCode"], 429_001);
    assert_eq!(emu.twin("tw-rate").unwrap().reported["a"], 1, "not applied");
}

#[tokio::test]
async fn the_twin_throttle_fault_answers_429_until_cleared() {
    let emu = start().await;
    let mut device = device(&emu, "tw-thr", &[RES]).await;
    let mut other = device_of(&emu, "tw-free").await;
    let fault = emu
        .inject_fault(Fault::TwinThrottle(Target::devices(["tw-thr"])), None)
        .await;
    device.publish(&get("1"), QoS::AtMostOnce, b"").await;
    let response = next_publish(&mut device).await;
    assert_eq!(response.topic, "$iothub/twin/res/429/?$rid=1");
    assert_eq!(json_of(&response)["errorCode"], 429_001);
    let response = report(&mut device, "2", &json!({"a": 1})).await;
    assert_eq!(response.topic, "$iothub/twin/res/429/?$rid=2");
    assert_eq!(emu.twin("tw-thr").unwrap().reported, json!({"$version": 1}));
    // Another device is not targeted.
    other.publish(&get("x"), QoS::AtMostOnce, b"").await;
    assert_eq!(
        next_publish(&mut other).await.topic,
        "$iothub/twin/res/200/?$rid=x"
    );
    emu.clear_fault(fault).await;
    let response = report(&mut device, "3", &json!({"a": 1})).await;
    assert_eq!(response.topic, "$iothub/twin/res/204/?$rid=3&$version=2");
}

async fn device_of(emu: &Emulator, id: &str) -> RawDevice {
    device(emu, id, &[RES]).await
}

#[tokio::test]
async fn the_twin_silent_fault_records_requests_and_never_answers() {
    let emu = start().await;
    let mut device = device(&emu, "tw-sil", &[RES]).await;
    let fault = emu.inject_fault(Fault::TwinSilent(Target::All), None).await;
    let pkid = device.publish(&get("s1"), QoS::AtLeastOnce, b"").await;
    assert_eq!(device.read().await, Some(Packet::PubAck(PubAck::new(pkid))));
    device
        .publish(&patch("s2"), QoS::AtMostOnce, br#"{"a": 1}"#)
        .await;
    device.assert_nothing_before_pingresp().await;
    let records = emu
        .wait_twin_requests(|r| r.len() == 2, WAIT)
        .await
        .unwrap();
    assert_eq!(
        records.iter().map(|r| (r.op, r.status)).collect::<Vec<_>>(),
        [(TwinOp::Get, None), (TwinOp::PatchReported, None)]
    );
    assert_eq!(emu.twin("tw-sil").unwrap().reported["$version"], 1);
    emu.clear_fault(fault).await;
    device.publish(&get("s3"), QoS::AtMostOnce, b"").await;
    assert_eq!(
        next_publish(&mut device).await.topic,
        "$iothub/twin/res/200/?$rid=s3"
    );
    assert!(
        emu.wait_twin_requests(|r| r.len() == 4, Duration::from_millis(50))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_malformed_twin_topic_closes_the_connection() {
    let emu = start().await;
    for (n, topic) in [
        "$iothub/twin/GET/?rid=1",
        "$iothub/twin/GET/?$rid=",
        "$iothub/twin/PATCH/properties/desired/?$rid=1",
        "$iothub/twin/DELETE/?$rid=1",
    ]
    .into_iter()
    .enumerate()
    {
        let mut device = device(&emu, "tw-bad", &[RES]).await;
        device.publish(topic, QoS::AtMostOnce, b"{}").await;
        device.assert_closed().await;
        let stats = wait(&emu, "tw-bad", |s| s.disconnects == n as u64 + 1).await;
        assert!(
            matches!(stats.last_disconnect, Some(DisconnectReason::ProtocolViolation(ref why)) if why.contains("twin")),
            "{topic}: {:?}",
            stats.last_disconnect
        );
    }
    assert!(emu.twin_requests().is_empty());
}

#[tokio::test]
async fn the_service_reads_and_patches_the_twin_over_http() {
    let emu = start().await;
    let mut device = device(&emu, "tw-http", &[RES, DESIRED]).await;
    report(&mut device, "1", &json!({"temp": 20})).await;
    let client = service(&emu);

    let response = client.get_twin("tw-http").await.unwrap();
    assert_eq!(response.status, 200, "{:?}", response.body);
    let twin = response.body;
    assert_eq!(twin["deviceId"], "tw-http");
    assert_eq!(twin["version"], 2);
    assert_eq!(twin["etag"], "AAAAAAAAAAI=");
    assert_eq!(twin["status"], "enabled");
    assert_eq!(twin["connectionState"], "Connected");
    assert_eq!(
        twin["properties"],
        json!({"desired": {"$version": 1}, "reported": {"temp": 20, "$version": 2}})
    );

    // PATCH merges desired and tags, and the device hears of the desired change.
    let body =
        json!({"tags": {"site": "hall A"}, "properties": {"desired": {"speed": 5, "mode": "eco"}}});
    let response = client.update_twin("tw-http", &body).await.unwrap();
    assert_eq!(response.status, 200, "{:?}", response.body);
    assert_eq!(
        response.body["properties"]["desired"],
        json!({"speed": 5, "mode": "eco", "$version": 2})
    );
    assert_eq!(response.body["tags"], json!({"site": "hall A"}));
    let push = next_publish(&mut device).await;
    assert_eq!(
        push.topic,
        "$iothub/twin/PATCH/properties/desired/?$version=2"
    );
    assert_eq!(
        json_of(&push),
        json!({"speed": 5, "mode": "eco", "$version": 2})
    );

    // PUT replaces: the device is told what went (null) and what came.
    let body = json!({"properties": {"desired": {"speed": 7}}});
    let response = client.replace_twin("tw-http", &body).await.unwrap();
    assert_eq!(response.status, 200, "{:?}", response.body);
    assert_eq!(
        response.body["properties"]["desired"],
        json!({"speed": 7, "$version": 3})
    );
    assert_eq!(response.body["tags"], json!({}));
    let push = next_publish(&mut device).await;
    assert_eq!(
        json_of(&push),
        json!({"speed": 7, "mode": null, "$version": 3})
    );
    assert_eq!(
        emu.twin("tw-http").unwrap().desired,
        json!({"speed": 7, "$version": 3})
    );

    // A twin read with GET can be sent back as it is ($version and $metadata are ignored).
    let read = client.get_twin("tw-http").await.unwrap().body;
    let response = client.update_twin("tw-http", &read).await.unwrap();
    assert_eq!(response.status, 200, "{:?}", response.body);
    assert_eq!(response.body["properties"]["desired"]["$version"], 4);
    next_publish(&mut device).await;

    // If-Match: the current etag passes, another one is 412.
    let etag = format!("\"{}\"", response.body["etag"].as_str().unwrap());
    let path = "/twins/tw-http?api-version=2021-04-12";
    let auth = client.token();
    let change = json!({"properties": {"desired": {"speed": 8}}}).to_string();
    let ok = client
        .request(
            "PATCH",
            path,
            Some(&auth),
            &[("If-Match", &etag)],
            change.clone(),
        )
        .await
        .unwrap();
    assert_eq!(ok.status, 200);
    next_publish(&mut device).await;
    let stale = client
        .request("PATCH", path, Some(&auth), &[("If-Match", &etag)], change)
        .await
        .unwrap();
    assert_eq!((stale.status, stale.error_code()), (412, Some(412_001)));
    device.assert_nothing_before_pingresp().await;
}

#[tokio::test]
async fn twin_routes_check_auth_device_and_body_like_the_hub() {
    let emu = start().await;
    emu.add_device("tw-svc", key(1));
    let client = service(&emu);
    let path = "/twins/tw-svc?api-version=2021-04-12";
    for method in ["GET", "PATCH", "PUT"] {
        let response = client.request(method, path, None, &[], "{}").await.unwrap();
        assert_eq!(
            (response.status, response.error_code()),
            (401, Some(401_003)),
            "{method}"
        );
        assert_eq!(response.error_name.as_deref(), Some("IoTHubUnauthorized"));
    }
    let auth = client.token();
    for method in ["GET", "PATCH", "PUT"] {
        let response = client
            .request(
                method,
                "/twins/nobody?api-version=2021-04-12",
                Some(&auth),
                &[],
                r#"{"properties":{"desired":{"a":1}}}"#,
            )
            .await
            .unwrap();
        assert_eq!(
            (response.status, response.error_code()),
            (404, Some(404_001)),
            "{method}"
        );
        assert_eq!(response.error_name.as_deref(), Some("DeviceNotFound"));
    }
    for body in [
        "",
        "[]",
        r#"{"properties":{"desired":{"a.b":1}}}"#,
        r#"{"properties":{"desired":[1]}}"#,
    ] {
        let response = client
            .request("PATCH", path, Some(&auth), &[], body)
            .await
            .unwrap();
        assert_eq!(
            (response.status, error_code(&response.body)),
            (400, 400_004),
            "{body}"
        );
    }
    let no_version = client
        .request("GET", "/twins/tw-svc", Some(&auth), &[], "")
        .await
        .unwrap();
    assert_eq!(
        (no_version.status, no_version.error_code()),
        (400, Some(400_001))
    );
    let delete = client
        .request("DELETE", path, Some(&auth), &[], "")
        .await
        .unwrap();
    assert_eq!(delete.status, 405);
    assert_eq!(emu.twin("tw-svc").unwrap().desired, json!({"$version": 1}));
}

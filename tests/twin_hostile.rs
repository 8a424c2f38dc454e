//! Device twins and cloud-to-device commands against the raw peer of `hub_hostile`, which does
//! what the emulator never would: throttles or ignores twin requests, sends desired versions
//! out of order and with gaps, delivers a command again after the connection it was
//! acknowledged on is gone.

use std::time::Duration;

use leafgate_sim::modbus::{Fault, Registers, TcpServer};
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Packet, PubAck, Publish};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::hub_hostile::{RawConn, RawHub, request};

const TWIN: &str = "[twin]\nrequest_timeout_ms = 1000\nreport_interval_ms = 100\n[c2d]\n";

/// A desired property on holding register 10 (at most 3000), and a method on register 20.
const DEVICE: &str = r#"
[[device.desired]]
name = "speed"
[[device.desired.step]]
op = "write"
table = "holding"
address = 10
fields = [{ name = "speed", type = "u16", max = 3000 }]

[[device.method]]
name = "setSpeed"
[[device.method.step]]
op = "write"
table = "holding"
address = 20
fields = [{ name = "rpm", type = "u16" }]
"#;

/// The next PUBLISH leafgate sends; SUBSCRIBEs are granted and pings answered on the way.
async fn publish(conn: &mut RawConn) -> Publish {
    loop {
        match conn.next().await {
            Packet::Publish(p) => return p,
            Packet::Subscribe(sub) => conn.suback(&sub).await,
            Packet::PingReq => conn.send(&[Packet::PingResp]).await,
            _ => {}
        }
    }
}

/// The next twin request: ("GET" or "PATCH", rid, body).
async fn twin_request(conn: &mut RawConn) -> (String, String, Value) {
    loop {
        let p = publish(conn).await;
        let kind = if p.topic.starts_with("$iothub/twin/GET/") {
            "GET"
        } else if p
            .topic
            .starts_with("$iothub/twin/PATCH/properties/reported/")
        {
            "PATCH"
        } else {
            continue;
        };
        let rid = p.topic.rsplit_once("$rid=").unwrap().1.to_owned();
        let body = if p.payload.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&p.payload).unwrap()
        };
        return (kind.to_owned(), rid, body);
    }
}

fn answer(status: u16, rid: &str, body: &Value) -> Packet {
    let body = if body.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(body).unwrap()
    };
    Packet::Publish(Publish::new(
        format!("$iothub/twin/res/{status}/?$rid={rid}&$version=2"),
        QoS::AtMostOnce,
        body,
    ))
}

fn desired(version: u64, patch: &Value) -> Packet {
    let mut body = patch.clone();
    body["$version"] = json!(version);
    Packet::Publish(Publish::new(
        format!("$iothub/twin/PATCH/properties/desired/?$version={version}"),
        QoS::AtMostOnce,
        serde_json::to_vec(&body).unwrap(),
    ))
}

/// Answers PATCHes with 204 until one carries `key` with `pred` true; returns its value.
async fn patched(conn: &mut RawConn, key: &str, pred: impl Fn(&Value) -> bool) -> Value {
    loop {
        let (kind, rid, body) = twin_request(conn).await;
        assert_eq!(kind, "PATCH", "unexpected twin {kind}");
        conn.send(&[answer(204, &rid, &Value::Null)]).await;
        if let Some(v) = body.get(key)
            && pred(v)
        {
            return v.clone();
        }
    }
}

/// Connects, grants the subscriptions, and answers the first GET with `document`.
async fn synced(hub: &RawHub, document: &Value) -> RawConn {
    let mut conn = hub.accept().await;
    let sub = conn.subscribe().await;
    conn.suback(&sub).await;
    let (kind, rid, _) = twin_request(&mut conn).await;
    assert_eq!(kind, "GET");
    conn.send(&[answer(200, &rid, document)]).await;
    conn
}

fn writes_to(regs: &Registers, address: u16) -> usize {
    regs.requests()
        .iter()
        .filter(|r| matches!(r.function, 6 | 16) && r.address == address)
        .count()
}

/// Twin requests get their own subscriptions (QoS 0) and cloud-to-device its own at QoS 1, in
/// the one SUBSCRIBE; a GET answered 429 is not repeated for at least 10 s (the hub's throttled
/// profile), while direct methods are served meanwhile and counted in the health view.
#[tokio::test]
async fn a_throttled_twin_read_backs_off_ten_seconds_while_methods_are_served() {
    let regs = Registers::with_units([1]);
    regs.set_holding(1, 7, &[42]);
    let plc = TcpServer::start(regs.clone()).await.unwrap();
    let hub = RawHub::start_with(&plc, TWIN, "", DEVICE).await;
    let gateway = hub.gateway();
    let mut conn = hub.accept().await;
    let sub = conn.subscribe().await;
    let filters: Vec<(&str, QoS)> = sub
        .filters
        .iter()
        .map(|f| (f.path.as_str(), f.qos))
        .collect();
    for wanted in [
        ("$iothub/methods/POST/#", QoS::AtMostOnce),
        ("$iothub/twin/res/#", QoS::AtMostOnce),
        ("$iothub/twin/PATCH/properties/desired/#", QoS::AtMostOnce),
        ("devices/dev-1/messages/devicebound/#", QoS::AtLeastOnce),
    ] {
        assert!(filters.contains(&wanted), "{wanted:?} not in {filters:?}");
    }
    conn.suback(&sub).await;
    let (kind, rid, _) = twin_request(&mut conn).await;
    assert_eq!(kind, "GET");
    let throttled = Instant::now();
    conn.send(&[answer(429, &rid, &json!({"errorCode": 429001}))])
        .await;

    let read = json!({"table": "holding", "address": 7, "count": 1});
    conn.send(&[request("modbus.read", "m1", &read)]).await;
    let reply = publish(&mut conn).await;
    assert_eq!(reply.topic, "$iothub/methods/res/200/?$rid=m1");

    let (kind, rid, _) = twin_request(&mut conn).await;
    assert_eq!(kind, "GET");
    let waited = throttled.elapsed();
    assert!(
        waited >= Duration::from_secs(10),
        "GET repeated {waited:?} after a 429"
    );
    conn.send(&[answer(
        200,
        &rid,
        &json!({"desired": {"$version": 1}, "reported": {"$version": 1}}),
    )])
    .await;
    let health = patched(&mut conn, "leafgate", |_| true).await;
    assert_eq!(health["state"], "online");
    assert_eq!(health["bus"], "plc");
    assert_eq!(health["methods"], json!({"200": 1}));
    drop(gateway);
}

/// A hub that never answers a twin request: the request is given up after
/// `request_timeout_ms` and sent again, and the device stays connected and serving.
#[tokio::test]
async fn an_unanswered_twin_read_is_sent_again_after_the_request_timeout() {
    let plc = TcpServer::start(Registers::with_units([1])).await.unwrap();
    let hub = RawHub::start_with(&plc, TWIN, "", DEVICE).await;
    let gateway = hub.gateway();
    let mut conn = hub.accept().await;
    let (kind, first, _) = twin_request(&mut conn).await;
    assert_eq!(kind, "GET");
    let sent = Instant::now();
    let (kind, second, _) = twin_request(&mut conn).await;
    assert_eq!(kind, "GET");
    assert_ne!(first, second, "a new request gets a new rid");
    assert!(
        sent.elapsed() >= Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
    // The answer to the abandoned request is ignored; the new one's is taken.
    conn.send(&[
        answer(200, &first, &json!({"desired": {"$version": 1}})),
        answer(
            200,
            &second,
            &json!({"desired": {"$version": 1}, "reported": {"$version": 1}}),
        ),
    ])
    .await;
    let health = patched(&mut conn, "leafgate", |_| true).await;
    assert_eq!(health["unit"], 1);
    drop(gateway);
}

/// The reconnect flow of the twin: the GET's desired value is applied and acknowledged with the
/// GET's version; a notification at or below it is ignored; an invalid value is acknowledged
/// 400 without a bus transaction; a notification that skips a version makes leafgate read the
/// whole twin again, and what it skipped is applied.
#[tokio::test]
async fn desired_versions_are_applied_in_order_and_a_gap_reads_the_twin_again() {
    let regs = Registers::with_units([1]);
    let plc = TcpServer::start(regs.clone()).await.unwrap();
    let hub = RawHub::start_with(&plc, TWIN, "", DEVICE).await;
    let gateway = hub.gateway();
    let document = json!({"desired": {"speed": 100, "$version": 5}, "reported": {"$version": 1}});
    let mut conn = synced(&hub, &document).await;
    let ack = patched(&mut conn, "speed", |_| true).await;
    assert_eq!(
        ack,
        json!({"value": 100, "ac": 200, "av": 5, "ad": "applied"})
    );
    assert_eq!(regs.holding(1, 10, 1), [100]);

    // A stale notification (version 5 again) and the next one, in one write.
    conn.send(&[
        desired(5, &json!({"speed": 300})),
        desired(6, &json!({"speed": 200})),
    ])
    .await;
    let ack = patched(&mut conn, "speed", |v| v["av"] == 6).await;
    assert_eq!(ack["value"], 200);
    assert_eq!(regs.holding(1, 10, 1), [200]);
    assert_eq!(writes_to(&regs, 10), 2, "the stale value 300 was written");

    // Out of range: acknowledged 400, never written.
    conn.send(&[desired(7, &json!({"speed": 5000}))]).await;
    let ack = patched(&mut conn, "speed", |v| v["av"] == 7).await;
    assert_eq!(ack["ac"], 400, "{ack}");
    assert_eq!(ack["value"], 5000);
    assert_eq!(writes_to(&regs, 10), 2, "an invalid value reached the bus");

    // Version 9 follows 7: version 8 was missed. leafgate reads the twin again.
    conn.send(&[desired(9, &json!({"speed": 250}))]).await;
    let (kind, rid, _) = twin_request(&mut conn).await;
    assert_eq!(kind, "GET", "a version gap must read the twin again");
    conn.send(&[answer(
        200,
        &rid,
        &json!({
            "desired": {"speed": 250, "$version": 9},
            "reported": {"speed": {"value": 5000, "ac": 400, "av": 7}, "$version": 4},
        }),
    )])
    .await;
    let ack = patched(&mut conn, "speed", |v| v["av"] == 9).await;
    assert_eq!(ack["ac"], 200);
    assert_eq!(regs.holding(1, 10, 1), [250]);
    drop(gateway);
}

fn c2d(mid: &str, method: Option<&str>, pkid: u16, body: &Value) -> Packet {
    let mut topic = format!(
        "devices/dev-1/messages/devicebound/%24.mid={mid}&%24.to=%2Fdevices%2Fdev-1%2Fmessages%2FdeviceBound"
    );
    if let Some(m) = method {
        topic.push_str(&format!("&method={m}"));
    }
    let mut p = Publish::new(topic, QoS::AtLeastOnce, serde_json::to_vec(body).unwrap());
    p.pkid = pkid;
    Packet::Publish(p)
}

/// The PUBACKs of packets `pkids`, in any order, as they came; other packets are handled on the way (twin
/// requests answered with an empty twin, PATCHes with 204).
async fn pubacks(conn: &mut RawConn, pkids: &[u16]) -> Vec<u16> {
    let mut waiting = pkids.to_vec();
    let mut order = Vec::new();
    while !waiting.is_empty() {
        match conn.next().await {
            Packet::PubAck(PubAck { pkid, .. }) if waiting.contains(&pkid) => {
                waiting.retain(|p| *p != pkid);
                order.push(pkid);
            }
            Packet::PubAck(other) => panic!("unexpected {other:?}"),
            Packet::Subscribe(sub) => conn.suback(&sub).await,
            Packet::PingReq => conn.send(&[Packet::PingResp]).await,
            Packet::Publish(p) if p.topic.starts_with("$iothub/twin/") => {
                let rid = p.topic.rsplit_once("$rid=").unwrap().1.to_owned();
                let status = if p.topic.contains("/GET/") { 200 } else { 204 };
                conn.send(&[answer(status, &rid, &json!({"desired": {"$version": 1}}))])
                    .await;
            }
            _ => {}
        }
    }
    order
}

/// A command is acknowledged only once it ran (the unit answers its write 500 ms late, and the
/// PUBACK waits for it); delivered again on a new connection, it is acknowledged without running
/// twice; a command naming an unknown method, or none, is acknowledged and dropped.
#[tokio::test]
async fn a_command_is_acknowledged_after_it_ran_and_a_redelivery_does_not_run_it_again() {
    let regs = Registers::with_units([1]);
    let plc = TcpServer::start(regs.clone()).await.unwrap();
    let hub = RawHub::start_with(&plc, TWIN, "", DEVICE).await;
    let gateway = hub.gateway();
    let mut conn = hub.accept().await;
    let sub = conn.subscribe().await;
    conn.suback(&sub).await;

    regs.set_fault_times(1, Fault::Delay(Duration::from_millis(500)), 1);
    let sent = Instant::now();
    conn.send(&[c2d("c-1", Some("setSpeed"), 7, &json!({"rpm": 1500}))])
        .await;
    let _ = pubacks(&mut conn, &[7]).await;
    assert!(
        sent.elapsed() >= Duration::from_millis(500),
        "acknowledged {:?} after delivery, before the write was answered",
        sent.elapsed()
    );
    assert_eq!(regs.holding(1, 20, 1), [1500]);

    drop(conn);
    let mut conn = hub.accept().await;
    let sub = conn.subscribe().await;
    conn.suback(&sub).await;
    conn.send(&[c2d("c-1", Some("setSpeed"), 3, &json!({"rpm": 1500}))])
        .await;
    let _ = pubacks(&mut conn, &[3]).await;
    conn.send(&[
        c2d("c-2", Some("noSuchMethod"), 4, &json!({})),
        c2d("c-3", None, 5, &json!({})),
    ])
    .await;
    let _ = pubacks(&mut conn, &[4, 5]).await;
    assert_eq!(writes_to(&regs, 20), 1, "the redelivered command ran again");
    drop(gateway);
}

/// The health view follows the circuit breaker: a unit that stops answering is reported
/// `down` once it is marked down, and `online` again once it answers, each with a new `since`;
/// the failures are counted and the last one named.
#[tokio::test]
async fn reported_health_follows_a_unit_going_down_and_coming_back() {
    let regs = Registers::with_units([1]);
    let plc = TcpServer::start(regs.clone()).await.unwrap();
    let hub = RawHub::start_with(
        &plc,
        TWIN,
        "timeout_ms = 100\ndown_after = 2\ndown_for_ms = 200",
        DEVICE,
    )
    .await;
    let gateway = hub.gateway();
    let document = json!({"desired": {"$version": 1}, "reported": {"$version": 1}});
    let mut conn = synced(&hub, &document).await;
    let first = patched(&mut conn, "leafgate", |h| h["state"] == "online").await;

    regs.set_fault(1, Fault::Silent);
    let read = json!({"table": "holding", "address": 7, "count": 1});
    for rid in ["t1", "t2"] {
        conn.send(&[request("modbus.read", rid, &read)]).await;
    }
    let down = patched(&mut conn, "leafgate", |h| h["state"] == "down").await;
    assert_ne!(down["since"], first["since"]);
    assert_eq!(down["lastError"]["status"], 504, "{down}");
    assert_eq!(down["lastError"]["method"], "modbus.read");

    regs.clear_faults(1);
    // After down_for_ms the next request probes the unit; its answer brings it back.
    tokio::time::sleep(Duration::from_millis(300)).await;
    conn.send(&[request("modbus.read", "t3", &read)]).await;
    // The unit is back as the bus reads its answer, and the request is counted as its reply
    // goes out: one or two PATCHes.
    let up = patched(&mut conn, "leafgate", |h| {
        h["state"] == "online" && h["methods"]["200"] == 1
    })
    .await;
    assert_ne!(up["since"], down["since"]);
    assert_eq!(up["methods"]["504"], 2, "{up}");
    drop(gateway);
}

/// PUBACKs leave in the order the commands were delivered, as MQTT requires (IoT Hub drops a
/// connection that acknowledges out of order): a command that fails at once waits for the slow
/// write delivered before it.
#[tokio::test]
async fn pubacks_follow_the_delivery_order_even_when_a_later_command_ends_first() {
    let regs = Registers::with_units([1]);
    let plc = TcpServer::start(regs.clone()).await.unwrap();
    let hub = RawHub::start_with(&plc, TWIN, "", DEVICE).await;
    let gateway = hub.gateway();
    let mut conn = hub.accept().await;
    let sub = conn.subscribe().await;
    conn.suback(&sub).await;

    regs.set_fault_times(1, Fault::Delay(Duration::from_millis(300)), 1);
    conn.send(&[
        c2d("slow", Some("setSpeed"), 11, &json!({"rpm": 900})),
        c2d("quick", Some("noSuchMethod"), 12, &json!({})),
    ])
    .await;
    let order = pubacks(&mut conn, &[11, 12]).await;
    assert_eq!(order, [11, 12], "acknowledged out of delivery order");
    assert_eq!(regs.holding(1, 20, 1), [900]);
    drop(gateway);
}

/// A desired value the unit did not take because it was silent (504) is written once the unit
/// answers again, and acknowledged 200 at the same version.
#[tokio::test]
async fn a_desired_value_the_unit_missed_is_written_when_it_answers_again() {
    let regs = Registers::with_units([1]);
    let plc = TcpServer::start(regs.clone()).await.unwrap();
    let hub = RawHub::start_with(
        &plc,
        TWIN,
        "timeout_ms = 100\ndown_after = 1\ndown_for_ms = 200",
        DEVICE,
    )
    .await;
    let gateway = hub.gateway();
    let document = json!({"desired": {"$version": 1}, "reported": {"$version": 1}});
    let mut conn = synced(&hub, &document).await;

    regs.set_fault(1, Fault::Silent);
    conn.send(&[desired(2, &json!({"speed": 500}))]).await;
    let failed = patched(&mut conn, "speed", |v| v["av"] == 2).await;
    assert_eq!(failed["ac"], 504, "{failed}");
    assert_eq!(regs.holding(1, 10, 1), [0]);

    regs.clear_faults(1);
    // After down_for_ms a request probes the unit; its answer brings the unit back online.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let read = json!({"table": "holding", "address": 7, "count": 1});
    conn.send(&[request("modbus.read", "probe", &read)]).await;
    let probed = Instant::now();
    let applied = patched(&mut conn, "speed", |v| v["av"] == 2 && v["ac"] == 200).await;
    // Written as the unit came back, not by the 30 s retry.
    assert!(
        probed.elapsed() < Duration::from_secs(10),
        "{:?}",
        probed.elapsed()
    );
    assert_eq!(applied["value"], 500);
    assert_eq!(regs.holding(1, 10, 1), [500]);
    drop(gateway);
}

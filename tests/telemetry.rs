//! Telemetry end to end: groups polled from simulated hardware, sent by the real gateway as
//! device-to-cloud messages to the emulated hub, read back from the hub's side.

use std::collections::BTreeMap;
use std::time::Duration;

use leafgate::hub::d2c;
use leafgate_emulator::{Event, Fault, Target};
use leafgate_sim::modbus::{Registers, TcpServer};
use serde_json::Value;
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::gateway::{Rig, device};

const WAIT: Duration = Duration::from_secs(20);

/// One message as the hub received it.
#[derive(Debug, Clone)]
struct Received {
    properties: BTreeMap<String, String>,
    body: Value,
    /// The reading's number, from its message id `{run}-{n}`.
    seq: u64,
}

/// The next telemetry message of `device`, decoded.
async fn next(events: &mut broadcast::Receiver<Event>, device: &str) -> Received {
    let until = Instant::now() + WAIT;
    loop {
        let event = tokio::time::timeout_at(until, events.recv())
            .await
            .unwrap_or_else(|_| panic!("no telemetry from {device} within {WAIT:?}"))
            .expect("the emulator's event stream ended or lagged");
        if let Event::Telemetry {
            device: from,
            topic,
            payload,
        } = event
            && from == device
        {
            let (id, properties) = d2c::parse(&topic).unwrap();
            assert_eq!(id, device);
            let properties: BTreeMap<String, String> = properties.into_iter().collect();
            let seq = properties["$.mid"]
                .rsplit_once('-')
                .and_then(|(_, n)| n.parse().ok())
                .unwrap_or_else(|| panic!("message id {:?} is not run-n", properties["$.mid"]));
            let body = serde_json::from_slice(&payload).unwrap();
            return Received {
                properties,
                body,
                seq,
            };
        }
    }
}

fn tcp_bus(addr: std::net::SocketAddr) -> String {
    format!(
        "[[bus]]\nid = \"plc\"\nkind = \"modbus_tcp\"\naddress = \"{addr}\"\ntimeout_ms = 500\n"
    )
}

const METER: &str = r#"
raw_methods = true
unit = 1
[[device.telemetry]]
name = "power"
interval_ms = 100
properties = { source = "meter", "site name" = "Hall A" }
[[device.telemetry.step]]
op = "read"
table = "input"
address = 0
fields = [{ name = "voltage", type = "f32" }, { name = "state", type = "u16" }]
"#;

#[tokio::test]
async fn readings_arrive_as_d2c_messages_with_their_properties_and_timestamp() {
    let regs = Registers::with_units([1]);
    let bits = 230.5f32.to_bits();
    regs.set_input(1, 0, &[(bits >> 16) as u16, bits as u16, 3]);
    let plc = TcpServer::start(regs).await.unwrap();
    let rig = Rig::start(
        &["meter-1"],
        "",
        &format!("{}{}", tcp_bus(plc.addr()), device("meter-1", "plc", METER)),
    )
    .await;
    let mut events = rig.emu.events();
    let first = next(&mut events, "meter-1").await;
    let p = &first.properties;
    assert_eq!(p["$.ct"], "application/json");
    assert_eq!(p["$.ce"], "utf-8");
    assert_eq!(p["group"], "power");
    assert_eq!(p["source"], "meter");
    assert_eq!(p["site name"], "Hall A");
    assert_eq!(first.body["voltage"], 230.5);
    assert_eq!(first.body["state"], 3);
    assert_eq!(first.body["ts"].as_str(), Some(p["$.ctime"].as_str()));
    assert!(
        p["$.ctime"].ends_with('Z') && p["$.ctime"].len() == 24,
        "{p:?}"
    );
    // Each reading its own message, numbered in order.
    let second = next(&mut events, "meter-1").await;
    let third = next(&mut events, "meter-1").await;
    assert_eq!((second.seq, third.seq), (first.seq + 1, first.seq + 2));
    assert_ne!(first.properties["$.mid"], second.properties["$.mid"]);
    // Methods still work on a polled device.
    let (status, body) = rig
        .call(
            "meter-1",
            "modbus.read",
            serde_json::json!({"table": "input", "address": 2, "count": 1}),
        )
        .await;
    assert_eq!((status, body), (200, serde_json::json!({"values": [3]})));
}

/// The hub goes away for a while; the readings taken meanwhile wait in the device's backlog and
/// all arrive after the reconnect, in order. A reading sent twice (its PUBACK lost with the
/// connection) carries the same message id and body both times.
#[tokio::test]
async fn readings_taken_while_the_hub_is_away_all_arrive_after_it_returns_in_order() {
    let regs = Registers::with_units([1]);
    regs.set_input(1, 0, &[0x4366, 0x8000, 1]);
    let plc = TcpServer::start(regs.clone()).await.unwrap();
    let rig = Rig::start(
        &["meter-1"],
        "",
        &format!("{}{}", tcp_bus(plc.addr()), device("meter-1", "plc", METER)),
    )
    .await;
    let mut events = rig.emu.events();
    let before = next(&mut events, "meter-1").await;

    // Away: every reconnect is hung up on, and the current connection dropped.
    let away = rig.emu.inject_fault(Fault::Hangup(Target::All), None).await;
    rig.emu.drop_all_connections();
    // Ten more polls reach the hardware while the hub is away (each a reading).
    let polled = regs.request_count();
    regs.wait_requests(polled + 10).await;
    assert!(rig.emu.clear_fault(away).await);

    let mut got: BTreeMap<u64, Received> = BTreeMap::new();
    got.insert(before.seq, before.clone());
    let mut order = vec![before.seq];
    while got.len() < 12 || order.last().is_some_and(|&s| s < before.seq + 12) {
        let m = next(&mut events, "meter-1").await;
        if let Some(earlier) = got.get(&m.seq) {
            assert_eq!(earlier.properties["$.mid"], m.properties["$.mid"]);
            assert_eq!(
                earlier.body, m.body,
                "a duplicate differs from its original"
            );
            continue;
        }
        order.push(m.seq);
        got.insert(m.seq, m);
    }
    // Every reading from the first on, none missing, first arrivals in order.
    let seqs: Vec<u64> = got.keys().copied().collect();
    let want: Vec<u64> = (before.seq..=*seqs.last().unwrap()).collect();
    assert_eq!(seqs, want, "readings missing");
    assert!(
        order.windows(2).all(|w| w[0] < w[1]),
        "out of order: {order:?}"
    );
}

/// Ten meters stream while the hub drops connections after taking a message and before its
/// PUBACK, six times. Every reading of every meter arrives (numbered without a gap), first
/// arrivals in order, and every resend is a duplicate the hub recognises by its `$.mid`, with
/// the same body.
#[tokio::test]
async fn lost_pubacks_cost_duplicates_with_the_same_id_never_a_reading() {
    let ids: Vec<String> = (0..10).map(|i| format!("meter-{i}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let regs = Registers::with_units(1..=10);
    let plc = TcpServer::start(regs).await.unwrap();
    let devices: String = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            device(
                id,
                "plc",
                &METER.replace("unit = 1", &format!("unit = {}", i + 1)),
            )
        })
        .collect();
    let rig = Rig::start(
        &ids,
        "[telemetry]\nwindow = 2\n",
        &format!("{}{devices}", tcp_bus(plc.addr())),
    )
    .await;
    let drops = rig
        .emu
        .inject_fault(
            Fault::DropBeforePuback {
                target: Target::All,
                times: 6,
            },
            None,
        )
        .await;
    let mut duplicates = 0;
    for id in &ids {
        let log = rig.emu.wait_telemetry(id, 40, WAIT).await.unwrap();
        let mut first: BTreeMap<u64, &leafgate_emulator::D2cMessage> = BTreeMap::new();
        let mut order = Vec::new();
        for m in &log {
            let mid = m.message_id().unwrap();
            let seq: u64 = mid.rsplit_once('-').unwrap().1.parse().unwrap();
            match first.get(&seq) {
                Some(original) => {
                    assert!(m.duplicate, "{id}: a resend of {mid} not flagged duplicate");
                    assert_eq!(
                        original.body, m.body,
                        "{id}: {mid} resent with another body"
                    );
                    duplicates += 1;
                }
                None => {
                    assert!(
                        !m.duplicate,
                        "{id}: {mid} flagged duplicate on first arrival"
                    );
                    first.insert(seq, m);
                    order.push(seq);
                }
            }
        }
        let seqs: Vec<u64> = first.keys().copied().collect();
        let want: Vec<u64> = (0..=*seqs.last().unwrap()).collect();
        assert_eq!(seqs, want, "{id}: readings missing");
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "{id}: out of order: {order:?}"
        );
    }
    // Every drop struck a message that went out again.
    assert!(rig.emu.active_faults().iter().all(|(f, _)| *f != drops));
    assert!(duplicates >= 6, "only {duplicates} duplicates for 6 drops");
}

/// Two steps of one group, a gap of two unused registers apart, are read in one request. A
/// unit that refuses reads across addresses it does not implement (exception 02) gets the
/// merged read once; after that the group reads it in two, and its readings arrive whole.
#[tokio::test]
async fn a_groups_reads_merge_and_a_refused_merge_is_split_for_good() {
    use leafgate_sim::modbus::Table as SimTable;
    let group = r#"
raw_methods = true
unit = 1
[[device.telemetry]]
name = "g"
interval_ms = 100
[[device.telemetry.step]]
op = "read"
table = "input"
address = 0
fields = [{ name = "a" }, { name = "b" }]
[[device.telemetry.step]]
op = "read"
table = "input"
address = 4
fields = [{ name = "c" }]
"#;
    // Unit 1 implements every address; unit 2 only the fields' own.
    let regs = Registers::with_units([1, 2]);
    regs.set_input(1, 0, &[1, 2, 0, 0, 3]);
    regs.set_input(2, 0, &[4, 5, 0, 0, 6]);
    regs.set_mapped(2, SimTable::InputRegisters, &[0..=1, 4..=4]);
    let plc = TcpServer::start(regs.clone()).await.unwrap();
    let devices = format!(
        "{}{}{}",
        tcp_bus(plc.addr()),
        device("whole", "plc", group),
        device("sparse", "plc", &group.replace("unit = 1", "unit = 2"))
    );
    let rig = Rig::start(&["whole", "sparse"], "", &devices).await;
    let whole = rig.emu.wait_telemetry("whole", 3, WAIT).await.unwrap();
    let body: Value = serde_json::from_slice(&whole[2].body).unwrap();
    assert_eq!(
        (&body["a"], &body["b"], &body["c"]),
        (&1.into(), &2.into(), &3.into())
    );
    let sparse = rig.emu.wait_telemetry("sparse", 3, WAIT).await.unwrap();
    let body: Value = serde_json::from_slice(&sparse[2].body).unwrap();
    assert_eq!(
        (&body["a"], &body["b"], &body["c"]),
        (&4.into(), &5.into(), &6.into())
    );
    let log = regs.requests();
    let of = |unit: u8| -> Vec<(u16, u16)> {
        log.iter()
            .filter(|r| r.unit == unit)
            .map(|r| (r.address, r.count))
            .collect()
    };
    // One request per poll for the unit that allows it.
    assert!(of(1).iter().all(|r| *r == (0, 5)), "{:?}", of(1));
    // The sparse unit: the merged read once, then the two halves every poll.
    let sparse_reads = of(2);
    assert_eq!(sparse_reads[0], (0, 5));
    assert!(
        sparse_reads[1..]
            .iter()
            .all(|r| *r == (0, 2) || *r == (4, 1)),
        "{sparse_reads:?}"
    );
    assert_eq!(sparse_reads.iter().filter(|r| **r == (0, 5)).count(), 1);
}

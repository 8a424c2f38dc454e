//! Device twins end to end: the real gateway against the emulated hub (twins with `$version`s,
//! desired pushes, the service API's twin routes) and a simulated PLC.

use std::time::Duration;

use leafgate::gateway::Gateway;
use leafgate_sim::modbus::{Fault, Registers, TcpServer};
use serde_json::{Value, json};

use crate::gateway::{Rig, device};

const WAIT: Duration = Duration::from_secs(20);

/// A pump with a speed setpoint on holding register 10 (read back after the write), its serial
/// number read from input registers, and static properties.
const PUMP: &str = r#"
unit = 1
model_id = "dtmi:com:example:Pump;1"
[device.reported]
location = "Hall 3"
[[device.desired]]
name = "speedSetpoint"
timeout_ms = 3000
[[device.desired.step]]
op = "write"
table = "holding"
address = 10
fields = [{ name = "speedSetpoint", type = "u16", max = 3000 }]
[[device.desired.step]]
op = "read"
table = "holding"
address = 10
fields = [{ name = "speedSetpoint", type = "u16" }]
[[device.property]]
name = "identity"
[[device.property.step]]
op = "read"
table = "input"
address = 0
fields = [{ name = "serialNumber", type = "u32" }]
[[device.method]]
name = "getSpeed"
[[device.method.step]]
op = "read"
table = "holding"
address = 10
fields = [{ name = "speed", type = "u16" }]
"#;

const TWIN: &str = "[twin]\nreport_interval_ms = 100\nrequest_timeout_ms = 2000\n";

fn bus(addr: std::net::SocketAddr) -> String {
    format!(
        "[[bus]]\nid = \"plc\"\nkind = \"modbus_tcp\"\naddress = \"{addr}\"\ntimeout_ms = 500\n"
    )
}

/// The pump on a running gateway, once its twin has been read and its health reported.
async fn pump() -> (Rig, Registers, TcpServer) {
    let regs = Registers::with_units([1]);
    let plc = TcpServer::start(regs.clone()).await.unwrap();
    let rig = Rig::start(
        &["pump-1"],
        TWIN,
        &format!("{}{}", bus(plc.addr()), device("pump-1", "plc", PUMP)),
    )
    .await;
    rig.emu
        .wait_reported("pump-1", |r| r.get("leafgate").is_some(), WAIT)
        .await
        .unwrap();
    (rig, regs, plc)
}

fn writes_to(regs: &Registers, address: u16) -> Vec<u16> {
    regs.requests()
        .iter()
        .filter(|r| matches!(r.function, 6 | 16) && r.address == address)
        .map(|r| u16::from_be_bytes([r.pdu[r.pdu.len() - 2], r.pdu[r.pdu.len() - 1]]))
        .collect()
}

/// What the twin reports, read from the hub's side: static values, the hardware's serial
/// number, leafgate's health view, and the model id the device announced.
#[tokio::test]
async fn a_leaf_reports_static_hardware_and_health_properties() {
    let regs = Registers::with_units([1]);
    regs.set_input(1, 0, &[0x0001, 0xE240]);
    let plc = TcpServer::start(regs).await.unwrap();
    let rig = Rig::start(
        &["pump-1"],
        TWIN,
        &format!("{}{}", bus(plc.addr()), device("pump-1", "plc", PUMP)),
    )
    .await;
    let reported = rig
        .emu
        .wait_reported(
            "pump-1",
            |r| r.get("serialNumber").is_some() && r["leafgate"]["state"] == "online",
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(reported["location"], "Hall 3");
    assert_eq!(reported["serialNumber"], 123_456);
    let health = &reported["leafgate"];
    assert_eq!(health["bus"], "plc");
    assert_eq!(health["unit"], 1);
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    let connect = rig.emu.device_stats("pump-1").last_connect.unwrap();
    let username = connect.username.unwrap_or_default();
    assert!(
        username.contains("&model-id=dtmi%3Acom%3Aexample%3APump%3B1"),
        "{username}"
    );

    // A method is counted in the health view.
    let (status, _) = rig.call("pump-1", "getSpeed", json!({})).await;
    assert_eq!(status, 200);
    rig.emu
        .wait_reported("pump-1", |r| r["leafgate"]["methods"]["200"] == 1, WAIT)
        .await
        .unwrap();
}

/// A setpoint changed while leafgate was stopped reaches the hardware after it starts, and is
/// acknowledged with the desired version that asked for it and the value read back.
#[tokio::test]
async fn a_setpoint_set_while_leafgate_was_stopped_is_applied_and_acknowledged_after_start() {
    let (mut rig, regs, _plc) = pump().await;
    rig.gateway
        .take()
        .unwrap()
        .shutdown(Duration::from_secs(5))
        .await;

    let version = rig
        .emu
        .update_desired("pump-1", json!({"speedSetpoint": 1200}))
        .unwrap();
    assert_eq!(
        regs.holding(1, 10, 1),
        [0],
        "written while leafgate was stopped"
    );

    let cfg = leafgate::config::load(&rig._dir.path().join("leafgate.toml")).unwrap();
    rig.gateway = Some(Gateway::start(&cfg).unwrap());
    let reported = rig
        .emu
        .wait_reported("pump-1", |r| r["speedSetpoint"]["av"] == version, WAIT)
        .await
        .unwrap();
    assert_eq!(
        reported["speedSetpoint"],
        json!({"value": 1200, "ac": 200, "av": version, "ad": "applied"})
    );
    assert_eq!(regs.holding(1, 10, 1), [1200]);
}

/// An invalid value is acknowledged 400 and never reaches the bus; values arriving while a
/// write runs supersede each other, so only the newest runs next.
#[tokio::test]
async fn invalid_desired_values_touch_no_hardware_and_only_the_newest_of_rapid_changes_runs() {
    let (rig, regs, _plc) = pump().await;

    let bad = rig
        .emu
        .update_desired("pump-1", json!({"speedSetpoint": 9999}))
        .unwrap();
    let reported = rig
        .emu
        .wait_reported("pump-1", |r| r["speedSetpoint"]["av"] == bad, WAIT)
        .await
        .unwrap();
    assert_eq!(reported["speedSetpoint"]["ac"], 400, "{reported}");
    assert!(
        writes_to(&regs, 10).is_empty(),
        "an invalid value was written"
    );

    // The unit takes 500 ms to answer the first write: the next two values arrive meanwhile.
    regs.set_fault_times(1, Fault::Delay(Duration::from_millis(500)), 1);
    let before = regs.request_count();
    rig.emu
        .update_desired("pump-1", json!({"speedSetpoint": 100}))
        .unwrap();
    // The write of 100 has reached the unit, whose answer is 500 ms away.
    regs.wait_requests(before + 1).await;
    rig.emu
        .update_desired("pump-1", json!({"speedSetpoint": 200}))
        .unwrap();
    let last = rig
        .emu
        .update_desired("pump-1", json!({"speedSetpoint": 300}))
        .unwrap();
    let reported = rig
        .emu
        .wait_reported("pump-1", |r| r["speedSetpoint"]["av"] == last, WAIT)
        .await
        .unwrap();
    assert_eq!(reported["speedSetpoint"]["value"], 300);
    assert_eq!(writes_to(&regs, 10), [100, 300], "superseded value 200 ran");
}

/// The twin as a back end sees it through the service API.
#[tokio::test]
async fn the_service_api_shows_what_the_leaf_reported_and_takes_desired_values() {
    let (rig, regs, _plc) = pump().await;
    let updated = rig
        .client
        .update_twin(
            "pump-1",
            &json!({"properties": {"desired": {"speedSetpoint": 750}}}),
        )
        .await
        .unwrap();
    assert_eq!(updated.status, 200, "{}", updated.body);
    let version = updated.body["properties"]["desired"]["$version"]
        .as_u64()
        .unwrap();
    rig.emu
        .wait_reported("pump-1", |r| r["speedSetpoint"]["av"] == version, WAIT)
        .await
        .unwrap();
    let twin = rig.client.get_twin("pump-1").await.unwrap();
    assert_eq!(twin.status, 200);
    let reported: &Value = &twin.body["properties"]["reported"];
    assert_eq!(reported["speedSetpoint"]["value"], 750);
    assert_eq!(reported["leafgate"]["state"], "online");
    assert_eq!(regs.holding(1, 10, 1), [750]);
}

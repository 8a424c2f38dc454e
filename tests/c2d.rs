//! Cloud-to-device commands end to end: the real gateway, the emulator's C2D queue (locks,
//! redelivery, completion on PUBACK) and a simulated PLC.

use std::time::Duration;

use leafgate_emulator::{C2dRecord, C2dSend, C2dState, EmulatorConfig, Fault, Target};
use leafgate_sim::modbus::{Registers, TcpServer};
use serde_json::{Value, json};

use crate::gateway::{Rig, device};

const WAIT: Duration = Duration::from_secs(20);

const PUMP: &str = r#"
unit = 1
[[device.method]]
name = "setSpeed"
[[device.method.step]]
op = "write"
table = "holding"
address = 20
fields = [{ name = "rpm", type = "u16", max = 3000 }]
"#;

fn bus(addr: std::net::SocketAddr) -> String {
    format!(
        "[[bus]]\nid = \"plc\"\nkind = \"modbus_tcp\"\naddress = \"{addr}\"\ntimeout_ms = 500\n"
    )
}

fn writes_to(regs: &Registers, address: u16) -> usize {
    regs.requests()
        .iter()
        .filter(|r| matches!(r.function, 6 | 16) && r.address == address)
        .count()
}

fn command(mid: &str, method: &str, body: &Value) -> C2dSend {
    C2dSend {
        body: serde_json::to_vec(body).unwrap(),
        properties: vec![("method".to_owned(), method.to_owned())],
        message_id: Some(mid.to_owned()),
        ..C2dSend::default()
    }
}

fn state(records: &[C2dRecord], mid: &str) -> Option<(C2dState, u32)> {
    records
        .iter()
        .find(|r| r.message_id == mid)
        .map(|r| (r.state, r.delivery_count))
}

async fn start(report: bool) -> (Rig, Registers, TcpServer) {
    let regs = Registers::with_units([1]);
    let plc = TcpServer::start(regs.clone()).await.unwrap();
    let emulator = EmulatorConfig {
        c2d_lock_timeout: Duration::from_millis(500),
        ..EmulatorConfig::default()
    };
    let rig = Rig::start_with(
        emulator,
        &["pump-1"],
        &format!("[c2d]\nreport = {report}\n"),
        &format!("{}{}", bus(plc.addr()), device("pump-1", "plc", PUMP)),
    )
    .await;
    // The command subscription is in the device's one SUBSCRIBE, granted before it is ready.
    (rig, regs, plc)
}

/// A command runs its method and completes; with `report`, its outcome comes back as a
/// device-to-cloud message correlated to it.
#[tokio::test]
async fn a_command_runs_its_method_and_its_outcome_is_reported() {
    let (rig, regs, _plc) = start(true).await;
    rig.emu
        .send_c2d(
            "pump-1",
            command("cmd-1", "setSpeed", &json!({"rpm": 1500})),
        )
        .unwrap();
    rig.emu
        .wait_c2d(
            "pump-1",
            |r| state(r, "cmd-1") == Some((C2dState::Completed, 1)),
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(regs.holding(1, 20, 1), [1500]);
    let reports = rig.emu.wait_telemetry("pump-1", 1, WAIT).await.unwrap();
    let report = &reports[0];
    assert_eq!(report.system("$.cid"), Some("cmd-1"));
    let body: Value = serde_json::from_slice(&report.body).unwrap();
    assert_eq!(body["method"], "setSpeed");
    assert_eq!(body["status"], 200);
}

/// The hub never hears the PUBACK (lost with the connection): it delivers the command again
/// after its lock timeout, on the new connection, and leafgate completes it without running it
/// a second time.
#[tokio::test]
async fn a_command_delivered_again_after_a_dropped_connection_runs_once() {
    let (rig, regs, _plc) = start(false).await;
    let lose = rig
        .emu
        .inject_fault(Fault::LoseC2dAcks(Target::All), None)
        .await;
    rig.emu
        .send_c2d("pump-1", command("cmd-2", "setSpeed", &json!({"rpm": 700})))
        .unwrap();
    // Ran (the write reached the unit) but the hub did not take the acknowledgement.
    regs.wait_requests(1).await;
    rig.emu.drop_connection("pump-1");
    rig.emu.clear_fault(lose).await;
    let records = rig
        .emu
        .wait_c2d(
            "pump-1",
            |r| state(r, "cmd-2").is_some_and(|(s, _)| s == C2dState::Completed),
            WAIT,
        )
        .await
        .unwrap();
    let (_, deliveries) = state(&records, "cmd-2").unwrap();
    assert!(deliveries >= 2, "delivered {deliveries} time(s)");
    assert_eq!(writes_to(&regs, 20), 1, "the command ran again");
    assert_eq!(regs.holding(1, 20, 1), [700]);
}

/// Commands that can never succeed are completed, not left to loop until dead-lettered.
#[tokio::test]
async fn commands_that_cannot_succeed_are_completed_and_touch_no_hardware() {
    let (rig, regs, _plc) = start(false).await;
    rig.emu
        .send_c2d("pump-1", command("cmd-3", "noSuchMethod", &json!({})))
        .unwrap();
    rig.emu
        .send_c2d(
            "pump-1",
            command("cmd-4", "setSpeed", &json!({"rpm": 9999})),
        )
        .unwrap();
    rig.emu
        .send_c2d(
            "pump-1",
            C2dSend {
                body: b"not json".to_vec(),
                properties: vec![("method".to_owned(), "setSpeed".to_owned())],
                message_id: Some("cmd-5".to_owned()),
                ..C2dSend::default()
            },
        )
        .unwrap();
    rig.emu
        .wait_c2d(
            "pump-1",
            |r| {
                ["cmd-3", "cmd-4", "cmd-5"]
                    .iter()
                    .all(|m| state(r, m) == Some((C2dState::Completed, 1)))
            },
            WAIT,
        )
        .await
        .unwrap();
    assert_eq!(writes_to(&regs, 20), 0);
}

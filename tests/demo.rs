//! `leafgate demo`: the scripted round trips all pass, through the library entry and through the
//! real binary. Loading the rendered `config/demo.toml` is part of both.

use std::io::Read as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use leafgate_demo::{self as demo, Options};

const DEVICES: [&str; 4] = ["plc-1", "meter-1", "meter-2", "psu-1"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_once_answers_every_round_trip_as_expected() {
    let mut out = Vec::new();
    let summary = demo::run(
        &Options {
            once: true,
            ..Options::default()
        },
        &mut out,
    )
    .await
    .unwrap_or_else(|e| panic!("{:#}", anyhow::Error::from(e)));
    let out = String::from_utf8(out).unwrap();
    assert!(summary.all_passed(), "{:?}\n{out}", summary.failures());
    let statuses: Vec<_> = summary
        .round_trips
        .iter()
        .map(|rt| (rt.device.as_str(), rt.method.as_str(), rt.status))
        .collect();
    assert_eq!(
        statuses,
        [
            ("plc-1", "getStatus", Some(200)),
            ("plc-1", "setSpeed", Some(200)),
            ("meter-1", "getReadings", Some(200)),
            ("meter-2", "getReadings", Some(200)),
            ("psu-1", "identify", Some(200)),
            ("psu-1", "setVoltage", Some(200)),
            ("psu-1", "outputOn", Some(200)),
            ("psu-1", "measure", Some(200)),
            ("meter-2", "calibrate", Some(501)),
            ("plc-1", "setSpeed", Some(400)),
        ]
    );
    // The two meters share a profile but not their readings.
    assert_ne!(
        summary.round_trips[2].response,
        summary.round_trips[3].response
    );
    assert!(
        out.contains("10 of 10 round trips answered as expected"),
        "{out}"
    );
    // Every device streams telemetry, and the meters' readings are their own.
    let seen: Vec<&str> = summary
        .telemetry
        .iter()
        .map(|t| t.device.as_str())
        .collect();
    assert_eq!(seen, DEVICES);
    let meter = |i: usize| summary.telemetry[i].body.clone().unwrap();
    assert_eq!(summary.telemetry[1].group.as_deref(), Some("power"));
    assert!(
        meter(1)["voltage"].is_number() && meter(1)["ts"].is_string(),
        "{}",
        meter(1)
    );
    assert_ne!(meter(1)["voltage"], meter(2)["voltage"]);
    assert!(out.contains("Telemetry (device-to-cloud)"), "{out}");
    // meter-2 came through DPS with a group-derived key, psu-1 over WebSockets.
    let reach: Vec<(&str, bool)> = summary
        .reach
        .iter()
        .map(|r| (r.device.as_str(), r.ok))
        .collect();
    assert_eq!(reach, [("meter-2", true), ("psu-1", true)]);
    assert!(out.contains("ok   meter-2  registered with DPS"), "{out}");
    assert!(
        out.contains("ok   psu-1    connected over MQTT over WebSockets"),
        "{out}"
    );
}

#[test]
fn the_binary_demo_once_exits_0_and_shows_every_device() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_leafgate"))
        .args(["demo", "--once"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("leafgate demo --once still running after 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut stdout, mut stderr) = (String::new(), String::new());
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        status.success(),
        "{status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for device in DEVICES {
        assert!(stdout.contains(device), "{device} missing:\n{stdout}");
    }
    assert!(stdout.contains("10 of 10 round trips answered as expected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_answer_fails_its_round_trip_by_name_and_the_rest_still_run() {
    let demo = demo::Demo::start(&Options::default()).await.unwrap();
    demo.site()
        .rtu_registers
        .set_fault(2, leafgate_sim::modbus::Fault::Exception(2));
    let summary = demo.round_trips().await;
    demo.shutdown().await;
    assert!(!summary.all_passed());
    let failures = summary.failures();
    assert_eq!(
        failures[0],
        r#"#4 meter-2 getReadings: expected status 200, got 422 {"code":2,"error":"device_exception","name":"illegal data address"}"#
    );
    // meter-2's telemetry fails alike, unless its first reading was taken before the fault.
    assert!(
        failures.len() == 1 || failures[1..] == ["meter-2: no telemetry arrived"],
        "{failures:?}"
    );
    assert_eq!(summary.round_trips.len(), 10);
}

//! The benchmark harness end to end at toy size, so it cannot rot: `leafgate-bench scale` with
//! 20 devices, `leafgate-bench rtu` on one line, `leafgate-bench telemetry steady` and
//! `outage` with a handful of meters, `twin`, `transport` (MQTT and WebSockets), `dps` and
//! `metrics` with 20 devices, each for a few seconds, against the real `leafgate` binary. Full runs are not
//! part of the test suite (README, "Performance").

// Test code: unwrapping is how a test reports.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;

use serde_json::Value;

const BENCH: &str = env!("CARGO_BIN_EXE_leafgate-bench");

fn run(args: &[&str], json: &std::path::Path) -> Value {
    // Another package's binary: `cargo test` at the workspace root builds it alongside.
    let leafgate = leafgate_testkit::binary("leafgate");
    assert!(
        leafgate.exists(),
        "{} is missing: run the tests from the workspace root, or `cargo build --bin leafgate` first",
        leafgate.display()
    );
    let output = Command::new(BENCH)
        .args(args)
        .arg("--leafgate")
        .arg(&leafgate)
        .arg("--json")
        .arg(json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "leafgate-bench {args:?} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("Result: PASS"), "{stdout}");
    serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap()
}

#[test]
fn the_scale_harness_runs_end_to_end_and_reports_every_phase() {
    let dir = tempfile::tempdir().unwrap();
    let report = run(
        &[
            "scale",
            "--devices",
            "20",
            "--units-per-endpoint",
            "8",
            "--floor-devices",
            "4",
            "--connect-rate",
            "200",
            "--idle-s",
            "1",
            "--rates",
            "100",
            "--load-s",
            "1",
            "--rounds",
            "1",
        ],
        &dir.path().join("scale.json"),
    );
    assert_eq!(report["devices"], 20);
    assert_eq!(report["endpoints"], 3);
    assert!(report["connect"]["achieved_rate"].as_f64().unwrap() > 0.0);
    assert!(
        report["idle"]["leafgate_memory"]["rss_kib"]
            .as_u64()
            .unwrap()
            > 0
    );
    let load = &report["load"][0];
    for side in ["leafgate", "floor"] {
        assert_eq!(load[side]["offered"], 100, "{side}");
        assert_eq!(load[side]["answered"], 100, "{side}");
        assert_eq!(load[side]["errors"], 0, "{side}");
        assert!(load[side]["latency"]["p99_us"].as_f64().unwrap() > 0.0);
    }
    assert!(load["leafgate_cpu_us_per_method"].as_f64().unwrap() >= 0.0);
    assert_eq!(report["leafgate_exit_code"], 0);
}

#[test]
fn the_rtu_harness_measures_gaps_on_a_busy_line() {
    let dir = tempfile::tempdir().unwrap();
    let report = run(
        &[
            "rtu",
            "--bauds",
            "19200",
            "--turnaround-ms",
            "2",
            "--concurrency",
            "4",
            "--duration-s",
            "1",
        ],
        &dir.path().join("rtu.json"),
    );
    let line = &report["lines"][0];
    assert_eq!(line["baud"], 19200);
    // 3.5 characters of 10 bits (8N1) at 19200 baud (1822.9 µs), rounded up as leafgate does.
    assert_eq!(line["frame_gap_us"], 1823.0);
    assert!(line["gap"]["count"].as_u64().unwrap() > 10, "{line}");
    assert!(line["gap"]["p50_us"].as_f64().unwrap() >= 1823.0, "{line}");
    assert_eq!(line["errors"], 0);
}

#[test]
fn the_telemetry_steady_harness_accounts_for_every_reading() {
    let dir = tempfile::tempdir().unwrap();
    let report = run(
        &[
            "telemetry",
            "steady",
            "--devices",
            "20",
            "--interval-ms",
            "500",
            "--seconds",
            "2",
            "--units-per-endpoint",
            "8",
        ],
        &dir.path().join("steady.json"),
    );
    assert_eq!(report["endpoints"], 3);
    let tally = &report["tally"];
    assert_eq!(tally["devices"], 20);
    // At least the first reading and the window's four per meter.
    assert!(tally["polled"].as_u64().unwrap() >= 20 * 5, "{tally}");
    assert_eq!(tally["lost"], 0, "{tally}");
    assert_eq!(tally["received"], tally["polled"]);
    assert!(report["latency"]["count"].as_u64().unwrap() >= 20 * 3);
    assert!(report["leafgate_cpu_pct"].as_f64().unwrap() > 0.0);
    assert!(report["store"]["db"].as_u64().unwrap() > 0);
    assert_eq!(report["leafgate_exit_code"], 0);
}

#[test]
fn the_telemetry_outage_harness_drains_the_store_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let report = run(
        &[
            "telemetry",
            "outage",
            "--devices",
            "10",
            "--interval-ms",
            "500",
            "--outage-s",
            "3",
            "--sample-s",
            "1",
            "--rate",
            "100",
        ],
        &dir.path().join("outage.json"),
    );
    assert_eq!(report["samples"].as_array().unwrap().len(), 3);
    // Two readings a second per meter for three seconds, give or take a tick at each end.
    let during = report["readings_in_outage"].as_u64().unwrap();
    assert!((50..=70).contains(&during), "{during}");
    assert!(report["store"]["wal"].as_u64().unwrap() + report["store"]["db"].as_u64().unwrap() > 0);
    assert!(report["drain_s"].as_f64().unwrap() > 0.0);
    assert_eq!(report["tally"]["lost"], 0, "{}", report["tally"]);
    assert_eq!(report["leafgate_exit_code"], 0);
}

#[test]
fn the_twin_harness_reads_every_twin_once_after_a_hub_wide_drop() {
    let dir = tempfile::tempdir().unwrap();
    let report = run(
        &[
            "twin",
            "--devices",
            "20",
            "--units-per-endpoint",
            "8",
            "--gets-per-s",
            "20",
            "--idle-s",
            "1",
        ],
        &dir.path().join("twin.json"),
    );
    assert_eq!(report["twin"], true);
    let reconnect = &report["reconnect"];
    assert_eq!(reconnect["max_gets_per_device"], 1, "{report}");
    assert_eq!(reconnect["throttled"], 0, "{report}");
    assert!(report["rss_per_device_kib"].as_f64().unwrap() > 0.0);
}

#[test]
fn the_transport_harness_measures_mqtt_and_websockets_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let report = run(
        &[
            "transport",
            "--devices",
            "20",
            "--units-per-endpoint",
            "8",
            "--idle-s",
            "1",
        ],
        &dir.path().join("transport.json"),
    );
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{report}");
    for (run, transport) in runs.iter().zip(["mqtt", "websocket"]) {
        assert_eq!(run["transport"], transport);
        assert_eq!(run["wrong_transport"], 0, "{run}");
        assert!(run["connect_s"].as_f64().unwrap() > 0.0, "{run}");
        assert!(run["idle"]["rss_per_device_kib"].as_f64().unwrap() > 0.0);
        assert_eq!(run["leafgate_exit_code"], 0);
    }
    assert!(report["ratios"]["rss_per_device"].as_f64().unwrap() > 0.0);
}

#[test]
fn the_dps_harness_registers_at_the_pace_and_restarts_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let report = run(
        &[
            "dps",
            "--devices",
            "20",
            "--units-per-endpoint",
            "8",
            "--registrations-per-s",
            "20",
        ],
        &dir.path().join("dps.json"),
    );
    assert_eq!(report["devices_assigned"], 20, "{report}");
    assert_eq!(report["registers"], 20, "{report}");
    assert_eq!(report["throttled"], 0, "{report}");
    assert_eq!(report["cached"], 20, "{report}");
    assert!(
        report["peak_registers_per_s"].as_u64().unwrap() <= 21,
        "{report}"
    );
    assert_eq!(report["restart_dps_requests"], 0, "{report}");
}

#[test]
fn the_metrics_harness_scrapes_every_devices_series_and_compares_without() {
    let dir = tempfile::tempdir().unwrap();
    let report = run(
        &[
            "metrics",
            "--devices",
            "20",
            "--units-per-endpoint",
            "8",
            "--unknown-every",
            "7",
            "--scrapes",
            "3",
            "--idle-s",
            "1",
            "--compare",
        ],
        &dir.path().join("metrics.json"),
    );
    let with = &report["with_metrics"];
    assert_eq!(with["calls"]["device status 200"], 20, "{report}");
    // Devices 0, 7 and 14.
    assert_eq!(with["unknown_calls"]["device status 501"], 3, "{report}");
    let scrapes = &with["scrapes"];
    assert_eq!(scrapes["time"]["count"], 3, "{report}");
    assert_eq!(scrapes["devices_with_methods"], 20, "{report}");
    assert_eq!(scrapes["devices_with_latency"], 20, "{report}");
    assert_eq!(scrapes["unknown_method_series"], 3, "{report}");
    // At least the histogram (17 lines) and the methods, connected and reconnects per device.
    assert!(scrapes["series"].as_u64().unwrap() >= 20 * 20, "{report}");
    assert!(scrapes["body_bytes_min"].as_u64().unwrap() > 0, "{report}");
    assert!(scrapes["cpu_ms_per_scrape"].as_f64().unwrap() >= 0.0);
    let without = &report["without_metrics"];
    assert_eq!(without["metrics"], false, "{report}");
    assert!(without["scrapes"].is_null(), "{report}");
    assert!(
        report["metrics_idle_rss_per_device_kib"].is_number(),
        "{report}"
    );
}

//! The whole gateway, end to end: the emulated IoT Hub (MQTT over TLS + service API), simulated
//! hardware on real sockets and ptys, and leafgate's own `Gateway` built from a config file.
//! Every status in the method contract is provoked and asserted here.

use std::time::Duration;

use leafgate::gateway::Gateway;
use leafgate::hub::sas::Key;
use leafgate_emulator::{Emulator, EmulatorConfig, ServiceClient};
use leafgate_sim::modbus::{Fault, Garbage, Registers, TcpServer};
use leafgate_sim::{SerialLine, instrument, instrument::Psu};
use serde_json::{Value, json};
use tokio::time::Instant;

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const WAIT: Duration = Duration::from_secs(10);

/// `config` with its telemetry store in `dir` (added to its `[telemetry]`, or as one), so no
/// test touches `/var/lib/leafgate` or another test's store.
pub fn with_store(config: &str, dir: &std::path::Path) -> String {
    if config.contains("\nstore = ") {
        return config.to_owned();
    }
    let line = format!("store = \"{}\"\n", dir.join("telemetry.db").display());
    if config.starts_with("[telemetry]\n") || config.contains("\n[telemetry]\n") {
        config.replacen("[telemetry]\n", &format!("[telemetry]\n{line}"), 1)
    } else {
        format!("{config}\n[telemetry]\n{line}")
    }
}

pub struct Rig {
    pub emu: Emulator,
    pub client: ServiceClient,
    pub _dir: tempfile::TempDir,
    pub gateway: Option<Gateway>,
}

impl Rig {
    /// Starts the emulator and writes `[hub]` pointing at it; `rest` holds buses and devices.
    /// Every device id in `devices` is registered with the same test key.
    pub async fn start(devices: &[&str], hub_extra: &str, rest: &str) -> Rig {
        Self::start_with(EmulatorConfig::default(), devices, hub_extra, rest).await
    }

    /// As [`Rig::start`], with the emulator configured as given.
    pub async fn start_with(
        emulator: EmulatorConfig,
        devices: &[&str],
        hub_extra: &str,
        rest: &str,
    ) -> Rig {
        let emu = Emulator::start(emulator).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, emu.ca_pem()).unwrap();
        for id in devices {
            emu.add_device(id, Key::from_base64(KEY).unwrap());
        }
        let config = format!(
            "[hub]\nhostname = \"localhost\"\nport = {}\nca_file = \"{}\"\nreconnect_min_ms = 100\nreconnect_max_ms = 1000\nmax_connects_per_s = 1000\n{hub_extra}\n{rest}",
            emu.mqtt_addr().port(),
            ca.display()
        );
        let path = dir.path().join("leafgate.toml");
        std::fs::write(&path, with_store(&config, dir.path())).unwrap();
        let cfg = leafgate::config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let gateway = Gateway::start(&cfg).unwrap();
        for id in devices {
            emu.wait_method_ready(id, WAIT).await.unwrap();
        }
        let client = ServiceClient::new(emu.http_addr(), &emu.service_connection_string()).unwrap();
        Rig {
            emu,
            client,
            _dir: dir,
            gateway: Some(gateway),
        }
    }

    /// Calls a method through the service API, as a back-end app would.
    pub async fn call(&self, device: &str, method: &str, payload: Value) -> (u16, Value) {
        let (http, body) = self
            .client
            .invoke(device, method, payload, 30)
            .await
            .unwrap();
        assert_eq!(http, 200, "service API answered {http}: {body}");
        (
            body["status"].as_u64().unwrap() as u16,
            body["payload"].clone(),
        )
    }
}

pub fn device(id: &str, bus: &str, extra: &str) -> String {
    format!("[[device]]\nid = \"{id}\"\nshared_access_key = \"{KEY}\"\nbus = \"{bus}\"\n{extra}\n")
}

const PLC_METHODS: &str = r#"
[[device.method]]
name = "getStatus"
timeout_ms = 2000
[[device.method.step]]
op = "read"
table = "holding"
address = 0
fields = [
  { name = "speed", type = "f32" },
  { name = "temperature", type = "i16", scale = 0.1 },
  { name = "running", type = "bool" },
]

[[device.method]]
name = "setSpeed"
timeout_ms = 2000
[[device.method.step]]
op = "write"
table = "holding"
address = 0
fields = [{ name = "speed", type = "f32", min = 0, max = 1500 }]
[[device.method.step]]
op = "read"
table = "holding"
address = 0
fields = [{ name = "speed", type = "f32" }]

[[device.method]]
name = "echo"
[[device.method.step]]
op = "write"
table = "holding"
address = 100
fields = [{ name = "text", type = "string", length = 100 }]
"#;

#[tokio::test]
async fn every_status_in_the_contract_reaches_the_caller() {
    let regs = Registers::with_units([1]);
    regs.set_holding(1, 0, &[0x41C8, 0x0000, 0xFF9C, 1]); // 25.0, -10.0, true
    let plc = TcpServer::start(regs.clone()).await.unwrap();
    let dead_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let psu = Psu::new();
    let psu_line = SerialLine::instrument(psu.clone()).unwrap();
    let rtu_regs = Registers::with_units([1]);
    let rtu_line = SerialLine::modbus_rtu(rtu_regs.clone()).unwrap();
    let rest = format!(
        r#"
[[bus]]
id = "plc"
kind = "modbus_tcp"
address = "{plc}"
timeout_ms = 300

[[bus]]
id = "gone"
kind = "modbus_tcp"
address = "127.0.0.1:{dead_port}"

[[bus]]
id = "rs485"
kind = "modbus_rtu"
path = "{rtu}"
baud_rate = 115200
timeout_ms = 200
retries = 1

[[bus]]
id = "psu"
kind = "serial"
path = "{psu_path}"
terminator = "\r\n"
timeout_ms = 300

{plc_dev}{PLC_METHODS}
{gone_dev}{PLC_METHODS}
{meter}
[[device.method]]
name = "read"
timeout_ms = 3000
[[device.method.step]]
op = "read"
table = "input"
address = 0
fields = [{{ name = "v", type = "u16" }}]

[[device.method]]
name = "readHasty"
timeout_ms = 150
[[device.method.step]]
op = "read"
table = "input"
address = 0
fields = [{{ name = "v", type = "u16" }}]

{psu_dev}
[[device.method]]
name = "identify"
[[device.method.step]]
op = "send"
request = "*IDN?\r\n"
expect = '^(?P<maker>[A-Z]+),(?P<model>[^,]+),'
"#,
        plc = plc.addr(),
        rtu = rtu_line.path().display(),
        psu_path = psu_line.path().display(),
        plc_dev = device("plc-1", "plc", "unit = 1"),
        gone_dev = device("plc-gone", "gone", "unit = 1"),
        meter = device("meter-1", "rs485", "unit = 1"),
        psu_dev = device("psu-1", "psu", ""),
    );
    let rig = Rig::start(
        &["plc-1", "plc-gone", "meter-1", "psu-1"],
        "max_payload_bytes = 1024",
        &rest,
    )
    .await;

    // 200: a read, decoded and scaled.
    let (status, body) = rig.call("plc-1", "getStatus", json!(null)).await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"speed": 25.0, "temperature": -10.0, "running": true})
        )
    );
    // 200: write and read-back as one unit of work.
    let (status, body) = rig.call("plc-1", "setSpeed", json!({"speed": 12.5})).await;
    assert_eq!((status, body), (200, json!({"speed": 12.5})));
    assert_eq!(regs.holding(1, 0, 2), vec![0x4148, 0x0000]);
    // 400: out of range, nothing sent to the device.
    let before = regs.request_count();
    let (status, body) = rig.call("plc-1", "setSpeed", json!({"speed": 2000})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        (body["error"].as_str(), body["field"].as_str()),
        (Some("bad_request"), Some("speed"))
    );
    assert_eq!(regs.request_count(), before);
    // 413: payload over the configured limit.
    let (status, body) = rig
        .call("plc-1", "echo", json!({"text": "x".repeat(2000)}))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (413, Some("payload_too_large"))
    );
    // 501: unknown method, with the list of methods.
    let (status, body) = rig.call("plc-1", "fly", json!({})).await;
    assert_eq!(status, 501);
    assert_eq!(
        body,
        json!({"error": "unknown_method", "methods": ["echo", "getStatus", "setSpeed"]})
    );
    // 422: the device answers with a Modbus exception.
    regs.set_fault_times(1, Fault::Exception(2), 1);
    let (status, body) = rig.call("plc-1", "getStatus", json!(null)).await;
    assert_eq!(
        (status, body),
        (
            422,
            json!({"error": "device_exception", "code": 2, "name": "illegal data address"})
        )
    );
    // 502: garbled replies beyond the retries; then the line recovers.
    rtu_regs.set_fault(1, Fault::Garbage(Garbage::BadCrc));
    let (status, body) = rig.call("meter-1", "read", json!(null)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (502, Some("bad_device_reply")),
        "{body}"
    );
    rtu_regs.clear_faults(1);
    rtu_regs.set_input(1, 0, &[7]);
    assert_eq!(
        rig.call("meter-1", "read", json!(null)).await,
        (200, json!({"v": 7}))
    );
    // 502: a serial reply that does not match its pattern.
    psu.set_fault_times(
        leafgate_sim::instrument::Fault::Garbage(b"??\r\n".to_vec()),
        1,
    );
    let (status, body) = rig.call("psu-1", "identify", json!(null)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (502, Some("bad_device_reply")),
        "{body}"
    );
    assert_eq!(
        rig.call("psu-1", "identify", json!(null)).await,
        (200, json!({"maker": "LEAFGATE", "model": "PSU-1"}))
    );
    // 503: the bus cannot connect; answered fast, not at the deadline.
    let t = Instant::now();
    let (status, body) = rig.call("plc-gone", "getStatus", json!(null)).await;
    assert_eq!(
        (status, body["error"].as_str(), body["bus"].as_str()),
        (503, Some("bus_unavailable"), Some("gone")),
        "{body}"
    );
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "503 took {:?}",
        t.elapsed()
    );
    // 504: a silent unit, answered at the bus timeout, well within the method deadline. The
    // body names the timeout that fired (the bus's 200 ms, not the method's 3000 ms).
    rtu_regs.set_fault(1, Fault::Silent);
    let t = Instant::now();
    let (status, body) = rig.call("meter-1", "read", json!(null)).await;
    assert_eq!(
        body,
        json!({"error": "device_timeout", "timeout": "bus", "timeout_ms": 200,
            "message": "no answer from unit 1 within the bus timeout of 200 ms"}),
    );
    assert_eq!(status, 504);
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "504 took {:?}",
        t.elapsed()
    );
    // 504 again, but the method's 150 ms deadline came before the bus's 200 ms timeout: the
    // body says so and gives the method's timeout.
    let (status, body) = rig.call("meter-1", "readHasty", json!(null)).await;
    assert_eq!(
        (
            status,
            body["error"].as_str(),
            body["timeout"].as_str(),
            body["timeout_ms"].as_u64()
        ),
        (504, Some("device_timeout"), Some("method"), Some(150)),
        "{body}"
    );
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("ms left before the method's deadline")
            || message.contains("not executed"),
        "{message}"
    );
    // Every request got exactly one response.
    for id in ["plc-1", "plc-gone", "meter-1", "psu-1"] {
        let stats = rig.emu.device_stats(id);
        assert_eq!(
            stats.method_requests, stats.method_responses,
            "{id}: {stats:?}"
        );
        assert_eq!(stats.method_responses_ignored, 0, "{id}");
    }
}

#[tokio::test]
async fn concurrent_methods_to_two_units_on_one_rtu_line_get_their_own_data() {
    let regs = Registers::with_units([1, 2]);
    regs.set_input(1, 0, &[0x0001, 0x86A0]); // 100000 → 1000.00 kWh
    regs.set_input(2, 0, &[0x0000, 0x2710]); // 10000 → 100.00 kWh
    let line = SerialLine::modbus_rtu(regs.clone()).unwrap();
    let rest = format!(
        r#"
[[bus]]
id = "rs485"
kind = "modbus_rtu"
path = "{path}"
baud_rate = 19200
parity = "even"
timeout_ms = 300

[[profile]]
id = "meter"
[[profile.method]]
name = "getEnergy"
[[profile.method.step]]
op = "read"
table = "input"
address = 0
fields = [{{ name = "kwh", type = "u32", scale = 0.01 }}]

{a}{b}"#,
        path = line.path().display(),
        a = device("meter-a", "rs485", "unit = 1\nprofile = \"meter\""),
        b = device("meter-b", "rs485", "unit = 2\nprofile = \"meter\""),
    );
    let rig = std::sync::Arc::new(Rig::start(&["meter-a", "meter-b"], "", &rest).await);
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..16 {
        let rig = rig.clone();
        calls.spawn(async move {
            let id = if i % 2 == 0 { "meter-a" } else { "meter-b" };
            (id, rig.call(id, "getEnergy", json!({})).await)
        });
    }
    for (id, (status, body)) in calls.join_all().await {
        let want = if id == "meter-a" { 1000.0 } else { 100.0 };
        assert_eq!((status, body), (200, json!({"kwh": want})), "{id}");
    }
    assert_eq!(regs.request_count(), 16);
}

#[tokio::test]
async fn devices_reconnect_by_themselves_after_the_hub_drops_everyone() {
    let regs = Registers::with_units([1]);
    regs.set_holding(1, 0, &[0x41C8, 0, 0, 0]);
    let plc = TcpServer::start(regs.clone()).await.unwrap();
    let rest = format!(
        "[[bus]]\nid = \"plc\"\nkind = \"modbus_tcp\"\naddress = \"{}\"\n{}{PLC_METHODS}{}{PLC_METHODS}",
        plc.addr(),
        device("a", "plc", "unit = 1"),
        device("b", "plc", "unit = 1"),
    );
    let rig = Rig::start(&["a", "b"], "", &rest).await;
    let before = rig.emu.device_stats("a").connects_accepted;
    rig.emu.drop_all_connections();
    for id in ["a", "b"] {
        rig.emu
            .wait_for(id, WAIT, |s| {
                s.connects_accepted > before && s.methods_subscribed
            })
            .await
            .unwrap();
        let (status, body) = rig.call(id, "getStatus", json!(null)).await;
        assert_eq!((status, body["speed"].as_f64()), (200, Some(25.0)));
    }
}

#[tokio::test]
async fn shutdown_lets_a_method_in_flight_finish_and_disconnects_cleanly() {
    let regs = Registers::with_units([1]);
    let plc = TcpServer::start(regs.clone()).await.unwrap();
    let rest = format!(
        "[[bus]]\nid = \"plc\"\nkind = \"modbus_tcp\"\naddress = \"{}\"\ntimeout_ms = 2000\n{}{PLC_METHODS}",
        plc.addr(),
        device("a", "plc", "unit = 1")
    );
    let mut rig = Rig::start(&["a"], "", &rest).await;
    regs.set_fault_times(1, Fault::Delay(Duration::from_millis(300)), 1);
    let client =
        ServiceClient::new(rig.emu.http_addr(), &rig.emu.service_connection_string()).unwrap();
    let call = tokio::spawn(async move {
        client
            .invoke("a", "getStatus", json!(null), 30)
            .await
            .unwrap()
    });
    regs.wait_requests(1).await;
    let gateway = rig.gateway.take().unwrap();
    gateway.shutdown(Duration::from_secs(5)).await;
    let (http, body) = call.await.unwrap();
    assert_eq!((http, body["status"].as_u64()), (200, Some(200)), "{body}");
    let stats = rig.emu.wait_for("a", WAIT, |s| !s.online).await.unwrap();
    assert_eq!(stats.method_requests, stats.method_responses);
}

#[tokio::test]
async fn sas_tokens_are_renewed_before_expiry_with_a_clean_reconnect() {
    let regs = Registers::with_units([1]);
    regs.set_holding(1, 0, &[0x41C8, 0, 0, 0]);
    let plc = TcpServer::start(regs.clone()).await.unwrap();
    let rest = format!(
        "[[bus]]\nid = \"plc\"\nkind = \"modbus_tcp\"\naddress = \"{}\"\n{}{PLC_METHODS}",
        plc.addr(),
        device("short-lived", "plc", "unit = 1"),
    );
    // A 10 s token: renewal comes at 7.5–8.5 s, before the emulator would cut the link at 10 s.
    let rig = Rig::start(&["short-lived"], "sas_ttl_s = 10", &rest).await;
    let first = rig.emu.device_stats("short-lived");
    let renewed = rig
        .emu
        .wait_for("short-lived", Duration::from_secs(15), |s| {
            s.connects_accepted > first.connects_accepted && s.methods_subscribed
        })
        .await
        .unwrap();
    assert_eq!(renewed.disconnects, first.disconnects + 1);
    assert_eq!(
        renewed.last_disconnect,
        Some(leafgate_emulator::DisconnectReason::ClientDisconnect),
        "the old connection must end with DISCONNECT, not token expiry"
    );
    assert_eq!(renewed.connects_refused, 0);
    let (status, _) = rig.call("short-lived", "getStatus", json!(null)).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_dead_unit_on_one_bus_never_delays_a_device_on_another_bus() {
    let rtu_regs = Registers::with_units([1]);
    rtu_regs.set_fault(1, Fault::Silent);
    let line = SerialLine::modbus_rtu(rtu_regs.clone()).unwrap();
    let regs = Registers::with_units([1]);
    regs.set_holding(1, 0, &[0x41C8, 0, 0, 0]);
    let plc = TcpServer::start(regs.clone()).await.unwrap();
    let rest = format!(
        "[[bus]]\nid = \"plc\"\nkind = \"modbus_tcp\"\naddress = \"{}\"\n[[bus]]\nid = \"rs485\"\nkind = \"modbus_rtu\"\npath = \"{}\"\ntimeout_ms = 2000\n{}{PLC_METHODS}{}{PLC_METHODS}",
        plc.addr(),
        line.path().display(),
        device("fast", "plc", "unit = 1"),
        device("dead", "rs485", "unit = 1"),
    );
    let rig = std::sync::Arc::new(Rig::start(&["fast", "dead"], "", &rest).await);
    let slow = {
        let rig = rig.clone();
        tokio::spawn(async move { rig.call("dead", "getStatus", json!(null)).await })
    };
    rtu_regs.wait_requests(1).await;
    let t = Instant::now();
    for _ in 0..5 {
        assert_eq!(rig.call("fast", "getStatus", json!(null)).await.0, 200);
    }
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "the fast device waited {:?}",
        t.elapsed()
    );
    assert!(!slow.is_finished(), "the dead unit answered too early");
    assert_eq!(slow.await.unwrap().0, 504);
}

#[tokio::test]
async fn a_reply_still_reaches_the_caller_when_the_hub_connection_drops_mid_method() {
    let regs = Registers::with_units([1]);
    regs.set_holding(1, 0, &[0x41C8, 0, 0, 0]);
    let plc = TcpServer::start(regs.clone()).await.unwrap();
    let rest = format!(
        "[[bus]]\nid = \"plc\"\nkind = \"modbus_tcp\"\naddress = \"{}\"\ntimeout_ms = 3000\n{}{PLC_METHODS}",
        plc.addr(),
        device("a", "plc", "unit = 1"),
    );
    let rig = std::sync::Arc::new(Rig::start(&["a"], "", &rest).await);
    // The device takes 800 ms; the hub drops every connection while it works.
    regs.set_fault_times(1, Fault::Delay(Duration::from_millis(800)), 1);
    let before = rig.emu.device_stats("a").connects_accepted;
    let call = {
        let rig = rig.clone();
        tokio::spawn(async move { rig.call("a", "getStatus", json!(null)).await })
    };
    regs.wait_requests(1).await;
    rig.emu.drop_all_connections();
    rig.emu
        .wait_for("a", WAIT, |s| {
            s.connects_accepted > before && s.methods_subscribed
        })
        .await
        .unwrap();
    let (status, body) = call.await.unwrap();
    assert_eq!((status, body["speed"].as_f64()), (200, Some(25.0)));
}

/// A serial bus's line ending is written once, after templates and raw text alike, and the raw
/// methods answer 504 at their configured deadline.
#[tokio::test]
async fn a_serial_line_ending_is_written_once_and_raw_methods_keep_their_deadline() {
    let psu = Psu::new();
    let psu_line = SerialLine::instrument(psu.clone()).unwrap();
    let rest = format!(
        r#"
[[bus]]
id = "psu"
kind = "serial"
path = "{psu_path}"
line_ending = "\r\n"
timeout_ms = 2000

{psu_dev}
[[device.method]]
name = "setVoltage"
[[device.method.step]]
op = "send"
request = "VOLT {{volts:.3}}"
params = [{{ name = "volts", type = "f64", min = 0, max = 30 }}]
expect = '^OK$'
"#,
        psu_path = psu_line.path().display(),
        psu_dev = device(
            "psu-1",
            "psu",
            "raw_methods = true\nraw_methods_timeout_ms = 700"
        ),
    );
    let rig = Rig::start(&["psu-1"], "", &rest).await;
    let (status, body) = rig.call("psu-1", "setVoltage", json!({"volts": 5.5})).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = rig
        .call("psu-1", "serial.send", json!({"text": "VOLT?"}))
        .await;
    assert_eq!(
        (status, body["reply"].as_str()),
        (200, Some("VOLT 5.500")),
        "{body}"
    );
    let lines: Vec<String> = psu.commands().into_iter().map(|c| c.line).collect();
    assert_eq!(lines, ["VOLT 5.500", "VOLT?"]);
    // Silent for longer than the raw deadline: 504 names the configured 700 ms.
    psu.set_fault_times(instrument::Fault::Silent, 10);
    let (status, body) = rig
        .call("psu-1", "serial.send", json!({"text": "VOLT?"}))
        .await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(
        (&body["timeout"], &body["timeout_ms"]),
        (&json!("method"), &json!(700)),
        "{body}"
    );
}

#[tokio::test]
async fn hostile_requests_get_a_4xx_and_never_reach_the_bus() {
    let regs = Registers::with_units([1]);
    let plc = TcpServer::start(regs.clone()).await.unwrap();
    let rest = format!(
        "[[bus]]\nid = \"plc\"\nkind = \"modbus_tcp\"\naddress = \"{}\"\n{}{PLC_METHODS}",
        plc.addr(),
        device("a", "plc", "unit = 1\nraw_methods = true"),
    );
    let rig = Rig::start(&["a"], "max_payload_bytes = 4096", &rest).await;
    let deep = (0..120).fold(json!(1), |v, _| json!([v]));
    let cases: Vec<(&str, Value, u16)> = vec![
        ("get/Status", json!({}), 501),
        ("get#", json!({}), 501),
        ("get+", json!({}), 501),
        ("%2e%2e", json!({}), 501),
        ("ünïcødé", json!({}), 501),
        ("setSpeed", json!({"speed": "NaN"}), 400),
        ("setSpeed", json!({"speed": 1e308}), 400),
        ("setSpeed", json!({"speed": -0.5}), 400),
        ("setSpeed", json!({"speed": 1, "extra": deep}), 400),
        ("setSpeed", json!([1, 2, 3]), 400),
        ("echo", json!({"text": "x".repeat(300)}), 400),
        ("echo", json!({"text": "x".repeat(10_000)}), 413),
        (
            "modbus.read",
            json!({"table": "holding", "address": -1, "count": 1}),
            400,
        ),
        (
            "modbus.read",
            json!({"table": "holding", "address": 0, "count": 126}),
            400,
        ),
        (
            "modbus.read",
            json!({"table": "coil", "address": 0, "count": 2001}),
            400,
        ),
        (
            "modbus.read",
            json!({"table": "holding", "address": 65535, "count": 2}),
            400,
        ),
        (
            "modbus.write",
            json!({"table": "holding", "address": 0, "values": [70000]}),
            400,
        ),
        (
            "modbus.write",
            json!({"table": "input", "address": 0, "values": [1]}),
            400,
        ),
        ("serial.send", json!({"text": "x"}), 501),
    ];
    let mut reached = 0;
    for (method, payload, want) in cases {
        let (http, body) = rig
            .client
            .invoke("a", method, payload.clone(), 30)
            .await
            .unwrap();
        if http == 400 && want == 501 {
            // The hub itself refuses some method names (400004); they never reach a device.
            continue;
        }
        assert_eq!(http, 200, "{method}: service API answered {http}: {body}");
        let status = body["status"].as_u64().unwrap();
        assert_eq!(
            status,
            u64::from(want),
            "{method} {}: {body}",
            payload.to_string().chars().take(80).collect::<String>()
        );
        assert!(body["payload"]["error"].is_string(), "{method}: {body}");
        reached += 1;
    }
    assert!(
        reached >= 15,
        "only {reached} hostile requests reached leafgate"
    );
    assert_eq!(
        regs.request_count(),
        0,
        "a hostile request reached the device"
    );
}

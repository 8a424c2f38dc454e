//! `[metrics]` with the real binary: the scrape passes `promtool check metrics`, a real
//! Prometheus (Debian's, installed by .ci/run) scrapes leafgate and answers a query for the
//! methods this test called, and clients that send nothing or garbage do not stop a scrape.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use leafgate::hub::sas::Key;
use leafgate_emulator::{Emulator, EmulatorConfig, ServiceClient};
use leafgate_sim::modbus::{Registers, TcpServer};
use leafgate_testkit::daemon::Log;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::logscan::{Scanned, run_command};

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const WAIT: Duration = Duration::from_secs(30);

/// One HTTP/1.1 request with `Connection: close`; the status and the body.
async fn http(addr: &str, request_line: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("{request_line}\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

/// The emulated hub with pump-7, a Modbus TCP PLC (holding 0 = 1234) and a config with
/// `[metrics]` on a free port, `sections` before the bus, and pump-7 with `getSpeed` plus
/// `device` (more of its TOML).
struct Site {
    emu: Emulator,
    regs: Registers,
    _plc: TcpServer,
    dir: tempfile::TempDir,
    config: std::path::PathBuf,
}

impl Site {
    async fn start(sections: &str, device: &str) -> Site {
        let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
        emu.add_device("pump-7", Key::from_base64(KEY).unwrap());
        let regs = Registers::with_units([1]);
        regs.set_holding(1, 0, &[1234]);
        let plc = TcpServer::start(regs.clone()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), emu.ca_pem()).unwrap();
        let config = dir.path().join("leafgate.toml");
        std::fs::write(
            &config,
            format!(
                "[hub]\nhostname = \"localhost\"\nport = {}\nca_file = \"{}\"\n\n\
                 [metrics]\nlisten = \"127.0.0.1:0\"\n\n{sections}\
                 [[bus]]\nid = \"plc\"\nkind = \"modbus_tcp\"\naddress = \"{}\"\n\n\
                 [[device]]\nid = \"pump-7\"\nshared_access_key = \"{KEY}\"\nbus = \"plc\"\nunit = 1\n\
                 [[device.method]]\nname = \"getSpeed\"\n[[device.method.step]]\nop = \"read\"\n\
                 table = \"holding\"\naddress = 0\nfields = [{{ name = \"speed\", type = \"u16\" }}]\n{device}",
                emu.mqtt_addr().port(),
                dir.path().join("ca.pem").display(),
                plc.addr()
            ),
        )
        .unwrap();
        Site {
            emu,
            regs,
            _plc: plc,
            dir,
            config,
        }
    }
}

/// `leafgate run` with `config`, once its metrics endpoint listens; and that endpoint.
async fn serving(config: &Path) -> (Scanned, String) {
    let daemon = Scanned::spawn(run_command(config), Log::Capture);
    let line = daemon
        .wait_line("metrics: serving Prometheus metrics at http://", WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.tail(20)));
    let endpoint = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned();
    (daemon, endpoint)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_real_prometheus_scrapes_the_methods_this_test_called() {
    for tool in ["/usr/bin/prometheus", "/usr/bin/promtool"] {
        assert!(
            Path::new(tool).is_file(),
            "{tool} is needed (apt install prometheus; .ci/run installs it)"
        );
    }
    let site = Site::start("", "").await;
    let (emu, config) = (&site.emu, &site.config);
    let (daemon, endpoint) = serving(config).await;
    daemon
        .wait_line("device pump-7: connected to", WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.tail(20)));

    let client = ServiceClient::new(emu.http_addr(), &emu.service_connection_string()).unwrap();
    for _ in 0..3 {
        let (http_status, body) = client
            .invoke("pump-7", "getSpeed", json!({}), 10)
            .await
            .unwrap();
        assert_eq!((http_status, &body["status"]), (200, &json!(200)), "{body}");
    }
    // A name the device does not have, twice: one bounded label, not one per name.
    for name in ["noSuchMethod", "another-unknown"] {
        let (_, body) = client.invoke("pump-7", name, json!({}), 10).await.unwrap();
        assert_eq!(body["status"], 501, "{body}");
    }

    // Clients that hold a connection without a request, or send garbage, do not stop a scrape.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(TcpStream::connect(&endpoint).await.unwrap());
    }
    let (status, _) = http(&endpoint, "BREW /coffee HTCPCP/1.0").await;
    assert_eq!(status, 400);
    let (status, _) = http(&endpoint, "GET /secrets HTTP/1.1").await;
    assert_eq!(status, 404);
    let (status, body) = http(&endpoint, "HEAD /metrics HTTP/1.1").await;
    assert_eq!((status, body.as_str()), (200, ""));
    let (status, scrape) = http(&endpoint, "GET /metrics HTTP/1.1").await;
    assert_eq!(status, 200, "{scrape}");
    drop(idle);
    for want in [
        "leafgate_methods_total{device=\"pump-7\",method=\"getSpeed\",status=\"200\"} 3",
        "leafgate_methods_total{device=\"pump-7\",method=\"(unknown)\",status=\"501\"} 2",
        "leafgate_method_seconds_count{device=\"pump-7\"} 5",
        "leafgate_device_connected{device=\"pump-7\"} 1",
        "leafgate_bus_up{bus=\"plc\"} 1",
        "leafgate_bus_queue_depth{bus=\"plc\"} 0",
        "leafgate_bus_queue_seconds_count{bus=\"plc\"} 3",
        "leafgate_bus_transactions_total{bus=\"plc\"} 3",
        "leafgate_bus_wire_seconds_count{bus=\"plc\"} 3",
    ] {
        assert!(scrape.contains(want), "missing {want:?} in:\n{scrape}");
    }
    assert!(!scrape.contains("noSuchMethod"), "{scrape}");

    // promtool, the Prometheus project's own linter of the format.
    let mut promtool = tokio::process::Command::new("/usr/bin/promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = promtool.stdin.take().unwrap();
    stdin.write_all(scrape.as_bytes()).await.unwrap();
    drop(stdin);
    let checked = promtool.wait_with_output().await.unwrap();
    // promtool lints the classic text format, where a counter's HELP names its `_total` sample;
    // OpenMetrics (what leafgate serves, as its content type says) names the family without
    // it. That one finding, for a counter that has its HELP, is the format's; any other fails.
    let findings = String::from_utf8_lossy(&checked.stdout).into_owned()
        + &String::from_utf8_lossy(&checked.stderr);
    for finding in findings.lines().filter(|l| !l.trim().is_empty()) {
        let counter = finding
            .strip_suffix("_total no help text")
            .filter(|family| {
                scrape.contains(&format!("# TYPE {family} counter\n"))
                    && scrape.contains(&format!("# HELP {family} "))
            });
        assert!(
            counter.is_some(),
            "promtool check metrics: {finding}\n{findings}"
        );
    }

    // A real Prometheus scraping it every second; its query API answers what this test called.
    let web = format!("127.0.0.1:{}", free_port());
    let prom_dir = site.dir.path().join("prometheus");
    std::fs::create_dir(&prom_dir).unwrap();
    let prom_config = prom_dir.join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: leafgate\n    static_configs:\n      - targets: ['{endpoint}']\n"
        ),
    )
    .unwrap();
    let _prometheus = tokio::process::Command::new("/usr/bin/prometheus")
        .arg(format!("--config.file={}", prom_config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            prom_dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={web}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let query = "GET /api/v1/query?query=leafgate_methods_total%7Bdevice%3D%22pump-7%22%2Cmethod%3D%22getSpeed%22%2Cstatus%3D%22200%22%7D HTTP/1.1";
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    let value = loop {
        // Prometheus has no event to await: its API is asked again until the scrape landed.
        if TcpStream::connect(&web).await.is_ok() {
            let (status, body) = http(&web, query).await;
            if status == 200 {
                let answer: Value = serde_json::from_str(&body).unwrap();
                if let Some(v) = answer["data"]["result"][0]["value"][1].as_str() {
                    break v.to_owned();
                }
            }
        }
        assert!(
            tokio::time::Instant::now() < until,
            "Prometheus never scraped leafgate's method count"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(value, "3");
    let (_, targets) = http(&web, "GET /api/v1/targets HTTP/1.1").await;
    assert!(targets.contains("\"health\":\"up\""), "{targets}");
}

/// The value of `series` (name and labels, exactly as served) in a scrape.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// The twin, cloud-to-device and telemetry series count what happened to one device: a twin
/// read, a desired value applied, reported updates, a command run, the same command delivered
/// again, one without a method, and readings held while the hub withholds its PUBACKs.
#[tokio::test]
async fn twin_c2d_and_buffered_telemetry_are_counted_per_device() {
    use leafgate_emulator::{C2dSend, C2dState, Fault, Target};

    let site = Site::start(
        "[twin]\nreport_interval_ms = 100\n\n[c2d]\n\n[telemetry]\nstore = \"\"\n\n",
        "[[device.desired]]\nname = \"speedSetpoint\"\n[[device.desired.step]]\nop = \"write\"\n\
         table = \"holding\"\naddress = 10\nfields = [{ name = \"speedSetpoint\", type = \"u16\" }]\n\
         [[device.telemetry]]\nname = \"state\"\ninterval_ms = 100\n[[device.telemetry.step]]\n\
         op = \"read\"\ntable = \"holding\"\naddress = 0\nfields = [{ name = \"speed\", type = \"u16\" }]\n",
    )
    .await;
    let (emu, regs, config) = (&site.emu, &site.regs, &site.config);
    let (daemon, endpoint) = serving(config).await;
    // Its health in reported: the twin was read and a patch accepted.
    emu.wait_reported("pump-7", |r| r.get("leafgate").is_some(), WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", daemon.tail(20)));
    emu.update_desired("pump-7", json!({"speedSetpoint": 1200}))
        .unwrap();
    emu.wait_reported("pump-7", |r| r["speedSetpoint"]["ac"] == 200, WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", daemon.tail(20)));
    assert_eq!(regs.holding(1, 10, 1), [1200]);

    let command = |mid: &str, method: Option<&str>| C2dSend {
        body: b"{}".to_vec(),
        properties: method
            .map(|m| vec![("method".to_owned(), m.to_owned())])
            .unwrap_or_default(),
        message_id: Some(mid.to_owned()),
        ..C2dSend::default()
    };
    emu.send_c2d("pump-7", command("cmd-1", Some("getSpeed")))
        .unwrap();
    emu.send_c2d("pump-7", command("cmd-1", Some("getSpeed")))
        .unwrap();
    emu.send_c2d("pump-7", command("cmd-2", None)).unwrap();
    emu.wait_c2d(
        "pump-7",
        |records| records.len() == 3 && records.iter().all(|r| r.state == C2dState::Completed),
        WAIT,
    )
    .await
    .unwrap_or_else(|e| panic!("{e:?}\n{}", daemon.tail(20)));

    // The hub stops acknowledging telemetry: readings pile up in the backlog.
    emu.inject_fault(Fault::WithholdPubacks(Target::All), None)
        .await;
    let buffered = "leafgate_telemetry_buffered{device=\"pump-7\"}";
    let until = tokio::time::Instant::now() + WAIT;
    let scrape = loop {
        // A gauge has no event to await: the endpoint is asked again until it moved.
        let (status, scrape) = http(&endpoint, "GET /metrics HTTP/1.1").await;
        assert_eq!(status, 200);
        if sample(&scrape, buffered).is_some_and(|n| n >= 3.0) {
            break scrape;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "{buffered} never reached 3:\n{scrape}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let at_least_one = |series: &str| {
        assert!(
            sample(&scrape, series).is_some_and(|n| n >= 1.0),
            "{series} missing or 0 in:\n{scrape}"
        );
    };
    at_least_one("leafgate_twin_reads_total{device=\"pump-7\"}");
    at_least_one("leafgate_twin_reported_total{device=\"pump-7\"}");
    at_least_one("leafgate_telemetry_sent_total{device=\"pump-7\"}");
    for (series, want) in [
        (
            "leafgate_twin_desired_total{device=\"pump-7\",status=\"200\"}",
            1.0,
        ),
        (
            "leafgate_c2d_messages_total{device=\"pump-7\",outcome=\"run\"}",
            1.0,
        ),
        (
            "leafgate_c2d_messages_total{device=\"pump-7\",outcome=\"duplicate\"}",
            1.0,
        ),
        (
            "leafgate_c2d_messages_total{device=\"pump-7\",outcome=\"rejected\"}",
            1.0,
        ),
        (
            "leafgate_methods_total{device=\"pump-7\",method=\"getSpeed\",status=\"200\"}",
            1.0,
        ),
    ] {
        assert_eq!(
            sample(&scrape, series),
            Some(want),
            "{series} in:\n{scrape}"
        );
    }
}

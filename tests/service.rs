//! leafgate as a systemd service, through the real binary: the notifications systemd sees on its
//! notify socket (a Unix datagram socket the test owns), SIGHUP partial reload checked against the
//! emulator's connection counts, SIGTERM drain, the unit's start condition, and the files the
//! .deb ships (unit, default config). The unit itself is checked by systemd-analyze and the
//! package by packaging/check-deb.sh.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use leafgate::hub::sas::Key;
use leafgate_emulator::{Emulator, EmulatorConfig, ServiceClient};
use leafgate_sim::modbus::{Fault, Registers, TcpServer};
use leafgate_testkit::daemon::Log;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::logscan::{Scanned, run_command};

const BIN: &str = env!("CARGO_BIN_EXE_leafgate");
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const WAIT: Duration = Duration::from_secs(10);

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The emulator, a temp dir with its CA, and the `[hub]` section pointing at it.
struct Hub {
    emu: Emulator,
    dir: tempfile::TempDir,
    client: ServiceClient,
}

impl Hub {
    async fn start(devices: &[&str]) -> Hub {
        let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
        for id in devices {
            emu.add_device(id, Key::from_base64(KEY).unwrap());
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), emu.ca_pem()).unwrap();
        let client = ServiceClient::new(emu.http_addr(), &emu.service_connection_string()).unwrap();
        Hub { emu, dir, client }
    }

    fn hub_section(&self) -> String {
        format!(
            "[hub]\nhostname = \"localhost\"\nport = {}\nca_file = \"{}\"\nreconnect_min_ms = 100\nreconnect_max_ms = 1000\nmax_connects_per_s = 1000\n",
            self.emu.mqtt_addr().port(),
            self.dir.path().join("ca.pem").display()
        )
    }

    /// Writes `leafgate.toml` with `[hub]` and `rest`; returns its path.
    fn write_config(&self, rest: &str) -> PathBuf {
        let path = self.dir.path().join("leafgate.toml");
        std::fs::write(&path, format!("{}\n{rest}", self.hub_section())).unwrap();
        path
    }

    async fn call(&self, device: &str, method: &str) -> (u16, Value) {
        let (http, body) = self
            .client
            .invoke(device, method, json!({}), 30)
            .await
            .unwrap();
        assert_eq!(http, 200, "service API answered {http}: {body}");
        (
            u16::try_from(body["status"].as_u64().unwrap()).unwrap(),
            body["payload"].clone(),
        )
    }

    fn connects(&self, id: &str) -> u64 {
        self.emu.device_stats(id).connects_accepted
    }
}

fn bus(id: &str, addr: std::net::SocketAddr, extra: &str) -> String {
    format!("[[bus]]\nid = \"{id}\"\nkind = \"modbus_tcp\"\naddress = \"{addr}\"\n{extra}\n")
}

/// A device with one method `get` reading holding register `address`.
fn device(id: &str, bus: &str, address: u16, timeout_ms: u32) -> String {
    format!(
        r#"[[device]]
id = "{id}"
shared_access_key = "{KEY}"
bus = "{bus}"
unit = 1
[[device.method]]
name = "get"
timeout_ms = {timeout_ms}
[[device.method.step]]
op = "read"
table = "holding"
address = {address}
fields = [{{ name = "v" }}]
"#
    )
}

/// `leafgate run` with `env` added (to play systemd) and its log captured.
fn start(config: &Path, env: &[(&str, &str)]) -> Scanned {
    start_as(config, env, None)
}

/// As [`start`], as user and group `uid` (the test must be root to switch).
fn start_as(config: &Path, env: &[(&str, &str)], uid: Option<u32>) -> Scanned {
    use std::os::unix::process::CommandExt as _;
    let mut command = run_command(config);
    command.envs(env.iter().copied());
    if let Some(uid) = uid {
        command.uid(uid).gid(uid);
    }
    Scanned::spawn(command, Log::Capture)
}

/// The test's end of `NOTIFY_SOCKET`: every datagram, as text.
struct NotifySocket {
    path: PathBuf,
    rx: mpsc::UnboundedReceiver<String>,
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let socket = tokio::net::UnixDatagram::bind(&path).unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf).await {
                if tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
                {
                    break;
                }
            }
        });
        NotifySocket {
            path,
            rx,
            seen: Vec::new(),
        }
    }

    /// The next message satisfying `want` (messages before it are kept in `seen`).
    async fn next(&mut self, what: &str, want: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + WAIT;
        loop {
            let message = tokio::time::timeout_at(until, self.rx.recv())
                .await
                .unwrap_or_else(|_| panic!("no {what} notification; got {:#?}", self.seen))
                .unwrap();
            self.seen.push(message.clone());
            if want(&message) {
                return message;
            }
        }
    }
}

fn lines(message: &str) -> Vec<&str> {
    message.lines().collect()
}

#[tokio::test]
async fn systemd_sees_ready_status_watchdog_reloading_and_stopping() {
    let hub = Hub::start(&["pump-1"]).await;
    let regs = Registers::with_units([1]);
    regs.set_holding(1, 0, &[42]);
    let plc = TcpServer::start(regs).await.unwrap();
    let config = hub.write_config(&format!(
        "{}{}",
        bus("plc", plc.addr(), ""),
        device("pump-1", "plc", 0, 2000)
    ));
    let mut notify = NotifySocket::bind(hub.dir.path());
    // WatchdogSec=0.4s: pings every 200 ms.
    let daemon = start(
        &config,
        &[
            ("NOTIFY_SOCKET", notify.path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );

    // READY=1 comes first, once everything is started, with a status line.
    let ready = notify.next("READY=1", |m| m.contains("READY=1")).await;
    assert_eq!(
        notify.seen.len(),
        1,
        "READY=1 was not first: {:#?}",
        notify.seen
    );
    // (The bus, even the device, may already be up: only the shape is certain.)
    let ready = lines(&ready);
    assert_eq!(ready[0], "READY=1");
    let status = ready[1].strip_prefix("STATUS=").unwrap();
    assert!(
        status.ends_with("/1 buses up") && status.contains("/1 devices connected, "),
        "{status}"
    );
    // STATUS as the device connects (and the bus comes up).
    notify
        .next("STATUS with the device connected", |m| {
            m == "STATUS=1/1 devices connected, 1/1 buses up\n"
        })
        .await;
    assert_eq!(hub.call("pump-1", "get").await, (200, json!({"v": 42})));
    // WATCHDOG=1 about every 200 ms.
    let t = Instant::now();
    for _ in 0..4 {
        notify.next("WATCHDOG=1", |m| m == "WATCHDOG=1\n").await;
    }
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "4 watchdog pings took {:?}",
        t.elapsed()
    );

    // SIGHUP: RELOADING=1 with MONOTONIC_USEC, then READY=1 again.
    daemon.signal(libc::SIGHUP).unwrap();
    let reloading = notify
        .next("RELOADING=1", |m| m.contains("RELOADING=1"))
        .await;
    let monotonic = lines(&reloading)
        .into_iter()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("no MONOTONIC_USEC in {reloading:?}"));
    assert!(monotonic.parse::<u64>().unwrap() > 0);
    let ready = notify
        .next("READY=1 after reload", |m| m.contains("READY=1"))
        .await;
    assert!(
        ready.contains("STATUS=1/1 devices connected, 1/1 buses up"),
        "{ready:?}"
    );

    // SIGTERM: STOPPING=1, exit 0.
    daemon.signal(libc::SIGTERM).unwrap();
    let stopping = notify
        .next("STOPPING=1", |m| m.contains("STOPPING=1"))
        .await;
    assert!(stopping.contains("STATUS=stopping"), "{stopping:?}");
    let (status, log) = daemon.wait().await;
    assert!(status.success(), "exit {status:?}: {log}");
    assert!(
        log.contains("systemd watchdog: pinging every 200 ms"),
        "{log}"
    );
}

#[tokio::test]
async fn sighup_restarts_only_what_changed_and_unchanged_devices_keep_their_connection() {
    let hub = Hub::start(&["keep", "change", "on-changed-bus", "gone", "fresh"]).await;
    let regs = Registers::with_units([1]);
    regs.set_holding(1, 0, &[42, 43]);
    let plc = TcpServer::start(regs.clone()).await.unwrap();
    let regs2 = Registers::with_units([1]);
    regs2.set_holding(1, 0, &[7]);
    let plc2 = TcpServer::start(regs2).await.unwrap();
    let v1 = format!(
        "{}{}{}{}{}{}",
        bus("plc", plc.addr(), ""),
        bus("plc2", plc2.addr(), "timeout_ms = 1000"),
        device("keep", "plc", 0, 3000),
        device("change", "plc", 0, 3000),
        device("on-changed-bus", "plc2", 0, 3000),
        device("gone", "plc", 0, 3000),
    );
    let config = hub.write_config(&v1);
    let daemon = start(&config, &[]);
    for id in ["keep", "change", "on-changed-bus", "gone"] {
        hub.emu.wait_method_ready(id, WAIT).await.unwrap();
    }
    let before: Vec<u64> = ["keep", "change", "on-changed-bus"]
        .iter()
        .map(|id| hub.connects(id))
        .collect();

    // A method in flight on a device that is about to restart.
    regs.set_fault_times(1, Fault::Delay(Duration::from_millis(800)), 1);
    let in_flight = {
        let client =
            ServiceClient::new(hub.emu.http_addr(), &hub.emu.service_connection_string()).unwrap();
        tokio::spawn(async move { client.invoke("change", "get", json!({}), 30).await })
    };
    regs.wait_requests(1).await;

    // v2: change's method reads another register; plc2's timeout changes; gone goes; fresh comes.
    let v2 = format!(
        "{}{}{}{}{}{}",
        bus("plc", plc.addr(), ""),
        bus("plc2", plc2.addr(), "timeout_ms = 1500"),
        device("keep", "plc", 0, 3000),
        device("change", "plc", 1, 3000),
        device("on-changed-bus", "plc2", 0, 3000),
        device("fresh", "plc", 0, 3000),
    );
    hub.write_config(&v2);
    daemon.signal(libc::SIGHUP).unwrap();

    // The method in flight still gets its (old-config) answer, from the draining session.
    let (http, body) = in_flight.await.unwrap().unwrap();
    assert_eq!(
        (http, &body),
        (200, &json!({"status": 200, "payload": {"v": 42}}))
    );
    for (i, id) in ["change", "on-changed-bus"].iter().enumerate() {
        hub.emu
            .wait_for(id, WAIT, |s| {
                s.connects_accepted > before[i + 1] && s.online && s.methods_subscribed
            })
            .await
            .unwrap_or_else(|_| panic!("{id} did not reconnect: {}", daemon.log()));
    }
    hub.emu.wait_method_ready("fresh", WAIT).await.unwrap();
    hub.emu.wait_for("gone", WAIT, |s| !s.online).await.unwrap();
    daemon.wait_line("reloaded", WAIT).await.unwrap();
    let log = daemon.log();
    assert!(
        log.contains("devices: 1 kept, 2 restarted, 1 started, 1 stopped; buses: 1 kept, 1 restarted, 0 started, 0 stopped"),
        "{log}"
    );
    // The new config is live, and the unchanged device never reconnected.
    assert_eq!(hub.call("change", "get").await, (200, json!({"v": 43})));
    assert_eq!(
        hub.call("on-changed-bus", "get").await,
        (200, json!({"v": 7}))
    );
    assert_eq!(hub.call("fresh", "get").await, (200, json!({"v": 42})));
    assert_eq!(hub.call("keep", "get").await, (200, json!({"v": 42})));
    let keep = hub.emu.device_stats("keep");
    assert_eq!(
        keep.connects_accepted, before[0],
        "keep reconnected: {keep:?}"
    );
    assert!(keep.online);

    // An invalid config: every problem is logged, nothing restarts, everything still answers.
    hub.write_config(&format!(
        "{v2}\n[[bus]]\nid = \"bad\"\nkind = \"modbus_tcp\"\nadress = \"x\"\n[[device]]\nid = \"orphan\"\nshared_access_key = \"{KEY}\"\nbus = \"nowhere\"\nunit = 1\nraw_methods = true\n"
    ));
    let connects: Vec<u64> = ["keep", "change", "on-changed-bus", "fresh"]
        .iter()
        .map(|id| hub.connects(id))
        .collect();
    daemon.signal(libc::SIGHUP).unwrap();
    daemon.wait_line("reload refused", WAIT).await.unwrap();
    let log = daemon.log();
    assert!(log.contains("unknown field `adress`"), "{log}");
    assert!(
        log.contains("still running on the previous config"),
        "{log}"
    );
    assert_eq!(hub.call("keep", "get").await, (200, json!({"v": 42})));
    assert_eq!(hub.call("change", "get").await, (200, json!({"v": 43})));
    for (i, id) in ["keep", "change", "on-changed-bus", "fresh"]
        .iter()
        .enumerate()
    {
        assert_eq!(hub.connects(id), connects[i], "{id} reconnected");
    }

    daemon.signal(libc::SIGTERM).unwrap();
    let (status, log) = daemon.wait().await;
    assert!(status.success(), "exit {status:?}: {log}");
    for id in ["keep", "change", "on-changed-bus", "fresh", "gone"] {
        let stats = hub.emu.device_stats(id);
        assert_eq!(
            stats.method_requests, stats.method_responses,
            "{id}: every request gets exactly one response: {stats:?}"
        );
    }
}

#[tokio::test]
async fn a_method_in_flight_at_sigterm_gets_its_answer_and_new_requests_get_503() {
    let hub = Hub::start(&["pump-1"]).await;
    let regs = Registers::with_units([1]);
    regs.set_holding(1, 0, &[42]);
    let plc = TcpServer::start(regs.clone()).await.unwrap();
    let config = hub.write_config(&format!(
        "{}{}",
        bus("plc", plc.addr(), "timeout_ms = 3000"),
        device("pump-1", "plc", 0, 5000)
    ));
    let daemon = start(&config, &[]);
    hub.emu.wait_method_ready("pump-1", WAIT).await.unwrap();
    regs.set_fault_times(1, Fault::Delay(Duration::from_millis(1500)), 1);
    let slow = {
        let client =
            ServiceClient::new(hub.emu.http_addr(), &hub.emu.service_connection_string()).unwrap();
        tokio::spawn(async move { client.invoke("pump-1", "get", json!({}), 30).await })
    };
    regs.wait_requests(1).await;
    let t = Instant::now();
    daemon.signal(libc::SIGTERM).unwrap();
    let line = daemon
        .wait_line("stopping: new requests get 503", WAIT)
        .await
        .unwrap();
    // The estimate is the longest configured method (5,000 ms) plus 2 s to disconnect: raw
    // methods are off, so their 10 s deadline does not count.
    assert!(line.contains("(at most 7000 ms)"), "{line}");
    // While draining: a new request is refused at once, without touching the hardware.
    let (status, body) = hub.call("pump-1", "get").await;
    assert_eq!(
        (status, body["error"].as_str(), body["bus"].as_str()),
        (503, Some("bus_unavailable"), Some("plc")),
        "{body}"
    );
    assert_eq!(regs.request_count(), 1);
    // The one in flight finishes and is answered.
    let (http, body) = slow.await.unwrap().unwrap();
    assert_eq!(
        (http, &body),
        (200, &json!({"status": 200, "payload": {"v": 42}}))
    );
    let (status, log) = daemon.wait().await;
    assert!(status.success(), "exit {status:?}: {log}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        t.elapsed()
    );
    let stats = hub
        .emu
        .wait_for("pump-1", WAIT, |s| !s.online)
        .await
        .unwrap();
    assert_eq!(stats.method_requests, stats.method_responses, "{stats:?}");
    assert_eq!(
        stats.last_disconnect,
        Some(leafgate_emulator::DisconnectReason::ClientDisconnect)
    );
}

#[test]
fn the_start_condition_skips_a_config_without_devices_but_not_a_broken_one() {
    let check = |config: &Path| {
        Command::new(BIN)
            .args(["check", "--has-devices", "-c"])
            .arg(config)
            .output()
            .unwrap()
    };
    // The shipped default: valid, no device: exit 1 (ExecCondition skips the start).
    let out = check(&root().join("packaging/leafgate.toml"));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no [[device]] configured"));
    // The full sample has devices: exit 0.
    assert!(check(&root().join("config/leafgate.toml")).status.success());
    // A broken config passes the condition, so that `run` refuses it with 78 and the unit fails.
    let broken = root().join("tests/fixtures/config/unknown_key/leafgate.toml");
    let out = check(&broken);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `adress`"));
}

/// The shipped default config is the sample with every bus, profile and device commented out
/// under a preamble, so every key stays documented where users edit. On drift, regenerate it:
/// `LEAFGATE_BLESS=1 cargo test the_shipped_default`.
#[test]
fn the_shipped_default_config_is_the_commented_sample_and_describes_no_device() {
    let sample = std::fs::read_to_string(root().join("config/leafgate.toml")).unwrap();
    let shipped_path = root().join("packaging/leafgate.toml");
    let shipped = std::fs::read_to_string(&shipped_path).unwrap();
    let first = sample.lines().next().unwrap();
    let preamble = &shipped[..shipped.find(first).expect("the sample's first line")];
    assert!(preamble.contains("leafgate check --has-devices"));
    let mut commented = false;
    let body: Vec<String> = sample
        .lines()
        .map(|l| {
            commented |= l.starts_with("# ----");
            match (commented, l) {
                (false, _) | (true, "") => l.to_owned(),
                (true, l) if l.starts_with('#') => format!("#{l}"),
                (true, l) => format!("# {l}"),
            }
        })
        .collect();
    let expected = format!("{preamble}{}\n", body.join("\n"));
    if std::env::var_os("LEAFGATE_BLESS").is_some() {
        std::fs::write(&shipped_path, &expected).unwrap();
    }
    assert!(
        shipped == expected,
        "packaging/leafgate.toml drifted from config/leafgate.toml"
    );
    let cfg = leafgate::config::load(&shipped_path).unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.devices.is_empty() && cfg.buses.is_empty());
}

#[test]
fn the_unit_outlasts_the_longest_drain_and_keeps_its_contract() {
    let unit = std::fs::read_to_string(root().join("packaging/leafgate.service")).unwrap();
    let value = |key: &str| -> Vec<&str> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .collect()
    };
    for (key, want) in [
        ("Type", "notify"),
        (
            "ExecStart",
            "/usr/bin/leafgate run -c /etc/leafgate/leafgate.toml",
        ),
        (
            "ExecCondition",
            "/usr/bin/leafgate check --has-devices -c /etc/leafgate/leafgate.toml",
        ),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Restart", "on-failure"),
        ("RestartPreventExitStatus", "78"),
        ("User", "leafgate"),
        ("SupplementaryGroups", "dialout"),
        ("CapabilityBoundingSet", ""),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
    ] {
        assert_eq!(value(key), [want], "{key}=");
    }
    // Method deadlines are at most 300 s; the drain adds 2 s to disconnect.
    let longest_drain = Duration::from_millis(300_000) + Duration::from_secs(2);
    let stop: u64 = value("TimeoutStopSec")[0].parse().unwrap();
    assert!(Duration::from_secs(stop) > longest_drain);
    // The watchdog must allow two missed pings at least.
    let watchdog: u64 = value("WatchdogSec")[0].parse().unwrap();
    assert!(watchdog >= 10);
    // 10,000 device connections plus buses and the journal.
    let nofile: u64 = value("LimitNOFILE")[0].parse().unwrap();
    assert!(nofile > 10_000 + 1000);
}

/// Replaces `path` by a FIFO nobody writes to: a blocking open or read of it waits forever.
fn replace_by_fifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt as _;
    std::fs::remove_file(path).unwrap();
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
}

#[tokio::test]
async fn a_reload_reading_a_fifo_is_refused_and_the_main_loop_keeps_serving_signals_and_systemd() {
    let hub = Hub::start(&["pump-1"]).await;
    let regs = Registers::with_units([1]);
    regs.set_holding(1, 0, &[42]);
    let plc = TcpServer::start(regs).await.unwrap();
    let key_file = hub.dir.path().join("pump-1.key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let with_key_file = |text: String| {
        text.replace(
            &format!("shared_access_key = \"{KEY}\""),
            &format!(
                "shared_access_key_file = {:?}",
                key_file.display().to_string()
            ),
        )
    };
    let config = hub.write_config(&with_key_file(format!(
        "{}{}",
        bus("plc", plc.addr(), ""),
        device("pump-1", "plc", 0, 2000)
    )));
    let mut notify = NotifySocket::bind(hub.dir.path());
    // WatchdogSec=0.4s: pings every 200 ms.
    let daemon = start(
        &config,
        &[
            ("NOTIFY_SOCKET", notify.path.to_str().unwrap()),
            ("WATCHDOG_USEC", "400000"),
        ],
    );
    notify.next("READY=1", |m| m.contains("READY=1")).await;
    hub.emu.wait_method_ready("pump-1", WAIT).await.unwrap();
    let connects = hub.connects("pump-1");

    // The key file becomes a FIFO: the reload is refused with the problem naming it.
    replace_by_fifo(&key_file);
    daemon.signal(libc::SIGHUP).unwrap();
    let ready = notify
        .next("READY=1 after the refused reload", |m| {
            m.contains("READY=1")
        })
        .await;
    assert!(
        ready.contains("last reload refused: 1 config problem(s)"),
        "{ready:?}"
    );
    // READY=1 and the log lines travel separately: wait for the lines.
    daemon
        .wait_line(&format!(
            "{}: device \"pump-1\".shared_access_key_file: cannot read {}: is a FIFO (named pipe), not a regular file",
            config.display(),
            key_file.display()
        ), WAIT)
        .await.unwrap();
    daemon
        .wait_line("still running on the previous config", WAIT)
        .await
        .unwrap();
    // The main loop is alive: the watchdog keeps coming, and the device still answers on its
    // old session.
    for _ in 0..2 {
        notify.next("WATCHDOG=1", |m| m == "WATCHDOG=1\n").await;
    }
    assert_eq!(hub.call("pump-1", "get").await, (200, json!({"v": 42})));

    // The config file itself becomes a FIFO: refused the same way, and a second SIGHUP is
    // still heard.
    replace_by_fifo(&config);
    for _ in 0..2 {
        daemon.signal(libc::SIGHUP).unwrap();
        let ready = notify
            .next("READY=1 after the refused reload", |m| {
                m.contains("READY=1")
            })
            .await;
        assert!(
            ready.contains("last reload refused: 1 config problem(s)"),
            "{ready:?}"
        );
    }
    daemon
        .wait_line(
            &format!(
                "{}: cannot read: is a FIFO (named pipe), not a regular file",
                config.display()
            ),
            WAIT,
        )
        .await
        .unwrap();
    notify.next("WATCHDOG=1", |m| m == "WATCHDOG=1\n").await;
    assert_eq!(hub.connects("pump-1"), connects, "the device reconnected");

    // SIGTERM still stops it cleanly.
    daemon.signal(libc::SIGTERM).unwrap();
    notify
        .next("STOPPING=1", |m| m.contains("STOPPING=1"))
        .await;
    let (status, log) = daemon.wait().await;
    assert!(status.success(), "exit {status:?}: {log}");
}

/// A serial device the kernel refuses is logged with what to change: under systemd, the
/// `systemctl edit leafgate` drop-in line. The errors are real: EPERM from an immutable file
/// (the unit's device cgroup gives the same errno, but needs a running systemd), EACCES from a
/// mode-000 file opened by an unprivileged user. Named like an i.MX UART, so the hint names its
/// device class.
#[tokio::test]
async fn a_refused_serial_device_is_logged_with_the_drop_in_that_lets_the_service_at_it() {
    use std::os::unix::fs::PermissionsExt as _;
    let hub = Hub::start(&["meter-1"]).await;
    let node = hub.dir.path().join("ttymxc7");
    std::fs::write(&node, b"").unwrap();
    let config = hub.write_config(&format!(
        "[[bus]]\nid = \"rs485\"\nkind = \"modbus_rtu\"\npath = \"{}\"\n\n\
         [[device]]\nid = \"meter-1\"\nshared_access_key = \"{KEY}\"\nbus = \"rs485\"\nunit = 1\nraw_methods = true\n",
        node.display()
    ));
    let systemd = [("INVOCATION_ID", "5f0c1e5bd0a04a4c8c0e5f5d6c7b8a91")];

    // EPERM, as from `DevicePolicy=closed`.
    match Immutable::set(&node) {
        Ok(_immutable) => {
            let daemon = start(&config, &systemd);
            let line = down_line(&daemon).await;
            assert!(line.contains("Operation not permitted"), "{line}");
            assert!(
                line.contains("add the lines `[Service]` and `DeviceAllow=char-ttymxc rw`"),
                "{line}"
            );
            // Outside systemd there is no device policy to blame.
            let daemon = start(&config, &[]);
            let line = down_line(&daemon).await;
            assert!(line.contains("Operation not permitted"), "{line}");
            assert!(!line.contains("DeviceAllow"), "{line}");
        }
        Err(e) => eprintln!(
            "EPERM case skipped: cannot make {} immutable: {e}",
            node.display()
        ),
    }

    // EACCES: mode 000, as an unprivileged user (root would be let through).
    std::fs::set_permissions(&node, std::fs::Permissions::from_mode(0o000)).unwrap();
    // SAFETY: geteuid has no preconditions.
    let uid = (unsafe { libc::geteuid() } == 0).then_some(65534);
    if uid.is_some() {
        // The unprivileged user reads the config and the CA through the test's directory.
        for (path, mode) in [
            (hub.dir.path().to_path_buf(), 0o755),
            (config.clone(), 0o644),
            (hub.dir.path().join("ca.pem"), 0o644),
        ] {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        }
    }
    let daemon = start_as(&config, &systemd, uid);
    let line = down_line(&daemon).await;
    assert!(line.contains("Permission denied"), "{line}");
    assert!(
        line.contains("0000, not read/writable by group dialout"),
        "{line}"
    );
    assert!(line.contains("GROUP=\"dialout\", MODE=\"0660\""), "{line}");
}

/// The first "bus rs485 is down" line of the daemon's log from those words on, once it has been
/// written whole.
async fn down_line(daemon: &Scanned) -> String {
    let what = "bus rs485 is down";
    let line = daemon.wait_line(what, WAIT).await.unwrap();
    line[line.find(what).unwrap()..].to_owned()
}

/// The immutable attribute (`chattr +i`), removed again on drop so the temp dir can go.
struct Immutable(PathBuf);

impl Immutable {
    const FLAG: libc::c_int = 0x10; // FS_IMMUTABLE_FL

    fn set(path: &Path) -> std::io::Result<Immutable> {
        Immutable::change(path, true)?;
        Ok(Immutable(path.to_path_buf()))
    }

    fn change(path: &Path, on: bool) -> std::io::Result<()> {
        use std::os::fd::AsRawFd as _;
        let file = std::fs::File::open(path)?;
        let mut flags: libc::c_int = 0;
        // SAFETY: FS_IOC_GETFLAGS/SETFLAGS read and write one int through the pointer.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        flags = if on {
            flags | Self::FLAG
        } else {
            flags & !Self::FLAG
        };
        // SAFETY: as above.
        if unsafe { libc::ioctl(file.as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Immutable::change(&self.0, false);
    }
}

/// The unit lets the service at the serial devices of common boards and nothing else. A
/// `char-NAME` class is the tty driver's name in /proc/devices, which is the node's name
/// without its line number (the kernel names nodes driver + index): `ttymxc` for /dev/ttymxc0.
#[test]
fn the_unit_allows_the_serial_device_classes_of_common_boards() {
    let unit = std::fs::read_to_string(root().join("packaging/leafgate.service")).unwrap();
    let values = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(values("DevicePolicy"), ["closed"]);
    assert!(values("PrivateDevices").is_empty());
    let allowed = values("DeviceAllow");
    let classes = [
        "ttyS",     // 8250/16550: PCs, many SoCs
        "ttyUSB",   // USB serial adapters
        "ttyACM",   // USB CDC ACM
        "ttyAMA",   // ARM PL011: Raspberry Pi
        "ttyXRUSB", // Exar's USB UART driver
        "ttymxc",   // NXP i.MX
        "ttyLP",    // NXP LPUART (i.MX 7ULP/8, Layerscape)
        "ttySC",    // SC16IS7xx SPI/I2C UARTs: RS-485 HATs
        "ttyMAX",   // MAX310x SPI UARTs
        "ttyTHS",   // NVIDIA Tegra/Jetson high-speed UARTs
        "ttyPS",    // Xilinx Zynq
        "ttyO",     // TI OMAP (older kernels; 8250_omap names them ttyS)
        "ttyAML",   // Amlogic
        "ttyMSM",   // Qualcomm
        "ttySAC",   // Samsung Exynos
    ];
    for class in classes {
        let entry = format!("char-{class} rw");
        assert!(allowed.contains(&entry), "no DeviceAllow={entry}");
    }
    // Only serial classes, read and write (no mknod: devices come from udev).
    assert_eq!(allowed.len(), classes.len(), "{allowed:?}");
}

/// A bus that cannot connect says so once: in the 503's message, in the line logging the
/// request, and in the line saying the bus is down (each once gave the cause wrapped in
/// `bus unavailable: ` two or three times over).
#[tokio::test]
async fn a_bus_that_cannot_connect_states_its_cause_once_in_the_reply_and_the_log() {
    let hub = Hub::start(&["pump-1"]).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let config = hub.write_config(&format!(
        "{}{}",
        bus(
            "gone",
            dead,
            "reconnect_min_ms = 5000\nreconnect_max_ms = 5000"
        ),
        device("pump-1", "gone", 0, 2000)
    ));
    let daemon = start(&config, &[]);
    hub.emu.wait_method_ready("pump-1", WAIT).await.unwrap();
    daemon.wait_line("bus gone is down", WAIT).await.unwrap();
    let (status, body) = hub.call("pump-1", "get").await;
    assert_eq!(
        (status, body["error"].as_str(), body["bus"].as_str()),
        (503, Some("bus_unavailable"), Some("gone")),
        "{body}"
    );
    let message = body["message"].as_str().unwrap();
    assert_eq!(message.matches("bus unavailable").count(), 1, "{message}");
    assert_eq!(message.matches("cannot connect").count(), 1, "{message}");
    daemon
        .wait_line("method get on pump-1: 503", WAIT)
        .await
        .unwrap();
    let log = daemon.log();
    for start in ["bus gone is down", "method get on pump-1: 503"] {
        let line = log
            .lines()
            .find(|l| l.contains(start))
            .unwrap_or_else(|| panic!("no {start:?} in the log:\n{log}"));
        assert!(line.matches("bus unavailable").count() <= 1, "{line}");
        assert_eq!(line.matches("cannot connect").count(), 1, "{line}");
    }
}

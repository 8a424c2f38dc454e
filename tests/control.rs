//! `leafgate call` and `leafgate status` with the real binary: through a running daemon's control
//! socket (configured, raw and unknown methods, an unknown device, a group read, the status of
//! devices, buses and recent errors), and `call --offline` on a Modbus RTU line (a pty), refused
//! while a daemon holds that line.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use leafgate::hub::sas::Key;
use leafgate_emulator::{Emulator, EmulatorConfig};
use leafgate_sim::modbus::{Registers, TcpServer};
use leafgate_sim::pty::Pty;
use leafgate_testkit::daemon::Log;
use serde_json::{Value, json};

use crate::logscan::{Scanned, run_command};

const BIN: &str = env!("CARGO_BIN_EXE_leafgate");
const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const WAIT: Duration = Duration::from_secs(30);

/// `leafgate ARGS`, without blocking the runtime the simulators run on.
async fn leafgate(args: &[&str]) -> Output {
    tokio::process::Command::new(BIN)
        .args(args)
        .output()
        .await
        .unwrap()
}

/// `leafgate run` with `config`, once its control socket is served.
async fn serving(config: &Path) -> Scanned {
    let daemon = Scanned::spawn(run_command(config), Log::Capture);
    daemon
        .wait_line(
            "control: leafgate call and leafgate status are served on",
            WAIT,
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.tail(20)));
    daemon
}

/// The exit code and the JSON a `call` printed.
fn answer(out: &Output) -> (Option<i32>, Value) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), json)
}

const PUMP: &str = "\
[[device]]
id = \"pump-7\"
shared_access_key = \"KEY\"
bus = \"plc\"
unit = 1
raw_methods = true
[[device.method]]
name = \"getSpeed\"
[[device.method.step]]
op = \"read\"
table = \"holding\"
address = 0
fields = [{ name = \"speed\", type = \"u16\" }]
[[device.telemetry]]
name = \"state\"
interval_ms = 3600000
[[device.telemetry.step]]
op = \"read\"
table = \"input\"
address = 5
fields = [{ name = \"temperature\", type = \"i16\", scale = 0.1 }]
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_and_status_go_through_the_running_daemon_with_the_method_contract() {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    emu.add_device("pump-7", Key::from_base64(KEY).unwrap());
    let regs = Registers::with_units([1]);
    regs.set_holding(1, 0, &[1234, 42]);
    regs.set_input(1, 5, &[215]);
    let plc = TcpServer::start(regs.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), emu.ca_pem()).unwrap();
    let socket = dir.path().join("control.sock");
    let config = dir.path().join("leafgate.toml");
    std::fs::write(
        &config,
        format!(
            "[hub]\nhostname = \"localhost\"\nport = {}\nca_file = \"{}\"\n\n\
             [control]\nsocket = \"{}\"\n\n\
             [[bus]]\nid = \"plc\"\nkind = \"modbus_tcp\"\naddress = \"{}\"\ntimeout_ms = 300\n\n{}",
            emu.mqtt_addr().port(),
            dir.path().join("ca.pem").display(),
            socket.display(),
            plc.addr(),
            PUMP.replace("KEY", KEY)
        ),
    )
    .unwrap();
    let daemon = serving(&config).await;
    daemon
        .wait_line("device pump-7: connected to", WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.tail(20)));
    {
        use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
        let meta = std::fs::metadata(&socket).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    }
    let s = socket.to_str().unwrap();

    // A configured method: the mapped reply, exit 0.
    let out = leafgate(&["call", "--socket", s, "pump-7", "getSpeed"]).await;
    assert_eq!(
        answer(&out),
        (Some(0), json!({"status": 200, "payload": {"speed": 1234}}))
    );
    // A raw method with its payload.
    let out = leafgate(&[
        "call",
        "--socket",
        s,
        "pump-7",
        "modbus.read",
        r#"{"table": "holding", "address": 0, "count": 2}"#,
    ])
    .await;
    assert_eq!(
        answer(&out),
        (
            Some(0),
            json!({"status": 200, "payload": {"values": [1234, 42]}})
        )
    );
    // A method the device does not have: 501 with the names it has, exit 1.
    let out = leafgate(&["call", "--socket", s, "pump-7", "getSpeeed"]).await;
    let (code, reply) = answer(&out);
    assert_eq!(code, Some(1));
    assert_eq!(reply["status"], 501, "{reply}");
    assert_eq!(reply["payload"]["error"], "unknown_method");
    assert!(
        reply["payload"]["methods"]
            .as_array()
            .unwrap()
            .contains(&json!("getSpeed")),
        "{reply}"
    );
    // A payload that is not JSON: 400, as from the hub.
    let out = leafgate(&["call", "--socket", s, "pump-7", "modbus.read", "{table"]).await;
    let (code, reply) = answer(&out);
    assert_eq!((code, &reply["status"]), (Some(1), &json!(400)), "{reply}");
    // A device this gateway does not run: 404 with the nearest id.
    let out = leafgate(&["call", "--socket", s, "pump-8", "getSpeed"]).await;
    let (code, reply) = answer(&out);
    assert_eq!((code, &reply["status"]), (Some(1), &json!(404)), "{reply}");
    assert_eq!(reply["payload"]["error"], "unknown_device");
    assert!(
        reply["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("did you mean \"pump-7\"")
    );
    // A telemetry group read once, with the group's scaling.
    let out = leafgate(&["call", "--socket", s, "pump-7", "--group", "state"]).await;
    assert_eq!(
        answer(&out),
        (
            Some(0),
            json!({"status": 200, "payload": {"temperature": 21.5}})
        )
    );
    // The journal line of a local call names its caller in the rid.
    let line = daemon
        .wait_line("method getSpeed on pump-7: 200", WAIT)
        .await
        .unwrap();
    assert!(line.contains("rid=local-uid"), "{line}");

    // The hardware goes away: the failure is answered, and shows in status as a recent error.
    drop(plc);
    let out = leafgate(&["call", "--socket", s, "pump-7", "getSpeed"]).await;
    let (code, reply) = answer(&out);
    assert_eq!(code, Some(1));
    assert!(
        [503, 504].contains(&reply["status"].as_u64().unwrap()),
        "{reply}"
    );
    let out = leafgate(&["status", "--socket", s, "--json"]).await;
    let (code, status) = answer(&out);
    assert_eq!(code, Some(0), "{status}");
    let status = &status["payload"];
    assert_eq!(status["pid"], daemon.pid());
    let device = &status["devices"][0];
    assert_eq!(
        (&device["id"], &device["bus"], &device["connected"]),
        (&json!("pump-7"), &json!("plc"), &json!(true)),
        "{status}"
    );
    assert_eq!(status["buses"][0]["id"], "plc");
    assert_eq!(status["buses"][0]["kind"], "modbus_tcp");
    let recent = status["recent"].as_array().unwrap();
    assert!(
        recent.iter().any(|l| l["device"] == "pump-7"
            && l["message"]
                .as_str()
                .unwrap()
                .starts_with("method getSpeed on pump-7: 50")),
        "{status}"
    );
    // The same, for a person.
    let out = leafgate(&["status", "--socket", s]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for want in [
        "devices: 1/1 connected",
        "pump-7",
        "buses: ",
        "modbus_tcp",
        "warnings and errors:",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }

    // The daemon stops: its socket goes, and a call says nobody answers (exit 2).
    daemon.signal(libc::SIGTERM).unwrap();
    let (status, log) = daemon.wait().await;
    assert!(status.success(), "{log}");
    assert!(!socket.exists());
    let out = leafgate(&["call", "--socket", s, "pump-7", "getSpeed"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no leafgate answers on"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A site on one RTU line (a pty): meter-1 at unit 3. The hub is never reached: nothing listens
/// on its port, and `--offline` needs none.
fn rtu_site(dir: &Path, name: &str, line: &Path, socket: &str) -> std::path::PathBuf {
    let config = dir.join(name);
    std::fs::write(
        &config,
        format!(
            "[hub]\nhostname = \"localhost\"\nport = 9\n\n\
             [control]\nsocket = \"{socket}\"\n\n\
             [[bus]]\nid = \"rs485\"\nkind = \"modbus_rtu\"\npath = \"{}\"\nbaud_rate = 19200\ntimeout_ms = 500\n\n\
             [[device]]\nid = \"meter-1\"\nshared_access_key = \"{KEY}\"\nbus = \"rs485\"\nunit = 3\n\
             [[device.method]]\nname = \"readVoltage\"\n[[device.method.step]]\nop = \"read\"\n\
             table = \"input\"\naddress = 0\nfields = [{{ name = \"voltage\", type = \"u16\", scale = 0.1 }}]\n",
            line.display()
        ),
    )
    .unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_offline_runs_on_the_line_and_is_refused_while_a_daemon_holds_it() {
    let regs = Registers::with_units([3]);
    regs.set_input(3, 0, &[2301]);
    let pty = Pty::open().unwrap();
    let line = pty.path().to_path_buf();
    let sim = tokio::spawn(leafgate_sim::modbus::serve_rtu(pty, regs.clone()));
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let config = rtu_site(dir.path(), "leafgate.toml", &line, socket.to_str().unwrap());
    let c = config.to_str().unwrap();

    // No daemon: the command opens the line itself.
    let out = leafgate(&["call", "--offline", "-c", c, "meter-1", "readVoltage"]).await;
    assert_eq!(
        answer(&out),
        (
            Some(0),
            json!({"status": 200, "payload": {"voltage": 230.1}})
        )
    );
    assert_eq!(regs.request_count(), 1);
    // Its own answers as the daemon's: an unknown method is 501.
    let out = leafgate(&["call", "--offline", "-c", c, "meter-1", "reboot"]).await;
    assert_eq!(answer(&out).1["status"], 501);

    // A daemon runs the line: refused, naming it, and nothing reaches the hardware.
    let daemon = serving(&config).await;
    // Nothing listens on the hub's port: status shows the device down with the reason.
    daemon
        .wait_line("device meter-1: hub connection failed", WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.tail(20)));
    let out = leafgate(&["status", "--json", "--socket", socket.to_str().unwrap()]).await;
    let (_, status) = answer(&out);
    let device = &status["payload"]["devices"][0];
    assert_eq!(device["connected"], false, "{status}");
    assert!(
        device["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("localhost:9: ") && m.contains("Connection refused")),
        "{status}"
    );
    let before = regs.request_count();
    let out = leafgate(&["call", "--offline", "-c", c, "meter-1", "readVoltage"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the leafgate on {} (pid {}) runs bus \"rs485\"; call without --offline",
            socket.display(),
            daemon.pid()
        )),
        "{stderr}"
    );
    // A config that does not name that daemon's socket still finds the line taken.
    let elsewhere = rtu_site(dir.path(), "elsewhere.toml", &line, "");
    let out = leafgate(&[
        "call",
        "--offline",
        "-c",
        elsewhere.to_str().unwrap(),
        "meter-1",
        "readVoltage",
    ])
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("bus \"rs485\"") && stderr.contains("another process holds this line"),
        "{stderr}"
    );
    assert_eq!(regs.request_count(), before);
    // Through the daemon it works.
    let out = leafgate(&[
        "call",
        "--socket",
        socket.to_str().unwrap(),
        "meter-1",
        "readVoltage",
    ])
    .await;
    assert_eq!(answer(&out).1["payload"], json!({"voltage": 230.1}));
    drop(daemon);
    sim.abort();
}

/// One raw exchange on the socket: what the client writes (nothing for `None`), and the line
/// it gets back.
async fn raw(socket: &Path, request: Option<&[u8]>) -> Value {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    if let Some(bytes) = request {
        // A client may write more than the daemon reads: the rest is refused, not waited for.
        let _ = stream.write_all(bytes).await;
    }
    let mut answer = Vec::new();
    // The daemon closes with the flood's rest unread: the answer comes, then a reset.
    let _ = stream.read_to_end(&mut answer).await;
    serde_json::from_slice(&answer)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&answer)))
}

/// A site with one Modbus TCP device whose server is gone and a hub that is not there: enough
/// for a daemon to serve its socket.
fn bare_site(dir: &Path, name: &str, socket: &Path) -> std::path::PathBuf {
    let config = dir.join(name);
    std::fs::write(
        &config,
        format!(
            "[hub]\nhostname = \"localhost\"\nport = 9\n\n[control]\nsocket = \"{}\"\n\n\
             [[bus]]\nid = \"plc\"\nkind = \"modbus_tcp\"\naddress = \"127.0.0.1:9\"\n\n\
             [[device]]\nid = \"pump-7\"\nshared_access_key = \"{KEY}\"\nbus = \"plc\"\nunit = 1\n\
             raw_methods = true\n",
            socket.display()
        ),
    )
    .unwrap();
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_socket_keeps_other_files_replaces_stale_ones_and_stands_hostile_clients() {
    use std::os::unix::fs::FileTypeExt as _;

    let dir = tempfile::tempdir().unwrap();
    // A file that is not a socket is never removed: the daemon runs without its socket.
    let taken = dir.path().join("notes.txt");
    std::fs::write(&taken, "operator's notes").unwrap();
    let daemon = Scanned::spawn(
        run_command(&bare_site(dir.path(), "taken.toml", &taken)),
        Log::Capture,
    );
    daemon
        .wait_line("exists and is not a socket; not removing it", WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.tail(20)));
    drop(daemon);
    assert_eq!(std::fs::read_to_string(&taken).unwrap(), "operator's notes");

    // A socket file a dead daemon left behind is replaced.
    let socket = dir.path().join("control.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(std::fs::metadata(&socket).unwrap().file_type().is_socket());
    let _daemon = serving(&bare_site(dir.path(), "leafgate.toml", &socket)).await;

    // Clients that say nothing hold every slot: the next one is told so at once.
    let mut silent = Vec::new();
    for _ in 0..16 {
        silent.push(tokio::net::UnixStream::connect(&socket).await.unwrap());
    }
    let busy = raw(&socket, None).await;
    assert_eq!(
        (&busy["status"], &busy["payload"]["error"]),
        (&json!(503), &json!("busy")),
        "{busy}"
    );
    // Each is answered 400 after its 5 s, and its slot is free again.
    {
        use tokio::io::AsyncReadExt as _;
        let mut answer = String::new();
        silent[0].read_to_string(&mut answer).await.unwrap();
        assert!(answer.contains("no request line within 5 s"), "{answer}");
    }
    drop(silent);
    let garbage = raw(&socket, Some(b"GET / HTTP/1.1\r\n\r\n")).await;
    assert_eq!(garbage["status"], 400, "{garbage}");
    assert!(
        garbage["payload"]["message"]
            .as_str()
            .unwrap()
            .starts_with("not a request")
    );
    // A misspelt key is refused, not taken for an empty payload.
    let misspelt = raw(
        &socket,
        Some(br#"{"op":"call","device":"pump-7","method":"modbus.write","paylaod":{}}"#),
    )
    .await;
    assert_eq!(misspelt["status"], 400, "{misspelt}");
    // A name no device can have is refused before it is compared with any id.
    let long = format!(
        "{{\"op\":\"call\",\"device\":\"{}\",\"method\":\"m\"}}\n",
        "x".repeat(10_000)
    );
    let refused = raw(&socket, Some(long.as_bytes())).await;
    assert_eq!(refused["status"], 400, "{}", refused["payload"]["error"]);
    assert!(
        refused["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("10000 characters")
    );
    // 3 MiB without a line end: cut at the bound.
    let flood = vec![b'{'; 3 * 1024 * 1024];
    let oversize = raw(&socket, Some(&flood)).await;
    assert_eq!(oversize["status"], 400, "{oversize}");
    assert!(
        oversize["payload"]["message"]
            .as_str()
            .unwrap()
            .contains("longer than")
    );
    // And the daemon still answers.
    let status = raw(&socket, Some(b"{\"op\":\"status\"}\n")).await;
    assert_eq!(status["status"], 200, "{status}");
    assert_eq!(status["payload"]["devices"][0]["id"], "pump-7");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_waits_for_calls_on_the_wire_and_queued_and_answers_them() {
    use leafgate_sim::modbus::Fault;

    let regs = Registers::with_units([1]);
    regs.set_holding(1, 0, &[1234]);
    // The unit answers after 1.5 s: calls are still running when SIGTERM comes.
    regs.set_fault(1, Fault::Delay(Duration::from_millis(1500)));
    let plc = TcpServer::start(regs.clone()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("control.sock");
    let config = dir.path().join("leafgate.toml");
    std::fs::write(
        &config,
        format!(
            "[hub]\nhostname = \"localhost\"\nport = 9\n\n[control]\nsocket = \"{}\"\n\n\
             [[bus]]\nid = \"plc\"\nkind = \"modbus_tcp\"\naddress = \"{}\"\ntimeout_ms = 3000\n\n{}",
            socket.display(),
            plc.addr(),
            PUMP.replace("KEY", KEY)
        ),
    )
    .unwrap();
    let daemon = serving(&config).await;
    let call = || {
        let socket = socket.clone();
        tokio::spawn(async move {
            leafgate(&[
                "call",
                "--socket",
                socket.to_str().unwrap(),
                "pump-7",
                "getSpeed",
            ])
            .await
        })
    };
    // One call on the wire, one queued behind it.
    let first = call();
    regs.wait_requests(1).await;
    let second = call();
    let until = tokio::time::Instant::now() + WAIT;
    loop {
        // The queue has no event to await from outside: status is asked until it shows the job.
        let status = raw(&socket, Some(b"{\"op\":\"status\"}\n")).await;
        if status["payload"]["buses"][0]["queued"] == 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < until, "{status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon.signal(libc::SIGTERM).unwrap();
    for call in [first, second] {
        let out = call.await.unwrap();
        assert_eq!(
            answer(&out),
            (Some(0), json!({"status": 200, "payload": {"speed": 1234}}))
        );
    }
    let (exited, log) = daemon.wait().await;
    assert!(exited.success(), "{log}");
}

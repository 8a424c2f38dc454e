//! The real `leafgate` binary: `check` exit codes and output, `run` against the emulator with
//! SIGTERM, and no secret in anything it prints even at trace level.

use std::process::{Command, Stdio};
use std::time::Duration;

use leafgate::emulator::{Emulator, EmulatorConfig, ServiceClient};
use leafgate::hub::sas::Key;
use leafgate::sim::modbus::{Registers, TcpServer};
use serde_json::json;

const BIN: &str = env!("CARGO_BIN_EXE_leafgate");
const KEY: &str = "c2VjcmV0LWtleS10aGF0LW11c3QtbmV2ZXItYmUtbG9nZ2Vk";

fn root() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn check_accepts_the_sample_and_exits_78_listing_every_problem() {
    let ok = Command::new(BIN)
        .args(["check", "-c"])
        .arg(root().join("config/leafgate.toml"))
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("ok (1 file(s), 3 bus(es), 4 device(s)"));

    let case = root().join("tests/fixtures/config/bad_references_and_ranges/leafgate.toml");
    let bad = Command::new(BIN)
        .args(["check", "-c"])
        .arg(&case)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(stderr.lines().count(), 9, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}: device[1].bus: bus \"missing\" is not defined",
            case.display()
        )),
        "{stderr}"
    );

    let missing = Command::new(BIN)
        .args(["check", "-c", "/nonexistent/leafgate.toml"])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(78));
    assert!(
        String::from_utf8_lossy(&missing.stderr)
            .contains("/nonexistent/leafgate.toml: cannot read")
    );
}

#[test]
fn run_with_a_bad_config_exits_78_without_starting() {
    let case = root().join("tests/fixtures/config/unknown_key/leafgate.toml");
    let out = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&case)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field `adress`"));
}

#[tokio::test]
async fn run_serves_methods_stops_on_sigterm_and_never_prints_the_key() {
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    emu.add_device("pump-1", Key::from_base64(KEY).unwrap());
    let regs = Registers::with_units([1]);
    regs.set_holding(1, 0, &[42]);
    let plc = TcpServer::start(regs).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), emu.ca_pem()).unwrap();
    let key_file = dir.path().join("pump-1.key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let config = format!(
        r#"[hub]
hostname = "localhost"
port = {port}
ca_file = "{ca}"

[[bus]]
id = "plc"
kind = "modbus_tcp"
address = "{plc}"

[[device]]
id = "pump-1"
shared_access_key_file = "{key_file}"
bus = "plc"
unit = 1
[[device.method]]
name = "get"
[[device.method.step]]
op = "read"
table = "holding"
address = 0
fields = [{{ name = "v" }}]
"#,
        port = emu.mqtt_addr().port(),
        ca = dir.path().join("ca.pem").display(),
        plc = plc.addr(),
        key_file = key_file.display(),
    );
    let path = dir.path().join("leafgate.toml");
    std::fs::write(&path, config).unwrap();
    let child = Command::new(BIN)
        .args(["run", "--log-level", "trace", "-c"])
        .arg(&path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    emu.wait_method_ready("pump-1", Duration::from_secs(10))
        .await
        .unwrap();
    let client = ServiceClient::new(emu.http_addr(), &emu.service_connection_string()).unwrap();
    let (http, body) = client.invoke("pump-1", "get", json!({}), 10).await.unwrap();
    assert_eq!(
        (http, &body),
        (200, &json!({"status": 200, "payload": {"v": 42}}))
    );
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}: {stderr}", out.status);
    assert!(stderr.contains("method get on pump-1: 200"), "{stderr}");
    assert!(
        stderr.contains("device pump-1: connected to localhost"),
        "{stderr}"
    );
    assert!(
        stderr.contains("device_id=pump-1"),
        "structured fields missing: {stderr}"
    );
    // The key, and anything signed with it, never reaches the log.
    assert!(!stderr.contains(KEY), "the key leaked: {stderr}");
    assert!(!stderr.contains("sig="), "a token leaked: {stderr}");
    assert_eq!(crate::logscan::find_secret(&stderr), None, "{stderr}");
    assert!(
        !stderr.contains("SharedAccessSignature"),
        "a token leaked: {stderr}"
    );
    // The emulator handles the DISCONNECT on its own task: await it rather than race it (seen
    // failing under the load of the compat suite's Python peers).
    emu.wait_for("pump-1", Duration::from_secs(10), |s| !s.online)
        .await
        .unwrap();
}

#[test]
fn check_warns_when_a_file_with_keys_is_readable_by_everyone() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leafgate.toml");
    std::fs::write(
        &path,
        format!("[hub]\nhostname = \"h\"\n[[bus]]\nid = \"b\"\nkind = \"modbus_tcp\"\naddress = \"127.0.0.1:502\"\n[[device]]\nid = \"d\"\nshared_access_key = \"{KEY}\"\nbus = \"b\"\nunit = 1\nraw_methods = true\n"),
    )
    .unwrap();
    for (mode, warned) in [(0o644, true), (0o640, false)] {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        let out = Command::new(BIN)
            .args(["check", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            stderr.contains("holds device keys and is accessible to every user"),
            warned,
            "mode {mode:o}: {stderr}"
        );
        assert!(!stderr.contains(KEY));
    }
}

#[tokio::test]
async fn a_hub_with_an_untrusted_certificate_is_refused_with_a_clear_log_line() {
    use std::io::BufRead as _;
    let emu = Emulator::start(EmulatorConfig::default()).await.unwrap();
    emu.add_device("pump-1", Key::from_base64(KEY).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leafgate.toml");
    // No ca_file: the emulator's self-made CA is not among the system's trusted roots.
    std::fs::write(
        &path,
        format!("[hub]\nhostname = \"localhost\"\nport = {}\n[[bus]]\nid = \"b\"\nkind = \"modbus_tcp\"\naddress = \"127.0.0.1:1\"\n[[device]]\nid = \"pump-1\"\nshared_access_key = \"{KEY}\"\nbus = \"b\"\nunit = 1\nraw_methods = true\n", emu.mqtt_addr().port()),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains("hub connection failed") {
                let _ = tx.send(line);
                return;
            }
        }
    });
    let line = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(20)))
        .await
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("no connection failure was logged");
    assert!(
        line.contains("device pump-1") && line.contains("UnknownIssuer"),
        "{line}"
    );
    assert_eq!(emu.device_stats("pump-1").connects_accepted, 0);
}

//! The real `leafgate` binary: `check` exit codes and output, `run` against the emulator with
//! SIGTERM, and no secret in anything it prints even at trace level.

use std::process::{Command, Stdio};
use std::time::Duration;

use leafgate::hub::sas::Key;
use leafgate_emulator::{Emulator, EmulatorConfig, ServiceClient};
use leafgate_sim::modbus::{Registers, TcpServer};
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
            "{}: device \"m3\".bus: bus \"missing\" is not defined",
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

/// Makes a FIFO nobody ever writes to: a blocking open or read of it waits forever.
fn mkfifo(path: &std::path::Path) {
    use std::os::unix::ffi::OsStrExt as _;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo: {}", std::io::Error::last_os_error());
}

/// A valid config with one device; `hub_extra` goes into `[hub]`, `credential` is the device's
/// key line.
fn one_device(hub_extra: &str, credential: &str) -> String {
    format!(
        "[hub]\nhostname = \"h\"\n{hub_extra}\n[[bus]]\nid = \"b\"\nkind = \"modbus_tcp\"\naddress = \"127.0.0.1:502\"\n[[device]]\nid = \"d\"\n{credential}\nbus = \"b\"\nunit = 1\nraw_methods = true\n"
    )
}

/// Runs `leafgate <args> -c config`; panics if it has not exited within 10 s (it is killed then).
/// Returns the exit code and stderr.
async fn leafgate_within_10s(args: &[&str], config: &std::path::Path) -> (Option<i32>, String) {
    let out = tokio::process::Command::new(BIN)
        .args(args)
        .arg("-c")
        .arg(config)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(10), out)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "leafgate {args:?} -c {} did not exit within 10 s",
                config.display()
            )
        })
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `check` must exit 78 at once with one problem naming `what` (file and key) and `path`.
async fn check_refuses(config: &std::path::Path, what: &str, path: &std::path::Path) {
    let (code, stderr) = leafgate_within_10s(&["check"], config).await;
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains(what), "{what:?} not in: {stderr}");
    assert!(
        stderr.contains(&path.display().to_string()),
        "{} not in: {stderr}",
        path.display()
    );
    assert!(stderr.contains("not a regular file"), "{stderr}");
}

#[tokio::test]
async fn check_refuses_a_fifo_config_file_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("leafgate.toml");
    mkfifo(&config);
    check_refuses(
        &config,
        &format!("{}: cannot read", config.display()),
        &config,
    )
    .await;
    // `run` refuses it the same way, with the config exit code.
    let (code, stderr) = leafgate_within_10s(&["run"], &config).await;
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("not a regular file"), "{stderr}");
}

#[tokio::test]
async fn check_refuses_a_fifo_key_file_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("d.key");
    mkfifo(&key);
    let config = dir.path().join("leafgate.toml");
    std::fs::write(
        &config,
        one_device(
            "",
            &format!("shared_access_key_file = {:?}", key.display().to_string()),
        ),
    )
    .unwrap();
    let what = format!(
        "{}: device \"d\".shared_access_key_file: ",
        config.display()
    );
    check_refuses(&config, &what, &key).await;
    let (code, stderr) = leafgate_within_10s(&["run"], &config).await;
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains(&what), "{stderr}");
}

#[tokio::test]
async fn check_refuses_a_fifo_ca_file_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    mkfifo(&ca);
    let config = dir.path().join("leafgate.toml");
    std::fs::write(
        &config,
        one_device(
            &format!("ca_file = {:?}", ca.display().to_string()),
            &format!("shared_access_key = \"{KEY}\""),
        ),
    )
    .unwrap();
    check_refuses(
        &config,
        &format!("{}: hub.ca_file: ", config.display()),
        &ca,
    )
    .await;
}

#[tokio::test]
async fn check_refuses_a_fifo_drop_in_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("leafgate.toml");
    std::fs::write(
        &config,
        one_device("", &format!("shared_access_key = \"{KEY}\"")),
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("conf.d")).unwrap();
    let drop_in = dir.path().join("conf.d/20-more.toml");
    mkfifo(&drop_in);
    check_refuses(
        &config,
        &format!("{}: cannot read", drop_in.display()),
        &drop_in,
    )
    .await;
}

#[tokio::test]
async fn check_refuses_a_key_file_linked_to_a_terminal_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("d.key");
    std::os::unix::fs::symlink("/dev/ptmx", &key).unwrap();
    let config = dir.path().join("leafgate.toml");
    std::fs::write(
        &config,
        one_device(
            "",
            &format!("shared_access_key_file = {:?}", key.display().to_string()),
        ),
    )
    .unwrap();
    let what = format!(
        "{}: device \"d\".shared_access_key_file: ",
        config.display()
    );
    check_refuses(&config, &what, &key).await;
}

//! `leafgate emulator` as a user runs it to try a config without Azure: the `[hub]` snippet it
//! prints makes a working config, and its `curl` line calls a method through it.

use std::process::Stdio;
use std::time::Duration;

use leafgate_sim::modbus::{Registers, TcpServer};
use leafgate_testkit::daemon::Log;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::logscan::{Scanned, run_command};

const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const WAIT: Duration = Duration::from_secs(20);

#[tokio::test]
async fn the_emulators_snippet_runs_leafgate_and_its_curl_line_calls_a_method() {
    if which("curl").is_none() {
        panic!("curl is needed (apt install curl; .ci/run installs it)");
    }
    let regs = Registers::with_units([1]);
    regs.set_holding(1, 0, &[1234]);
    let plc = TcpServer::start(regs.clone()).await.unwrap();
    let mut emulator = Command::new(env!("CARGO_BIN_EXE_leafgate"))
        .args([
            "emulator",
            "--mqtt-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .args(["--log-level", "warn", "--device", &format!("pump-7={KEY}")])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(emulator.stdout.take().unwrap()).lines();
    let mut printed = Vec::new();
    tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line == "press Ctrl-C to stop" {
                break;
            }
            printed.push(line);
        }
    })
    .await
    .unwrap();
    // The snippet: from `[hub]` to the blank line before the curl comment.
    let start = printed.iter().position(|l| l == "[hub]").unwrap();
    let end = printed
        .iter()
        .position(|l| l.starts_with("# Call a method"))
        .unwrap();
    let snippet = printed[start..end].join("\n");
    let ca_line = printed
        .iter()
        .find(|l| l.starts_with("ca_file = "))
        .unwrap();
    let ca_path: String = serde_json::from_str(ca_line.trim_start_matches("ca_file = ")).unwrap();
    assert!(std::path::Path::new(&ca_path).is_file(), "{ca_path}");
    // The user's part: a bus, and the device's unit and methods after the printed [[device]].
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("leafgate.toml");
    std::fs::write(
        &config,
        format!(
            "{snippet}\nbus = \"plc\"\nunit = 1\n\n[[device.method]]\nname = \"getSpeed\"\n\
             [[device.method.step]]\nop = \"read\"\ntable = \"holding\"\naddress = 0\n\
             fields = [{{ name = \"speed\", type = \"u16\" }}]\n\n\
             [[bus]]\nid = \"plc\"\nkind = \"modbus_tcp\"\naddress = \"{}\"\n",
            plc.addr()
        ),
    )
    .unwrap();
    let daemon = Scanned::spawn(run_command(&config), Log::Capture);
    daemon
        .wait_line("device pump-7: connected to", WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", daemon.tail(30)));
    // The printed curl line, as a user pastes it into a shell, with the method filled in.
    let curl = printed[end + 1..].join("\n").replace("METHOD", "getSpeed");
    let out = Command::new("sh")
        .arg("-c")
        .arg(&curl)
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{curl}: {out:?}");
    let answer: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(answer["status"], 200, "{answer}");
    assert_eq!(answer["payload"]["speed"], 1234, "{answer}");
    // Ctrl-C ends the emulator cleanly and takes its CA file with it.
    drop(daemon);
    let pid = i32::try_from(emulator.id().unwrap()).unwrap();
    // SAFETY: signalling a child this test started and has not reaped.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let status = tokio::time::timeout(WAIT, emulator.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        !std::path::Path::new(&ca_path).exists(),
        "{ca_path} left behind"
    );
}

fn which(program: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(program))
        .find(|p| p.is_file())
}

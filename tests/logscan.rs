//! Every log line this test process produces is scanned for secrets (issue 5).
//!
//! A logger at trace level for leafgate's own code (debug for its dependencies: rumqttc,
//! rustls, tokio-modbus) is installed before any test runs, so every scenario of the suite
//! that runs in process — the gateway against the emulator, the hub faults, the compat peers,
//! the benchmark harness at toy size — formats each of its log lines, and each line is checked
//! for a SAS signature, a connection-string key, or anything shaped like a base64 device key.
//! A hit prints the line (with the secret masked) and aborts the whole test run: a secret in a
//! log is never a flaky detail, and an abort cannot be swallowed by a task or a retry.
//!
//! The real binary's logs are scanned by the tests that run it (cli, service, faults), with
//! [`find_secret`] too: [`Scanned`] runs it and scans its whole log when it is dropped.

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use leafgate_testkit::daemon::{self, Daemon, Log};
use regex::Regex;

/// Log lines scanned so far in this process.
static SCANNED: AtomicU64 = AtomicU64::new(0);
/// The longest line of the daemon's own code so far, in bytes.
static LONGEST: AtomicU64 = AtomicU64::new(0);

/// The longest log line the daemon may write. Text from outside (method names, rids, topics,
/// device replies) is clipped before it reaches a line (`leafgate::logtext`), so no request can
/// make a line anywhere near this long; a longer one aborts the run like a secret does.
pub const MAX_LINE: u64 = 4096;

/// Whether `target` is the daemon library's own code, whose lines the length bound applies to
/// (the emulator, the simulators, the demo and the bench are crates of their own, test tools
/// that log what they like).
fn daemon_target(target: &str) -> bool {
    target == "leafgate" || target.starts_with("leafgate::")
}

/// The longest daemon log line seen so far, in bytes.
pub fn longest_line() -> u64 {
    LONGEST.load(Ordering::Relaxed)
}

struct Pattern {
    what: &'static str,
    regex: Regex,
}

static PATTERNS: LazyLock<Vec<Pattern>> = LazyLock::new(|| {
    [
        // A token's signature, URL-encoded or not: `sig=<base64 of an HMAC-SHA256>`.
        ("SAS signature", r"(?i)\bsig=[A-Za-z0-9%+/=_-]{10,}"),
        // A connection string's key.
        ("connection-string key", r"(?i)SharedAccessKey=[^;\s]+"),
        // A PEM private key (a device certificate's); its base64 body is caught below too.
        ("PEM private key", r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
        // A device or policy key as written in configs and connection strings: base64 with its
        // padding (keys of 16 bytes and more are 24 characters and more), or a long run without.
        ("base64 key", r"[A-Za-z0-9+/]{20,}={1,2}|[A-Za-z0-9+/]{43,}"),
    ]
    .into_iter()
    .map(|(what, regex)| Pattern {
        what,
        regex: Regex::new(regex).unwrap(),
    })
    .collect()
});

/// What kind of secret `text` holds, if any, and where.
pub fn find_secret(text: &str) -> Option<(&'static str, std::ops::Range<usize>)> {
    PATTERNS.iter().find_map(|p| {
        p.regex
            .find_iter(text)
            // A random key has upper- and lower-case letters; the hex dumps of rustls' trace
            // lines (client randoms, session ids) and all-caps identifiers do not.
            .find(|m| p.what != "base64 key" || mixed_case(m.as_str()))
            .map(|m| (p.what, m.range()))
    })
}

fn mixed_case(s: &str) -> bool {
    s.bytes().any(|b| b.is_ascii_uppercase()) && s.bytes().any(|b| b.is_ascii_lowercase())
}

/// `leafgate run -c CONFIG` of the binary under test, outside systemd (the test kit's
/// [`daemon::command`]). Debug, so the secret scan sees everything but the per-packet trace,
/// more than the shipped level shows.
pub fn run_command(config: &Path) -> Command {
    daemon::command(Path::new(env!("CARGO_BIN_EXE_leafgate")), config, "debug")
}

/// `leafgate run` as a child process (the test kit's [`Daemon`]), killed when dropped; its whole
/// log is then scanned for secrets, and one fails the test (unless it is failing already).
pub struct Scanned(Daemon);

impl Scanned {
    /// Starts `command` (from [`run_command`]), its log going to `log`.
    pub fn spawn(command: Command, log: Log) -> Scanned {
        Scanned(Daemon::spawn(command, log).unwrap_or_else(|e| panic!("{e:#}")))
    }

    /// Waits for the process to exit by itself (20 s at most); returns its status and whole log.
    pub async fn wait(mut self) -> (ExitStatus, String) {
        let status = self
            .0
            .wait(Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
        (status, self.0.log())
    }
}

impl std::ops::Deref for Scanned {
    type Target = Daemon;
    fn deref(&self) -> &Daemon {
        &self.0
    }
}

impl std::ops::DerefMut for Scanned {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.0
    }
}

impl Drop for Scanned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let log = self.0.log();
        if let Some((what, _)) = find_secret(&log)
            && !std::thread::panicking()
        {
            match self.0.log_path() {
                Some(path) => panic!("{what} in leafgate's log {}", path.display()),
                None => panic!("{what} in leafgate's log:\n{log}"),
            }
        }
    }
}

/// Log lines scanned so far in this process.
pub fn scanned() -> u64 {
    SCANNED.load(Ordering::Relaxed)
}

struct Scanner;

impl log::Log for Scanner {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.target().starts_with("leafgate") || metadata.level() <= log::Level::Debug
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut line = record.args().to_string();
        let mut fields = Fields(&mut line);
        let _ = record.key_values().visit(&mut fields);
        SCANNED.fetch_add(1, Ordering::Relaxed);
        if daemon_target(record.target()) {
            let len = u64::try_from(line.len()).unwrap_or(u64::MAX);
            LONGEST.fetch_max(len, Ordering::Relaxed);
            if len > MAX_LINE {
                let cut: String = line.chars().take(300).collect();
                let _ = writeln!(
                    std::io::stderr(),
                    "\n*** a log line of {len} bytes (limit {MAX_LINE}) from {} at {}: {cut}…\n",
                    record.target(),
                    record.level()
                );
                std::process::abort();
            }
        }
        if let Some((what, at)) = find_secret(&line) {
            let mut masked = line.clone();
            masked.replace_range(at, "<MASKED>");
            // Straight to the process's stderr: the test harness captures `eprintln!` per test
            // and would lose it in the abort.
            let _ = writeln!(
                std::io::stderr(),
                "\n*** {what} in a log line of {} at {}: {masked}\n",
                record.target(),
                record.level()
            );
            std::process::abort();
        }
    }

    fn flush(&self) {}
}

/// Appends ` key=value` for each structured field, as the journal and stderr loggers show them.
struct Fields<'a>(&'a mut String);

impl<'kvs> log::kv::VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(
        &mut self,
        key: log::kv::Key<'kvs>,
        value: log::kv::Value<'kvs>,
    ) -> Result<(), log::kv::Error> {
        self.0.push_str(&format!(" {key}={value}"));
        Ok(())
    }
}

#[ctor::ctor(unsafe)]
fn install() {
    if log::set_boxed_logger(Box::new(Scanner)).is_ok() {
        log::set_max_level(log::LevelFilter::Trace);
    }
}

#[test]
fn the_scanner_is_installed_and_sees_leafgates_lines() {
    let before = scanned();
    log::trace!(target: "leafgate::test", "a line to count");
    assert!(scanned() > before, "the scanning logger is not installed");
    assert_eq!(log::max_level(), log::LevelFilter::Trace);
}

#[test]
fn secrets_are_recognised_in_every_shape_they_take() {
    let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let token = "SharedAccessSignature sr=hub.example%2Fdevices%2Fd1&sig=Xk%2BqK9z1k3mP0a7%2FQ%3D&se=1700000000";
    for (text, what) in [
        (format!("device d1: key {key}"), "base64 key"),
        (format!("password: {token}"), "SAS signature"),
        (
            format!("HostName=h;DeviceId=d;SharedAccessKey={key}"),
            "connection-string key",
        ),
        (
            "HostName=h;DeviceId=d;SharedAccessKey=c2VjcmV0".to_owned(),
            "connection-string key",
        ),
        (
            "k=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8".to_owned(),
            "base64 key",
        ),
        (
            "key: -----BEGIN PRIVATE KEY-----".to_owned(),
            "PEM private key",
        ),
        (
            "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEE".to_owned(),
            "PEM private key",
        ),
        (
            "proxy password pRoXyPaSsWoRd0123456789abcdefghijklmnopqrsT".to_owned(),
            "base64 key",
        ),
    ] {
        assert_eq!(find_secret(&text).map(|(w, _)| w), Some(what), "{text}");
    }
}

#[test]
fn ordinary_lines_are_not_mistaken_for_secrets() {
    for text in [
        "method read10 on dev-00001: 200 in 3 ms device_id=dev-00001 rid=1f rid=42",
        "device pump-7: connected to myhub.azure-devices.net and listening for methods (3 connected)",
        "device pump-7: hub connection failed: Connection refused (os error 111); retrying in 1500 ms",
        "bus rtu-1: /dev/serial/by-id/usb-FTDI_FT232R_USB_UART_A10K2XYZ-if00-port0: reopened",
        "hub token renewed, valid until 2026-11-24T06:00:00Z",
        "random: 5f8ea5ca1d659de8a8d596e95d715aea8c7691fc3815832e579ddd6b4d2c49be,",
    ] {
        assert_eq!(find_secret(text), None, "{text}");
    }
}

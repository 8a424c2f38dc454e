//! The Python peers as child processes: the venvs they run in and the line protocol they speak
//! (`tests/compat/python/jsonl.py`: commands `{"id", "op", ...}` on stdin, replies
//! `{"re", "ok", ...}` and events `{"event", ...}` on stdout).
//!
//! Venvs live in `$CARGO_TARGET_TMPDIR/compat-venvs` (`target/tmp/compat-venvs`), or in
//! `$LEAFGATE_COMPAT_VENVS`. The first test that needs one runs `venvs.py`, which reuses a venv
//! whose requirements did not change and builds it with pip otherwise (that needs PyPI once;
//! without it the tests fail with pip's error, they never skip). `.ci/run` runs the same script
//! before `cargo test`, so CI pays for pip outside the tests' timeouts.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::time::Instant;

/// Bound for one reply or event; only reached when a test fails (the slowest legitimate wait is
/// a 5 s method timeout).
pub const WAIT: Duration = Duration::from_secs(20);
/// How much of a peer's stderr is kept for failure messages.
const STDERR_KEEP: usize = 16 * 1024;

/// Which venv a peer runs in (one per `requirements-NAME.txt`).
#[derive(Debug, Clone, Copy)]
pub enum Venv {
    Device,
    Service,
    Modbus,
}

impl Venv {
    fn name(self) -> &'static str {
        match self {
            Venv::Device => "device",
            Venv::Service => "service",
            Venv::Modbus => "modbus",
        }
    }
}

pub fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/compat/python")
}

fn venv_root() -> PathBuf {
    std::env::var_os("LEAFGATE_COMPAT_VENVS").map_or_else(
        || Path::new(env!("CARGO_TARGET_TMPDIR")).join("compat-venvs"),
        PathBuf::from,
    )
}

/// Runs `venvs.py` once per test process (it locks, so parallel processes are safe too) and
/// returns each venv's python. Panics with pip's output when it fails.
fn venvs() -> &'static BTreeMap<String, PathBuf> {
    static VENVS: OnceLock<BTreeMap<String, PathBuf>> = OnceLock::new();
    VENVS.get_or_init(|| {
        let output = std::process::Command::new("python3")
            .arg(python_dir().join("venvs.py"))
            .arg(venv_root())
            .stdin(Stdio::null())
            .output()
            .expect("python3 must be installed to build the compat venvs");
        assert!(
            output.status.success(),
            "could not build the compat suite's Python venvs (PyPI must be reachable the first \
             time):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| line.split_once(' '))
            .map(|(name, python)| (name.to_owned(), PathBuf::from(python)))
            .collect()
    })
}

/// A running peer script.
pub struct Peer {
    script: String,
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
    /// Lines read while waiting for something else.
    backlog: VecDeque<Value>,
    stderr: Arc<Mutex<String>>,
    next_id: u64,
}

impl Peer {
    /// Starts `script` (in `tests/compat/python/`) in `venv` with extra environment `env`.
    pub async fn start(venv: Venv, script: &str, env: &[(&str, String)]) -> Peer {
        let python = tokio::task::spawn_blocking(move || venvs()[venv.name()].clone())
            .await
            .unwrap();
        let mut command = Command::new(python);
        command
            .arg("-u")
            .arg(python_dir().join(script))
            .current_dir(python_dir())
            // No __pycache__ in the source tree; no proxy between the peers and loopback.
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("NO_PROXY", "localhost,127.0.0.1")
            .env("no_proxy", "localhost,127.0.0.1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().unwrap();
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let stderr = Arc::new(Mutex::new(String::new()));
        let mut err_lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let keep = Arc::clone(&stderr);
        tokio::spawn(async move {
            while let Ok(Some(line)) = err_lines.next_line().await {
                let mut kept = keep.lock().unwrap();
                kept.push_str(&line);
                kept.push('\n');
                if kept.len() > STDERR_KEEP {
                    let cut = kept.len() - STDERR_KEEP / 2;
                    let cut = (cut..kept.len())
                        .find(|i| kept.is_char_boundary(*i))
                        .unwrap_or(0);
                    kept.drain(..cut);
                }
            }
        });
        Peer {
            script: script.to_owned(),
            child,
            stdin,
            lines,
            backlog: VecDeque::new(),
            stderr,
            next_id: 1,
        }
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "{}: {what}\n--- its stderr ---\n{}",
            self.script,
            self.stderr.lock().unwrap()
        )
    }

    async fn read_line(&mut self, deadline: Instant, waiting_for: &str) -> Value {
        match tokio::time::timeout_at(deadline, self.lines.next_line()).await {
            Ok(Ok(Some(line))) => serde_json::from_str(&line)
                .unwrap_or_else(|e| self.fail(&format!("printed a non-JSON line {line:?}: {e}"))),
            Ok(Ok(None)) => {
                let status = self.child.wait().await;
                self.fail(&format!("exited ({status:?}) while {waiting_for}"))
            }
            Ok(Err(e)) => self.fail(&format!("stdout failed while {waiting_for}: {e}")),
            Err(_) => self.fail(&format!(
                "nothing within {WAIT:?} while {waiting_for}; unmatched lines: {:?}",
                self.backlog
            )),
        }
    }

    /// Sends a command and waits for its reply: `Ok(reply)` or `Err(reply)` with the Python
    /// exception's type in `error`.
    pub async fn try_call(&mut self, op: &str, mut args: Value) -> Result<Value, Value> {
        let id = self.next_id;
        self.next_id += 1;
        args["id"] = json!(id);
        args["op"] = json!(op);
        let mut line = args.to_string();
        line.push('\n');
        if let Err(e) = self.stdin.write_all(line.as_bytes()).await {
            self.fail(&format!("could not take command {op}: {e}"));
        }
        let deadline = Instant::now() + WAIT;
        let waiting_for = format!("waiting for the reply to {op}");
        loop {
            let value = self.read_line(deadline, &waiting_for).await;
            if value["re"] == json!(id) {
                return if value["ok"] == json!(true) {
                    Ok(value)
                } else {
                    Err(value)
                };
            }
            self.backlog.push_back(value);
        }
    }

    /// Like [`Peer::try_call`], failing the test when the command raised.
    pub async fn call(&mut self, op: &str, args: Value) -> Value {
        match self.try_call(op, args).await {
            Ok(reply) => reply,
            Err(reply) => self.fail(&format!("{op} failed: {reply}")),
        }
    }

    /// Waits for the first event (earlier unmatched ones included) named `event` for which
    /// `matches` holds, and removes it from the backlog.
    pub async fn event(&mut self, event: &str, mut matches: impl FnMut(&Value) -> bool) -> Value {
        let wanted = |value: &Value, matches: &mut dyn FnMut(&Value) -> bool| {
            value["event"] == json!(event) && matches(value)
        };
        if let Some(at) = self
            .backlog
            .iter()
            .position(|value| wanted(value, &mut matches))
        {
            return self.backlog.remove(at).unwrap();
        }
        let deadline = Instant::now() + WAIT;
        let waiting_for = format!("waiting for event {event}");
        loop {
            let value = self.read_line(deadline, &waiting_for).await;
            if wanted(&value, &mut matches) {
                return value;
            }
            self.backlog.push_back(value);
        }
    }

    /// Every event named `event` seen so far and not yet taken, after a round trip (`sync`) that
    /// guarantees everything the peer printed before it has been read.
    pub async fn drain_events(&mut self, event: &str) -> Vec<Value> {
        self.call("sync", json!({})).await;
        let (taken, kept): (Vec<Value>, Vec<Value>) = std::mem::take(&mut self.backlog)
            .into_iter()
            .partition(|value| value["event"] == json!(event));
        self.backlog = kept.into();
        taken
    }
}

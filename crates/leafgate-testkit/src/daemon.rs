//! `leafgate run` as a child process: started with a config ([`command`], [`Daemon::spawn`]),
//! its log (stderr) kept in a file or captured and waited on line by line, and stopped (SIGTERM,
//! then SIGKILL after a grace period; also on drop). Its memory and CPU are read with
//! [`crate::procfs`] and [`Daemon::pid`].
//!
//! A caller that needs more composes the pieces: [`command`] returns a [`Command`] to add
//! environment, a user or a `pre_exec` hook to before [`Daemon::spawn`] runs it.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use tokio::sync::watch;

/// How long [`Daemon`]'s drop waits for the process to exit after SIGTERM before it kills it.
pub const DROP_GRACE: Duration = Duration::from_secs(5);

/// `BINARY run -c CONFIG --log-level LEVEL`, with stdin and stdout on /dev/null, and outside
/// systemd whatever runs this (`INVOCATION_ID`, `NOTIFY_SOCKET`, `JOURNAL_STREAM` removed: under
/// the journal the logger would write there instead of stderr). Set them again on the returned
/// command to play systemd.
pub fn command(binary: &Path, config: &Path, log_level: &str) -> Command {
    let mut command = Command::new(binary);
    command
        .arg("run")
        .arg("-c")
        .arg(config)
        .arg("--log-level")
        .arg(log_level)
        .env_remove("INVOCATION_ID")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    command
}

/// Where the child's stderr (leafgate's log) goes.
#[derive(Debug, Clone)]
pub enum Log {
    /// Straight into this file, read back on demand: no pipe and no reader in this process,
    /// so the child never waits on this process and this process spends nothing on the log.
    File(PathBuf),
    /// Through a pipe into memory, read by a thread of this process: lines can be waited for
    /// ([`Daemon::wait_line`]).
    Capture,
}

/// A running child process started by [`Daemon::spawn`]. Dropping it stops it as
/// [`Daemon::stop`] does, with [`DROP_GRACE`].
pub struct Daemon {
    child: Child,
    started: Instant,
    log: Sink,
}

enum Sink {
    File(PathBuf),
    Capture {
        text: Arc<Mutex<String>>,
        /// Changes after every chunk the reader appends; closed when the pipe reaches its end.
        grown: watch::Receiver<()>,
        reader: Option<JoinHandle<()>>,
    },
}

impl Daemon {
    /// Starts `command` (typically from [`command`]) with its stderr going to `log`.
    pub fn spawn(mut command: Command, log: Log) -> Result<Daemon> {
        let program = PathBuf::from(command.get_program());
        match &log {
            Log::File(path) => {
                let file = File::create(path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                command.stderr(file);
            }
            Log::Capture => {
                command.stderr(Stdio::piped());
            }
        }
        let started = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let log = match log {
            Log::File(path) => Sink::File(path),
            Log::Capture => {
                let stderr = child
                    .stderr
                    .take()
                    .context("the child's stderr is not a pipe")?;
                let text = Arc::new(Mutex::new(String::new()));
                let (grew, grown) = watch::channel(());
                let sink = Arc::clone(&text);
                let reader = std::thread::spawn(move || read_into(stderr, &sink, &grew));
                Sink::Capture {
                    text,
                    grown,
                    reader: Some(reader),
                }
            }
        };
        Ok(Daemon {
            child,
            started,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// When the process was started (just before the fork).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// The log file, for a [`Log::File`] log.
    pub fn log_path(&self) -> Option<&Path> {
        match &self.log {
            Sink::File(path) => Some(path),
            Sink::Capture { .. } => None,
        }
    }

    /// The whole log so far ("" for a log file that cannot be read).
    pub fn log(&self) -> String {
        match &self.log {
            Sink::File(path) => std::fs::read_to_string(path).unwrap_or_default(),
            Sink::Capture { text, .. } => lock(text).clone(),
        }
    }

    /// The last `lines` lines of the log.
    pub fn tail(&self, lines: usize) -> String {
        last_lines(&self.log(), lines)
    }

    /// Sends `signal` to the process. Only while it has not been waited for (by
    /// [`Daemon::stop`], [`Daemon::kill`], [`Daemon::wait`]): its pid may be reused after.
    pub fn signal(&self, signal: libc::c_int) -> Result<()> {
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: kill with the pid of our own child, not reaped yet (see above).
        if unsafe { libc::kill(pid, signal) } != 0 {
            return Err(std::io::Error::last_os_error()).context("kill");
        }
        Ok(())
    }

    /// Fails if the process has exited, with the end of its log.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "leafgate exited early ({status}); end of its log:\n{}",
                self.tail(20)
            );
        }
        Ok(())
    }

    /// Waits until a whole line of a [`Log::Capture`] log contains `text`, and returns the
    /// first such line. Woken by each chunk of log the reader gets, not by a timer. Fails after
    /// `timeout`, or at once when the log ends (the process exited) without it.
    pub async fn wait_line(&self, text: &str, timeout: Duration) -> Result<String> {
        let Sink::Capture { grown, .. } = &self.log else {
            bail!("the log goes to a file; only a captured log can be waited on");
        };
        let mut grown = grown.clone();
        let until = tokio::time::Instant::now() + timeout;
        loop {
            // Marks what is read now as seen before reading it, so that a chunk appended after
            // the read wakes the wait below.
            grown.borrow_and_update();
            let log = self.log();
            if let Some(line) = first_line_with(&log, text) {
                return Ok(line.to_owned());
            }
            match tokio::time::timeout_at(until, grown.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    // The end: the last line is whole without its newline.
                    let log = self.log();
                    if let Some(line) = log.lines().find(|line| line.contains(text)) {
                        return Ok(line.to_owned());
                    }
                    bail!("leafgate's log ended without a line containing {text:?}:\n{log}");
                }
                Err(_) => bail!(
                    "no line containing {text:?} in leafgate's log within {timeout:?}:\n{}",
                    self.log()
                ),
            }
        }
    }

    /// Waits up to `timeout` for the process to exit by itself; for a captured log, also until
    /// the log has reached its end, so that [`Daemon::log`] is whole after.
    pub async fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let until = tokio::time::Instant::now() + timeout;
        if let Sink::Capture { grown, reader, .. } = &mut self.log {
            while tokio::time::timeout_at(until, grown.changed())
                .await
                .with_context(|| format!("leafgate did not exit within {timeout:?}"))?
                .is_ok()
            {}
            // The reader has returned: joining is immediate.
            if let Some(reader) = reader.take() {
                let _ = reader.join();
            }
        }
        // The log closes as the process exits: this is about the reaping, not a wait for it.
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= until {
                bail!("leafgate did not exit within {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, up to `grace` for the process to exit, then SIGKILL. Returns the exit code if
    /// it exited by itself (`None` when killed, by this or by another signal).
    pub fn stop(&mut self, grace: Duration) -> Result<Option<i32>> {
        let code = self.terminate(grace);
        self.join_reader();
        code
    }

    /// SIGKILL (unless it has exited already), and waits for the process to be gone.
    pub fn kill(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_none() {
            self.child.kill()?;
            self.child.wait()?;
        }
        self.join_reader();
        Ok(())
    }

    fn terminate(&mut self, grace: Duration) -> Result<Option<i32>> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status.code());
        }
        self.signal(libc::SIGTERM)?;
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.code());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        self.child.wait()?;
        Ok(None)
    }

    /// Once the process is gone: the pipe is at its end, the reader returns.
    fn join_reader(&mut self) {
        if let Sink::Capture { reader, .. } = &mut self.log
            && let Some(reader) = reader.take()
        {
            let _ = reader.join();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.stop(DROP_GRACE);
    }
}

/// Appends everything `from` gives to `text`, announcing each chunk on `grew`; returns at the
/// end of the stream (dropping `grew` closes the channel).
fn read_into(mut from: impl std::io::Read, text: &Mutex<String>, grew: &watch::Sender<()>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 {
            break;
        }
        lock(text).push_str(&String::from_utf8_lossy(&buf[..n]));
        grew.send_replace(());
    }
}

fn lock(text: &Mutex<String>) -> std::sync::MutexGuard<'_, String> {
    text.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The first whole (newline-ended) line of `log` containing `text`, without its newline.
fn first_line_with<'a>(log: &'a str, text: &str) -> Option<&'a str> {
    let whole = &log[..log.rfind('\n')?];
    whole.lines().find(|line| line.contains(text))
}

fn last_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The last `lines` lines of a log file ("" if it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    last_lines(&std::fs::read_to_string(path).unwrap_or_default(), lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sh -c SCRIPT` standing in for leafgate.
    fn sh(script: &str) -> Command {
        let mut command = Command::new("sh");
        command.arg("-c").arg(script).stdin(Stdio::null());
        command
    }

    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn the_command_runs_a_config_outside_systemd() {
        let command = command(
            Path::new("/bin/leafgate"),
            Path::new("/etc/l.toml"),
            "debug",
        );
        let args: Vec<_> = command.get_args().collect();
        assert_eq!(args, ["run", "-c", "/etc/l.toml", "--log-level", "debug"]);
        let removed: Vec<_> = command
            .get_envs()
            .filter(|(_, value)| value.is_none())
            .map(|(key, _)| key)
            .collect();
        for key in ["INVOCATION_ID", "NOTIFY_SOCKET", "JOURNAL_STREAM"] {
            assert!(removed.contains(&std::ffi::OsStr::new(key)), "{key}");
        }
    }

    #[test]
    fn whole_lines_only() {
        assert_eq!(first_line_with("a\nready 1\nb", "ready"), Some("ready 1"));
        assert_eq!(first_line_with("a\nread", "ready"), None);
        assert_eq!(first_line_with("a\nready", "ready"), None);
        assert_eq!(last_lines("1\n2\n3\n", 2), "2\n3");
    }

    #[tokio::test]
    async fn a_captured_log_is_waited_on_line_by_line_and_whole_after_wait() {
        let mut child = Daemon::spawn(
            sh("echo starting >&2; echo 'ready: 3 devices' >&2; printf bye >&2"),
            Log::Capture,
        )
        .unwrap();
        assert_eq!(
            child.wait_line("ready", WAIT).await.unwrap(),
            "ready: 3 devices"
        );
        let status = child.wait(WAIT).await.unwrap();
        assert!(status.success());
        assert_eq!(child.log(), "starting\nready: 3 devices\nbye");
        // The log has ended: its last line counts although no newline ends it, and a line
        // that never came fails at once, not after the timeout.
        assert_eq!(child.wait_line("bye", WAIT).await.unwrap(), "bye");
        let t = Instant::now();
        let err = child.wait_line("never", WAIT).await.unwrap_err();
        assert!(t.elapsed() < WAIT / 2, "{err}");
        assert!(err.to_string().contains("ended without"), "{err}");
    }

    #[tokio::test]
    async fn a_line_that_does_not_come_times_out_with_the_log() {
        let child = Daemon::spawn(sh("echo hello >&2; exec sleep 30"), Log::Capture).unwrap();
        let err = child
            .wait_line("ready", Duration::from_millis(300))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("within 300ms") && err.contains("hello"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_file_log_is_read_back_and_an_early_exit_reported_with_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leafgate.log");
        let mut child = Daemon::spawn(
            sh("echo one >&2; echo two >&2; exit 3"),
            Log::File(path.clone()),
        )
        .unwrap();
        assert_eq!(child.log_path(), Some(path.as_path()));
        assert_eq!(child.wait(WAIT).await.unwrap().code(), Some(3));
        // Exited already: no signal, its own exit code.
        assert_eq!(child.stop(WAIT).unwrap(), Some(3));
        assert_eq!(child.log(), "one\ntwo\n");
        assert_eq!(tail(&path, 1), "two");
        let err = child.check_alive().unwrap_err().to_string();
        assert!(
            err.contains("exited early") && err.ends_with("one\ntwo"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn stop_sends_sigterm_then_kills_after_the_grace() {
        // Exits 0 on SIGTERM.
        let mut polite = Daemon::spawn(
            sh("trap 'exit 0' TERM; echo trapped >&2; while :; do sleep 0.05; done"),
            Log::Capture,
        )
        .unwrap();
        polite.wait_line("trapped", WAIT).await.unwrap();
        assert_eq!(polite.stop(WAIT).unwrap(), Some(0));
        // Ignores it.
        let mut stubborn = Daemon::spawn(
            sh("trap '' TERM; echo trapped >&2; while :; do sleep 0.05; done"),
            Log::Capture,
        )
        .unwrap();
        stubborn.wait_line("trapped", WAIT).await.unwrap();
        let t = Instant::now();
        assert_eq!(stubborn.stop(Duration::from_millis(300)).unwrap(), None);
        assert!(t.elapsed() >= Duration::from_millis(300));
        // Gone: kill and stop again change nothing.
        stubborn.kill().unwrap();
        assert_eq!(stubborn.stop(WAIT).unwrap(), None);
    }
}

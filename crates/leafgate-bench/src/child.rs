//! leafgate as a separate process (the real `leafgate run -c FILE`, through the test kit's
//! [`Daemon`]), so its CPU and memory are its own; the file-descriptor limit both processes
//! need; and waiting for its devices.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use leafgate_emulator::Emulator;
use leafgate_testkit::daemon::{self, Daemon, Log};
use tokio::task::JoinSet;

/// Raises `RLIMIT_NOFILE` for `n` devices on Modbus TCP endpoints of `units_per_endpoint`
/// units each (a connection per device, two descriptors per endpoint, room for the rest), or
/// says why the run cannot go ahead.
pub fn nofile_for_devices(n: usize, units_per_endpoint: usize) -> Result<()> {
    let want = (n + 2 * n.div_ceil(units_per_endpoint.max(1)) + 1024) as u64;
    let nofile = raise_nofile(want)?;
    if nofile < want {
        bail!("RLIMIT_NOFILE is {nofile}, {want} needed for {n} devices");
    }
    Ok(())
}

/// Raises this process's `RLIMIT_NOFILE` to at least `want` (the soft limit up to the hard
/// one, and the hard one too when allowed, i.e. as root). The child inherits it. Returns the
/// soft limit now in force.
pub fn raise_nofile(want: u64) -> Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit through a valid pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if limit.rlim_cur >= want {
        return Ok(limit.rlim_cur);
    }
    let raised = libc::rlimit {
        rlim_cur: want,
        rlim_max: limit.rlim_max.max(want),
    };
    // SAFETY: setrlimit reads one rlimit through a valid pointer.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return Ok(want);
    }
    // Not allowed to raise the hard limit: take what there is.
    let capped = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: as above.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &capped) } != 0 {
        return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
    }
    Ok(limit.rlim_max)
}

/// Has the kernel send `signal` to the child when the harness dies (`PR_SET_PDEATHSIG`), so
/// that no child outlives a harness killed with SIGKILL. The signal comes when the *thread*
/// that spawned the child ends: every caller spawns from the top-level future of `block_on`,
/// i.e. the main thread, which lives as long as the process.
pub fn die_with_parent(command: &mut Command, signal: libc::c_int) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl, which
    // is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `leafgate run -c CONFIG --log-level LOG_LEVEL`, its log in the file `log`; stopped with
/// SIGTERM (then SIGKILL) on [`Daemon::stop`] or drop, and by the kernel if the harness dies.
pub fn spawn_leafgate(binary: &Path, config: &Path, log_level: &str, log: &Path) -> Result<Daemon> {
    let mut command = daemon::command(binary, config, log_level);
    // SIGTERM: leafgate drains and disconnects its devices as at any stop.
    die_with_parent(&mut command, libc::SIGTERM);
    Daemon::spawn(command, Log::File(log.to_path_buf()))
}

/// Waits until every device in `ids` is online and subscribed to methods (the emulator's own
/// state, watched, not polled), failing early when `alive` reports a dead process. Returns when
/// the last one got there.
pub async fn wait_ready(
    emu: &Arc<Emulator>,
    ids: &[String],
    timeout: Duration,
    mut alive: impl FnMut() -> Result<()>,
) -> Result<Instant> {
    let mut watchers = JoinSet::new();
    for id in ids {
        let emu = Arc::clone(emu);
        let id = id.clone();
        watchers.spawn(async move {
            emu.wait_method_ready(&id, timeout)
                .await
                .map(|_| Instant::now())
                .map_err(|e| anyhow::anyhow!("{e}"))
        });
    }
    let mut last = Instant::now();
    let mut failures = Vec::new();
    let mut check = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            joined = watchers.join_next() => match joined {
                None => break,
                Some(Ok(Ok(at))) => last = last.max(at),
                Some(Ok(Err(e))) => failures.push(e),
                Some(Err(e)) => bail!("watcher task failed: {e}"),
            },
            _ = check.tick() => alive()?,
        }
    }
    alive()?;
    if let Some(first) = failures.first() {
        bail!(
            "{} of {} devices did not connect within {timeout:?}; first: {first}",
            failures.len(),
            ids.len()
        );
    }
    Ok(last)
}

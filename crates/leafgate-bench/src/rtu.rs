//! `leafgate-bench rtu`: how much line time leafgate wastes on a shared RS-485 line.
//!
//! Setup: per baud rate, a pty pair with two simulated RTU units (the sim's own RTU server,
//! each unit answering after a fixed turnaround via `Fault::Delay`), and one leafgate bus on
//! its slave end with two devices. Closed-loop callers keep more calls outstanding than the line
//! can serve, so leafgate's queue is never empty and the next request is always ready.
//!
//! Method: the sim side's transport is wrapped in a tap that timestamps every read and write
//! on the pty master (`std::time::Instant`, right after the syscall returns). A pty has no baud
//! rate, so "end of the reply" is the moment the sim's write of it returns, and "start of the
//! next request" is the first read after it that returns bytes. The gap between them is
//! compared with the configured silent interval (`frame_gap`, 3.5 characters, read back from
//! the loaded config); the excess is what leafgate adds, plus one artefact: the sim's own read
//! latency. A byte written to a pty reaches the other end through a kernel worker (the tty flip
//! buffer), and the sim's thread must then wake from `epoll_wait`, so the sim sees the request
//! some time after leafgate wrote it. The sim runs on its own OS thread with its own
//! single-threaded runtime, so that wake-up does not queue behind the emulator's work, and
//! [`pty_wake`] measures it separately (`pty_wake`, not subtracted): the excess is an upper
//! bound. The same kind of latency on leafgate's side (seeing the reply) is leafgate's own and
//! counts, as a real UART's receive latency would.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use leafgate::config::BusSpec;
use leafgate_emulator::{Emulator, EmulatorConfig, MethodCall};
use leafgate_sim::modbus::{Fault, Registers, serve_rtu};
use leafgate_sim::pty::Pty;
use serde::Serialize;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;

use crate::child;
use crate::scale::{PROFILE, hub_section, key_text, work_dir, write_private};
use crate::stats::{Summary, ms};
use leafgate_testkit::procfs::{Machine, Snapshot};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Baud rates to measure, one line each (the frame gap follows from it).
    #[arg(long, value_delimiter = ',', default_value = "9600,19200,115200")]
    pub bauds: Vec<u32>,
    /// The units' fixed turnaround (request received → reply sent), milliseconds.
    #[arg(long, default_value_t = 5)]
    pub turnaround_ms: u64,
    /// Calls kept outstanding on each line (well within leafgate's queue).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Seconds of load per line.
    #[arg(long, default_value_t = 15.0)]
    pub duration_s: f64,
    /// leafgate's log level.
    #[arg(long, default_value = "info")]
    pub leafgate_log_level: String,
    /// The leafgate binary (default: `leafgate` next to this binary).
    #[arg(long)]
    pub leafgate: Option<PathBuf>,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct Line {
    pub baud: u32,
    pub frame_gap_us: f64,
    pub turnaround_ms: u64,
    pub methods_ok: usize,
    pub errors: usize,
    pub exchanges_per_s: f64,
    /// End of a reply → start of the next request, as seen on the pty master.
    pub gap: Summary,
    /// `gap − frame_gap`.
    pub excess: Summary,
    /// Request read → reply written by the sim (its own timer adds to the configured delay).
    pub turnaround: Summary,
    /// How late `tokio::time::sleep(frame_gap)` wakes up on this machine, on a multi-threaded
    /// runtime like leafgate's: what the excess was made of before leafgate used a timerfd.
    pub tokio_sleep_overshoot: Summary,
    /// How late leafgate's own gap wait (`bus::gap::GapTimer`, a timerfd) wakes up on this
    /// machine, in the harness's runtime: the part of the excess that comes from the timer.
    pub gap_timer_overshoot: Summary,
    /// A byte written to a pty slave → the read on the master returning, with the reader parked
    /// like the sim: the sim's own read latency, which every measured gap includes.
    pub pty_wake: Summary,
    pub machine: Machine,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub lines: Vec<Line>,
    pub concurrency: usize,
    pub duration_s: f64,
    pub leafgate_exit_code: Option<i32>,
    pub passed: bool,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Event {
    at: Instant,
    write: bool,
}

#[derive(Clone, Default)]
pub(crate) struct Recorder {
    pub(crate) on: Arc<AtomicBool>,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Recorder {
    fn push(&self, write: bool) {
        if self.on.load(Ordering::Relaxed) {
            let at = Instant::now();
            self.events
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Event { at, write });
        }
    }

    pub(crate) fn take(&self) -> Vec<Event> {
        std::mem::take(&mut *self.events.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// The pty master with every read and write timestamped.
struct Tap<T> {
    inner: T,
    recorder: Recorder,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tap<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.recorder.push(false);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tap<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.recorder.push(true);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A simulated RTU line on its own thread; dropping it stops the thread.
pub(crate) struct SimLine {
    pub(crate) path: PathBuf,
    pub(crate) recorder: Recorder,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SimLine {
    pub(crate) fn start(registers: Registers) -> Result<SimLine> {
        let recorder = Recorder::default();
        let (path_tx, path_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let tap_recorder = recorder.clone();
        let thread = std::thread::Builder::new()
            .name("rtu-sim".to_owned())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = path_tx.send(Err(anyhow!("cannot start the sim's runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let pty = match Pty::open() {
                        Ok(pty) => pty,
                        Err(e) => {
                            let _ = path_tx.send(Err(anyhow!("cannot open a pty: {e}")));
                            return;
                        }
                    };
                    let _ = path_tx.send(Ok(pty.path().to_path_buf()));
                    let tap = Tap {
                        inner: pty,
                        recorder: tap_recorder,
                    };
                    tokio::select! {
                        served = serve_rtu(tap, registers) => {
                            if let Err(e) = served {
                                eprintln!("leafgate-bench: rtu sim stopped: {e}");
                            }
                        }
                        _ = stopped => {}
                    }
                });
            })?;
        let path = path_rx
            .recv_timeout(Duration::from_secs(10))
            .context("the sim thread did not start")??;
        Ok(SimLine {
            path,
            recorder,
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for SimLine {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Gaps (reply written → next request read) and turnarounds (request read → reply written).
pub(crate) fn gaps(events: &[Event]) -> (Vec<Duration>, Vec<Duration>) {
    let (mut gaps, mut turnarounds) = (Vec::new(), Vec::new());
    let (mut last_write, mut last_read): (Option<Instant>, Option<Instant>) = (None, None);
    for e in events {
        if e.write {
            if let Some(read) = last_read.take() {
                turnarounds.push(e.at.duration_since(read));
            }
            last_write = Some(e.at);
        } else {
            if let Some(write) = last_write.take() {
                gaps.push(e.at.duration_since(write));
            }
            // A request split over two reads starts at the first.
            last_read.get_or_insert(e.at);
        }
    }
    (gaps, turnarounds)
}

pub async fn run(args: Args) -> Result<Report> {
    child::raise_nofile(4096)?;
    let binary = match &args.leafgate {
        Some(path) => path.clone(),
        None => leafgate_testkit::binary("leafgate"),
    };
    let dir = work_dir("rtu")?;
    let emu = Arc::new(Emulator::start(EmulatorConfig::default()).await?);
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, emu.ca_pem())?;
    let mut config = hub_section(&emu, &ca, 100, 120);
    config.push_str(PROFILE);
    let mut lines = Vec::new();
    for &baud in &args.bauds {
        let registers = Registers::with_units([1, 2]);
        for unit in [1u8, 2] {
            registers.set_holding(unit, 0, &[u16::from(unit); 10]);
            registers.set_fault(
                unit,
                Fault::Delay(Duration::from_millis(args.turnaround_ms)),
            );
        }
        let line = SimLine::start(registers)?;
        write!(
            config,
            "\n[[bus]]\nid = \"rtu-{baud}\"\nkind = \"modbus_rtu\"\npath = \"{}\"\nbaud_rate = {baud}\ntimeout_ms = 1000\n",
            line.path.display()
        )?;
        let mut ids = Vec::new();
        for unit in [1u8, 2] {
            let id = format!("rtu-{baud}-{unit}");
            let key = leafgate_emulator::random_key();
            emu.add_device(&id, key.clone());
            write!(
                config,
                "\n[[device]]\nid = \"{id}\"\nshared_access_key = \"{}\"\nbus = \"rtu-{baud}\"\nunit = {unit}\nprofile = \"bench\"\n",
                key_text(&key)
            )?;
            ids.push(id);
        }
        lines.push((baud, line, ids));
    }
    let config_path = dir.join("leafgate.toml");
    write_private(&config_path, &config)?;
    // The configured silent interval, as leafgate itself derives it.
    let loaded = leafgate::config::load(&config_path)
        .map_err(|e| anyhow!("the generated config is invalid: {:?}", e.problems))?;
    let frame_gap = |baud: u32| {
        loaded.buses.iter().find_map(|b| match &b.spec {
            BusSpec::ModbusRtu { frame_gap, .. } if b.id == format!("rtu-{baud}") => {
                Some(*frame_gap)
            }
            _ => None,
        })
    };

    let mut gate = child::spawn_leafgate(
        &binary,
        &config_path,
        &args.leafgate_log_level,
        &dir.join("leafgate.log"),
    )?;
    for (_, _, ids) in &lines {
        for id in ids {
            emu.wait_method_ready(id, Duration::from_secs(30))
                .await
                .with_context(|| format!("{id} did not connect"))?;
        }
    }
    let mut results = Vec::new();
    for (baud, line, ids) in &lines {
        let gap = frame_gap(*baud).context("bus missing from the loaded config")?;
        let ids = Arc::new(ids.clone());
        // Warm up (opens the port), then record under load.
        closed_loop(&emu, &ids, 2, Duration::from_millis(300)).await;
        let before = Snapshot::take();
        line.recorder.on.store(true, Ordering::Relaxed);
        let (ok, errors, elapsed) = closed_loop(
            &emu,
            &ids,
            args.concurrency,
            Duration::from_secs_f64(args.duration_s),
        )
        .await;
        line.recorder.on.store(false, Ordering::Relaxed);
        let after = Snapshot::take();
        gate.check_alive()?;
        let overshoot = tokio::spawn(sleep_overshoot(gap, 300))
            .await
            .context("timer probe failed")?;
        let gap_overshoot = tokio::spawn(gap_timer_overshoot(gap, 300))
            .await
            .context("timer probe failed")?;
        let pty_wake = tokio::task::spawn_blocking(|| pty_wake(300))
            .await
            .context("pty probe failed")??;
        let events = line.recorder.take();
        let (gap_samples, turnarounds) = gaps(&events);
        let gap_us = gap.as_secs_f64() * 1e6;
        let summary = Summary::of(&gap_samples);
        let excess = Summary::of_micros(
            gap_samples
                .iter()
                .map(|g| g.as_secs_f64() * 1e6 - gap_us)
                .collect(),
        );
        results.push(Line {
            baud: *baud,
            frame_gap_us: gap_us,
            turnaround_ms: args.turnaround_ms,
            methods_ok: ok,
            errors,
            exchanges_per_s: turnarounds.len() as f64 / elapsed.as_secs_f64(),
            gap: summary,
            excess,
            turnaround: Summary::of(&turnarounds),
            tokio_sleep_overshoot: overshoot,
            gap_timer_overshoot: gap_overshoot,
            pty_wake,
            machine: Machine::between(&before, &after, Some(gate.pid())),
        });
    }
    let exit = gate.stop(Duration::from_secs(10))?;
    drop(lines);
    let _ = std::fs::remove_dir_all(&dir);
    let passed = results.iter().all(|l| l.errors == 0 && l.gap.count > 0) && exit == Some(0);
    if results.is_empty() {
        bail!("no --bauds given");
    }
    Ok(Report {
        lines: results,
        concurrency: args.concurrency,
        duration_s: args.duration_s,
        leafgate_exit_code: exit,
        passed,
    })
}

/// How late `tokio::time::sleep(d)` returns, over `n` sleeps (leafgate waits out the frame gap
/// with such a sleep; tokio's timer wheel has millisecond slots).
async fn sleep_overshoot(d: Duration, n: usize) -> Summary {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        tokio::time::sleep(d).await;
        samples.push(start.elapsed().saturating_sub(d));
    }
    Summary::of(&samples)
}

/// The same for leafgate's gap wait.
async fn gap_timer_overshoot(d: Duration, n: usize) -> Summary {
    let mut timer = leafgate::bus::gap::GapTimer::new();
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let start = tokio::time::Instant::now();
        timer.wait_until(start + d).await;
        samples.push(start.elapsed().saturating_sub(d));
    }
    Summary::of(&samples)
}

/// Over `n` single bytes: a write on a fresh pty's slave end (as leafgate writes a request)
/// returning → the read on its master returning in a reader set up like [`SimLine`] (own
/// thread, current-thread runtime, parked in `epoll_wait` between bytes). Blocking: run it off
/// the runtime.
pub(crate) fn pty_wake(n: usize) -> Result<Summary> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    use tokio::io::AsyncReadExt as _;

    let (read_tx, read_rx) = std::sync::mpsc::channel::<Instant>();
    let (path_tx, path_rx) = std::sync::mpsc::channel();
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("pty-probe".to_owned())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = path_tx.send(Err(anyhow!("cannot start the probe's runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                let mut pty = match Pty::open() {
                    Ok(pty) => pty,
                    Err(e) => {
                        let _ = path_tx.send(Err(anyhow!("cannot open a pty: {e}")));
                        return;
                    }
                };
                let _ = path_tx.send(Ok(pty.path().to_path_buf()));
                let mut buf = [0u8; 64];
                let reader = async {
                    while let Ok(got) = pty.read(&mut buf).await {
                        if got == 0 {
                            break;
                        }
                        let at = Instant::now();
                        for _ in 0..got {
                            let _ = read_tx.send(at);
                        }
                    }
                };
                tokio::select! {
                    () = reader => {}
                    _ = stopped => {}
                }
            });
        })?;
    let path = path_rx
        .recv_timeout(Duration::from_secs(10))
        .context("the pty probe did not start")??;
    let measured = (|| -> Result<Vec<Duration>> {
        let mut slave = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let mut samples = Vec::with_capacity(n);
        for _ in 0..n {
            slave.write_all(&[0x55])?;
            let written = Instant::now();
            let read = read_rx
                .recv_timeout(Duration::from_secs(1))
                .context("the probe's byte never arrived")?;
            samples.push(read.saturating_duration_since(written));
            // Let the reader park again, as the sim does between requests.
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(samples)
    })();
    let _ = stop.send(());
    let _ = thread.join();
    Ok(Summary::of(&measured?))
}

/// `concurrency` callers, each calling the next device as soon as its previous call returned,
/// for `duration`. Returns (ok, errors, elapsed).
async fn closed_loop(
    emu: &Arc<Emulator>,
    ids: &Arc<Vec<String>>,
    concurrency: usize,
    duration: Duration,
) -> (usize, usize, Duration) {
    let start = Instant::now();
    let until = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..concurrency {
        let emu = Arc::clone(emu);
        let ids = Arc::clone(ids);
        tasks.spawn(async move {
            let (mut ok, mut errors) = (0usize, 0usize);
            let mut i = k;
            while Instant::now() < until {
                let call = MethodCall::new(crate::load::METHOD, json!({})).response_timeout(30);
                match emu.invoke(&ids[i % ids.len()], call).await {
                    Ok(r) if r.status == 200 => ok += 1,
                    Ok(r) => {
                        errors += 1;
                        eprintln!(
                            "leafgate-bench: rtu call answered {}: {}",
                            r.status, r.payload
                        );
                    }
                    Err(e) => {
                        errors += 1;
                        eprintln!("leafgate-bench: rtu call failed: {e}");
                    }
                }
                i += 1;
            }
            (ok, errors)
        });
    }
    let (mut ok, mut errors) = (0, 0);
    while let Some(joined) = tasks.join_next().await {
        if let Ok((o, e)) = joined {
            ok += o;
            errors += e;
        }
    }
    (ok, errors, start.elapsed())
}

pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## leafgate-bench rtu: 2 units per line, {} calls outstanding, {} s per line\n",
        r.concurrency, r.duration_s
    );
    let _ = writeln!(
        out,
        "Gap = end of a reply → start of the next request on the pty master; excess = gap − configured frame gap. Times in ms.\n"
    );
    let _ = writeln!(
        out,
        "| baud | frame gap | turnaround (set / measured p50) | exchanges/s | methods ok / errors | gap p50 | gap p99 | excess p50 | excess p90 | excess p99 | excess max | tokio sleep(gap) overshoot p50 / p99 | leafgate gap timer overshoot p50 / p99 | pty wake (sim read latency) p50 / p99 |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for l in &r.lines {
        let _ = writeln!(
            out,
            "| {} | {} | {} / {} | {:.1} | {} / {} | {} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} / {} |",
            l.baud,
            ms(l.frame_gap_us),
            l.turnaround_ms,
            ms(l.turnaround.p50_us),
            l.exchanges_per_s,
            l.methods_ok,
            l.errors,
            ms(l.gap.p50_us),
            ms(l.gap.p99_us),
            ms(l.excess.p50_us),
            ms(l.excess.p90_us),
            ms(l.excess.p99_us),
            ms(l.excess.max_us),
            ms(l.tokio_sleep_overshoot.p50_us),
            ms(l.tokio_sleep_overshoot.p99_us),
            ms(l.gap_timer_overshoot.p50_us),
            ms(l.gap_timer_overshoot.p99_us),
            ms(l.pty_wake.p50_us),
            ms(l.pty_wake.p99_us)
        );
    }
    let _ = writeln!(out);
    for l in &r.lines {
        let _ = writeln!(
            out,
            "- {} baud ({} gaps): {}",
            l.baud,
            l.gap.count,
            l.machine.summary()
        );
    }
    let _ = writeln!(
        out,
        "\nResult: {}",
        if r.passed {
            "PASS (no errors, clean exit)"
        } else {
            "FAIL"
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_run_from_the_last_reply_write_to_the_next_request_read() {
        let t0 = Instant::now();
        let at = |ms: u64, write: bool| Event {
            at: t0 + Duration::from_millis(ms),
            write,
        };
        // request (two reads), reply (two writes), gap, request, reply, gap, request.
        let events = [
            at(0, false),
            at(1, false),
            at(6, true),
            at(7, true),
            at(11, false),
            at(16, true),
            at(20, false),
        ];
        let (gaps, turnarounds) = gaps(&events);
        assert_eq!(gaps, [Duration::from_millis(4), Duration::from_millis(4)]);
        assert_eq!(
            turnarounds,
            [Duration::from_millis(6), Duration::from_millis(5)]
        );
    }
}

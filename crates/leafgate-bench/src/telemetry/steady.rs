//! `leafgate-bench telemetry steady`: N meters each sending one reading per interval to a
//! healthy hub, with the store on, measured over a window after every device is connected and
//! has sent its first reading.
//!
//! - CPU: leafgate's utime + stime over the window / the window's wall time (% of one core).
//! - RSS per device: leafgate's VmRSS at the end of the window / N, as `scale` computes it. It
//!   includes the fixed cost (runtime, TLS roots, the store), so it is an upper bound on the
//!   marginal cost. The marginal cost is measured too: before the run, leafgate runs the same
//!   site with one meter until its first reading is in; (RSS(N) − RSS(1)) / (N − 1).
//! - Loss: each device's readings up to the end of the window (its unit's polls, see
//!   [`received`]) checked against the hub's messages after a settling wait.
//! - Latency: poll start → recorded by the hub (before its PUBACK), for readings polled within
//!   the window.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use anyhow::{Result, bail};
use serde::Serialize;

use super::received::{self, Tally};
use super::site::{Site, Spec, StoreSize, wait_readings};
use super::{Common, met};
use crate::child;
use crate::scale::work_dir;
use crate::stats::{Summary, ms};
use leafgate_testkit::procfs::{self, Machine, Memory, Snapshot};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Meters, each its own MQTT/TLS connection from leafgate to the hub.
    #[arg(long, default_value_t = 10_000)]
    pub devices: usize,
    /// Each meter's poll interval (`interval_ms` of its one group).
    #[arg(long, default_value_t = 10_000)]
    pub interval_ms: u64,
    /// Holding registers each reading holds (one Modbus read, one field each).
    #[arg(long, default_value_t = 10)]
    pub registers: u16,
    /// Length of the measured window, seconds.
    #[arg(long, default_value_t = 60.0)]
    pub seconds: f64,
    /// `[telemetry] max_messages_per_s`: above the offered rate, so nothing waits for it.
    #[arg(long, default_value_t = 5000)]
    pub max_messages_per_s: u32,
    /// leafgate's `max_connects_per_s`.
    #[arg(long, default_value_t = 500)]
    pub connect_rate: u32,
    /// Modbus units behind each simulated Modbus TCP endpoint (1..=247); one leafgate bus each.
    #[arg(long, default_value_t = 50)]
    pub units_per_endpoint: usize,
    /// MQTT keep-alive of leafgate's sessions (`keep_alive_s`).
    #[arg(long, default_value_t = 120)]
    pub keep_alive_s: u64,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub devices: usize,
    pub endpoints: usize,
    pub units_per_endpoint: usize,
    pub interval_ms: u64,
    pub registers: u16,
    pub max_messages_per_s: u32,
    pub offered_rate: f64,
    pub leafgate_log_level: String,
    /// Process start → every device connected and subscribed.
    pub connected_s: f64,
    /// Process start → every device's first reading at the hub.
    pub first_readings_s: f64,
    pub window_s: f64,
    pub leafgate_cpu_pct: f64,
    pub leafgate_memory: Memory,
    pub rss_per_device_kib: f64,
    /// leafgate with one meter, after its first reading.
    pub rss_one_device_kib: u64,
    /// (RSS(N) − RSS(1)) / (N − 1).
    pub rss_marginal_per_device_kib: f64,
    /// N × window / interval.
    pub expected_in_window: f64,
    /// Polls the units answered within the window.
    pub polled_in_window: u64,
    /// Distinct readings polled within the window that reached the hub.
    pub received_in_window: u64,
    pub achieved_rate: f64,
    /// Every reading from the start to the end of the window.
    pub tally: Tally,
    /// Devices whose readings up to the end of the window had not all arrived after the settling
    /// wait (their missing readings are in `tally.lost`).
    pub unsettled_devices: usize,
    /// Poll start → recorded by the hub, µs.
    pub latency: Summary,
    /// Connections accepted beyond one per device.
    pub reconnects: u64,
    pub store: StoreSize,
    pub machine: Machine,
    pub harness_memory: Memory,
    pub leafgate_exit_code: Option<i32>,
    pub goals: Goals,
    pub passed: bool,
}

/// The goals for this run.
#[derive(Debug, Serialize)]
pub struct Goals {
    pub cpu_at_most_20_pct: bool,
    pub rss_at_most_45_kib_per_device: bool,
    pub none_lost: bool,
}

pub async fn run(args: Args) -> Result<Report> {
    let n = args.devices;
    let upe = args.units_per_endpoint.max(1);
    if args.interval_ms < 100 || args.seconds <= 0.0 {
        bail!("--interval-ms must be at least 100 and --seconds above 0");
    }
    child::nofile_for_devices(n, upe)?;
    let binary = args.common.binary();
    let dir = work_dir("telemetry-steady")?;
    let spec = Spec {
        devices: n,
        units_per_endpoint: upe,
        registers: args.registers,
        interval_ms: args.interval_ms,
        connect_rate: args.connect_rate,
        keep_alive_s: args.keep_alive_s,
        max_messages_per_s: args.max_messages_per_s,
    };
    let one = one_device_rss(&spec, &args.common, &dir).await?;
    let site = Site::start(&spec, &dir).await?;
    let interval = Duration::from_millis(args.interval_ms);
    let log = dir.join("leafgate.log");
    let mut gate =
        child::spawn_leafgate(&binary, &site.config, &args.common.leafgate_log_level, &log)?;
    let pid = gate.pid();

    let connect_wait =
        Duration::from_secs_f64(n as f64 / f64::from(args.connect_rate.max(1)) * 3.0)
            + Duration::from_secs(60);
    let connected = child::wait_ready(&site.emu, &site.ids, connect_wait, || gate.check_alive())
        .await?
        .duration_since(gate.started());
    eprintln!(
        "leafgate-bench: {n} meters connected in {:.1} s; waiting for every first reading",
        connected.as_secs_f64()
    );
    let (first, missing) = wait_readings(
        &site.emu,
        &site.ids,
        &vec![1; n],
        interval * 2 + Duration::from_secs(60),
        || gate.check_alive(),
    )
    .await?;
    if missing > 0 {
        bail!(
            "{missing} of {n} meters sent no reading; leafgate log: {}",
            log.display()
        );
    }
    let first_readings = first.duration_since(gate.started());
    eprintln!(
        "leafgate-bench: every meter's first reading in after {:.1} s; measuring for {} s",
        first_readings.as_secs_f64(),
        args.seconds
    );

    let before = Snapshot::take();
    let cpu0 = procfs::cpu_seconds(pid)?;
    let (t0, w0) = (tokio::time::Instant::now(), SystemTime::now());
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    let (t1, w1) = (tokio::time::Instant::now(), SystemTime::now());
    let cpu1 = procfs::cpu_seconds(pid)?;
    let after = Snapshot::take();
    let memory = procfs::memory(pid)?;
    gate.check_alive()?;
    let store = site.store_size();
    let window = t1.duration_since(t0).as_secs_f64();

    let polled = site.polled_until(t1);
    let polled_before: u64 = site.polled_until(t0).iter().sum();
    let polled_in_window = polled.iter().sum::<u64>() - polled_before;
    // Let what was polled by the end of the window arrive.
    let (_, unsettled) = wait_readings(
        &site.emu,
        &site.ids,
        &polled,
        interval + Duration::from_secs(30),
        || gate.check_alive(),
    )
    .await?;
    let mut tally = Tally::default();
    let mut latencies = Vec::with_capacity(polled_in_window as usize);
    let mut received_in_window = 0;
    let (w0_ms, w1_ms) = (received::epoch_ms(w0) as u64, received::epoch_ms(w1) as u64);
    let stats = site.emu.stats();
    let mut reconnects = 0;
    for (id, &k) in site.ids.iter().zip(&polled) {
        let messages = site.emu.telemetry(id);
        received::check(&mut tally, id, &messages, k);
        received_in_window += received::latencies(&messages, w0_ms, w1_ms, &mut latencies);
        reconnects += stats
            .get(id)
            .map_or(0, |s| s.connects_accepted.saturating_sub(1));
    }
    let harness_memory = procfs::memory(std::process::id())?;
    let exit = gate.stop(Duration::from_secs(30))?;
    args.common.done_with(&dir);

    let cpu_pct = (cpu1 - cpu0) / window * 100.0;
    let per_device = memory.rss_kib as f64 / n as f64;
    let goals = Goals {
        cpu_at_most_20_pct: cpu_pct <= 20.0,
        rss_at_most_45_kib_per_device: per_device <= 45.0,
        none_lost: tally.lost == 0,
    };
    let passed = tally.lost == 0 && tally.duplicates_same_connection == 0 && exit == Some(0);
    Ok(Report {
        devices: n,
        endpoints: site.endpoints,
        units_per_endpoint: upe,
        interval_ms: args.interval_ms,
        registers: args.registers,
        max_messages_per_s: args.max_messages_per_s,
        offered_rate: n as f64 * 1000.0 / args.interval_ms as f64,
        leafgate_log_level: args.common.leafgate_log_level.clone(),
        connected_s: connected.as_secs_f64(),
        first_readings_s: first_readings.as_secs_f64(),
        window_s: window,
        leafgate_cpu_pct: cpu_pct,
        leafgate_memory: memory,
        rss_per_device_kib: per_device,
        rss_one_device_kib: one,
        rss_marginal_per_device_kib: memory.rss_kib.saturating_sub(one) as f64
            / n.saturating_sub(1).max(1) as f64,
        expected_in_window: n as f64 * window * 1000.0 / args.interval_ms as f64,
        polled_in_window,
        received_in_window,
        achieved_rate: received_in_window as f64 / window,
        tally,
        unsettled_devices: unsettled,
        latency: Summary::of_micros(latencies),
        reconnects,
        store,
        machine: Machine::between(&before, &after, Some(pid)),
        harness_memory,
        leafgate_exit_code: exit,
        goals,
        passed,
    })
}

/// leafgate's RSS on the same kind of site with one meter, once its first reading is in: the
/// fixed cost (runtime, TLS roots, the open store) the per-device figure includes.
async fn one_device_rss(spec: &Spec, common: &Common, dir: &std::path::Path) -> Result<u64> {
    let dir = dir.join("one");
    std::fs::create_dir_all(&dir)?;
    let site = Site::start(
        &Spec {
            devices: 1,
            ..spec.clone()
        },
        &dir,
    )
    .await?;
    let mut gate = child::spawn_leafgate(
        &common.binary(),
        &site.config,
        &common.leafgate_log_level,
        &dir.join("leafgate.log"),
    )?;
    let wait = Duration::from_millis(spec.interval_ms) * 2 + Duration::from_secs(30);
    child::wait_ready(&site.emu, &site.ids, wait, || gate.check_alive()).await?;
    let (_, missing) =
        wait_readings(&site.emu, &site.ids, &[1], wait, || gate.check_alive()).await?;
    if missing > 0 {
        bail!("the one-meter run sent no reading");
    }
    let rss = procfs::rss_kib(gate.pid())?;
    gate.stop(Duration::from_secs(10))?;
    Ok(rss)
}

pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let t = &r.tally;
    let _ = writeln!(
        out,
        "## leafgate-bench telemetry steady: {} meters ({} Modbus TCP endpoints × ≤ {} units), one reading of {} registers every {} ms ({:.0} msg/s offered), max_messages_per_s {}, store on, log level {}\n",
        r.devices,
        r.endpoints,
        r.units_per_endpoint,
        r.registers,
        r.interval_ms,
        r.offered_rate,
        r.max_messages_per_s,
        r.leafgate_log_level
    );
    let _ = writeln!(out, "| figure | value | goal |\n|---|---|---|");
    let _ = writeln!(
        out,
        "| start → all connected / all first readings in | {:.1} s / {:.1} s | |",
        r.connected_s, r.first_readings_s
    );
    let _ = writeln!(out, "| measured window | {:.1} s | |", r.window_s);
    let _ = writeln!(
        out,
        "| leafgate CPU (% of one core) | {:.2} % | ≤ 20 %: {} |",
        r.leafgate_cpu_pct,
        met(r.goals.cpu_at_most_20_pct)
    );
    let _ = writeln!(
        out,
        "| leafgate RSS total (peak) | {:.1} MiB ({:.1} MiB) | |",
        r.leafgate_memory.rss_kib as f64 / 1024.0,
        r.leafgate_memory.peak_kib as f64 / 1024.0
    );
    let _ = writeln!(
        out,
        "| leafgate RSS per device (total / N) | {:.2} KiB | ≤ 45 KiB: {} |",
        r.rss_per_device_kib,
        met(r.goals.rss_at_most_45_kib_per_device)
    );
    let _ = writeln!(
        out,
        "| leafgate RSS with one meter; marginal per device ((RSS(N) − RSS(1)) / (N − 1)) | {:.1} MiB; {:.2} KiB | |",
        r.rss_one_device_kib as f64 / 1024.0,
        r.rss_marginal_per_device_kib
    );
    let _ = writeln!(
        out,
        "| readings in the window: expected / polled / arrived | {:.0} / {} / {} ({:.1} msg/s) | |",
        r.expected_in_window, r.polled_in_window, r.received_in_window, r.achieved_rate
    );
    let _ = writeln!(
        out,
        "| readings start → end of window: polled / arrived / **lost** | {} / {} / **{}** | 0 lost: {} |",
        t.polled,
        t.received,
        t.lost,
        met(r.goals.none_lost)
    );
    let _ = writeln!(
        out,
        "| duplicates (same connection) / out of order | {} ({}) / {} | |",
        t.duplicates, t.duplicates_same_connection, t.out_of_order
    );
    let l = &r.latency;
    let _ = writeln!(
        out,
        "| latency poll → hub, ms: p50 / p90 / p99 / p99.9 / max | {} / {} / {} / {} / {} | |",
        ms(l.p50_us),
        ms(l.p90_us),
        ms(l.p99_us),
        ms(l.p999_us),
        ms(l.max_us)
    );
    let _ = writeln!(out, "| reconnects | {} | |", r.reconnects);
    let _ = writeln!(
        out,
        "| store on disk at the end: db + -wal (-shm) | {} = {} + {} bytes ({} bytes) | |",
        r.store.data(),
        r.store.db,
        r.store.wal,
        r.store.shm
    );
    let _ = writeln!(
        out,
        "| harness RSS (emulator, sims) | {:.1} MiB | |",
        r.harness_memory.rss_kib as f64 / 1024.0
    );
    let _ = writeln!(
        out,
        "| leafgate exit code after SIGTERM | {} | |",
        r.leafgate_exit_code
            .map_or("killed".to_owned(), |c| c.to_string())
    );
    if !t.lost_examples.is_empty() {
        let _ = writeln!(out, "\nlost, for example: {}", t.lost_examples.join(", "));
    }
    if r.unsettled_devices > 0 {
        let _ = writeln!(
            out,
            "\n{} devices still missing readings after the settling wait",
            r.unsettled_devices
        );
    }
    let _ = writeln!(out, "\nMachine during the window: {}", r.machine.summary());
    let _ = writeln!(
        out,
        "\nResult: {}",
        if r.passed {
            "PASS (none lost, clean exit)"
        } else {
            "FAIL"
        }
    );
    out
}

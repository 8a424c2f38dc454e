//! `leafgate-bench telemetry outage`: the hub goes away for `--outage-s` while N meters keep
//! polling, then comes back.
//!
//! The outage: every device connection is dropped (TCP close, as the hub does) and every
//! reconnect meets the fault, `Fault::Hangup(Target::All)` by default (the CONNECT is read and
//! the connection closed without a CONNACK) or `Fault::RefuseTcp` (the listener is closed: the
//! kernel refuses the SYN), injected without a duration and cleared by hand. Meanwhile the
//! readings pile up in the store; leafgate's RSS is sampled every `--sample-s` (it must stay
//! flat: each device keeps only its next few stored readings in memory). At the end of the
//! outage the store's files are measured (`-wal` included: the readings may still be there,
//! not yet checkpointed into the database). Then the fault is cleared, and two times are taken,
//! at `max_messages_per_s = --rate`:
//!
//! - *drain*: until every device's readings up to the hub's return have arrived. A device sends
//!   its readings in order, so the live readings wait behind the backlog meanwhile, and this
//!   takes about waiting / rate (plus the reconnects' spread).
//! - *caught up*: until every device's messages are live again (the first one polled less than
//!   an interval + 1 s before it arrived), i.e. the backlog, grown by the readings taken
//!   during the drain, is gone: about waiting / (rate − live rate), as the README says.
//!
//! Finally every reading up to the hub's return is checked, as in `steady`.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Result, bail};
use leafgate::hub::d2c;
use leafgate_emulator::{Event, Fault, Target};
use serde::Serialize;
use tokio::sync::{broadcast, oneshot};

use super::received::{self, Tally};
use super::site::{Site, Spec, StoreSize, wait_readings};
use super::{Common, met};
use crate::child;
use crate::scale::work_dir;
use leafgate_testkit::procfs::{self, Machine, Memory, Snapshot};

#[derive(Debug, Clone, Copy, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HubFault {
    /// The hub reads each CONNECT and closes the connection without a CONNACK.
    Hangup,
    /// The hub's port refuses TCP connections.
    RefuseTcp,
}

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    #[arg(long, default_value_t = 10)]
    pub registers: u16,
    /// How long the hub stays away, seconds.
    #[arg(long, default_value_t = 600.0)]
    pub outage_s: f64,
    /// `[telemetry] max_messages_per_s`, which the backlog drains at (less the live rate).
    #[arg(long, default_value_t = 2000)]
    pub rate: u32,
    /// How the hub is away.
    #[arg(long, value_enum, default_value_t = HubFault::Hangup)]
    pub fault: HubFault,
    /// Seconds between RSS samples during the outage.
    #[arg(long, default_value_t = 10.0)]
    pub sample_s: f64,
    #[arg(long, default_value_t = 500)]
    pub connect_rate: u32,
    #[arg(long, default_value_t = 50)]
    pub units_per_endpoint: usize,
    #[arg(long, default_value_t = 120)]
    pub keep_alive_s: u64,
    #[command(flatten)]
    pub common: Common,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Since the fault was injected.
    pub at_s: f64,
    pub rss_kib: u64,
    pub store_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub devices: usize,
    pub endpoints: usize,
    pub interval_ms: u64,
    pub registers: u16,
    pub rate: u32,
    pub live_rate: f64,
    pub fault: HubFault,
    pub outage_s: f64,
    pub leafgate_log_level: String,
    /// Just before the fault.
    pub rss_before_kib: u64,
    pub samples: Vec<Sample>,
    pub rss_min_kib: u64,
    pub rss_max_kib: u64,
    pub cpu_pct_outage: f64,
    /// Readings polled between the fault and its end.
    pub readings_in_outage: u64,
    /// At the end of the outage.
    pub store: StoreSize,
    /// (db + -wal) / readings polled during the outage.
    pub store_bytes_per_reading: f64,
    /// Fault cleared → every device connected again.
    pub reconnect_s: f64,
    /// Fault cleared → every device's readings up to then at the hub.
    pub drain_s: f64,
    /// readings waiting / rate: the drain alone, live readings waiting behind it.
    pub predicted_drain_s: f64,
    /// Fault cleared → every device's messages live again.
    pub caught_up_s: f64,
    /// readings waiting / (rate − live rate): what the README predicts for catching up.
    pub predicted_caught_up_s: f64,
    /// Devices not caught up when the harness stopped waiting.
    pub not_caught_up: usize,
    /// Telemetry events the caught-up watcher missed (it fell behind the emulator's stream).
    pub events_missed: u64,
    pub rss_max_drain_kib: u64,
    pub cpu_pct_drain: f64,
    pub store_after_drain: StoreSize,
    /// Every reading from the start to the end of the outage.
    pub tally: Tally,
    pub unsettled_devices: usize,
    pub machine_outage: Machine,
    pub machine_drain: Machine,
    pub harness_memory: Memory,
    pub leafgate_exit_code: Option<i32>,
    pub passed: bool,
}

pub async fn run(args: Args) -> Result<Report> {
    let n = args.devices;
    let upe = args.units_per_endpoint.max(1);
    if args.interval_ms < 100 || args.outage_s <= 0.0 || args.sample_s <= 0.0 {
        bail!("--interval-ms must be at least 100, --outage-s and --sample-s above 0");
    }
    child::nofile_for_devices(n, upe)?;
    let binary = args.common.binary();
    let dir = work_dir("telemetry-outage")?;
    let spec = Spec {
        devices: n,
        units_per_endpoint: upe,
        registers: args.registers,
        interval_ms: args.interval_ms,
        connect_rate: args.connect_rate,
        keep_alive_s: args.keep_alive_s,
        max_messages_per_s: args.rate,
    };
    let site = Site::start(&spec, &dir).await?;
    let emu = Arc::clone(&site.emu);
    let interval = Duration::from_millis(args.interval_ms);
    let live_rate = n as f64 * 1000.0 / args.interval_ms as f64;
    let log = dir.join("leafgate.log");
    let mut gate =
        child::spawn_leafgate(&binary, &site.config, &args.common.leafgate_log_level, &log)?;
    let pid = gate.pid();
    let connect_wait =
        Duration::from_secs_f64(n as f64 / f64::from(args.connect_rate.max(1)) * 3.0)
            + Duration::from_secs(60);
    child::wait_ready(&emu, &site.ids, connect_wait, || gate.check_alive()).await?;
    let (_, missing) = wait_readings(
        &emu,
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
    let rss_before = procfs::rss_kib(pid)?;
    eprintln!(
        "leafgate-bench: {n} meters sending; the hub goes away for {} s ({:?})",
        args.outage_s, args.fault
    );

    // The outage.
    let before = Snapshot::take();
    let cpu0 = procfs::cpu_seconds(pid)?;
    let fault = match args.fault {
        HubFault::Hangup => emu.inject_fault(Fault::Hangup(Target::All), None).await,
        HubFault::RefuseTcp => emu.inject_fault(Fault::RefuseTcp, None).await,
    };
    emu.drop_all_connections();
    let t_fault = tokio::time::Instant::now();
    let outage = Duration::from_secs_f64(args.outage_s);
    let step = Duration::from_secs_f64(args.sample_s);
    let mut samples = Vec::new();
    loop {
        let elapsed = t_fault.elapsed();
        if elapsed >= outage {
            break;
        }
        tokio::time::sleep(step.min(outage - elapsed)).await;
        gate.check_alive()?;
        samples.push(Sample {
            at_s: t_fault.elapsed().as_secs_f64(),
            rss_kib: procfs::rss_kib(pid)?,
            store_bytes: site.store_size().data(),
        });
    }
    let store = site.store_size();
    let t_clear = tokio::time::Instant::now();
    let cpu1 = procfs::cpu_seconds(pid)?;
    let mid = Snapshot::take();
    let polled = site.polled_until(t_clear);
    let polled_at_fault: u64 = site.polled_until(t_fault).iter().sum();
    let readings_in_outage = polled.iter().sum::<u64>() - polled_at_fault;
    let waiting = polled.iter().sum::<u64>() as f64
        - site
            .ids
            .iter()
            .map(|id| {
                let s = emu.device_stats(id);
                s.telemetry_messages.saturating_sub(s.telemetry_duplicates) as f64
            })
            .sum::<f64>();
    eprintln!(
        "leafgate-bench: the hub is back after {:.1} s; {readings_in_outage} readings taken meanwhile, store {} bytes; draining at {} msg/s",
        t_clear.duration_since(t_fault).as_secs_f64(),
        store.data(),
        args.rate
    );

    // The drain.
    let fresh = interval + Duration::from_secs(1);
    let (stop_watching, stopped) = oneshot::channel();
    let caught_up = tokio::spawn(watch_caught_up(
        emu.events(),
        site.ids.clone(),
        fresh,
        stopped,
    ));
    emu.clear_fault(fault).await;
    let cleared = Instant::now();
    let reconnect = {
        let emu = Arc::clone(&emu);
        let ids = site.ids.clone();
        tokio::spawn(async move {
            child::wait_ready(&emu, &ids, connect_wait + Duration::from_secs(120), || {
                Ok(())
            })
            .await
            .map(|at| at.duration_since(cleared))
        })
    };
    let predicted = waiting / f64::from(args.rate.max(1));
    let predicted_caught_up = waiting / (f64::from(args.rate) - live_rate).max(1.0);
    let drain_wait = Duration::from_secs_f64(predicted * 3.0) + Duration::from_secs(300);
    let mut rss_max_drain = 0;
    let (drained, unsettled) = wait_readings(&emu, &site.ids, &polled, drain_wait, || {
        gate.check_alive()?;
        rss_max_drain = rss_max_drain.max(procfs::rss_kib(pid)?);
        Ok(())
    })
    .await?;
    let drain_s = drained.duration_since(cleared).as_secs_f64();
    let cpu2 = procfs::cpu_seconds(pid)?;
    let after = Snapshot::take();
    eprintln!(
        "leafgate-bench: every reading up to the hub's return in after {drain_s:.1} s; waiting for every device to be live again"
    );
    let give_up = cleared + Duration::from_secs_f64(predicted_caught_up * 3.0 + 300.0);
    while !caught_up.is_finished() && Instant::now() < give_up {
        gate.check_alive()?;
        rss_max_drain = rss_max_drain.max(procfs::rss_kib(pid)?);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Stops a watcher that is still waiting for some device; a finished one ignores it.
    let _ = stop_watching.send(());
    let (live_again, events_missed) = caught_up.await?;
    let not_caught_up = live_again.iter().filter(|d| d.is_none()).count();
    let caught_up_s = live_again
        .iter()
        .flatten()
        .max()
        .map_or(f64::NAN, |at| at.duration_since(cleared).as_secs_f64());
    let reconnect_s = match reconnect.await {
        Ok(Ok(d)) => d.as_secs_f64(),
        Ok(Err(e)) => {
            eprintln!("leafgate-bench: not every device reconnected: {e}");
            f64::NAN
        }
        Err(e) => bail!("reconnect watcher failed: {e}"),
    };
    let store_after_drain = site.store_size();

    let mut tally = Tally::default();
    for (id, &k) in site.ids.iter().zip(&polled) {
        received::check(&mut tally, id, &emu.telemetry(id), k);
    }
    let harness_memory = procfs::memory(std::process::id())?;
    let exit = gate.stop(Duration::from_secs(30))?;
    args.common.done_with(&dir);

    let outage_wall = t_clear.duration_since(t_fault).as_secs_f64();
    let rss_min = samples.iter().map(|s| s.rss_kib).min().unwrap_or(0);
    let rss_max = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    let passed = tally.lost == 0 && tally.duplicates_same_connection == 0 && exit == Some(0);
    Ok(Report {
        devices: n,
        endpoints: site.endpoints,
        interval_ms: args.interval_ms,
        registers: args.registers,
        rate: args.rate,
        live_rate,
        fault: args.fault,
        outage_s: outage_wall,
        leafgate_log_level: args.common.leafgate_log_level.clone(),
        rss_before_kib: rss_before,
        samples,
        rss_min_kib: rss_min,
        rss_max_kib: rss_max,
        cpu_pct_outage: (cpu1 - cpu0) / outage_wall * 100.0,
        readings_in_outage,
        store,
        store_bytes_per_reading: store.data() as f64 / readings_in_outage.max(1) as f64,
        reconnect_s,
        drain_s,
        predicted_drain_s: predicted,
        caught_up_s,
        predicted_caught_up_s: predicted_caught_up,
        not_caught_up,
        events_missed,
        rss_max_drain_kib: rss_max_drain,
        cpu_pct_drain: (cpu2 - cpu1) / drain_s.max(1e-9) * 100.0,
        store_after_drain,
        tally,
        unsettled_devices: unsettled,
        machine_outage: Machine::between(&before, &mid, Some(pid)),
        machine_drain: Machine::between(&mid, &after, Some(pid)),
        harness_memory,
        leafgate_exit_code: exit,
        passed,
    })
}

/// Per device, when its first message after the hub's return arrived less than `fresh` after
/// its poll (the device is live again), as the emulator's event stream reports messages; until
/// every device is or `stop`. Also how many events the watcher missed by falling behind.
async fn watch_caught_up(
    mut events: broadcast::Receiver<Event>,
    ids: Vec<String>,
    fresh: Duration,
    mut stop: oneshot::Receiver<()>,
) -> (Vec<Option<Instant>>, u64) {
    let index: HashMap<String, usize> =
        ids.into_iter().enumerate().map(|(i, id)| (id, i)).collect();
    let mut live: Vec<Option<Instant>> = vec![None; index.len()];
    let (mut left, mut missed) = (index.len(), 0);
    let fresh_ms = fresh.as_secs_f64() * 1000.0;
    while left > 0 {
        let event = tokio::select! {
            _ = &mut stop => break,
            e = events.recv() => e,
        };
        let (device, topic) = match event {
            Ok(Event::Telemetry { device, topic, .. }) => (device, topic),
            Ok(_) => continue,
            Err(broadcast::error::RecvError::Lagged(n)) => {
                missed += n;
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => break,
        };
        let Some(&i) = index.get(&device) else {
            continue;
        };
        if live[i].is_some() {
            continue;
        }
        let taken = d2c::parse(&topic).ok().and_then(|(_, props)| {
            props
                .iter()
                .find(|(k, _)| k == "$.ctime")
                .and_then(|(_, v)| received::utc_ms(v))
        });
        if let Some(taken) = taken
            && received::epoch_ms(SystemTime::now()) - (taken as f64) < fresh_ms
        {
            live[i] = Some(Instant::now());
            left -= 1;
        }
    }
    (live, missed)
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let t = &r.tally;
    let _ = writeln!(
        out,
        "## leafgate-bench telemetry outage: {} meters × one reading of {} registers every {} ms ({:.0} msg/s live), hub away {:.0} s ({}), max_messages_per_s {}\n",
        r.devices,
        r.registers,
        r.interval_ms,
        r.live_rate,
        r.outage_s,
        match r.fault {
            HubFault::Hangup => "connections dropped, reconnects hung up on",
            HubFault::RefuseTcp => "connections dropped, TCP refused",
        },
        r.rate
    );
    let _ = writeln!(out, "| figure | value | goal |\n|---|---|---|");
    let _ = writeln!(
        out,
        "| leafgate RSS before the outage | {} | |",
        mib(r.rss_before_kib)
    );
    let _ = writeln!(
        out,
        "| leafgate RSS during the outage, min / max over {} samples | {} / {} (max − min {:.1} MiB) | flat |",
        r.samples.len(),
        mib(r.rss_min_kib),
        mib(r.rss_max_kib),
        r.rss_max_kib.saturating_sub(r.rss_min_kib) as f64 / 1024.0
    );
    let _ = writeln!(
        out,
        "| leafgate CPU during the outage (% of one core) | {:.2} % | |",
        r.cpu_pct_outage
    );
    let _ = writeln!(
        out,
        "| readings taken during the outage | {} | |",
        r.readings_in_outage
    );
    let _ = writeln!(
        out,
        "| store at the end of the outage: db + -wal (-shm) | {:.1} MB = {} + {} bytes ({} bytes) | |",
        r.store.data() as f64 / 1e6,
        r.store.db,
        r.store.wal,
        r.store.shm
    );
    let _ = writeln!(
        out,
        "| store bytes per reading (db + -wal) | {:.0} | |",
        r.store_bytes_per_reading
    );
    let _ = writeln!(
        out,
        "| hub back → every device connected | {:.1} s | |",
        r.reconnect_s
    );
    let _ = writeln!(
        out,
        "| hub back → every reading up to then arrived (drain) | {:.1} s (waiting / rate = {:.1} s) | |",
        r.drain_s, r.predicted_drain_s
    );
    let _ = writeln!(
        out,
        "| hub back → every device live again (caught up) | {:.1} s (waiting / (rate − live) = {:.1} s){} | |",
        r.caught_up_s,
        r.predicted_caught_up_s,
        if r.not_caught_up > 0 {
            format!("; {} devices not caught up", r.not_caught_up)
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        out,
        "| leafgate RSS max during the drain / CPU | {} / {:.1} % | |",
        mib(r.rss_max_drain_kib),
        r.cpu_pct_drain
    );
    let _ = writeln!(
        out,
        "| store after the drain: db + -wal | {:.1} MB | |",
        r.store_after_drain.data() as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "| readings start → end of outage: polled / arrived / **lost** | {} / {} / **{}** | 0 lost: {} |",
        t.polled,
        t.received,
        t.lost,
        met(t.lost == 0)
    );
    let _ = writeln!(
        out,
        "| duplicates (same connection) / out of order | {} ({}) / {} | |",
        t.duplicates, t.duplicates_same_connection, t.out_of_order
    );
    let _ = writeln!(
        out,
        "| harness RSS (emulator with every message, sims) | {} | |",
        mib(r.harness_memory.rss_kib)
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
    let samples: Vec<String> = r
        .samples
        .iter()
        .map(|s| {
            format!(
                "{:.0} s: {:.1} MiB, store {:.1} MB",
                s.at_s,
                s.rss_kib as f64 / 1024.0,
                s.store_bytes as f64 / 1e6
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "\nRSS samples during the outage: {}",
        samples.join("; ")
    );
    let _ = writeln!(out, "\n- outage: {}", r.machine_outage.summary());
    let _ = writeln!(out, "- drain: {}", r.machine_drain.summary());
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

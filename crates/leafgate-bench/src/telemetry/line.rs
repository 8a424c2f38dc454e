//! `leafgate-bench telemetry rtu`: one RS-485 line (a pty pair) with `--units` RTU units, each
//! polled for one group of `--registers` holding registers every `--interval-ms`, far more than
//! the line can carry, so the poll lane is never empty: how close does leafgate get to the line's
//! physical maximum, and what does polling add to a method on the same line?
//!
//! A pty moves bytes at once, so the sim plays the wire: each unit answers after the time the
//! request takes on the wire, its turnaround (`--turnaround-ms`) and the time the reply takes
//! (`Fault::Delay`). The reply then reaches leafgate when its last byte would on a real line.
//! One transaction on the wire is therefore request + turnaround + reply, followed by the
//! 3.5-character silent interval leafgate must leave before the next request (its configured
//! frame gap, read back from the loaded config). Character times follow from the line settings
//! (start + data + parity + stop bits; 8N1, 10 bits, by default). The physical maximum is one
//! transaction per (request + turnaround + reply + gap).
//!
//! What the achieved rate loses against it has two parts, measured apart with `rtu`'s tap on the
//! pty master: the gap leafgate leaves beyond the frame gap (reply written → next request read,
//! minus the frame gap; this includes the sim's own read latency, see `rtu`), and the sim's timer
//! firing late (its measured turnaround minus the configured delay: tokio's timer has
//! millisecond slots), which a real unit would not add and which is reported as the efficiency
//! "without the sim's timer".
//!
//! Methods: one unit is called every `--method-period-ms` (± 50 %, random, so calls land at every
//! phase of the poll cycle) through the emulator's service API, first with leafgate running
//! without telemetry (an idle line), then with the polls saturating it. A method waits behind at
//! most the poll already on the wire and the gap after it, so the added p99 should stay within
//! one transaction (request + turnaround + reply + gap).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use leafgate::config::BusSpec;
use leafgate_emulator::{Emulator, EmulatorConfig, MethodCall};
use leafgate_sim::modbus::{Fault, Registers};
use serde::Serialize;
use serde_json::json;

use super::{Common, met};
use crate::child;
use crate::rtu::{SimLine, gaps};
use crate::scale::{hub_section, key_text, work_dir, write_private};
use crate::stats::{Summary, ms};
use leafgate_testkit::procfs::{Machine, Snapshot};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// RTU units on the line, each its own device (1..=247).
    #[arg(long, default_value_t = 30)]
    pub units: u8,
    #[arg(long, default_value_t = 9600)]
    pub baud: u32,
    /// Holding registers each poll and each method reads (one FC3 read).
    #[arg(long, default_value_t = 10)]
    pub registers: u16,
    /// Each unit's poll interval: short enough that the line cannot keep up.
    #[arg(long, default_value_t = 100)]
    pub interval_ms: u64,
    /// The units' turnaround: end of request → start of reply, milliseconds.
    #[arg(long, default_value_t = 5.0)]
    pub turnaround_ms: f64,
    /// Seconds per phase (idle-line methods; polls alone; polls and methods).
    #[arg(long, default_value_t = 30.0)]
    pub seconds: f64,
    /// Mean time between method calls (each ± 50 %), milliseconds.
    #[arg(long, default_value_t = 200)]
    pub method_period_ms: u64,
    #[command(flatten)]
    pub common: Common,
}

/// The line's arithmetic, in µs.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Wire {
    pub bits_per_char: u32,
    pub char_us: f64,
    pub request_bytes: u32,
    pub reply_bytes: u32,
    pub request_us: f64,
    pub reply_us: f64,
    pub turnaround_us: f64,
    pub frame_gap_us: f64,
    /// request + turnaround + reply + gap.
    pub transaction_us: f64,
    pub max_per_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Polls {
    pub seconds: f64,
    pub transactions: u64,
    pub per_s: f64,
    /// per_s / the physical maximum.
    pub efficiency_pct: f64,
    /// The same with the sim's late timer taken out of each transaction.
    pub efficiency_without_sim_timer_pct: f64,
    /// Reply written → next request read, µs.
    pub gap: Summary,
    /// gap − frame gap, µs.
    pub excess: Summary,
    /// Request read → reply written by the sim, µs (configured: request + turnaround + reply).
    pub sim_turnaround: Summary,
    /// Mean of sim_turnaround − its configured delay, µs.
    pub sim_timer_late_us: f64,
    pub machine: Machine,
}

#[derive(Debug, Serialize)]
pub struct Methods {
    pub calls: usize,
    pub errors: usize,
    pub latency: Summary,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub units: u8,
    pub baud: u32,
    pub registers: u16,
    pub interval_ms: u64,
    pub method_period_ms: u64,
    pub wire: Wire,
    pub polls: Polls,
    /// Transactions while methods ran too (polls and methods).
    pub polls_with_methods: Polls,
    pub methods_idle_line: Methods,
    pub methods_polled_line: Methods,
    /// polled − idle, percentile by percentile, µs.
    pub added: Summary,
    pub goal_efficiency_90: bool,
    pub goal_added_p99_within_one_transaction: bool,
    pub leafgate_exit_codes: Vec<Option<i32>>,
    pub passed: bool,
}

/// `[[profile]]` with the method, and with the group if `interval_ms` is given.
fn profile(registers: u16, interval_ms: Option<u64>) -> String {
    let fields: Vec<String> = (0..registers)
        .map(|i| format!("{{ name = \"r{i}\" }}"))
        .collect();
    let fields = fields.join(", ");
    let mut text = format!(
        "\n[[profile]]\nid = \"unit\"\n[[profile.method]]\nname = \"read\"\ntimeout_ms = 5000\n[[profile.method.step]]\nop = \"read\"\ntable = \"holding\"\naddress = 0\nfields = [{fields}]\n"
    );
    if let Some(interval_ms) = interval_ms {
        let _ = write!(
            text,
            "[[profile.telemetry]]\nname = \"poll\"\ninterval_ms = {interval_ms}\n[[profile.telemetry.step]]\nop = \"read\"\ntable = \"holding\"\naddress = 0\nfields = [{fields}]\n"
        );
    }
    text
}

/// The config for the line, with telemetry (and its store) or without.
fn config(
    emu: &Emulator,
    dir: &Path,
    args: &Args,
    line: &Path,
    keys: &[(String, String)],
    polled: bool,
) -> String {
    let mut text = hub_section(emu, &dir.join("ca.pem"), 100, 120);
    if polled {
        let _ = write!(
            text,
            "\n[telemetry]\nmax_messages_per_s = 1000\nstore = \"{}\"\n",
            dir.join("telemetry.db").display()
        );
    }
    text.push_str(&profile(args.registers, polled.then_some(args.interval_ms)));
    let _ = write!(
        text,
        "\n[[bus]]\nid = \"line\"\nkind = \"modbus_rtu\"\npath = \"{}\"\nbaud_rate = {}\ntimeout_ms = 1000\n",
        line.display(),
        args.baud
    );
    for (unit, (id, key)) in (1u8..).zip(keys) {
        let _ = write!(
            text,
            "\n[[device]]\nid = \"{id}\"\nshared_access_key = \"{key}\"\nbus = \"line\"\nunit = {unit}\nprofile = \"unit\"\n"
        );
    }
    text
}

/// The line's timings from the config as leafgate loads it.
fn wire(config_path: &Path, args: &Args) -> Result<Wire> {
    let loaded = leafgate::config::load(config_path)
        .map_err(|e| anyhow!("the generated config is invalid: {:?}", e.problems))?;
    let (line, frame_gap) = loaded
        .buses
        .iter()
        .find_map(|b| match &b.spec {
            BusSpec::ModbusRtu { line, frame_gap } => Some((line.clone(), *frame_gap)),
            _ => None,
        })
        .context("no RTU bus in the generated config")?;
    let bits = 1
        + u32::from(line.data_bits)
        + u32::from(line.stop_bits)
        + u32::from(line.parity != leafgate::bus::Parity::None);
    let char_us = f64::from(bits) * 1e6 / f64::from(line.baud_rate);
    let (request_bytes, reply_bytes) = (8, 5 + 2 * u32::from(args.registers));
    let request_us = f64::from(request_bytes) * char_us;
    let reply_us = f64::from(reply_bytes) * char_us;
    let turnaround_us = args.turnaround_ms * 1000.0;
    let frame_gap_us = frame_gap.as_secs_f64() * 1e6;
    let transaction_us = request_us + turnaround_us + reply_us + frame_gap_us;
    Ok(Wire {
        bits_per_char: bits,
        char_us,
        request_bytes,
        reply_bytes,
        request_us,
        reply_us,
        turnaround_us,
        frame_gap_us,
        transaction_us,
        max_per_s: 1e6 / transaction_us,
    })
}

pub async fn run(args: Args) -> Result<Report> {
    if !(1..=247).contains(&args.units) || !(1..=125).contains(&args.registers) {
        bail!("--units must be within 1..=247 and --registers within 1..=125");
    }
    child::raise_nofile(4096)?;
    let binary = args.common.binary();
    let dir = work_dir("telemetry-rtu")?;
    let emu = Arc::new(Emulator::start(EmulatorConfig::default()).await?);
    std::fs::write(dir.join("ca.pem"), emu.ca_pem())?;
    let registers = Registers::with_units(1..=args.units);
    for unit in 1..=args.units {
        let values: Vec<u16> = (0..args.registers)
            .map(|i| u16::from(unit) * 100 + i)
            .collect();
        registers.set_holding(unit, 0, &values);
    }
    let sim = SimLine::start(registers.clone())?;
    let mut keys = Vec::new();
    for unit in 1..=args.units {
        let id = format!("unit-{unit:03}");
        let key = leafgate_emulator::random_key();
        emu.add_device(&id, key.clone());
        keys.push((id, key_text(&key)));
    }
    let ids: Vec<String> = keys.iter().map(|(id, _)| id.clone()).collect();
    let caller = ids[0].clone();
    let idle_path = dir.join("idle.toml");
    write_private(
        &idle_path,
        &config(&emu, &dir, &args, &sim.path, &keys, false),
    )?;
    let polled_path = dir.join("polled.toml");
    write_private(
        &polled_path,
        &config(&emu, &dir, &args, &sim.path, &keys, true),
    )?;
    let wire = wire(&polled_path, &args)?;
    let delay_us = wire.request_us + wire.turnaround_us + wire.reply_us;
    let delay = Duration::from_secs_f64(delay_us / 1e6);
    for unit in 1..=args.units {
        registers.set_fault(unit, Fault::Delay(delay));
    }
    let phase = Duration::from_secs_f64(args.seconds);
    let period = Duration::from_millis(args.method_period_ms.max(1));
    let mut exits = Vec::new();

    // 1. Methods on an idle line: leafgate without telemetry.
    eprintln!("leafgate-bench: methods on the idle line for {phase:?}");
    let mut gate = child::spawn_leafgate(
        &binary,
        &idle_path,
        &args.common.leafgate_log_level,
        &dir.join("leafgate-idle.log"),
    )?;
    child::wait_ready(&emu, &ids, Duration::from_secs(60), || gate.check_alive()).await?;
    call_every(&emu, &caller, period, Duration::from_secs(1)).await;
    let idle = call_every(&emu, &caller, period, phase).await;
    gate.check_alive()?;
    exits.push(gate.stop(Duration::from_secs(10))?);

    // 2. The same line saturated with polls, then polls and methods.
    let mut gate = child::spawn_leafgate(
        &binary,
        &polled_path,
        &args.common.leafgate_log_level,
        &dir.join("leafgate-polled.log"),
    )?;
    let pid = gate.pid();
    child::wait_ready(&emu, &ids, Duration::from_secs(60), || gate.check_alive()).await?;
    // Every group has had its first tick (they are spread over one interval).
    tokio::time::sleep(Duration::from_millis(args.interval_ms) + Duration::from_secs(2)).await;
    eprintln!("leafgate-bench: polls alone for {phase:?}");
    let polls = measure(&sim, &registers, &wire, delay_us, pid, async {
        tokio::time::sleep(phase).await;
    })
    .await;
    eprintln!("leafgate-bench: polls and methods for {phase:?}");
    let mut busy = None;
    let polls_with_methods = measure(&sim, &registers, &wire, delay_us, pid, async {
        busy = Some(call_every(&emu, &caller, period, phase).await);
    })
    .await;
    let busy = busy.context("the method caller did not run")?;
    gate.check_alive()?;
    exits.push(gate.stop(Duration::from_secs(10))?);
    drop(sim);
    args.common.done_with(&dir);

    let added = busy.latency.minus(&idle.latency);
    let goal_efficiency_90 = polls.efficiency_pct >= 90.0;
    let goal_added = added.p99_us <= wire.transaction_us;
    let passed = idle.errors == 0
        && busy.errors == 0
        && polls.transactions > 0
        && exits.iter().all(|e| *e == Some(0));
    Ok(Report {
        units: args.units,
        baud: args.baud,
        registers: args.registers,
        interval_ms: args.interval_ms,
        method_period_ms: args.method_period_ms,
        wire,
        polls,
        polls_with_methods,
        methods_idle_line: idle,
        methods_polled_line: busy,
        added,
        goal_efficiency_90,
        goal_added_p99_within_one_transaction: goal_added,
        leafgate_exit_codes: exits,
        passed,
    })
}

/// Transactions on the line while `during` runs, with the tap's gaps and turnarounds.
async fn measure(
    sim: &SimLine,
    registers: &Registers,
    wire: &Wire,
    delay_us: f64,
    pid: u32,
    during: impl Future<Output = ()>,
) -> Polls {
    let _ = sim.recorder.take();
    let before = Snapshot::take();
    sim.recorder.on.store(true, Ordering::Relaxed);
    let count0 = registers.request_count();
    let start = Instant::now();
    during.await;
    let count1 = registers.request_count();
    let seconds = start.elapsed().as_secs_f64();
    sim.recorder.on.store(false, Ordering::Relaxed);
    let after = Snapshot::take();
    let (gap_samples, turnarounds) = gaps(&sim.recorder.take());
    let transactions = (count1 - count0) as u64;
    let per_s = transactions as f64 / seconds;
    let turnaround = Summary::of(&turnarounds);
    let late_us = turnaround.mean_us - delay_us;
    let cycle_us = 1e6 / per_s.max(1e-9);
    Polls {
        seconds,
        transactions,
        per_s,
        efficiency_pct: per_s / wire.max_per_s * 100.0,
        efficiency_without_sim_timer_pct: wire.transaction_us / (cycle_us - late_us.max(0.0))
            * 100.0,
        excess: Summary::of_micros(
            gap_samples
                .iter()
                .map(|g| g.as_secs_f64() * 1e6 - wire.frame_gap_us)
                .collect(),
        ),
        gap: Summary::of(&gap_samples),
        sim_turnaround: turnaround,
        sim_timer_late_us: late_us,
        machine: Machine::between(&before, &after, Some(pid)),
    }
}

/// Calls `read` on `device` every `period` ± 50 % for `duration`, each call in its own task;
/// waits for every answer.
async fn call_every(
    emu: &Arc<Emulator>,
    device: &str,
    period: Duration,
    duration: Duration,
) -> Methods {
    let until = Instant::now() + duration;
    let mut calls = tokio::task::JoinSet::new();
    while Instant::now() < until {
        let emu = Arc::clone(emu);
        let device = device.to_owned();
        calls.spawn(async move {
            let call = MethodCall::new("read", json!({})).response_timeout(30);
            let sent = Instant::now();
            match emu.invoke(&device, call).await {
                Ok(r) if r.status == 200 => Ok(sent.elapsed()),
                Ok(r) => Err(format!("status {}: {}", r.status, r.payload)),
                Err(e) => Err(e.to_string()),
            }
        });
        tokio::time::sleep(period.mul_f64(rand::random_range(0.5..1.5))).await;
    }
    let (mut latencies, mut errors) = (Vec::new(), 0);
    while let Some(joined) = calls.join_next().await {
        match joined {
            Ok(Ok(latency)) => latencies.push(latency),
            Ok(Err(e)) => {
                errors += 1;
                if errors <= 3 {
                    eprintln!("leafgate-bench: method call failed: {e}");
                }
            }
            Err(e) => {
                errors += 1;
                eprintln!("leafgate-bench: method task failed: {e}");
            }
        }
    }
    Methods {
        calls: latencies.len() + errors,
        errors,
        latency: Summary::of(&latencies),
    }
}

pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let w = &r.wire;
    let _ = writeln!(
        out,
        "## leafgate-bench telemetry rtu: {} units on one {}-baud line ({} bits per character), each polled for {} registers every {} ms; a method every ~{} ms\n",
        r.units, r.baud, w.bits_per_char, r.registers, r.interval_ms, r.method_period_ms
    );
    let _ = writeln!(
        out,
        "One transaction on the wire, ms: request {} B = {} + turnaround {} + reply {} B = {} + frame gap {} = **{}** → at most **{:.2}** transactions/s.\n",
        w.request_bytes,
        ms(w.request_us),
        ms(w.turnaround_us),
        w.reply_bytes,
        ms(w.reply_us),
        ms(w.frame_gap_us),
        ms(w.transaction_us),
        w.max_per_s
    );
    let _ = writeln!(
        out,
        "| phase | transactions/s | of the maximum | without the sim's late timer | gap p50 / p99 | excess gap p50 / p99 | sim turnaround p50 (late by, mean) |\n|---|---|---|---|---|---|---|"
    );
    for (name, p) in [
        ("polls alone", &r.polls),
        ("polls and methods", &r.polls_with_methods),
    ] {
        let _ = writeln!(
            out,
            "| {name} | {:.2} ({} in {:.1} s) | {:.1} % | {:.1} % | {} / {} | {} / {} | {} ({}) |",
            p.per_s,
            p.transactions,
            p.seconds,
            p.efficiency_pct,
            p.efficiency_without_sim_timer_pct,
            ms(p.gap.p50_us),
            ms(p.gap.p99_us),
            ms(p.excess.p50_us),
            ms(p.excess.p99_us),
            ms(p.sim_turnaround.p50_us),
            ms(p.sim_timer_late_us)
        );
    }
    let _ = writeln!(
        out,
        "\nMethod latency at the caller, ms (p50 / p90 / p99 / max):\n\n| line | calls / errors | p50 | p90 | p99 | max |\n|---|---|---|---|---|---|"
    );
    for (name, m) in [
        ("idle (no telemetry)", &r.methods_idle_line),
        ("saturated with polls", &r.methods_polled_line),
    ] {
        let l = &m.latency;
        let _ = writeln!(
            out,
            "| {name} | {} / {} | {} | {} | {} | {} |",
            m.calls,
            m.errors,
            ms(l.p50_us),
            ms(l.p90_us),
            ms(l.p99_us),
            ms(l.max_us)
        );
    }
    let a = &r.added;
    let _ = writeln!(
        out,
        "| **added by polling** | | {} | {} | {} | {} |",
        ms(a.p50_us),
        ms(a.p90_us),
        ms(a.p99_us),
        ms(a.max_us)
    );
    let _ = writeln!(
        out,
        "\nGoals: line efficiency ≥ 90 %: {} ({:.1} %); p99 added to a method ≤ one transaction ({} ms): {} ({} ms).",
        met(r.goal_efficiency_90),
        r.polls.efficiency_pct,
        ms(w.transaction_us),
        met(r.goal_added_p99_within_one_transaction),
        ms(a.p99_us)
    );
    let _ = writeln!(out, "\n- polls alone: {}", r.polls.machine.summary());
    let _ = writeln!(
        out,
        "- polls and methods: {}",
        r.polls_with_methods.machine.summary()
    );
    let _ = writeln!(
        out,
        "\nResult: {}",
        if r.passed {
            "PASS (no method errors, clean exits)"
        } else {
            "FAIL"
        }
    );
    out
}

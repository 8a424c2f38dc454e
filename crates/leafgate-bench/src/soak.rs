//! `leafgate-bench soak`: N devices for a long time under random hub drops, hardware outages and
//! a steady method load, then an account of every call. Not part of CI (issue 5); run it with
//! `scripts/soak.sh`.
//!
//! Every call ends in exactly one bucket. The one that must stay empty is **lost**: the hub
//! timed out (504) although the device's connection stayed up for the whole call, so leafgate
//! had the request and a working link and still did not answer. A hub timeout while the
//! connection dropped during the call is counted apart: the request or the reply was on a link
//! that died, which no gateway can help; leafgate's log must then say so for the replies it held
//! ("not published" after the deadline), and the report shows both counts side by side.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use leafgate_emulator::{Emulator, EmulatorConfig, Fault, MethodCall, Target};
use leafgate_sim::SerialLine;
use leafgate_sim::modbus::{self, Framing, Garbage, Registers, TcpServer};
use serde::Serialize;
use serde_json::json;
use tokio::sync::mpsc;

use crate::child;
use crate::scale::{PROFILE, hub_section, key_text, register_values, work_dir, write_private};
use leafgate_testkit::procfs::{self, Memory};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Leaf devices in all; `--rtu-units` of them on one Modbus RTU line (pty), the rest on
    /// Modbus TCP endpoints.
    #[arg(long, default_value_t = 200)]
    pub devices: usize,
    /// How long the load and the faults run, seconds.
    #[arg(long, default_value_t = 1800.0)]
    pub duration_s: f64,
    /// Method calls per second, to devices picked at random.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Mean pause between two faults, seconds (exponentially distributed).
    #[arg(long, default_value_t = 30.0)]
    pub fault_every_s: f64,
    /// Devices on the RTU line (at most 247).
    #[arg(long, default_value_t = 8)]
    pub rtu_units: usize,
    /// Modbus units behind each simulated Modbus TCP endpoint.
    #[arg(long, default_value_t = 48)]
    pub units_per_endpoint: usize,
    /// leafgate's `max_connects_per_s`.
    #[arg(long, default_value_t = 50)]
    pub connect_rate: u32,
    /// leafgate's log level.
    #[arg(long, default_value = "info")]
    pub leafgate_log_level: String,
    /// The leafgate binary (default: `leafgate` next to this binary).
    #[arg(long)]
    pub leafgate: Option<PathBuf>,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Keep the work directory (config, leafgate's log) instead of deleting it.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub devices: usize,
    pub duration_s: f64,
    pub rate: f64,
    /// Calls made.
    pub sent: usize,
    /// Where every call ended, by label (see [`classify`]).
    pub outcomes: BTreeMap<String, usize>,
    /// Hub timeouts while the device's connection stayed up: must be 0.
    pub lost: usize,
    /// Requests the emulator handed to leafgate's connections.
    pub delivered: u64,
    /// Responses leafgate published, and those the hub had no live request for (late or
    /// duplicate; must be 0).
    pub responses: u64,
    pub responses_unmatched: u64,
    /// leafgate log lines about replies it held but could not publish within the deadline.
    pub replies_dropped_logged: usize,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, usize>,
    /// Accepted CONNECTs beyond the first per device, and refused ones.
    pub reconnects: u64,
    pub connects_refused: u64,
    pub memory_start: Memory,
    pub memory_end: Memory,
    /// RSS every minute of the run, KiB.
    pub rss_kib_by_minute: Vec<u64>,
    pub leafgate_cpu_s: f64,
    /// Lines of leafgate's log at warn and error, and panics (must be 0).
    pub log_warnings: usize,
    pub log_errors: usize,
    pub panics: usize,
    /// Device keys found in leafgate's log (must be 0).
    pub secrets_in_log: usize,
    pub leafgate_exit_code: Option<i32>,
    pub passed: bool,
}

/// The method's timeout in leafgate (per call) and the hub's response timeout the caller asks
/// for: the hub waits longer than leafgate, so a hub 504 means no answer at all.
const METHOD_TIMEOUT_MS: u64 = 3000;
const HUB_TIMEOUT_S: u64 = 10;

struct Endpoint {
    addr: SocketAddr,
    registers: Registers,
    server: Option<TcpServer>,
}

pub async fn run(args: Args) -> Result<Report> {
    let n = args.devices;
    if n == 0
        || args.rtu_units > n.min(247)
        || !(1..=247).contains(&args.units_per_endpoint)
        || args.rate <= 0.0
    {
        bail!(
            "--devices must be > 0, --rtu-units ≤ min(devices, 247), --units-per-endpoint within 1..=247, --rate > 0"
        );
    }
    child::raise_nofile((n + 1024) as u64)?;
    let binary = match &args.leafgate {
        Some(path) => path.clone(),
        None => leafgate_testkit::binary("leafgate"),
    };
    let dir = work_dir("soak")?;
    let emu = Arc::new(Emulator::start(EmulatorConfig::default()).await?);
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, emu.ca_pem())?;
    let mut config = hub_section(&emu, &ca, args.connect_rate, 60);
    config.push_str(&PROFILE.replace(
        "timeout_ms = 5000",
        &format!("timeout_ms = {METHOD_TIMEOUT_MS}"),
    ));

    // Hardware: Modbus TCP endpoints and one RTU line.
    let tcp_devices = n - args.rtu_units;
    let upe = args.units_per_endpoint;
    let mut endpoints = Vec::new();
    for e in 0..tcp_devices.div_ceil(upe) {
        let registers = Registers::new();
        for unit in 1..=(tcp_devices - e * upe).min(upe) {
            let unit = u8::try_from(unit)?;
            registers.set_holding(unit, 0, &register_values(unit));
        }
        let server = TcpServer::start(registers.clone()).await?;
        write!(
            config,
            "\n[[bus]]\nid = \"tcp-{e}\"\nkind = \"modbus_tcp\"\naddress = \"{}\"\ntimeout_ms = 1000\n",
            server.addr()
        )?;
        endpoints.push(Endpoint {
            addr: server.addr(),
            registers,
            server: Some(server),
        });
    }
    let rtu_registers = Registers::new();
    for unit in 1..=args.rtu_units {
        let unit = u8::try_from(unit)?;
        rtu_registers.set_holding(unit, 0, &register_values(unit));
    }
    let mut line = SerialLine::modbus_rtu(rtu_registers.clone())?.linked(dir.join("rtu"))?;
    if args.rtu_units > 0 {
        write!(
            config,
            "\n[[bus]]\nid = \"rtu\"\nkind = \"modbus_rtu\"\npath = \"{}\"\nbaud_rate = 19200\nparity = \"even\"\ntimeout_ms = 300\n",
            dir.join("rtu").display()
        )?;
    }

    let mut ids = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("soak-{i:04}");
        let key = leafgate_emulator::random_key();
        emu.add_device(&id, key.clone());
        let (bus, unit) = if i < tcp_devices {
            (format!("tcp-{}", i / upe), i % upe + 1)
        } else {
            ("rtu".to_owned(), i - tcp_devices + 1)
        };
        write!(
            config,
            "\n[[device]]\nid = \"{id}\"\nshared_access_key = \"{}\"\nbus = \"{bus}\"\nunit = {unit}\nprofile = \"bench\"\n",
            key_text(&key)
        )?;
        keys.push(key_text(&key));
        ids.push(id);
    }
    let config_path = dir.join("leafgate.toml");
    write_private(&config_path, &config)?;

    // Start and wait for every device.
    let connect_wait =
        Duration::from_secs_f64(n as f64 / f64::from(args.connect_rate.max(1)) * 3.0)
            + Duration::from_secs(60);
    let log_path = dir.join("leafgate.log");
    let mut gate =
        child::spawn_leafgate(&binary, &config_path, &args.leafgate_log_level, &log_path)?;
    let pid = gate.pid();
    child::wait_ready(&emu, &ids, connect_wait, || gate.check_alive())
        .await
        .with_context(|| format!("leafgate log: {}", log_path.display()))?;
    let memory_start = procfs::memory(pid)?;
    let cpu_start = procfs::cpu_seconds(pid)?;
    eprintln!(
        "leafgate-bench soak: {n} devices connected, RSS {} KiB; {} s of load at {}/s with a fault every ~{} s",
        memory_start.rss_kib, args.duration_s, args.rate, args.fault_every_s
    );

    // Load, faults and the memory sampler run side by side until the end.
    let ids = Arc::new(ids);
    let end = Instant::now() + Duration::from_secs_f64(args.duration_s);
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let load = tokio::spawn(offer(
        Arc::clone(&emu),
        Arc::clone(&ids),
        args.rate,
        end,
        tx,
    ));
    let sampler = tokio::spawn(async move {
        let mut samples = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        while Instant::now() < end {
            tick.tick().await;
            match procfs::memory(pid) {
                Ok(m) => samples.push(m.rss_kib),
                Err(_) => break,
            }
        }
        samples
    });
    let mut faults = BTreeMap::new();
    let mut chaos = Chaos {
        emu: &emu,
        ids: &ids,
        endpoints: &mut endpoints,
        line: &mut line,
        rtu_registers: &rtu_registers,
        rtu_units: args.rtu_units,
        started: Instant::now(),
    };
    loop {
        let pause = exponential(args.fault_every_s);
        if Instant::now() + pause >= end {
            tokio::time::sleep_until(end.into()).await;
            break;
        }
        tokio::time::sleep(pause).await;
        let kind = chaos.strike(end).await?;
        *faults.entry(kind.to_owned()).or_insert(0) += 1;
        gate.check_alive()?;
    }
    chaos.heal().await?;
    let sent = load.await.context("load task failed")?;
    let mut outcomes = BTreeMap::new();
    let collect = async {
        while let Some(label) = rx.recv().await {
            *outcomes.entry(label).or_insert(0usize) += 1;
        }
    };
    let settled = tokio::time::timeout(Duration::from_secs(HUB_TIMEOUT_S + 30), collect)
        .await
        .is_ok();
    let answered: usize = outcomes.values().sum();
    if !settled || answered < sent {
        outcomes.insert(
            "no answer from the hub (harness)".to_owned(),
            sent - answered,
        );
    }
    let rss_kib_by_minute = sampler.await.unwrap_or_default();
    gate.check_alive()?;
    let memory_end = procfs::memory(pid)?;
    let leafgate_cpu_s = procfs::cpu_seconds(pid)? - cpu_start;
    let leafgate_exit_code = gate.stop(Duration::from_secs(10))?;

    let stats = emu.stats();
    let mine = || ids.iter().filter_map(|id| stats.get(id));
    let delivered = mine().map(|s| s.method_requests).sum();
    let responses = mine().map(|s| s.method_responses).sum();
    let responses_unmatched = mine().map(|s| s.method_responses_ignored).sum();
    let reconnects = mine().map(|s| s.connects_accepted.saturating_sub(1)).sum();
    let connects_refused = mine().map(|s| s.connects_refused).sum();
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let count = |needle: &str| log.lines().filter(|l| l.contains(needle)).count();
    let lost = outcomes.get(LOST).copied().unwrap_or(0)
        + outcomes
            .get("no answer from the hub (harness)")
            .copied()
            .unwrap_or(0);
    let panics = count("panicked");
    let secrets_in_log = keys.iter().filter(|k| log.contains(k.as_str())).count();
    let bad_payload = outcomes.get("200 with wrong payload").copied().unwrap_or(0);
    let report = Report {
        devices: n,
        duration_s: args.duration_s,
        rate: args.rate,
        sent,
        lost,
        delivered,
        responses,
        responses_unmatched,
        replies_dropped_logged: count("not published") + count("reply not sent"),
        faults,
        reconnects,
        connects_refused,
        memory_start,
        memory_end,
        rss_kib_by_minute,
        leafgate_cpu_s,
        log_warnings: count(" WARN "),
        log_errors: count(" ERROR "),
        panics,
        secrets_in_log,
        leafgate_exit_code,
        passed: lost == 0
            && responses_unmatched == 0
            && panics == 0
            && secrets_in_log == 0
            && bad_payload == 0
            && leafgate_exit_code == Some(0),
        outcomes,
    };
    emu.clear_faults().await;
    if args.keep {
        eprintln!(
            "leafgate-bench soak: work directory kept: {}",
            dir.display()
        );
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(report)
}

const LOST: &str = "LOST: hub 504, connection up the whole call";

/// Offers `rate` calls per second until `end`; each call's label goes to `tx`. Returns how many
/// calls were made.
async fn offer(
    emu: Arc<Emulator>,
    ids: Arc<Vec<String>>,
    rate: f64,
    end: Instant,
    tx: mpsc::UnboundedSender<String>,
) -> usize {
    let start = Instant::now();
    let mut issued = 0usize;
    let mut tick = tokio::time::interval(Duration::from_millis(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while Instant::now() < end {
        tick.tick().await;
        let due = (start.elapsed().as_secs_f64() * rate) as usize;
        while issued < due {
            let device = ids[rand::random_range(0..ids.len())].clone();
            let (emu, tx) = (Arc::clone(&emu), tx.clone());
            tokio::spawn(async move {
                let before = emu.device_stats(&device).disconnects;
                let call = crate::load::METHOD;
                let result = emu
                    .invoke(
                        &device,
                        MethodCall::new(call, json!({})).response_timeout(HUB_TIMEOUT_S),
                    )
                    .await;
                let dropped = emu.device_stats(&device).disconnects > before;
                let _ = tx.send(classify(&result, dropped));
            });
            issued += 1;
        }
    }
    issued
}

/// The bucket of one call's result.
fn classify(
    result: &Result<leafgate_emulator::MethodResult, leafgate_emulator::InvokeError>,
    dropped: bool,
) -> String {
    use leafgate_emulator::InvokeError;
    match result {
        Ok(r) if r.status == 200 && r.payload.get("r9").is_some() => "200".to_owned(),
        Ok(r) if r.status == 200 => "200 with wrong payload".to_owned(),
        Ok(r) => format!(
            "{} {}",
            r.status,
            r.payload
                .get("error")
                .and_then(|e| e.as_str())
                .unwrap_or("")
        )
        .trim_end()
        .to_owned(),
        Err(InvokeError::Timeout) if dropped => {
            "hub 504, connection dropped during the call".to_owned()
        }
        Err(InvokeError::Timeout) => LOST.to_owned(),
        Err(e) => format!("hub {} {}", e.http_status(), e.error_name()),
    }
}

fn exponential(mean_s: f64) -> Duration {
    let u: f64 = rand::random_range(f64::EPSILON..1.0);
    Duration::from_secs_f64(-mean_s.max(0.0) * u.ln())
}

fn random_secs(lo: f64, hi: f64) -> Duration {
    Duration::from_secs_f64(rand::random_range(lo..hi))
}

/// The faults, one at a time; each undoes itself before `strike` returns.
struct Chaos<'a> {
    emu: &'a Emulator,
    ids: &'a [String],
    endpoints: &'a mut Vec<Endpoint>,
    line: &'a mut SerialLine,
    rtu_registers: &'a Registers,
    rtu_units: usize,
    started: Instant,
}

impl Chaos<'_> {
    async fn strike(&mut self, end: Instant) -> Result<&'static str> {
        let lasting = |d: Duration| d.min(end.saturating_duration_since(Instant::now()));
        let at = self.started.elapsed().as_secs();
        let pick = rand::random_range(0..8u8);
        let kind = match pick {
            0 => {
                self.emu.drop_all_connections();
                "hub drops every connection"
            }
            1 => {
                for id in self.ids {
                    if rand::random_bool(0.1) {
                        self.emu.drop_connection(id);
                    }
                }
                "hub drops 10 % of connections"
            }
            2 => {
                let d = lasting(random_secs(3.0, 15.0));
                self.emu.inject_fault(Fault::RefuseTcp, Some(d)).await;
                self.emu.drop_all_connections();
                tokio::time::sleep(d).await;
                "hub down (TCP refused) 3-15 s"
            }
            3 => {
                let d = lasting(random_secs(3.0, 15.0));
                self.emu
                    .inject_fault(Fault::Throttle(Target::All), Some(d))
                    .await;
                self.emu.drop_all_connections();
                tokio::time::sleep(d).await;
                "hub throttles (CONNACK 3) 3-15 s"
            }
            4 => {
                let e = rand::random_range(0..self.endpoints.len().max(1));
                if let Some(endpoint) = self.endpoints.get_mut(e) {
                    if let Some(server) = endpoint.server.take() {
                        server.stop().await;
                    }
                    tokio::time::sleep(lasting(random_secs(5.0, 20.0))).await;
                    endpoint.server = Some(
                        TcpServer::bind(endpoint.addr, Framing::Mbap, endpoint.registers.clone())
                            .await?,
                    );
                }
                "Modbus TCP endpoint offline 5-20 s"
            }
            5 => {
                let (registers, unit) = self.random_unit();
                registers.set_fault(unit, modbus::Fault::Silent);
                tokio::time::sleep(lasting(random_secs(10.0, 40.0))).await;
                registers.clear_faults(unit);
                "unit silent 10-40 s"
            }
            6 => {
                let (registers, unit) = self.random_unit();
                registers.set_fault_times(unit, modbus::Fault::Garbage(Garbage::BadCrc), 5);
                "unit sends 5 damaged replies"
            }
            _ => {
                if self.rtu_units > 0 {
                    self.line.unplug().await;
                    tokio::time::sleep(lasting(random_secs(5.0, 15.0))).await;
                    self.line.replug().await?;
                }
                "RTU adapter unplugged 5-15 s"
            }
        };
        eprintln!("leafgate-bench soak: t={at:>5} s  {kind}");
        Ok(kind)
    }

    /// A random unit on a TCP endpoint or on the RTU line.
    fn random_unit(&self) -> (Registers, u8) {
        let units: Vec<(Registers, u8)> = self
            .endpoints
            .iter()
            .flat_map(|e| {
                e.registers
                    .units()
                    .into_iter()
                    .map(|u| (e.registers.clone(), u))
            })
            .chain(
                self.rtu_registers
                    .units()
                    .into_iter()
                    .map(|u| (self.rtu_registers.clone(), u)),
            )
            .collect();
        let i = rand::random_range(0..units.len().max(1));
        units
            .get(i)
            .cloned()
            .unwrap_or_else(|| (self.rtu_registers.clone(), 1))
    }

    /// Ends every fault (the last one may have been cut short by the end of the run).
    async fn heal(&mut self) -> Result<()> {
        self.emu.clear_faults().await;
        for endpoint in self.endpoints.iter_mut() {
            if endpoint.server.is_none() {
                endpoint.server = Some(
                    TcpServer::bind(endpoint.addr, Framing::Mbap, endpoint.registers.clone())
                        .await?,
                );
            }
        }
        if self.rtu_units > 0 && !self.line.is_plugged() {
            self.line.replug().await?;
        }
        Ok(())
    }
}

pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "soak: {} devices, {:.0} s, {:.1} calls/s, {}",
        r.devices,
        r.duration_s,
        r.rate,
        if r.passed { "PASSED" } else { "FAILED" }
    );
    let _ = writeln!(out, "\nfaults injected:");
    for (kind, count) in &r.faults {
        let _ = writeln!(out, "  {count:>5}  {kind}");
    }
    let _ = writeln!(out, "\nmethod calls: {} sent", r.sent);
    for (label, count) in &r.outcomes {
        let _ = writeln!(out, "  {count:>7}  {label}");
    }
    let _ = writeln!(out, "  lost: {}", r.lost);
    let _ = writeln!(
        out,
        "\nhub side: {} requests delivered to leafgate, {} responses ({} unmatched: late or duplicate); leafgate logged {} replies it could not publish in time",
        r.delivered, r.responses, r.responses_unmatched, r.replies_dropped_logged
    );
    let _ = writeln!(
        out,
        "connections: {} reconnects, {} CONNECTs refused",
        r.reconnects, r.connects_refused
    );
    let _ = writeln!(
        out,
        "leafgate RSS: start {} KiB, end {} KiB, peak {} KiB; by minute: {:?}",
        r.memory_start.rss_kib, r.memory_end.rss_kib, r.memory_end.peak_kib, r.rss_kib_by_minute
    );
    let _ = writeln!(
        out,
        "leafgate CPU: {:.1} s; log: {} warnings, {} errors, {} panics, {} device keys; exit code {:?}",
        r.leafgate_cpu_s,
        r.log_warnings,
        r.log_errors,
        r.panics,
        r.secrets_in_log,
        r.leafgate_exit_code
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use leafgate_emulator::{InvokeError, MethodResult};

    #[test]
    fn a_hub_timeout_is_lost_only_when_the_connection_stayed_up() {
        assert_eq!(classify(&Err(InvokeError::Timeout), false), LOST);
        assert_eq!(
            classify(&Err(InvokeError::Timeout), true),
            "hub 504, connection dropped during the call"
        );
        assert_eq!(
            classify(&Err(InvokeError::DeviceNotOnline), false),
            "hub 404 DeviceNotOnline"
        );
    }

    #[test]
    fn device_answers_are_bucketed_by_status_and_error_kind() {
        let ok = MethodResult {
            status: 200,
            payload: json!({"r0": 1, "r9": 9}),
        };
        assert_eq!(classify(&Ok(ok), false), "200");
        let wrong = MethodResult {
            status: 200,
            payload: json!({}),
        };
        assert_eq!(classify(&Ok(wrong), false), "200 with wrong payload");
        let busy = MethodResult {
            status: 503,
            payload: json!({"error": "bus_unavailable", "bus": "tcp-0"}),
        };
        assert_eq!(classify(&Ok(busy), false), "503 bus_unavailable");
    }
}

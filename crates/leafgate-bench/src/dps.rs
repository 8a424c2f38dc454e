//! `leafgate-bench dps`: the `scale` site with every device listed by its id, bus and unit
//! only, so that leafgate registers each one with the emulator's Device Provisioning Service
//! through an enrollment group (keys derived from the group key) at its configured pace
//! (`[provisioning] max_registrations_per_s`), then connects it to the hub DPS assigned. Then a
//! restart of leafgate, which connects every device from its cache without asking DPS again.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use leafgate_emulator::{DpsConfig, DpsRequestKind, Emulator, EmulatorConfig};
use leafgate_testkit::daemon::Daemon;
use leafgate_testkit::procfs::{self, Machine, Snapshot};
use serde::Serialize;
use tokio::time::Instant;

use crate::child;
use crate::scale::{
    PROFILE, SiteArgs, add_device_entry, add_endpoints, hub_settings, key_text, register_values,
    result_line, work_dir, write_private,
};
use crate::stats::peak_per_s;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub site: SiteArgs,
    /// leafgate's `[provisioning] max_registrations_per_s` (its default is 2).
    #[arg(long, default_value_t = 2)]
    pub registrations_per_s: u32,
    /// The emulated DPS's throttle on register and poll requests together (429 beyond it);
    /// unthrottled if not given.
    #[arg(long)]
    pub dps_limit: Option<u32>,
    /// The `retry-after` of DPS's 202s: how long an assignment takes.
    #[arg(long, default_value_t = 1)]
    pub retry_after_s: u32,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub devices: usize,
    pub registrations_per_s: u32,
    pub dps_limit: Option<u32>,
    pub retry_after_s: u32,
    pub first: Start,
    /// Register requests (each device's first, and any repeated after a 429 or a timeout).
    pub registers: usize,
    pub devices_registered: usize,
    /// Devices DPS answered an assignment for (a poll answered 200).
    pub devices_assigned: usize,
    /// First register → last register.
    pub register_span_s: f64,
    /// (registers − 1) / span.
    pub mean_registers_per_s: f64,
    /// The most register requests in any one-second window.
    pub peak_registers_per_s: usize,
    pub polls: usize,
    pub dps_connects: usize,
    /// Requests (CONNECT, register, poll) DPS answered 429.
    pub throttled: usize,
    /// Assignments in leafgate's cache after the first start.
    pub cached: usize,
    pub restart: Start,
    /// DPS requests of any kind from the restarted leafgate (0 is the goal).
    pub restart_dps_requests: usize,
    pub passed: bool,
}

#[derive(Debug, Serialize)]
pub struct Start {
    /// Process start → every device online and subscribed to methods.
    pub ready_s: f64,
    pub leafgate_cpu_s: f64,
    pub machine: Machine,
    pub leafgate_exit_code: Option<i32>,
}

pub async fn run(args: Args) -> Result<Report> {
    let site = &args.site;
    site.check()?;
    let (n, upe) = (site.devices, site.units_per_endpoint);
    let pace = args.registrations_per_s;
    if !(1..=100).contains(&pace) {
        bail!("--registrations-per-s must be within 1..=100 (leafgate's range)");
    }
    child::nofile_for_devices(n, upe)?;
    let dir = work_dir("dps")?;
    let emu = Arc::new(
        Emulator::start(EmulatorConfig {
            dps: Some(DpsConfig {
                addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                id_scope: "0ne00BE0C11".to_owned(),
                retry_after_s: args.retry_after_s,
                registrations_per_s: args.dps_limit,
            }),
            ..EmulatorConfig::default()
        })
        .await?,
    );
    let group_key = leafgate_emulator::random_key();
    emu.dps_add_group("bench", group_key.clone(), emu.hub_link());
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, emu.ca_pem())?;
    let cache = dir.join("provisioning");
    let mut config = format!(
        "[hub]\n{}\n[provisioning]\nid_scope = \"{}\"\nglobal_endpoint = \"localhost\"\nport = {}\ngroup_key = \"{}\"\nmax_registrations_per_s = {pace}\ncache = \"{}\"\n",
        hub_settings(&emu, &ca, site.connect_rate, site.keep_alive_s),
        emu.dps_id_scope().unwrap_or_default(),
        emu.dps_addr().map_or(0, |a| a.port()),
        key_text(&group_key),
        cache.display()
    );
    config.push_str(PROFILE);
    let servers = add_endpoints(&mut config, n, upe, register_values).await?;
    let ids = (0..n)
        .map(|i| add_device_entry(&mut config, i, upe, ""))
        .collect::<Result<Vec<_>>>()?;
    let config_path = dir.join("leafgate.toml");
    write_private(&config_path, &config)?;

    let paced = pace
        .min(site.connect_rate)
        .min(args.dps_limit.unwrap_or(u32::MAX));
    let wait =
        site.connect_wait(f64::from(paced)) + Duration::from_secs(u64::from(args.retry_after_s));
    eprintln!("leafgate-bench: {n} devices registering at {pace}/s");
    let (mut gate, mut first) = start(site, &config_path, &dir, &emu, &ids, wait).await?;
    let requests = emu.dps_requests();
    let of = |kind| requests.iter().filter(move |r| r.kind == kind);
    let register_times: Vec<Instant> = of(DpsRequestKind::Register).map(|r| r.at).collect();
    let span = match (register_times.first(), register_times.last()) {
        (Some(a), Some(b)) => b.duration_since(*a).as_secs_f64(),
        _ => 0.0,
    };
    let registers = register_times.len();
    let distinct = |kind, ok: fn(u16) -> bool| {
        of(kind)
            .filter(|r| ok(r.status))
            .map(|r| r.registration_id.as_str())
            .collect::<HashSet<_>>()
            .len()
    };
    let devices_registered = distinct(DpsRequestKind::Register, |s| s != 429);
    let devices_assigned = distinct(DpsRequestKind::Poll, |s| s == 200);
    let polls = of(DpsRequestKind::Poll).count();
    let dps_connects = of(DpsRequestKind::Connect).count();
    let throttled = requests.iter().filter(|r| r.status == 429).count();
    let cached = std::fs::read_dir(&cache).map_or(0, |d| d.count());
    first.leafgate_exit_code = gate.stop(Duration::from_secs(30))?;
    for id in &ids {
        emu.wait_for(id, Duration::from_secs(30), |s| !s.online)
            .await
            .map_err(|e| anyhow::anyhow!("still online after leafgate stopped: {e}"))?;
    }

    eprintln!("leafgate-bench: restarting leafgate with its cache");
    let restarted = Instant::now();
    let (mut gate, mut restart) = start(site, &config_path, &dir, &emu, &ids, wait).await?;
    restart.leafgate_exit_code = gate.stop(Duration::from_secs(30))?;
    let restart_dps_requests = emu
        .dps_requests()
        .iter()
        .filter(|r| r.at >= restarted)
        .count();
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
    let passed = devices_assigned == n
        && restart_dps_requests == 0
        && first.leafgate_exit_code == Some(0)
        && restart.leafgate_exit_code == Some(0);
    Ok(Report {
        devices: n,
        registrations_per_s: pace,
        dps_limit: args.dps_limit,
        retry_after_s: args.retry_after_s,
        first,
        registers,
        devices_registered,
        devices_assigned,
        register_span_s: span,
        mean_registers_per_s: registers.saturating_sub(1) as f64 / span.max(1e-9),
        peak_registers_per_s: peak_per_s(&register_times),
        polls,
        dps_connects,
        throttled,
        cached,
        restart,
        restart_dps_requests,
        passed,
    })
}

/// Starts leafgate and waits until every device is method-ready (a device still registering
/// or refused fails the run after `wait`).
async fn start(
    site: &SiteArgs,
    config: &Path,
    dir: &Path,
    emu: &Arc<Emulator>,
    ids: &[String],
    wait: Duration,
) -> Result<(Daemon, Start)> {
    let before = Snapshot::take();
    let log = dir.join("leafgate.log");
    let mut gate = child::spawn_leafgate(&site.binary(), config, &site.leafgate_log_level, &log)?;
    let pid = gate.pid();
    let last = child::wait_ready(emu, ids, wait, || gate.check_alive()).await?;
    let start = Start {
        ready_s: last.duration_since(gate.started()).as_secs_f64(),
        leafgate_cpu_s: procfs::cpu_seconds(pid)?,
        machine: Machine::between(&before, &Snapshot::take(), Some(pid)),
        leafgate_exit_code: None,
    };
    eprintln!(
        "leafgate-bench: every device method-ready {:.1} s after the start",
        start.ready_s
    );
    Ok((gate, start))
}

pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## leafgate-bench dps: N = {} devices through an enrollment group, max_registrations_per_s = {}, DPS {} (retry-after {} s)\n",
        r.devices,
        r.registrations_per_s,
        r.dps_limit
            .map_or("unthrottled".to_owned(), |l| format!("throttled at {l}/s")),
        r.retry_after_s
    );
    let _ = writeln!(out, "| figure | value |\n|---|---|");
    let rows = [
        (
            "first start → every device method-ready",
            format!("{:.1} s", r.first.ready_s),
        ),
        (
            "leafgate CPU until then",
            format!("{:.2} s", r.first.leafgate_cpu_s),
        ),
        (
            "register requests (devices registered / assigned)",
            format!(
                "{} ({} / {})",
                r.registers, r.devices_registered, r.devices_assigned
            ),
        ),
        (
            "first → last register",
            format!(
                "{:.1} s: {:.2}/s on average",
                r.register_span_s, r.mean_registers_per_s
            ),
        ),
        (
            "**most registers in any one second**",
            format!(
                "{} (configured {}/s)",
                r.peak_registers_per_s, r.registrations_per_s
            ),
        ),
        (
            "DPS CONNECTs / polls",
            format!("{} / {}", r.dps_connects, r.polls),
        ),
        ("requests answered 429", r.throttled.to_string()),
        ("assignments cached", r.cached.to_string()),
        (
            "restart → every device method-ready",
            format!("{:.2} s", r.restart.ready_s),
        ),
        (
            "leafgate CPU until then (restart)",
            format!("{:.2} s", r.restart.leafgate_cpu_s),
        ),
        (
            "**DPS requests after the restart**",
            r.restart_dps_requests.to_string(),
        ),
        (
            "leafgate exit codes after SIGTERM",
            [r.first.leafgate_exit_code, r.restart.leafgate_exit_code]
                .map(|c| c.map_or("killed".to_owned(), |c| c.to_string()))
                .join(" / "),
        ),
    ];
    for (name, value) in rows {
        let _ = writeln!(out, "| {name} | {value} |");
    }
    let _ = writeln!(
        out,
        "\nMachine:\n\n- first start: {}\n- restart: {}",
        r.first.machine.summary(),
        r.restart.machine.summary()
    );
    result_line(
        &mut out,
        r.passed,
        "every device assigned and method-ready, no DPS request after the restart, clean exits",
    );
    out
}

//! `leafgate-bench twin`: N devices keeping their device twins: idle memory and CPU once every
//! twin is read and reported, then a hub-wide drop: how many twin reads each device makes on
//! reconnecting (one is the goal) and the peak read rate against the configured pace and the
//! hub's throttle. `--without-twin` runs the same site without `[twin]`, for the before figure.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use leafgate_emulator::{Emulator, EmulatorConfig, TwinOp, TwinRequest};
use leafgate_sim::modbus::{Registers, TcpServer};
use leafgate_testkit::procfs::{self, Memory};
use serde::Serialize;
use tokio::time::Instant;

use crate::child;
use crate::scale::{
    PROFILE, SiteArgs, add_devices, hub_section, register_values, work_dir, write_private,
};

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub site: SiteArgs,
    /// `[twin] max_gets_per_s`.
    #[arg(long, default_value_t = 50)]
    pub gets_per_s: u32,
    /// `[twin] max_patches_per_s`.
    #[arg(long, default_value_t = 25)]
    pub patches_per_s: u32,
    /// The emulated hub's twin-read throttle (429 beyond it), as on an S1 hub.
    #[arg(long, default_value_t = 100)]
    pub hub_reads_per_s: u32,
    /// Idle phase length, seconds.
    #[arg(long, default_value_t = 60.0)]
    pub idle_s: f64,
    /// The same site without `[twin]` (the figure to compare with).
    #[arg(long)]
    pub without_twin: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub devices: usize,
    pub twin: bool,
    pub gets_per_s: u32,
    pub hub_reads_per_s: u32,
    /// Process start → every device connected (and, with twins, its twin read and reported).
    pub ready_s: f64,
    pub idle_memory: Memory,
    pub rss_per_device_kib: f64,
    pub idle_cpu_pct: f64,
    pub reconnect: Option<Reconnect>,
    pub passed: bool,
}

#[derive(Debug, Serialize)]
pub struct Reconnect {
    /// Drop → every device's twin read again (answered 200).
    pub all_read_s: f64,
    /// GETs per device after the drop, the most any device made.
    pub max_gets_per_device: usize,
    pub devices_with_more_than_one_get: usize,
    /// Most GETs the hub received in any one-second window.
    pub peak_gets_per_s: usize,
    /// GETs answered 429.
    pub throttled: usize,
}

/// A predicate for `wait_twin_requests` that counts the distinct devices with a request that
/// `counts`, looking at each new record once (the predicate runs on every request, and a
/// rescan of tens of thousands of records each time would be quadratic). When the record log
/// drops its older half, the count restarts from what is kept, in the set it already has.
fn devices_with(
    n: usize,
    counts: impl Fn(&TwinRequest) -> bool,
) -> impl FnMut(&[TwinRequest]) -> bool {
    let mut seen = 0;
    let mut devices: HashSet<String> = HashSet::new();
    move |requests: &[TwinRequest]| {
        if requests.len() < seen {
            seen = 0;
        }
        for r in &requests[seen..] {
            if counts(r) {
                devices.insert(r.device.clone());
            }
        }
        seen = requests.len();
        devices.len() >= n
    }
}

pub async fn run(args: Args) -> Result<Report> {
    let site = &args.site;
    let n = site.devices;
    let upe = site.units_per_endpoint.clamp(1, 247);
    child::nofile_for_devices(n, upe)?;
    let binary = site.binary();
    let dir = work_dir("twin")?;
    let emu = Arc::new(
        Emulator::start(EmulatorConfig {
            twin_reads_per_s: Some(args.hub_reads_per_s),
            ..EmulatorConfig::default()
        })
        .await?,
    );
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, emu.ca_pem())?;
    let mut config = hub_section(&emu, &ca, site.connect_rate, site.keep_alive_s);
    let twin = !args.without_twin;
    if twin {
        writeln!(
            config,
            "[twin]\nmax_gets_per_s = {}\nmax_patches_per_s = {}",
            args.gets_per_s, args.patches_per_s
        )?;
    }
    config.push_str(PROFILE);
    let mut servers = Vec::new();
    for e in 0..n.div_ceil(upe) {
        let registers = Registers::new();
        for unit in 1..=(n - e * upe).min(upe) {
            let unit = u8::try_from(unit)?;
            registers.set_holding(unit, 0, &register_values(unit));
        }
        let server = TcpServer::start(registers).await?;
        writeln!(
            config,
            "\n[[bus]]\nid = \"tcp-{e}\"\nkind = \"modbus_tcp\"\naddress = \"{}\"",
            server.addr()
        )?;
        servers.push(server);
    }
    let ids = add_devices(&emu, &mut config, n, upe)?;
    let config_path = dir.join("leafgate.toml");
    write_private(&config_path, &config)?;

    let log_path = dir.join("leafgate.log");
    let mut gate =
        child::spawn_leafgate(&binary, &config_path, &site.leafgate_log_level, &log_path)?;
    let pid = gate.pid();
    let wait = site.connect_wait(f64::from(
        site.connect_rate
            .min(args.gets_per_s)
            .min(args.patches_per_s),
    ));
    child::wait_ready(&emu, &ids, wait, || gate.check_alive()).await?;
    if twin {
        let reported = devices_with(n, |r| {
            r.op == TwinOp::PatchReported && r.status == Some(204)
        });
        emu.wait_twin_requests(reported, wait)
            .await
            .map_err(|e| anyhow::anyhow!("not every twin was reported: {e}"))?;
    }
    let ready_s = gate.started().elapsed().as_secs_f64();
    eprintln!(
        "leafgate-bench: {n} devices ready in {ready_s:.1} s; idle for {} s",
        args.idle_s
    );

    let cpu0 = procfs::cpu_seconds(pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.idle_s)).await;
    let idle_cpu_pct = (procfs::cpu_seconds(pid)? - cpu0) / t0.elapsed().as_secs_f64() * 100.0;
    gate.check_alive()?;
    let idle_memory = procfs::memory(pid)?;

    let reconnect = if twin {
        let dropped = Instant::now();
        emu.drop_all_connections();
        let requests = emu
            .wait_twin_requests(
                devices_with(n, move |r| {
                    r.at >= dropped && r.op == TwinOp::Get && r.status == Some(200)
                }),
                wait,
            )
            .await
            .map_err(|e| anyhow::anyhow!("not every twin was read again: {e}"))?;
        let all_read_s = dropped.elapsed().as_secs_f64();
        let gets: Vec<&TwinRequest> = requests
            .iter()
            .filter(|r| r.at >= dropped && r.op == TwinOp::Get)
            .collect();
        let mut per_device: BTreeMap<&str, usize> = BTreeMap::new();
        for r in &gets {
            *per_device.entry(r.device.as_str()).or_default() += 1;
        }
        let times: Vec<_> = gets.iter().map(|r| r.at).collect();
        let peak = crate::stats::peak_per_s(&times);
        Some(Reconnect {
            all_read_s,
            max_gets_per_device: per_device.values().copied().max().unwrap_or(0),
            devices_with_more_than_one_get: per_device.values().filter(|c| **c > 1).count(),
            peak_gets_per_s: peak,
            throttled: gets.iter().filter(|r| r.status == Some(429)).count(),
        })
    } else {
        None
    };
    let exit = gate.stop(Duration::from_secs(30))?;
    drop(servers);
    let passed = exit == Some(0)
        && reconnect
            .as_ref()
            .is_none_or(|r| r.throttled == 0 && r.max_gets_per_device == 1);
    let _ = std::fs::remove_dir_all(&dir);
    if n == 0 {
        bail!("--devices must be > 0");
    }
    Ok(Report {
        devices: n,
        twin,
        gets_per_s: args.gets_per_s,
        hub_reads_per_s: args.hub_reads_per_s,
        ready_s,
        rss_per_device_kib: idle_memory.rss_kib as f64 / n as f64,
        idle_memory,
        idle_cpu_pct,
        reconnect,
        passed,
    })
}

pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## leafgate-bench twin: N = {} devices, twins {}\n\n| figure | value |\n|---|---|",
        r.devices,
        if r.twin { "on" } else { "off" }
    );
    let _ = writeln!(
        out,
        "| ready (connected{}) | {:.1} s |",
        if r.twin {
            ", twin read and reported"
        } else {
            ""
        },
        r.ready_s
    );
    let _ = writeln!(out, "| idle RSS | {} KiB |", r.idle_memory.rss_kib);
    let _ = writeln!(
        out,
        "| idle RSS per device | {:.2} KiB |",
        r.rss_per_device_kib
    );
    let _ = writeln!(out, "| idle CPU | {:.2} % |", r.idle_cpu_pct);
    if let Some(c) = &r.reconnect {
        let _ = writeln!(
            out,
            "| hub-wide drop → every twin read again | {:.1} s |",
            c.all_read_s
        );
        let _ = writeln!(
            out,
            "| GETs per device after the drop (max) | {} |",
            c.max_gets_per_device
        );
        let _ = writeln!(
            out,
            "| devices with more than one GET | {} |",
            c.devices_with_more_than_one_get
        );
        let _ = writeln!(
            out,
            "| peak GETs in any second (configured {}/s, hub throttle {}/s) | {} |",
            r.gets_per_s, r.hub_reads_per_s, c.peak_gets_per_s
        );
        let _ = writeln!(out, "| GETs answered 429 | {} |", c.throttled);
    }
    let _ = writeln!(
        out,
        "\nResult: {}",
        if r.passed {
            "PASS"
        } else {
            "FAIL (a device read its twin more than once, a read was throttled, or leafgate did not exit cleanly)"
        }
    );
    out
}

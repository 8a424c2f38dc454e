//! `leafgate-bench transport`: the `scale` site (N devices on simulated Modbus TCP endpoints,
//! the emulated hub, the real `leafgate run`) connected over MQTT/TLS and over MQTT over
//! WebSockets (`[hub] transport = "websocket"`), one after the other in the same run, each with
//! its own hub and leafgate process: time to connect all, leafgate's CPU while connecting and
//! while idle, idle RSS per device; and WebSocket / MQTT for each.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use leafgate_emulator::{DeviceTransport, Emulator, EmulatorConfig};
use leafgate_testkit::procfs::{self, Machine, Snapshot};
use serde::Serialize;

use crate::child;
use crate::scale::{self, Idle, Site, SiteArgs, hub_section, result_line, work_dir, write_site};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// MQTT over TLS (the hub's 8883).
    Mqtt,
    /// MQTT over WebSockets over TLS (the hub's 443, `/$iothub/websocket`).
    Websocket,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Mqtt => "mqtt",
            Via::Websocket => "websocket",
        }
    }

    fn emulated(self) -> DeviceTransport {
        match self {
            Via::Mqtt => DeviceTransport::Mqtt,
            Via::Websocket => DeviceTransport::WebSocket,
        }
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub site: SiteArgs,
    /// The transports to measure, one after the other, each with a fresh hub and leafgate.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "mqtt,websocket"
    )]
    pub transport: Vec<Via>,
    /// Idle phase length (keep-alives only), seconds.
    #[arg(long, default_value_t = 60.0)]
    pub idle_s: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub devices: usize,
    pub units_per_endpoint: usize,
    pub connect_rate: u32,
    pub keep_alive_s: u64,
    pub runs: Vec<Measured>,
    /// WebSocket / MQTT, when both were measured.
    pub ratios: Option<Ratios>,
    pub passed: bool,
}

#[derive(Debug, Serialize)]
pub struct Measured {
    pub transport: Via,
    /// Process start → the last device online and subscribed to methods.
    pub connect_s: f64,
    /// leafgate's CPU from its start until then.
    pub connect_cpu_s: f64,
    pub connect_machine: Machine,
    pub idle: Idle,
    /// leafgate's CPU over the idle phase, seconds.
    pub idle_cpu_s: f64,
    /// Devices whose last accepted CONNECT came over another transport (should be 0).
    pub wrong_transport: usize,
    pub leafgate_exit_code: Option<i32>,
}

#[derive(Debug, Serialize)]
pub struct Ratios {
    pub rss_per_device: f64,
    pub connect_s: f64,
    pub connect_cpu_s: f64,
    pub idle_cpu_s: f64,
}

pub async fn run(args: Args) -> Result<Report> {
    let site = &args.site;
    site.check()?;
    if args.transport.is_empty() {
        bail!("--transport names none");
    }
    let n = site.devices;
    child::nofile_for_devices(n, site.units_per_endpoint)?;
    let binary = site.binary();
    let mut runs = Vec::new();
    for &via in &args.transport {
        eprintln!("leafgate-bench: {n} devices over {}", via.name());
        runs.push(measure(&args, via, &binary).await?);
    }
    let of = |via| runs.iter().find(|r| r.transport == via);
    let ratios = of(Via::Mqtt).zip(of(Via::Websocket)).map(|(m, w)| Ratios {
        rss_per_device: w.idle.rss_per_device_kib / m.idle.rss_per_device_kib,
        connect_s: w.connect_s / m.connect_s,
        connect_cpu_s: w.connect_cpu_s / m.connect_cpu_s,
        idle_cpu_s: w.idle_cpu_s / m.idle_cpu_s,
    });
    let passed = runs.iter().all(|r| {
        r.wrong_transport == 0 && r.idle.reconnects == 0 && r.leafgate_exit_code == Some(0)
    });
    Ok(Report {
        devices: n,
        units_per_endpoint: site.units_per_endpoint,
        connect_rate: site.connect_rate,
        keep_alive_s: site.keep_alive_s,
        runs,
        ratios,
        passed,
    })
}

/// One transport: its own hub (with a WebSocket listener for `websocket`) and leafgate.
async fn measure(args: &Args, via: Via, binary: &Path) -> Result<Measured> {
    let site = &args.site;
    let (n, upe) = (site.devices, site.units_per_endpoint);
    let dir = work_dir(&format!("transport-{}", via.name()))?;
    let emu = Arc::new(
        Emulator::start(EmulatorConfig {
            ws_addr: (via == Via::Websocket).then(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            ..EmulatorConfig::default()
        })
        .await?,
    );
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, emu.ca_pem())?;
    let mut config = hub_section(&emu, &ca, site.connect_rate, site.keep_alive_s);
    if let Some(ws) = emu.ws_addr() {
        writeln!(
            config,
            "transport = \"websocket\"\nwebsocket_port = {}",
            ws.port()
        )?;
    }
    let Site {
        servers,
        ids,
        config: config_path,
    } = write_site(&emu, &dir, config, n, upe).await?;

    let wait = site.connect_wait(f64::from(site.connect_rate));
    let before = Snapshot::take();
    let log = dir.join("leafgate.log");
    let mut gate = child::spawn_leafgate(binary, &config_path, &site.leafgate_log_level, &log)?;
    let pid = gate.pid();
    let last = child::wait_ready(&emu, &ids, wait, || gate.check_alive()).await?;
    let connect_cpu_s = procfs::cpu_seconds(pid)?;
    let connect_machine = Machine::between(&before, &Snapshot::take(), Some(pid));
    let connect_s = last.duration_since(gate.started()).as_secs_f64();
    eprintln!(
        "leafgate-bench: {n} devices connected over {} in {connect_s:.2} s; idle for {} s",
        via.name(),
        args.idle_s
    );
    let wrong_transport = ids
        .iter()
        .filter(|id| {
            emu.device_stats(id)
                .last_connect
                .is_none_or(|c| c.transport != via.emulated())
        })
        .count();

    let idle = scale::idle(pid, n, args.idle_s).await?;
    gate.check_alive()?;
    let idle = Idle {
        reconnects: scale::reconnects(&emu, &ids),
        ..idle
    };
    let idle_cpu_s = idle.leafgate_cpu_pct / 100.0 * idle.duration_s;
    let exit = gate.stop(Duration::from_secs(30))?;
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Measured {
        transport: via,
        connect_s,
        connect_cpu_s,
        connect_machine,
        idle,
        idle_cpu_s,
        wrong_transport,
        leafgate_exit_code: exit,
    })
}

/// A figure: its name, its cell for one transport, and its WebSocket / MQTT ratio.
type Row = (&'static str, fn(&Measured) -> String, Option<f64>);

pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "## leafgate-bench transport: N = {} devices ({} units per endpoint), max_connects_per_s {}, keep-alive {} s\n",
        r.devices, r.units_per_endpoint, r.connect_rate, r.keep_alive_s
    );
    let _ = write!(out, "| figure |");
    for m in &r.runs {
        let _ = write!(out, " {} |", m.transport.name());
    }
    if r.ratios.is_some() {
        let _ = write!(out, " websocket / mqtt |");
    }
    let _ = writeln!(
        out,
        "\n|---|{}",
        "---|".repeat(r.runs.len() + usize::from(r.ratios.is_some()))
    );
    let rows: [Row; 7] = [
        (
            "connect: process start → all method-ready",
            |m| format!("{:.2} s", m.connect_s),
            r.ratios.as_ref().map(|x| x.connect_s),
        ),
        (
            "connect: leafgate CPU",
            |m| format!("{:.2} s", m.connect_cpu_s),
            r.ratios.as_ref().map(|x| x.connect_cpu_s),
        ),
        (
            "idle: leafgate CPU (duration)",
            |m| {
                format!(
                    "{:.3} s ({:.2} % of a core over {:.0} s)",
                    m.idle_cpu_s, m.idle.leafgate_cpu_pct, m.idle.duration_s
                )
            },
            r.ratios.as_ref().map(|x| x.idle_cpu_s),
        ),
        (
            "idle: leafgate RSS total (peak)",
            |m| {
                format!(
                    "{:.1} MiB ({:.1} MiB)",
                    m.idle.leafgate_memory.rss_kib as f64 / 1024.0,
                    m.idle.leafgate_memory.peak_kib as f64 / 1024.0
                )
            },
            None,
        ),
        (
            "**idle: RSS per device**",
            |m| format!("{:.2} KiB", m.idle.rss_per_device_kib),
            r.ratios.as_ref().map(|x| x.rss_per_device),
        ),
        (
            "reconnects / devices on another transport",
            |m| format!("{} / {}", m.idle.reconnects, m.wrong_transport),
            None,
        ),
        (
            "leafgate exit code after SIGTERM",
            |m| {
                m.leafgate_exit_code
                    .map_or("killed".to_owned(), |c| c.to_string())
            },
            None,
        ),
    ];
    for (name, cell, ratio) in rows {
        let _ = write!(out, "| {name} |");
        for m in &r.runs {
            let _ = write!(out, " {} |", cell(m));
        }
        if r.ratios.is_some() {
            let _ = write!(
                out,
                " {} |",
                ratio.map_or(String::new(), |x| format!("{x:.3}"))
            );
        }
        out.push('\n');
    }
    let _ = writeln!(out, "\nMachine during each phase:\n");
    for m in &r.runs {
        let _ = writeln!(
            out,
            "- {} connect: {}\n- {} idle: {}",
            m.transport.name(),
            m.connect_machine.summary(),
            m.transport.name(),
            m.idle.machine.summary()
        );
    }
    result_line(
        &mut out,
        r.passed,
        "every device on its transport, no reconnects, clean exits",
    );
    out
}

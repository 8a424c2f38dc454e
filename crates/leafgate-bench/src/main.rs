//! `leafgate-bench`: the scale benchmark (issue 6) and the RTU line-efficiency measurement.
//! Not shipped in the .deb; micro-benchmarks live in `benches/micro.rs` (`cargo bench`).
//!
//! ```text
//! cargo build --release --locked
//! target/release/leafgate-bench scale --devices 1000 --rates 1000,5000 --json scale.json
//! target/release/leafgate-bench rtu --json rtu.json
//! target/release/leafgate-bench baseline --devices 50 --rates 100,500 --json baseline.json
//! target/release/leafgate-bench telemetry steady --devices 10000 --json steady.json
//! target/release/leafgate-bench telemetry outage --devices 1000 --outage-s 600 --json outage.json
//! target/release/leafgate-bench telemetry rtu --json telemetry-rtu.json
//! target/release/leafgate-bench twin --devices 10000 --json twin.json
//! target/release/leafgate-bench transport --devices 10000 --transport mqtt,websocket --json transport.json
//! target/release/leafgate-bench dps --devices 1000 --registrations-per-s 20 --json dps.json
//! target/release/leafgate-bench metrics --devices 10000 --scrapes 20 --compare --json metrics.json
//! scripts/soak.sh            # leafgate-bench soak: 200 devices, 30 minutes of faults
//! ```
//!
//! Everything runs on this machine: the emulated IoT Hub (TLS), simulated Modbus hardware, the
//! floor responders and the caller in this process; leafgate as a child process (`leafgate run`)
//! so its CPU and memory are read from its own `/proc` entries. Exit codes: 0 every call
//! answered and leafgate exited cleanly, 1 errors (the report says which), 2 the run could not
//! be carried out.

mod baseline;
mod child;
mod dps;
mod floor;
mod load;
mod metrics;
mod rtu;
mod scale;
mod soak;
mod stats;
mod telemetry;
mod transport;
mod twin;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use leafgate_testkit::procfs;

#[derive(Parser)]
#[command(
    name = "leafgate-bench",
    about = "Scale and line-efficiency benchmarks of leafgate"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log level of the harness (emulator, simulators), on stderr.
    #[arg(long, global = true, default_value = "warn")]
    harness_log_level: log::LevelFilter,
}

#[derive(Subcommand)]
enum Command {
    /// N devices: connect, idle and load phases against leafgate and the floor responders.
    Scale(scale::Args),
    /// leafgate next to one Python process per device (azure-iot-device + pymodbus), same N
    /// and load, in the same run; prints both and the ratios.
    Baseline(baseline::Args),
    /// Gap leafgate leaves between frames on a busy Modbus RTU line (pty pair).
    Rtu(rtu::Args),
    /// Long run under random hub drops, hardware outages and method load (`scripts/soak.sh`).
    Soak(soak::Args),
    /// Telemetry: steady load, a hub outage and its drain, polls on a saturated RTU line.
    Telemetry(telemetry::Args),
    /// Device twins: idle memory with every twin kept, and the twin reads of a hub-wide
    /// reconnect against the configured pace and the hub's throttle.
    Twin(twin::Args),
    /// N devices over MQTT/TLS and over MQTT over WebSockets, one after the other: connect
    /// time, CPU while connecting and idle, idle RSS per device, and the ratios.
    Transport(transport::Args),
    /// Devices registered through the Device Provisioning Service at leafgate's pace, then a
    /// restart that connects them from the cache.
    Dps(dps::Args),
    /// The Prometheus endpoint at N devices (default 10,000), each with a method answered:
    /// scrape time, body size, series, leafgate's CPU per scrape; `--compare` adds the same
    /// site without `[metrics]`, for the memory metrics cost per device.
    #[command(mut_arg("devices", |a| a.default_value("10000")))]
    Metrics(metrics::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = leafgate::systemd::init_logging(cli.harness_log_level) {
        eprintln!("leafgate-bench: cannot start logging: {e}");
    }
    match run(cli.command) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("leafgate-bench: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> Result<bool> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let context = format!(
        "machine: {} CPUs, load average {:.2}, {}",
        procfs::nproc(),
        procfs::load_average(),
        std::fs::read_to_string("/proc/version")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    match command {
        Command::Scale(args) => {
            let json = args.site.json.clone();
            let report = runtime.block_on(scale::run(args))?;
            finish(
                &context,
                json,
                &report,
                scale::render(&report),
                report.passed,
            )
        }
        Command::Baseline(args) => {
            let json = args.json.clone();
            let report = runtime.block_on(baseline::run(args))?;
            finish(
                &context,
                json,
                &report,
                baseline::render(&report),
                report.passed,
            )
        }
        Command::Rtu(args) => {
            let json = args.json.clone();
            let report = runtime.block_on(rtu::run(args))?;
            finish(&context, json, &report, rtu::render(&report), report.passed)
        }
        Command::Soak(args) => {
            let json = args.json.clone();
            let report = runtime.block_on(soak::run(args))?;
            finish(
                &context,
                json,
                &report,
                soak::render(&report),
                report.passed,
            )
        }
        Command::Twin(args) => {
            let json = args.site.json.clone();
            let report = runtime.block_on(twin::run(args))?;
            finish(
                &context,
                json,
                &report,
                twin::render(&report),
                report.passed,
            )
        }
        Command::Transport(args) => {
            let json = args.site.json.clone();
            let report = runtime.block_on(transport::run(args))?;
            finish(
                &context,
                json,
                &report,
                transport::render(&report),
                report.passed,
            )
        }
        Command::Dps(args) => {
            let json = args.site.json.clone();
            let report = runtime.block_on(dps::run(args))?;
            finish(&context, json, &report, dps::render(&report), report.passed)
        }
        Command::Metrics(args) => {
            let json = args.site.json.clone();
            let report = runtime.block_on(metrics::run(args))?;
            finish(
                &context,
                json,
                &report,
                metrics::render(&report),
                report.passed,
            )
        }
        Command::Telemetry(args) => {
            let json = args.mode.json();
            let outcome = runtime.block_on(telemetry::run(args))?;
            finish(&context, json, &outcome.json, outcome.text, outcome.passed)
        }
    }
}

/// Prints a mode's report under the machine line, writes it as JSON when asked, and returns
/// whether the run passed.
fn finish(
    context: &str,
    json: Option<PathBuf>,
    report: &impl serde::Serialize,
    text: String,
    passed: bool,
) -> Result<bool> {
    println!("{context}\n\n{text}");
    write_json(json.as_deref(), report)?;
    Ok(passed)
}

fn write_json(path: Option<&Path>, report: &impl serde::Serialize) -> Result<()> {
    if let Some(path) = path {
        let text = serde_json::to_string_pretty(report)?;
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(())
}

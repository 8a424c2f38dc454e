//! `leafgate-bench telemetry`: what telemetry costs and whether it keeps every reading.
//!
//! - [`steady`]: N meters on Modbus TCP, each one reading per interval, the hub healthy:
//!   leafgate's CPU and memory, lost and duplicate readings, poll → hub latency.
//! - [`outage`]: the hub gone for a while: memory while readings pile up in the store, the
//!   store's size per reading, and how long the backlog takes to drain afterwards, losing none.
//! - [`line`]: one RS-485 line (pty) saturated with polls: transactions per second against what
//!   9600 baud allows, and what polling adds to a method on the same line.
//!
//! [`site`] builds the Modbus TCP site the first two share; [`received`] checks what the hub
//! got against what the simulated units were asked.

mod line;
mod outage;
mod received;
mod site;
mod steady;

use std::path::PathBuf;

use anyhow::Result;
use serde::Serialize;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub mode: Mode,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Mode {
    /// N meters polled on an interval, hub healthy: CPU, RSS per device, loss, latency.
    Steady(steady::Args),
    /// The hub away for a while, then back: RSS during, store size, drain time, loss.
    Outage(outage::Args),
    /// RTU units on one 9600-baud line polled as fast as configured: line efficiency, and the
    /// latency polling adds to a method.
    Rtu(line::Args),
}

/// What every mode takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// leafgate's log level.
    #[arg(long, default_value = "info")]
    pub leafgate_log_level: String,
    /// The leafgate binary (default: `leafgate` next to this binary).
    #[arg(long)]
    pub leafgate: Option<PathBuf>,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Keep the work directory (config, CA, store, leafgate's log) instead of deleting it.
    #[arg(long)]
    pub keep: bool,
}

impl Common {
    pub fn binary(&self) -> PathBuf {
        self.leafgate
            .clone()
            .unwrap_or_else(|| leafgate_testkit::binary("leafgate"))
    }

    /// Removes the work directory unless `--keep`.
    pub fn done_with(&self, dir: &std::path::Path) {
        if self.keep {
            eprintln!("leafgate-bench: work directory kept: {}", dir.display());
        } else {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Mode {
    pub fn json(&self) -> Option<PathBuf> {
        match self {
            Mode::Steady(a) => a.common.json.clone(),
            Mode::Outage(a) => a.common.json.clone(),
            Mode::Rtu(a) => a.common.json.clone(),
        }
    }
}

/// A finished run: the table, the figures, and whether it passed.
pub struct Outcome {
    pub text: String,
    pub json: serde_json::Value,
    pub passed: bool,
}

impl Outcome {
    fn of<R: Serialize>(report: &R, text: String, passed: bool) -> Result<Outcome> {
        Ok(Outcome {
            text,
            json: serde_json::to_value(report)?,
            passed,
        })
    }
}

pub async fn run(args: Args) -> Result<Outcome> {
    match args.mode {
        Mode::Steady(a) => {
            let r = steady::run(a).await?;
            Outcome::of(&r, steady::render(&r), r.passed)
        }
        Mode::Outage(a) => {
            let r = outage::run(a).await?;
            Outcome::of(&r, outage::render(&r), r.passed)
        }
        Mode::Rtu(a) => {
            let r = line::run(a).await?;
            Outcome::of(&r, line::render(&r), r.passed)
        }
    }
}

/// `ok` as the tables' goal column.
fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "**not met**" }
}

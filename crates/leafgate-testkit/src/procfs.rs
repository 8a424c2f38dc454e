//! What the harness reads from `/proc`: a process's CPU time and resident memory, the machine's
//! load, and which other processes used the CPU during a phase (the machine is shared, so every
//! figure carries what ran next to it).

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context as _, Result};
use serde::Serialize;

/// Clock ticks per second for `/proc/<pid>/stat` times.
fn ticks_per_s() -> f64 {
    // SAFETY: sysconf only reads a constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// `(comm, utime + stime in ticks)` from a `/proc/.../stat` line. `comm` may hold spaces and
/// parentheses, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<(String, u64)> {
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_owned();
    let fields: Vec<&str> = text.get(close + 2..)?.split_whitespace().collect();
    // After the comm: state is field 3, utime 14, stime 15 (1-based, man proc).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// CPU seconds (user + system, all threads) a process has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    let (_, ticks) = parse_stat(&text).with_context(|| format!("cannot parse {path}"))?;
    Ok(ticks as f64 / ticks_per_s())
}

/// Resident memory and its peak, in KiB (`VmRSS`, `VmHWM`).
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Memory {
    pub rss_kib: u64,
    pub peak_kib: u64,
}

/// A process's [`Memory`]; a figure `/proc` does not give (as for a zombie) is 0.
pub fn memory(pid: u32) -> Result<Memory> {
    let text = status(pid)?;
    Ok(Memory {
        rss_kib: field(&text, "VmRSS").unwrap_or(0),
        peak_kib: field(&text, "VmHWM").unwrap_or(0),
    })
}

/// Resident memory in KiB (`VmRSS`); fails when there is none, as for a process that has
/// exited and not been reaped yet.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let text = status(pid)?;
    field(&text, "VmRSS").with_context(|| format!("no VmRSS in /proc/{pid}/status:\n{text}"))
}

fn status(pid: u32) -> Result<String> {
    let path = format!("/proc/{pid}/status");
    std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))
}

/// `Name:  value ...` from a `/proc` key-value file (`status`, `smaps_rollup`): the first number
/// after the name, in the file's unit (kB for sizes).
pub fn field(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
}

/// 1-minute load average.
pub fn load_average() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Online CPUs.
pub fn nproc() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
}

/// CPU ticks of every process at one moment, to tell afterwards who used the machine.
pub struct Snapshot {
    at: Instant,
    load: f64,
    procs: HashMap<u32, (String, u64)>,
}

impl Snapshot {
    pub fn take() -> Snapshot {
        let mut procs = HashMap::new();
        if let Ok(dir) = std::fs::read_dir("/proc") {
            for entry in dir.flatten() {
                let Some(pid) = entry
                    .file_name()
                    .to_str()
                    .and_then(|s| s.parse::<u32>().ok())
                else {
                    continue;
                };
                if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    && let Some(stat) = parse_stat(&text)
                {
                    procs.insert(pid, stat);
                }
            }
        }
        Snapshot {
            at: Instant::now(),
            load: load_average(),
            procs,
        }
    }
}

/// The machine during one phase: load averages at its ends, and the CPU the harness, leafgate
/// and everything else used (in % of one core; 100 × nproc is the whole machine).
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub load_start: f64,
    pub load_end: f64,
    pub harness_cpu_pct: f64,
    pub leafgate_cpu_pct: f64,
    pub others_cpu_pct: f64,
    /// The busiest other processes: `(command, % of one core)`.
    pub others_top: Vec<(String, f64)>,
}

impl Machine {
    /// Compares two snapshots. Processes that started during the phase count from zero; ones
    /// that ended are lost (short compiler jobs can hide that way, so `load_*` is kept too).
    pub fn between(start: &Snapshot, end: &Snapshot, leafgate: Option<u32>) -> Machine {
        let seconds = end.at.duration_since(start.at).as_secs_f64().max(1e-9);
        let ticks = ticks_per_s();
        let me = std::process::id();
        let mut by_command: HashMap<String, f64> = HashMap::new();
        let (mut harness, mut gate, mut others) = (0.0, 0.0, 0.0);
        for (pid, (comm, after)) in &end.procs {
            let before = start.procs.get(pid).map_or(0, |(_, t)| *t);
            let pct = after.saturating_sub(before) as f64 / ticks / seconds * 100.0;
            if *pid == me {
                harness += pct;
            } else if Some(*pid) == leafgate {
                gate += pct;
            } else if pct > 0.0 {
                others += pct;
                *by_command.entry(comm.clone()).or_default() += pct;
            }
        }
        let mut top: Vec<(String, f64)> = by_command
            .into_iter()
            .map(|(c, p)| (c, (p * 10.0).round() / 10.0))
            .collect();
        top.sort_by(|a, b| b.1.total_cmp(&a.1));
        top.truncate(5);
        Machine {
            nproc: nproc(),
            load_start: start.load,
            load_end: end.load,
            harness_cpu_pct: harness,
            leafgate_cpu_pct: gate,
            others_cpu_pct: others,
            others_top: top,
        }
    }

    /// One line for the table: `load 2.1→2.4, harness 80 %, others 35 % (rustc 30, cargo 5)`.
    pub fn summary(&self) -> String {
        let top: Vec<String> = self
            .others_top
            .iter()
            .filter(|(_, p)| *p >= 1.0)
            .map(|(c, p)| format!("{c} {p:.0}"))
            .collect();
        format!(
            "load {:.2}→{:.2}; CPU % of one core: harness {:.0}, leafgate {:.0}, others {:.0}{}",
            self.load_start,
            self.load_end,
            self.harness_cpu_pct,
            self.leafgate_cpu_pct,
            self.others_cpu_pct,
            if top.is_empty() {
                String::new()
            } else {
                format!(" ({})", top.join(", "))
            }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_with_odd_command_names_parse() {
        let line =
            "42 (tokio-rt (worker) 1) S 1 42 42 0 -1 4194560 100 0 0 0 250 30 0 0 20 0 3 0 1 1 1";
        assert_eq!(
            parse_stat(line),
            Some(("tokio-rt (worker) 1".to_owned(), 280))
        );
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn proc_fields_parse() {
        let status = "Name:\tpython\nVmRSS:\t   41234 kB\nThreads:\t9\n";
        assert_eq!(field(status, "VmRSS"), Some(41234));
        assert_eq!(field(status, "Threads"), Some(9));
        assert_eq!(field(status, "Vm"), None);
        let rollup =
            "55d0-7ffd ---p 00000000 00:00 0 [rollup]\nRss: 100 kB\nPss: 42 kB\nPss_Anon: 7 kB\n";
        assert_eq!(field(rollup, "Pss"), Some(42));
    }

    #[test]
    fn this_process_is_visible() {
        let me = std::process::id();
        assert!(cpu_seconds(me).is_ok());
        assert!(memory(me).is_ok_and(|m| m.rss_kib > 0));
        assert!(rss_kib(me).is_ok_and(|kib| kib > 0));
    }
}

//! `leafgate-bench metrics`: the Prometheus endpoint at scale. The `scale` site (N devices on
//! simulated Modbus TCP endpoints, the emulated hub, the real `leafgate run`) with `[metrics]`
//! on a loopback port the kernel picks. Every device answers one `read10` (so each has its
//! `leafgate_methods_total` and a non-empty `leafgate_method_seconds`, the realistic
//! cardinality), every `--unknown-every`th one also a method it does not have (501, counted as
//! `method="(unknown)"`). After an idle phase (where the idle RSS is read), `--scrapes` scrapes
//! of `GET /metrics`, one after the other over plain HTTP/1.1: time to the first and to the last
//! byte, body size, series, leafgate's CPU per scrape and its memory after. `--compare` runs the
//! same site and calls without `[metrics]` (its own hub and leafgate), for what metrics cost
//! per device.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use leafgate_emulator::{Emulator, EmulatorConfig};
use leafgate_testkit::procfs::{self, Machine, Memory, Snapshot};
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::child;
use crate::load::{self, METHOD};
use crate::scale::{self, Idle, Site, SiteArgs, hub_section, result_line, work_dir, write_site};
use crate::stats::{Summary, ms};

/// A method no benchmark device has: leafgate answers it 501 at once.
const UNKNOWN: &str = "noSuchMethod";

/// The scrape interval the CPU per scrape is also given at (Prometheus's usual one).
const INTERVAL_S: f64 = 15.0;

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub site: SiteArgs,
    /// Scrapes of `GET /metrics`, one after the other.
    #[arg(long, default_value_t = 20)]
    pub scrapes: usize,
    /// Devices 0, K, 2K, ... are also called with a method they do not have (501); 0 for none.
    #[arg(long, default_value_t = 100)]
    pub unknown_every: usize,
    /// Method calls in flight at once while every device is called.
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// Idle phase after the calls (keep-alives only), where the idle RSS is read, seconds.
    #[arg(long, default_value_t = 30.0)]
    pub idle_s: f64,
    /// Also run the same site and calls without `[metrics]` (its own hub and leafgate), for
    /// the memory metrics cost per device.
    #[arg(long)]
    pub compare: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub devices: usize,
    pub units_per_endpoint: usize,
    pub connect_rate: u32,
    pub keep_alive_s: u64,
    pub leafgate_log_level: String,
    pub unknown_every: usize,
    pub with_metrics: Measured,
    pub without_metrics: Option<Measured>,
    /// (idle RSS with − without metrics) / N: what metrics cost per device at rest, KiB.
    pub metrics_idle_rss_per_device_kib: Option<f64>,
    /// (RSS after the scrapes with metrics − idle RSS without) / N, KiB.
    pub metrics_scraped_rss_per_device_kib: Option<f64>,
    pub passed: bool,
}

#[derive(Debug, Serialize)]
pub struct Measured {
    pub metrics: bool,
    /// Process start → every device online and subscribed to methods.
    pub connect_s: f64,
    /// `read10` on every device: outcome → calls.
    pub calls: BTreeMap<String, usize>,
    /// The unknown method on every `unknown_every`th device: outcome → calls.
    pub unknown_calls: BTreeMap<String, usize>,
    /// Both sets of calls, seconds.
    pub calls_s: f64,
    /// After the calls, before any scrape: keep-alives only.
    pub idle: Idle,
    pub scrapes: Option<Scrapes>,
    pub leafgate_exit_code: Option<i32>,
}

#[derive(Debug, Serialize)]
pub struct Scrapes {
    pub url: String,
    pub count: usize,
    /// Connect → the last byte of the body.
    pub time: Summary,
    /// Connect → the first byte of the answer. leafgate encodes the whole body before it
    /// writes anything, so this is mostly the encoding.
    pub first_byte: Summary,
    pub body_bytes_min: usize,
    pub body_bytes_max: usize,
    /// Sample lines (not `#` lines) of the last body: the series Prometheus stores.
    pub series: usize,
    /// Devices with a `leafgate_methods_total{status="200"}` series counting ≥ 1.
    pub devices_with_methods: usize,
    /// Devices whose `leafgate_method_seconds_count` is ≥ 1.
    pub devices_with_latency: usize,
    /// `leafgate_methods_total{method="(unknown)"}` series.
    pub unknown_method_series: usize,
    /// First scrape's connect → last scrape's last byte.
    pub duration_s: f64,
    /// leafgate's CPU over that span (its idle background included), seconds.
    pub cpu_s: f64,
    pub cpu_ms_per_scrape: f64,
    pub memory_after: Memory,
    pub rss_per_device_kib_after: f64,
    pub machine: Machine,
}

pub async fn run(args: Args) -> Result<Report> {
    let site = &args.site;
    site.check()?;
    if args.scrapes == 0 {
        bail!("--scrapes must be > 0");
    }
    let n = site.devices;
    child::nofile_for_devices(n, site.units_per_endpoint)?;
    let binary = site.binary();
    eprintln!("leafgate-bench: {n} devices with [metrics]");
    let with_metrics = measure(&args, true, &binary).await?;
    let without_metrics = if args.compare {
        eprintln!("leafgate-bench: {n} devices without [metrics]");
        Some(measure(&args, false, &binary).await?)
    } else {
        None
    };
    let per_device = |kib: u64, without: &Measured| {
        (kib as f64 - without.idle.leafgate_memory.rss_kib as f64) / n as f64
    };
    let metrics_idle_rss_per_device_kib = without_metrics
        .as_ref()
        .map(|w| per_device(with_metrics.idle.leafgate_memory.rss_kib, w));
    let metrics_scraped_rss_per_device_kib = without_metrics
        .as_ref()
        .zip(with_metrics.scrapes.as_ref())
        .map(|(w, s)| per_device(s.memory_after.rss_kib, w));
    let unknown_targets = unknown_targets(n, args.unknown_every);
    let passed = std::iter::once(&with_metrics)
        .chain(&without_metrics)
        .all(|m| {
            answered_all(&m.calls, n, 200)
                && answered_all(&m.unknown_calls, unknown_targets, 501)
                && m.idle.reconnects == 0
                && m.leafgate_exit_code == Some(0)
        })
        && with_metrics.scrapes.as_ref().is_some_and(|s| {
            s.devices_with_methods == n
                && s.devices_with_latency == n
                && s.unknown_method_series == unknown_targets
        });
    Ok(Report {
        devices: n,
        units_per_endpoint: site.units_per_endpoint,
        connect_rate: site.connect_rate,
        keep_alive_s: site.keep_alive_s,
        leafgate_log_level: site.leafgate_log_level.clone(),
        unknown_every: args.unknown_every,
        with_metrics,
        without_metrics,
        metrics_idle_rss_per_device_kib,
        metrics_scraped_rss_per_device_kib,
        passed,
    })
}

/// How many devices get the unknown method: 0, K, 2K, ... below `n`.
fn unknown_targets(n: usize, every: usize) -> usize {
    if every == 0 { 0 } else { n.div_ceil(every) }
}

/// Whether all `count` calls were answered with `status` by the device.
fn answered_all(outcomes: &BTreeMap<String, usize>, count: usize, status: u16) -> bool {
    let ok = outcomes
        .get(&load::device_status(status))
        .copied()
        .unwrap_or(0);
    ok == count && outcomes.values().sum::<usize>() == count
}

/// One leafgate, with or without `[metrics]`: its own hub, site and process.
async fn measure(args: &Args, metrics: bool, binary: &Path) -> Result<Measured> {
    let site = &args.site;
    let (n, upe) = (site.devices, site.units_per_endpoint);
    let dir = work_dir(if metrics { "metrics" } else { "metrics-off" })?;
    let emu = Arc::new(Emulator::start(EmulatorConfig::default()).await?);
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, emu.ca_pem())?;
    let mut config = hub_section(&emu, &ca, site.connect_rate, site.keep_alive_s);
    if metrics {
        // Port 0: the kernel picks a free one, and leafgate logs which.
        config.push_str("\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    }
    let Site {
        servers,
        ids,
        config: config_path,
    } = write_site(&emu, &dir, config, n, upe).await?;

    let wait = site.connect_wait(f64::from(site.connect_rate));
    let log = dir.join("leafgate.log");
    let mut gate = child::spawn_leafgate(binary, &config_path, &site.leafgate_log_level, &log)?;
    let pid = gate.pid();
    let last = child::wait_ready(&emu, &ids, wait, || gate.check_alive()).await?;
    let connect_s = last.duration_since(gate.started()).as_secs_f64();
    let endpoint = if metrics {
        Some(bound_address(&gate.log())?)
    } else {
        None
    };
    eprintln!("leafgate-bench: {n} devices connected in {connect_s:.2} s; calling each");

    let t0 = Instant::now();
    let calls = load::call_each(&emu, &ids, METHOD, args.concurrency).await;
    let unknown_ids: Vec<String> = ids
        .iter()
        .step_by(args.unknown_every.max(1))
        .take(unknown_targets(n, args.unknown_every))
        .cloned()
        .collect();
    let unknown_calls = load::call_each(&emu, &unknown_ids, UNKNOWN, args.concurrency).await;
    let calls_s = t0.elapsed().as_secs_f64();
    gate.check_alive()?;
    eprintln!(
        "leafgate-bench: {} calls in {calls_s:.1} s; idle for {} s",
        ids.len() + unknown_ids.len(),
        args.idle_s
    );

    let idle = scale::idle(pid, n, args.idle_s).await?;
    gate.check_alive()?;
    let scrapes = match endpoint {
        Some(addr) => {
            eprintln!("leafgate-bench: {} scrapes of {addr}", args.scrapes);
            Some(scrape_phase(addr, args.scrapes, pid, n).await?)
        }
        None => None,
    };
    gate.check_alive()?;
    let idle = Idle {
        reconnects: scale::reconnects(&emu, &ids),
        ..idle
    };
    let exit = gate.stop(Duration::from_secs(30))?;
    drop(servers);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Measured {
        metrics,
        connect_s,
        calls,
        unknown_calls,
        calls_s,
        idle,
        scrapes,
        leafgate_exit_code: exit,
    })
}

/// The address leafgate's endpoint is bound to, from its log line `... serving Prometheus
/// metrics at http://ADDR/metrics` (logged at info).
fn bound_address(log: &str) -> Result<SocketAddr> {
    const MARK: &str = "serving Prometheus metrics at http://";
    let rest = log
        .lines()
        .find_map(|line| line.split_once(MARK).map(|(_, rest)| rest))
        .with_context(|| format!("no {MARK:?} line in leafgate's log (it is logged at info: run with --leafgate-log-level info or debug)"))?;
    let addr = rest.split('/').next().unwrap_or_default();
    addr.parse()
        .with_context(|| format!("{addr:?} in leafgate's log is not an ip:port"))
}

/// `count` scrapes of `addr`, one after the other, leafgate (`pid`, `n` devices) measured over
/// them; the last body is read for its series.
async fn scrape_phase(addr: SocketAddr, count: usize, pid: u32, n: usize) -> Result<Scrapes> {
    let mut times = Vec::with_capacity(count);
    let mut first_bytes = Vec::with_capacity(count);
    let (mut body_min, mut body_max) = (usize::MAX, 0);
    let mut last = String::new();
    let before = Snapshot::take();
    let cpu0 = procfs::cpu_seconds(pid)?;
    let t0 = Instant::now();
    for i in 0..count {
        let scraped = scrape(addr)
            .await
            .with_context(|| format!("scrape {} of {count} failed", i + 1))?;
        times.push(scraped.total);
        first_bytes.push(scraped.first_byte);
        body_min = body_min.min(scraped.body.len());
        body_max = body_max.max(scraped.body.len());
        last = scraped.body;
    }
    let duration_s = t0.elapsed().as_secs_f64();
    let cpu_s = procfs::cpu_seconds(pid)? - cpu0;
    let machine = Machine::between(&before, &Snapshot::take(), Some(pid));
    let memory_after = procfs::memory(pid)?;
    let exposition = Exposition::read(&last);
    Ok(Scrapes {
        url: format!("http://{addr}/metrics"),
        count,
        time: Summary::of(&times),
        first_byte: Summary::of(&first_bytes),
        body_bytes_min: body_min,
        body_bytes_max: body_max,
        series: exposition.series,
        devices_with_methods: exposition.devices_with_methods,
        devices_with_latency: exposition.devices_with_latency,
        unknown_method_series: exposition.unknown_method_series,
        duration_s,
        cpu_s,
        cpu_ms_per_scrape: cpu_s * 1e3 / count as f64,
        rss_per_device_kib_after: memory_after.rss_kib as f64 / n as f64,
        memory_after,
        machine,
    })
}

/// One scrape: when the answer began and ended (from before the connect), and its body.
struct Scraped {
    first_byte: Duration,
    total: Duration,
    body: String,
}

/// `GET /metrics` over a fresh connection (leafgate answers one request per connection, and
/// closes it), read to its end.
async fn scrape(addr: SocketAddr) -> Result<Scraped> {
    let t0 = Instant::now();
    let mut stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot connect to {addr}"))?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .context("cannot send the request")?;
    let mut answer = Vec::new();
    let mut chunk = vec![0u8; 256 * 1024];
    let mut first_byte = None;
    loop {
        let read = stream
            .read(&mut chunk)
            .await
            .context("cannot read the answer")?;
        if read == 0 {
            break;
        }
        first_byte.get_or_insert_with(|| t0.elapsed());
        answer.extend_from_slice(&chunk[..read]);
    }
    let total = t0.elapsed();
    let first_byte = first_byte.context("the connection closed without an answer")?;
    Ok(Scraped {
        first_byte,
        total,
        body: body_of(answer)?,
    })
}

/// The body of an HTTP/1.x answer: it must be a 200 whose `Content-Length` is what arrived,
/// and an OpenMetrics text that ends with `# EOF`.
fn body_of(mut answer: Vec<u8>) -> Result<String> {
    let end = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("the answer has no end of head")?;
    let body = answer.split_off(end + 4);
    let head = String::from_utf8_lossy(&answer[..end]);
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("200") {
        bail!("answered {status:?}");
    }
    let length = lines
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .context("the answer has no Content-Length")?
        .1
        .trim()
        .parse::<usize>()
        .context("the answer's Content-Length is not a number")?;
    if length != body.len() {
        bail!("Content-Length {length}, but {} bytes arrived", body.len());
    }
    let text = String::from_utf8(body).context("the body is not UTF-8")?;
    if !text.ends_with("# EOF\n") {
        bail!("the body does not end with \"# EOF\"");
    }
    Ok(text)
}

/// What an exposition holds, as far as this benchmark checks it.
#[derive(Debug, Default, PartialEq, Eq)]
struct Exposition {
    series: usize,
    devices_with_methods: usize,
    devices_with_latency: usize,
    unknown_method_series: usize,
}

impl Exposition {
    fn read(text: &str) -> Exposition {
        let mut methods = HashSet::new();
        let mut latency = HashSet::new();
        let mut out = Exposition::default();
        for line in text.lines() {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            out.series += 1;
            let counted = value(line).is_some_and(|v| v >= 1.0);
            if line.starts_with("leafgate_methods_total{") {
                if label(line, "method") == Some(leafgate::metrics::UNKNOWN_METHOD) {
                    out.unknown_method_series += 1;
                } else if counted
                    && label(line, "status") == Some("200")
                    && let Some(device) = label(line, "device")
                {
                    methods.insert(device);
                }
            } else if line.starts_with("leafgate_method_seconds_count{")
                && counted
                && let Some(device) = label(line, "device")
            {
                latency.insert(device);
            }
        }
        out.devices_with_methods = methods.len();
        out.devices_with_latency = latency.len();
        out
    }
}

/// A label's value in a sample line (the values here hold no quotes or escapes).
fn label<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let (labels, _) = line.split_once('{')?.1.split_once('}')?;
    labels.split(',').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key == name).then(|| value.trim_matches('"'))
    })
}

/// A sample line's value.
fn value(line: &str) -> Option<f64> {
    let rest = match line.split_once('}') {
        Some((_, rest)) => rest,
        None => line.split_once(' ')?.1,
    };
    rest.split_whitespace().next()?.parse().ok()
}

/// Outcome counts as `label × count, ...`.
fn outcomes(o: &BTreeMap<String, usize>) -> String {
    if o.is_empty() {
        return "none".to_owned();
    }
    o.iter()
        .map(|(label, count)| format!("{label} × {count}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// min / median / p95 / max in ms.
fn spread(s: &Summary) -> String {
    format!(
        "{} / {} / {} / {} ms",
        ms(s.min_us),
        ms(s.p50_us),
        ms(s.p95_us),
        ms(s.max_us)
    )
}

/// A row of the per-run table: its name and its cell for one run.
type Row = (&'static str, fn(&Measured) -> String);

pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let n = r.devices as f64;
    let _ = writeln!(
        out,
        "## leafgate-bench metrics: N = {} devices ({} units per endpoint), max_connects_per_s {}, keep-alive {} s, log level {}\n",
        r.devices, r.units_per_endpoint, r.connect_rate, r.keep_alive_s, r.leafgate_log_level
    );
    let runs: Vec<&Measured> = std::iter::once(&r.with_metrics)
        .chain(&r.without_metrics)
        .collect();
    let _ = write!(out, "| figure |");
    for m in &runs {
        let _ = write!(
            out,
            " {} |",
            if m.metrics {
                "with [metrics]"
            } else {
                "without"
            }
        );
    }
    let _ = writeln!(out, "\n|---|{}", "---|".repeat(runs.len()));
    let rows: [Row; 8] = [
        ("connect: process start → all method-ready", |m| {
            format!("{:.2} s", m.connect_s)
        }),
        ("calls: `read10` on every device", |m| outcomes(&m.calls)),
        ("calls: an unknown method on some", |m| {
            outcomes(&m.unknown_calls)
        }),
        ("calls: time for both", |m| format!("{:.1} s", m.calls_s)),
        ("idle: leafgate RSS total (peak)", |m| {
            format!(
                "{:.1} MiB ({:.1} MiB)",
                m.idle.leafgate_memory.rss_kib as f64 / 1024.0,
                m.idle.leafgate_memory.peak_kib as f64 / 1024.0
            )
        }),
        ("**idle: RSS per device**", |m| {
            format!("{:.2} KiB", m.idle.rss_per_device_kib)
        }),
        ("idle: leafgate CPU (% of one core)", |m| {
            format!("{:.2} %", m.idle.leafgate_cpu_pct)
        }),
        ("reconnects / exit code after SIGTERM", |m| {
            format!(
                "{} / {}",
                m.idle.reconnects,
                m.leafgate_exit_code
                    .map_or("killed".to_owned(), |c| c.to_string())
            )
        }),
    ];
    for (name, cell) in rows {
        let _ = write!(out, "| {name} |");
        for m in &runs {
            let _ = write!(out, " {} |", cell(m));
        }
        out.push('\n');
    }
    if let Some(kib) = r.metrics_idle_rss_per_device_kib {
        let _ = writeln!(
            out,
            "| **metrics cost per device: idle RSS with − without** | {kib:.2} KiB |{}",
            " |".repeat(runs.len() - 1)
        );
    }
    if let Some(kib) = r.metrics_scraped_rss_per_device_kib {
        let _ = writeln!(
            out,
            "| **metrics cost per device: RSS after the scrapes − idle RSS without** | {kib:.2} KiB |{}",
            " |".repeat(runs.len() - 1)
        );
    }

    if let Some(s) = &r.with_metrics.scrapes {
        let background_ms =
            r.with_metrics.idle.leafgate_cpu_pct / 100.0 * s.duration_s * 1e3 / s.count as f64;
        let _ = writeln!(
            out,
            "\n{} scrapes of {}, one after the other:\n\n| figure | value |\n|---|---|",
            s.count, s.url
        );
        let _ = writeln!(
            out,
            "| body | {} – {} bytes ({:.0} per device) |",
            s.body_bytes_min,
            s.body_bytes_max,
            s.body_bytes_max as f64 / n
        );
        let _ = writeln!(
            out,
            "| series (sample lines) | {} ({:.1} per device) |",
            s.series,
            s.series as f64 / n
        );
        let _ = writeln!(
            out,
            "| devices with `leafgate_methods_total{{status=\"200\"}}` / a non-empty `leafgate_method_seconds` | {} / {} of {} |",
            s.devices_with_methods, s.devices_with_latency, r.devices
        );
        let _ = writeln!(
            out,
            "| `leafgate_methods_total{{method=\"(unknown)\"}}` series | {} |",
            s.unknown_method_series
        );
        let _ = writeln!(
            out,
            "| **time to the whole body, min / median / p95 / max** | {} |",
            spread(&s.time)
        );
        let _ = writeln!(
            out,
            "| time to the first byte (≈ encoding), min / median / p95 / max | {} |",
            spread(&s.first_byte)
        );
        let _ = writeln!(
            out,
            "| **leafgate CPU per scrape** | {:.1} ms (idle background {background_ms:.2} ms of it); at one scrape per {INTERVAL_S:.0} s: {:.2} % of a core |",
            s.cpu_ms_per_scrape,
            s.cpu_ms_per_scrape / 1e3 / INTERVAL_S * 100.0
        );
        let _ = writeln!(
            out,
            "| leafgate RSS after the scrapes (peak) | {:.1} MiB ({:.1} MiB); {:.2} KiB per device |",
            s.memory_after.rss_kib as f64 / 1024.0,
            s.memory_after.peak_kib as f64 / 1024.0,
            s.rss_per_device_kib_after
        );
        let _ = writeln!(
            out,
            "| machine during the scrapes | {} |",
            s.machine.summary()
        );
    }
    let _ = writeln!(out, "\nMachine during each idle phase:\n");
    for m in &runs {
        let _ = writeln!(
            out,
            "- {}: {}",
            if m.metrics { "with" } else { "without" },
            m.idle.machine.summary()
        );
    }
    result_line(
        &mut out,
        r.passed,
        "every call answered as expected, every device's series in the exposition, no reconnects, clean exits",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_is_read_for_its_series_and_devices() {
        let text = "# HELP leafgate_methods Direct methods answered.\n\
# TYPE leafgate_methods counter\n\
leafgate_methods_total{device=\"dev-00000\",method=\"read10\",status=\"200\"} 1\n\
leafgate_methods_total{device=\"dev-00000\",method=\"(unknown)\",status=\"501\"} 1\n\
leafgate_methods_total{device=\"dev-00001\",method=\"read10\",status=\"200\"} 2\n\
leafgate_methods_total{device=\"dev-00002\",method=\"read10\",status=\"504\"} 1\n\
leafgate_method_seconds_sum{device=\"dev-00000\"} 0.002\n\
leafgate_method_seconds_count{device=\"dev-00000\"} 2\n\
leafgate_method_seconds_bucket{le=\"0.001\",device=\"dev-00000\"} 0\n\
leafgate_method_seconds_count{device=\"dev-00003\"} 0\n\
process_open_fds 12\n\
# EOF\n";
        assert_eq!(
            Exposition::read(text),
            Exposition {
                series: 9,
                devices_with_methods: 2,
                devices_with_latency: 1,
                unknown_method_series: 1,
            }
        );
        assert_eq!(value("process_open_fds 12"), Some(12.0));
        assert_eq!(label("process_open_fds 12", "device"), None);
    }

    #[test]
    fn an_answer_must_be_a_whole_200_exposition() {
        let answer = |head: &str, body: &str| format!("{head}\r\n\r\n{body}").into_bytes();
        let body = "up 1\n# EOF\n";
        let ok = format!("HTTP/1.1 200 OK\r\ncontent-length: {}", body.len());
        assert_eq!(body_of(answer(&ok, body)).ok().as_deref(), Some(body));
        assert!(body_of(answer(&ok, "up 1\n# EOF")).is_err());
        assert!(body_of(answer(&ok, "up 1\n# EOX\n")).is_err());
        assert!(body_of(answer("HTTP/1.1 404 Not Found\r\nContent-Length: 10", body)).is_err());
        assert!(body_of(answer("HTTP/1.1 200 OK", body)).is_err());
        assert!(body_of(b"HTTP/1.1 200 OK\r\n".to_vec()).is_err());
    }

    #[test]
    fn the_bound_address_comes_from_the_log() {
        let log = "2026-01-01T00:00:00Z INFO  metrics: serving Prometheus metrics at http://127.0.0.1:40123/metrics service=metrics\n";
        assert_eq!(
            bound_address(log).ok(),
            Some(SocketAddr::from(([127, 0, 0, 1], 40123)))
        );
        assert!(bound_address("nothing here\n").is_err());
    }

    #[test]
    fn every_kth_device_gets_the_unknown_method() {
        assert_eq!(unknown_targets(10_000, 100), 100);
        assert_eq!(unknown_targets(101, 100), 2);
        assert_eq!(unknown_targets(10, 0), 0);
        let mut o = BTreeMap::new();
        o.insert(load::device_status(200), 3);
        assert!(answered_all(&o, 3, 200));
        o.insert(load::device_status(504), 1);
        assert!(!answered_all(&o, 3, 200));
        assert!(answered_all(&BTreeMap::new(), 0, 501));
    }
}

//! `leafgate-bench scale`: N leaf devices on simulated Modbus TCP endpoints, the emulated hub
//! (TLS), and the real `leafgate run` as a child process; then the connect, idle and load
//! phases, with the floor responders measured in the same run.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use leafgate_emulator::{Emulator, EmulatorConfig};
use leafgate_sim::modbus::{Registers, TcpServer};
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinSet;

use crate::child;
use crate::floor::Floor;
use crate::load::{self, Run};
use crate::stats::{Summary, ms};
use leafgate_testkit::procfs::{self, Machine, Memory, Snapshot};

/// The site every mode built on `scale`'s (`scale`, `twin`, `transport`, `dps`) is described
/// by: N devices on Modbus TCP endpoints, leafgate's connect pace and sessions.
#[derive(Debug, Clone, clap::Args)]
pub struct SiteArgs {
    /// Leaf devices (N), each its own connection from leafgate to the hub.
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// leafgate's `max_connects_per_s`.
    #[arg(long, default_value_t = 500)]
    pub connect_rate: u32,
    /// Modbus units behind each simulated Modbus TCP endpoint (1..=247); one leafgate bus each.
    #[arg(long, default_value_t = 50)]
    pub units_per_endpoint: usize,
    /// MQTT keep-alive of leafgate's sessions (`keep_alive_s`).
    #[arg(long, default_value_t = 120)]
    pub keep_alive_s: u64,
    /// leafgate's log level (method lines are logged at info, as shipped).
    #[arg(long, default_value = "info")]
    pub leafgate_log_level: String,
    /// The leafgate binary (default: `leafgate` next to this binary).
    #[arg(long)]
    pub leafgate: Option<PathBuf>,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
}

impl SiteArgs {
    /// `--leafgate`, or `leafgate` next to this binary.
    pub fn binary(&self) -> PathBuf {
        self.leafgate
            .clone()
            .unwrap_or_else(|| leafgate_testkit::binary("leafgate"))
    }

    /// Fails unless N > 0 and the units per endpoint within 1..=247.
    pub fn check(&self) -> Result<()> {
        if self.devices == 0 || !(1..=247).contains(&self.units_per_endpoint) {
            bail!("--devices must be > 0 and --units-per-endpoint within 1..=247");
        }
        Ok(())
    }

    /// How long N devices may take to connect at `rate` per second: three times the paced
    /// time, and a minute.
    pub fn connect_wait(&self, rate: f64) -> Duration {
        Duration::from_secs_f64(self.devices as f64 / rate.max(1.0) * 3.0) + Duration::from_secs(60)
    }
}

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub site: SiteArgs,
    /// Idle phase length (keep-alives only), seconds.
    #[arg(long, default_value_t = 60.0)]
    pub idle_s: f64,
    /// Offered method rates, one load phase each, e.g. `1000,5000`.
    #[arg(long, value_delimiter = ',', default_value = "1000")]
    pub rates: Vec<u32>,
    /// Seconds of load per rate and per side (leafgate, floor), split over `--rounds`.
    #[arg(long, default_value_t = 20.0)]
    pub load_s: f64,
    /// The load of each rate alternates floor and leafgate this many times (floor first in
    /// even rounds, leafgate first in odd ones), so background noise hits both alike.
    #[arg(long, default_value_t = 2)]
    pub rounds: u32,
    /// Floor responders (at most N).
    #[arg(long, default_value_t = 100)]
    pub floor_devices: usize,
    /// Keep the work directory (config, CA, leafgate's log) instead of deleting it.
    #[arg(long)]
    pub keep: bool,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub devices: usize,
    pub endpoints: usize,
    pub units_per_endpoint: usize,
    pub keep_alive_s: u64,
    pub leafgate_log_level: String,
    pub nofile_limit: u64,
    pub leafgate_binary: String,
    pub leafgate_binary_bytes: u64,
    pub connect: Connect,
    pub idle: Idle,
    pub load: Vec<Load>,
    /// The harness process (emulator, simulators, floor, caller) at the end.
    pub harness_memory: Memory,
    pub leafgate_exit_code: Option<i32>,
    pub passed: bool,
}

#[derive(Debug, Serialize)]
pub struct Connect {
    pub configured_rate: u32,
    /// Process start → the last device connected and subscribed.
    pub time_to_all_s: f64,
    /// Process start → the first device subscribed (startup: config, buses, TLS setup).
    pub first_s: f64,
    /// (N − 1) / (last − first).
    pub achieved_rate: f64,
    pub achieved_pct_of_configured: f64,
    pub leafgate_cpu_s: f64,
    pub leafgate_memory: Memory,
    pub machine: Machine,
}

#[derive(Debug, Serialize)]
pub struct Idle {
    pub duration_s: f64,
    pub leafgate_memory: Memory,
    pub rss_per_device_kib: f64,
    pub leafgate_cpu_pct: f64,
    /// Connections accepted beyond one per device during the whole run (reconnects).
    pub reconnects: u64,
    pub machine: Machine,
}

#[derive(Debug, Serialize)]
pub struct Side {
    pub offered: usize,
    pub answered: usize,
    pub errors: usize,
    pub error_kinds: std::collections::BTreeMap<String, usize>,
    pub achieved_rate: f64,
    pub latency: Summary,
    /// How late calls left against their schedule: the caller's own limit.
    pub issue_lag: Summary,
}

impl Side {
    pub fn of(run: Run) -> Side {
        Side {
            offered: run.offered,
            answered: run.answered(),
            errors: run.error_count(),
            achieved_rate: run.answered() as f64 / run.elapsed.as_secs_f64().max(1e-9),
            latency: Summary::of(&run.latencies),
            issue_lag: Summary::of(&run.issue_lag),
            error_kinds: run.errors,
        }
    }
}

/// The caller-latency table (`scale` and `baseline`): its header, then one [`latency_row`] per
/// rate and side.
pub const LATENCY_HEADER: &str = "| rate | side | answered / offered | errors | achieved/s | p50 | p90 | p99 | p99.9 | max | caller lag p99 |\n|---|---|---|---|---|---|---|---|---|---|---|";

pub fn latency_row(out: &mut String, rate: u32, name: &str, s: &Side) {
    let _ = writeln!(
        out,
        "| {rate} | {name} | {} / {} | {} | {:.0} | {} | {} | {} | {} | {} | {} |",
        s.answered,
        s.offered,
        s.errors,
        s.achieved_rate,
        ms(s.latency.p50_us),
        ms(s.latency.p90_us),
        ms(s.latency.p99_us),
        ms(s.latency.p999_us),
        ms(s.latency.max_us),
        ms(s.issue_lag.p99_us)
    );
}

#[derive(Debug, Serialize)]
pub struct Load {
    pub offered_rate: u32,
    pub leafgate: Side,
    pub floor: Side,
    /// leafgate − floor, percentile by percentile.
    pub added: Summary,
    /// leafgate CPU during its load segments / methods it answered.
    pub leafgate_cpu_us_per_method: f64,
    pub leafgate_memory: Memory,
    pub machine: Machine,
}

/// Deterministic register contents: unit u's register i holds u × 100 + i.
pub fn register_values(unit: u8) -> Vec<u16> {
    (0..10).map(|i| u16::from(unit) * 100 + i).collect()
}

/// What leafgate answers to `read10` (and so what the floor answers too).
fn reply_body(unit: u8) -> Result<Vec<u8>> {
    let mut map = serde_json::Map::new();
    for (i, v) in register_values(unit).into_iter().enumerate() {
        map.insert(format!("r{i}"), json!(v));
    }
    Ok(serde_json::to_vec(&map)?)
}

pub const PROFILE: &str = r#"
[[profile]]
id = "bench"
[[profile.method]]
name = "read10"
timeout_ms = 5000
[[profile.method.step]]
op = "read"
table = "holding"
address = 0
fields = [
  { name = "r0" }, { name = "r1" }, { name = "r2" }, { name = "r3" }, { name = "r4" },
  { name = "r5" }, { name = "r6" }, { name = "r7" }, { name = "r8" }, { name = "r9" },
]
"#;

/// `[hub]` for the emulator, with the CA written beside the config.
pub fn hub_section(emu: &Emulator, ca: &Path, connect_rate: u32, keep_alive_s: u64) -> String {
    format!(
        "[hub]\nhostname = \"{}\"\n{}",
        emu.host_name(),
        hub_settings(emu, ca, connect_rate, keep_alive_s)
    )
}

/// The keys of [`hub_section`] but the host name (which DPS assigns with `[provisioning]`).
pub fn hub_settings(emu: &Emulator, ca: &Path, connect_rate: u32, keep_alive_s: u64) -> String {
    format!(
        "port = {}\nca_file = \"{}\"\nmax_connects_per_s = {connect_rate}\nkeep_alive_s = {keep_alive_s}\n",
        emu.mqtt_addr().port(),
        ca.display()
    )
}

/// Registers `n` devices (`dev-00000`, ...) with the hub and adds them to `config`, on the
/// `bench` profile, `upe` units per `tcp-{e}` bus. Returns their ids.
pub fn add_devices(
    emu: &Emulator,
    config: &mut String,
    n: usize,
    upe: usize,
) -> Result<Vec<String>> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let key = leafgate_emulator::random_key();
        let id = add_device_entry(
            config,
            i,
            upe,
            &format!("shared_access_key = \"{}\"\n", key_text(&key)),
        )?;
        emu.add_device(&id, key);
        ids.push(id);
    }
    Ok(ids)
}

/// Adds device `i` (`dev-{i:05}`, on the `bench` profile, unit `i % upe + 1` of bus
/// `tcp-{i / upe}`) to `config` with `credential` (key lines, or nothing for a device that
/// registers through a DPS enrollment group). Returns its id.
pub fn add_device_entry(
    config: &mut String,
    i: usize,
    upe: usize,
    credential: &str,
) -> Result<String> {
    let id = format!("dev-{i:05}");
    writeln!(
        config,
        "\n[[device]]\nid = \"{id}\"\n{credential}bus = \"tcp-{}\"\nunit = {}\nprofile = \"bench\"",
        i / upe,
        i % upe + 1
    )?;
    Ok(id)
}

/// Starts `n.div_ceil(upe)` simulated Modbus TCP endpoints with units 1..=`upe` (the last one
/// fewer), unit u holding `values(u)` from holding register 0 ([`register_values`] for the
/// `bench` profile), and adds a bus `tcp-{e}` for each to `config`.
pub async fn add_endpoints(
    config: &mut String,
    n: usize,
    upe: usize,
    values: impl Fn(u8) -> Vec<u16>,
) -> Result<Vec<(TcpServer, Registers)>> {
    let endpoints = n.div_ceil(upe);
    let mut servers = Vec::with_capacity(endpoints);
    for e in 0..endpoints {
        let units = (n - e * upe).min(upe);
        let registers = Registers::new();
        for unit in 1..=units {
            let unit = u8::try_from(unit)?;
            registers.set_holding(unit, 0, &values(unit));
        }
        let server = TcpServer::start(registers.clone()).await?;
        writeln!(
            config,
            "\n[[bus]]\nid = \"tcp-{e}\"\nkind = \"modbus_tcp\"\naddress = \"{}\"\ntimeout_ms = 1000\nqueue_capacity = 256",
            server.addr()
        )?;
        servers.push((server, registers));
    }
    Ok(servers)
}

/// The simulators and devices of a site, and leafgate's config for it.
pub struct Site {
    pub servers: Vec<(TcpServer, Registers)>,
    pub ids: Vec<String>,
    pub config: PathBuf,
}

/// Completes `config` (its `[hub]`, and whatever else the mode wants) with the `bench` profile,
/// the endpoints of [`add_endpoints`] and `n` devices registered with `emu` ([`add_devices`]),
/// and writes it to `dir/leafgate.toml`.
pub async fn write_site(
    emu: &Emulator,
    dir: &Path,
    mut config: String,
    n: usize,
    upe: usize,
) -> Result<Site> {
    config.push_str(PROFILE);
    let servers = add_endpoints(&mut config, n, upe, register_values).await?;
    let ids = add_devices(emu, &mut config, n, upe)?;
    let path = dir.join("leafgate.toml");
    write_private(&path, &config)?;
    Ok(Site {
        servers,
        ids,
        config: path,
    })
}

/// The last line of a report: `Result: PASS (what passing means)` or `Result: FAIL`.
pub fn result_line(out: &mut String, passed: bool, meaning: &str) {
    let _ = if passed {
        writeln!(out, "\nResult: PASS ({meaning})")
    } else {
        writeln!(out, "\nResult: FAIL")
    };
}

/// Reconnects over the whole run: every CONNECT of `ids` the hub accepted beyond the first per
/// device.
pub fn reconnects(emu: &Emulator, ids: &[String]) -> u64 {
    let stats = emu.stats();
    ids.iter()
        .filter_map(|id| stats.get(id))
        .map(|s| s.connects_accepted.saturating_sub(1))
        .sum()
}

/// The idle phase: `idle_s` seconds of keep-alives only, leafgate (`pid`, serving `n`
/// devices) measured over it. `reconnects` is left 0 for the caller to fill in.
pub async fn idle(pid: u32, n: usize, idle_s: f64) -> Result<Idle> {
    let before = Snapshot::take();
    let cpu0 = procfs::cpu_seconds(pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(idle_s)).await;
    let cpu1 = procfs::cpu_seconds(pid)?;
    let duration_s = t0.elapsed().as_secs_f64();
    let after = Snapshot::take();
    let memory = procfs::memory(pid)?;
    Ok(Idle {
        duration_s,
        leafgate_memory: memory,
        rss_per_device_kib: memory.rss_kib as f64 / n as f64,
        leafgate_cpu_pct: (cpu1 - cpu0) / duration_s * 100.0,
        reconnects: 0,
        machine: Machine::between(&before, &after, Some(pid)),
    })
}

pub fn key_text(key: &leafgate::hub::sas::Key) -> String {
    base64::engine::general_purpose::STANDARD.encode(key.as_bytes())
}

/// Writes a file only its owner can read (it holds device keys; leafgate warns otherwise).
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    std::io::Write::write_all(&mut file, text.as_bytes())?;
    Ok(())
}

pub fn work_dir(name: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("leafgate-bench-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

pub async fn run(args: Args) -> Result<Report> {
    let site = &args.site;
    site.check()?;
    let n = site.devices;
    // The limit is per process and the child inherits it. leafgate: one socket per device and
    // per endpoint. The harness: the emulator's end of each device connection, both ends of each
    // floor connection, the simulators' listeners and connections. Plus slack for the rest.
    let want = (n + 2 * args.floor_devices + 2 * n.div_ceil(site.units_per_endpoint) + 1024) as u64;
    let nofile = child::raise_nofile(want)?;
    if nofile < want {
        bail!(
            "RLIMIT_NOFILE is {nofile}, {want} needed for {n} devices; run as root or raise the hard limit"
        );
    }
    let binary = site.binary();
    let binary_bytes = std::fs::metadata(&binary)
        .with_context(|| format!("no leafgate binary at {}", binary.display()))?
        .len();
    let dir = work_dir("scale")?;

    // The hub.
    let emu = Arc::new(Emulator::start(EmulatorConfig::default()).await?);
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, emu.ca_pem())?;

    // The hardware: `endpoints` Modbus TCP servers with up to `units_per_endpoint` units each.
    let upe = site.units_per_endpoint;
    let endpoints = n.div_ceil(upe);
    let config = hub_section(&emu, &ca, site.connect_rate, site.keep_alive_s);
    let Site {
        servers,
        ids,
        config: config_path,
    } = write_site(&emu, &dir, config, n, upe).await?;

    // Connect phase: watchers first, so no connection is missed.
    let connect_wait = site.connect_wait(f64::from(site.connect_rate));
    let mut watchers = JoinSet::new();
    for id in &ids {
        let emu = Arc::clone(&emu);
        let id = id.clone();
        watchers.spawn(async move {
            emu.wait_method_ready(&id, connect_wait)
                .await
                .map(|_| Instant::now())
                .map_err(|e| anyhow::anyhow!("{e}"))
        });
    }
    let before = Snapshot::take();
    let log_path = dir.join("leafgate.log");
    let mut gate =
        child::spawn_leafgate(&binary, &config_path, &site.leafgate_log_level, &log_path)?;
    let pid = gate.pid();
    let mut ready = Vec::with_capacity(n);
    let mut failures = 0usize;
    while let Some(joined) = watchers.join_next().await {
        match joined {
            Ok(Ok(at)) => ready.push(at),
            Ok(Err(e)) => {
                failures += 1;
                if failures <= 3 {
                    eprintln!("leafgate-bench: {e}");
                }
            }
            Err(e) => bail!("watcher task failed: {e}"),
        }
    }
    gate.check_alive()?;
    if failures > 0 {
        bail!(
            "{failures} of {n} devices did not connect within {connect_wait:?}; leafgate log: {}",
            log_path.display()
        );
    }
    let connect_cpu = procfs::cpu_seconds(pid)?;
    let after = Snapshot::take();
    ready.sort();
    let (first, last) = (ready[0], ready[n - 1]);
    let span = last.duration_since(first).as_secs_f64();
    let achieved = if n > 1 {
        (n - 1) as f64 / span.max(1e-9)
    } else {
        f64::NAN
    };
    let connect = Connect {
        configured_rate: site.connect_rate,
        time_to_all_s: last.duration_since(gate.started()).as_secs_f64(),
        first_s: first.duration_since(gate.started()).as_secs_f64(),
        achieved_rate: achieved,
        achieved_pct_of_configured: achieved / f64::from(site.connect_rate) * 100.0,
        leafgate_cpu_s: connect_cpu,
        leafgate_memory: procfs::memory(pid)?,
        machine: Machine::between(&before, &after, Some(pid)),
    };
    eprintln!(
        "leafgate-bench: {n} devices connected in {:.2} s ({:.0}/s); idle for {} s",
        connect.time_to_all_s, connect.achieved_rate, args.idle_s
    );

    // Idle phase: only keep-alives.
    let idle = idle(pid, n, args.idle_s).await?;
    gate.check_alive()?;

    // Floor responders, then the load phases.
    let floor_count = args.floor_devices.clamp(1, n);
    let tls = leafgate::hub::tls::client_config(Some(&ca))?;
    let floor = Floor::start(&emu, tls, floor_count, reply_body(1)?).await?;
    let floor_ids = Arc::new(floor.ids.clone());
    let gate_ids = Arc::new(ids);
    let mut loads = Vec::new();
    for &rate in &args.rates {
        eprintln!("leafgate-bench: load {rate}/s, {} s per side", args.load_s);
        let segment = Duration::from_secs_f64(args.load_s / f64::from(args.rounds.max(1)));
        let (mut on_gate, mut on_floor) = (Run::default(), Run::default());
        let mut gate_cpu = 0.0;
        let before = Snapshot::take();
        for round in 0..args.rounds.max(1) {
            for gate_turn in if round % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            } {
                if gate_turn {
                    let c0 = procfs::cpu_seconds(pid)?;
                    on_gate.merge(load::offer(&emu, &gate_ids, rate, segment).await);
                    gate_cpu += procfs::cpu_seconds(pid)? - c0;
                } else {
                    on_floor.merge(load::offer(&emu, &floor_ids, rate, segment).await);
                }
            }
        }
        let after = Snapshot::take();
        gate.check_alive()?;
        let gate_side = Side::of(on_gate);
        let floor_side = Side::of(on_floor);
        loads.push(Load {
            offered_rate: rate,
            added: gate_side.latency.minus(&floor_side.latency),
            leafgate_cpu_us_per_method: gate_cpu * 1e6 / gate_side.answered.max(1) as f64,
            leafgate: gate_side,
            floor: floor_side,
            leafgate_memory: procfs::memory(pid)?,
            machine: Machine::between(&before, &after, Some(pid)),
        });
    }
    floor.stop();

    let idle = Idle {
        reconnects: reconnects(&emu, &gate_ids),
        ..idle
    };
    let harness_memory = procfs::memory(std::process::id())?;
    let exit = gate.stop(Duration::from_secs(30))?;
    drop(servers);
    let passed = loads
        .iter()
        .all(|l| l.leafgate.errors == 0 && l.floor.errors == 0)
        && exit == Some(0);
    let report = Report {
        devices: n,
        endpoints,
        units_per_endpoint: upe,
        keep_alive_s: site.keep_alive_s,
        leafgate_log_level: site.leafgate_log_level.clone(),
        nofile_limit: nofile,
        leafgate_binary: binary.display().to_string(),
        leafgate_binary_bytes: binary_bytes,
        connect,
        idle,
        load: loads,
        harness_memory,
        leafgate_exit_code: exit,
        passed,
    };
    if args.keep {
        eprintln!("leafgate-bench: work directory kept: {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(report)
}

/// The report as markdown tables.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let c = &r.connect;
    let i = &r.idle;
    let _ = writeln!(
        out,
        "## leafgate-bench scale: N = {} devices ({} Modbus TCP endpoints × ≤ {} units), keep-alive {} s, log level {}, RLIMIT_NOFILE {}\n",
        r.devices,
        r.endpoints,
        r.units_per_endpoint,
        r.keep_alive_s,
        r.leafgate_log_level,
        r.nofile_limit
    );
    let _ = writeln!(out, "| phase | figure | value |\n|---|---|---|");
    let _ = writeln!(
        out,
        "| connect | time until all {} connected (from process start) | {:.2} s |",
        r.devices, c.time_to_all_s
    );
    let _ = writeln!(
        out,
        "| connect | first device subscribed after | {:.3} s |",
        c.first_s
    );
    let _ = writeln!(
        out,
        "| connect | achieved rate vs configured | {:.0}/s of {}/s ({:.1} %) |",
        c.achieved_rate, c.configured_rate, c.achieved_pct_of_configured
    );
    let _ = writeln!(
        out,
        "| connect | leafgate CPU | {:.2} s |",
        c.leafgate_cpu_s
    );
    let _ = writeln!(out, "| idle | duration | {:.1} s |", i.duration_s);
    let _ = writeln!(
        out,
        "| idle | leafgate RSS total (peak) | {:.1} MiB ({:.1} MiB) |",
        i.leafgate_memory.rss_kib as f64 / 1024.0,
        i.leafgate_memory.peak_kib as f64 / 1024.0
    );
    let _ = writeln!(
        out,
        "| idle | leafgate RSS per device | {:.1} KiB |",
        i.rss_per_device_kib
    );
    let _ = writeln!(
        out,
        "| idle | leafgate CPU (% of one core) | {:.2} % |",
        i.leafgate_cpu_pct
    );
    let _ = writeln!(out, "| run | reconnects | {} |", i.reconnects);
    for l in &r.load {
        let _ = writeln!(
            out,
            "| load {}/s | leafgate CPU per method | {:.1} µs |",
            l.offered_rate, l.leafgate_cpu_us_per_method
        );
        let _ = writeln!(
            out,
            "| load {}/s | leafgate RSS after | {:.1} MiB |",
            l.offered_rate,
            l.leafgate_memory.rss_kib as f64 / 1024.0
        );
    }
    let _ = writeln!(
        out,
        "| run | leafgate exit code after SIGTERM | {} |",
        r.leafgate_exit_code
            .map_or("killed".to_owned(), |c| c.to_string())
    );
    let _ = writeln!(
        out,
        "| run | leafgate binary | {:.1} MB stripped |",
        r.leafgate_binary_bytes as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "| run | harness RSS (emulator, sims, floor, caller) | {:.1} MiB |",
        r.harness_memory.rss_kib as f64 / 1024.0
    );

    let _ = writeln!(out, "\nLatency at the caller (`Emulator::invoke`), ms:\n");
    let _ = writeln!(out, "{LATENCY_HEADER}");
    for l in &r.load {
        for (name, s) in [("floor", &l.floor), ("leafgate", &l.leafgate)] {
            latency_row(&mut out, l.offered_rate, name, s);
        }
        let a = &l.added;
        let _ = writeln!(
            out,
            "| {} | **added by leafgate** | | | | {} | {} | {} | {} | {} | |",
            l.offered_rate,
            ms(a.p50_us),
            ms(a.p90_us),
            ms(a.p99_us),
            ms(a.p999_us),
            ms(a.max_us)
        );
    }
    for l in &r.load {
        for (name, s) in [("floor", &l.floor), ("leafgate", &l.leafgate)] {
            if !s.error_kinds.is_empty() {
                let _ = writeln!(
                    out,
                    "\nerrors at {}/s on {name}: {:?}",
                    l.offered_rate, s.error_kinds
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "\nMachine during each phase ({} CPUs):\n",
        c.machine.nproc
    );
    let _ = writeln!(out, "- connect: {}", c.machine.summary());
    let _ = writeln!(out, "- idle: {}", i.machine.summary());
    for l in &r.load {
        let _ = writeln!(out, "- load {}/s: {}", l.offered_rate, l.machine.summary());
    }
    let _ = writeln!(
        out,
        "\nResult: {}",
        if r.passed {
            "PASS (no errors, clean exit)"
        } else {
            "FAIL"
        }
    );
    out
}

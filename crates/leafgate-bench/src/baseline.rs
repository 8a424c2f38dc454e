//! `leafgate-bench baseline`: leafgate next to the approach it replaces, in the same run. The
//! baseline is what Azure's tutorials show: one Python process per leaf device, each with the
//! official device SDK (`azure-iot-device`) and a Modbus client (pymodbus),
//! `benches/baseline/leaf_device.py`. Both sides get the same N devices on the same simulated
//! Modbus TCP endpoints and the same emulated hub, are idle together, and take the same offered
//! load (`load::offer`) in alternating segments; the report puts memory, CPU and latency side
//! by side with the ratios Python / leafgate.

use std::fmt::Write as _;
use std::fs::File;
use std::net::SocketAddr;
use std::os::fd::AsRawFd as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use leafgate_emulator::{Emulator, EmulatorConfig};
use leafgate_sim::modbus::{Registers, TcpServer};
use serde::Serialize;

use crate::child;
use crate::load::{self, Run};
use crate::scale::{self, Side};
use crate::stats::ms;
use leafgate_testkit::procfs::{self, Machine, Memory, Snapshot};

/// The baseline's pinned packages and its device program, built into the harness so that the
/// run does not depend on where the source tree is.
const REQUIREMENTS: &str = include_str!("../baseline/requirements.txt");
const DEVICE_SCRIPT: &str = include_str!("../baseline/leaf_device.py");

#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// Leaf devices (N) per side: N connections from one leafgate, and N Python processes.
    #[arg(long, default_value_t = 50)]
    pub devices: usize,
    /// Offered method rates, one load phase each, e.g. `100,500`.
    #[arg(long, value_delimiter = ',', default_value = "100,500")]
    pub rates: Vec<u32>,
    /// Seconds of load per rate and per side, split over `--rounds`.
    #[arg(long, default_value_t = 20.0)]
    pub load_s: f64,
    /// The load of each rate alternates the two sides this many times (leafgate first in even
    /// rounds, Python first in odd ones), so background noise hits both alike.
    #[arg(long, default_value_t = 2)]
    pub rounds: u32,
    /// Idle phase length (both sides connected, keep-alives only), seconds.
    #[arg(long, default_value_t = 30.0)]
    pub idle_s: f64,
    /// Modbus units behind each simulated Modbus TCP endpoint (1..=247); both sides share them.
    #[arg(long, default_value_t = 50)]
    pub units_per_endpoint: usize,
    /// MQTT keep-alive of both sides: leafgate's `keep_alive_s`, the SDK's `keep_alive`
    /// (whose default is 60).
    #[arg(long, default_value_t = 60)]
    pub keep_alive_s: u64,
    /// leafgate's log level (method lines are logged at info, as shipped).
    #[arg(long, default_value = "info")]
    pub leafgate_log_level: String,
    /// The leafgate binary (default: `leafgate` next to this binary).
    #[arg(long)]
    pub leafgate: Option<PathBuf>,
    /// The Python that builds the baseline's venv.
    #[arg(long, default_value = "python3")]
    pub python: PathBuf,
    /// The baseline's venv, built (pip, needs PyPI) when missing or stale (default:
    /// `tmp/baseline-venv` in the target directory this binary was built in).
    #[arg(long)]
    pub venv: Option<PathBuf>,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Keep the work directory (config, CA, script, every process's log) instead of deleting it.
    #[arg(long)]
    pub keep: bool,
}

/// Memory of a set of processes, summed. PSS splits each shared page among the processes that
/// map it, so it counts the Python interpreter's and libraries' shared pages once in total.
#[derive(Debug, Clone, Copy, Serialize, Default)]
pub struct Footprint {
    pub processes: usize,
    pub threads: u64,
    pub rss_kib: u64,
    pub pss_kib: u64,
}

/// One side's figures.
#[derive(Debug, Serialize)]
pub struct System {
    pub name: String,
    /// First process started → the last device online and subscribed to methods.
    pub connect_s: f64,
    /// CPU the processes used until then (start-up, imports, TLS, MQTT connect).
    pub connect_cpu_s: f64,
    /// Both sides connected, keep-alives only; % of one core.
    pub idle_cpu_pct: f64,
    pub idle: Footprint,
    pub after_load: Footprint,
    pub loads: Vec<SystemLoad>,
    /// Connections accepted beyond one per device during the whole run.
    pub reconnects: u64,
    /// Processes that exited with 0 after SIGTERM (the rest were killed or failed).
    pub clean_exits: usize,
}

#[derive(Debug, Serialize)]
pub struct SystemLoad {
    pub offered_rate: u32,
    pub side: Side,
    /// CPU of the side's processes during its load segments (answers drained included).
    pub cpu_s: f64,
    pub cpu_us_per_method: f64,
    /// The same CPU in % of one core over those segments.
    pub cpu_pct: f64,
}

/// Python / leafgate.
#[derive(Debug, Serialize)]
pub struct Ratios {
    pub rss: f64,
    pub pss: f64,
    pub rss_after_load: f64,
    pub connect_cpu: f64,
    pub idle_cpu: f64,
    pub loads: Vec<LoadRatios>,
}

#[derive(Debug, Serialize)]
pub struct LoadRatios {
    pub offered_rate: u32,
    pub cpu_per_method: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

/// The machine during one phase. `machine.others_*` include the Python processes, whose share
/// is `python_cpu_pct`.
#[derive(Debug, Serialize)]
pub struct Phase {
    pub name: String,
    pub python_cpu_pct: f64,
    pub machine: Machine,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub devices: usize,
    pub endpoints: usize,
    pub units_per_endpoint: usize,
    pub keep_alive_s: u64,
    pub leafgate_log_level: String,
    pub load_s: f64,
    pub rounds: u32,
    pub python_version: String,
    /// The baseline's SDK and Modbus library, as pinned.
    pub python_packages: Vec<String>,
    pub leafgate: System,
    pub python: System,
    pub ratios: Ratios,
    pub phases: Vec<Phase>,
    /// The harness process (emulator, simulators, caller) at the end.
    pub harness_memory: Memory,
    pub leafgate_exit_code: Option<i32>,
    pub passed: bool,
}

pub async fn run(args: Args) -> Result<Report> {
    let n = args.devices;
    let upe = args.units_per_endpoint;
    if n == 0 || !(1..=247).contains(&upe) || args.rates.is_empty() {
        bail!("--devices must be > 0, --units-per-endpoint within 1..=247, --rates not empty");
    }
    let endpoints = n.div_ceil(upe);
    // The harness holds the hub's end of 2N connections and the simulators' 2N + endpoints.
    let want = (4 * n + 2 * endpoints + 1024) as u64;
    let nofile = child::raise_nofile(want)?;
    if nofile < want {
        bail!("RLIMIT_NOFILE is {nofile}, {want} needed for {n} devices per side");
    }
    let binary = match &args.leafgate {
        Some(path) => path.clone(),
        None => leafgate_testkit::binary("leafgate"),
    };
    if !binary.exists() {
        bail!("no leafgate binary at {}", binary.display());
    }
    let venv = match &args.venv {
        Some(path) => path.clone(),
        None => default_venv()?,
    };
    let (python, python_version) = ensure_venv(&args.python, &venv)?;
    let dir = scale::work_dir("baseline")?;
    let script = dir.join("leaf_device.py");
    std::fs::write(&script, DEVICE_SCRIPT)
        .with_context(|| format!("cannot write {}", script.display()))?;

    // The hub, and the hardware both sides read: device i is unit i % upe + 1 of endpoint
    // i / upe, for leafgate's `lg-i` and Python's `py-i` alike.
    let emu = Arc::new(Emulator::start(EmulatorConfig::default()).await?);
    let ca = dir.join("ca.pem");
    std::fs::write(&ca, emu.ca_pem())?;
    let mut servers = Vec::with_capacity(endpoints);
    for e in 0..endpoints {
        let registers = Registers::new();
        for unit in 1..=(n - e * upe).min(upe) {
            let unit = u8::try_from(unit)?;
            registers.set_holding(unit, 0, &scale::register_values(unit));
        }
        servers.push(TcpServer::start(registers).await?);
    }
    let addrs: Vec<SocketAddr> = servers.iter().map(TcpServer::addr).collect();
    let place =
        |i: usize| -> Result<(SocketAddr, u8)> { Ok((addrs[i / upe], u8::try_from(i % upe + 1)?)) };

    let mut config = scale::hub_section(&emu, &ca, 500, args.keep_alive_s);
    config.push_str(scale::PROFILE);
    for (e, addr) in addrs.iter().enumerate() {
        writeln!(
            config,
            "\n[[bus]]\nid = \"tcp-{e}\"\nkind = \"modbus_tcp\"\naddress = \"{addr}\"\ntimeout_ms = 1000\nqueue_capacity = 256"
        )?;
    }
    let mut gate_ids = Vec::with_capacity(n);
    let mut py_ids = Vec::with_capacity(n);
    for i in 0..n {
        let id = format!("lg-{i:05}");
        let key = leafgate_emulator::random_key();
        emu.add_device(&id, key.clone());
        writeln!(
            config,
            "\n[[device]]\nid = \"{id}\"\nshared_access_key = \"{}\"\nbus = \"tcp-{}\"\nunit = {}\nprofile = \"bench\"",
            scale::key_text(&key),
            i / upe,
            i % upe + 1
        )?;
        gate_ids.push(id);
        let id = format!("py-{i:05}");
        emu.add_device(&id, leafgate_emulator::random_key());
        py_ids.push(id);
    }
    let config_path = dir.join("leafgate.toml");
    scale::write_private(&config_path, &config)?;
    let connect_wait = Duration::from_secs(120) + Duration::from_secs(2) * n as u32;
    let mut phases = Vec::new();

    // Connect leafgate, then the Python processes, one after the other so that neither start-up
    // slows the other's.
    let before = Snapshot::take();
    let gate_started = Instant::now();
    let mut gate = child::spawn_leafgate(
        &binary,
        &config_path,
        &args.leafgate_log_level,
        &dir.join("leafgate.log"),
    )?;
    let gate_pids = [gate.pid()];
    let gate_ready =
        crate::child::wait_ready(&emu, &gate_ids, connect_wait, || gate.check_alive()).await?;
    let gate_connect_cpu = cpu_seconds(&gate_pids)?;
    phases.push(Phase {
        name: "connect leafgate".to_owned(),
        python_cpu_pct: 0.0,
        machine: Machine::between(&before, &Snapshot::take(), Some(gate_pids[0])),
    });
    eprintln!(
        "leafgate-bench: leafgate connected {n} devices in {:.2} s; starting {n} Python processes",
        gate_ready.duration_since(gate_started).as_secs_f64()
    );

    let before = Snapshot::take();
    let py_started = Instant::now();
    let mut fleet = Fleet::default();
    for (i, id) in py_ids.iter().enumerate() {
        let connection_string = emu
            .device_connection_string(id)
            .with_context(|| format!("{id} is not registered"))?;
        let (addr, unit) = place(i)?;
        fleet.spawn(&Device {
            python: &python,
            script: &script,
            connection_string: &connection_string,
            ca: &ca,
            mqtt_port: emu.mqtt_addr().port(),
            modbus: addr,
            unit,
            keep_alive_s: args.keep_alive_s,
            log: &dir.join(format!("{id}.log")),
        })?;
    }
    let py_pids = fleet.pids();
    let py_ready =
        crate::child::wait_ready(&emu, &py_ids, connect_wait, || fleet.check_alive()).await?;
    let py_connect_cpu = cpu_seconds(&py_pids)?;
    let after = Snapshot::take();
    phases.push(Phase {
        name: "connect Python".to_owned(),
        python_cpu_pct: pct(py_connect_cpu, py_started.elapsed().as_secs_f64()),
        machine: Machine::between(&before, &after, Some(gate_pids[0])),
    });
    eprintln!(
        "leafgate-bench: {n} Python processes connected in {:.2} s; idle for {} s",
        py_ready.duration_since(py_started).as_secs_f64(),
        args.idle_s
    );

    // Idle: both connected, keep-alives only.
    let before = Snapshot::take();
    let (g0, p0) = (cpu_seconds(&gate_pids)?, cpu_seconds(&py_pids)?);
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.idle_s)).await;
    let idle_s = t0.elapsed().as_secs_f64();
    let (g1, p1) = (cpu_seconds(&gate_pids)?, cpu_seconds(&py_pids)?);
    let after = Snapshot::take();
    gate.check_alive()?;
    fleet.check_alive()?;
    let (gate_idle, py_idle) = (footprint(&gate_pids)?, footprint(&py_pids)?);
    phases.push(Phase {
        name: "idle".to_owned(),
        python_cpu_pct: pct(p1 - p0, idle_s),
        machine: Machine::between(&before, &after, Some(gate_pids[0])),
    });

    // Load: the same offered rate to each side in turn.
    let gate_targets = Arc::new(gate_ids);
    let py_targets = Arc::new(py_ids);
    let sides: [(&[u32], &Arc<Vec<String>>); 2] =
        [(&gate_pids, &gate_targets), (&py_pids, &py_targets)];
    let segment = Duration::from_secs_f64(args.load_s / f64::from(args.rounds.max(1)));
    let (mut gate_loads, mut py_loads) = (Vec::new(), Vec::new());
    for &rate in &args.rates {
        eprintln!("leafgate-bench: load {rate}/s, {} s per side", args.load_s);
        let mut runs = [Run::default(), Run::default()];
        let mut cpu = [0.0f64; 2];
        let mut busy = [0.0f64; 2];
        let before = Snapshot::take();
        let t0 = Instant::now();
        let py_cpu0 = cpu_seconds(&py_pids)?;
        for round in 0..args.rounds.max(1) {
            let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
            for s in order {
                let (pids, targets) = sides[s];
                let c0 = cpu_seconds(pids)?;
                let started = Instant::now();
                runs[s].merge(load::offer(&emu, targets, rate, segment).await);
                busy[s] += started.elapsed().as_secs_f64();
                cpu[s] += cpu_seconds(pids)? - c0;
            }
        }
        let py_cpu = cpu_seconds(&py_pids)? - py_cpu0;
        let after = Snapshot::take();
        gate.check_alive()?;
        fleet.check_alive()?;
        phases.push(Phase {
            name: format!("load {rate}/s"),
            python_cpu_pct: pct(py_cpu, t0.elapsed().as_secs_f64()),
            machine: Machine::between(&before, &after, Some(gate_pids[0])),
        });
        let [gate_run, py_run] = runs;
        for (s, run, loads) in [(0, gate_run, &mut gate_loads), (1, py_run, &mut py_loads)] {
            let side = Side::of(run);
            loads.push(SystemLoad {
                offered_rate: rate,
                cpu_s: cpu[s],
                cpu_us_per_method: cpu[s] * 1e6 / side.answered.max(1) as f64,
                cpu_pct: pct(cpu[s], busy[s]),
                side,
            });
        }
    }
    let (gate_after, py_after) = (footprint(&gate_pids)?, footprint(&py_pids)?);

    let stats = emu.stats();
    let reconnects = |ids: &[String]| -> u64 {
        ids.iter()
            .filter_map(|id| stats.get(id))
            .map(|s| s.connects_accepted.saturating_sub(1))
            .sum()
    };
    let (gate_reconnects, py_reconnects) = (reconnects(&gate_targets), reconnects(&py_targets));
    let harness_memory = procfs::memory(std::process::id())?;
    let exit = gate.stop(Duration::from_secs(30))?;
    let py_clean = fleet.stop(Duration::from_secs(15));
    drop(servers);

    let leafgate = System {
        name: "leafgate".to_owned(),
        connect_s: gate_ready.duration_since(gate_started).as_secs_f64(),
        connect_cpu_s: gate_connect_cpu,
        idle_cpu_pct: pct(g1 - g0, idle_s),
        idle: gate_idle,
        after_load: gate_after,
        loads: gate_loads,
        reconnects: gate_reconnects,
        clean_exits: usize::from(exit == Some(0)),
    };
    let python = System {
        name: "Python".to_owned(),
        connect_s: py_ready.duration_since(py_started).as_secs_f64(),
        connect_cpu_s: py_connect_cpu,
        idle_cpu_pct: pct(p1 - p0, idle_s),
        idle: py_idle,
        after_load: py_after,
        loads: py_loads,
        reconnects: py_reconnects,
        clean_exits: py_clean,
    };
    let ratios = ratios(&leafgate, &python);
    let passed = exit == Some(0)
        && leafgate
            .loads
            .iter()
            .chain(&python.loads)
            .all(|l| l.side.errors == 0);
    let report = Report {
        devices: n,
        endpoints,
        units_per_endpoint: upe,
        keep_alive_s: args.keep_alive_s,
        leafgate_log_level: args.leafgate_log_level.clone(),
        load_s: args.load_s,
        rounds: args.rounds.max(1),
        python_version,
        python_packages: REQUIREMENTS
            .lines()
            .filter(|l| l.starts_with("azure-iot-device==") || l.starts_with("pymodbus=="))
            .map(str::to_owned)
            .collect(),
        leafgate,
        python,
        ratios,
        phases,
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

/// CPU seconds over wall seconds, in % of one core.
fn pct(cpu_s: f64, wall_s: f64) -> f64 {
    cpu_s / wall_s.max(1e-9) * 100.0
}

fn ratio(python: f64, leafgate: f64) -> f64 {
    python / leafgate
}

fn ratios(gate: &System, py: &System) -> Ratios {
    Ratios {
        rss: ratio(py.idle.rss_kib as f64, gate.idle.rss_kib as f64),
        pss: ratio(py.idle.pss_kib as f64, gate.idle.pss_kib as f64),
        rss_after_load: ratio(py.after_load.rss_kib as f64, gate.after_load.rss_kib as f64),
        connect_cpu: ratio(py.connect_cpu_s, gate.connect_cpu_s),
        idle_cpu: ratio(py.idle_cpu_pct, gate.idle_cpu_pct),
        loads: gate
            .loads
            .iter()
            .zip(&py.loads)
            .map(|(g, p)| {
                let (gl, pl) = (&g.side.latency, &p.side.latency);
                LoadRatios {
                    offered_rate: g.offered_rate,
                    cpu_per_method: ratio(p.cpu_us_per_method, g.cpu_us_per_method),
                    p50: ratio(pl.p50_us, gl.p50_us),
                    p90: ratio(pl.p90_us, gl.p90_us),
                    p99: ratio(pl.p99_us, gl.p99_us),
                    p999: ratio(pl.p999_us, gl.p999_us),
                    max: ratio(pl.max_us, gl.max_us),
                }
            })
            .collect(),
    }
}

/// CPU seconds of a set of processes, summed.
fn cpu_seconds(pids: &[u32]) -> Result<f64> {
    pids.iter().map(|&pid| procfs::cpu_seconds(pid)).sum()
}

fn footprint(pids: &[u32]) -> Result<Footprint> {
    let mut total = Footprint {
        processes: pids.len(),
        ..Footprint::default()
    };
    for pid in pids {
        let read = |file: &str| {
            let path = format!("/proc/{pid}/{file}");
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))
        };
        let status = read("status")?;
        let rollup = read("smaps_rollup")?;
        total.rss_kib += procfs::field(&status, "VmRSS").unwrap_or(0);
        total.threads += procfs::field(&status, "Threads").unwrap_or(0);
        total.pss_kib += procfs::field(&rollup, "Pss").unwrap_or(0);
    }
    Ok(total)
}

/// `tmp/baseline-venv` in the target directory of this binary (`target/release/..`).
fn default_venv() -> Result<PathBuf> {
    let me = std::env::current_exe().context("cannot find the harness's own path")?;
    let target = me
        .parent()
        .and_then(Path::parent)
        .context("the harness is not inside a target directory; pass --venv")?;
    Ok(target.join("tmp").join("baseline-venv"))
}

/// Runs a command to completion; fails with the end of its output when it fails.
fn run_checked(command: &mut Command, what: &str) -> Result<String> {
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        let text = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        let lines: Vec<&str> = text.lines().collect();
        bail!(
            "{what} failed ({}):\n{}",
            out.status,
            lines[lines.len().saturating_sub(30)..].join("\n")
        );
    }
    Ok(stdout)
}

/// Creates or reuses the baseline's venv: reused when its stamp matches the pins and the Python
/// version, else rebuilt from scratch, the stamp written only after pip succeeded. A lock
/// beside it serializes concurrent runs. Returns its interpreter and the Python version.
fn ensure_venv(python: &Path, dir: &Path) -> Result<(PathBuf, String)> {
    let parent = dir
        .parent()
        .with_context(|| format!("{} has no parent directory", dir.display()))?;
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let lock_path = parent.join(".baseline-venv.lock");
    let lock = File::create(&lock_path)
        .with_context(|| format!("cannot create {}", lock_path.display()))?;
    // SAFETY: flock on a descriptor this function owns; released when `lock` is dropped.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot lock {}", lock_path.display()));
    }
    let version = run_checked(
        Command::new(python).arg("--version"),
        &format!("{} --version", python.display()),
    )?
    .trim()
    .to_owned();
    let venv_python = dir.join("bin").join("python");
    let stamp_path = dir.join(".baseline-stamp");
    let wanted = format!("{version}\n{REQUIREMENTS}");
    if venv_python.exists()
        && std::fs::read_to_string(&stamp_path).is_ok_and(|stamp| stamp == wanted)
    {
        return Ok((venv_python, version));
    }
    eprintln!(
        "leafgate-bench: building the baseline's venv {} ({version}, pip needs PyPI)",
        dir.display()
    );
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    run_checked(
        Command::new(python).arg("-m").arg("venv").arg(dir),
        &format!("{} -m venv {}", python.display(), dir.display()),
    )?;
    let requirements = dir.join("requirements.txt");
    std::fs::write(&requirements, REQUIREMENTS)
        .with_context(|| format!("cannot write {}", requirements.display()))?;
    run_checked(
        Command::new(&venv_python)
            .args(["-m", "pip", "install", "--disable-pip-version-check"])
            .args(["--no-input", "--quiet", "--requirement"])
            .arg(&requirements),
        "pip install of the baseline's requirements (PyPI must be reachable)",
    )?;
    std::fs::write(&stamp_path, &wanted)
        .with_context(|| format!("cannot write {}", stamp_path.display()))?;
    Ok((venv_python, version))
}

/// What one Python device process needs.
struct Device<'a> {
    python: &'a Path,
    script: &'a Path,
    connection_string: &'a str,
    ca: &'a Path,
    mqtt_port: u16,
    modbus: SocketAddr,
    unit: u8,
    keep_alive_s: u64,
    log: &'a Path,
}

/// The Python device processes. Stopped with SIGTERM (then SIGKILL) on [`Fleet::stop`] or drop;
/// each also gets SIGKILL from the kernel if the harness dies first ([`child::die_with_parent`]).
#[derive(Default)]
struct Fleet {
    children: Vec<(Child, PathBuf)>,
}

impl Fleet {
    fn spawn(&mut self, device: &Device<'_>) -> Result<()> {
        let stderr = File::create(device.log)
            .with_context(|| format!("cannot create {}", device.log.display()))?;
        let mut command = Command::new(device.python);
        command
            .arg(device.script)
            .arg("--modbus-host")
            .arg(device.modbus.ip().to_string())
            .arg("--modbus-port")
            .arg(device.modbus.port().to_string())
            .arg("--unit")
            .arg(device.unit.to_string())
            .arg("--keep-alive")
            .arg(device.keep_alive_s.to_string())
            // The key goes in the environment, never in argv (visible to every user in ps).
            .env("IOTHUB_DEVICE_CONNECTION_STRING", device.connection_string)
            .env("IOTHUB_CA_FILE", device.ca)
            .env("LEAFGATE_BASELINE_MQTT_PORT", device.mqtt_port.to_string())
            .env_remove("PYTHONPATH")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        child::die_with_parent(&mut command, libc::SIGKILL);
        let child = command
            .spawn()
            .with_context(|| format!("cannot start {}", device.python.display()))?;
        self.children.push((child, device.log.to_path_buf()));
        Ok(())
    }

    fn pids(&self) -> Vec<u32> {
        self.children.iter().map(|(c, _)| c.id()).collect()
    }

    /// Fails if any process has exited (with the end of its log).
    fn check_alive(&mut self) -> Result<()> {
        for (child, log) in &mut self.children {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "a Python device process exited early ({status}); end of {}:\n{}",
                    log.display(),
                    leafgate_testkit::daemon::tail(log, 20)
                );
            }
        }
        Ok(())
    }

    /// SIGTERM to every process, up to `grace` for them to exit, then SIGKILL. Returns how many
    /// exited by themselves with 0.
    fn stop(&mut self, grace: Duration) -> usize {
        for (child, _) in &mut self.children {
            if let (Ok(None), Ok(pid)) = (child.try_wait(), libc::pid_t::try_from(child.id())) {
                // SAFETY: kill with a pid we spawned and have not reaped yet.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        let until = Instant::now() + grace;
        let mut clean = 0;
        for (child, _) in &mut self.children {
            loop {
                match child.try_wait() {
                    Ok(Some(status)) => {
                        clean += usize::from(status.success());
                        break;
                    }
                    Ok(None) if Instant::now() < until => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                }
            }
        }
        self.children.clear();
        clean
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn times(ratio: f64) -> String {
    if ratio.is_finite() {
        format!("{ratio:.1}×")
    } else {
        "–".to_owned()
    }
}

/// The report as markdown tables.
pub fn render(r: &Report) -> String {
    let mut out = String::new();
    let (g, p, x) = (&r.leafgate, &r.python, &r.ratios);
    let _ = writeln!(
        out,
        "## leafgate-bench baseline: N = {} devices per side, leafgate vs one Python process per device ({}, {}), keep-alive {} s, leafgate log level {}\n",
        r.devices,
        r.python_version,
        r.python_packages.join(", "),
        r.keep_alive_s,
        r.leafgate_log_level
    );
    let _ = writeln!(
        out,
        "| figure | leafgate | Python | Python / leafgate |\n|---|---|---|---|"
    );
    let mut row = |figure: &str, gate: String, python: String, ratio: String| {
        let _ = writeln!(out, "| {figure} | {gate} | {python} | {ratio} |");
    };
    row(
        "processes / threads (idle)",
        format!("{} / {}", g.idle.processes, g.idle.threads),
        format!("{} / {}", p.idle.processes, p.idle.threads),
        String::new(),
    );
    row(
        &format!("connect: start → all {} subscribed", r.devices),
        format!("{:.2} s", g.connect_s),
        format!("{:.2} s", p.connect_s),
        times(p.connect_s / g.connect_s),
    );
    row(
        "connect: CPU (start-up, TLS, MQTT)",
        format!("{:.3} s", g.connect_cpu_s),
        format!("{:.3} s", p.connect_cpu_s),
        times(x.connect_cpu),
    );
    row(
        "idle: RSS total",
        mib(g.idle.rss_kib),
        mib(p.idle.rss_kib),
        times(x.rss),
    );
    row(
        "idle: PSS total (shared pages counted once)",
        mib(g.idle.pss_kib),
        mib(p.idle.pss_kib),
        times(x.pss),
    );
    row(
        "idle: RSS per device",
        format!("{:.0} KiB", g.idle.rss_kib as f64 / r.devices as f64),
        format!("{:.0} KiB", p.idle.rss_kib as f64 / r.devices as f64),
        String::new(),
    );
    row(
        "idle: CPU (% of one core)",
        format!("{:.2} %", g.idle_cpu_pct),
        format!("{:.2} %", p.idle_cpu_pct),
        times(x.idle_cpu),
    );
    for ((gl, pl), lx) in g.loads.iter().zip(&p.loads).zip(&x.loads) {
        let rate = gl.offered_rate;
        row(
            &format!("load {rate}/s: CPU per method"),
            format!("{:.0} µs", gl.cpu_us_per_method),
            format!("{:.0} µs", pl.cpu_us_per_method),
            times(lx.cpu_per_method),
        );
        row(
            &format!("load {rate}/s: CPU (% of one core)"),
            format!("{:.1} %", gl.cpu_pct),
            format!("{:.1} %", pl.cpu_pct),
            times(pl.cpu_pct / gl.cpu_pct),
        );
        row(
            &format!("load {rate}/s: latency p50 / p99"),
            format!(
                "{} / {} ms",
                ms(gl.side.latency.p50_us),
                ms(gl.side.latency.p99_us)
            ),
            format!(
                "{} / {} ms",
                ms(pl.side.latency.p50_us),
                ms(pl.side.latency.p99_us)
            ),
            format!("{} / {}", times(lx.p50), times(lx.p99)),
        );
    }
    row(
        "RSS total after load",
        mib(g.after_load.rss_kib),
        mib(p.after_load.rss_kib),
        times(x.rss_after_load),
    );
    row(
        "reconnects",
        g.reconnects.to_string(),
        p.reconnects.to_string(),
        String::new(),
    );
    row(
        "clean exit after SIGTERM",
        r.leafgate_exit_code
            .map_or("killed".to_owned(), |c| format!("exit {c}")),
        format!("{} of {}", p.clean_exits, p.idle.processes),
        String::new(),
    );

    let _ = writeln!(out, "\nLatency at the caller (`Emulator::invoke`), ms:\n");
    let _ = writeln!(out, "{}", crate::scale::LATENCY_HEADER);
    for ((gl, pl), lx) in g.loads.iter().zip(&p.loads).zip(&x.loads) {
        for (name, s) in [("leafgate", &gl.side), ("Python", &pl.side)] {
            crate::scale::latency_row(&mut out, gl.offered_rate, name, s);
        }
        let _ = writeln!(
            out,
            "| {} | **Python / leafgate** | | | | {} | {} | {} | {} | {} | |",
            gl.offered_rate,
            times(lx.p50),
            times(lx.p90),
            times(lx.p99),
            times(lx.p999),
            times(lx.max)
        );
    }
    for l in g.loads.iter().chain(&p.loads) {
        if !l.side.error_kinds.is_empty() {
            let _ = writeln!(
                out,
                "\nerrors at {}/s: {:?}",
                l.offered_rate, l.side.error_kinds
            );
        }
    }
    let nproc = r.phases.first().map_or(0, |ph| ph.machine.nproc);
    let _ = writeln!(
        out,
        "\nMachine during each phase ({nproc} CPUs; \"others\" include the Python devices):\n"
    );
    for phase in &r.phases {
        let _ = writeln!(
            out,
            "- {}: {}; Python devices {:.0}",
            phase.name,
            phase.machine.summary(),
            phase.python_cpu_pct
        );
    }
    let _ = writeln!(
        out,
        "\nHarness RSS (emulator, simulators, caller): {}",
        mib(r.harness_memory.rss_kib)
    );
    let _ = writeln!(
        out,
        "\nResult: {}",
        if r.passed {
            "PASS (no errors on either side, leafgate exited cleanly)"
        } else {
            "FAIL"
        }
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_footprint() {
        let f = footprint(&[std::process::id()]).unwrap();
        assert!(f.rss_kib > 0 && f.pss_kib > 0 && f.threads > 0);
    }

    #[test]
    fn the_device_script_and_pins_are_built_in() {
        assert!(DEVICE_SCRIPT.contains("IoTHubDeviceClient.create_from_connection_string"));
        assert!(
            REQUIREMENTS
                .lines()
                .any(|l| l.starts_with("azure-iot-device=="))
        );
        assert!(REQUIREMENTS.lines().any(|l| l.starts_with("pymodbus==")));
    }
}

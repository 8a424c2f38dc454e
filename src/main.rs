//! The `leafgate` binary: arguments, logging, signals, exit codes. The library does the work.

mod control;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use leafgate::services::control::client::DEFAULT_SOCKET;
use leafgate::{config, gateway, systemd};
#[cfg(feature = "demo")]
use leafgate_demo as demo;

/// Exit code for a bad config (EX_CONFIG); the unit sets `RestartPreventExitStatus=78` so
/// systemd does not restart-loop on it.
pub(crate) const EXIT_CONFIG: u8 = 78;

#[derive(Parser)]
#[command(
    name = "leafgate",
    version,
    about = "Serve Azure IoT Hub direct methods from Modbus and serial leaf devices"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        /// Config file; drop-ins are read from conf.d/ beside it.
        #[arg(short, long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// Overrides [log] level (off, error, warn, info, debug, trace).
        #[arg(long)]
        log_level: Option<log::LevelFilter>,
    },
    /// Validate the config (and drop-ins) without connecting anything; exit 78 on problems.
    Check {
        #[arg(short, long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// The service's start condition: exit 1 if the config is valid but lists no device
        /// (systemd then skips the start without marking the unit failed). An invalid config
        /// exits 0 here, after naming its problems, so that `leafgate run` refuses it with 78 and
        /// the unit shows as failed instead of silently not running.
        #[arg(long)]
        has_devices: bool,
    },
    /// Run a method on a device now, as a direct method from the hub would (same checks,
    /// deadline and statuses), through the running daemon's control socket; or read one of its
    /// telemetry groups (--group). Prints {"status": ..., "payload": ...} as JSON.
    ///
    /// With --offline there is no daemon: the command opens the device's bus from the config
    /// itself, for commissioning before the hub side exists; it refuses while a daemon runs
    /// that bus or another process holds the serial line.
    ///
    /// Exit codes: 0 status 200; 1 another status; 2 nothing was run (no daemon, no permission,
    /// --offline refused); 78 the config has problems (--offline).
    Call {
        /// The device's id ([[device]] id = "...").
        device: String,
        /// A configured method, or a raw method (modbus.read, modbus.write, serial.send) on a
        /// device with raw_methods = true.
        #[arg(required_unless_present = "group")]
        method: Option<String>,
        /// The method's payload, as JSON text (e.g. '{"speed": 12.5}').
        payload: Option<String>,
        /// Read this telemetry group once instead of calling a method (nothing is sent to the
        /// hub).
        #[arg(long, conflicts_with_all = ["method", "payload"])]
        group: Option<String>,
        /// Open the bus here instead of asking the running daemon.
        #[arg(long)]
        offline: bool,
        /// The config file (--offline only).
        #[arg(short, long, default_value = config::DEFAULT_PATH, requires = "offline")]
        config: PathBuf,
        /// The daemon's control socket ([control] socket).
        #[arg(long, default_value = DEFAULT_SOCKET, conflicts_with = "offline")]
        socket: PathBuf,
    },
    /// Show what the running daemon does: each device (connected or not, since when, its last
    /// connection error), each bus (up, requests queued, units down) and the last warnings and
    /// errors it logged. Exit codes: 0 shown; 2 no daemon answered.
    Status {
        /// The daemon's control socket ([control] socket).
        #[arg(long, default_value = DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Print the daemon's answer as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Write the IoT Plug and Play model of a profile's devices: a DTDL v2 interface whose id is
    /// the profile's model_id, with its methods as commands, its telemetry fields, and its
    /// reported, hardware-read and desired properties.
    ///
    /// The config is checked first, as `check` does. Entries DTDL cannot name (a method called
    /// "set-speed") are left out with a warning on stderr.
    ///
    /// Exit codes: 0 written; 1 no model for this profile (unknown, no model_id, a unit on a field
    /// that is not a number, an output that cannot be written); 78 the config has problems.
    Model {
        /// The profile's id ([[profile]] id = "...").
        profile: String,
        #[arg(short, long, default_value = config::DEFAULT_PATH)]
        config: PathBuf,
        /// The interface's DTMI, instead of the profile's model_id.
        #[arg(long, value_name = "DTMI")]
        id: Option<String>,
        /// Write the model to this file instead of stdout.
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Run everything on this machine: an emulated IoT Hub, simulated Modbus and serial
    /// hardware, and leafgate with the demo site's config (config/demo.toml in the source,
    /// built into the binary); call a few methods and show the answers.
    ///
    /// Exit codes: 0 every round trip answered as expected; 1 one did not (with --once);
    /// 2 the demo could not start.
    #[cfg(feature = "demo")]
    Demo {
        /// Do the round trips and exit instead of serving until Ctrl-C.
        #[arg(long)]
        once: bool,
        /// Port of the emulated hub's MQTT-over-TLS listener on 127.0.0.1 (0: any free port).
        #[arg(long, default_value_t = 0)]
        hub_port: u16,
        /// Port of the emulated hub's service API on 127.0.0.1 (0: any free port).
        #[arg(long, default_value_t = 0)]
        http_port: u16,
        /// Log level of the gateway and the emulator, on stderr (off, error, warn, info, debug,
        /// trace); info shows a line for every method call leafgate serves.
        #[arg(long, default_value = "warn")]
        log_level: log::LevelFilter,
    },
    /// Run only the local IoT Hub emulator (MQTT over TLS + service API) until Ctrl-C.
    #[cfg(feature = "demo")]
    Emulator {
        #[command(flatten)]
        args: leafgate_emulator::EmulatorArgs,
        /// Log level on stderr (off, error, warn, info, debug, trace).
        #[arg(long, default_value = "info")]
        log_level: log::LevelFilter,
    },
}

/// `leafgate demo`: a round trip did not answer as expected (with --once).
#[cfg(feature = "demo")]
const EXIT_DEMO_FAILED: u8 = 1;
/// `leafgate demo` or `leafgate emulator` could not start.
#[cfg(feature = "demo")]
const EXIT_CANNOT_START: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check {
            config,
            has_devices,
        } => check(&config, has_devices),
        Command::Run { config, log_level } => run(&config, log_level),
        Command::Call {
            device,
            method,
            payload,
            group,
            offline,
            config,
            socket,
        } => control::call(
            &control::Call {
                device: &device,
                method: method.as_deref(),
                payload: payload.as_deref(),
                group: group.as_deref(),
                offline,
                config: &config,
                socket: &socket,
            },
            |ask| block_on(control::ask(ask)),
        ),
        Command::Status { socket, json } => {
            control::status(&socket, json, |ask| block_on(control::ask(ask)))
        }
        Command::Model {
            profile,
            config,
            id,
            output,
        } => model(&config, &profile, id.as_deref(), output.as_deref()),
        #[cfg(feature = "demo")]
        Command::Demo {
            once,
            hub_port,
            http_port,
            log_level,
        } => demo(
            &demo::Options {
                once,
                hub_port,
                http_port,
            },
            log_level,
        ),
        #[cfg(feature = "demo")]
        Command::Emulator { args, log_level } => emulator(args, log_level),
    }
}

#[cfg(feature = "demo")]
fn demo(options: &demo::Options, level: log::LevelFilter) -> ExitCode {
    if let Err(e) = systemd::init_logging(level) {
        eprintln!("leafgate: cannot start logging: {e}");
    }
    let summary = match block_on(demo::run(options, &mut std::io::stdout())) {
        Ok(summary) => summary,
        Err(e) => {
            print_error("leafgate demo", &e);
            return ExitCode::from(EXIT_CANNOT_START);
        }
    };
    if options.once && !summary.all_passed() {
        for failure in summary.failures() {
            eprintln!("leafgate demo: round trip {failure}");
        }
        return ExitCode::from(EXIT_DEMO_FAILED);
    }
    ExitCode::SUCCESS
}

#[cfg(feature = "demo")]
fn emulator(args: leafgate_emulator::EmulatorArgs, level: log::LevelFilter) -> ExitCode {
    if let Err(e) = systemd::init_logging(level) {
        eprintln!("leafgate: cannot start logging: {e}");
    }
    match block_on(leafgate_emulator::run_cli(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            print_error("leafgate emulator", &e);
            ExitCode::from(EXIT_CANNOT_START)
        }
    }
}

/// Runs `future` on a fresh multi-threaded runtime; anyhow glues the runtime's error and the
/// future's into one chain.
fn block_on<T, E>(future: impl Future<Output = Result<T, E>>) -> anyhow::Result<T>
where
    E: Into<anyhow::Error>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::Error::new(e).context("cannot start the async runtime"))?;
    runtime.block_on(future).map_err(Into::into)
}

/// `{command}: what failed` then one `caused by:` line per cause, on stderr.
#[cfg(feature = "demo")]
fn print_error(command: &str, error: &anyhow::Error) {
    eprintln!("{command}: {error}");
    for cause in error.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
}

/// `leafgate check --has-devices`: the config is valid and lists no device.
const EXIT_NO_DEVICES: u8 = 1;

fn check(path: &std::path::Path, has_devices: bool) -> ExitCode {
    match config::load(path) {
        Ok(cfg) => {
            for w in &cfg.warnings {
                eprintln!("warning: {w}");
            }
            let methods: usize = cfg.devices.iter().map(|d| d.methods.len()).sum();
            println!(
                "{}: ok ({} file(s), {} bus(es), {} device(s), {} method(s))",
                path.display(),
                cfg.files.len(),
                cfg.buses.len(),
                cfg.devices.len(),
                methods
            );
            if has_devices && cfg.devices.is_empty() {
                eprintln!(
                    "{}: no [[device]] configured; leafgate stays stopped until one is added (then: systemctl start leafgate)",
                    path.display()
                );
                return ExitCode::from(EXIT_NO_DEVICES);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            for p in &e.problems {
                eprintln!("{p}");
            }
            if has_devices {
                // Let `run` refuse it: exit 78 from the main process marks the unit failed and
                // RestartPreventExitStatus=78 stops the restarts. A failing start condition would
                // only skip the start, and a bad config would look like "nothing to do".
                eprintln!(
                    "{}: {} problem(s); starting anyway so that leafgate run reports them and the unit fails",
                    path.display(),
                    e.problems.len()
                );
                return ExitCode::SUCCESS;
            }
            ExitCode::from(EXIT_CONFIG)
        }
    }
}

/// `leafgate model`: no model can be written for the profile.
const EXIT_NO_MODEL: u8 = 1;

fn model(
    path: &std::path::Path,
    profile: &str,
    id: Option<&str>,
    output: Option<&std::path::Path>,
) -> ExitCode {
    let model = match leafgate::model::for_profile(path, profile, id) {
        Ok(model) => model,
        Err(e) => {
            for p in e.problems() {
                eprintln!("{p}");
            }
            if let leafgate::model::Error::Config(c) = &e {
                eprintln!(
                    "{}: {} config problem(s); no model written",
                    path.display(),
                    c.problems.len()
                );
                return ExitCode::from(EXIT_CONFIG);
            }
            eprintln!("leafgate model: profile {profile:?}: {e}");
            return ExitCode::from(EXIT_NO_MODEL);
        }
    };
    for w in &model.warnings {
        eprintln!("warning: {w}");
    }
    let text = model.to_pretty();
    let written = match output {
        Some(file) => {
            std::fs::write(file, text).map_err(|e| format!("cannot write {}: {e}", file.display()))
        }
        None => {
            use std::io::Write as _;
            std::io::stdout()
                .write_all(text.as_bytes())
                .map_err(|e| format!("cannot write to stdout: {e}"))
        }
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("leafgate model: {e}");
            ExitCode::from(EXIT_NO_MODEL)
        }
    }
}

fn run(path: &std::path::Path, level_override: Option<log::LevelFilter>) -> ExitCode {
    if let Err(e) = systemd::init_logging(level_override.unwrap_or(log::LevelFilter::Info)) {
        eprintln!("leafgate: cannot start logging: {e}");
    }
    let cfg = match config::load(path) {
        Ok(cfg) => cfg,
        Err(e) => {
            for p in &e.problems {
                log::error!("{p}");
            }
            log::error!("not starting: {} config problem(s)", e.problems.len());
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    systemd::set_level(level_override.unwrap_or(cfg.log_level));
    for w in &cfg.warnings {
        log::warn!("{w}");
    }
    let options = gateway::service::Options {
        config_path: path.to_path_buf(),
        log_level: level_override,
    };
    match block_on(gateway::service::run(cfg, &options)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

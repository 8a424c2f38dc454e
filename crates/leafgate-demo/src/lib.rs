//! `leafgate demo`: the whole product on one machine, with no Azure account and no hardware.
//!
//! [`Demo::start`] starts the simulated site ([`leafgate_sim::Site`]: a Modbus TCP PLC, an RS-485
//! line with two energy meters on a pty, a bench power supply on another pty), seeds plausible
//! register values, starts the IoT Hub [`leafgate_emulator`], renders `config/demo.toml` (embedded
//! in the binary) with the addresses only known now, loads it with [`leafgate::config::load`] like
//! any site config, and starts the [`Gateway`] on it. [`Demo::round_trips`] then calls a fixed
//! script of direct methods through the service API, as a back-end application would, and checks
//! every answer. [`run`] does all of that, prints the table, and either returns (`once`) or
//! prints ready-to-paste `curl` lines and serves until Ctrl-C or SIGTERM.
//!
//! Logging is the binary's business; this module only writes its table to the given writer.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use leafgate::config::{self, Config};
use leafgate::gateway::{self, Gateway};
use leafgate_emulator::{
    self as emulator, ClientError, Emulator, EmulatorConfig, ServiceClient, WaitTimeout,
};
use leafgate_sim::{self as sim, Site, instrument};

/// The demo config template (`config/demo.toml`), with `@PLACEHOLDER@`s for what is only known
/// at run time; see [`render`].
pub const CONFIG_TEMPLATE: &str = include_str!("../../../config/demo.toml");

/// How long each device may take to come online in the emulator.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// `responseTimeoutInSeconds` of every call (each method's own deadline is 2 s).
const RESPONSE_TIMEOUT_S: u64 = 10;
/// How long in-flight methods may take to finish when the demo stops.
const DRAIN: Duration = Duration::from_secs(5);

/// What `leafgate demo` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Do the round trips and return, instead of serving until Ctrl-C.
    pub once: bool,
    /// MQTT-over-TLS port of the emulated hub on 127.0.0.1; 0 picks a free one.
    pub hub_port: u16,
    /// Service API port of the emulated hub on 127.0.0.1; 0 picks a free one.
    pub http_port: u16,
}

/// Why the demo could not start or go on. A method answered wrongly is not an error: it is a
/// failed [`RoundTrip`] in the [`Summary`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not create a temporary directory for the demo config")]
    TempDir(#[source] io::Error),
    #[error("could not start the simulated hardware")]
    Site(#[source] sim::Error),
    #[error("could not start the IoT Hub emulator")]
    Emulator(#[source] emulator::Error),
    #[error("could not write the demo config to {}", path.display())]
    WriteConfig {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the rendered demo config {} does not load", path.display())]
    Config {
        path: PathBuf,
        #[source]
        source: config::Error,
    },
    #[error("could not start the gateway")]
    Gateway(#[source] gateway::Error),
    #[error("a demo device did not come online in the emulator")]
    NotReady(#[source] Box<WaitTimeout>),
    #[error("could not create the service API client")]
    Client(#[source] ClientError),
    #[error("could not write the demo's output")]
    Output(#[source] io::Error),
    #[error("could not wait for Ctrl-C")]
    Signal(#[source] io::Error),
}

/// Run-time values for the template's placeholders.
#[derive(Debug, Clone)]
pub struct Placeholders<'a> {
    /// `@HUB_PORT@`
    pub hub_port: u16,
    /// `@CA_FILE@`
    pub ca_file: &'a Path,
    /// `@PLC_ADDRESS@`
    pub plc_address: SocketAddr,
    /// `@RTU_PATH@`
    pub rtu_path: &'a Path,
    /// `@PSU_PATH@`
    pub psu_path: &'a Path,
}

/// Substitutes every placeholder in `template` outside comment lines (the header comment that
/// explains them stays readable in the rendered file). Paths go into TOML basic strings, so
/// they are escaped. Pure: no I/O.
#[must_use]
pub fn render(template: &str, values: &Placeholders<'_>) -> String {
    let path = |p: &Path| toml_escape(&p.display().to_string());
    let substitutions = [
        ("@HUB_PORT@", values.hub_port.to_string()),
        ("@CA_FILE@", path(values.ca_file)),
        ("@PLC_ADDRESS@", values.plc_address.to_string()),
        ("@RTU_PATH@", path(values.rtu_path)),
        ("@PSU_PATH@", path(values.psu_path)),
    ];
    let mut out = String::with_capacity(template.len());
    for line in template.split_inclusive('\n') {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut line = line.to_owned();
        for (placeholder, value) in &substitutions {
            line = line.replace(placeholder, value);
        }
        out.push_str(&line);
    }
    out
}

/// Escapes text for the inside of a TOML basic string (`"..."`).
fn toml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

/// Plausible values on the simulated hardware, so replies look like a real site's.
fn seed(site: &Site) {
    let plc = &site.tcp_registers;
    let [speed_hi, speed_lo] = f32_words(850.0);
    let [hours_hi, hours_lo] = u32_words(12_873);
    // speed 850 rpm, 42.3 °C, running, 12873 h.
    plc.set_holding(1, 0, &[speed_hi, speed_lo, 423, 1, hours_hi, hours_lo]);
    let meter = |unit: u8, volts: f32, amps: f32, centi_kwh: u32, centi_hz: u16| {
        let regs = &site.rtu_registers;
        let [v_hi, v_lo] = f32_words(volts);
        let [a_hi, a_lo] = f32_words(amps);
        let [e_hi, e_lo] = u32_words(centi_kwh);
        regs.set_input(unit, 0, &[v_hi, v_lo, a_hi, a_lo]);
        regs.set_input(unit, 10, &[e_hi, e_lo, centi_hz]);
    };
    meter(1, 230.4, 12.47, 1_234_567, 5001);
    meter(2, 231.8, 3.05, 48_213, 4998);
    site.psu.set_state(instrument::State {
        millivolts: 12_000,
        milliamps: 1_500,
        output: false,
    });
}

fn f32_words(value: f32) -> [u16; 2] {
    u32_words(value.to_bits())
}

fn u32_words(value: u32) -> [u16; 2] {
    let [a, b, c, d] = value.to_be_bytes();
    [u16::from_be_bytes([a, b]), u16::from_be_bytes([c, d])]
}

/// One scripted call and what a healthy site answers.
struct Call {
    device: &'static str,
    method: &'static str,
    payload: Value,
    status: u16,
    /// Keys the reply payload must have, with these values (numbers compared as numbers).
    expect: Value,
    /// Shown beside deliberate errors.
    note: Option<&'static str>,
}

/// The round trips, in order; later ones rely on earlier ones (the PSU's output is switched on
/// before it is measured).
fn script() -> Vec<Call> {
    let call = |device, method, payload, status, expect| Call {
        device,
        method,
        payload,
        status,
        expect,
        note: None,
    };
    vec![
        call(
            "plc-1",
            "getStatus",
            json!({}),
            200,
            json!({"speed": 850.0, "temperature": 42.3, "running": true, "run_hours": 12873}),
        ),
        call(
            "plc-1",
            "setSpeed",
            json!({"speed": 1200}),
            200,
            json!({"speed": 1200.0}),
        ),
        call(
            "meter-1",
            "getReadings",
            json!({}),
            200,
            json!({"voltage": 230.4, "current": 12.47, "energy_kwh": 12345.67, "frequency_hz": 50.01}),
        ),
        call(
            "meter-2",
            "getReadings",
            json!({}),
            200,
            json!({"voltage": 231.8, "current": 3.05, "energy_kwh": 482.13, "frequency_hz": 49.98}),
        ),
        call(
            "psu-1",
            "identify",
            json!({}),
            200,
            json!({"maker": "LEAFGATE", "model": "PSU-1", "serial": "0001", "firmware": "1.0"}),
        ),
        call(
            "psu-1",
            "setVoltage",
            json!({"volts": 5.0}),
            200,
            json!({"volts": 5.0}),
        ),
        call("psu-1", "outputOn", json!({}), 200, json!({"output": true})),
        call(
            "psu-1",
            "measure",
            json!({}),
            200,
            json!({"volts": 5.0, "amps": 1.5}),
        ),
        Call {
            note: Some("deliberate: unknown method"),
            ..call(
                "meter-2",
                "calibrate",
                json!({}),
                501,
                json!({"error": "unknown_method"}),
            )
        },
        Call {
            note: Some("deliberate: speed above max 1500"),
            ..call(
                "plc-1",
                "setSpeed",
                json!({"speed": 9000}),
                400,
                json!({"error": "bad_request", "field": "speed"}),
            )
        },
    ]
}

/// What one call got, and whether it was what the script expected.
#[derive(Debug, Clone)]
pub struct RoundTrip {
    pub device: String,
    pub method: String,
    pub request: Value,
    /// The method status the device answered; `None` when no method response arrived.
    pub status: Option<u16>,
    /// The reply payload, or the service API's error body, or the client error text.
    pub response: Value,
    /// From sending the HTTP request to having its whole response, at the caller.
    pub latency: Duration,
    /// Shown beside deliberate errors.
    pub note: Option<String>,
    /// Why the answer was not the expected one; `None` when it was.
    pub problem: Option<String>,
}

impl RoundTrip {
    #[must_use]
    pub fn passed(&self) -> bool {
        self.problem.is_none()
    }
}

/// Every round trip of one demo run.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub round_trips: Vec<RoundTrip>,
}

impl Summary {
    #[must_use]
    pub fn all_passed(&self) -> bool {
        self.round_trips.iter().all(RoundTrip::passed)
    }

    /// One line per failed round trip: `#3 meter-1 getReadings: expected status 200, got 504`.
    #[must_use]
    pub fn failures(&self) -> Vec<String> {
        self.round_trips
            .iter()
            .enumerate()
            .filter_map(|(i, rt)| {
                let problem = rt.problem.as_ref()?;
                Some(format!("#{} {} {}: {problem}", i + 1, rt.device, rt.method))
            })
            .collect()
    }
}

/// Compares a method's answer with the script; `None` if it is as expected.
fn check(call: &Call, status: u16, payload: &Value) -> Option<String> {
    if status != call.status {
        return Some(format!(
            "expected status {}, got {status} {payload}",
            call.status
        ));
    }
    let Value::Object(want) = &call.expect else {
        return None;
    };
    let mismatches: Vec<String> = want
        .iter()
        .filter_map(|(key, want)| {
            let got = payload.get(key).unwrap_or(&Value::Null);
            (!same(want, got)).then(|| format!("{key}: expected {want}, got {got}"))
        })
        .collect();
    (!mismatches.is_empty()).then(|| mismatches.join("; "))
}

/// JSON equality, with numbers compared by value (1200 == 1200.0).
fn same(want: &Value, got: &Value) -> bool {
    match (want.as_f64(), got.as_f64()) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(1.0),
        _ => want == got,
    }
}

/// A temporary directory removed on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    /// `$TMPDIR/leafgate-demo-{pid}-{random}`, mode 0700.
    fn create() -> io::Result<TempDir> {
        use std::os::unix::fs::DirBuilderExt as _;
        let base = std::env::temp_dir();
        let mut last = None;
        for _ in 0..8 {
            let path = base.join(format!(
                "leafgate-demo-{}-{:08x}",
                std::process::id(),
                rand::random::<u32>()
            ));
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(TempDir(path)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free temporary directory name")))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running demo: simulated site, emulated hub, and the gateway between them. End it with
/// [`Demo::shutdown`]: dropping it stops the emulator and the site, but the gateway's tasks run
/// on until the runtime ends (a `Gateway` stops only through its `shutdown`).
pub struct Demo {
    gateway: Option<Gateway>,
    client: ServiceClient,
    emulator: Emulator,
    site: Site,
    config: Config,
    dir: TempDir,
}

impl std::fmt::Debug for Demo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Demo")
            .field("emulator", &self.emulator)
            .field("site", &self.site)
            .field("dir", &self.dir.0)
            .finish_non_exhaustive()
    }
}

impl Demo {
    /// Starts the site, the emulator and the gateway, and waits until every device is online
    /// and subscribed to methods.
    ///
    /// # Errors
    /// When a pty cannot be opened, a port cannot be bound, the rendered config does not load,
    /// or a device does not come online within 10 s.
    pub async fn start(options: &Options) -> Result<Demo, Error> {
        let dir = TempDir::create().map_err(Error::TempDir)?;
        let site = Site::start().await.map_err(Error::Site)?;
        seed(&site);
        let ca_file = dir.0.join("ca.pem");
        let emulator = Emulator::start(EmulatorConfig {
            mqtt_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, options.hub_port)),
            http_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, options.http_port)),
            ca_path: Some(ca_file.clone()),
            ..EmulatorConfig::default()
        })
        .await
        .map_err(Error::Emulator)?;
        let text = render(
            CONFIG_TEMPLATE,
            &Placeholders {
                hub_port: emulator.mqtt_addr().port(),
                ca_file: &ca_file,
                plc_address: site.modbus_tcp.addr(),
                rtu_path: site.rtu_line.path(),
                psu_path: site.psu_line.path(),
            },
        );
        let path = dir.0.join("leafgate.toml");
        std::fs::write(&path, text).map_err(|source| Error::WriteConfig {
            path: path.clone(),
            source,
        })?;
        let config = config::load(&path).map_err(|source| Error::Config {
            path: path.clone(),
            source,
        })?;
        for device in &config.devices {
            emulator.add_device(&device.id, device.key.clone());
        }
        let client =
            ServiceClient::new(emulator.http_addr(), &emulator.service_connection_string())
                .map_err(Error::Client)?;
        let gateway = Gateway::start(&config).map_err(Error::Gateway)?;
        for device in &config.devices {
            if let Err(e) = emulator.wait_method_ready(&device.id, READY_TIMEOUT).await {
                gateway.shutdown(DRAIN).await;
                return Err(Error::NotReady(Box::new(e)));
            }
        }
        Ok(Demo {
            gateway: Some(gateway),
            client,
            emulator,
            site,
            config,
            dir,
        })
    }

    /// The emulated hub's MQTT-over-TLS listener.
    #[must_use]
    pub fn hub_addr(&self) -> SocketAddr {
        self.emulator.mqtt_addr()
    }

    /// The emulated hub's service API (plain HTTP).
    #[must_use]
    pub fn service_addr(&self) -> SocketAddr {
        self.emulator.http_addr()
    }

    /// The rendered config the gateway runs with (removed when the demo ends).
    #[must_use]
    pub fn config_path(&self) -> &Path {
        self.config
            .files
            .first()
            .map_or(&self.dir.0, PathBuf::as_path)
    }

    /// The simulated hardware, to look at or steer while the demo runs.
    #[must_use]
    pub fn site(&self) -> &Site {
        &self.site
    }

    /// A service SAS token for the emulated hub, valid for an hour.
    #[must_use]
    pub fn token(&self) -> String {
        self.client.token()
    }

    /// Calls the scripted methods one after another and checks every answer.
    pub async fn round_trips(&self) -> Summary {
        let mut round_trips = Vec::new();
        for call in script() {
            round_trips.push(self.round_trip(&call).await);
        }
        Summary { round_trips }
    }

    async fn round_trip(&self, call: &Call) -> RoundTrip {
        let started = Instant::now();
        let result = self
            .client
            .invoke(
                call.device,
                call.method,
                call.payload.clone(),
                RESPONSE_TIMEOUT_S,
            )
            .await;
        let latency = started.elapsed();
        let (status, response, problem) = match result {
            Ok((200, body)) => {
                let status = body["status"].as_u64().and_then(|s| u16::try_from(s).ok());
                let payload = body["payload"].clone();
                match status {
                    Some(status) => {
                        let problem = check(call, status, &payload);
                        (Some(status), payload, problem)
                    }
                    None => (None, body, Some("no status in the answer".to_owned())),
                }
            }
            Ok((http, body)) => {
                let problem = format!("service API answered HTTP {http}");
                (None, body, Some(problem))
            }
            Err(e) => {
                let text = error_chain(&e);
                (None, Value::String(text.clone()), Some(text))
            }
        };
        RoundTrip {
            device: call.device.to_owned(),
            method: call.method.to_owned(),
            request: call.payload.clone(),
            status,
            response,
            latency,
            note: call.note.map(str::to_owned),
            problem,
        }
    }

    /// Ready-to-paste `curl` lines calling the demo's methods through the service API.
    #[must_use]
    pub fn curl_lines(&self) -> Vec<String> {
        let token = self.token();
        [
            ("plc-1", "getStatus", json!({})),
            ("plc-1", "setSpeed", json!({"speed": 900})),
            ("meter-1", "getReadings", json!({})),
            ("meter-2", "getReadings", json!({})),
            ("psu-1", "setVoltage", json!({"volts": 12.0})),
            ("psu-1", "measure", json!({})),
        ]
        .into_iter()
        .map(|(device, method, payload)| {
            let body = json!({
                "methodName": method,
                "payload": payload,
                "responseTimeoutInSeconds": RESPONSE_TIMEOUT_S,
            });
            format!(
                "curl -s -X POST 'http://{}/twins/{device}/methods?api-version=2021-04-12' \
                 -H 'Authorization: {token}' -H 'Content-Type: application/json' -d '{body}'",
                self.service_addr()
            )
        })
        .collect()
    }

    /// Stops the gateway (methods in flight finish), then the emulator and the simulated site,
    /// and removes the rendered config.
    pub async fn shutdown(mut self) {
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown(DRAIN).await;
        }
        let Demo {
            emulator,
            site,
            dir,
            ..
        } = self;
        emulator.shutdown().await;
        drop(site);
        drop(dir);
    }
}

/// The whole demo: starts it, writes what runs where, does the round trips and writes the
/// table; with `once` stops and returns, otherwise writes how to call methods yourself and
/// serves until Ctrl-C or SIGTERM.
///
/// # Errors
/// When the demo cannot start ([`Demo::start`]), `out` cannot be written, or the signals cannot
/// be awaited. Wrong answers are not errors: see [`Summary::all_passed`].
pub async fn run(options: &Options, out: &mut impl Write) -> Result<Summary, Error> {
    let demo = Demo::start(options).await?;
    let result = present(&demo, options, out).await;
    demo.shutdown().await;
    result
}

async fn present(demo: &Demo, options: &Options, out: &mut impl Write) -> Result<Summary, Error> {
    write_out(out, &header(demo))?;
    let summary = demo.round_trips().await;
    write_out(out, &table(&summary))?;
    if options.once {
        return Ok(summary);
    }
    write_out(out, &invitation(demo))?;
    wait_for_stop().await.map_err(Error::Signal)?;
    write_out(out, "\nstopping: finishing methods in flight\n")?;
    Ok(summary)
}

fn write_out(out: &mut impl Write, text: &str) -> Result<(), Error> {
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(Error::Output)
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn wait_for_stop() -> io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result,
        _ = term.recv() => Ok(()),
    }
}

/// What runs where.
fn header(demo: &Demo) -> String {
    let site = demo.site();
    let devices: Vec<&str> = demo.config.devices.iter().map(|d| d.id.as_str()).collect();
    let mut text = String::new();
    let _ = writeln!(
        text,
        "leafgate demo: emulated IoT Hub + simulated hardware + leafgate, all on this machine\n"
    );
    for (what, where_) in [
        (
            "IoT Hub (MQTT/TLS)",
            format!("{} (host name localhost)", demo.hub_addr()),
        ),
        ("service API", format!("http://{}", demo.service_addr())),
        (
            "Modbus TCP PLC",
            format!("{}, unit 1", site.modbus_tcp.addr()),
        ),
        (
            "RS-485 line",
            format!(
                "{}, Modbus RTU units 1 and 2",
                site.rtu_line.path().display()
            ),
        ),
        (
            "power supply",
            format!("{}, text lines", site.psu_line.path().display()),
        ),
        ("config", demo.config_path().display().to_string()),
        (
            "devices online",
            format!("{} ({})", devices.len(), devices.join(", ")),
        ),
    ] {
        let _ = writeln!(text, "  {what:<20}{where_}");
    }
    text.push('\n');
    text
}

/// The round trips as a table: request on the left, response on the right, then a verdict.
fn table(summary: &Summary) -> String {
    struct Row {
        mark: &'static str,
        device: String,
        method: String,
        request: String,
        status: String,
        response: String,
        latency: String,
    }
    let rows: Vec<Row> = summary
        .round_trips
        .iter()
        .map(|rt| Row {
            mark: if rt.passed() { "ok" } else { "FAIL" },
            device: rt.device.clone(),
            method: rt.method.clone(),
            request: rt.request.to_string(),
            status: rt
                .status
                .map_or_else(|| "---".to_owned(), |s| s.to_string()),
            response: rt.response.to_string(),
            latency: format!("{:.1} ms", rt.latency.as_secs_f64() * 1000.0),
        })
        .collect();
    let width =
        |f: fn(&Row) -> usize, title: &str| rows.iter().map(f).max().unwrap_or(0).max(title.len());
    let wd = width(|r| r.device.len(), "device");
    let wm = width(|r| r.method.len(), "method");
    let wr = width(|r| r.request.len(), "payload");
    let wl = width(|r| r.latency.len(), "latency");
    let mut text = String::new();
    let _ = writeln!(
        text,
        "     {:<w$}     response (from the service API)",
        "request (to the service API)",
        w = wd + wm + wr + 4
    );
    let _ = writeln!(
        text,
        "     {:<wd$}  {:<wm$}  {:<wr$}     {:<6}  {:>wl$}  payload",
        "device", "method", "payload", "status", "latency"
    );
    for (row, rt) in rows.iter().zip(&summary.round_trips) {
        let _ = write!(
            text,
            "{:<4} {:<wd$}  {:<wm$}  {:<wr$}  →  {:<6}  {:>wl$}  {}",
            row.mark, row.device, row.method, row.request, row.status, row.latency, row.response
        );
        if let Some(note) = &rt.note {
            let _ = write!(text, "   ({note})");
        }
        text.push('\n');
        if let Some(problem) = &rt.problem {
            let _ = writeln!(text, "     ^ {problem}");
        }
    }
    let passed = summary.round_trips.iter().filter(|rt| rt.passed()).count();
    let mut ms: Vec<f64> = summary
        .round_trips
        .iter()
        .map(|rt| rt.latency.as_secs_f64() * 1000.0)
        .collect();
    ms.sort_by(f64::total_cmp);
    let _ = write!(
        text,
        "\n{passed} of {} round trips answered as expected",
        summary.round_trips.len()
    );
    if let (Some(min), Some(max)) = (ms.first(), ms.last()) {
        let median = ms.get(ms.len() / 2).copied().unwrap_or(*min);
        let _ = write!(
            text,
            "; latency at the caller: min {min:.1} ms, median {median:.1} ms, max {max:.1} ms"
        );
    }
    text.push('\n');
    text
}

/// How to call the demo's methods yourself.
fn invitation(demo: &Demo) -> String {
    let mut text = String::new();
    let _ = writeln!(
        text,
        "\nThe demo keeps running. Call its methods yourself through the emulated service API:\n"
    );
    let _ = writeln!(text, "  service API   http://{}", demo.service_addr());
    let _ = writeln!(text, "  token (1 h)   {}\n", demo.token());
    for line in demo.curl_lines() {
        let _ = writeln!(text, "{line}\n");
    }
    let _ = writeln!(text, "Press Ctrl-C to stop.");
    text
}

/// An error and its causes on one line (`what: cause: cause`), for a failed call in the table.
fn error_chain(error: &dyn std::error::Error) -> String {
    leafgate::chain::chain(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(dir: &'a Path, ca: &'a Path) -> Placeholders<'a> {
        Placeholders {
            hub_port: 18883,
            ca_file: ca,
            plc_address: "127.0.0.1:1502".parse().unwrap(),
            rtu_path: dir,
            psu_path: Path::new("/dev/pts/7"),
        }
    }

    #[test]
    fn rendering_leaves_no_placeholder_and_escapes_paths() {
        let ca = Path::new("/tmp/odd \"dir\"\\ca.pem");
        let text = render(CONFIG_TEMPLATE, &sample(Path::new("/dev/pts/3"), ca));
        let left = regex::Regex::new("@[A-Z_]+@").unwrap();
        // Only the header comment may still name placeholders.
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            assert!(!left.is_match(line), "{line}");
        }
        assert!(
            text.contains("#   @HUB_PORT@ "),
            "the header comment is left as it is"
        );
        assert!(text.contains("port = 18883\n"));
        assert!(text.contains(r#"ca_file = "/tmp/odd \"dir\"\\ca.pem""#));
        assert!(text.contains(r#"address = "127.0.0.1:1502""#));
        assert!(text.contains(r#"path = "/dev/pts/3""#));
        assert!(text.contains(r#"path = "/dev/pts/7""#));
    }

    #[test]
    fn the_rendered_template_loads_with_four_devices_and_their_methods() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        // `config::load` parses ca_file (a bad one is a config problem), so it must be real.
        let ca_pem = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
            .unwrap()
            .cert
            .pem();
        std::fs::write(&ca, ca_pem).unwrap();
        let path = dir.path().join("leafgate.toml");
        std::fs::write(&path, render(CONFIG_TEMPLATE, &sample(dir.path(), &ca))).unwrap();
        let cfg = config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let methods: Vec<(&str, Vec<&str>)> = cfg
            .devices
            .iter()
            .map(|d| {
                (
                    d.id.as_str(),
                    d.methods.keys().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            methods,
            [
                ("plc-1", vec!["getStatus", "setSpeed"]),
                ("meter-1", vec!["getReadings"]),
                ("meter-2", vec!["getReadings"]),
                (
                    "psu-1",
                    vec!["identify", "measure", "outputOn", "setVoltage"]
                ),
            ]
        );
        // Every scripted call except the deliberate unknown method exists.
        for call in script() {
            let device = cfg.devices.iter().find(|d| d.id == call.device).unwrap();
            assert_eq!(
                device.methods.contains_key(call.method),
                call.status != 501,
                "{} {}",
                call.device,
                call.method
            );
        }
    }

    #[test]
    fn answers_are_checked_by_status_and_key_values() {
        let call = Call {
            device: "d",
            method: "m",
            payload: json!({}),
            status: 200,
            expect: json!({"speed": 1200.0, "running": true}),
            note: None,
        };
        let cases = [
            (
                200,
                json!({"speed": 1200, "running": true, "extra": 1}),
                None,
            ),
            (
                200,
                json!({"speed": 1199.5, "running": true}),
                Some("speed: expected 1200.0, got 1199.5"),
            ),
            (
                200,
                json!({"speed": 1200.0}),
                Some("running: expected true, got null"),
            ),
            (
                504,
                json!({"error": "device_timeout"}),
                Some(r#"expected status 200, got 504 {"error":"device_timeout"}"#),
            ),
        ];
        for (status, payload, want) in cases {
            assert_eq!(check(&call, status, &payload).as_deref(), want, "{payload}");
        }
    }

    #[test]
    fn registers_are_seeded_high_word_first() {
        assert_eq!(f32_words(850.0), [0x4454, 0x8000]);
        assert_eq!(u32_words(1_234_567), [0x0012, 0xD687]);
    }
}

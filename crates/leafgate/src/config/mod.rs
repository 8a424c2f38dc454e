//! Configuration: the file schema, loading with drop-ins, and whole-config validation.
//!
//! `load(path)` reads the base file and `conf.d/*.toml` beside it (name order), combines their
//! buses, devices and profiles, and validates the whole. Every problem is reported as
//! `FILE: path.to.key: message`.

pub mod error;
mod lenient;
mod literal;
pub mod load;
pub mod path;
pub mod schema;
pub mod suggest;
pub mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use crate::bus::spec::{Bus, BusSpec, Line, SerialFraming};
pub use crate::hub::Settings as Hub;
pub use error::{Error, Problem};

use crate::hub::auth::Auth;
use crate::hub::settings::Transport;
use crate::mapping::Method;
use crate::mapping::group::Group;

/// The default config path used by the packaged service.
pub const DEFAULT_PATH: &str = "/etc/leafgate/leafgate.toml";

/// A validated config, ready to build buses and sessions from.
#[derive(Debug, Clone)]
pub struct Config {
    pub hub: Hub,
    pub telemetry: Telemetry,
    /// Where to serve Prometheus metrics (`[metrics] listen`), when the section is there.
    pub metrics: Option<std::net::SocketAddr>,
    /// The control socket (`[control] socket`), unless turned off.
    pub control: Option<PathBuf>,
    pub log_level: log::LevelFilter,
    pub buses: Vec<Bus>,
    pub devices: Vec<Device>,
    /// The files it came from, base first.
    pub files: Vec<PathBuf>,
    /// Things worth fixing that do not stop leafgate (files with keys readable by others).
    pub warnings: Vec<Problem>,
}

/// `[telemetry]`, validated (defaults when the section is absent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Telemetry {
    /// Device-to-cloud messages per second, for the whole gateway.
    pub max_messages_per_s: u32,
    /// Messages one device may have awaiting their PUBACK.
    pub window: u16,
    /// Readings one device keeps in memory while they cannot be stored; the oldest goes first.
    pub backlog: usize,
    /// The SQLite file readings wait in; `None`: memory only.
    pub store: Option<std::path::PathBuf>,
    /// How often readings are committed to the store: what a kill -9 can lose.
    pub commit_interval: std::time::Duration,
    pub store_max_bytes: u64,
    pub store_max_age: std::time::Duration,
}

#[derive(Debug, Clone)]
pub struct Device {
    pub id: String,
    /// Its key or its certificate.
    pub auth: Auth,
    /// Its own transport, if it does not use `[hub] transport`.
    pub transport: Option<Transport>,
    /// Registers with DPS (`[provisioning]`) to learn its hub.
    pub provisioned: bool,
    pub bus: String,
    /// Modbus unit id (0 for serial devices).
    pub unit: u8,
    /// The raw methods' deadline when they are on.
    pub raw_methods: Option<std::time::Duration>,
    pub methods: BTreeMap<String, Arc<Method>>,
    /// Telemetry groups: the profile's, then the device's own (which replace the profile's of
    /// the same name).
    pub telemetry: Vec<Arc<Group>>,
    /// Its IoT Plug and Play model (DTMI): the device's own, else its profile's.
    pub model_id: Option<String>,
    /// Its device twin, when `[twin]` is configured.
    pub twin: Option<Twin>,
    /// Cloud-to-device commands, when `[c2d]` is configured.
    pub c2d: Option<Arc<C2d>>,
    /// Changes whenever the device's section changes; used by reload to restart only what changed.
    pub fingerprint: String,
}

/// `[twin]`, validated: how every device's twin is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TwinSettings {
    /// Changes to reported properties within this time go out as one PATCH.
    pub report_interval: std::time::Duration,
    /// How long a twin request may go unanswered before it counts as lost.
    pub request_timeout: std::time::Duration,
    /// Twin reads (GET) per second for the whole gateway.
    pub max_gets_per_s: u32,
    /// Reported-property updates (PATCH) per second for the whole gateway.
    pub max_patches_per_s: u32,
}

/// One device's twin: the settings and what the config maps to its properties.
#[derive(Debug, Clone)]
pub struct Twin {
    pub settings: Arc<TwinSettings>,
    /// Reported as they are: the profile's, then the device's own (which win).
    pub reported: BTreeMap<String, serde_json::Value>,
    /// Read from the hardware and reported under their fields' names.
    pub properties: Vec<Arc<Property>>,
    /// Desired property name → the writes that apply it.
    pub desired: BTreeMap<String, Arc<Method>>,
}

/// A property read from the hardware: the read, and how often it is repeated after the read
/// that follows every connect.
#[derive(Debug, Clone)]
pub struct Property {
    pub read: Arc<Method>,
    pub interval: Option<std::time::Duration>,
}

/// `[c2d]`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct C2d {
    /// The application property that names the method a message runs.
    pub method_property: String,
    /// A message id seen again within this time is not run again.
    pub dedup_window: std::time::Duration,
    /// Send each command's outcome as a device-to-cloud message.
    pub report: bool,
}

/// Loads and validates the base file and its drop-ins.
///
/// # Errors
/// Every problem found, each naming its file and key: every unknown key and wrong value in
/// every file, and what the validation of the rest finds.
pub fn load(path: &Path) -> Result<Config, Error> {
    let files = load::files(path).map_err(|p| Error { problems: vec![p] })?;
    let mut parsed = Vec::new();
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut withdrawn = std::collections::BTreeSet::new();
    // Key paths already accounted for: reported as wrong, or suggested for a misspelt key.
    let mut reported = std::collections::BTreeSet::new();
    let mut complete = true;
    for file in &files {
        let read = load::read(file);
        reported.extend((read.problems.iter()).map(|p| (file.clone(), p.path.clone())));
        reported.extend(read.meant.into_iter().map(|path| (file.clone(), path)));
        problems.extend(read.problems);
        warnings.extend(read.warnings);
        withdrawn.extend(read.withdrawn);
        match read.config {
            Some(cfg) => parsed.push((file.clone(), cfg)),
            // Without one file, the others' references to what it defines would all fail.
            None => complete = false,
        }
    }
    if !complete {
        return Err(Error { problems });
    }
    match validate::validate_with(parsed, &withdrawn) {
        Ok(mut cfg) if problems.is_empty() => {
            cfg.warnings.append(&mut warnings);
            Ok(cfg)
        }
        Ok(_) => Err(Error { problems }),
        Err(found) => {
            // A key reported as wrong was left out: its absence is not news.
            problems.extend(
                found
                    .into_iter()
                    .filter(|p| !reported.contains(&(p.file.clone(), p.path.clone()))),
            );
            // In file order; within a file, what reading found, then what validation found.
            problems.sort_by_key(|p| files.iter().position(|f| *f == p.file));
            Err(Error { problems })
        }
    }
}

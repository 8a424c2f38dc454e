//! The config file's schema, as written by users. Closed: every struct denies unknown keys.
//!
//! These types only describe one file. `load` merges files and `validate` checks the whole,
//! including references between sections, and turns it into the runtime [`super::Config`].
//! Every key here is documented in `config/leafgate.toml` and the README; keep them in step.

use std::path::PathBuf;

use serde::Deserialize;

pub use crate::bus::op::Table;
pub use crate::bus::spec::{BusKind, Parity, TcpFraming};
pub use crate::hub::settings::Transport;
pub use crate::mapping::schema::{
    Constant, DataType, FieldConfig, GroupConfig, MethodConfig, Order, PropertyConfig, ReplyKind,
    StepConfig, StepOp,
};

/// One file: the base file or a `conf.d` drop-in.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub hub: Option<HubConfig>,
    pub log: Option<LogConfig>,
    pub telemetry: Option<TelemetryConfig>,
    pub twin: Option<TwinConfig>,
    pub c2d: Option<C2dConfig>,
    pub provisioning: Option<ProvisioningConfig>,
    pub metrics: Option<MetricsConfig>,
    pub control: Option<ControlConfig>,
    #[serde(default)]
    pub bus: Vec<BusConfig>,
    #[serde(default)]
    pub device: Vec<DeviceConfig>,
    #[serde(default)]
    pub profile: Vec<ProfileConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubConfig {
    /// IoT hub host name, e.g. `myhub.azure-devices.net`: used in usernames and SAS scopes.
    /// Optional with `[provisioning]`, which assigns each device its hub.
    pub hostname: Option<String>,
    /// Connect here instead (an IoT Edge parent) while still authenticating to `hostname`.
    pub gateway_hostname: Option<String>,
    /// Extra trusted root certificate(s), PEM; the system roots are always trusted too.
    pub ca_file: Option<PathBuf>,
    #[serde(default = "defaults::port")]
    pub port: u16,
    /// `mqtt` (8883) or `websocket` (443), for devices that do not say otherwise.
    #[serde(default)]
    pub transport: Transport,
    #[serde(default = "defaults::websocket_port")]
    pub websocket_port: u16,
    /// `http://[user@]host:port`: every hub connection goes through it with CONNECT.
    pub proxy: Option<String>,
    /// The proxy user's password, alone in a file (never in the config).
    pub proxy_password_file: Option<PathBuf>,
    #[serde(default = "defaults::keep_alive_s")]
    pub keep_alive_s: u64,
    #[serde(default = "defaults::sas_ttl_s")]
    pub sas_ttl_s: u64,
    #[serde(default = "defaults::max_connects_per_s")]
    pub max_connects_per_s: u32,
    #[serde(default = "defaults::max_payload_bytes")]
    pub max_payload_bytes: usize,
    #[serde(default = "defaults::connect_timeout_s")]
    pub connect_timeout_s: u64,
    #[serde(default = "defaults::reconnect_min_ms")]
    pub reconnect_min_ms: u64,
    #[serde(default = "defaults::reconnect_max_ms")]
    pub reconnect_max_ms: u64,
}

/// `[metrics]`: the Prometheus endpoint, off unless the section is there.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// `ip:port` to serve `GET /metrics` on (default 127.0.0.1:9464).
    pub listen: Option<String>,
}

/// Where the packaged service's control socket is: in the unit's `RuntimeDirectory=leafgate`.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/leafgate/control.sock";

/// `[control]`: the local socket `leafgate call` and `leafgate status` talk to. On by default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// An absolute path; `""` turns the socket off.
    #[serde(default = "defaults::control_socket")]
    pub socket: String,
}

/// `[telemetry]`: how readings travel, for every device that has telemetry groups.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    #[serde(default = "defaults::max_messages_per_s")]
    pub max_messages_per_s: u32,
    #[serde(default = "defaults::window")]
    pub window: u16,
    #[serde(default = "defaults::backlog")]
    pub backlog: usize,
    #[serde(default = "defaults::store")]
    pub store: String,
    #[serde(default = "defaults::commit_interval_ms")]
    pub commit_interval_ms: u64,
    #[serde(default = "defaults::store_max_mb")]
    pub store_max_mb: u64,
    #[serde(default = "defaults::store_max_age_h")]
    pub store_max_age_h: u64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            max_messages_per_s: defaults::max_messages_per_s(),
            window: defaults::window(),
            backlog: defaults::backlog(),
            store: defaults::store(),
            commit_interval_ms: defaults::commit_interval_ms(),
            store_max_mb: defaults::store_max_mb(),
            store_max_age_h: defaults::store_max_age_h(),
        }
    }
}

/// `[twin]`: every device keeps its device twin: leafgate's view of it under `leafgate`, its
/// static and hardware-read properties, and desired properties written to the hardware.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TwinConfig {
    #[serde(default = "defaults::report_interval_ms")]
    pub report_interval_ms: u64,
    #[serde(default = "defaults::request_timeout_ms")]
    pub request_timeout_ms: u64,
    #[serde(default = "defaults::max_gets_per_s")]
    pub max_gets_per_s: u32,
    #[serde(default = "defaults::max_patches_per_s")]
    pub max_patches_per_s: u32,
}

/// `[provisioning]`: devices register with the Device Provisioning Service to learn their hub.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningConfig {
    pub id_scope: String,
    #[serde(default = "defaults::global_endpoint")]
    pub global_endpoint: String,
    #[serde(default = "defaults::port")]
    pub port: u16,
    /// An enrollment group's symmetric key: each device's key is derived from it.
    pub group_key: Option<Secret>,
    pub group_key_file: Option<PathBuf>,
    #[serde(default = "defaults::max_registrations_per_s")]
    pub max_registrations_per_s: u32,
    #[serde(default = "defaults::registration_timeout_s")]
    pub timeout_s: u64,
    #[serde(default = "defaults::provisioning_cache")]
    pub cache: String,
}

/// `[c2d]`: every device takes cloud-to-device messages that name one of its methods.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct C2dConfig {
    #[serde(default = "defaults::method_property")]
    pub method_property: String,
    #[serde(default = "defaults::dedup_window_s")]
    pub dedup_window_s: u64,
    #[serde(default)]
    pub report: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default = "defaults::log_level")]
    pub level: String,
}

/// One physical bus. A flat struct rather than an enum per kind so that a key given to the wrong
/// kind gets a clear "does not apply" message instead of serde's generic one.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    pub id: String,
    pub kind: BusKind,
    // modbus_tcp
    pub address: Option<String>,
    pub framing: Option<TcpFraming>,
    // modbus_rtu and serial
    pub path: Option<PathBuf>,
    pub baud_rate: Option<u32>,
    pub parity: Option<Parity>,
    pub data_bits: Option<u8>,
    pub stop_bits: Option<u8>,
    // modbus_rtu
    pub frame_gap_us: Option<u64>,
    // serial: written after each text request, and the replies' terminator unless another
    // framing is given
    pub line_ending: Option<String>,
    // serial framing: exactly one of these (or line_ending alone)
    pub terminator: Option<String>,
    pub reply_length: Option<usize>,
    pub idle_gap_ms: Option<u64>,
    // all kinds
    pub timeout_ms: Option<u64>,
    pub queue_capacity: Option<usize>,
    pub retries: Option<u32>,
    pub reconnect_min_ms: Option<u64>,
    pub reconnect_max_ms: Option<u64>,
    pub down_after: Option<u32>,
    pub down_for_ms: Option<u64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceConfig {
    pub id: String,
    pub connection_string: Option<Secret>,
    pub shared_access_key: Option<Secret>,
    pub shared_access_key_file: Option<PathBuf>,
    /// X.509 authentication: the device certificate (PEM, leaf first) and its private key.
    pub certificate_file: Option<PathBuf>,
    pub private_key_file: Option<PathBuf>,
    /// This device's transport, if not `[hub] transport`.
    pub transport: Option<Transport>,
    pub bus: String,
    pub unit: Option<u8>,
    pub profile: Option<String>,
    #[serde(default)]
    pub raw_methods: bool,
    /// The raw methods' deadline (default `mapping::raw::TIMEOUT`).
    pub raw_methods_timeout_ms: Option<u64>,
    pub model_id: Option<String>,
    #[serde(default)]
    pub method: Vec<MethodConfig>,
    #[serde(default)]
    pub telemetry: Vec<GroupConfig>,
    #[serde(default)]
    pub reported: std::collections::BTreeMap<String, Constant>,
    #[serde(default)]
    pub property: Vec<PropertyConfig>,
    #[serde(default)]
    pub desired: Vec<MethodConfig>,
}

/// Text holding a key: `Debug` never shows it, so a debug log of the config leaks nothing.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Length and a hash let reload notice a changed key without showing it.
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(self.0.as_bytes());
        write!(
            f,
            "Secret(<redacted, sha256 {:02x}{:02x}{:02x}{:02x}>)",
            digest[0], digest[1], digest[2], digest[3]
        )
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileConfig {
    pub id: String,
    pub model_id: Option<String>,
    #[serde(default)]
    pub method: Vec<MethodConfig>,
    #[serde(default)]
    pub telemetry: Vec<GroupConfig>,
    #[serde(default)]
    pub reported: std::collections::BTreeMap<String, Constant>,
    #[serde(default)]
    pub property: Vec<PropertyConfig>,
    #[serde(default)]
    pub desired: Vec<MethodConfig>,
}

pub(crate) mod defaults {
    /// Changes to a device's reported properties within this time go out as one PATCH.
    pub fn report_interval_ms() -> u64 {
        5000
    }
    pub fn request_timeout_ms() -> u64 {
        10_000
    }
    /// Half of IoT Hub's smallest twin-read throttle (100/s on Free and S1).
    pub fn max_gets_per_s() -> u32 {
        50
    }
    /// Half of IoT Hub's smallest twin-update throttle (50/s on Free and S1).
    pub fn max_patches_per_s() -> u32 {
        25
    }
    pub fn method_property() -> String {
        "method".to_owned()
    }
    /// IoT Hub's default time to live for a cloud-to-device message.
    pub fn dedup_window_s() -> u64 {
        3600
    }
    /// IoT Hub's D2C throttle on the smallest tiers is 100 messages/s per hub (quotas page).
    pub fn max_messages_per_s() -> u32 {
        100
    }
    pub fn window() -> u16 {
        4
    }
    pub fn backlog() -> usize {
        1000
    }
    pub fn control_socket() -> String {
        super::DEFAULT_CONTROL_SOCKET.into()
    }
    /// In the unit's `StateDirectory=`.
    pub fn store() -> String {
        "/var/lib/leafgate/telemetry.db".into()
    }
    pub fn commit_interval_ms() -> u64 {
        1000
    }
    pub fn store_max_mb() -> u64 {
        512
    }
    /// A week: longer than IoT Hub keeps messages on its side.
    pub fn store_max_age_h() -> u64 {
        168
    }
    pub fn port() -> u16 {
        8883
    }
    pub fn websocket_port() -> u16 {
        443
    }
    pub fn global_endpoint() -> String {
        "global.azure-devices-provisioning.net".to_owned()
    }
    /// DPS counts registrations per minute per unit (the smallest limits are in the low
    /// hundreds a minute); 2/s stays well below.
    pub fn max_registrations_per_s() -> u32 {
        2
    }
    pub fn registration_timeout_s() -> u64 {
        60
    }
    /// In the unit's `StateDirectory=`.
    pub fn provisioning_cache() -> String {
        "/var/lib/leafgate/provisioning".into()
    }
    pub fn keep_alive_s() -> u64 {
        120
    }
    pub fn sas_ttl_s() -> u64 {
        3600
    }
    pub fn max_connects_per_s() -> u32 {
        50
    }
    pub fn max_payload_bytes() -> usize {
        128 * 1024
    }
    pub fn connect_timeout_s() -> u64 {
        10
    }
    pub fn reconnect_min_ms() -> u64 {
        1000
    }
    pub fn reconnect_max_ms() -> u64 {
        60_000
    }
    pub fn log_level() -> String {
        "info".to_owned()
    }
    pub const BUS_TIMEOUT_MS: u64 = 1000;
    /// A memory bound, not a latency guess: deadline admission decides which jobs wait (see
    /// `bus::actor`). A waiting one-step job holds about 250 bytes (96 in the queue, 40 per
    /// operation, about 100 for its reply channel, plus any write data), so 1,024 of them take
    /// about 0.25 MiB per bus, allocated only while they wait.
    pub const BUS_QUEUE_CAPACITY: usize = 1024;
    pub const BUS_RETRIES: u32 = 2;
    pub const BUS_RECONNECT_MIN_MS: u64 = 500;
    pub const BUS_RECONNECT_MAX_MS: u64 = 30_000;
    pub const BUS_DOWN_AFTER: u32 = 3;
    pub const BUS_DOWN_FOR_MS: u64 = 10_000;
    pub const BAUD_RATE: u32 = 9600;
}

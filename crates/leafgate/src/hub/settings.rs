//! How sessions reach IoT Hub, as `[hub]` in the config file states it once validated.
//!
//! The hub side owns this type and `config` builds it (re-exported there as `config::Hub`), the
//! same way `bus::spec` owns the bus settings: the lower layer never imports the config loader.

use std::path::PathBuf;
use std::time::Duration;

/// `[hub]`, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub hostname: String,
    /// Where TCP/TLS goes: `gateway_hostname` if set, else `hostname`.
    pub connect_host: String,
    pub gateway_hostname: Option<String>,
    pub port: u16,
    pub ca_file: Option<PathBuf>,
    pub keep_alive: Duration,
    pub sas_ttl: Duration,
    pub max_connects_per_s: u32,
    pub max_payload_bytes: usize,
    pub connect_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

//! How sessions reach IoT Hub, as `[hub]` in the config file states it once validated.
//!
//! The hub side owns this type and `config` builds it (re-exported there as `config::Hub`), the
//! same way `bus::spec` owns the bus settings: the lower layer never imports the config loader.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// `[hub]` (and `[provisioning]`), validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The IoT hub; `None` only when `[provisioning]` assigns every device its hub.
    pub hostname: Option<String>,
    /// Where TCP/TLS goes instead of the hub (an IoT Edge parent).
    pub gateway_hostname: Option<String>,
    /// MQTT over TLS (`transport = "mqtt"`).
    pub port: u16,
    /// MQTT over WebSockets (`transport = "websocket"`).
    pub websocket_port: u16,
    /// How devices that do not say otherwise connect.
    pub transport: Transport,
    /// An HTTP proxy every connection goes through with CONNECT.
    pub proxy: Option<Proxy>,
    pub ca_file: Option<PathBuf>,
    pub keep_alive: Duration,
    pub sas_ttl: Duration,
    pub max_connects_per_s: u32,
    pub max_payload_bytes: usize,
    pub connect_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Devices that register with the Device Provisioning Service to learn their hub.
    pub provisioning: Option<Provisioning>,
}

impl Settings {
    /// Where TCP/TLS goes for a device of `hub`: the IoT Edge parent if there is one.
    #[must_use]
    pub fn connect_host<'a>(&'a self, hub: &'a str) -> &'a str {
        self.gateway_hostname.as_deref().unwrap_or(hub)
    }

    /// The port a device on `transport` connects to.
    #[must_use]
    pub fn port(&self, transport: Transport) -> u16 {
        match transport {
            Transport::Mqtt => self.port,
            Transport::Websocket => self.websocket_port,
        }
    }
}

/// `[provisioning]`, validated: how devices register with DPS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioning {
    pub id_scope: String,
    /// The DPS host (`global.azure-devices-provisioning.net`) and its MQTT port.
    pub endpoint: String,
    pub port: u16,
    /// Registrations started per second, gateway-wide.
    pub max_registrations_per_s: u32,
    /// A registration must end (assigned or failed) within this.
    pub timeout: Duration,
    /// Where assignments are kept across restarts (one file per device); `None`: memory only.
    pub cache: Option<PathBuf>,
}

/// How MQTT reaches the hub (`iothub-protocol.md` 1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// MQTT over TLS, port 8883.
    #[default]
    Mqtt,
    /// MQTT over WebSockets over TLS, `wss://{host}:443/$iothub/websocket`: for sites that let
    /// only HTTPS out.
    Websocket,
}

/// An HTTP proxy reached with CONNECT, optionally with basic authentication.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    /// From `proxy_password_file`; never shown.
    pub password: Option<String>,
}

impl Proxy {
    /// `host:port`, for log lines (no user, no password).
    #[must_use]
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proxy_never_shows_its_password() {
        let proxy = Proxy {
            host: "proxy.plant.local".into(),
            port: 3128,
            username: Some("gw".into()),
            password: Some("hunter2".into()),
        };
        let shown = format!("{proxy:?} {}", proxy.address());
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>") && shown.contains("proxy.plant.local:3128"));
    }
}

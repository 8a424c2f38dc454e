//! Errors of starting the emulator and of waiting for a device event.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::registry::DeviceStats;

/// Why [`super::Emulator::start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not generate the emulator's certificates")]
    Certificate(#[source] rcgen::Error),
    #[error("could not build the emulator's TLS configuration")]
    Tls(#[source] rustls::Error),
    #[error("could not bind the MQTT listener on {addr}")]
    BindMqtt {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("could not bind the MQTT-over-WebSockets listener on {addr}")]
    BindWs {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("could not bind the DPS listener on {addr}")]
    BindDps {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("could not bind the service API listener on {addr}")]
    BindHttp {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("could not bind the HTTPS service API listener on {addr}")]
    BindHttps {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("could not write the CA certificate to {}", path.display())]
    WriteCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A device did not reach the awaited state in time; carries what was last seen, which is
/// usually the explanation (a refusal reason, a disconnect reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("device {device} did not reach the awaited state within {timeout:?}; last seen: {last:?}")]
pub struct WaitTimeout {
    pub device: String,
    pub timeout: Duration,
    pub last: DeviceStats,
}

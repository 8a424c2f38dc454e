//! A local Device Provisioning Service over MQTT (`iothub-protocol.md` 9a), so that tests and
//! the demo can provision devices the way a fleet does: a device connects to DPS with its
//! registration id, registers, polls until it is assigned, and then connects to the IoT hub DPS
//! named, with the key (or certificate) it registered with.
//!
//! One file per job: who may register and where they go (`enrollment`), CONNECT checks
//! (`auth`), the topics (`topics`), operations and assignment into a hub's registry
//! (`operation`), the answers to register and poll requests with the hub-wide rate limit
//! (`service`), the listener with one task per connection (`listener`, `connection`), and the
//! record of every request (`request`). The
//! connection reads and writes with the device endpoint's [`Link`](crate::mqtt::link::Link)
//! after the same TLS handshake, so DPS also asks for an optional client certificate.

mod auth;
mod connection;
mod enrollment;
mod listener;
mod operation;
pub(crate) mod request;
mod service;
mod topics;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Mutex;

pub use self::enrollment::{Attestation, HubLink};
pub(crate) use self::listener::run;
pub use self::request::{DpsRequest, DpsRequestKind};
use crate::twin::RateWindow;

/// The DPS endpoint's settings ([`EmulatorConfig::dps`](crate::EmulatorConfig::dps)).
#[derive(Debug, Clone)]
pub struct DpsConfig {
    /// MQTT-over-TLS listener (DPS's 8883), with the emulator's CA; port 0 picks a free one.
    pub addr: SocketAddr,
    /// The DPS instance's ID scope, the first segment of every username and token scope.
    pub id_scope: String,
    /// The `retry-after` (seconds) of every 202: the first answer to a register is always
    /// `assigning`, and the operation is assigned when polled this long after the register.
    pub retry_after_s: u32,
    /// Register and poll requests allowed per second, over all devices; beyond it in the
    /// current 1-second window they are answered 429 with `retry-after`. `None`: unlimited.
    pub registrations_per_s: Option<u32>,
}

impl Default for DpsConfig {
    /// `127.0.0.1:0`, scope `0ne00000000`, `retry-after` 1 s, no rate limit.
    fn default() -> Self {
        DpsConfig {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            id_scope: "0ne00000000".to_owned(),
            retry_after_s: 1,
            registrations_per_s: None,
        }
    }
}

/// DPS's state: the settings when the endpoint runs, enrollments, operations and the rate
/// limit. Enrollments can be made whether or not the endpoint runs.
pub(crate) struct Dps {
    pub(crate) config: Option<DpsConfig>,
    enrollments: Mutex<enrollment::Enrollments>,
    operations: Mutex<operation::Operations>,
    rate: RateWindow,
}

impl Dps {
    pub(crate) fn new(config: Option<DpsConfig>) -> Self {
        let rate = RateWindow::new(config.as_ref().and_then(|c| c.registrations_per_s));
        Dps {
            config,
            enrollments: Mutex::default(),
            operations: Mutex::default(),
            rate,
        }
    }

    pub(crate) fn add_group(&self, name: &str, key: crate::sas::Key, hub: HubLink) {
        crate::lock::lock(&self.enrollments).add_group(name, key, hub);
    }

    pub(crate) fn add_individual(
        &self,
        registration_id: &str,
        attestation: Attestation,
        hub: HubLink,
    ) {
        crate::lock::lock(&self.enrollments).add_individual(registration_id, attestation, hub);
    }

    pub(crate) fn set_hub(&self, name: &str, hub: &HubLink) -> bool {
        crate::lock::lock(&self.enrollments).set_hub(name, hub)
    }

    /// How `registration_id` may authenticate now (see `Enrollments::candidates`).
    pub(crate) fn candidates(&self, registration_id: &str) -> Vec<enrollment::Enrolled> {
        crate::lock::lock(&self.enrollments).candidates(registration_id)
    }
}

//! leafgate and its emulator against code we did not write (issue 3): the official Azure IoT
//! SDKs for Python (`azure-iot-device` 2.14, `azure-iot-hub`) and pymodbus 3 as the hardware.
//! If our emulator and our simulators shared a misreading of IoT Hub or Modbus with leafgate,
//! the rest of the suite would pass anyway; these tests put third-party code on the other end of
//! every wire leafgate speaks.
//!
//! The Python peers (`tests/compat/python/`) run as child processes, each in a venv of its own
//! under `target/tmp/compat-venvs` (see [`peer`]): `cargo test` builds the venvs with pip on
//! first use and reuses them afterwards, `.ci/run` builds them up front. The Rust test starts the
//! emulator, leafgate and the peers on loopback, drives the peers over stdin/stdout, and awaits
//! events on both sides (no sleeps).
//!
//! Ports: the device SDK hard-codes 8883 (443 over WebSockets) and the service SDK 443
//! (`https://{HostName}`). Rather than binding fixed ports, which would serialize these tests
//! and collide with anything else on the machine using 8883, each peer dials its emulator's
//! ephemeral port through a one-line shim documented in the peer (paho's `connect` port, the
//! REST client's base URL); host names, TLS settings and every byte on the wire stay the SDKs'
//! own, and a test asserts the SDK asked for `localhost:8883` (`localhost:443` over
//! WebSockets). Where one peer dials two services on one port (the hub and DPS on 8883), the
//! shim routes by host as well: see `device_peer.py`.

/// Python peers as child processes, and their venvs.
mod peer;

/// The emulator against the official device SDK (issue 3 item 1).
mod device_sdk;

/// The emulator's HTTPS service API against the official service SDK (item 2).
mod service_sdk;

/// leafgate against pymodbus servers, Modbus TCP and RTU on a pty (item 3).
mod modbus;

/// SAS tokens: leafgate's, the emulator's verifier, and both SDKs' (item 4, with the vector unit
/// tests in `crates/leafgate/src/hub/sas.rs` and `crates/leafgate-emulator/src/sas.rs`).
mod sas;

/// leafgate's CONNECT and SUBSCRIBE next to the device SDK's, field by field (item 5).
mod wire;

/// Telemetry: the device SDK's `send_message` and leafgate's D2C topic, recorded alike.
mod telemetry;

/// Device twins: both SDKs' twin calls against the emulator.
mod twin;

/// Cloud-to-device messages: the device SDK's message handler against the emulator (the
/// service SDK's AMQP send is not emulated; its HTTP plumbing uses the REST stand-in).
mod c2d;

/// The device SDK as a locked-down site's device: MQTT over WebSockets on 443, and X.509
/// certificates (by thumbprint, CA-signed, a stranger refused) instead of keys.
mod firewall;

/// The emulator's DPS against the device SDK's `ProvisioningDeviceClient`: group-derived keys
/// (the Azure formula in Python against `derive_device_key`), individual enrollments by key and
/// by certificate, then `IoTHubDeviceClient` on the assigned hub.
mod provisioning;

use leafgate::hub::sas::Key;
use leafgate_emulator::{Emulator, EmulatorConfig};

/// The key of every device in these tests (bytes 0x00..0x1f, the protocol doc's vector key).
pub const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

pub fn key() -> Key {
    Key::from_base64(KEY).unwrap()
}

/// An emulator for host `localhost` (the name in its certificate, which the SDKs check), with
/// the HTTPS service listener, and `devices` registered with [`KEY`].
pub async fn emulator(devices: &[&str]) -> Emulator {
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let emu = Emulator::start(EmulatorConfig {
        https_addr: Some(loopback),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap();
    for id in devices {
        emu.add_device(id, key());
    }
    emu
}

//! leafgate: makes each Modbus or serial leaf device its own Azure IoT Hub device and serves
//! IoT Hub direct methods from the hardware.
//!
//! # Layout
//! - [`config`]: file schema, loading (base file + `conf.d` drop-ins), validation.
//! - [`hub`]: IoT Hub device side: SAS tokens, connection strings, method topics, sessions.
//! - [`mapping`]: method definitions → bus operations → JSON replies, and the status contract.
//! - [`bus`]: one actor per physical bus (Modbus TCP, Modbus RTU, raw serial).
//! - [`gateway`]: the supervisor that builds buses and device sessions, owns shutdown and reload,
//!   and (`gateway::service`) the daemon loop: signals, systemd notifications, watchdog.
//! - [`systemd`]: journald-or-stderr logging and service notifications.
//! - [`logtext`]: untrusted text (method names, rids, topics, replies) bounded for log lines.
//! - [`backoff`]: jittered exponential backoff shared by sessions and buses.
//! - [`sim`]: simulated hardware (Modbus TCP/RTU devices, a serial instrument, ptys) with fault
//!   injection, for the integration tests and `leafgate demo`.
//! - [`emulator`]: a local IoT Hub (MQTT devices + direct-method service API) for tests and the demo.
//! - [`demo`]: `leafgate demo`: emulator + simulated site + gateway from `config/demo.toml`, and a
//!   checked script of direct-method round trips.

pub mod backoff;
pub mod bus;
pub mod config;
pub mod demo;
pub mod emulator;
pub mod gateway;
pub mod hub;
pub mod logtext;
pub mod mapping;
pub mod sim;
pub mod systemd;

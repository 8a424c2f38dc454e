//! leafgate: makes each Modbus or serial leaf device its own Azure IoT Hub device and serves
//! IoT Hub direct methods from the hardware.
//!
//! # Layout
//! - [`config`]: file schema, loading (base file + `conf.d` drop-ins), validation.
//! - [`hub`]: IoT Hub device side: SAS tokens, connection strings, topics, TLS, one MQTT session
//!   per device and the seam services plug into (`hub::service`).
//! - [`services`]: what joins hub messages to the hardware; direct methods are the first.
//! - [`mapping`]: method definitions → bus operations → JSON replies, and the status contract.
//! - [`model`]: a profile's IoT Plug and Play model (DTDL v2) for `leafgate model`, from the
//!   config as validated; imports `config` and `mapping` only.
//! - [`bus`]: one actor per physical bus (Modbus TCP, Modbus RTU, raw serial).
//! - [`gateway`]: the supervisor that builds buses, services and device sessions, owns shutdown and reload,
//!   and (`gateway::service`) the daemon loop: signals, systemd notifications, watchdog.
//! - [`systemd`]: journald-or-stderr logging and service notifications.
//! - [`utc`]: UTC timestamps for log lines and telemetry.
//! - [`chain`]: an error and its causes on one line, for logs and messages.
//! - [`logtext`]: untrusted text (method names, rids, topics, replies) bounded for log lines.
//! - [`regular_file`]: bounded, non-blocking reads of the files an operator names (config, keys,
//!   CA certificates).
//! - [`recent`]: the last warnings and errors logged, for `leafgate status`.
//! - [`backoff`]: jittered exponential backoff shared by sessions and buses.

pub mod backoff;
pub mod bus;
pub mod chain;
pub mod config;
pub mod gateway;
pub mod hub;
pub mod logtext;
pub mod mapping;
pub mod metrics;
pub mod model;
pub mod recent;
pub mod regular_file;
pub mod services;
pub mod systemd;
pub mod utc;

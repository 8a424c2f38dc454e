//! leafgate: makes each Modbus or serial leaf device its own Azure IoT Hub device and serves
//! IoT Hub direct methods from the hardware.
//!
//! # Layout
//! - [`config`]: file schema, loading (base file + `conf.d` drop-ins), validation.
//! - [`hub`]: IoT Hub device side: SAS tokens, connection strings, method topics, sessions.
//! - [`mapping`]: method definitions → bus operations → JSON replies, and the status contract.
//! - [`bus`]: one actor per physical bus (Modbus TCP, Modbus RTU, raw serial).
//! - [`emulator`]: a local IoT Hub (MQTT devices + direct-method service API) for tests and the demo.

pub mod bus;
pub mod config;
pub mod emulator;
pub mod hub;
pub mod mapping;

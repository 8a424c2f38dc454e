//! leafgate: makes each Modbus or serial leaf device its own Azure IoT Hub device and serves
//! IoT Hub direct methods from the hardware.
//!
//! # Layout
//! - [`config`]: file schema, loading (base file + `conf.d` drop-ins), validation.
//! - [`hub`]: IoT Hub device side: SAS tokens, connection strings, method topics, sessions.
//! - [`mapping`]: method definitions → bus operations → JSON replies, and the status contract.
//! - [`bus`]: one actor per physical bus (Modbus TCP, Modbus RTU, raw serial).
//! - [`sim`]: simulated hardware (Modbus TCP/RTU devices, a serial instrument, ptys) with fault
//!   injection, for the integration tests and `leafgate demo`.

pub mod bus;
pub mod config;
pub mod hub;
pub mod mapping;
pub mod sim;

//! leafgate: makes each Modbus or serial leaf device its own Azure IoT Hub device and serves
//! IoT Hub direct methods from the hardware.
//!
//! # Layout
//! - [`hub`]: IoT Hub device side: SAS tokens, connection strings, method topics, sessions.

pub mod hub;

//! Everything IoT Hub: credentials, SAS tokens, topics, and the per-device MQTT session.

pub mod connstr;
pub mod sas;
pub mod topics;

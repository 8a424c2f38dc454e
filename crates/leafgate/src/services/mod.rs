//! Services: the only layer that joins IoT Hub messages to the hardware.
//!
//! Each service implements [`crate::hub::service::Service`] for one device: it names the topics
//! its device's session must subscribe, takes the publishes on them, runs what they ask on the
//! device's bus through `mapping`, and hands typed messages back to the session. Direct methods
//! (`methods`) and telemetry (`telemetry`) are the first; twin and cloud-to-device messages are
//! to be modules beside them, each with its own config section. A service imports `hub`, `bus`
//! and `mapping`, never the supervisor (`gateway`), which builds the services of each device and
//! starts its session.

pub mod c2d;
pub mod control;
pub mod methods;
pub mod metrics;
pub mod telemetry;
pub mod twin;

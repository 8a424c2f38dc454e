//! Everything IoT Hub: credentials, SAS tokens, topics, and the per-device MQTT session.
//!
//! `sas`, `topics` and `connstr` are pure; `session` does the I/O; `limiter` paces connects
//! across all sessions; `tls` builds the shared TLS settings; `settings` is `[hub]` validated.

pub mod auth;
pub mod c2d;
pub mod certificate;
pub mod connstr;
pub mod d2c;
pub mod dps;
pub mod limiter;
pub mod outbound;
pub mod presence;
pub mod provisioning;
pub mod sas;
pub mod service;
pub mod session;
pub mod settings;
pub mod tls;
pub mod topics;
pub mod transport;
pub mod twin;

pub use settings::Settings;

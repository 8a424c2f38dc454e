//! `leafgate demo`: the whole product on one machine, with no Azure account and no hardware.
//!
//! [`Demo::start`] starts the simulated site ([`leafgate_sim::Site`]: a Modbus TCP PLC, an RS-485
//! line with two energy meters on a pty, a bench power supply on another pty), seeds plausible
//! register values, starts the IoT Hub [`leafgate_emulator`], renders `config/demo.toml` (embedded
//! in the binary) with the addresses only known now, loads it with [`leafgate::config::load`] like
//! any site config, and starts the [`Gateway`](leafgate::gateway::Gateway) on it.
//! [`Demo::round_trips`] then calls a fixed script of direct methods through the service API, as
//! a back-end application would, and checks every answer. [`run`] does all of that, prints the table, and either returns (`once`) or
//! prints ready-to-paste `curl` lines and serves until Ctrl-C or SIGTERM.
//!
//! Logging is the binary's business; this module only writes its table to the given writer.
//!
//! Each of those parts has its own file (the config template, the seeded values, the script and
//! its checks, the running demo, the run and its text), so each is read and tested on its own;
//! this one holds what `leafgate demo` is asked to do and the re-exports the binary uses.

mod demo;
mod error;
mod report;
mod run;
mod script;
mod seed;
mod summary;
mod temp_dir;
mod template;

pub use demo::Demo;
pub use error::Error;
pub use run::run;
pub use summary::{RoundTrip, Summary};
pub use template::{CONFIG_TEMPLATE, Placeholders, render};

/// What `leafgate demo` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Do the round trips and return, instead of serving until Ctrl-C.
    pub once: bool,
    /// MQTT-over-TLS port of the emulated hub on 127.0.0.1; 0 picks a free one.
    pub hub_port: u16,
    /// Service API port of the emulated hub on 127.0.0.1; 0 picks a free one.
    pub http_port: u16,
}

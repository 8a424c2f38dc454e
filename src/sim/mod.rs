//! Simulated hardware for the integration tests and `leafgate demo`: Modbus devices over TCP and
//! on RS-485 lines, with faults switchable at run time.
//!
//! The gateway talks to these exactly as to real hardware: serial devices answer on real
//! pseudo-terminals that the gateway opens with tokio-serial, TCP devices on real sockets. Each
//! device keeps a log of what it received and lets a test await "request N arrived" instead of
//! sleeping.
//!
//! - [`pty`]: a pseudo-terminal pair standing in for a USB serial adapter.
//! - [`modbus`]: the Modbus register model, RTU and TCP framing, faults, request log.
//!
//! Linux only (ptys via `posix_openpt`, `TIOCGEXCL`). What a pty cannot imitate is listed in
//! [`pty`]; what the Modbus devices leave out, in [`modbus`].

mod armed;
mod driver;
mod error;
pub mod modbus;
pub mod pty;

pub use error::Error;

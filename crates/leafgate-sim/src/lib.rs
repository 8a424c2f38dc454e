//! Simulated hardware for the integration tests and `leafgate demo`: Modbus devices over TCP, on
//! RS-485 lines, and a line-based serial instrument, all with faults switchable at run time.
//!
//! The gateway talks to these exactly as to real hardware: serial devices answer on real
//! pseudo-terminals that the gateway opens with tokio-serial, TCP devices on real sockets. Each
//! device keeps a log of what it received and lets a test await "request N arrived" instead of
//! sleeping.
//!
//! - [`pty`]: a pseudo-terminal pair standing in for a USB serial adapter.
//! - [`modbus`]: the Modbus register model, RTU and TCP framing, faults, request log.
//! - [`instrument`]: a bench power supply speaking `\r\n`-terminated text commands.
//! - [`SerialLine`]: a device on a pty, with unplug and replug.
//! - [`Site`]: one of each, for the demo.
//!
//! Linux only (ptys via `posix_openpt`, `TIOCGEXCL`). What a pty cannot imitate is listed in
//! [`pty`]; what the Modbus devices leave out, in [`modbus`].

mod armed;
mod driver;
mod error;
pub mod instrument;
mod line;
pub mod modbus;
pub mod pty;
mod site;

pub use error::Error;
pub use line::SerialLine;
pub use site::Site;

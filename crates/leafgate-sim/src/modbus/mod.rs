//! Simulated Modbus devices: a register model shared by tests and serving tasks, served as
//! Modbus TCP, as RTU on a pty line, or as RTU-over-TCP, with faults switchable at run time and a
//! log of every request received.
//!
//! Supported: function codes 1, 2, 3, 4, 5, 6, 15, 16 with the spec's exception replies (01, 02,
//! 03). Not simulated: other function codes (answered with 01), serial timing (baud rate, 3.5
//! character gaps: a pty has none), RS-485 collisions (two late replies never garble each other,
//! they arrive one after the other), and connection limits of real TCP devices.
//!
//! ```no_run
//! # async fn demo() -> Result<(), leafgate_sim::Error> {
//! use leafgate_sim::modbus::{Fault, Registers, TcpServer};
//! let registers = Registers::with_units([1, 2]);
//! registers.set_holding(1, 100, &[1250]);
//! registers.set_fault(2, Fault::Silent);
//! let device = TcpServer::start(registers.clone()).await?;
//! println!("modbus tcp device at {}", device.addr());
//! let seen = registers.wait_requests(1).await;
//! # Ok(()) }
//! ```

mod crc;
mod fault;
mod pdu;
mod registers;
mod rtu;
mod store;
mod tcp;

pub use crc::crc16;
pub use fault::{Fault, Garbage};
pub use pdu::{GATEWAY_TARGET_FAILED, ILLEGAL_DATA_ADDRESS, ILLEGAL_DATA_VALUE, ILLEGAL_FUNCTION};
pub use registers::{Outcome, Registers, Request};
pub use rtu::{DISCARD_PARTIAL_AFTER, serve_rtu};
pub use tcp::{Framing, TcpServer, serve_tcp};

/// One of a unit's four address spaces, each 65536 entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Table {
    /// Read-write bits: function codes 1, 5, 15.
    Coils,
    /// Read-only bits: function code 2.
    DiscreteInputs,
    /// Read-write registers: function codes 3, 6, 16.
    HoldingRegisters,
    /// Read-only registers: function code 4.
    InputRegisters,
}

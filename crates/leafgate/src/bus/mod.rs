//! Hardware: one actor per physical bus owns its transport and runs jobs one at a time.
//!
//! - [`actor`]: the queue, deadlines, reconnects; generic over a [`link::Link`].
//! - [`modbus_tcp`]: Modbus TCP (MBAP) master.
//! - [`modbus_rtu`]: Modbus RTU master on a serial line or RTU-over-TCP; [`frame`] its frames
//!   (and the PDU checks both masters share), [`gap`] the silent interval between them.
//! - [`serial`]: raw serial exchanges framed by terminator, length or idle gap.
//! - [`line_io`]: what both serial-line links share: the [`line_io::Endpoint`] their bytes go
//!   through (serial port or TCP), reads, and discarding stale input; [`port`] opens and drains
//!   serial ports.
//! - [`spec`] and [`op`]: the bus vocabulary (kinds, lines, framing, tables, operations), which
//!   `config` deserialises into; nothing here imports `config`.

pub mod actor;
pub mod error;
pub mod frame;
pub mod gap;
pub mod line_io;
pub mod link;
pub mod modbus_rtu;
pub mod modbus_tcp;
pub mod op;
pub mod port;
pub mod serial;
pub mod spec;

use tokio_util::sync::CancellationToken;

pub use actor::{Handle, Label};
pub use error::{Error, Limit, Timeout};
pub use op::{Op, Output, Table, WriteData};
pub use spec::{Bus, BusKind, BusSpec, Line, Parity, SerialFraming, TcpFraming};

/// Starts the actor for a configured bus.
pub fn start(bus: &Bus, shutdown: CancellationToken) -> (Handle, tokio::task::JoinHandle<()>) {
    start_after(bus, shutdown, std::future::ready(()))
}

/// Starts the actor for a configured bus once `gate` completes (see [`actor::spawn_after`]); the
/// handle works at once.
pub fn start_after(
    bus: &Bus,
    shutdown: CancellationToken,
    gate: impl Future<Output = ()> + Send + 'static,
) -> (Handle, tokio::task::JoinHandle<()>) {
    let connect_timeout = bus.timeout.max(std::time::Duration::from_secs(1));
    match &bus.spec {
        BusSpec::ModbusTcp {
            address,
            framing: TcpFraming::Mbap,
        } => actor::spawn_after(
            bus,
            modbus_tcp::TcpLink::new(address.clone(), connect_timeout),
            shutdown,
            gate,
        ),
        BusSpec::ModbusTcp {
            address,
            framing: TcpFraming::Rtu,
        } => {
            let endpoint = line_io::Endpoint::Tcp {
                address: address.clone(),
                connect_timeout,
            };
            actor::spawn_after(
                bus,
                modbus_rtu::RtuLink::new(endpoint, std::time::Duration::ZERO, bus.timeout),
                shutdown,
                gate,
            )
        }
        BusSpec::ModbusRtu { line, frame_gap } => {
            let endpoint = line_io::Endpoint::Serial(line.clone());
            actor::spawn_after(
                bus,
                modbus_rtu::RtuLink::new(endpoint, *frame_gap, bus.timeout),
                shutdown,
                gate,
            )
        }
        BusSpec::Serial {
            line,
            framing,
            line_ending,
        } => {
            let endpoint = line_io::Endpoint::Serial(line.clone());
            actor::spawn_after(
                bus,
                serial::SerialLink::new(endpoint, framing.clone(), bus.timeout)
                    .with_line_ending(line_ending.clone()),
                shutdown,
                gate,
            )
        }
    }
}

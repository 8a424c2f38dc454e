//! [`Site`]: everything `leafgate demo` needs, started in one call.

use crate::Error;
use crate::instrument::Psu;
use crate::line::SerialLine;
use crate::modbus::{Registers, TcpServer};

/// A small simulated site: a Modbus TCP device (unit 1), an RS-485 line with units 1 and 2, and a
/// power supply on a serial line. Registers start at 0; seed them through the handles. Dropping
/// the site stops every device.
#[derive(Debug)]
pub struct Site {
    /// Modbus TCP endpoint on `127.0.0.1`, serving `tcp_registers`.
    pub modbus_tcp: TcpServer,
    /// Units behind `modbus_tcp`.
    pub tcp_registers: Registers,
    /// Modbus RTU line on a pty, serving `rtu_registers`.
    pub rtu_line: SerialLine,
    /// Units on `rtu_line`.
    pub rtu_registers: Registers,
    /// The power supply's serial line.
    pub psu_line: SerialLine,
    /// The power supply's state.
    pub psu: Psu,
}

impl Site {
    /// Starts every device. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// When a pty cannot be opened or a port cannot be bound.
    pub async fn start() -> Result<Site, Error> {
        let tcp_registers = Registers::with_units([1]);
        let rtu_registers = Registers::with_units([1, 2]);
        let psu = Psu::new();
        Ok(Site {
            modbus_tcp: TcpServer::start(tcp_registers.clone()).await?,
            rtu_line: SerialLine::modbus_rtu(rtu_registers.clone())?,
            psu_line: SerialLine::instrument(psu.clone())?,
            tcp_registers,
            rtu_registers,
            psu,
        })
    }
}

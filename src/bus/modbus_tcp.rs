//! Modbus TCP (MBAP) through tokio-modbus: one connection per endpoint, since many devices accept
//! only one. tokio-modbus has no timeouts of its own and, after a caller-side timeout, would take
//! the late reply as the answer to the next request; so every failure drops the connection and
//! the next request starts on a fresh one.
//!
//! Devices and NAT boxes close idle connections. Before each request the socket is peeked: a
//! closed connection (or stray bytes) is replaced before anything is sent, so a write is never
//! lost to, nor repeated because of, a connection that died while idle.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_modbus::Slave;
use tokio_modbus::client::{Context, Reader as _, Writer as _};
use tokio_modbus::prelude::SlaveContext as _;

use super::link::Link;
use super::{Error, Op, Output, WriteData};
use crate::config::schema::Table;

pub struct TcpLink {
    address: String,
    connect_timeout: Duration,
    ctx: Option<Context>,
    /// A second handle on the same socket, only to peek at it between transactions.
    probe: Option<std::net::TcpStream>,
    sent: bool,
}

impl TcpLink {
    #[must_use]
    pub fn new(address: String, connect_timeout: Duration) -> Self {
        TcpLink {
            address,
            connect_timeout,
            ctx: None,
            probe: None,
            sent: false,
        }
    }

    /// Whether the idle connection is still usable: no EOF, no error, no unread bytes.
    fn idle_and_healthy(&self) -> bool {
        let Some(probe) = &self.probe else {
            return false;
        };
        let mut byte = [0u8; 1];
        match probe.peek(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
            Ok(0) => {
                log::debug!(
                    "connection to {} was closed by the peer while idle",
                    self.address
                );
                false
            }
            Ok(_) => {
                log::debug!(
                    "stray bytes on the connection to {}; reconnecting",
                    self.address
                );
                false
            }
            Err(e) => {
                log::debug!("connection to {} failed while idle: {e}", self.address);
                false
            }
        }
    }
}

impl Link for TcpLink {
    async fn open(&mut self) -> Result<(), Error> {
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.address))
            .await
            .map_err(|_| Error::Unavailable(format!("connect to {} timed out", self.address)))?
            .map_err(|e| Error::Unavailable(format!("cannot connect to {}: {e}", self.address)))?;
        let _ = stream.set_nodelay(true);
        // The std handle stays non-blocking (tokio set it so), which is what peek needs.
        let probe = stream
            .into_std()
            .and_then(|std| Ok((std.try_clone()?, std)))
            .and_then(|(probe, std)| Ok((probe, TcpStream::from_std(std)?)))
            .map_err(|e| {
                Error::Unavailable(format!(
                    "cannot set up the connection to {}: {e}",
                    self.address
                ))
            })?;
        self.probe = Some(probe.0);
        self.ctx = Some(tokio_modbus::client::tcp::attach(probe.1));
        Ok(())
    }

    fn is_open(&self) -> bool {
        self.ctx.is_some()
    }

    async fn execute(&mut self, op: &Op, timeout: Duration) -> Result<Output, Error> {
        self.sent = false;
        if self.ctx.is_some() && !self.idle_and_healthy() {
            self.close();
            tokio::time::timeout(timeout, self.open())
                .await
                .map_err(|_| {
                    Error::Unavailable(format!("reconnect to {} timed out", self.address))
                })??;
        }
        let ctx = self
            .ctx
            .as_mut()
            .ok_or_else(|| Error::Unavailable("not connected".to_owned()))?;
        self.sent = true;
        let result = tokio::time::timeout(timeout, call(ctx, op)).await;
        let outcome = match result {
            Err(_) => Err(Error::Timeout(timeout)),
            Ok(Err(tokio_modbus::Error::Transport(e))) => Err(Error::Unavailable(format!(
                "connection to {} failed: {e}",
                self.address
            ))),
            Ok(Err(tokio_modbus::Error::Protocol(e))) => Err(Error::Protocol(e.to_string())),
            Ok(Ok(Err(code))) => {
                return Err(Error::Exception {
                    code: u8::from(code),
                });
            }
            Ok(Ok(Ok(out))) => return Ok(out),
        };
        // Anything but a clean reply or an exception leaves the stream in an unknown state.
        self.close();
        outcome
    }

    fn sent(&self) -> bool {
        self.sent
    }

    fn overhead(&self, _op: &Op) -> Duration {
        Duration::ZERO
    }

    fn close(&mut self) {
        self.ctx = None;
        self.probe = None;
    }
}

type ModbusResult<T> = tokio_modbus::Result<T>;

async fn call(ctx: &mut Context, op: &Op) -> ModbusResult<Output> {
    match op {
        Op::Read {
            unit,
            table,
            address,
            count,
        } => {
            ctx.set_slave(Slave(*unit));
            let (a, c) = (*address, *count);
            Ok(match table {
                Table::Holding => ctx
                    .read_holding_registers(a, c)
                    .await?
                    .map(Output::Registers),
                Table::Input => ctx.read_input_registers(a, c).await?.map(Output::Registers),
                Table::Coil => ctx.read_coils(a, c).await?.map(Output::Bits),
                Table::Discrete => ctx.read_discrete_inputs(a, c).await?.map(Output::Bits),
            })
        }
        Op::Write {
            unit,
            address,
            data,
        } => {
            ctx.set_slave(Slave(*unit));
            let a = *address;
            let r = match data {
                WriteData::Registers(regs) if regs.len() == 1 => {
                    ctx.write_single_register(a, regs[0]).await?
                }
                WriteData::Registers(regs) => ctx.write_multiple_registers(a, regs).await?,
                WriteData::Coils(bits) if bits.len() == 1 => {
                    ctx.write_single_coil(a, bits[0]).await?
                }
                WriteData::Coils(bits) => ctx.write_multiple_coils(a, bits).await?,
            };
            Ok(r.map(|()| Output::Written))
        }
        Op::Serial { .. } => Ok(Err(tokio_modbus::ExceptionCode::IllegalFunction)),
    }
}

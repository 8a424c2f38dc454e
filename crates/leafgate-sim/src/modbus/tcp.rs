//! Modbus TCP (MBAP) on the device side, and the listener that serves either framing over TCP.
//!
//! An MBAP frame is `transaction id, protocol id (0), length, unit id, PDU`; the reply echoes the
//! transaction id. A length outside 2..=254 breaks the framing for good, so the connection is
//! closed as a real device would; a frame with another protocol id is ignored.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use super::registers::{Registers, Transport};
use super::rtu::Rtu;
use crate::Error;
use crate::driver::{self, Next, Outgoing, Protocol};

const HEADER: usize = 7;

/// The Modbus TCP server side of every unit in a [`Registers`].
pub(crate) struct Mbap {
    pub(crate) registers: Registers,
}

impl Protocol for Mbap {
    fn on_input(&mut self, input: &mut BytesMut, out: &mut Vec<Outgoing>) -> Next {
        while input.len() >= HEADER {
            let len = usize::from(u16::from_be_bytes([input[4], input[5]]));
            if !(2..=254).contains(&len) {
                log::debug!("sim: mbap length {len} is invalid, closing the connection");
                return Next::Close;
            }
            if input.len() < 6 + len {
                break;
            }
            let adu = input.split_to(6 + len);
            if adu[2..4] != [0, 0] {
                log::debug!(
                    "sim: ignoring an mbap frame with protocol id {:?}",
                    &adu[2..4]
                );
                continue;
            }
            let unit = adu[6];
            let Some(reply) = self.registers.handle(unit, &adu[HEADER..], Transport::Tcp) else {
                continue;
            };
            let mut bytes = Vec::with_capacity(HEADER + reply.pdu.len());
            bytes.extend_from_slice(&adu[0..4]);
            bytes.extend(
                u16::try_from(reply.pdu.len() + 1)
                    .unwrap_or(0)
                    .to_be_bytes(),
            );
            bytes.push(unit);
            bytes.extend(&reply.pdu);
            out.push(Outgoing {
                delay: reply.delay,
                bytes: match &reply.garbage {
                    Some(garbage) => garbage.apply(bytes, false),
                    None => bytes,
                },
            });
        }
        Next::Continue
    }
}

/// Serves every unit in `registers` as Modbus TCP on one connection until it closes.
///
/// # Errors
/// When reading or writing the transport fails.
///
/// # Cancel safety
/// Dropping the future drops the transport and any late replies not yet sent.
pub async fn serve_tcp<T>(transport: T, registers: Registers) -> io::Result<()>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    driver::run(transport, Mbap { registers }).await
}

/// Which frames a [`TcpServer`] speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// Modbus TCP: MBAP header, no CRC.
    Mbap,
    /// RTU frames with CRC over TCP, as serial device servers (Moxa, USR) pass them through.
    RtuOverTcp,
}

/// A listening simulated device (or gateway of devices) on TCP. Many connections are served at
/// once, all sharing one [`Registers`]. Dropping it stops accepting and closes every connection.
#[derive(Debug)]
pub struct TcpServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl TcpServer {
    /// Serves `registers` as Modbus TCP on `127.0.0.1` at a free port.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start(registers: Registers) -> Result<TcpServer, Error> {
        Self::bind(local_any(), Framing::Mbap, registers).await
    }

    /// Serves `registers` as RTU-over-TCP on `127.0.0.1` at a free port.
    ///
    /// # Errors
    /// When no port can be bound.
    pub async fn start_rtu_over_tcp(registers: Registers) -> Result<TcpServer, Error> {
        Self::bind(local_any(), Framing::RtuOverTcp, registers).await
    }

    /// Serves `registers` at `addr`, e.g. the address of a stopped server to simulate a device
    /// that rebooted. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// When `addr` cannot be bound.
    pub async fn bind(
        addr: SocketAddr,
        framing: Framing,
        registers: Registers,
    ) -> Result<TcpServer, Error> {
        let listen = |source| Error::Listen { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(listen)?;
        let addr = listener.local_addr().map_err(listen)?;
        let task = tokio::spawn(accept(listener, framing, registers));
        Ok(TcpServer { addr, task })
    }

    /// The address the device listens on.
    #[must_use]
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting and closes every connection; returns once the listener is closed.
    pub async fn stop(mut self) {
        self.task.abort();
        // Completes once the task's future, and with it the listener and connections, is dropped.
        let _ = (&mut self.task).await;
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn local_any() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
}

async fn accept(listener: TcpListener, framing: Framing, registers: Registers) {
    // Connections live in this set so that stopping the server (dropping this future) aborts them.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let registers = registers.clone();
                    connections.spawn(async move {
                        let result = match framing {
                            Framing::Mbap => driver::run(stream, Mbap { registers }).await,
                            Framing::RtuOverTcp => driver::run(stream, Rtu { registers }).await,
                        };
                        if let Err(e) = result {
                            log::debug!("sim: connection from {peer} ended: {e}");
                        }
                    });
                }
                // Transient (e.g. a connection reset before accept); keep listening.
                Err(e) => log::warn!("sim: could not accept a connection: {e}"),
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_echo_the_transaction_id_and_bad_lengths_close() {
        let registers = Registers::with_units([3]);
        registers.set_input(3, 1, &[0x0102]);
        let mut mbap = Mbap { registers };
        let mut input = BytesMut::from(&[0xAB, 0xCD, 0, 0, 0, 6, 3, 4, 0, 1, 0, 1, 0, 9][..]);
        let mut out = Vec::new();
        assert_eq!(mbap.on_input(&mut input, &mut out), Next::Continue);
        assert_eq!(out[0].bytes, [0xAB, 0xCD, 0, 0, 0, 5, 3, 4, 2, 1, 2]);
        assert_eq!(&input[..], [0, 9], "a partial header waits");

        let mut input = BytesMut::from(&[0, 1, 0, 0, 0x01, 0x00, 3][..]);
        assert_eq!(mbap.on_input(&mut input, &mut out), Next::Close);
    }
}

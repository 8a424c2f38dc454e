//! Modbus TCP (MBAP) master: one connection per endpoint, since many devices (and TCP-to-RTU
//! gateways) accept only one.
//!
//! Written by hand rather than through tokio-modbus's client, which checks a reply's register
//! count and write echo only with `debug_assert` (a release build returned 9 registers for a read
//! of 10, and a debug build panicked) and reports undecodable frames as I/O errors. Here the PDU
//! goes through the same [`frame`] code as RTU, so both check function code, byte count, length
//! and the full write echo, and every MBAP header field is checked too: transaction id, protocol
//! id 0, a length within the 2..=254 the spec allows (nothing is allocated from it), unit id.
//!
//! After an unusable reply or a timeout the byte stream can no longer be trusted (a late reply
//! may follow), so the connection is dropped; but the endpoint was reachable a moment ago and
//! other units behind it are likely fine, so the next exchange connects afresh at once instead of
//! the bus being marked down. Only a connect that fails is left to the actor's backoff.
//!
//! Devices and NAT boxes close idle connections. Before each request the socket is peeked: a
//! closed connection (or stray bytes) is replaced before anything is sent, so a write is never
//! lost to, nor repeated because of, a connection that died while idle.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::frame;
use super::link::{Link, Wait};
use super::{Error, Op, Output};

/// MBAP header: transaction id, protocol id, length, unit id.
const HEADER: usize = 7;
/// The largest PDU (Modbus Application Protocol v1.1b3, 4.1): a 260-byte ADU minus the header.
const MAX_PDU: usize = 253;

pub struct TcpLink {
    address: String,
    connect_timeout: Duration,
    stream: Option<TcpStream>,
    /// A second handle on the same socket, only to peek at it between transactions: a real
    /// `recv(MSG_PEEK)`, which sees a close even before tokio's reactor has.
    probe: Option<std::net::TcpStream>,
    /// The connection was dropped after an unusable reply or a timeout: the next exchange
    /// connects first. The link still counts as open; the endpoint answered a moment ago.
    reopen: bool,
    transaction: u16,
    sent: bool,
}

impl TcpLink {
    #[must_use]
    pub fn new(address: String, connect_timeout: Duration) -> Self {
        TcpLink {
            address,
            connect_timeout,
            stream: None,
            probe: None,
            reopen: false,
            transaction: 0,
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

    /// Drops the connection but keeps the link open: the next exchange reconnects first.
    fn drop_connection(&mut self) {
        self.stream = None;
        self.probe = None;
        self.reopen = true;
    }

    async fn exchange(&mut self, op: &Op) -> Result<Output, Error> {
        let unit = match op {
            Op::Read { unit, .. } | Op::Write { unit, .. } => *unit,
            Op::Serial { .. } => {
                return Err(Error::Protocol(
                    "serial exchange on a modbus tcp bus".to_owned(),
                ));
            }
        };
        let pdu = frame::request_pdu(op)?;
        self.transaction = self.transaction.wrapping_add(1);
        let transaction = self.transaction;
        let length = u16::try_from(pdu.len() + 1)
            .map_err(|_| Error::Protocol("request too long for one frame".to_owned()))?;
        let mut adu = Vec::with_capacity(HEADER + pdu.len());
        adu.extend(transaction.to_be_bytes());
        adu.extend([0, 0]);
        adu.extend(length.to_be_bytes());
        adu.push(unit);
        adu.extend(pdu);
        let address = &self.address;
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| Error::unavailable(format!("not connected to {address}")))?;
        self.sent = true;
        stream
            .write_all(&adu)
            .await
            .map_err(|e| Error::transport(format!("sending to {address} failed"), e))?;

        // The whole reply usually arrives in one segment: read it with one call (a read of the
        // header and another of the body cost a second syscall per transaction).
        let mut buf = [0u8; HEADER + MAX_PDU];
        let mut have = read_at_least(stream, &mut buf, 0, HEADER, address).await?;
        let header = &buf[..HEADER];
        let got_transaction = u16::from_be_bytes([header[0], header[1]]);
        let protocol = u16::from_be_bytes([header[2], header[3]]);
        let length = usize::from(u16::from_be_bytes([header[4], header[5]]));
        let got_unit = header[6];
        if protocol != 0 {
            return Err(Error::Protocol(format!(
                "reply has protocol id {protocol}, expected 0 (Modbus)"
            )));
        }
        if !(2..=MAX_PDU + 1).contains(&length) {
            return Err(Error::Protocol(format!(
                "reply has MBAP length {length}, outside 2..={}",
                MAX_PDU + 1
            )));
        }
        if got_transaction != transaction {
            return Err(Error::Protocol(format!(
                "reply has transaction id {got_transaction}, expected {transaction}"
            )));
        }
        if got_unit != unit {
            return Err(Error::Protocol(format!(
                "reply from unit {got_unit} while waiting for unit {unit}"
            )));
        }
        let end = HEADER - 1 + length;
        have = read_at_least(stream, &mut buf, have, end, address).await?;
        let output = frame::decode_pdu(op, &buf[HEADER..end])?;
        if have > end {
            // Bytes after the reply belong to no request of ours: the reply stands, but the
            // stream is out of step, so the next exchange starts on a fresh connection.
            log::debug!(
                "{} stray bytes after a reply from {address}; reconnecting before the next request",
                have - end
            );
            self.drop_connection();
        }
        Ok(output)
    }
}

/// Reads into `buf` (holding `have` bytes already) until it holds at least `want`; returns how
/// many it holds. The caller bounds the time.
async fn read_at_least(
    stream: &mut TcpStream,
    buf: &mut [u8],
    mut have: usize,
    want: usize,
    address: &str,
) -> Result<usize, Error> {
    while have < want {
        match stream.read(&mut buf[have..]).await {
            Ok(0) => {
                return Err(Error::unavailable(format!(
                    "{address} closed the connection before its reply was complete"
                )));
            }
            Ok(n) => have += n,
            Err(e) => {
                return Err(Error::transport(
                    format!("reading from {address} failed"),
                    e,
                ));
            }
        }
    }
    Ok(have)
}

impl Link for TcpLink {
    async fn open(&mut self) -> Result<(), Error> {
        self.reopen = false;
        let stream = tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.address))
            .await
            .map_err(|_| Error::unavailable(format!("connect to {} timed out", self.address)))?
            .map_err(|e| Error::transport(format!("cannot connect to {}", self.address), e))?;
        let _ = stream.set_nodelay(true);
        // The std handle stays non-blocking (tokio set it so), which is what peek needs.
        let (probe, stream) = stream
            .into_std()
            .and_then(|std| Ok((std.try_clone()?, std)))
            .and_then(|(probe, std)| Ok((probe, TcpStream::from_std(std)?)))
            .map_err(|e| {
                Error::transport(
                    format!("cannot set up the connection to {}", self.address),
                    e,
                )
            })?;
        self.probe = Some(probe);
        self.stream = Some(stream);
        Ok(())
    }

    fn is_open(&self) -> bool {
        self.stream.is_some() || self.reopen
    }

    async fn execute(&mut self, op: &Op, wait: Wait) -> Result<Output, Error> {
        self.sent = false;
        // One limit for reconnecting and the exchange, so neither can push past the deadline.
        let until = Instant::now() + wait.limit;
        if self.reopen || (self.stream.is_some() && !self.idle_and_healthy()) {
            self.close();
            tokio::time::timeout_at(until, self.open())
                .await
                .map_err(|_| {
                    Error::unavailable(format!("reconnect to {} timed out", self.address))
                })??;
        }
        let result = match tokio::time::timeout_at(until, self.exchange(op)).await {
            Ok(result) => result,
            Err(_) => Err(wait.expired()),
        };
        match &result {
            Ok(_) | Err(Error::Exception { .. }) => {}
            // A late or partly read reply may still be on its way: never read it as the answer
            // to the next request.
            Err(Error::Timeout(_) | Error::Protocol(_)) => self.drop_connection(),
            // The connection itself failed; reconnecting is the actor's call (once, then backoff).
            Err(_) => self.close(),
        }
        result
    }

    fn sent(&self) -> bool {
        self.sent
    }

    fn overhead(&self, _op: &Op) -> Duration {
        Duration::ZERO
    }

    fn close(&mut self) {
        self.stream = None;
        self.probe = None;
        self.reopen = false;
    }
}

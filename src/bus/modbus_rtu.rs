//! Modbus RTU master on a serial line (or RTU frames over TCP, as serial-to-Ethernet converters
//! carry them). One line, many units: the actor runs one exchange at a time and this link keeps
//! the silent interval between frames.
//!
//! Never a stale reply: before each request, stray input is discarded; after a timeout or an
//! unusable reply, the line is kept quiet for a guard time (half the transaction timeout, at
//! most 500 ms) and everything that arrives is discarded, so a late reply cannot be taken as the
//! answer to the next request. On TCP the connection is dropped instead.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::frame;
use super::link::Link;
use super::port;
use super::{Error, Op, Output};
use crate::config::Line;

/// Anything bytes go through: a serial port, a pty, a TCP socket.
pub trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Stream for T {}

/// Where a line's bytes come from.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Serial(Line),
    Tcp {
        address: String,
        connect_timeout: Duration,
    },
}

impl Endpoint {
    pub(crate) async fn open(&self) -> Result<Box<dyn Stream>, Error> {
        match self {
            Endpoint::Serial(line) => Ok(Box::new(port::open(line)?)),
            Endpoint::Tcp {
                address,
                connect_timeout,
            } => {
                let stream = tokio::time::timeout(*connect_timeout, TcpStream::connect(address))
                    .await
                    .map_err(|_| Error::Unavailable(format!("connect to {address} timed out")))?
                    .map_err(|e| Error::Unavailable(format!("cannot connect to {address}: {e}")))?;
                let _ = stream.set_nodelay(true);
                Ok(Box::new(stream))
            }
        }
    }

    pub(crate) fn is_tcp(&self) -> bool {
        matches!(self, Endpoint::Tcp { .. })
    }
}

pub struct RtuLink {
    endpoint: Endpoint,
    frame_gap: Duration,
    stream: Option<Box<dyn Stream>>,
    /// When the line last carried a byte (sent or received); the next frame waits for the gap.
    last_activity: Instant,
}

impl RtuLink {
    #[must_use]
    pub fn new(endpoint: Endpoint, frame_gap: Duration) -> Self {
        RtuLink {
            endpoint,
            frame_gap,
            stream: None,
            last_activity: Instant::now(),
        }
    }

    async fn exchange(&mut self, op: &Op, timeout: Duration) -> Result<Output, Error> {
        let unit = match op {
            Op::Read { unit, .. } | Op::Write { unit, .. } => *unit,
            Op::Serial { .. } => {
                return Err(Error::Protocol(
                    "serial exchange on a modbus line".to_owned(),
                ));
            }
        };
        let request = frame::encode_request(unit, op)?;
        let gap = self.frame_gap;
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| Error::Unavailable("line not open".to_owned()))?;
        tokio::time::sleep_until(self.last_activity + gap).await;
        discard_pending(stream).await?;
        stream.write_all(&request).await.map_err(write_failed)?;
        stream.flush().await.map_err(write_failed)?;
        let sent = Instant::now();
        self.last_activity = sent;
        let deadline = sent + timeout;
        let mut reply = vec![0u8; 3];
        read_exact_by(stream, &mut reply, deadline, timeout).await?;
        let len = frame::reply_len(op, [reply[0], reply[1], reply[2]]).ok_or_else(|| {
            Error::Protocol(format!(
                "reply with function code {} to function {}",
                reply[1],
                op.function_code().unwrap_or(0)
            ))
        })?;
        if reply[0] != unit {
            return Err(Error::Protocol(format!(
                "reply from unit {} while waiting for unit {unit}",
                reply[0]
            )));
        }
        reply.resize(len, 0);
        read_exact_by(stream, &mut reply[3..], deadline, timeout).await?;
        self.last_activity = Instant::now();
        frame::decode_reply(unit, op, &reply)
    }

    /// After a failure: keep the line quiet and discard whatever arrives (late or garbled
    /// replies), or drop a TCP connection outright.
    async fn resync(&mut self, timeout: Duration) {
        if self.endpoint.is_tcp() {
            self.stream = None;
            return;
        }
        let guard = (timeout / 2).clamp(Duration::from_millis(20), Duration::from_millis(500));
        if let Some(stream) = self.stream.as_mut() {
            match port::drain(stream, guard, guard * 4).await {
                Ok(n) if n > 0 => log::debug!("discarded {n} stray bytes while resynchronising"),
                Ok(_) => {}
                Err(e) => {
                    log::debug!("line failed while resynchronising: {e}");
                    self.stream = None;
                }
            }
        }
        self.last_activity = Instant::now();
    }
}

fn write_failed(e: std::io::Error) -> Error {
    Error::Unavailable(format!("write failed: {e}"))
}

/// Reads exactly `buf.len()` bytes before `deadline`.
pub(crate) async fn read_exact_by<S: Stream + ?Sized>(
    stream: &mut S,
    buf: &mut [u8],
    deadline: Instant,
    timeout: Duration,
) -> Result<(), Error> {
    match tokio::time::timeout_at(deadline, stream.read_exact(buf)).await {
        Err(_) => Err(Error::Timeout(timeout)),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(Error::Unavailable("line closed".to_owned()))
        }
        Ok(Err(e)) => Err(Error::Unavailable(format!("read failed: {e}"))),
    }
}

/// Discards bytes already waiting (a late reply that arrived between transactions).
pub(crate) async fn discard_pending<S: Stream + ?Sized>(stream: &mut S) -> Result<(), Error> {
    let mut buf = [0u8; 256];
    loop {
        // A zero timeout polls the read once: it takes only what is already there.
        match tokio::time::timeout(Duration::ZERO, stream.read(&mut buf)).await {
            Err(_) => return Ok(()),
            Ok(Ok(0)) => return Err(Error::Unavailable("line closed".to_owned())),
            Ok(Ok(n)) => log::debug!("discarded {n} stray bytes before a request"),
            Ok(Err(e)) => return Err(Error::Unavailable(format!("read failed: {e}"))),
        }
    }
}

impl Link for RtuLink {
    async fn open(&mut self) -> Result<(), Error> {
        self.stream = Some(self.endpoint.open().await?);
        self.last_activity = Instant::now();
        Ok(())
    }

    fn is_open(&self) -> bool {
        self.stream.is_some()
    }

    async fn execute(&mut self, op: &Op, timeout: Duration) -> Result<Output, Error> {
        let result = self.exchange(op, timeout).await;
        match &result {
            Err(Error::Timeout(_) | Error::Protocol(_)) => self.resync(timeout).await,
            Err(Error::Unavailable(_)) => self.stream = None,
            _ => {}
        }
        result
    }

    fn close(&mut self) {
        self.stream = None;
    }
}

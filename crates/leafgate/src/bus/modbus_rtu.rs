//! Modbus RTU master on a serial line (or RTU frames over TCP, as serial-to-Ethernet converters
//! carry them). One line, many units: the actor runs one exchange at a time and this link keeps
//! the silent interval between frames.
//!
//! Never a stale reply: before each request, stray input is discarded; after a timeout or an
//! unusable reply, the line is kept quiet for a guard time (half the bus timeout, between 20 ms
//! and 1 s) and everything that arrives is discarded, so a late reply cannot be taken as the
//! answer to the next request. On TCP the connection is dropped instead, and the next exchange
//! connects afresh at once: the endpoint answered a moment ago and the other units behind it are
//! likely fine, so one garbling unit must not mark the bus down for its line-mates. Only a
//! connect that fails is left to the actor's backoff.
//!
//! The silent interval (3.5 characters) runs from the moment the reply's last byte was read, the
//! earliest time leafgate can know the line went quiet, and is waited out with a
//! high-resolution timer ([`GapTimer`]): tokio's 1 ms timer slots would add about a millisecond
//! to every exchange. Bytes that arrive meanwhile restart it.
//!
//! Serial writes are never flushed with `tcdrain`: tokio-serial would run it on the async worker
//! thread and block every device for the frame's transmit time. The transmit time is computed
//! from the line settings instead, and waited for asynchronously.

use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::frame;
use super::gap::GapTimer;
use super::link::{Link, Wait};
use super::port;
use super::spec::{Line, Parity};
use super::{Error, Op, Output};

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
                    .map_err(|_| Error::unavailable(format!("connect to {address} timed out")))?
                    .map_err(|e| Error::transport(format!("cannot connect to {address}"), e))?;
                let _ = stream.set_nodelay(true);
                Ok(Box::new(stream))
            }
        }
    }

    pub(crate) fn is_tcp(&self) -> bool {
        matches!(self, Endpoint::Tcp { .. })
    }

    /// Time one byte takes on the wire (start, data, parity and stop bits); zero on TCP.
    pub(crate) fn char_time(&self) -> Duration {
        match self {
            Endpoint::Tcp { .. } => Duration::ZERO,
            Endpoint::Serial(line) => {
                let bits = 1
                    + u64::from(line.data_bits)
                    + u64::from(line.stop_bits)
                    + u64::from(line.parity != Parity::None);
                Duration::from_nanos(bits * 1_000_000_000 / u64::from(line.baud_rate.max(1)))
            }
        }
    }
}

/// How long to keep a line quiet after a failure, from the configured bus timeout.
pub(crate) fn guard_time(bus_timeout: Duration) -> Duration {
    (bus_timeout / 2).clamp(Duration::from_millis(20), Duration::from_secs(1))
}

fn times(d: Duration, n: usize) -> Duration {
    d.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX))
}

pub struct RtuLink {
    endpoint: Endpoint,
    frame_gap: Duration,
    guard: Duration,
    stream: Option<Box<dyn Stream>>,
    /// A TCP connection was dropped after a timeout or an unusable reply: the next exchange
    /// connects first. The link still counts as open.
    reopen: bool,
    /// When the line last carried a byte (sent or received); the next frame waits for the gap.
    last_activity: Instant,
    gap_timer: GapTimer,
    sent: bool,
}

impl RtuLink {
    /// `bus_timeout` is the configured transaction timeout; it sets the resync guard time.
    #[must_use]
    pub fn new(endpoint: Endpoint, frame_gap: Duration, bus_timeout: Duration) -> Self {
        RtuLink {
            endpoint,
            frame_gap,
            guard: guard_time(bus_timeout),
            stream: None,
            reopen: false,
            last_activity: Instant::now(),
            gap_timer: GapTimer::new(),
            sent: false,
        }
    }

    async fn exchange(&mut self, op: &Op) -> Result<Output, Error> {
        let unit = match op {
            Op::Read { unit, .. } | Op::Write { unit, .. } => *unit,
            Op::Serial { .. } => {
                return Err(Error::Protocol(
                    "serial exchange on a modbus line".to_owned(),
                ));
            }
        };
        let request = frame::encode_request(unit, op)?;
        let tx_time = times(self.endpoint.char_time(), request.len());
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| Error::unavailable("line not open"))?;
        loop {
            self.gap_timer
                .wait_until(self.last_activity + self.frame_gap)
                .await;
            if discard_pending(stream).await? == 0 {
                break;
            }
            // Someone else spoke: the silence starts again (the exchange's limit bounds this).
            self.last_activity = Instant::now();
        }
        self.sent = true;
        stream.write_all(&request).await.map_err(write_failed)?;
        // The frame is on the wire until `tx_time` from now; the reply cannot start before.
        self.last_activity = Instant::now() + tx_time;
        let mut reply = vec![0u8; 3];
        read_exact(stream, &mut reply).await?;
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
        read_exact(stream, &mut reply[3..]).await?;
        self.last_activity = Instant::now();
        frame::decode_reply(unit, op, &reply)
    }

    /// After a failure: keep the line quiet and discard whatever arrives (late or garbled
    /// replies), or drop a TCP connection outright.
    async fn resync(&mut self) {
        if self.endpoint.is_tcp() {
            self.stream = None;
            self.reopen = true;
            return;
        }
        if let Some(stream) = self.stream.as_mut() {
            match port::drain(stream, self.guard, self.guard * 4).await {
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
    Error::transport("write failed", e)
}

/// Reads exactly `buf.len()` bytes; the caller bounds the time.
pub(crate) async fn read_exact<S: Stream + ?Sized>(
    stream: &mut S,
    buf: &mut [u8],
) -> Result<(), Error> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            Err(Error::unavailable("line closed"))
        }
        Err(e) => Err(Error::transport("read failed", e)),
    }
}

/// Discards bytes already waiting (a late reply that arrived between transactions) and returns
/// how many. A closed line is found here, before anything is sent.
pub(crate) async fn discard_pending<S: Stream + ?Sized>(stream: &mut S) -> Result<usize, Error> {
    let mut buf = [0u8; 256];
    let mut discarded = 0;
    loop {
        // Polls the read once and takes only what the reactor already knows is there. Not a
        // zero timeout: its timer entry fires at tokio's next 1 ms tick whenever the line is
        // quiet, which delayed every request. Unconstrained, so an exhausted task budget cannot
        // pass for a quiet line.
        let polled = tokio::task::coop::unconstrained(std::future::poll_fn(|cx| {
            let mut read = ReadBuf::new(&mut buf);
            match Pin::new(&mut *stream).poll_read(cx, &mut read) {
                Poll::Pending => Poll::Ready(None),
                Poll::Ready(r) => Poll::Ready(Some(r.map(|()| read.filled().len()))),
            }
        }))
        .await;
        match polled {
            None => return Ok(discarded),
            Some(Ok(0)) => return Err(Error::unavailable("line closed")),
            Some(Ok(n)) => {
                log::debug!("discarded {n} stray bytes before a request");
                discarded += n;
                // The read above ignores the budget; a flood must still let the exchange's
                // timeout and other tasks run.
                tokio::task::coop::consume_budget().await;
            }
            Some(Err(e)) => return Err(Error::transport("read failed", e)),
        }
    }
}

impl Link for RtuLink {
    async fn open(&mut self) -> Result<(), Error> {
        self.reopen = false;
        self.stream = Some(self.endpoint.open().await?);
        self.last_activity = Instant::now();
        Ok(())
    }

    fn is_open(&self) -> bool {
        self.stream.is_some() || self.reopen
    }

    async fn execute(&mut self, op: &Op, wait: Wait) -> Result<Output, Error> {
        self.sent = false;
        // One limit for reconnecting and the exchange, so neither can push past the deadline.
        let until = Instant::now() + wait.limit;
        if self.reopen {
            tokio::time::timeout_at(until, self.open())
                .await
                .map_err(|_| Error::unavailable("reconnect timed out"))??;
        }
        let result = match tokio::time::timeout_at(until, self.exchange(op)).await {
            Ok(result) => result,
            Err(_) => Err(wait.expired()),
        };
        match &result {
            Err(Error::Timeout(_) | Error::Protocol(_)) => self.resync().await,
            Err(Error::Unavailable { .. }) => self.stream = None,
            _ => {}
        }
        result
    }

    fn sent(&self) -> bool {
        self.sent
    }

    fn overhead(&self, op: &Op) -> Duration {
        let len = frame::encode_request(0, op).map_or(0, |f| f.len());
        self.frame_gap + times(self.endpoint.char_time(), len)
    }

    fn close(&mut self) {
        self.stream = None;
        self.reopen = false;
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn discarding_takes_what_is_waiting_and_never_waits_for_a_timer() {
        let (mut ours, mut theirs) = tokio::io::duplex(64);
        // Off a millisecond boundary, where a timer entry would have to wait for the next tick.
        tokio::time::advance(Duration::from_micros(500)).await;
        let before = Instant::now();
        assert_eq!(discard_pending(&mut ours).await.unwrap(), 0);
        assert_eq!(Instant::now(), before, "a quiet line cost timer time");
        theirs.write_all(&[1, 2, 3, 4, 5]).await.unwrap();
        assert_eq!(discard_pending(&mut ours).await.unwrap(), 5);
        assert_eq!(discard_pending(&mut ours).await.unwrap(), 0);
        drop(theirs);
        assert!(matches!(
            discard_pending(&mut ours).await,
            Err(Error::Unavailable { .. })
        ));
    }
}

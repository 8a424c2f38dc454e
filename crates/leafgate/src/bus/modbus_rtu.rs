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

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::time::Instant;

use super::frame;
use super::gap::GapTimer;
use super::line_io::{Endpoint, Stream, discard_pending, guard_time, read_exact};
use super::link::{Link, Wait};
use super::port;
use super::{Error, Op, Output};

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

    async fn settle(&mut self) {
        if self.stream.is_some() {
            self.gap_timer
                .wait_until(self.last_activity + self.frame_gap)
                .await;
        }
    }
}

//! A raw serial line (instruments that speak text or their own binary protocol): send bytes,
//! read one reply framed by a terminator, a fixed length, or an idle gap. Same ownership and
//! resynchronisation rules as the RTU link.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::line_io::{Endpoint, Stream, discard_pending, guard_time, read_exact};
use super::link::{Link, Wait};
use super::port;
use super::spec::SerialFraming;
use super::{Error, Op, Output};

/// Replies longer than this without a frame end are noise, not a reply.
const MAX_REPLY: usize = 4096;

pub struct SerialLink {
    endpoint: Endpoint,
    framing: SerialFraming,
    line_ending: Option<Vec<u8>>,
    guard: Duration,
    stream: Option<Box<dyn Stream>>,
    sent: bool,
}

impl SerialLink {
    #[must_use]
    pub fn new(endpoint: Endpoint, framing: SerialFraming, bus_timeout: Duration) -> Self {
        SerialLink {
            endpoint,
            framing,
            line_ending: None,
            guard: guard_time(bus_timeout),
            stream: None,
            sent: false,
        }
    }

    /// Ends every text request with `ending`, so templates need not repeat it.
    #[must_use]
    pub fn with_line_ending(mut self, ending: Option<Vec<u8>>) -> Self {
        self.line_ending = ending;
        self
    }

    /// What goes on the wire for `request`: a text request gets the line ending unless it
    /// already ends with it (a template written before the bus had one keeps working).
    fn wire<'a>(&self, request: &'a [u8], text: bool) -> std::borrow::Cow<'a, [u8]> {
        match &self.line_ending {
            Some(ending) if text && !request.ends_with(ending) => {
                std::borrow::Cow::Owned([request, ending].concat())
            }
            _ => std::borrow::Cow::Borrowed(request),
        }
    }

    async fn exchange(&mut self, request: &[u8], want_reply: bool) -> Result<Output, Error> {
        let tx_time = self.overhead_bytes(request.len());
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| Error::unavailable("line not open"))?;
        discard_pending(stream).await?;
        self.sent = true;
        stream
            .write_all(request)
            .await
            .map_err(|e| Error::transport("write failed", e))?;
        if !want_reply {
            // An instrument that answers anyway must not have its answer read as the reply to
            // the next request: wait out the transmission and a short quiet period.
            tokio::time::sleep(tx_time).await;
            port::drain(
                stream,
                Duration::from_millis(50),
                Duration::from_millis(250),
            )
            .await?;
            return Ok(Output::Written);
        }
        let reply = match &self.framing {
            SerialFraming::Length(n) => {
                let mut buf = vec![0u8; *n];
                read_exact(stream, &mut buf).await?;
                buf
            }
            SerialFraming::Terminator(term) => read_until(stream, term).await?,
            SerialFraming::IdleGap(gap) => read_until_idle(stream, *gap).await?,
        };
        Ok(Output::Reply(reply))
    }

    fn overhead_bytes(&self, n: usize) -> Duration {
        self.endpoint
            .char_time()
            .saturating_mul(u32::try_from(n).unwrap_or(u32::MAX))
    }
}

async fn read_chunk<S: Stream + ?Sized>(stream: &mut S, buf: &mut [u8]) -> Result<usize, Error> {
    match stream.read(buf).await {
        Ok(0) => Err(Error::unavailable("line closed")),
        Ok(n) => Ok(n),
        Err(e) => Err(Error::transport("read failed", e)),
    }
}

async fn read_until<S: Stream + ?Sized>(stream: &mut S, term: &[u8]) -> Result<Vec<u8>, Error> {
    let mut reply = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        let n = read_chunk(stream, &mut buf).await?;
        reply.extend_from_slice(&buf[..n]);
        if let Some(pos) = reply.windows(term.len()).position(|w| w == term) {
            if pos + term.len() < reply.len() {
                log::debug!(
                    "{} bytes after the terminator discarded",
                    reply.len() - pos - term.len()
                );
            }
            reply.truncate(pos);
            return Ok(reply);
        }
        if reply.len() > MAX_REPLY {
            return Err(Error::Protocol(format!(
                "no terminator within {MAX_REPLY} bytes"
            )));
        }
    }
}

async fn read_until_idle<S: Stream + ?Sized>(
    stream: &mut S,
    gap: Duration,
) -> Result<Vec<u8>, Error> {
    let mut reply = Vec::new();
    let mut buf = [0u8; 256];
    // The first byte may take the whole time limit; after that the reply ends at the first gap.
    let n = read_chunk(stream, &mut buf).await?;
    reply.extend_from_slice(&buf[..n]);
    loop {
        match tokio::time::timeout_at(Instant::now() + gap, read_chunk(stream, &mut buf)).await {
            Err(_) => return Ok(reply),
            Ok(n) => reply.extend_from_slice(&buf[..n?]),
        }
        if reply.len() > MAX_REPLY {
            return Err(Error::Protocol(format!(
                "reply longer than {MAX_REPLY} bytes"
            )));
        }
    }
}

impl Link for SerialLink {
    async fn open(&mut self) -> Result<(), Error> {
        self.stream = Some(self.endpoint.open().await?);
        Ok(())
    }

    fn is_open(&self) -> bool {
        self.stream.is_some()
    }

    async fn execute(&mut self, op: &Op, wait: Wait) -> Result<Output, Error> {
        self.sent = false;
        let Op::Serial {
            request,
            reply,
            text,
        } = op
        else {
            return Err(Error::Protocol(
                "modbus operation on a raw serial line".to_owned(),
            ));
        };
        let request = self.wire(request, *text);
        let result = match tokio::time::timeout(wait.limit, self.exchange(&request, *reply)).await {
            Ok(result) => result,
            Err(_) => Err(wait.expired()),
        };
        match &result {
            Err(Error::Timeout(_) | Error::Protocol(_)) => {
                if let Some(stream) = self.stream.as_mut()
                    && port::drain(stream, self.guard, self.guard * 4)
                        .await
                        .is_err()
                {
                    self.stream = None;
                }
            }
            Err(Error::Unavailable { .. }) => self.stream = None,
            _ => {}
        }
        result
    }

    fn sent(&self) -> bool {
        self.sent
    }

    fn overhead(&self, op: &Op) -> Duration {
        match op {
            Op::Serial { request, text, .. } => {
                self.overhead_bytes(self.wire(request, *text).len())
            }
            _ => Duration::ZERO,
        }
    }

    fn close(&mut self) {
        self.stream = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Line, Parity};

    #[test]
    fn the_line_ending_follows_text_once_and_never_raw_bytes() {
        let line = Line {
            path: "/dev/null".into(),
            baud_rate: 9600,
            parity: Parity::None,
            data_bits: 8,
            stop_bits: 1,
        };
        let link = SerialLink::new(
            Endpoint::Serial(line),
            SerialFraming::IdleGap(Duration::from_millis(5)),
            Duration::from_millis(100),
        );
        assert_eq!(&*link.wire(b"MEAS?", true), b"MEAS?");
        let link = link.with_line_ending(Some(b"\r\n".to_vec()));
        assert_eq!(&*link.wire(b"MEAS?", true), b"MEAS?\r\n");
        assert_eq!(&*link.wire(b"MEAS?\r\n", true), b"MEAS?\r\n");
        assert_eq!(&*link.wire(b"MEAS?\r", true), b"MEAS?\r\r\n");
        assert_eq!(&*link.wire(b"MEAS?", false), b"MEAS?");
    }
}

//! A raw serial line (instruments that speak text or their own binary protocol): send bytes,
//! read one reply framed by a terminator, a fixed length, or an idle gap. Same ownership and
//! resynchronisation rules as the RTU link.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::link::Link;
use super::modbus_rtu::{Endpoint, Stream, discard_pending, read_exact_by};
use super::port;
use super::{Error, Op, Output};
use crate::config::SerialFraming;

/// Replies longer than this without a frame end are noise, not a reply.
const MAX_REPLY: usize = 4096;

pub struct SerialLink {
    endpoint: Endpoint,
    framing: SerialFraming,
    stream: Option<Box<dyn Stream>>,
}

impl SerialLink {
    #[must_use]
    pub fn new(endpoint: Endpoint, framing: SerialFraming) -> Self {
        SerialLink {
            endpoint,
            framing,
            stream: None,
        }
    }

    async fn exchange(
        &mut self,
        request: &[u8],
        want_reply: bool,
        timeout: Duration,
    ) -> Result<Output, Error> {
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| Error::Unavailable("line not open".to_owned()))?;
        discard_pending(stream).await?;
        stream
            .write_all(request)
            .await
            .map_err(|e| Error::Unavailable(format!("write failed: {e}")))?;
        stream
            .flush()
            .await
            .map_err(|e| Error::Unavailable(format!("write failed: {e}")))?;
        if !want_reply {
            return Ok(Output::Written);
        }
        let deadline = Instant::now() + timeout;
        let reply = match &self.framing {
            SerialFraming::Length(n) => {
                let mut buf = vec![0u8; *n];
                read_exact_by(stream, &mut buf, deadline, timeout).await?;
                buf
            }
            SerialFraming::Terminator(term) => read_until(stream, term, deadline, timeout).await?,
            SerialFraming::IdleGap(gap) => read_until_idle(stream, *gap, deadline, timeout).await?,
        };
        Ok(Output::Reply(reply))
    }
}

async fn read_chunk<S: Stream + ?Sized>(
    stream: &mut S,
    buf: &mut [u8],
    until: Instant,
) -> Result<Option<usize>, Error> {
    match tokio::time::timeout_at(until, stream.read(buf)).await {
        Err(_) => Ok(None),
        Ok(Ok(0)) => Err(Error::Unavailable("line closed".to_owned())),
        Ok(Ok(n)) => Ok(Some(n)),
        Ok(Err(e)) => Err(Error::Unavailable(format!("read failed: {e}"))),
    }
}

async fn read_until<S: Stream + ?Sized>(
    stream: &mut S,
    term: &[u8],
    deadline: Instant,
    timeout: Duration,
) -> Result<Vec<u8>, Error> {
    let mut reply = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        let n = read_chunk(stream, &mut buf, deadline)
            .await?
            .ok_or(Error::Timeout(timeout))?;
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
    deadline: Instant,
    timeout: Duration,
) -> Result<Vec<u8>, Error> {
    let mut reply = Vec::new();
    let mut buf = [0u8; 256];
    // The first byte may take the whole timeout; after that the reply ends at the first gap.
    let n = read_chunk(stream, &mut buf, deadline)
        .await?
        .ok_or(Error::Timeout(timeout))?;
    reply.extend_from_slice(&buf[..n]);
    loop {
        let until = (Instant::now() + gap).min(deadline);
        match read_chunk(stream, &mut buf, until).await? {
            None => return Ok(reply),
            Some(n) => reply.extend_from_slice(&buf[..n]),
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

    async fn execute(&mut self, op: &Op, timeout: Duration) -> Result<Output, Error> {
        let Op::Serial { request, reply } = op else {
            return Err(Error::Protocol(
                "modbus operation on a raw serial line".to_owned(),
            ));
        };
        let result = self.exchange(request, *reply, timeout).await;
        match &result {
            Err(Error::Timeout(_) | Error::Protocol(_)) => {
                let guard =
                    (timeout / 2).clamp(Duration::from_millis(20), Duration::from_millis(500));
                if let Some(stream) = self.stream.as_mut() {
                    if port::drain(stream, guard, guard * 4).await.is_err() {
                        self.stream = None;
                    }
                }
            }
            Err(Error::Unavailable(_)) => self.stream = None,
            _ => {}
        }
        result
    }

    fn close(&mut self) {
        self.stream = None;
    }
}

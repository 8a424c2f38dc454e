//! Bytes on a line, whatever carries them: the Modbus RTU link and the raw serial link both open
//! a serial port or a TCP socket through [`Endpoint`], read with the same errors, and keep stale
//! input out of the next exchange the same way. Shared here so neither link borrows from the
//! other.

use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::io::{AsyncReadExt, ReadBuf};
use tokio::net::TcpStream;

use super::Error;
use super::port;
use super::spec::{Line, Parity};

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

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;
    use tokio::time::Instant;

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

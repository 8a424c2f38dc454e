//! The one serve loop every simulated device runs: read bytes, let the protocol cut them into
//! requests and decide the replies, send each reply when it is due.
//!
//! Everything lives in one task on purpose: late replies are kept in a local queue instead of
//! spawned tasks, so stopping the device (dropping the future) drops the transport and every
//! pending reply at once. That makes "unplug" immediate and observable.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{Instant, sleep_until};

/// A reply the protocol wants sent, `delay` after the request arrived.
#[derive(Debug)]
pub(crate) struct Outgoing {
    pub(crate) delay: Duration,
    pub(crate) bytes: Vec<u8>,
}

/// What the protocol says after looking at new input.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    Continue,
    /// The peer broke the protocol in a way a real device answers by dropping the connection.
    Close,
}

/// A device protocol: cuts requests out of the input and decides the replies. No I/O.
pub(crate) trait Protocol {
    /// Consumes every complete request at the front of `input`, leaving a partial one in place,
    /// and queues the replies in `out`.
    fn on_input(&mut self, input: &mut BytesMut, out: &mut Vec<Outgoing>) -> Next;

    /// How long a partial request may sit unfinished before it is thrown away (an RTU device
    /// resynchronises on line silence); `None` waits for the rest forever.
    fn discard_partial_after(&self) -> Option<Duration> {
        None
    }
}

/// Serves `protocol` on `io` until the peer closes it or it fails.
///
/// # Errors
/// When reading or writing the transport fails.
///
/// # Cancel safety
/// Dropping the future drops the transport and any replies not yet sent, like pulling the plug.
pub(crate) async fn run<T, P>(mut io: T, mut protocol: P) -> io::Result<()>
where
    T: AsyncRead + AsyncWrite + Unpin,
    P: Protocol,
{
    let mut input = BytesMut::with_capacity(512);
    let mut out = Vec::new();
    // Ordered by due time, then by arrival, so replies with equal delays keep request order.
    let mut pending: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>> = BinaryHeap::new();
    let mut queued = 0u64;
    let mut last_input = Instant::now();

    loop {
        let next_due = pending.peek().map(|Reverse((due, _, _))| *due);
        let discard_at = protocol
            .discard_partial_after()
            .filter(|_| !input.is_empty())
            .map(|idle| last_input + idle);

        tokio::select! {
            // Input first: a partial request must not be discarded while its rest is waiting to
            // be read (a stalled runtime can make both branches ready at once).
            biased;
            read = io.read_buf(&mut input) => {
                if read? == 0 {
                    return Ok(());
                }
                last_input = Instant::now();
                let next = protocol.on_input(&mut input, &mut out);
                for reply in out.drain(..) {
                    if reply.delay.is_zero() {
                        io.write_all(&reply.bytes).await?;
                    } else {
                        pending.push(Reverse((last_input + reply.delay, queued, reply.bytes)));
                        queued += 1;
                    }
                }
                io.flush().await?;
                if next == Next::Close {
                    return Ok(());
                }
            }
            () = sleep_until(next_due.unwrap_or(last_input)), if next_due.is_some() => {
                let now = Instant::now();
                while pending.peek().is_some_and(|Reverse((due, _, _))| *due <= now) {
                    if let Some(Reverse((_, _, bytes))) = pending.pop() {
                        io.write_all(&bytes).await?;
                    }
                }
                io.flush().await?;
            }
            () = sleep_until(discard_at.unwrap_or(last_input)), if discard_at.is_some() => {
                log::debug!("sim: discarding {} bytes of an unfinished request", input.len());
                input.clear();
            }
        }
    }
}

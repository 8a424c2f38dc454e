//! The transport a bus actor drives: open it, run one operation under a time limit, close it.

use std::future::Future;
use std::time::Duration;

use super::{Error, Op, Output, Timeout};

/// One physical connection (a TCP socket or a serial line). Implementations must leave the link
/// clean after any failure: after a timeout or an unusable reply they drop or resynchronise the
/// transport state, so a late reply can never be taken as the answer to the next request.
pub trait Link: Send + 'static {
    /// Opens the transport (connect a socket, open a serial device).
    fn open(&mut self) -> impl Future<Output = Result<(), Error>> + Send;
    /// Whether jobs can be run. A TCP link that dropped its connection after a timeout or an
    /// unusable reply still counts as open: it connects afresh in its next `execute` (a failure
    /// there is `Unavailable`), so one bad unit does not send the whole endpoint into backoff.
    fn is_open(&self) -> bool;
    /// Runs one operation within `wait` (see [`Wait`]).
    fn execute(
        &mut self,
        op: &Op,
        wait: Wait,
    ) -> impl Future<Output = Result<Output, Error>> + Send;
    /// Whether the last [`Link::execute`] put any byte of its request on the wire. A request
    /// that was sent may have been executed, so writes are never sent again after a failure.
    fn sent(&self) -> bool;
    /// Time an exchange of `op` needs before any reply can start: the silent interval and the
    /// time to transmit the request at the line's speed (zero on TCP).
    fn overhead(&self, op: &Op) -> Duration;
    fn close(&mut self);
    /// Waits until the line may carry the next frame (RTU: the silent interval after its last
    /// byte). The actor waits here *before* it chooses between a method and a poll, so a
    /// method that arrives during the silence goes next instead of waiting behind a poll that
    /// was chosen before it came. Nothing to wait for by default.
    fn settle(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// How long one exchange may take, and what to report if that runs out. The actor chooses the
/// limit (the bus timeout, or less when the method's deadline is nearer), so it also says which
/// of the two a timeout is: the caller learns which one fired, and only the bus timeout counts
/// against the unit.
#[derive(Debug, Clone, Copy)]
pub struct Wait {
    /// Bounds the whole exchange: the inter-frame gap, sending, and waiting for the reply.
    pub limit: Duration,
    /// Reported as [`Error::Timeout`] when `limit` runs out.
    pub timeout: Timeout,
}

impl Wait {
    /// The error for an exchange that did not complete within `limit`.
    #[must_use]
    pub fn expired(&self) -> Error {
        Error::Timeout(self.timeout)
    }
}

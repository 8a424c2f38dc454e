//! The transport a bus actor drives: open it, run one operation under a time limit, close it.

use std::future::Future;
use std::time::Duration;

use super::{Error, Op, Output};

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
    /// Runs one operation. `limit` bounds the whole exchange: the inter-frame gap, sending, and
    /// waiting for the reply.
    fn execute(
        &mut self,
        op: &Op,
        limit: Duration,
    ) -> impl Future<Output = Result<Output, Error>> + Send;
    /// Whether the last [`Link::execute`] put any byte of its request on the wire. A request
    /// that was sent may have been executed, so writes are never sent again after a failure.
    fn sent(&self) -> bool;
    /// Time an exchange of `op` needs before any reply can start: the silent interval and the
    /// time to transmit the request at the line's speed (zero on TCP).
    fn overhead(&self, op: &Op) -> Duration;
    fn close(&mut self);
}

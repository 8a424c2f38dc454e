//! The transport a bus actor drives: open it, run one operation under a timeout, close it.

use std::future::Future;
use std::time::Duration;

use super::{Error, Op, Output};

/// One physical connection (a TCP socket or a serial line). Implementations must leave the link
/// clean after any failure: after a timeout or an unusable reply they drop or resynchronise the
/// transport state, so a late reply can never be taken as the answer to the next request.
pub trait Link: Send + 'static {
    /// Opens the transport (connect a socket, open a serial device).
    fn open(&mut self) -> impl Future<Output = Result<(), Error>> + Send;
    fn is_open(&self) -> bool;
    /// Runs one operation. `timeout` bounds the whole exchange.
    fn execute(
        &mut self,
        op: &Op,
        timeout: Duration,
    ) -> impl Future<Output = Result<Output, Error>> + Send;
    fn close(&mut self);
}

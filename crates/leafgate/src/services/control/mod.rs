//! `[control]`: the local Unix socket `leafgate call` and `leafgate status` talk to, for
//! commissioning and debugging on site without the cloud.
//!
//! A call over the socket runs exactly as a direct method from the hub would: the same lookup,
//! payload checks, bus lane, deadline and status contract (`mapping::status`), and the same log
//! line, with a rid that names the caller (`local-uid1000-3`). The socket is local only and
//! trusts its file permissions (mode 0660, group leafgate, in the unit's `RuntimeDirectory=`):
//! whoever may open it may run any method on any device.
//!
//! - [`protocol`]: the requests and replies (one JSON line each way), shared by both ends.
//! - [`registry`]: what the gateway is running, kept in step by the supervisor.
//! - [`answer`]: one request against a device, for the daemon and for `--offline` alike.
//! - [`server`]: binding the socket and serving it.
//! - [`client`]: asking a running daemon.
//! - [`offline`]: `leafgate call --offline`: the bus opened by the command itself.

pub mod answer;
pub mod client;
pub mod offline;
pub mod protocol;
pub mod registry;
pub mod server;

pub use protocol::{Request, Response};
pub use registry::Registry;

//! Simulated hardware for the integration tests and `leafgate demo`.
//!
//! The gateway talks to these exactly as to real hardware: serial devices answer on real
//! pseudo-terminals that the gateway opens with tokio-serial, TCP devices on real sockets.
//!
//! - [`pty`]: a pseudo-terminal pair standing in for a USB serial adapter.
//!
//! Linux only (ptys via `posix_openpt`, `TIOCGEXCL`). What a pty cannot imitate is listed in
//! [`pty`].

pub mod pty;

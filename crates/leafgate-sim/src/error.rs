//! Why a simulated device could not be started.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// Starting a simulated device failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No pseudo-terminal could be allocated or configured.
    #[error("could not open a pseudo-terminal")]
    OpenPty(#[source] io::Error),
    /// The TCP listener could not be bound.
    #[error("could not listen on {addr}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
    /// The stable link to a pty could not be (re)created.
    #[error("could not link {link} to the simulated port")]
    Link {
        /// The symlink path.
        link: PathBuf,
        /// What the OS said.
        #[source]
        source: io::Error,
    },
}

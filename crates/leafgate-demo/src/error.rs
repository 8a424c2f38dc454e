//! Why the demo stops, one variant per part that can fail to start or go on, so the binary can
//! print what went wrong with its cause.

use std::io;
use std::path::PathBuf;

use leafgate::config;
use leafgate::gateway;
use leafgate_emulator::{self as emulator, ClientError, WaitTimeout};
use leafgate_sim as sim;

/// Why the demo could not start or go on. A method answered wrongly is not an error: it is a
/// failed [`RoundTrip`](crate::RoundTrip) in the [`Summary`](crate::Summary).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("could not create a temporary directory for the demo config")]
    TempDir(#[source] io::Error),
    #[error("could not start the simulated hardware")]
    Site(#[source] sim::Error),
    #[error("could not start the IoT Hub emulator")]
    Emulator(#[source] emulator::Error),
    #[error("could not write the demo config to {}", path.display())]
    WriteConfig {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the rendered demo config {} does not load", path.display())]
    Config {
        path: PathBuf,
        #[source]
        source: config::Error,
    },
    #[error("could not start the gateway")]
    Gateway(#[source] gateway::Error),
    #[error("a demo device did not come online in the emulator")]
    NotReady(#[source] Box<WaitTimeout>),
    #[error("could not create the service API client")]
    Client(#[source] ClientError),
    #[error("could not write the demo's output")]
    Output(#[source] io::Error),
    #[error("could not wait for Ctrl-C")]
    Signal(#[source] io::Error),
}

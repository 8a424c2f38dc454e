//! Asking a running daemon: one request, one reply.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::protocol::{Request, Response};

/// Where the packaged service listens (`[control] socket`'s default).
pub use crate::config::schema::DEFAULT_CONTROL_SOCKET as DEFAULT_SOCKET;

/// The largest reply read: a status of 10,000 devices, each with a last error, is a few MiB.
const MAX_ANSWER: u64 = 64 * 1024 * 1024;

/// Longer than any method may take (300 s), so the daemon's own deadline always answers first.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(310);
/// A status is answered from memory.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "no leafgate answers on {0}: is it running (systemctl status leafgate), and is [control] socket this path?"
    )]
    NotRunning(PathBuf),
    #[error(
        "may not open {0}: it is for group leafgate (sudo adduser $USER leafgate, then log in again) or root"
    )]
    Denied(PathBuf),
    #[error("{path}: no answer within {} s", .after.as_secs())]
    TimedOut { path: PathBuf, after: Duration },
    #[error(
        "{path}: the daemon closed the connection without an answer (it may be stopping); a call may have run"
    )]
    NoAnswer { path: PathBuf },
    #[error("{path}: not an answer: {why}")]
    BadAnswer { path: PathBuf, why: String },
    #[error("{path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Sends `request` to the daemon on `socket` and waits at most `timeout` for its reply.
///
/// # Errors
/// When no daemon answers, the socket may not be opened, or the reply is missing or malformed.
pub async fn ask(socket: &Path, request: &Request, timeout: Duration) -> Result<Response, Error> {
    let path = socket.to_path_buf();
    tokio::time::timeout(timeout, exchange(socket, request))
        .await
        .map_err(|_| Error::TimedOut {
            path: path.clone(),
            after: timeout,
        })?
}

async fn exchange(socket: &Path, request: &Request) -> Result<Response, Error> {
    let path = socket.to_path_buf();
    let stream = UnixStream::connect(socket)
        .await
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                Error::NotRunning(path.clone())
            }
            io::ErrorKind::PermissionDenied => Error::Denied(path.clone()),
            _ => Error::Io {
                path: path.clone(),
                source: e,
            },
        })?;
    let io = |source| Error::Io {
        path: path.clone(),
        source,
    };
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(request).map_err(|e| Error::BadAnswer {
        path: path.clone(),
        why: e.to_string(),
    })?;
    line.push(b'\n');
    write.write_all(&line).await.map_err(io)?;
    let mut answer = Vec::new();
    BufReader::new(read)
        .take(MAX_ANSWER)
        .read_until(b'\n', &mut answer)
        .await
        .map_err(io)?;
    if answer.is_empty() {
        return Err(Error::NoAnswer { path });
    }
    serde_json::from_slice(&answer).map_err(|e| Error::BadAnswer {
        path,
        why: e.to_string(),
    })
}

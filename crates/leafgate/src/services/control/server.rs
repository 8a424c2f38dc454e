//! Serving the control socket: one request per connection, read within [`REQUEST_TIMEOUT`] and
//! bounded by [`MAX_REQUEST`], answered within [`WRITE_TIMEOUT`], at most [`MAX_CONNECTIONS`]
//! at once. A client that says nothing, sends garbage or never reads costs a slot for seconds,
//! never a method's time.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::answer;
use super::protocol::{MAX_NAME, MAX_REQUEST, Request, Response};
use super::registry::Registry;
use crate::mapping::{Failure, respond};

/// A client must send its request within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// And take the answer within this (a status of 10,000 devices is a few MB).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a socket already at the path may take to accept before it counts as a live,
/// wedged daemon's.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// Requests served at once; more are answered 503 at once.
pub const MAX_CONNECTIONS: usize = 16;
/// Group `leafgate` may read and write; others nothing (the unit's `UMask=0077` would give 0600).
const MODE: u32 = 0o660;

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("another leafgate answers on {0}")]
    InUse(PathBuf),
    #[error("{0} exists and is not a socket; not removing it")]
    NotASocket(PathBuf),
    #[error(
        "{path}: directory {dir} does not exist (systemd creates /run/leafgate for the service; when running by hand, set [control] socket to a path in a directory you may write, or \"\" to turn it off)"
    )]
    NoDirectory { path: PathBuf, dir: PathBuf },
    #[error("cannot listen on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The socket's file, by path and identity, so that only that file is removed at the end.
pub struct Placed {
    path: PathBuf,
    file: (u64, u64),
}

impl Placed {
    /// Removes the socket file, unless another has taken its place since.
    pub fn remove(&self) {
        use std::os::unix::fs::MetadataExt as _;
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == self.file => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    log::debug!(service = "control"; "control: cannot remove {}: {e}", self.path.display());
                }
            }
            _ => {}
        }
    }
}

/// Binds the socket at `path` with mode 0660. A socket file left by a daemon that died (no one
/// accepts on it) is replaced; one a live daemon answers on, or a file that is not a socket, is
/// left alone.
///
/// # Errors
/// Why the socket cannot be served.
pub async fn bind(path: &Path) -> Result<(UnixListener, Placed), BindError> {
    use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
    let io = |source| BindError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent()
        && !dir.is_dir()
    {
        return Err(BindError::NoDirectory {
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
        });
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match tokio::time::timeout(PROBE_TIMEOUT, UnixStream::connect(path)).await {
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path).map_err(io)?;
                }
                Ok(Err(e)) => return Err(io(e)),
                // Accepted, or a backlog so full that it does not even refuse: someone lives.
                Ok(Ok(_)) | Err(_) => return Err(BindError::InUse(path.to_path_buf())),
            }
        }
        Ok(_) => return Err(BindError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    let placed = std::fs::set_permissions(path, std::fs::Permissions::from_mode(MODE))
        .and_then(|()| std::fs::symlink_metadata(path));
    match placed {
        Ok(meta) => Ok((
            listener,
            Placed {
                path: path.to_path_buf(),
                file: (meta.dev(), meta.ino()),
            },
        )),
        Err(e) => {
            let _ = std::fs::remove_file(path);
            Err(io(e))
        }
    }
}

/// Serves `registry` on `listener` until `stop`. From `stopping` on (the daemon drains), calls
/// and reads get 503 like the hub's requests; status still answers.
pub async fn serve(
    listener: UnixListener,
    registry: Arc<Registry>,
    config: PathBuf,
    stopping: CancellationToken,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let requests = Arc::new(AtomicU64::new(0));
    let config: Arc<Path> = config.into();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, mostly: wait a moment rather than spin.
                log::warn!(service = "control"; "control: cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            // Best effort and without waiting: a client that does not read loses the answer.
            let busy = Response {
                status: 503,
                payload: serde_json::json!({"error": "busy", "message": format!("{MAX_CONNECTIONS} control requests in progress; try again")}),
            };
            let _ = stream.try_write(&busy.to_line());
            continue;
        };
        let registry = registry.clone();
        let config = config.clone();
        let stopping = stopping.clone();
        let n = requests.fetch_add(1, Ordering::Relaxed) + 1;
        tokio::spawn(async move {
            if let Err(e) = serve_one(stream, registry, &config, &stopping, n).await {
                log::debug!(service = "control", rid = n; "control: request {n}: {e}");
            }
            drop(slot);
        });
    }
}

/// One connection: one request, one reply.
async fn serve_one(
    stream: UnixStream,
    registry: Arc<Registry>,
    config: &Path,
    stopping: &CancellationToken,
    n: u64,
) -> io::Result<()> {
    // Who asks: in the rid of every call, so the journal says who ran what on the hardware.
    let uid = stream
        .peer_cred()
        .map_or_else(|_| "?".to_owned(), |c| c.uid().to_string());
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let limit = u64::try_from(MAX_REQUEST).unwrap_or(u64::MAX) + 1;
    let mut reader = BufReader::new(read).take(limit);
    let answer =
        match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
            Err(_) => Response::bad_request(format!(
                "no request line within {} s",
                REQUEST_TIMEOUT.as_secs()
            ))
            .to_line(),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(_)) if line.len() > MAX_REQUEST => {
                Response::bad_request(format!("request longer than {MAX_REQUEST} bytes")).to_line()
            }
            Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
                Err(e) => Response::bad_request(format!(
                    "not a request: {e} (one JSON object per line, e.g. {{\"op\":\"status\"}})"
                ))
                .to_line(),
                Ok(request) => {
                    let rid = format!("local-uid{uid}-{n}");
                    handle(request, registry, config, stopping, &rid).await
                }
            },
        };
    tokio::time::timeout(WRITE_TIMEOUT, async {
        write.write_all(&answer).await?;
        write.shutdown().await
    })
    .await
    .map_err(|_| {
        io::Error::new(
            io::ErrorKind::TimedOut,
            "the client did not take the answer",
        )
    })?
}

/// The answer's line.
async fn handle(
    request: Request,
    registry: Arc<Registry>,
    config: &Path,
    stopping: &CancellationToken,
    rid: &str,
) -> Vec<u8> {
    let Some((id, work)) = request.work() else {
        // Tens of milliseconds at 10,000 devices: off the workers that carry methods.
        let config = config.to_path_buf();
        let built =
            tokio::task::spawn_blocking(move || answer::status(&registry, &config).to_line()).await;
        return built.unwrap_or_else(|e| {
            Response::internal(format!("cannot build the status: {e}")).to_line()
        });
    };
    let names = [id.as_str(), work.name()];
    if let Some(long) = names.iter().find(|n| n.chars().count() > MAX_NAME) {
        return Response::bad_request(format!(
            "a name of {} characters; ids, methods and groups have at most {MAX_NAME}",
            long.chars().count()
        ))
        .to_line();
    }
    let Some(device) = registry.device(&id) else {
        // Compared with every id: off the workers, outside the registry's lock.
        let ids = registry.device_ids();
        let nearest = tokio::task::spawn_blocking(move || {
            crate::config::suggest::nearest(&id, ids.iter().map(String::as_str))
                .map(str::to_owned)
                .map_or_else(|| (id.clone(), None), |n| (id.clone(), Some(n)))
        })
        .await;
        return match nearest {
            Ok((id, nearest)) => Response::not_found("device", &id, nearest.as_deref()),
            Err(e) => Response::internal(format!("cannot look the device up: {e}")),
        }
        .to_line();
    };
    if stopping.is_cancelled() {
        let (status, payload, _) = respond(&Failure::ShuttingDown {
            bus: device.bus.clone(),
        });
        return Response { status, payload }.to_line();
    }
    // Tracked: the daemon's drain waits for it like for a method from the hub.
    let run = answer::run(&device, &work, rid);
    registry.calls.track_future(run).await.to_line()
}

//! Serving the control socket: one request per connection, read within [`REQUEST_TIMEOUT`] and
//! bounded by [`MAX_REQUEST`], at most [`MAX_CONNECTIONS`] at once.

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
use super::protocol::{MAX_REQUEST, Request, Response};
use super::registry::Registry;
use crate::mapping::{Failure, respond};

/// A client must send its request within this.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
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

/// Binds the socket at `path` with mode 0660. A socket file left by a daemon that died is
/// replaced; one a live daemon answers on, or a file that is not a socket, is left alone.
///
/// # Errors
/// Why the socket cannot be served.
pub fn bind(path: &Path) -> Result<UnixListener, BindError> {
    use std::os::unix::fs::{FileTypeExt as _, PermissionsExt as _};
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
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(BindError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(io)?;
        }
        Ok(_) => return Err(BindError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(MODE)).map_err(io)?;
    Ok(listener)
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
    let config: Arc<Path> = config.into();
    let requests = Arc::new(AtomicU64::new(0));
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
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
            if let Err(e) = serve_one(stream, &registry, &config, &stopping, n).await {
                log::debug!(service = "control"; "control: connection {n}: {e}");
            }
            drop(slot);
        });
    }
}

/// One connection: one request, one reply.
async fn serve_one(
    stream: UnixStream,
    registry: &Registry,
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
    let response =
        match tokio::time::timeout(REQUEST_TIMEOUT, reader.read_until(b'\n', &mut line)).await {
            Err(_) => Response::bad_request(format!(
                "no request line within {} s",
                REQUEST_TIMEOUT.as_secs()
            )),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(_)) if line.len() > MAX_REQUEST => {
                Response::bad_request(format!("request longer than {MAX_REQUEST} bytes"))
            }
            Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
                Err(e) => Response::bad_request(format!(
                    "not a request: {e} (one JSON object per line, e.g. {{\"op\":\"status\"}})"
                )),
                Ok(request) => {
                    let rid = format!("local-uid{uid}-{n}");
                    handle(request, registry, config, stopping, &rid).await
                }
            },
        };
    write.write_all(&response.to_line()).await?;
    write.shutdown().await
}

async fn handle(
    request: Request,
    registry: &Registry,
    config: &Path,
    stopping: &CancellationToken,
    rid: &str,
) -> Response {
    let (id, work) = match request {
        Request::Status => return answer::status(registry, config),
        Request::Call {
            device,
            method,
            payload,
        } => (device, Work::Call(method, payload)),
        Request::Read { device, group } => (device, Work::Read(group)),
    };
    let Some(device) = registry.device(&id) else {
        return Response::not_found("device", &id, registry.nearest_device(&id).as_deref());
    };
    if stopping.is_cancelled() {
        let (status, payload, _) = respond(&Failure::ShuttingDown {
            bus: device.bus.clone(),
        });
        return Response { status, payload };
    }
    match work {
        Work::Call(method, payload) => answer::call(&device, &method, &payload, rid).await,
        Work::Read(group) => answer::read(&device, &group).await,
    }
}

enum Work {
    Call(String, serde_json::Value),
    Read(String),
}

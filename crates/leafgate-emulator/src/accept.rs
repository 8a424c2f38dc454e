//! What every listener without fault injection does (the service API, DPS): bind an optional
//! address, then accept until shutdown, one task per connection, backing off a moment when
//! accept fails instead of spinning. The MQTT listeners have their own loop, which closes and
//! reopens the socket for injected faults.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use crate::Shared;

/// Binds `addr` when there is one; the listener and the address it got.
///
/// # Errors
/// `error` of the address and the bind's failure.
pub(crate) async fn bind_optional<E>(
    addr: Option<SocketAddr>,
    error: impl Fn(SocketAddr, io::Error) -> E,
) -> Result<Option<(TcpListener, SocketAddr)>, E> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let listener = TcpListener::bind(addr).await.map_err(|e| error(addr, e))?;
    let local = listener.local_addr().map_err(|e| error(addr, e))?;
    Ok(Some((listener, local)))
}

/// Accepts on `listener` until shutdown and runs `serve` for each connection on a task of its
/// own; `done` is held by each task, so shutdown can wait for them all.
pub(crate) async fn accept_until_shutdown<F, Fut>(
    listener: TcpListener,
    shared: &Arc<Shared>,
    name: &str,
    done: mpsc::Sender<()>,
    mut serve: F,
) where
    F: FnMut(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let accepted = tokio::select! {
            biased;
            () = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let connection = serve(tcp, peer);
                let done = done.clone();
                tokio::spawn(async move {
                    connection.await;
                    drop(done);
                });
            }
            Err(e) => {
                if !accept_failed(shared, name, &e).await {
                    break;
                }
            }
        }
    }
}

/// After a failed accept (out of file descriptors and the like): says so and backs off a
/// moment instead of spinning. False when the emulator shut down meanwhile.
pub(crate) async fn accept_failed(shared: &Shared, name: &str, error: &io::Error) -> bool {
    log::warn!("emulator: {name} accept failed: {error}");
    tokio::select! {
        () = shared.shutdown.cancelled() => false,
        () = tokio::time::sleep(Duration::from_millis(100)) => true,
    }
}

//! Accepting DPS connections until shutdown, one task each. DPS is not the hub: the hub's
//! injected faults and [`Emulator::drop_all_connections`](crate::Emulator::drop_all_connections)
//! do not touch it.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use super::connection::serve;
use crate::Shared;

pub(crate) async fn run(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    done: mpsc::Sender<()>,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            () = shared.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let _ = tcp.set_nodelay(true);
                let shared = Arc::clone(&shared);
                let acceptor = acceptor.clone();
                let done = done.clone();
                tokio::spawn(async move {
                    serve(&shared, acceptor, tcp, peer).await;
                    drop(done);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off a moment instead of spinning.
                log::warn!("emulator: dps accept failed: {e}");
                tokio::select! {
                    () = shared.shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}

//! Accepting DPS connections until shutdown, one task each. DPS is not the hub: the hub's
//! injected faults and [`Emulator::drop_all_connections`](crate::Emulator::drop_all_connections)
//! do not touch it.

use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;

use super::connection::serve;
use crate::Shared;
use crate::accept::accept_until_shutdown;

pub(crate) async fn run(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    done: mpsc::Sender<()>,
) {
    accept_until_shutdown(listener, &shared, "dps", done, |tcp, peer| {
        let _ = tcp.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let acceptor = acceptor.clone();
        async move { serve(&shared, acceptor, tcp, peer).await }
    })
    .await;
}

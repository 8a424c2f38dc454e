//! Accepting device connections, one task each. The listener is the only part that sees the TCP
//! level, so the faults that act there (refuse, close at once) are applied here.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::connection::serve;
use crate::Shared;
use crate::clock::sleep_until_some;
use crate::history::AttemptOutcome;

/// Accepts device connections until shutdown, one task each. While a [`Fault::RefuseTcp`](crate::Fault::RefuseTcp) is
/// active the listening socket is closed (the kernel refuses connections); `addr` is bound again
/// when it ends.
pub(crate) async fn run(
    listener: TcpListener,
    addr: SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    done: mpsc::Sender<()>,
) {
    let mut listener = Some(listener);
    let mut faults = shared.faults.subscribe();
    loop {
        faults.borrow_and_update();
        if let Some(active) = shared.faults.refuse_tcp() {
            if listener.take().is_some() {
                log::info!("emulator: mqtt listener on {addr} closed by an injected fault");
                shared.listening.send_replace(false);
            }
            tokio::select! {
                biased;
                () = shared.shutdown.cancelled() => break,
                _ = faults.changed() => {}
                () = sleep_until_some(active.until) => {}
            }
            continue;
        }
        let current = match &mut listener {
            Some(current) => current,
            None => match TcpListener::bind(addr).await {
                Ok(bound) => {
                    log::info!("emulator: mqtt listener on {addr} open again");
                    shared.listening.send_replace(true);
                    listener.insert(bound)
                }
                Err(e) => {
                    // Someone took the port meanwhile (unlikely on loopback); keep trying.
                    log::warn!("emulator: cannot bind the mqtt listener on {addr} again: {e}");
                    tokio::select! {
                        () = shared.shutdown.cancelled() => break,
                        () = tokio::time::sleep(Duration::from_millis(50)) => {}
                    }
                    continue;
                }
            },
        };
        let accepted = tokio::select! {
            biased;
            () = shared.shutdown.cancelled() => break,
            _ = faults.changed() => continue,
            accepted = current.accept() => accepted,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let tcp_at = Instant::now();
                if shared.faults.close_tcp() {
                    // RST rather than FIN: the connection is refused, not ended.
                    let _ = tcp.set_zero_linger();
                    drop(tcp);
                    shared
                        .history
                        .attempt(tcp_at, None, None, AttemptOutcome::ClosedTcp);
                    continue;
                }
                // Small request/response packets: do not wait for Nagle.
                let _ = tcp.set_nodelay(true);
                let shared = Arc::clone(&shared);
                let acceptor = acceptor.clone();
                let done = done.clone();
                tokio::spawn(async move {
                    serve(&shared, acceptor, tcp, peer, tcp_at).await;
                    drop(done);
                });
            }
            Err(e) => {
                // Out of file descriptors and the like: back off a moment instead of spinning.
                log::warn!("emulator: mqtt accept failed: {e}");
                tokio::select! {
                    () = shared.shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
            }
        }
    }
}

//! Accepting device connections, one task each, on the MQTT (8883) listener and, when
//! configured, the WebSocket (443) one: both run this loop, so the faults that act on the TCP
//! level (refuse, close at once) are applied here, to both alike.

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
use crate::wire::DeviceTransport;

/// Accepts device connections for `transport` until shutdown, one task each. While a
/// [`Fault::RefuseTcp`](crate::Fault::RefuseTcp) is active the listening socket is closed (the
/// kernel refuses connections), counted in [`Shared::closed_listeners`]; `addr` is bound again
/// when it ends.
pub(crate) async fn run(
    listener: TcpListener,
    addr: SocketAddr,
    transport: DeviceTransport,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    done: mpsc::Sender<()>,
) {
    let name = transport.as_str();
    let mut listener = Some(listener);
    let mut faults = shared.faults.subscribe();
    loop {
        faults.borrow_and_update();
        if let Some(active) = shared.faults.refuse_tcp() {
            if listener.take().is_some() {
                log::info!("emulator: {name} listener on {addr} closed by an injected fault");
                shared.closed_listeners.send_modify(|closed| *closed += 1);
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
                    log::info!("emulator: {name} listener on {addr} open again");
                    shared
                        .closed_listeners
                        .send_modify(|closed| *closed = closed.saturating_sub(1));
                    listener.insert(bound)
                }
                Err(e) => {
                    // Someone took the port meanwhile (unlikely on loopback); keep trying.
                    log::warn!("emulator: cannot bind the {name} listener on {addr} again: {e}");
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
                    serve(&shared, acceptor, tcp, peer, tcp_at, transport).await;
                    drop(done);
                });
            }
            Err(e) => {
                if !crate::accept::accept_failed(&shared, name, &e).await {
                    break;
                }
            }
        }
    }
}

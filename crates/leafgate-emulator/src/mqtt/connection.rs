//! One device connection from TLS handshake (and WebSocket upgrade) to close: the first CONNECT, the faults that act on
//! it, authentication, taking over from an older connection, and recording how it ended. What
//! happens between CONNACK and the end is the session's job.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::mqttbytes;
use rumqttc::mqttbytes::v4::{ConnAck, ConnectReturnCode, Packet};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::handshake::{Handshaken, handshake};
use super::link::{Link, LinkError, packet_name};
use super::session::{Session, idle_timeout};
use crate::clock::{sleep_until_some, unix_now};
use crate::connect::{self, Accepted, ClientCert};
use crate::faults::{Active, Fault};
use crate::history::AttemptOutcome;
use crate::registry::{Connection, DisconnectReason};
use crate::wire::{ConnectRecord, DeviceTransport};
use crate::{RefusalReason, Shared};

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Method requests queued for one connection; callers wait (within their timeout) beyond that.
const OUTBOUND_QUEUE: usize = 64;

/// One device connection, from TLS handshake to close.
pub(super) async fn serve(
    shared: &Shared,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    tcp_at: Instant,
    transport: DeviceTransport,
) {
    let kill = shared.connection_token();
    let no_connect = || {
        shared
            .history
            .attempt(tcp_at, None, None, AttemptOutcome::NoConnect);
    };
    let handshake = tokio::select! {
        biased;
        () = kill.cancelled() => {
            no_connect();
            return;
        }
        handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(acceptor, tcp, transport)) => handshake,
    };
    let Handshaken {
        mut link,
        tls_version,
        client_chain,
    } = match handshake {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            log::debug!("emulator: {} {peer}: {e}", transport.as_str());
            no_connect();
            return;
        }
        Err(_) => {
            log::debug!(
                "emulator: {} {peer}: handshake timed out",
                transport.as_str()
            );
            no_connect();
            return;
        }
    };
    let first = tokio::select! {
        biased;
        () = kill.cancelled() => Err(None),
        first = tokio::time::timeout(CONNECT_TIMEOUT, link.next_packet()) => match first {
            Ok(Ok(Packet::Connect(connect))) => Ok(connect),
            Ok(Ok(other)) => Err(Some(format!("first packet is {}, not CONNECT", packet_name(&other)))),
            Ok(Err(LinkError::Malformed(mqttbytes::Error::InvalidProtocolLevel(level)))) => {
                // MQTT 3.1.1 section 3.2.2.3: answer 0x01 and close.
                let reason = RefusalReason::ProtocolVersion(level);
                refuse(shared, &mut link, "", &reason).await;
                shared.history.attempt(tcp_at, Some(Instant::now()), None, AttemptOutcome::Refused(reason));
                link.close().await;
                return;
            }
            Ok(Err(e)) => Err(Some(e.to_string())),
            Err(_) => Err(Some("no CONNECT within 10 s".to_owned())),
        },
    };
    let connect = match first {
        Ok(connect) => connect,
        Err(why) => {
            if let Some(why) = why {
                log::debug!("emulator: mqtt {peer}: {why}");
            }
            no_connect();
            link.close().await;
            return;
        }
    };
    let connect_at = Instant::now();
    let attempt = |outcome| {
        shared.history.attempt(
            tcp_at,
            Some(connect_at),
            Some(connect.client_id.clone()),
            outcome,
        )
    };
    // Never log `connect` itself: it holds the SAS token. The record keeps only its shape.
    let mut record = ConnectRecord::new(&connect);
    record.tls_version = tls_version;
    record.transport = transport;
    record.client_cert = !client_chain.is_empty();
    shared.registry.record_connect(record);
    if let Some(active) = shared.faults.on_connect(&connect.client_id) {
        let refusal = match &active.fault {
            Fault::Refuse(_) => Some(RefusalReason::Injected),
            Fault::Throttle(_) => Some(RefusalReason::Throttled),
            // Telemetry, twin and C2D faults never strike a CONNECT (`Faults::on_connect` skips them).
            Fault::Stall(_)
            | Fault::Hangup(_)
            | Fault::RefuseTcp
            | Fault::CloseTcp
            | Fault::WithholdPubacks(_)
            | Fault::DropBeforePuback { .. }
            | Fault::QuotaExceeded(_)
            | Fault::TwinThrottle(_)
            | Fault::TwinSilent(_)
            | Fault::LoseC2dAcks(_) => None,
        };
        if let Some(reason) = refusal {
            refuse(shared, &mut link, &connect.client_id, &reason).await;
            attempt(AttemptOutcome::Refused(reason));
        } else {
            let seq = attempt(AttemptOutcome::Faulted(active.fault.clone()));
            if matches!(active.fault, Fault::Stall(_)) {
                stall(shared, &mut link, &kill, &connect.client_id, &active).await;
                shared.history.attempt_closed(seq);
            }
            log::debug!(
                "emulator: mqtt {peer}: CONNECT from {:?} met an injected fault: {:?}",
                connect.client_id,
                active.fault
            );
        }
        link.close().await;
        return;
    }
    let client_cert = ClientCert {
        chain: &client_chain,
        cas: &shared.verified_cas,
    };
    let accepted =
        connect::authenticate(&connect, &shared.host_name, unix_now(), client_cert, |id| {
            shared.registry.device_credential(id)
        });
    let Accepted {
        device_id,
        token_expiry,
        handle: entry,
    } = match accepted {
        Ok(accepted) => accepted,
        Err(reason) => {
            refuse(shared, &mut link, &connect.client_id, &reason).await;
            attempt(AttemptOutcome::Refused(reason));
            link.close().await;
            return;
        }
    };
    let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
    let conn = Arc::new(Connection::new(
        shared.registry.next_connection_id(),
        tx,
        kill,
    ));
    let resumed = match shared
        .registry
        .attach(&entry, Arc::clone(&conn), connect.clean_session)
    {
        Ok(resumed) => resumed,
        Err(reason) => {
            refuse(shared, &mut link, &device_id, &reason).await;
            attempt(AttemptOutcome::Refused(reason));
            link.close().await;
            return;
        }
    };
    attempt(AttemptOutcome::Accepted);
    log::debug!(
        "emulator: mqtt {peer}: device {device_id} connected (connection {})",
        conn.id
    );
    let mut session = Session {
        shared,
        entry: &entry,
        conn: &conn,
        device_id: &device_id,
        subscriptions: resumed.subscriptions,
        persistent: !connect.clean_session,
        withheld: Vec::new(),
        withholding: None,
        c2d_next_pkid: 1,
        c2d_deadline: None,
    };
    if !session.subscriptions.is_empty() {
        session.publish_subscriptions();
    }
    let reason = match link
        .send(Packet::ConnAck(ConnAck::new(
            ConnectReturnCode::Success,
            resumed.session_present,
        )))
        .await
    {
        Ok(()) => {
            session
                .run(
                    &mut link,
                    rx,
                    idle_timeout(connect.keep_alive),
                    token_expiry,
                )
                .await
        }
        Err(e) => e.into_reason(),
    };
    match &reason {
        DisconnectReason::ProtocolViolation(_) | DisconnectReason::NotEmulated(_) => {
            log::warn!("emulator: device {device_id} disconnected: {reason}");
        }
        _ => log::debug!("emulator: device {device_id} disconnected: {reason}"),
    }
    shared.registry.detach(&entry, conn.id, &reason);
    link.close().await;
}

/// Holds a stalled CONNECT: reads (and drops) whatever the device sends, answers nothing, until
/// the device closes, the connection is dropped, or the fault ends.
async fn stall(
    shared: &Shared,
    link: &mut Link,
    kill: &CancellationToken,
    client_id: &str,
    active: &Active,
) {
    let mut faults = shared.faults.subscribe();
    loop {
        faults.borrow_and_update();
        if !shared.faults.still(active, client_id) {
            return;
        }
        tokio::select! {
            biased;
            () = kill.cancelled() => return,
            () = sleep_until_some(active.until) => return,
            _ = faults.changed() => {}
            filled = link.fill() => {
                if filled.is_err() {
                    return;
                }
                // Nothing is answered before a CONNACK; keep the buffer from growing.
                link.rbuf.clear();
            }
        }
    }
}

/// Records a refusal and sends the CONNACK for it.
async fn refuse(shared: &Shared, link: &mut Link, client_id: &str, reason: &RefusalReason) {
    log::debug!("emulator: refused CONNECT from {client_id:?}: {reason}");
    shared.registry.record_refusal(client_id, reason);
    let code = connect::return_code(reason);
    let _ = link.send(Packet::ConnAck(ConnAck::new(code, false))).await;
}

//! The device endpoint: MQTT 3.1.1 over TLS, one task per connection (`iothub-protocol.md` 1, 3
//! and checklist 10).
//!
//! A connection task owns its socket: it reads and decodes with rumqttc's codec, answers
//! CONNECT/SUBSCRIBE/PINGREQ/PUBLISH, and writes method requests that [`super::methods`] queues
//! for it. The registry only holds a handle to queue messages and to close the connection with a
//! reason. Any input the hub would not accept closes that one connection; nothing a client sends
//! can panic the emulator or grow a buffer past [`MAX_INCOMING_PACKET`].

use std::io;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck, Subscribe, SubscribeReasonCode,
    UnsubAck, Unsubscribe,
};
use rumqttc::mqttbytes::{self, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::connect::{self, Accepted};
use super::faults::{Active, Fault};
use super::history::AttemptOutcome;
use super::registry::{Connection, DeviceEntry, DisconnectReason, Outbound, Subscription};
use super::topic_filter::known_filter;
use super::wire::ConnectRecord;
use leafgate::hub::topics;

/// Largest packet accepted from a device: a 256 KB telemetry message plus room for its topic
/// and property bag. Larger packets close the connection before their body is buffered.
pub(crate) const MAX_INCOMING_PACKET: usize = 264 * 1024;
/// Largest packet sent: a 128 KB method request plus its topic, with margin.
const MAX_OUTGOING_PACKET: usize = 192 * 1024;
/// Telemetry limit (`iothub-protocol.md` 6.1).
const MAX_TELEMETRY: usize = 256 * 1024;
/// Subscriptions allowed per connection.
pub(crate) const MAX_SUBSCRIPTIONS: usize = 5;
/// Azure's load-balancer idle timeout, which caps 1.5 x keep-alive.
const KEEP_ALIVE_CAP: Duration = Duration::from_secs(1767);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A device that does not read for this long is treated as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Method requests queued for one connection; callers wait (within their timeout) beyond that.
const OUTBOUND_QUEUE: usize = 64;
/// Read buffers shrink back to this after a large packet, so idle connections stay small.
const READ_CHUNK: usize = 2048;

/// How long a connection may stay silent: 1.5 x keep-alive, capped at 1767 s. A keep-alive of 0
/// (MQTT's "off") still gets the cap, as the hub's load balancer would apply it.
pub(crate) fn idle_timeout(keep_alive_s: u16) -> Duration {
    if keep_alive_s == 0 {
        return KEEP_ALIVE_CAP;
    }
    (Duration::from_secs(u64::from(keep_alive_s)) * 3 / 2).min(KEEP_ALIVE_CAP)
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// When a token expiring at `se` (Unix seconds) runs out, as a tokio instant.
fn expiry_instant(se: u64) -> Instant {
    let at = UNIX_EPOCH + Duration::from_secs(se);
    let left = at
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    // Keep far-future tokens from overflowing Instant arithmetic.
    Instant::now() + left.min(Duration::from_secs(10 * 365 * 24 * 3600))
}

/// Sleeps until `at`, or forever without one.
async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Accepts device connections until shutdown, one task each. While a [`Fault::RefuseTcp`] is
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

/// Why a link read or write failed.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error("peer closed the connection")]
    Eof,
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("malformed packet: {0}")]
    Malformed(mqttbytes::Error),
    #[error("packet decoder panicked")]
    DecoderPanicked,
    #[error("could not encode packet: {0}")]
    Encode(mqttbytes::Error),
    #[error("write timed out")]
    WriteTimeout,
}

impl LinkError {
    fn into_reason(self) -> DisconnectReason {
        match self {
            LinkError::Eof | LinkError::Io(_) | LinkError::WriteTimeout | LinkError::Encode(_) => {
                DisconnectReason::ConnectionLost(self.to_string())
            }
            LinkError::Malformed(_) | LinkError::DecoderPanicked => {
                DisconnectReason::ProtocolViolation(self.to_string())
            }
        }
    }
}

/// A TLS stream with bounded read and write buffers.
struct Link {
    stream: TlsStream<TcpStream>,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

/// Decodes one packet if the buffer holds a whole one. rumqttc's codec checks lengths, but it is
/// third-party code fed by the network: a panic in it must close one connection, not leave the
/// registry believing a dead device is online.
fn decode(buf: &mut BytesMut) -> Result<Option<Packet>, LinkError> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| Packet::read(buf, MAX_INCOMING_PACKET))) {
        Ok(Ok(packet)) => Ok(Some(packet)),
        Ok(Err(mqttbytes::Error::InsufficientBytes(_))) => Ok(None),
        Ok(Err(e)) => Err(LinkError::Malformed(e)),
        Err(_) => Err(LinkError::DecoderPanicked),
    }
}

impl Link {
    fn new(stream: TlsStream<TcpStream>) -> Self {
        Link {
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::new(),
        }
    }

    fn decode(&mut self) -> Result<Option<Packet>, LinkError> {
        let packet = decode(&mut self.rbuf)?;
        if self.rbuf.is_empty() && self.rbuf.capacity() > 16 * READ_CHUNK {
            self.rbuf = BytesMut::with_capacity(READ_CHUNK);
        }
        Ok(packet)
    }

    /// Reads more bytes into the buffer.
    ///
    /// # Cancel safety
    /// Cancel safe: bytes read are kept in `rbuf`, so dropping this future loses nothing.
    async fn fill(&mut self) -> Result<(), LinkError> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 2 {
            self.rbuf.reserve(READ_CHUNK);
        }
        match self.stream.read_buf(&mut self.rbuf).await? {
            0 => Err(LinkError::Eof),
            _ => Ok(()),
        }
    }

    /// The next packet. Cancel safe, like [`Link::fill`].
    async fn next_packet(&mut self) -> Result<Packet, LinkError> {
        loop {
            if let Some(packet) = self.decode()? {
                return Ok(packet);
            }
            self.fill().await?;
        }
    }

    async fn send(&mut self, packet: Packet) -> Result<(), LinkError> {
        self.wbuf.clear();
        packet
            .write(&mut self.wbuf, MAX_OUTGOING_PACKET)
            .map_err(LinkError::Encode)?;
        let write = async {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(result) => result.map_err(LinkError::Io),
            Err(_) => Err(LinkError::WriteTimeout),
        }
    }

    /// Closes politely (TLS close_notify) but without waiting on a peer that does not read.
    async fn close(mut self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.stream.shutdown()).await;
    }
}

/// One device connection, from TLS handshake to close.
async fn serve(
    shared: &Shared,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    tcp_at: Instant,
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
        handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => handshake,
    };
    let (mut link, tls_version) = match handshake {
        Ok(Ok(stream)) => {
            let version = stream
                .get_ref()
                .1
                .protocol_version()
                .map(|version| format!("{version:?}"));
            (Link::new(stream), version)
        }
        Ok(Err(e)) => {
            log::debug!("emulator: mqtt {peer}: tls handshake failed: {e}");
            no_connect();
            return;
        }
        Err(_) => {
            log::debug!("emulator: mqtt {peer}: tls handshake timed out");
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
                let reason = super::RefusalReason::ProtocolVersion(level);
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
    shared.registry.record_connect(record);
    if let Some(active) = shared.faults.on_connect(&connect.client_id) {
        let refusal = match &active.fault {
            Fault::Refuse(_) => Some(super::RefusalReason::Injected),
            Fault::Throttle(_) => Some(super::RefusalReason::Throttled),
            Fault::Stall(_) | Fault::Hangup(_) | Fault::RefuseTcp | Fault::CloseTcp => None,
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
    let accepted = connect::authenticate(&connect, &shared.host_name, unix_now(), |id| {
        shared.registry.device_key(id)
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
async fn refuse(shared: &Shared, link: &mut Link, client_id: &str, reason: &super::RefusalReason) {
    log::debug!("emulator: refused CONNECT from {client_id:?}: {reason}");
    shared.registry.record_refusal(client_id, reason);
    let code = connect::return_code(reason);
    let _ = link.send(Packet::ConnAck(ConnAck::new(code, false))).await;
}

fn packet_name(packet: &Packet) -> &'static str {
    match packet {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}

/// State of an accepted connection.
struct Session<'a> {
    shared: &'a Shared,
    entry: &'a DeviceEntry,
    conn: &'a Connection,
    device_id: &'a str,
    subscriptions: Vec<Subscription>,
    /// CleanSession 0: subscriptions outlive the connection.
    persistent: bool,
}

impl Session<'_> {
    /// Serves the connection until something ends it; returns why.
    async fn run(
        &mut self,
        link: &mut Link,
        mut outbound: mpsc::Receiver<Outbound>,
        idle: Duration,
        token_expiry: u64,
    ) -> DisconnectReason {
        let idle_timer = tokio::time::sleep(idle);
        let expiry_timer = tokio::time::sleep_until(expiry_instant(token_expiry));
        tokio::pin!(idle_timer, expiry_timer);
        loop {
            // Handle every whole packet already buffered before waiting again.
            loop {
                match link.decode() {
                    Ok(Some(packet)) => {
                        idle_timer.as_mut().reset(Instant::now() + idle);
                        if let Err(reason) = self.handle(link, packet).await {
                            return reason;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return e.into_reason(),
                }
            }
            tokio::select! {
                biased;
                () = self.conn.kill_token().cancelled() => return self.kill_reason(),
                () = &mut expiry_timer => return DisconnectReason::TokenExpired,
                () = &mut idle_timer => return DisconnectReason::KeepAliveTimeout,
                message = outbound.recv() => {
                    // This task's own `Connection` holds a sender, so `None` cannot happen;
                    // treat it as a shutdown if it ever does.
                    let Some(message) = message else { return DisconnectReason::Shutdown };
                    let publish = Publish::from_bytes(message.topic, QoS::AtMostOnce, message.payload);
                    if let Err(e) = link.send(Packet::Publish(publish)).await {
                        return e.into_reason();
                    }
                }
                filled = link.fill() => {
                    if let Err(e) = filled {
                        return e.into_reason();
                    }
                }
            }
        }
    }

    fn kill_reason(&self) -> DisconnectReason {
        self.conn.kill_reason().unwrap_or_else(|| {
            if self.shared.shutdown.is_cancelled() {
                DisconnectReason::Shutdown
            } else {
                DisconnectReason::Dropped
            }
        })
    }

    async fn handle(&mut self, link: &mut Link, packet: Packet) -> Result<(), DisconnectReason> {
        let reply = match packet {
            Packet::Publish(publish) => self.publish(publish)?,
            Packet::Subscribe(subscribe) => Some(self.subscribe(subscribe)?),
            Packet::Unsubscribe(unsubscribe) => Some(self.unsubscribe(unsubscribe)),
            Packet::PingReq => Some(Packet::PingResp),
            Packet::Disconnect => return Err(DisconnectReason::ClientDisconnect),
            // The emulator publishes at QoS 0 only, so there is nothing to acknowledge; a stray
            // PUBACK is harmless.
            Packet::PubAck(_) => None,
            other => {
                return Err(DisconnectReason::ProtocolViolation(format!(
                    "unexpected {}",
                    packet_name(&other)
                )));
            }
        };
        match reply {
            Some(reply) => link.send(reply).await.map_err(LinkError::into_reason),
            None => Ok(()),
        }
    }

    /// Accepts method responses and telemetry; closes on QoS 2 and on topics the hub rejects.
    fn publish(&mut self, publish: Publish) -> Result<Option<Packet>, DisconnectReason> {
        if publish.qos == QoS::ExactlyOnce {
            return Err(DisconnectReason::ProtocolViolation(
                "QoS 2 publish".to_owned(),
            ));
        }
        let topic = publish.topic.as_str();
        if topic.starts_with("$iothub/methods/res/") {
            let (status, rid) = topics::parse_response(topic).ok_or_else(|| {
                DisconnectReason::ProtocolViolation(format!(
                    "malformed method response topic {topic:?}"
                ))
            })?;
            // Recorded before the waiting call wakes: a test that has its answer also finds the
            // response in the history and the device's stats.
            self.shared
                .history
                .method_response(self.device_id, rid, status);
            let answer = self.shared.methods.take(self.device_id, rid);
            if answer.is_none() {
                log::debug!(
                    "emulator: device {} answered rid {rid} that has no live request; ignored",
                    self.device_id
                );
            }
            self.shared.registry.record_method_response(
                self.entry,
                rid,
                status,
                publish.qos as u8,
                answer.is_some(),
            );
            if let Some(answer) = answer {
                // The caller may have given up at this very moment; its timeout answers it.
                let _ = answer.send(status, publish.payload.clone());
            }
        } else if topic.starts_with("$iothub/twin/") {
            return Err(DisconnectReason::NotEmulated("device twin".to_owned()));
        } else if let Some(rest) = topic.strip_prefix("devices/") {
            let own = rest
                .strip_prefix(self.device_id)
                .and_then(|rest| rest.strip_prefix("/messages/events/"));
            if own.is_none() {
                return Err(DisconnectReason::ProtocolViolation(format!(
                    "publish to {topic:?}, not this device's telemetry topic"
                )));
            }
            if publish.payload.len() > MAX_TELEMETRY {
                return Err(DisconnectReason::ProtocolViolation(
                    "telemetry message larger than 256 KB".to_owned(),
                ));
            }
            self.shared
                .registry
                .record_telemetry(self.entry, topic, &publish.payload);
        } else {
            return Err(DisconnectReason::ProtocolViolation(format!(
                "publish to unknown topic {topic:?}"
            )));
        }
        Ok((publish.qos == QoS::AtLeastOnce).then(|| Packet::PubAck(PubAck::new(publish.pkid))))
    }

    /// Grants known filters at QoS <= 1, up to five per connection; the sixth and later get the
    /// failure code. Unknown filters close the connection, as the hub does.
    fn subscribe(&mut self, subscribe: Subscribe) -> Result<Packet, DisconnectReason> {
        let requested = subscribe
            .filters
            .iter()
            .map(|filter| Subscription {
                filter: filter.path.clone(),
                qos: filter.qos as u8,
            })
            .collect();
        self.shared
            .registry
            .record_subscribe(self.entry, self.conn.id, requested);
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        for filter in subscribe.filters {
            if !known_filter(&filter.path, self.device_id) {
                return Err(DisconnectReason::ProtocolViolation(format!(
                    "subscribe to unsupported topic filter {:?}",
                    filter.path
                )));
            }
            let qos = if filter.qos == QoS::AtMostOnce {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            let full = self.subscriptions.len() >= MAX_SUBSCRIPTIONS;
            let existing = self
                .subscriptions
                .iter_mut()
                .find(|s| s.filter == filter.path);
            match existing {
                Some(subscription) => subscription.qos = qos as u8,
                None if full => {
                    codes.push(SubscribeReasonCode::Failure);
                    continue;
                }
                None => self.subscriptions.push(Subscription {
                    filter: filter.path,
                    qos: qos as u8,
                }),
            }
            codes.push(SubscribeReasonCode::Success(qos));
        }
        self.publish_subscriptions();
        Ok(Packet::SubAck(SubAck::new(subscribe.pkid, codes)))
    }

    fn unsubscribe(&mut self, unsubscribe: Unsubscribe) -> Packet {
        self.subscriptions
            .retain(|s| !unsubscribe.topics.contains(&s.filter));
        self.publish_subscriptions();
        Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid))
    }

    fn publish_subscriptions(&self) {
        let methods = self
            .subscriptions
            .iter()
            .any(|s| s.filter == topics::METHODS_FILTER);
        self.shared.registry.set_subscriptions(
            self.entry,
            self.conn.id,
            &self.subscriptions,
            methods,
            self.persistent,
        );
    }
}

/// Only for the decoder robustness test: the raw decode of arbitrary bytes.
#[cfg(test)]
pub(crate) fn decode_for_test(bytes: &[u8]) -> Result<Option<Packet>, String> {
    let mut buf = BytesMut::from(bytes);
    decode(&mut buf).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_timeout_is_one_and_a_half_keep_alives_capped() {
        assert_eq!(idle_timeout(60), Duration::from_secs(90));
        assert_eq!(idle_timeout(1), Duration::from_millis(1500));
        assert_eq!(idle_timeout(1177), Duration::from_millis(1_765_500));
        assert_eq!(idle_timeout(1178), KEEP_ALIVE_CAP);
        assert_eq!(idle_timeout(u16::MAX), KEEP_ALIVE_CAP);
        assert_eq!(idle_timeout(0), KEEP_ALIVE_CAP);
    }

    /// Random and truncated byte strings: the decoder errors or waits, never panics, and never
    /// buffers a declared length above the limit.
    #[test]
    fn decoder_survives_garbage() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = bytes.first_mut() {
                // Bias towards valid packet types so the deeper parsers run too.
                *first = (*first & 0x0f) | (((next() % 14) as u8 + 1) << 4);
            }
            let _ = decode_for_test(&bytes);
        }
        // Declares 200 MB: refused from the header alone.
        let huge = [0x30, 0x80, 0x80, 0x80, 0x64];
        assert!(decode_for_test(&huge).is_err());
        // Five length bytes: malformed.
        assert!(decode_for_test(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
        // Incomplete: wait for more.
        assert_eq!(decode_for_test(&[0x30, 0x10, 0x00]), Ok(None));
    }
}

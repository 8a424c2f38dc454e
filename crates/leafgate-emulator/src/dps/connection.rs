//! One DPS connection, from TLS handshake to close: the CONNECT checks, then the packets of a
//! clean session (DPS keeps no session state: CONNACK never has session present), a
//! subscription to `$dps/registrations/res/#` only, register and poll requests answered at
//! QoS 0 on the response topic, keep-alive and token expiry. Anything else closes the
//! connection, as the hub endpoint does. Every CONNECT and request is recorded
//! ([`DpsRequest`]) before it is answered.

use std::net::SocketAddr;
use std::time::Duration;

use rumqttc::mqttbytes;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{
    ConnAck, ConnectReturnCode, Packet, PubAck, Publish, SubAck, Subscribe, SubscribeReasonCode,
    UnsubAck,
};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::auth::{self, DpsAccepted};
use super::enrollment::Enrolled;
use super::service::Answer;
use super::topics::{self, RESPONSE_FILTER, Request};
use super::{DpsRequest, DpsRequestKind};
use crate::Shared;
use crate::clock::{expiry_instant, sleep_until_some, unix_now};
use crate::connect::{self, ClientCert};
use crate::mqtt::handshake::{Handshaken, handshake};
use crate::mqtt::link::{Link, LinkError, packet_name};
use crate::mqtt::session::idle_timeout;
use crate::registry::RefusalReason;
use crate::wire::DeviceTransport;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a DPS session ended (logged only).
#[derive(Debug, thiserror::Error)]
enum End {
    #[error("client sent DISCONNECT")]
    Disconnect,
    #[error("no packet within 1.5 x keep-alive")]
    KeepAlive,
    #[error("sas token expired")]
    TokenExpired,
    #[error("emulator shut down")]
    Shutdown,
    #[error(transparent)]
    Link(#[from] LinkError),
    #[error("protocol violation: {0}")]
    Violation(String),
}

/// One DPS connection.
pub(super) async fn serve(
    shared: &Shared,
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
) {
    let Some(id_scope) = shared.dps.config.as_ref().map(|c| c.id_scope.clone()) else {
        return;
    };
    let shutdown = &shared.shutdown;
    let handshake = tokio::select! {
        () = shutdown.cancelled() => return,
        handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(acceptor, tcp, DeviceTransport::Mqtt)) => handshake,
    };
    let Handshaken {
        mut link,
        client_chain,
        ..
    } = match handshake {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            log::debug!("emulator: dps {peer}: {e}");
            return;
        }
        Err(_) => {
            log::debug!("emulator: dps {peer}: handshake timed out");
            return;
        }
    };
    let first = tokio::select! {
        () = shutdown.cancelled() => return,
        first = tokio::time::timeout(CONNECT_TIMEOUT, link.next_packet()) => first,
    };
    let connect = match first {
        Ok(Ok(Packet::Connect(connect))) => connect,
        Ok(Err(LinkError::Malformed(mqttbytes::Error::InvalidProtocolLevel(level)))) => {
            let reason = RefusalReason::ProtocolVersion(level);
            refuse(shared, &mut link, "", reason).await;
            link.close().await;
            return;
        }
        Ok(Ok(other)) => {
            log::debug!(
                "emulator: dps {peer}: first packet is {}, not CONNECT",
                packet_name(&other)
            );
            link.close().await;
            return;
        }
        Ok(Err(e)) => {
            log::debug!("emulator: dps {peer}: {e}");
            link.close().await;
            return;
        }
        Err(_) => {
            log::debug!("emulator: dps {peer}: no CONNECT within 10 s");
            link.close().await;
            return;
        }
    };
    // Never log `connect`: it holds the SAS token.
    let client_cert = ClientCert {
        chain: &client_chain,
        cas: &shared.verified_cas,
    };
    let accepted = auth::authenticate(&connect, &id_scope, unix_now(), client_cert, |id| {
        shared.dps.candidates(id)
    });
    let accepted = match accepted {
        Ok(accepted) => accepted,
        Err(reason) => {
            refuse(shared, &mut link, &connect.client_id, reason).await;
            link.close().await;
            return;
        }
    };
    record(
        shared,
        &accepted.registration_id,
        DpsRequestKind::Connect,
        0,
        None,
        None,
    );
    let connack = Packet::ConnAck(ConnAck::new(ConnectReturnCode::Success, false));
    let mut session = DpsSession {
        shared,
        accepted: &accepted,
        subscribed: false,
    };
    let end = match link.send(connack).await {
        Ok(()) => {
            session
                .run(&mut link, idle_timeout(connect.keep_alive))
                .await
        }
        Err(e) => End::Link(e),
    };
    log::debug!(
        "emulator: dps registration {} disconnected: {end}",
        accepted.registration_id
    );
    link.close().await;
}

/// Records a DPS request or CONNECT.
fn record(
    shared: &Shared,
    registration_id: &str,
    kind: DpsRequestKind,
    status: u16,
    operation_id: Option<String>,
    refusal: Option<RefusalReason>,
) {
    shared.history.dps_request(DpsRequest {
        at: Instant::now(),
        registration_id: registration_id.to_owned(),
        kind,
        status,
        operation_id,
        refusal,
    });
}

/// Records a refused CONNECT and sends its CONNACK (5 for every auth failure, as DPS does).
async fn refuse(shared: &Shared, link: &mut Link, client_id: &str, reason: RefusalReason) {
    log::debug!("emulator: dps refused CONNECT from {client_id:?}: {reason}");
    let code = connect::return_code(&reason);
    record(
        shared,
        client_id,
        DpsRequestKind::Connect,
        code as u16,
        None,
        Some(reason),
    );
    let _ = link.send(Packet::ConnAck(ConnAck::new(code, false))).await;
}

struct DpsSession<'a> {
    shared: &'a Shared,
    accepted: &'a DpsAccepted,
    /// Subscribed to [`RESPONSE_FILTER`]: answers are published only then.
    subscribed: bool,
}

impl DpsSession<'_> {
    async fn run(&mut self, link: &mut Link, idle: Duration) -> End {
        let idle_timer = tokio::time::sleep(idle);
        let expiry_timer = sleep_until_some(self.accepted.token_expiry.map(expiry_instant));
        tokio::pin!(idle_timer, expiry_timer);
        loop {
            loop {
                match link.decode() {
                    Ok(Some(packet)) => {
                        idle_timer.as_mut().reset(Instant::now() + idle);
                        if let Err(end) = self.handle(link, packet).await {
                            return end;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => return End::Link(e),
                }
            }
            tokio::select! {
                biased;
                () = self.shared.shutdown.cancelled() => return End::Shutdown,
                () = &mut expiry_timer => return End::TokenExpired,
                () = &mut idle_timer => return End::KeepAlive,
                filled = link.fill() => {
                    if let Err(e) = filled {
                        return End::Link(e);
                    }
                }
            }
        }
    }

    async fn handle(&mut self, link: &mut Link, packet: Packet) -> Result<(), End> {
        let reply = match packet {
            Packet::Publish(publish) => return self.request(link, publish).await,
            Packet::Subscribe(subscribe) => self.subscribe(subscribe)?,
            Packet::Unsubscribe(unsubscribe) => {
                if unsubscribe.topics.iter().any(|t| t == RESPONSE_FILTER) {
                    self.subscribed = false;
                }
                Packet::UnsubAck(UnsubAck::new(unsubscribe.pkid))
            }
            Packet::PingReq => Packet::PingResp,
            Packet::Disconnect => return Err(End::Disconnect),
            other => {
                return Err(End::Violation(format!(
                    "unexpected {}",
                    packet_name(&other)
                )));
            }
        };
        link.send(reply).await.map_err(End::Link)
    }

    /// Grants `$dps/registrations/res/#` at QoS <= 1; any other filter closes the connection.
    fn subscribe(&mut self, subscribe: Subscribe) -> Result<Packet, End> {
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        for filter in &subscribe.filters {
            if filter.path != RESPONSE_FILTER {
                return Err(End::Violation(format!(
                    "subscribe to {:?}, not {RESPONSE_FILTER}",
                    filter.path
                )));
            }
            self.subscribed = true;
            let qos = if filter.qos == QoS::AtMostOnce {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            };
            codes.push(SubscribeReasonCode::Success(qos));
        }
        Ok(Packet::SubAck(SubAck::new(subscribe.pkid, codes)))
    }

    /// A register or poll: answered (PUBACK first at QoS 1), recorded before the answer goes out.
    async fn request(&mut self, link: &mut Link, publish: Publish) -> Result<(), End> {
        if publish.qos == QoS::ExactlyOnce {
            return Err(End::Violation("QoS 2 publish".to_owned()));
        }
        let Some(request) = topics::parse(&publish.topic) else {
            return Err(End::Violation(format!(
                "publish to unknown topic {:?}",
                publish.topic
            )));
        };
        let registration_id = self.accepted.registration_id.as_str();
        let enrolled: &Enrolled = &self.accepted.enrolled;
        let now = Instant::now();
        let (kind, rid, answer): (_, _, Answer) = match request {
            Request::Register { rid } => (
                DpsRequestKind::Register,
                rid,
                self.shared
                    .dps
                    .register(registration_id, enrolled, &publish.payload, now),
            ),
            Request::Poll { rid, operation_id } => (
                DpsRequestKind::Poll,
                rid,
                self.shared.dps.poll(registration_id, operation_id, now),
            ),
        };
        record(
            self.shared,
            registration_id,
            kind,
            answer.status,
            answer.operation_id.clone(),
            None,
        );
        if publish.qos == QoS::AtLeastOnce {
            link.send(Packet::PubAck(PubAck::new(publish.pkid)))
                .await
                .map_err(End::Link)?;
        }
        if !self.subscribed {
            return Ok(());
        }
        let topic = topics::response(answer.status, rid, answer.retry_after_s);
        let response = Publish::new(topic, QoS::AtMostOnce, answer.body.to_string());
        link.send(Packet::Publish(response))
            .await
            .map_err(End::Link)
    }
}

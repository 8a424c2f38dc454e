//! An accepted device session, from CONNACK until something ends it: the packets a device may
//! send (method responses, telemetry, twin requests, SUBSCRIBE, PINGREQ), the hub's limits on
//! them, keep-alive and token expiry, and the telemetry faults a test injected. Anything else
//! closes the connection, as the hub does. Twin requests are served in `twin`; cloud-to-device
//! messages are delivered, and their PUBACKs taken, in `c2d`.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{
    Packet, PubAck, Publish, SubAck, Subscribe, SubscribeReasonCode, UnsubAck, Unsubscribe,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::link::{Link, LinkError, packet_name};
use crate::Shared;
use crate::clock::{expiry_instant, sleep_until_some};
use crate::faults::{FaultId, Strike};
use crate::registry::{Connection, DeviceEntry, DisconnectReason, Outbound, Subscription};
use crate::telemetry::Received;
use crate::topic_filter::known_filter;
use leafgate::hub::d2c::{self, TopicError};
use leafgate::hub::topics;

/// Telemetry limit (`iothub-protocol.md` 6.1).
const MAX_TELEMETRY: usize = 256 * 1024;

/// A message's size as IoT Hub counts it against its 256 KB limit: the body, the values of
/// the system properties (`$.`…) and the names and values of the application properties.
fn message_size(body: &[u8], bag: &[(String, String)]) -> usize {
    body.len()
        + bag
            .iter()
            .map(|(k, v)| {
                if k.starts_with("$.") {
                    v.len()
                } else {
                    k.len() + v.len()
                }
            })
            .sum::<usize>()
}
/// Subscriptions allowed per connection.
pub(crate) const MAX_SUBSCRIPTIONS: usize = 5;
/// Azure's load-balancer idle timeout, which caps 1.5 x keep-alive.
const KEEP_ALIVE_CAP: Duration = Duration::from_secs(1767);

/// How long a connection may stay silent: 1.5 x keep-alive, capped at 1767 s. A keep-alive of 0
/// (MQTT's "off") still gets the cap, as the hub's load balancer would apply it.
pub(crate) fn idle_timeout(keep_alive_s: u16) -> Duration {
    if keep_alive_s == 0 {
        return KEEP_ALIVE_CAP;
    }
    (Duration::from_secs(u64::from(keep_alive_s)) * 3 / 2).min(KEEP_ALIVE_CAP)
}

/// State of an accepted connection.
pub(super) struct Session<'a> {
    pub(super) shared: &'a Shared,
    pub(super) entry: &'a DeviceEntry,
    pub(super) conn: &'a Connection,
    pub(super) device_id: &'a str,
    pub(super) subscriptions: Vec<Subscription>,
    /// CleanSession 0: subscriptions outlive the connection.
    pub(super) persistent: bool,
    /// Packet ids of telemetry whose PUBACK a [`Strike::Withhold`] keeps back, oldest first.
    pub(super) withheld: Vec<u16>,
    /// The rule withholding them and when it ends by itself.
    pub(super) withholding: Option<(FaultId, Option<Instant>)>,
    /// The next packet id for a cloud-to-device delivery.
    pub(super) c2d_next_pkid: u16,
    /// When the device's C2D queue next changes by itself (a lock times out, a message
    /// expires), so that the session delivers again then.
    pub(super) c2d_deadline: Option<Instant>,
}

impl Session<'_> {
    /// Serves the connection until something ends it; returns why.
    pub(super) async fn run(
        &mut self,
        link: &mut Link,
        mut outbound: mpsc::Receiver<Outbound>,
        idle: Duration,
        token_expiry: Option<u64>,
    ) -> DisconnectReason {
        let idle_timer = tokio::time::sleep(idle);
        // An X.509 connection has no token to run out.
        let expiry_timer = sleep_until_some(token_expiry.map(expiry_instant));
        tokio::pin!(idle_timer, expiry_timer);
        let mut faults = self.shared.faults.subscribe();
        let mut c2d = self.entry.watch_c2d();
        c2d.borrow_and_update();
        if let Err(reason) = self.deliver_c2d(link).await {
            return reason;
        }
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
            let holding = self.withholding.is_some();
            let hold_until = self.withholding.and_then(|(_, until)| until);
            let c2d_deadline = self.c2d_deadline;
            tokio::select! {
                biased;
                () = self.conn.kill_token().cancelled() => return self.kill_reason(),
                () = &mut expiry_timer => return DisconnectReason::TokenExpired,
                () = &mut idle_timer => return DisconnectReason::KeepAliveTimeout,
                // A withholding rule ends by expiring, or by a change of the rules (cleared).
                () = sleep_until_some(hold_until), if holding => {
                    if let Err(reason) = self.release_withheld(link).await {
                        return reason;
                    }
                }
                changed = faults.changed(), if holding => {
                    // The sender lives in `Shared`, which outlives every session.
                    if changed.is_err() {
                        return DisconnectReason::Shutdown;
                    }
                    if let Err(reason) = self.release_withheld(link).await {
                        return reason;
                    }
                }
                // The device's C2D queue changed, or its next deadline came.
                changed = c2d.changed() => {
                    // The sender lives in the registry entry this session holds.
                    if changed.is_err() {
                        return DisconnectReason::Shutdown;
                    }
                    if let Err(reason) = self.deliver_c2d(link).await {
                        return reason;
                    }
                }
                () = sleep_until_some(c2d_deadline), if c2d_deadline.is_some() => {
                    if let Err(reason) = self.deliver_c2d(link).await {
                        return reason;
                    }
                }
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
            Packet::Publish(publish)
                if publish.topic.starts_with("$iothub/twin/")
                    && publish.qos != QoS::ExactlyOnce =>
            {
                return self.twin(link, publish).await;
            }
            Packet::Publish(publish) => {
                let reply = self.publish(publish)?;
                if matches!(reply, Some(Packet::PubAck(_))) {
                    // PUBACKs go out in the order their publishes came.
                    self.release_withheld(link).await?;
                }
                reply
            }
            Packet::Subscribe(subscribe) => {
                let suback = self.subscribe(subscribe)?;
                link.send(suback).await.map_err(LinkError::into_reason)?;
                // A new subscription may be the one C2D messages waited for.
                return self.deliver_c2d(link).await;
            }
            Packet::Unsubscribe(unsubscribe) => Some(self.unsubscribe(unsubscribe)),
            Packet::PingReq => Some(Packet::PingResp),
            Packet::Disconnect => return Err(DisconnectReason::ClientDisconnect),
            // The emulator publishes at QoS 1 only cloud-to-device messages; a PUBACK that
            // completes none of them is harmless.
            Packet::PubAck(ack) => {
                self.c2d_puback(ack.pkid);
                None
            }
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

    /// Accepts method responses and telemetry (twin requests are taken before, in `handle`);
    /// closes on QoS 2 and on topics the hub rejects.
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
        } else if topic.starts_with("devices/") {
            return self.telemetry(&publish);
        } else {
            return Err(DisconnectReason::ProtocolViolation(format!(
                "publish to unknown topic {topic:?}"
            )));
        }
        Ok((publish.qos == QoS::AtLeastOnce).then(|| Packet::PubAck(PubAck::new(publish.pkid))))
    }

    /// Records a device-to-cloud message, then acknowledges it (QoS 1) unless an injected fault
    /// says otherwise. Recorded before the PUBACK is written: a device that has its PUBACK
    /// finds its message in [`crate::Emulator::telemetry`]. Closes on another device's topic,
    /// a property bag that does not decode (the hub refuses what it cannot parse), and messages
    /// over 256 KB (as the hub counts them: [`message_size`]).
    fn telemetry(&mut self, publish: &Publish) -> Result<Option<Packet>, DisconnectReason> {
        let topic = publish.topic.as_str();
        let bag = match d2c::parse(topic) {
            Ok((device, bag)) if device == self.device_id => bag,
            Ok(_) | Err(TopicError::NotD2c) => {
                return Err(DisconnectReason::ProtocolViolation(format!(
                    "publish to {topic:?}, not this device's telemetry topic"
                )));
            }
            Err(TopicError::BadEncoding) => {
                return Err(DisconnectReason::ProtocolViolation(format!(
                    "telemetry property bag of {topic:?} is not percent-encoded UTF-8"
                )));
            }
        };
        if message_size(&publish.payload, &bag) > MAX_TELEMETRY {
            return Err(DisconnectReason::ProtocolViolation(
                "telemetry message larger than 256 KB (body and properties)".to_owned(),
            ));
        }
        let qos1 = publish.qos == QoS::AtLeastOnce;
        let strike = self.shared.faults.on_telemetry(self.device_id, qos1);
        if strike == Some(Strike::Quota) {
            return Err(DisconnectReason::QuotaExceeded);
        }
        let received = Received {
            connection: self.conn.id,
            qos: publish.qos as u8,
            bag,
            // A copy: the payload shares the read buffer's allocation, which a kept slice
            // would pin for as long as the message stays in the log.
            body: Bytes::copy_from_slice(&publish.payload),
        };
        self.shared
            .registry
            .record_telemetry(self.entry, topic, received);
        match strike {
            Some(Strike::Drop) => Err(DisconnectReason::DroppedBeforePuback),
            Some(Strike::Withhold { id, until }) => {
                self.withheld.push(publish.pkid);
                self.withholding = Some((id, until));
                Ok(None)
            }
            Some(Strike::Quota) | None => {
                Ok(qos1.then(|| Packet::PubAck(PubAck::new(publish.pkid))))
            }
        }
    }

    /// Sends the PUBACKs a withholding rule kept back, in order, once that rule has ended
    /// (cleared or expired).
    pub(super) async fn release_withheld(
        &mut self,
        link: &mut Link,
    ) -> Result<(), DisconnectReason> {
        let Some((id, _)) = self.withholding else {
            return Ok(());
        };
        if self.shared.faults.is_active(id) {
            return Ok(());
        }
        self.withholding = None;
        for pkid in std::mem::take(&mut self.withheld) {
            link.send(Packet::PubAck(PubAck::new(pkid)))
                .await
                .map_err(LinkError::into_reason)?;
        }
        Ok(())
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

    pub(super) fn publish_subscriptions(&self) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_counts_its_body_system_values_and_app_names_and_values() {
        let bag = [
            ("$.mid".to_owned(), "abc".to_owned()),
            ("source".to_owned(), "meter".to_owned()),
        ];
        assert_eq!(message_size(b"{}", &bag), 2 + 3 + 6 + 5);
        let body = vec![b'x'; MAX_TELEMETRY - 10];
        assert!(
            message_size(&body, &bag) > MAX_TELEMETRY,
            "properties push it over"
        );
    }

    #[test]
    fn idle_timeout_is_one_and_a_half_keep_alives_capped() {
        assert_eq!(idle_timeout(60), Duration::from_secs(90));
        assert_eq!(idle_timeout(1), Duration::from_millis(1500));
        assert_eq!(idle_timeout(1177), Duration::from_millis(1_765_500));
        assert_eq!(idle_timeout(1178), KEEP_ALIVE_CAP);
        assert_eq!(idle_timeout(u16::MAX), KEEP_ALIVE_CAP);
        assert_eq!(idle_timeout(0), KEEP_ALIVE_CAP);
    }
}

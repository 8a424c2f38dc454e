//! Cloud-to-device messages on an accepted session (`iothub-protocol.md` 6.2): when the device
//! is subscribed to a filter matching `devices/{id}/messages/devicebound/…`, every message due
//! in its queue is published at QoS 1 with a packet id of this connection; the device's PUBACK
//! for that id completes it (unless a [`crate::Fault::LoseC2dAcks`] loses it). The session
//! calls [`Session::deliver_c2d`] when it starts, after every SUBSCRIBE, when the queue changes
//! and when the queue's next deadline (lock timeout, expiry) comes.

use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Packet, Publish};

use super::link::{Link, LinkError};
use super::session::Session;
use crate::registry::DisconnectReason;
use crate::topic_filter::filter_matches;

impl Session<'_> {
    /// Whether the device subscribed to its cloud-to-device messages.
    fn c2d_subscribed(&self) -> bool {
        let probe = format!("devices/{}/messages/devicebound/%24.mid=0", self.device_id);
        self.subscriptions
            .iter()
            .any(|s| filter_matches(&s.filter, &probe))
    }

    /// Publishes every message now due (when subscribed) and notes in `c2d_deadline` when the
    /// queue next changes by itself.
    pub(super) async fn deliver_c2d(&mut self, link: &mut Link) -> Result<(), DisconnectReason> {
        let subscribed = self.c2d_subscribed();
        let due = self.shared.registry.c2d_due(
            self.entry,
            self.conn.id,
            subscribed,
            &mut self.c2d_next_pkid,
        );
        self.c2d_deadline = due.next;
        for delivery in due.deliveries {
            let mut publish = Publish::from_bytes(delivery.topic, QoS::AtLeastOnce, delivery.body);
            publish.pkid = delivery.pkid;
            link.send(Packet::Publish(publish))
                .await
                .map_err(LinkError::into_reason)?;
        }
        Ok(())
    }

    /// A PUBACK from the device: completes the C2D message delivered with `pkid`.
    pub(super) fn c2d_puback(&self, pkid: u16) {
        if self.shared.faults.lose_c2d_ack(self.device_id) {
            log::debug!(
                "emulator: PUBACK {pkid} of device {} lost (injected fault)",
                self.device_id
            );
            return;
        }
        if !self
            .shared
            .registry
            .c2d_complete(self.entry, self.conn.id, pkid)
        {
            log::debug!(
                "emulator: PUBACK {pkid} of device {} completes no locked message; ignored",
                self.device_id
            );
        }
    }
}

//! Twin requests on an accepted session (`iothub-protocol.md` 5): `$iothub/twin/GET/?$rid=` and
//! `$iothub/twin/PATCH/properties/reported/?$rid=`, answered on `$iothub/twin/res/{status}/`
//! when the device subscribed to a filter matching the response topic, with the twin faults and
//! the hub-wide rate limits applied first. Every request is recorded with the status it got
//! before its answer is written. Desired-property notifications do not pass here: the registry
//! queues them on the connection like method requests.

use bytes::Bytes;
use rumqttc::mqttbytes::QoS;
use rumqttc::mqttbytes::v4::{Packet, PubAck, Publish};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::link::{Link, LinkError};
use super::session::Session;
use crate::faults::TwinStrike;
use crate::registry::DisconnectReason;
use crate::topic_filter::filter_matches;
use crate::twin::{self, TwinOp, TwinRequest};

/// Longest request id accepted; the SDKs send uint16 counters or GUIDs.
const MAX_RID: usize = 256;

/// The operation and request id of a twin request topic; `None` when it is not one the hub
/// serves (which closes the connection, as other bad topics do).
fn parse(topic: &str) -> Option<(TwinOp, &str)> {
    let (path, query) = topic.split_once('?')?;
    let op = match path {
        "$iothub/twin/GET/" => TwinOp::Get,
        "$iothub/twin/PATCH/properties/reported/" => TwinOp::PatchReported,
        _ => return None,
    };
    let rid = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("$rid="))?;
    let valid = !rid.is_empty()
        && rid.len() <= MAX_RID
        && !rid
            .chars()
            .any(|c| c.is_control() || matches!(c, '/' | '#' | '+'));
    valid.then_some((op, rid))
}

/// What the hub answers: status, the reported version for a 204, and the body.
struct Answer {
    status: u16,
    version: Option<u64>,
    body: Bytes,
}

impl Answer {
    fn error(status: u16, code: u32, message: &str) -> Answer {
        Answer {
            status,
            version: None,
            body: Bytes::from(json!({"errorCode": code, "message": message}).to_string()),
        }
    }

    fn throttled() -> Answer {
        Answer::error(
            429,
            429_001,
            "IoT Hub is throttling twin operations; retry later.",
        )
    }

    fn topic(&self, rid: &str) -> String {
        match self.version {
            Some(version) => format!(
                "$iothub/twin/res/{}/?$rid={rid}&$version={version}",
                self.status
            ),
            None => format!("$iothub/twin/res/{}/?$rid={rid}", self.status),
        }
    }
}

impl Session<'_> {
    /// Serves one twin request: PUBACK (QoS 1), then the answer if any.
    pub(super) async fn twin(
        &mut self,
        link: &mut Link,
        publish: Publish,
    ) -> Result<(), DisconnectReason> {
        let at = Instant::now();
        let topic = publish.topic.as_str();
        let (op, rid) = parse(topic).ok_or_else(|| {
            DisconnectReason::ProtocolViolation(format!("malformed twin topic {topic:?}"))
        })?;
        let rid = rid.to_owned();
        if publish.qos == QoS::AtLeastOnce {
            // PUBACKs go out in the order their publishes came.
            self.release_withheld(link).await?;
            link.send(Packet::PubAck(PubAck::new(publish.pkid)))
                .await
                .map_err(LinkError::into_reason)?;
        }
        let answer = self.twin_answer(op, &publish.payload, at);
        self.shared.history.twin_request(TwinRequest {
            device: self.device_id.to_owned(),
            at,
            op,
            rid: rid.clone(),
            status: answer.as_ref().map(|a| a.status),
        });
        let Some(answer) = answer else {
            return Ok(());
        };
        let topic = answer.topic(&rid);
        if !self
            .subscriptions
            .iter()
            .any(|s| filter_matches(&s.filter, &topic))
        {
            log::debug!(
                "emulator: device {} is not subscribed to twin responses; {topic} not sent",
                self.device_id
            );
            return Ok(());
        }
        let response = Publish::from_bytes(topic, QoS::AtMostOnce, answer.body);
        link.send(Packet::Publish(response))
            .await
            .map_err(LinkError::into_reason)
    }

    /// The answer to a twin request, or `None` when a [`crate::Fault::TwinSilent`] swallows it.
    fn twin_answer(&self, op: TwinOp, body: &[u8], now: Instant) -> Option<Answer> {
        match self.shared.faults.on_twin(self.device_id) {
            Some(TwinStrike::Silent) => return None,
            Some(TwinStrike::Throttle) => return Some(Answer::throttled()),
            None => {}
        }
        let window = match op {
            TwinOp::Get => &self.shared.twin_reads,
            TwinOp::PatchReported => &self.shared.twin_updates,
        };
        if !window.admit(now) {
            return Some(Answer::throttled());
        }
        let not_found = || Answer::error(404, 404_001, "Device not found.");
        Some(match op {
            // The body of a GET is ignored (SDKs send nothing, or a space).
            TwinOp::Get => match self.shared.registry.twin(self.device_id) {
                Some(twin) => Answer {
                    status: 200,
                    version: None,
                    body: Bytes::from(twin::get_body(&twin).to_string()),
                },
                None => not_found(),
            },
            TwinOp::PatchReported => match serde_json::from_slice::<Value>(body) {
                Err(e) => Answer::error(400, 400_004, &format!("the patch is not JSON: {e}")),
                Ok(patch) => match self.shared.registry.patch_reported(self.entry, &patch) {
                    Ok(version) => Answer {
                        status: 204,
                        version: Some(version),
                        body: Bytes::new(),
                    },
                    Err(e) => Answer::error(e.http_status(), e.error_code(), &e.to_string()),
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twin_topics_parse_to_an_operation_and_a_rid() {
        assert_eq!(parse("$iothub/twin/GET/?$rid=1"), Some((TwinOp::Get, "1")));
        assert_eq!(
            parse("$iothub/twin/PATCH/properties/reported/?$rid=a-b&$version=3"),
            Some((TwinOp::PatchReported, "a-b"))
        );
        assert_eq!(
            parse("$iothub/twin/GET/?x=1&$rid=9f0e"),
            Some((TwinOp::Get, "9f0e"))
        );
        for bad in [
            "$iothub/twin/GET/",
            "$iothub/twin/GET/?$rid=",
            "$iothub/twin/GET?$rid=1",
            "$iothub/twin/GET/?rid=1",
            "$iothub/twin/PATCH/properties/desired/?$rid=1",
            "$iothub/twin/res/200/?$rid=1",
            "$iothub/twin/GET/?$rid=a/b",
            "$iothub/twin/GET/?$rid=a\u{0}",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert!(
            parse(&format!(
                "$iothub/twin/GET/?$rid={}",
                "r".repeat(MAX_RID + 1)
            ))
            .is_none()
        );
    }

    #[test]
    fn answers_carry_the_version_only_for_a_patch() {
        let patch = Answer {
            status: 204,
            version: Some(7),
            body: Bytes::new(),
        };
        assert_eq!(patch.topic("r"), "$iothub/twin/res/204/?$rid=r&$version=7");
        let throttled = Answer::throttled();
        assert_eq!(throttled.topic("r"), "$iothub/twin/res/429/?$rid=r");
        let body: Value = serde_json::from_slice(&throttled.body).unwrap();
        assert_eq!(body["errorCode"], 429_001);
    }
}

//! DPS's answers to the two requests (`iothub-protocol.md` 9a), apart from MQTT: the status,
//! the `retry-after`, and the JSON body. A register starts an operation and answers 202
//! `assigning`; a poll answers 202 again until the operation's `retry-after` has passed, then
//! 200 with the `registrationState`; both answer 429 beyond
//! [`DpsConfig::registrations_per_s`](super::DpsConfig::registrations_per_s).
//!
//! The error bodies are `{errorCode, message, trackingId}`; DPS does not document the codes of
//! these cases, so the emulator uses the hub's codes for the same statuses: 400004, 404001,
//! 429001.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::Dps;
use super::enrollment::Enrolled;
use super::operation::Polled;
use crate::lock::lock;

/// An answer to publish on `$dps/registrations/res/{status}/?$rid=…[&retry-after=…]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) retry_after_s: Option<u32>,
    pub(crate) body: Value,
    pub(crate) operation_id: Option<String>,
}

fn error(status: u16, code: u32, message: &str, retry_after_s: Option<u32>) -> Answer {
    Answer {
        status,
        retry_after_s,
        body: json!({
            "errorCode": code,
            "message": message,
            "trackingId": format!("{:032x}", rand::random::<u128>()),
        }),
        operation_id: None,
    }
}

/// The registration id a register body names: `{"registrationId": "…", "payload"?: …}`.
fn body_registration_id(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    value.get("registrationId")?.as_str().map(str::to_owned)
}

impl Dps {
    fn retry_after_s(&self) -> u32 {
        self.config.as_ref().map_or(1, |c| c.retry_after_s)
    }

    /// 429 when the hub-wide window is full, counting this request otherwise.
    fn throttled(&self, now: Instant) -> Option<Answer> {
        (!self.rate.admit(now)).then(|| {
            error(
                429,
                429_001,
                "too many registration requests; retry later",
                Some(self.retry_after_s().max(1)),
            )
        })
    }

    /// The enrollment `registration_id` authenticates with now: the one matching the
    /// credential it connected with, so that a hub changed since the CONNECT
    /// ([`Dps::set_hub`]) applies to this registration; `connected` if it is gone meanwhile.
    fn current(&self, registration_id: &str, connected: &Enrolled) -> Enrolled {
        lock(&self.enrollments)
            .candidates(registration_id)
            .into_iter()
            .find(|candidate| candidate.credential == connected.credential)
            .unwrap_or_else(|| connected.clone())
    }

    /// Answers a register request of the connection of `registration_id`, which authenticated
    /// as `connected`.
    pub(crate) fn register(
        &self,
        registration_id: &str,
        connected: &Enrolled,
        body: &[u8],
        now: Instant,
    ) -> Answer {
        if let Some(throttled) = self.throttled(now) {
            return throttled;
        }
        match body_registration_id(body) {
            Some(named) if named.eq_ignore_ascii_case(registration_id) => {}
            Some(_) => {
                return error(
                    400,
                    400_004,
                    "registrationId in the body differs from the connection's",
                    None,
                );
            }
            None => {
                return error(400, 400_004, "body is not {\"registrationId\": ...}", None);
            }
        }
        let retry_after_s = self.retry_after_s();
        let ready_at = now + Duration::from_secs(u64::from(retry_after_s));
        let enrolled = self.current(registration_id, connected);
        let operation_id = lock(&self.operations).start(registration_id, enrolled, ready_at);
        Answer {
            status: 202,
            retry_after_s: Some(retry_after_s),
            body: json!({"operationId": operation_id, "status": "assigning"}),
            operation_id: Some(operation_id),
        }
    }

    /// Answers a poll of `operation_id` by the connection of `registration_id`.
    pub(crate) fn poll(&self, registration_id: &str, operation_id: &str, now: Instant) -> Answer {
        if let Some(mut throttled) = self.throttled(now) {
            throttled.operation_id = Some(operation_id.to_owned());
            return throttled;
        }
        let polled = lock(&self.operations).poll(registration_id, operation_id, now);
        let mut answer = match polled {
            Polled::NotFound => error(404, 404_001, "no such operation", None),
            Polled::Assigning => Answer {
                status: 202,
                retry_after_s: Some(self.retry_after_s()),
                body: json!({"operationId": operation_id, "status": "assigning"}),
                operation_id: None,
            },
            Polled::Done(body) => Answer {
                status: 200,
                retry_after_s: None,
                body,
                operation_id: None,
            },
        };
        answer.operation_id = Some(operation_id.to_owned());
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::Credential;
    use crate::dps::{DpsConfig, HubLink};
    use crate::sas::Key;

    fn dps(retry_after_s: u32, registrations_per_s: Option<u32>) -> Dps {
        Dps::new(Some(DpsConfig {
            retry_after_s,
            registrations_per_s,
            ..DpsConfig::default()
        }))
    }

    fn enrolled() -> Enrolled {
        Enrolled {
            credential: Credential::Sas(Key::from_base64("AQID").unwrap()),
            hub: HubLink::new_detached("hub"),
        }
    }

    #[test]
    fn register_answers_202_then_polls_202_until_retry_after_then_200() {
        let dps = dps(2, None);
        let start = Instant::now();
        let body = br#"{"registrationId": "dev-1", "payload": {"x": 1}}"#;
        let registered = dps.register("dev-1", &enrolled(), body, start);
        assert_eq!(
            (registered.status, registered.retry_after_s),
            (202, Some(2))
        );
        assert_eq!(registered.body["status"], "assigning");
        let id = registered.operation_id.unwrap();
        assert_eq!(registered.body["operationId"], id.as_str());

        let early = dps.poll("dev-1", &id, start + Duration::from_secs(1));
        assert_eq!((early.status, early.retry_after_s), (202, Some(2)));
        // The hub it links to does not run: the operation ends failed, answered 200.
        let done = dps.poll("dev-1", &id, start + Duration::from_secs(2));
        assert_eq!((done.status, done.retry_after_s), (200, None));
        assert_eq!(done.body["operationId"], id.as_str());
        assert_eq!(dps.poll("dev-1", "4.unknown", start).status, 404);
    }

    #[test]
    fn a_body_naming_another_registration_is_400() {
        let dps = dps(1, None);
        let now = Instant::now();
        for body in [&br#"{"registrationId": "dev-2"}"#[..], b"{}", b"not json"] {
            let answer = dps.register("dev-1", &enrolled(), body, now);
            assert_eq!(answer.status, 400);
            assert_eq!(answer.body["errorCode"], 400_004);
            assert!(answer.body["trackingId"].is_string());
        }
        // Registration ids are case-insensitive.
        let answer = dps.register("dev-1", &enrolled(), br#"{"registrationId": "DEV-1"}"#, now);
        assert_eq!(answer.status, 202);
    }

    #[test]
    fn requests_beyond_the_rate_are_429_with_retry_after() {
        let dps = dps(0, Some(2));
        let now = Instant::now();
        let body = br#"{"registrationId": "d"}"#;
        let first = dps.register("d", &enrolled(), body, now);
        assert_eq!(first.status, 202);
        let id = first.operation_id.unwrap();
        assert_ne!(dps.poll("d", &id, now).status, 429);
        let throttled = dps.poll("d", &id, now);
        assert_eq!((throttled.status, throttled.retry_after_s), (429, Some(1)));
        assert_eq!(dps.register("d", &enrolled(), body, now).status, 429);
        assert_eq!(
            dps.register("d", &enrolled(), body, now + Duration::from_secs(1))
                .status,
            202
        );
    }
}

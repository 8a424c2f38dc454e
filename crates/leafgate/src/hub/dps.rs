//! Registering a device with the Device Provisioning Service over MQTT (`iothub-protocol.md`
//! 9a): connect as the registration id, subscribe to the responses, ask to be registered,
//! poll the operation at the pace DPS asks for (`retry-after`), and read which hub the device
//! was assigned to. One short-lived connection per registration; the caller paces them.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet, QoS, TlsConfiguration};
use serde::Deserialize;
use tokio::time::Instant;

use super::sas::{self, Key};
use super::settings::Provisioning;
use crate::logtext;

/// The DPS API version the SDKs speak.
pub const API_VERSION: &str = "2019-03-31";

const RESPONSES: &str = "$dps/registrations/res/#";

/// When DPS says nothing about when to poll (or more than this), wait this long / at most this.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(3);
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// Where DPS put a device.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct Assignment {
    /// The IoT hub's host name.
    pub hub: String,
    /// The device id in that hub.
    pub device_id: String,
}

/// How a device proves itself to DPS: the same credentials it uses with the hub.
pub enum Attestation<'a> {
    /// A symmetric key: the device's own (individual enrollment) or derived from a group key.
    Key(&'a Key),
    /// An X.509 certificate, presented in the TLS handshake (`tls` carries it).
    Certificate,
}

/// Why a registration did not end with an assignment. Never holds a key or token.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot connect to DPS {endpoint}: {reason}")]
    Connect { endpoint: String, reason: String },
    #[error(
        "DPS refused the connection ({0}): check the id scope, that the registration id has an enrollment (or belongs to the group), and the key or certificate"
    )]
    Refused(String),
    #[error("DPS answered {status}: {message}")]
    Status { status: u16, message: String },
    #[error("DPS could not assign the device: registration status {status:?}{detail}")]
    NotAssigned { status: String, detail: String },
    #[error("DPS gave no usable answer: {0}")]
    BadAnswer(String),
    #[error("no assignment from DPS within {0} s")]
    Timeout(u64),
    #[error("DPS closed the connection: {0}")]
    Closed(String),
}

/// A parsed `$dps/registrations/res/{status}/?$rid={rid}[&retry-after={s}]`.
#[derive(Debug, PartialEq, Eq)]
struct Response {
    status: u16,
    rid: String,
    retry_after: Option<Duration>,
}

fn parse_topic(topic: &str) -> Option<Response> {
    let rest = topic.strip_prefix("$dps/registrations/res/")?;
    let (status, query) = rest.split_once("/?")?;
    let status = status.parse().ok()?;
    let mut rid = None;
    let mut retry_after = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("$rid", v)) => rid = Some(v.to_owned()),
            Some(("retry-after", v)) => {
                retry_after = v.parse::<u64>().ok().map(Duration::from_secs);
            }
            _ => {}
        }
    }
    Some(Response {
        status,
        rid: rid?,
        retry_after,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Operation {
    operation_id: Option<String>,
    status: Option<String>,
    registration_state: Option<RegistrationState>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RegistrationState {
    assigned_hub: Option<String>,
    device_id: Option<String>,
    status: Option<String>,
    error_code: Option<serde_json::Value>,
    error_message: Option<String>,
}

/// What to send next.
enum Request {
    Register,
    Poll(String),
}

impl Request {
    fn topic(&self, rid: u32) -> String {
        match self {
            Request::Register => format!("$dps/registrations/PUT/iotdps-register/?$rid={rid}"),
            Request::Poll(operation) => format!(
                "$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={}",
                sas::percent_encode(operation)
            ),
        }
    }
}

/// The registration's username: `{idScope}/registrations/{registrationId}/api-version=...`.
#[must_use]
pub fn username(id_scope: &str, registration_id: &str) -> String {
    format!(
        "{id_scope}/registrations/{registration_id}/api-version={API_VERSION}&ClientVersion={}",
        sas::percent_encode(concat!("leafgate/", env!("CARGO_PKG_VERSION")))
    )
}

/// Registers `registration_id` and returns its assignment.
///
/// # Errors
/// When DPS cannot be reached, refuses the device, answers an error, does not assign it, or
/// takes longer than the configured timeout.
pub async fn register(
    settings: &Provisioning,
    proxy: Option<&super::settings::Proxy>,
    registration_id: &str,
    attestation: Attestation<'_>,
    tls: Arc<rustls::ClientConfig>,
) -> Result<Assignment, Error> {
    let endpoint = format!("{}:{}", settings.endpoint, settings.port);
    let password = match attestation {
        Attestation::Key(key) => {
            let resource = format!("{}/registrations/{registration_id}", settings.id_scope);
            let expiry = crate::utc::unix_now() + settings.timeout.as_secs() + 3600;
            sas::token(&resource, key, expiry, Some("registration"))
        }
        Attestation::Certificate => String::new(),
    };
    let mut options = MqttOptions::new(registration_id, &settings.endpoint, settings.port);
    options
        .set_credentials(username(&settings.id_scope, registration_id), password)
        .set_clean_session(true)
        .set_keep_alive(Duration::from_secs(60))
        .set_transport(rumqttc::Transport::tls_with_config(
            TlsConfiguration::Rustls(tls),
        ));
    if let Some(proxy) = proxy {
        options.set_proxy(super::transport::rumqttc_proxy(proxy));
    }
    let (client, mut eventloop) = AsyncClient::new(options, 4);
    let mut net = eventloop.network_options();
    net.set_connection_timeout(settings.timeout.as_secs().clamp(1, 60));
    eventloop.set_network_options(net);

    let deadline = tokio::time::sleep(settings.timeout);
    tokio::pin!(deadline);
    let mut rid: u32 = 0;
    let mut pending = Request::Register;
    // When the pending request goes out: armed at SUBACK, then by `retry-after`.
    let mut send_at: Option<Instant> = None;
    let result = loop {
        let send = async {
            match send_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = &mut deadline => break Err(Error::Timeout(settings.timeout.as_secs())),
            () = send => {
                send_at = None;
                rid = rid.wrapping_add(1);
                let body = match &pending {
                    Request::Register => serde_json::json!({ "registrationId": registration_id }).to_string(),
                    Request::Poll(_) => String::new(),
                };
                if let Err(e) = client.try_publish(pending.topic(rid), QoS::AtMostOnce, false, body) {
                    break Err(Error::Closed(e.to_string()));
                }
            }
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    if let Err(e) = client.try_subscribe(RESPONSES, QoS::AtLeastOnce) {
                        break Err(Error::Closed(e.to_string()));
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => send_at = Some(Instant::now()),
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let Some(response) = parse_topic(&p.topic) else {
                        log::debug!("dps {registration_id}: ignoring publish on {:?}", logtext::clip(&p.topic));
                        continue;
                    };
                    if response.rid != rid.to_string() {
                        log::debug!("dps {registration_id}: ignoring a response to rid {:?}", logtext::clip(&response.rid));
                        continue;
                    }
                    let wait = response.retry_after.unwrap_or(DEFAULT_RETRY_AFTER).clamp(Duration::from_secs(1), MAX_RETRY_AFTER);
                    match response.status {
                        200 | 202 => {
                            let operation: Operation = match serde_json::from_slice(&p.payload) {
                                Ok(operation) => operation,
                                Err(e) => break Err(Error::BadAnswer(format!("status {}: {e}", response.status))),
                            };
                            let operation_id = operation.operation_id.clone();
                            match judge(operation) {
                                Ok(Some(assignment)) => break Ok(assignment),
                                Ok(None) => {}
                                Err(e) => break Err(e),
                            }
                            if let Some(id) = operation_id {
                                pending = Request::Poll(id);
                            } else if matches!(pending, Request::Register) {
                                break Err(Error::BadAnswer("202 without an operationId".to_owned()));
                            }
                            log::debug!("dps {registration_id}: assigning; polling again in {} s", wait.as_secs());
                            send_at = Some(Instant::now() + wait);
                        }
                        429 => {
                            log::info!("dps {registration_id}: DPS is throttling (429); asking again in {} s", wait.as_secs());
                            send_at = Some(Instant::now() + wait);
                        }
                        status => {
                            break Err(Error::Status { status, message: error_message(&p.payload) });
                        }
                    }
                }
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(code)) => break Err(Error::Refused(format!("{code:?}"))),
                Err(e) => {
                    break Err(if rid == 0 {
                        Error::Connect { endpoint: endpoint.clone(), reason: e.to_string() }
                    } else {
                        Error::Closed(e.to_string())
                    });
                }
            }
        }
    };
    super::transport::disconnect(&client, &mut eventloop).await;
    result
}

/// An operation's outcome: assigned, still assigning (`None`), or failed.
fn judge(operation: Operation) -> Result<Option<Assignment>, Error> {
    let status = operation.status.unwrap_or_default();
    match status.as_str() {
        "assigned" => {
            let state = operation
                .registration_state
                .ok_or_else(|| Error::BadAnswer("assigned without a registrationState".into()))?;
            match (state.assigned_hub, state.device_id) {
                (Some(hub), Some(device_id)) if !hub.is_empty() && !device_id.is_empty() => {
                    Ok(Some(Assignment { hub, device_id }))
                }
                _ => Err(Error::BadAnswer(
                    "assigned without assignedHub and deviceId".into(),
                )),
            }
        }
        "assigning" | "unassigned" | "" => Ok(None),
        _ => {
            let detail = operation
                .registration_state
                .map(|s| {
                    let code = s.error_code.map(|c| format!(" {c}")).unwrap_or_default();
                    let message = s.error_message.unwrap_or_default();
                    let inner = s.status.unwrap_or_default();
                    format!(" ({inner}{code}: {})", logtext::clip(&message))
                })
                .unwrap_or_default();
            Err(Error::NotAssigned { status, detail })
        }
    }
}

/// `message` of a DPS error body, or the body itself, clipped.
fn error_message(payload: &[u8]) -> String {
    let text = String::from_utf8_lossy(payload);
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| {
            let code = v.get("errorCode").map(ToString::to_string);
            let message = v.get("message").and_then(|m| m.as_str()).map(str::to_owned);
            match (code, message) {
                (Some(c), Some(m)) => Some(format!("{m} (errorCode {c})")),
                (None, Some(m)) => Some(m),
                (Some(c), None) => Some(format!("errorCode {c}")),
                (None, None) => None,
            }
        })
        .unwrap_or_else(|| text.into_owned());
    logtext::clip(&message).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_topics_give_status_rid_and_retry_after() {
        assert_eq!(
            parse_topic("$dps/registrations/res/202/?$rid=7&retry-after=3"),
            Some(Response {
                status: 202,
                rid: "7".into(),
                retry_after: Some(Duration::from_secs(3)),
            })
        );
        assert_eq!(
            parse_topic("$dps/registrations/res/200/?$rid=1"),
            Some(Response {
                status: 200,
                rid: "1".into(),
                retry_after: None,
            })
        );
        assert_eq!(parse_topic("$dps/registrations/res/abc/?$rid=1"), None);
        assert_eq!(parse_topic("$dps/registrations/res/200/?x=1"), None);
        assert_eq!(parse_topic("$iothub/twin/res/200/?$rid=1"), None);
    }

    #[test]
    fn operations_are_judged_assigned_pending_or_failed() {
        let op = |json: &str| serde_json::from_str::<Operation>(json).unwrap();
        let assigned = op(
            r#"{"operationId":"o","status":"assigned","registrationState":{"assignedHub":"h.azure-devices.net","deviceId":"d1","status":"assigned"}}"#,
        );
        assert_eq!(
            judge(assigned).unwrap(),
            Some(Assignment {
                hub: "h.azure-devices.net".into(),
                device_id: "d1".into()
            })
        );
        assert!(
            judge(op(r#"{"operationId":"o","status":"assigning"}"#))
                .unwrap()
                .is_none()
        );
        let failed = judge(op(
            r#"{"operationId":"o","status":"failed","registrationState":{"status":"failed","errorCode":400207,"errorMessage":"Custom allocation failed"}}"#,
        ))
        .unwrap_err()
        .to_string();
        assert!(
            failed.contains("\"failed\"")
                && failed.contains("400207")
                && failed.contains("Custom allocation failed"),
            "{failed}"
        );
        assert!(judge(op(r#"{"status":"assigned"}"#)).is_err());
    }

    #[test]
    fn usernames_and_error_bodies() {
        assert!(username("0ne00000A0A", "pump-1").starts_with(
            "0ne00000A0A/registrations/pump-1/api-version=2019-03-31&ClientVersion=leafgate%2F"
        ));
        assert_eq!(
            error_message(br#"{"errorCode":401002,"message":"Unauthorized","trackingId":"t"}"#),
            "Unauthorized (errorCode 401002)"
        );
        assert_eq!(error_message(b"oops"), "oops");
    }
}

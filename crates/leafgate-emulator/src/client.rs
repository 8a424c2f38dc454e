//! A minimal service-side client for the emulator's API: what a back-end application does to
//! call a direct method, read and change a device twin or send a cloud-to-device message, used
//! by the integration tests and the demo; and a reader for the emulator's own telemetry endpoint.
//!
//! It speaks plain HTTP to the emulator's loopback listener but otherwise behaves like the SDKs:
//! a fresh policy-signed SAS token per request, the id percent-encoded in the path, api-version
//! 2021-04-12, and a client-side timeout of connect + response timeout + 15 s ([NET]).

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap};
use hyper::{Method, Request};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};

use super::clock::unix_now;
use super::methods::MethodCall;
use crate::sas::{self, Key, KeyError, percent_encode};

/// Lifetime of the tokens the client mints (the SDK default).
const TOKEN_TTL_S: u64 = 3600;
/// Extra client-side wait beyond the call's own timeouts, as the .NET SDK adds.
const CLIENT_SLACK: Duration = Duration::from_secs(15);

/// Why a service call did not produce an HTTP response. An HTTP error status is not an error
/// here: it is returned with its body, as the caller must see 404103 or 504101.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("service connection string part {0} is not of the form Name=value")]
    Malformed(usize),
    #[error("service connection string lacks {0}")]
    Missing(&'static str),
    #[error("service connection string SharedAccessKey")]
    Key(#[source] KeyError),
    #[error("could not build the request")]
    Request(#[source] hyper::http::Error),
    #[error("http request to the service api failed")]
    Send(#[source] hyper_util::client::legacy::Error),
    #[error("could not read the service api response")]
    Body(#[source] hyper::Error),
    #[error("service api response is not JSON")]
    NotJson(#[source] serde_json::Error),
    #[error("service api did not answer within {0:?}")]
    Timeout(Duration),
}

/// An HTTP answer from the service API.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceResponse {
    pub status: u16,
    /// The `iothub-errorcode` header, on errors.
    pub error_name: Option<String>,
    pub body: Value,
}

impl ServiceResponse {
    /// The numeric `errorCode` from the JSON string in `Message`, if this is a hub error.
    #[must_use]
    pub fn error_code(&self) -> Option<u64> {
        let message = self.body.get("Message")?.as_str()?;
        let inner: Value = serde_json::from_str(message).ok()?;
        inner.get("errorCode")?.as_u64()
    }
}

/// Calls direct methods through the emulator's service API.
#[derive(Clone)]
pub struct ServiceClient {
    base: SocketAddr,
    host_name: String,
    policy: String,
    key: Key,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl std::fmt::Debug for ServiceClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceClient")
            .field("base", &self.base)
            .field("host_name", &self.host_name)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl ServiceClient {
    /// A client for the API listening on `base`, authenticating with
    /// `HostName=..;SharedAccessKeyName=..;SharedAccessKey=..`.
    ///
    /// # Errors
    /// When the connection string is malformed or lacks a part; never echoes the key.
    pub fn new(base: SocketAddr, service_connection_string: &str) -> Result<Self, ClientError> {
        let (mut host, mut policy, mut key) = (None, None, None);
        for (index, part) in service_connection_string.trim().split(';').enumerate() {
            if part.is_empty() {
                continue;
            }
            let (name, value) = part
                .split_once('=')
                .ok_or(ClientError::Malformed(index + 1))?;
            match name {
                "HostName" => host = Some(value),
                "SharedAccessKeyName" => policy = Some(value),
                "SharedAccessKey" => key = Some(value),
                _ => {}
            }
        }
        let host_name = host
            .filter(|h| !h.is_empty())
            .ok_or(ClientError::Missing("HostName"))?;
        let policy = policy
            .filter(|p| !p.is_empty())
            .ok_or(ClientError::Missing("SharedAccessKeyName"))?;
        let key = Key::from_base64(key.ok_or(ClientError::Missing("SharedAccessKey"))?)
            .map_err(ClientError::Key)?;
        Ok(ServiceClient {
            base,
            host_name: host_name.to_owned(),
            policy: policy.to_owned(),
            key,
            http: Client::builder(TokioExecutor::new()).build_http(),
        })
    }

    /// Invokes `method_name` on `device` (connect timeout 0) and returns the HTTP status and
    /// body: `200 {"status":..,"payload":..}` or the hub's error body.
    ///
    /// # Errors
    /// Only when no HTTP response arrived or it was not JSON.
    pub async fn invoke(
        &self,
        device: &str,
        method_name: &str,
        payload: Value,
        response_timeout_s: u64,
    ) -> Result<(u16, Value), ClientError> {
        let call = MethodCall::new(method_name, payload).response_timeout(response_timeout_s);
        let response = self.call(device, &call).await?;
        Ok((response.status, response.body))
    }

    /// Invokes with every field of the call, returning the full response.
    ///
    /// # Errors
    /// As [`ServiceClient::invoke`].
    pub async fn call(
        &self,
        device: &str,
        call: &MethodCall,
    ) -> Result<ServiceResponse, ClientError> {
        let body = json!({
            "methodName": call.method_name,
            "payload": call.payload,
            "responseTimeoutInSeconds": call.response_timeout_s,
            "connectTimeoutInSeconds": call.connect_timeout_s,
        });
        let wait = Duration::from_secs(
            call.response_timeout_s
                .saturating_add(call.connect_timeout_s)
                .min(3600),
        ) + CLIENT_SLACK;
        let path = format!(
            "/twins/{}/methods?api-version=2021-04-12",
            percent_encode(device)
        );
        let token = self.token();
        self.send(
            Method::POST,
            &path,
            Some(&token),
            Bytes::from(body.to_string()),
            wait,
        )
        .await
    }

    /// Reads `device`'s device-to-cloud messages numbered `since` or later from the emulator's
    /// own `GET /emulator/devices/{id}/messages` (no IoT hub has it); the body is the JSON page
    /// that endpoint documents.
    ///
    /// # Errors
    /// As [`ServiceClient::invoke`].
    pub async fn messages(&self, device: &str, since: u64) -> Result<ServiceResponse, ClientError> {
        let path = format!(
            "/emulator/devices/{}/messages?since={since}",
            percent_encode(device)
        );
        let token = self.token();
        self.send(Method::GET, &path, Some(&token), Bytes::new(), CLIENT_SLACK)
            .await
    }

    /// GETs an arbitrary path with an optional `Authorization` value: for tests of how the read
    /// endpoint treats malformed requests.
    ///
    /// # Errors
    /// As [`ServiceClient::invoke`].
    pub async fn get_raw(
        &self,
        path_and_query: &str,
        authorization: Option<&str>,
    ) -> Result<ServiceResponse, ClientError> {
        self.send(
            Method::GET,
            path_and_query,
            authorization,
            Bytes::new(),
            CLIENT_SLACK,
        )
        .await
    }

    /// Posts an arbitrary body to an arbitrary path with an optional `Authorization` value: for
    /// tests of how the API treats malformed requests.
    ///
    /// # Errors
    /// As [`ServiceClient::invoke`].
    pub async fn post_raw(
        &self,
        path_and_query: &str,
        authorization: Option<&str>,
        body: impl Into<Bytes>,
    ) -> Result<ServiceResponse, ClientError> {
        self.send(
            Method::POST,
            path_and_query,
            authorization,
            body.into(),
            CLIENT_SLACK,
        )
        .await
    }

    /// `GET /twins/{device}`: 200 with the twin (`properties.desired`, `properties.reported`,
    /// `etag`, `version`, ...) or the hub's error body.
    ///
    /// # Errors
    /// As [`ServiceClient::invoke`].
    pub async fn get_twin(&self, device: &str) -> Result<ServiceResponse, ClientError> {
        self.request(
            "GET",
            &twin_path(device),
            Some(&self.token()),
            &[],
            Bytes::new(),
        )
        .await
    }

    /// `PATCH /twins/{device}` with `twin` (e.g. `{"properties":{"desired":{..}}}`), as the
    /// SDKs' `update_twin` sends it (`If-Match: "*"`).
    ///
    /// # Errors
    /// As [`ServiceClient::invoke`].
    pub async fn update_twin(
        &self,
        device: &str,
        twin: &Value,
    ) -> Result<ServiceResponse, ClientError> {
        self.write_twin("PATCH", device, twin).await
    }

    /// `PUT /twins/{device}` with `twin`, as the SDKs' `replace_twin` sends it.
    ///
    /// # Errors
    /// As [`ServiceClient::invoke`].
    pub async fn replace_twin(
        &self,
        device: &str,
        twin: &Value,
    ) -> Result<ServiceResponse, ClientError> {
        self.write_twin("PUT", device, twin).await
    }

    /// A twin write as the SDKs send it: the whole body, `If-Match: "*"`.
    async fn write_twin(
        &self,
        method: &str,
        device: &str,
        twin: &Value,
    ) -> Result<ServiceResponse, ClientError> {
        self.request(
            method,
            &twin_path(device),
            Some(&self.token()),
            &[("If-Match", "\"*\"")],
            Bytes::from(twin.to_string()),
        )
        .await
    }

    /// `POST /devices/{device}/messages/deviceBound` with `body` as the message and `headers`
    /// (`iothub-messageid`, `iothub-correlationid`, `iothub-expiry`, `iothub-app-{name}`): the
    /// emulator's REST stand-in for the SDKs' AMQP send. 204 when queued.
    ///
    /// # Errors
    /// As [`ServiceClient::invoke`].
    pub async fn send_c2d(
        &self,
        device: &str,
        body: impl Into<Bytes>,
        headers: &[(&str, &str)],
    ) -> Result<ServiceResponse, ClientError> {
        let path = format!(
            "/devices/{}/messages/deviceBound?api-version=2021-04-12",
            percent_encode(device)
        );
        self.request("POST", &path, Some(&self.token()), headers, body)
            .await
    }

    /// Any request: `method` (e.g. `"PATCH"`), path with query, an optional `Authorization`
    /// value, extra headers, body. For tests of routes and malformed requests.
    ///
    /// # Errors
    /// As [`ServiceClient::invoke`]; also [`ClientError::Request`] for a method or header that
    /// is not valid HTTP.
    pub async fn request(
        &self,
        method: &str,
        path_and_query: &str,
        authorization: Option<&str>,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<ServiceResponse, ClientError> {
        let method =
            Method::from_bytes(method.as_bytes()).map_err(|e| ClientError::Request(e.into()))?;
        self.send_with(
            method,
            path_and_query,
            authorization,
            headers,
            body.into(),
            CLIENT_SLACK,
        )
        .await
    }

    /// A service token for this client's policy, valid for an hour.
    #[must_use]
    pub fn token(&self) -> String {
        sas::token(
            &self.host_name,
            &self.key,
            unix_now() + TOKEN_TTL_S,
            Some(&self.policy),
        )
    }

    async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        authorization: Option<&str>,
        body: Bytes,
        wait: Duration,
    ) -> Result<ServiceResponse, ClientError> {
        self.send_with(method, path_and_query, authorization, &[], body, wait)
            .await
    }

    async fn send_with(
        &self,
        method: Method,
        path_and_query: &str,
        authorization: Option<&str>,
        headers: &[(&str, &str)],
        body: Bytes,
        wait: Duration,
    ) -> Result<ServiceResponse, ClientError> {
        let mut builder = Request::builder()
            .method(method)
            .uri(format!("http://{}{path_and_query}", self.base))
            .header(CONTENT_TYPE, "application/json; charset=utf-8");
        if let Some(value) = authorization {
            builder = builder.header(AUTHORIZATION, value);
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(Full::new(body))
            .map_err(ClientError::Request)?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(ClientError::Send)?;
            let status = response.status().as_u16();
            let error_name = header_text(response.headers(), "iothub-errorcode");
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(ClientError::Body)?
                .to_bytes();
            let body = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).map_err(ClientError::NotJson)?
            };
            Ok(ServiceResponse {
                status,
                error_name,
                body,
            })
        };
        tokio::time::timeout(wait, exchange)
            .await
            .unwrap_or(Err(ClientError::Timeout(wait)))
    }
}

/// `/twins/{id}?api-version=2021-04-12`, the id percent-encoded.
fn twin_path(device: &str) -> String {
    format!("/twins/{}?api-version=2021-04-12", percent_encode(device))
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

/// `HostName=..;SharedAccessKeyName=..;SharedAccessKey=..` for a policy.
pub(crate) fn service_connection_string(host_name: &str, policy: &str, key: &Key) -> String {
    format!(
        "HostName={host_name};SharedAccessKeyName={policy};SharedAccessKey={}",
        base64::engine::general_purpose::STANDARD.encode(key.as_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[tokio::test]
    async fn parses_service_connection_strings_and_signs_like_the_doc() {
        let base: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let cs = service_connection_string(
            "myhub.azure-devices.net",
            "service",
            &Key::from_base64(KEY).unwrap(),
        );
        assert_eq!(
            cs,
            format!(
                "HostName=myhub.azure-devices.net;SharedAccessKeyName=service;SharedAccessKey={KEY}"
            )
        );
        let client = ServiceClient::new(base, &cs).unwrap();
        let token = client.token();
        let parsed = sas::parse(&token).unwrap();
        assert_eq!(parsed.sr, "myhub.azure-devices.net");
        assert_eq!(parsed.skn.as_deref(), Some("service"));
        // Same algorithm as the protocol doc's service-token vector.
        assert_eq!(
            sas::token(
                "myhub.azure-devices.net",
                &Key::from_base64(KEY).unwrap(),
                1_767_225_600,
                Some("service")
            ),
            "SharedAccessSignature sr=myhub.azure-devices.net&sig=mnVOCy0ieupY1%2FH3BnSINnUcRqZRXaiw4do9WEOWXUI%3D&se=1767225600&skn=service"
        );
        assert!(!format!("{client:?}").contains(KEY));
        for (bad, want) in [
            ("HostName=h;SharedAccessKey=AA==", "SharedAccessKeyName"),
            ("SharedAccessKeyName=s;SharedAccessKey=AA==", "HostName"),
            ("HostName=h;SharedAccessKeyName=s", "SharedAccessKey"),
        ] {
            let err = ServiceClient::new(base, bad).unwrap_err();
            assert!(err.to_string().contains(want), "{err}");
        }
        assert!(matches!(
            ServiceClient::new(base, "HostName=h;junk"),
            Err(ClientError::Malformed(2))
        ));
    }
}

//! MQTT over WebSockets (`iothub-protocol.md` 1.1): after TLS, an HTTP/1.1 upgrade on
//! `/$iothub/websocket` with the `mqtt` subprotocol, then binary frames carrying the MQTT byte
//! stream. The frames are only a carrier: an MQTT packet may span frames and one frame may hold
//! several packets, so the upgraded socket is turned back into a byte stream
//! ([`ws_stream_tungstenite::WsStream`]) and handed to the same [`Link`](super::link::Link) as
//! the 8883 listener's TLS stream.
//!
//! The upgrade request is judged by [`check_request`], a pure function: wrong path → 404, no
//! `mqtt` among the offered subprotocols → 400, both followed by a close. What tungstenite
//! itself refuses (not a GET, no `Upgrade: websocket`, a bad key or version) ends the
//! connection without an answer.

use async_tungstenite::tokio::{TokioAdapter, accept_hdr_async_with_config};
use async_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use async_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use async_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use ws_stream_tungstenite::WsStream;

use super::link::MAX_INCOMING_PACKET;

/// The only path the hub upgrades.
pub(crate) const PATH: &str = "/$iothub/websocket";
/// The subprotocol MQTT clients ask for; the C SDK writes it `MQTT`, so it is compared without
/// case. The answer repeats the client's own spelling: RFC 6455 4.1 has a client fail the
/// connection when the server names a subprotocol it did not offer (tungstenite compares
/// exactly), and rumqttc, paho and the .NET SDK, which offer `mqtt`, get exactly `mqtt` back.
const SUBPROTOCOL: &str = "mqtt";

/// A WebSocket message holds whatever the client wrote at once, possibly several packets; four
/// of the largest packets accepted is room enough and still bounds what one frame can make the
/// emulator buffer.
const MAX_MESSAGE: usize = 4 * MAX_INCOMING_PACKET;

/// Why an upgrade was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpgradeError {
    #[error("websocket upgrade refused: {0}")]
    Handshake(#[from] async_tungstenite::tungstenite::Error),
}

/// The `mqtt` subprotocol as `request` spells it, from any of its `Sec-WebSocket-Protocol`
/// headers (each a comma-separated list), in any case; `None` when it is not offered.
fn offered_mqtt(request: &Request) -> Option<HeaderValue> {
    request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|list| list.split(','))
        .map(str::trim)
        .find(|offered| offered.eq_ignore_ascii_case(SUBPROTOCOL))
        .and_then(|offered| HeaderValue::from_str(offered).ok())
}

/// An HTTP error answer that tells the client the connection ends with it.
fn refusal(status: StatusCode, text: &str) -> ErrorResponse {
    let mut response = ErrorResponse::new(Some(text.to_owned()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(text.len()));
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// Decides an upgrade request tungstenite has found well formed: the hub's path, and the `mqtt`
/// subprotocol, which the answer names as the client spelled it.
///
/// # Errors
/// The answer to send instead: 404 for another path, 400 without the `mqtt` subprotocol.
#[expect(
    clippy::result_large_err,
    reason = "tungstenite's handshake Callback has this signature"
)]
pub(crate) fn check_request(
    request: &Request,
    mut response: Response,
) -> Result<Response, ErrorResponse> {
    if request.uri().path() != PATH {
        return Err(refusal(StatusCode::NOT_FOUND, "not found"));
    }
    let Some(protocol) = offered_mqtt(request) else {
        return Err(refusal(
            StatusCode::BAD_REQUEST,
            "the mqtt websocket subprotocol is required",
        ));
    };
    response
        .headers_mut()
        .insert(header::SEC_WEBSOCKET_PROTOCOL, protocol);
    Ok(response)
}

/// Upgrades `stream` (a TLS stream) to a WebSocket and returns it as a byte stream.
///
/// # Errors
/// When the request is refused ([`check_request`]) or is not a WebSocket upgrade at all.
pub(crate) async fn upgrade<S>(stream: S) -> Result<WsStream<TokioAdapter<S>>, UpgradeError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE));
    let socket = accept_hdr_async_with_config(stream, check_request, Some(config)).await?;
    Ok(WsStream::new(socket))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, protocols: &[&str]) -> Request {
        let mut builder = Request::builder().uri(path);
        for protocol in protocols {
            builder = builder.header(header::SEC_WEBSOCKET_PROTOCOL, *protocol);
        }
        builder.body(()).unwrap()
    }

    fn status(result: Result<Response, ErrorResponse>) -> StatusCode {
        match result {
            Ok(response) => response.status(),
            Err(response) => response.status(),
        }
    }

    #[test]
    fn accepts_mqtt_in_any_case_and_any_position_and_answers_the_clients_spelling() {
        let cases: [(&[&str], &str); 4] = [
            (&["mqtt"], "mqtt"),
            (&["MQTT"], "MQTT"),
            (&["wamp, Mqtt"], "Mqtt"),
            (&["wamp", " mqtt "], "mqtt"),
        ];
        for (offered, answered) in cases {
            let answer = check_request(&request(PATH, offered), Response::default()).unwrap();
            assert_eq!(
                answer
                    .headers()
                    .get(header::SEC_WEBSOCKET_PROTOCOL)
                    .unwrap(),
                answered,
                "{offered:?}"
            );
        }
    }

    #[test]
    fn refuses_other_paths_with_404_and_no_mqtt_with_400() {
        let other = check_request(&request("/mqtt", &["mqtt"]), Response::default());
        assert_eq!(status(other), StatusCode::NOT_FOUND);
        let with_query = check_request(
            &request("/$iothub/websocket/x", &["mqtt"]),
            Response::default(),
        );
        assert_eq!(status(with_query), StatusCode::NOT_FOUND);
        for offered in [&[][..], &["mqttv3.1"], &["wamp, mqtt5"]] {
            let refused = check_request(&request(PATH, offered), Response::default());
            assert_eq!(status(refused), StatusCode::BAD_REQUEST, "{offered:?}");
        }
        let refused = check_request(&request("/", &[]), Response::default()).unwrap_err();
        assert_eq!(refused.headers().get(header::CONNECTION).unwrap(), "close");
        assert_eq!(
            refused.headers().get(header::CONTENT_LENGTH).unwrap(),
            &refused.body().as_ref().unwrap().len().to_string()
        );
    }
}

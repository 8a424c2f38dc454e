//! How a session reaches the hub: rumqttc's options for MQTT over TLS or over WebSockets,
//! through an HTTP proxy if there is one, and a failed connection described so an operator can
//! act on it (the proxy's answer, the hub's refusal with what to check), and a clean close.

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, TlsConfiguration,
};

use super::Settings;
use super::settings::{Proxy, Transport};

/// rumqttc's options for a connection to the hub (or its IoT Edge parent) over `transport`,
/// through the proxy if there is one.
pub(super) fn mqtt_options(
    id: &str,
    hub: &Settings,
    connect: &str,
    transport: Transport,
    tls: Arc<rustls::ClientConfig>,
) -> MqttOptions {
    let tls = TlsConfiguration::Rustls(tls);
    let mut options = match transport {
        Transport::Mqtt => {
            let mut options = MqttOptions::new(id, connect, hub.port(transport));
            options.set_transport(rumqttc::Transport::tls_with_config(tls));
            options
        }
        Transport::Websocket => {
            let port = hub.port(transport);
            let mut options = MqttOptions::new(id, websocket_url(connect, port), port);
            options.set_transport(rumqttc::Transport::wss_with_config(tls));
            options
        }
    };
    if let Some(proxy) = &hub.proxy {
        options.set_proxy(rumqttc_proxy(proxy));
    }
    options
}

/// An HTTP CONNECT proxy as rumqttc takes it.
pub(crate) fn rumqttc_proxy(proxy: &Proxy) -> rumqttc::Proxy {
    let auth = match (&proxy.username, &proxy.password) {
        (Some(username), Some(password)) => rumqttc::ProxyAuth::Basic {
            username: username.clone(),
            password: password.clone(),
        },
        _ => rumqttc::ProxyAuth::None,
    };
    rumqttc::Proxy {
        ty: rumqttc::ProxyType::Http,
        auth,
        addr: proxy.host.clone(),
        port: proxy.port,
    }
}

/// IoT Hub's WebSocket endpoint (`iothub-protocol.md` 1.1).
#[must_use]
fn websocket_url(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("wss://[{host}]:{port}/$iothub/websocket")
    } else {
        format!("wss://{host}:{port}/$iothub/websocket")
    }
}

/// Where a session connects, for log lines: `host:port`, the transport when it is not plain
/// MQTT, and the proxy.
pub(super) fn shown_route(hub: &Settings, connect: &str, transport: Transport) -> String {
    let mut route = format!("{connect}:{}", hub.port(transport));
    if transport == Transport::Websocket {
        route.push_str(" over WebSockets");
    }
    if let Some(proxy) = &hub.proxy {
        route.push_str(" through proxy ");
        route.push_str(&proxy.address());
    }
    route
}

/// A proxy's failure as an operator can act on it. rumqttc wraps the proxy client's error; its
/// HTTP status is in the source chain.
fn describe_proxy(
    error: &(dyn std::error::Error + 'static),
    hub: &Settings,
    target: &str,
) -> String {
    let proxy = hub
        .proxy
        .as_ref()
        .map_or_else(String::new, super::settings::Proxy::address);
    let mut source = error.source();
    while let Some(e) = source {
        if let Some(http) = e.downcast_ref::<async_http_proxy::HttpError>() {
            return match http {
                // 407 is the standard answer; tinyproxy answers a wrong password with 401.
                async_http_proxy::HttpError::HttpCode200(code @ (401 | 407)) => {
                    let hint = if hub.proxy.as_ref().is_some_and(|p| p.username.is_some()) {
                        "it did not accept the user and password (hub.proxy, hub.proxy_password_file)"
                    } else {
                        "name the user in hub.proxy (http://user@host:port) and its password in hub.proxy_password_file"
                    };
                    format!(
                        "proxy {proxy} demands authentication ({code}) for CONNECT {target}: {hint}"
                    )
                }
                async_http_proxy::HttpError::HttpCode200(403) => format!(
                    "proxy {proxy} refused CONNECT {target} (403 Forbidden): the proxy must allow CONNECT to that host and port"
                ),
                async_http_proxy::HttpError::HttpCode200(code) => {
                    format!("proxy {proxy} answered {code} to CONNECT {target}")
                }
                async_http_proxy::HttpError::IoError(io) => {
                    format!("proxy {proxy} connection failed during CONNECT {target}: {io}")
                }
                other => {
                    format!("proxy {proxy} gave no usable answer to CONNECT {target}: {other}")
                }
            };
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return format!("cannot reach proxy {proxy}: {io}");
        }
        source = e.source();
    }
    format!("proxy {proxy}: {error}")
}

/// How the hub turned a connection down: it sets the pace of the next try, and an identity
/// refusal sends a provisioned device back to DPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Not by the hub (a network, TLS or proxy failure, a timeout).
    None,
    /// The hub refused for its own reasons (CONNACK 3, a refused subscription): back off as
    /// throttled.
    Load,
    /// The hub refused the device's identity (CONNACK 5 or 4): as throttled, too.
    Identity,
}

/// An error's line for the journal, with the fix where one is known, and how the hub refused.
pub(super) fn describe(
    error: &ConnectionError,
    hub: &Settings,
    connect: &str,
    transport: Transport,
    certificate: bool,
) -> (String, Refusal) {
    match error {
        ConnectionError::Proxy(_) => {
            let target = format!("{connect}:{}", hub.port(transport));
            (describe_proxy(error, hub, &target), Refusal::None)
        }
        ConnectionError::ConnectionRefused(code) => {
            let hint = match (code, certificate) {
                (
                    ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword,
                    false,
                ) => " (check the device id and key, and that the device is enabled in IoT Hub)",
                (
                    ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword,
                    true,
                ) => {
                    " (check that the device's certificate (its thumbprint, or its CA) is registered for this device id in IoT Hub, that a CA-signed certificate's CN is the device id, and that the device is enabled)"
                }
                _ => "",
            };
            let refusal = match code {
                ConnectReturnCode::NotAuthorized | ConnectReturnCode::BadUserNamePassword => {
                    Refusal::Identity
                }
                _ => Refusal::Load,
            };
            (format!("{error}{hint}"), refusal)
        }
        // A network, TLS or timeout failure: where it happened is half of what to check.
        other => (
            format!("{}: {other}", shown_route(hub, connect, transport)),
            Refusal::None,
        ),
    }
}

/// Sends DISCONNECT (after whatever is queued) so the hub sees a clean close.
pub(super) async fn disconnect(client: &AsyncClient, eventloop: &mut rumqttc::EventLoop) {
    let _ = client.try_disconnect();
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while let Ok(event) = eventloop.poll().await {
            if matches!(event, Event::Outgoing(rumqttc::Outgoing::Disconnect)) {
                break;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    /// Every idle session holds a rumqttc `poll()` future, and a future is as large as its
    /// largest state. Inline, a connect's state (TLS, WebSocket and proxy handshakes) made it
    /// 10,168 bytes, 9.4 KiB more per idle device; the vendored rumqttc boxes the connect
    /// (vendor/README.md), which leaves 1,344.
    #[test]
    fn the_poll_future_every_session_holds_stays_small() {
        let (_client, mut eventloop) =
            rumqttc::AsyncClient::new(rumqttc::MqttOptions::new("d", "hub", 8883), 4);
        let poll = eventloop.poll();
        assert!(
            std::mem::size_of_val(&poll) <= 2048,
            "{} bytes",
            std::mem::size_of_val(&poll)
        );
    }
}

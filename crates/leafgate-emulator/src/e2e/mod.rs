//! In-crate end-to-end tests: a real emulator on `127.0.0.1:0` and real clients (rumqttc over
//! TLS and WebSockets, raw WebSocket clients), for the listeners and authentication that the
//! unit tests of each module cannot reach. The helpers here are the clients' side; every wait
//! is on an emulator record or a client event, except the DPS client's, which waits out the
//! `retry-after` it is given, as the protocol asks a device to.

mod dps;
mod websocket;
mod x509;

use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Incoming, MqttOptions, QoS,
    TlsConfiguration, Transport,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use crate::clock::unix_now;
use crate::sas::{self, Key};
use crate::{Emulator, EmulatorConfig};
use leafgate::hub::topics;

/// Generous bound for things that take milliseconds; only reached when a test fails.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// An emulator with the WebSocket listener on as well.
pub(crate) async fn start_with_ws() -> Emulator {
    Emulator::start(EmulatorConfig {
        ws_addr: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 0))),
        ..EmulatorConfig::default()
    })
    .await
    .unwrap()
}

/// A 32-byte key made of `seed`.
pub(crate) fn key(seed: u8) -> Key {
    use base64::Engine as _;
    Key::from_base64(&base64::engine::general_purpose::STANDARD.encode([seed; 32])).unwrap()
}

/// A device SAS token for `id` valid for an hour.
pub(crate) fn token(emu: &Emulator, id: &str, key: &Key) -> String {
    sas::token(
        &sas::device_resource(emu.host_name(), id),
        key,
        unix_now() + 3600,
        None,
    )
}

/// A client certificate chain and its key, both PEM.
#[derive(Clone)]
pub(crate) struct Identity {
    pub(crate) chain_pem: String,
    pub(crate) key_pem: String,
}

/// A rustls client config trusting only the emulator's CA (ring provider, as the gateway builds
/// it), presenting `identity` when given.
pub(crate) fn client_tls(ca_pem: &str, identity: Option<&Identity>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match identity {
        Some(identity) => {
            let chain = CertificateDer::pem_slice_iter(identity.chain_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// Which device listener a client dials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dial {
    Tls,
    Wss,
}

/// rumqttc options for device `id` on `emu`'s hub over `dial`, with `password` (none for
/// X.509) and `identity` as the TLS client certificate.
pub(crate) fn hub_options(
    emu: &Emulator,
    id: &str,
    password: Option<String>,
    identity: Option<&Identity>,
    dial: Dial,
) -> MqttOptions {
    let tls = TlsConfiguration::Rustls(client_tls(emu.ca_pem(), identity));
    let mut options = match dial {
        Dial::Tls => {
            let mut options = MqttOptions::new(id, "localhost", emu.mqtt_addr().port());
            options.set_transport(Transport::tls_with_config(tls));
            options
        }
        Dial::Wss => {
            let port = emu.ws_addr().unwrap().port();
            let url = format!("wss://localhost:{port}/$iothub/websocket");
            let mut options = MqttOptions::new(id, url, port);
            options.set_transport(Transport::wss_with_config(tls));
            options
        }
    };
    let username = format!("{}/{id}/?api-version=2021-04-12", emu.host_name());
    options.set_credentials(username, password.unwrap_or_default());
    options.set_keep_alive(Duration::from_secs(60));
    options
}

/// Polls until the first CONNACK or error.
pub(crate) async fn connect_once(
    options: MqttOptions,
) -> Result<(AsyncClient, EventLoop), ConnectionError> {
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    let first = tokio::time::timeout(WAIT, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Incoming::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("no CONNACK and no error");
    first.map(|()| (client, eventloop))
}

/// The CONNACK code a refused connection got.
pub(crate) fn refused_with(
    result: Result<(AsyncClient, EventLoop), ConnectionError>,
) -> ConnectReturnCode {
    match result {
        Err(ConnectionError::ConnectionRefused(code)) => code,
        Err(other) => panic!("expected a CONNACK refusal, got {other:?}"),
        Ok(_) => panic!("expected a CONNACK refusal, got accepted"),
    }
}

/// Runs a connected client as a device that subscribes to methods and answers each with 200
/// and `{"method": name, "echo": payload}`, until it errors or the handle is aborted.
pub(crate) fn serve_methods(client: AsyncClient, mut eventloop: EventLoop) -> JoinHandle<()> {
    tokio::spawn(async move {
        client
            .subscribe(topics::METHODS_FILTER, QoS::AtMostOnce)
            .await
            .unwrap();
        while let Ok(event) = eventloop.poll().await {
            let Event::Incoming(Incoming::Publish(publish)) = event else {
                continue;
            };
            let Ok(request) = topics::parse_request(&publish.topic) else {
                continue;
            };
            let echo: serde_json::Value =
                serde_json::from_slice(&publish.payload).unwrap_or_default();
            let body = json!({"method": request.name, "echo": echo}).to_string();
            client
                .try_publish(
                    topics::response(200, request.rid),
                    QoS::AtMostOnce,
                    false,
                    body,
                )
                .unwrap();
        }
    })
}

/// A method round trip through the emulator to a device serving [`serve_methods`].
pub(crate) async fn assert_method_round_trip(emu: &Emulator, id: &str) {
    emu.wait_method_ready(id, WAIT).await.unwrap();
    let result = emu
        .invoke(id, crate::MethodCall::new("ping", json!({"n": 7})))
        .await
        .unwrap();
    assert_eq!(result.status, 200);
    assert_eq!(result.payload, json!({"method": "ping", "echo": {"n": 7}}));
}

/// A TLS connection to `addr` trusting the emulator's CA, for raw clients.
pub(crate) async fn raw_tls(
    emu: &Emulator,
    addr: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let connector = tokio_rustls::TlsConnector::from(client_tls(emu.ca_pem(), None));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, tcp).await.unwrap()
}

//! Everything before a connection's first MQTT byte: the TLS handshake (which may carry a
//! client certificate), then for the WebSocket listener the HTTP upgrade. The device endpoint
//! and the DPS endpoint both start here, and run a [`Link`] on whatever stream results.

use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::link::{DeviceStream, Link};
use super::websocket::{self, UpgradeError};
use crate::wire::DeviceTransport;

/// What the handshakes before the first MQTT byte produced.
pub(crate) struct Handshaken {
    pub(crate) link: Link,
    /// The TLS version negotiated (`TLSv1_2`, `TLSv1_3`).
    pub(crate) tls_version: Option<String>,
    /// The client certificate chain, leaf first; empty when the client presented none.
    pub(crate) client_chain: Vec<CertificateDer<'static>>,
}

/// Why a connection ended before its first MQTT byte.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HandshakeError {
    #[error("tls handshake failed: {0}")]
    Tls(#[source] std::io::Error),
    #[error(transparent)]
    WebSocket(#[from] UpgradeError),
}

/// TLS, then for [`DeviceTransport::WebSocket`] the HTTP upgrade; the MQTT link runs on
/// whichever stream results.
pub(crate) async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    transport: DeviceTransport,
) -> Result<Handshaken, HandshakeError> {
    let tls = acceptor.accept(tcp).await.map_err(HandshakeError::Tls)?;
    let session = tls.get_ref().1;
    let tls_version = session
        .protocol_version()
        .map(|version| format!("{version:?}"));
    let client_chain = session.peer_certificates().unwrap_or_default().to_vec();
    let stream: Box<dyn DeviceStream> = match transport {
        DeviceTransport::Mqtt => Box::new(tls),
        DeviceTransport::WebSocket => Box::new(websocket::upgrade(tls).await?),
    };
    Ok(Handshaken {
        link: Link::new(stream),
        tls_version,
        client_chain,
    })
}

//! Reading and writing MQTT packets on a device's byte stream, with bounded buffers. Everything a
//! client sends passes through here first, so this is where a malformed or oversized packet, or
//! a panic in the third-party decoder, becomes a closed connection instead of a crash.
//!
//! The stream is boxed: MQTT over TLS, MQTT over WebSockets over TLS (`super::websocket`) and
//! the DPS endpoint all hand the same [`Link`] whatever byte stream they ended up with, so the
//! packet handling above it exists once.

use std::io;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use bytes::BytesMut;
use rumqttc::mqttbytes;
use rumqttc::mqttbytes::v4::Packet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::registry::DisconnectReason;

/// Largest packet accepted from a device: a 256 KB telemetry message plus room for its topic
/// and property bag. Larger packets close the connection before their body is buffered.
pub(crate) const MAX_INCOMING_PACKET: usize = 264 * 1024;
/// Largest packet sent: a 128 KB method request plus its topic, with margin.
const MAX_OUTGOING_PACKET: usize = 192 * 1024;
/// A device that does not read for this long is treated as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Read buffers shrink back to this after a large packet, so idle connections stay small.
const READ_CHUNK: usize = 2048;

/// Why a link read or write failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    #[error("peer closed the connection")]
    Eof,
    #[error("i/o error: {0}")]
    Io(#[from] io::Error),
    #[error("malformed packet: {0}")]
    Malformed(mqttbytes::Error),
    #[error("packet decoder panicked")]
    DecoderPanicked,
    #[error("could not encode packet: {0}")]
    Encode(mqttbytes::Error),
    #[error("write timed out")]
    WriteTimeout,
}

impl LinkError {
    pub(crate) fn into_reason(self) -> DisconnectReason {
        match self {
            LinkError::Eof | LinkError::Io(_) | LinkError::WriteTimeout | LinkError::Encode(_) => {
                DisconnectReason::ConnectionLost(self.to_string())
            }
            LinkError::Malformed(_) | LinkError::DecoderPanicked => {
                DisconnectReason::ProtocolViolation(self.to_string())
            }
        }
    }
}

/// A byte stream a device's MQTT packets travel on: a TLS stream, or the binary frames of a
/// WebSocket inside one.
pub(crate) trait DeviceStream: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> DeviceStream for T {}

/// A device's stream with bounded read and write buffers.
pub(crate) struct Link {
    stream: Box<dyn DeviceStream>,
    pub(super) rbuf: BytesMut,
    wbuf: BytesMut,
}

/// Decodes one packet if the buffer holds a whole one. rumqttc's codec checks lengths, but it is
/// third-party code fed by the network: a panic in it must close one connection, not leave the
/// registry believing a dead device is online.
fn decode(buf: &mut BytesMut) -> Result<Option<Packet>, LinkError> {
    match std::panic::catch_unwind(AssertUnwindSafe(|| Packet::read(buf, MAX_INCOMING_PACKET))) {
        Ok(Ok(packet)) => Ok(Some(packet)),
        Ok(Err(mqttbytes::Error::InsufficientBytes(_))) => Ok(None),
        Ok(Err(e)) => Err(LinkError::Malformed(e)),
        Err(_) => Err(LinkError::DecoderPanicked),
    }
}

impl Link {
    pub(crate) fn new(stream: Box<dyn DeviceStream>) -> Self {
        Link {
            stream,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::new(),
        }
    }

    pub(crate) fn decode(&mut self) -> Result<Option<Packet>, LinkError> {
        let packet = decode(&mut self.rbuf)?;
        if self.rbuf.is_empty() && self.rbuf.capacity() > 16 * READ_CHUNK {
            self.rbuf = BytesMut::with_capacity(READ_CHUNK);
        }
        Ok(packet)
    }

    /// Reads more bytes into the buffer.
    ///
    /// # Cancel safety
    /// Cancel safe: bytes read are kept in `rbuf`, so dropping this future loses nothing.
    pub(crate) async fn fill(&mut self) -> Result<(), LinkError> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_CHUNK / 2 {
            self.rbuf.reserve(READ_CHUNK);
        }
        match self.stream.read_buf(&mut self.rbuf).await? {
            0 => Err(LinkError::Eof),
            _ => Ok(()),
        }
    }

    /// The next packet. Cancel safe, like [`Link::fill`].
    pub(crate) async fn next_packet(&mut self) -> Result<Packet, LinkError> {
        loop {
            if let Some(packet) = self.decode()? {
                return Ok(packet);
            }
            self.fill().await?;
        }
    }

    pub(crate) async fn send(&mut self, packet: Packet) -> Result<(), LinkError> {
        self.wbuf.clear();
        packet
            .write(&mut self.wbuf, MAX_OUTGOING_PACKET)
            .map_err(LinkError::Encode)?;
        let write = async {
            self.stream.write_all(&self.wbuf).await?;
            self.stream.flush().await
        };
        match tokio::time::timeout(WRITE_TIMEOUT, write).await {
            Ok(result) => result.map_err(LinkError::Io),
            Err(_) => Err(LinkError::WriteTimeout),
        }
    }

    /// Closes politely (a WebSocket close frame, TLS close_notify) but without waiting on a peer that does not read.
    pub(crate) async fn close(mut self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.stream.shutdown()).await;
    }
}

pub(crate) fn packet_name(packet: &Packet) -> &'static str {
    match packet {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}

/// Only for the decoder robustness test: the raw decode of arbitrary bytes.
#[cfg(test)]
pub(crate) fn decode_for_test(bytes: &[u8]) -> Result<Option<Packet>, String> {
    let mut buf = BytesMut::from(bytes);
    decode(&mut buf).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random and truncated byte strings: the decoder errors or waits, never panics, and never
    /// buffers a declared length above the limit.
    #[test]
    fn decoder_survives_garbage() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = bytes.first_mut() {
                // Bias towards valid packet types so the deeper parsers run too.
                *first = (*first & 0x0f) | (((next() % 14) as u8 + 1) << 4);
            }
            let _ = decode_for_test(&bytes);
        }
        // Declares 200 MB: refused from the header alone.
        let huge = [0x30, 0x80, 0x80, 0x80, 0x64];
        assert!(decode_for_test(&huge).is_err());
        // Five length bytes: malformed.
        assert!(decode_for_test(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x01]).is_err());
        // Incomplete: wait for more.
        assert_eq!(decode_for_test(&[0x30, 0x10, 0x00]), Ok(None));
    }
}

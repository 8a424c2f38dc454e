//! The device endpoint: MQTT 3.1.1 over TLS, or over WebSockets over TLS, one task per
//! connection (`iothub-protocol.md` 1, 3 and checklist 10).
//!
//! A connection task owns its socket: it reads and decodes with rumqttc's codec, answers
//! CONNECT/SUBSCRIBE/PINGREQ/PUBLISH, and writes method requests that [`crate::methods`] queues
//! for it, desired-property notifications and cloud-to-device messages. The registry only holds
//! a handle to queue messages and to close the connection with a reason. Any input the hub would not accept closes that one connection; nothing a client sends
//! can panic the emulator or grow a buffer past [`MAX_INCOMING_PACKET`](link::MAX_INCOMING_PACKET).
//!
//! One file per job: accepting connections (`listener`), a connection from TLS handshake to
//! CONNACK and close (`connection`), the packets of an accepted session (`session`), its twin
//! requests (`twin`) and cloud-to-device deliveries (`c2d`), TLS and the WebSocket upgrade
//! (`handshake`, `websocket`), and reading and writing packets on the resulting byte stream
//! (`link`). The DPS endpoint (`crate::dps`) reuses `handshake`, `link` and the session's
//! keep-alive rule.

mod c2d;
mod connection;
pub(crate) mod handshake;
pub(crate) mod link;
mod listener;
pub(crate) mod session;
mod twin;
pub(crate) mod websocket;

pub(crate) use listener::run;

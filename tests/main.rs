//! Integration tests: one crate, one module per area.

// The whole crate is test code: helper functions may unwrap like #[test] functions do.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

/// Every log line of this process, at trace level, scanned for secrets (issue 5).
mod logscan;

/// Config cases under tests/fixtures/config/, and the shipped sample config.
mod config;

/// The simulated hardware against independent clients (tokio-modbus, tokio-serial).
mod sim;

/// Bus actors (Modbus TCP, RTU on a pty, RTU over TCP, raw serial) against the simulators.
mod bus;

/// The IoT Hub emulator against rumqttc devices over TLS and the HTTP service client.
mod emulator;

/// `[metrics]`: the scrape against promtool and a real Prometheus; hostile scrapers.
mod metrics;

/// `leafgate call` and `leafgate status`: the control socket of a running daemon, and
/// `call --offline` on a line, refused while a daemon holds it.
mod control;

/// `leafgate emulator` for users: its `[hub]` snippet runs leafgate, its `curl` line calls a
/// method.
mod emulator_cli;

/// The whole gateway end to end: emulator + simulated hardware + leafgate from a config file.
mod gateway;

/// Issue 5: hub faults (refused, closed, stalled, throttled connects; mass reconnects), SAS
/// renewal across many devices, and method floods against the real binary's memory.
mod faults;

/// Telemetry end to end: polled readings as device-to-cloud messages, through hub outages.
mod telemetry;

/// The durable telemetry store with the real binary: kill -9, SIGTERM, a damaged file, a full
/// store, a file that cannot be written.
mod store;

/// leafgate against a raw, hostile MQTT peer: request bursts in one write, no SUBACK, huge
/// method names.
mod hub_hostile;

/// Reaching the hub from a locked-down site: HTTP proxies (tinyproxy), MQTT over WebSockets,
/// an IoT Edge parent.
mod firewall;

/// Zero-touch provisioning through the emulator's DPS: group and individual keys, the cache
/// across a restart, a move to another hub, 429s.
mod provisioning;

/// Device twins end to end: the gateway, the emulator's twins and service API, a simulated PLC.
mod twin;

/// Cloud-to-device commands end to end: the emulator's queue, locks and redelivery.
mod c2d;

/// Device twins and cloud-to-device commands against the raw hostile peer: throttled and
/// silent twin requests, desired versions out of order, C2D acknowledged only after the run
/// and redelivered without running twice.
mod twin_hostile;

/// The real binary: `check` and `run` exit codes, SIGTERM, secrets kept out of the log.
mod cli;

/// `leafgate model`: profiles as IoT Plug and Play models, checked by Microsoft's DTDL parser
/// (node, `tests/model/`).
mod model;

/// `leafgate demo --once`, through the library and as the real binary.
mod demo;

/// Property tests: no panic on any input that comes from outside.
mod props;

/// leafgate and the emulator against third-party peers in Python venvs: the Azure IoT device and
/// service SDKs, and pymodbus (issue 3; the venvs are built on first use, see compat/peer.rs).
mod compat;

/// leafgate as a systemd service through the real binary: notify socket messages, SIGHUP partial
/// reload, SIGTERM drain, the start condition, the shipped unit and default config.
mod service;

//! Integration tests: one crate, one module per area.

/// Config cases under tests/fixtures/config/, and the shipped sample config.
mod config;

/// The simulated hardware against independent clients (tokio-modbus, tokio-serial).
mod sim;

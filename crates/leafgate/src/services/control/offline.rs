//! `leafgate call --offline`: no daemon, no hub. The command opens the device's bus itself
//! (the same actor, link and lanes as the daemon's), runs one request on it, and lets go.
//!
//! It refuses when the bus is taken: when a leafgate answering on the config's control socket
//! runs that bus, and, for serial lines, when another process holds the line's lock (every
//! leafgate takes one, see `bus::port`). Two masters on one line would garble each other's
//! frames; a Modbus TCP device may take a second client, or drop the first.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::protocol::{Request, Response};
use super::{answer, client, registry};
use crate::bus::{self, BusSpec};
use crate::config::Config;
use crate::hub::presence::Presence;
use crate::services::methods;

/// How long the bus may take to open before the request is run anyway (and answered 503 with
/// the reason, if it is still closed).
const OPEN_TIME: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error(
        "the leafgate on {socket} (pid {pid}) runs bus {bus:?}; call without --offline to go through it"
    )]
    Daemon {
        socket: std::path::PathBuf,
        pid: u64,
        bus: String,
    },
    #[error("cannot tell whether the leafgate on {socket} runs this bus ({why}); nothing was run")]
    Unsure {
        socket: std::path::PathBuf,
        why: String,
    },
    #[error("bus {bus:?}: {why}")]
    Line { bus: String, why: String },
    #[error("{0}")]
    NotFound(String),
    #[error("the status request is for a running daemon; leafgate status without --offline")]
    Status,
}

/// Runs `request` on the bus of its device in `config`.
///
/// # Errors
/// When the bus is held by a daemon or another process, or the device is not in `config`.
pub async fn run(config: &Config, request: Request) -> Result<Response, Refused> {
    let Some((id, work)) = request.work() else {
        return Err(Refused::Status);
    };
    let Some(device) = config.devices.iter().find(|d| d.id == id) else {
        let nearest =
            crate::config::suggest::nearest(&id, config.devices.iter().map(|d| d.id.as_str()));
        return Ok(Response::not_found("device", &id, nearest));
    };
    let Some(bus) = config.buses.iter().find(|b| b.id == device.bus) else {
        return Err(Refused::NotFound(format!(
            "bus {:?} of device {id:?} is not in the config",
            device.bus
        )));
    };
    held_by_daemon(config, &bus.id).await?;
    if let BusSpec::ModbusRtu { line, .. } | BusSpec::Serial { line, .. } = &bus.spec {
        // Opened (and locked) once here to refuse with the reason; the actor opens it again.
        if let Err(e) = bus::port::open(line) {
            return Err(Refused::Line {
                bus: bus.id.clone(),
                why: e.to_string(),
            });
        }
    }
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let (handle, _task) = bus::start(bus, stop);
    let mut up = handle.up_watch();
    let _ = tokio::time::timeout(OPEN_TIME, up.wait_for(|up| *up)).await;
    let entry = registry::Device {
        methods: Arc::new(methods::Device {
            id: device.id.as_str().into(),
            unit: device.unit,
            bus_kind: bus.spec.kind(),
            bus: handle,
            methods: device.methods.clone(),
            raw_methods: device.raw_methods,
            max_payload_bytes: config.hub.max_payload_bytes,
            stats: None,
            latency: None,
        }),
        groups: device.telemetry.clone(),
        presence: Arc::new(Presence::new()),
        bus: bus.id.clone(),
    };
    Ok(answer::run(&entry, &work, "offline").await)
}

/// Refuses when a daemon answers on the config's control socket and runs `bus`, and when it is
/// not certain that none does: only a socket nobody listens on lets the command go ahead.
async fn held_by_daemon(config: &Config, bus: &str) -> Result<(), Refused> {
    let Some(socket) = &config.control else {
        return Ok(());
    };
    let unsure = |why: String| Refused::Unsure {
        socket: socket.clone(),
        why,
    };
    let status = match client::ask(socket, &Request::Status, client::STATUS_TIMEOUT).await {
        Ok(status) if status.status == 200 => status,
        Ok(other) => {
            return Err(unsure(format!(
                "it answered {}: {}",
                other.status, other.payload
            )));
        }
        Err(client::Error::NotRunning(_)) => return Ok(()),
        Err(e) => return Err(unsure(e.to_string())),
    };
    let runs = status.payload["buses"]
        .as_array()
        .is_some_and(|buses| buses.iter().any(|b| b["id"] == bus));
    if runs {
        return Err(Refused::Daemon {
            socket: socket.clone(),
            pid: status.payload["pid"].as_u64().unwrap_or(0),
            bus: bus.to_owned(),
        });
    }
    Ok(())
}

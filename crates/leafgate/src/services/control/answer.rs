//! One request, answered: a call or a group read on a device (the daemon's and `--offline`'s
//! alike), and the status document.

use serde_json::{Value, json};
use tokio::time::Instant;

use super::protocol::{Response, Work};
use super::registry::{self, Registry};
use crate::mapping::respond;
use crate::utc::utc;

/// Runs a call or a read on `device`; `rid` names the caller in its log line.
pub async fn run(device: &registry::Device, work: &Work, rid: &str) -> Response {
    match work {
        Work::Call { method, payload } => call(device, method, payload, rid).await,
        Work::Read { group } => read(device, group, rid).await,
    }
}

/// Runs `method` on `device` exactly as a request from the hub: same lookup, payload checks,
/// lane, deadline, statuses and log line. `rid` names the caller in that line.
async fn call(device: &registry::Device, method: &str, payload: &Value, rid: &str) -> Response {
    // The hub hands over bytes; so does this, so a payload is judged (size, JSON) the same way.
    let bytes = if payload.is_null() {
        Vec::new()
    } else {
        serde_json::to_vec(payload).unwrap_or_default()
    };
    let response = device
        .methods
        .call(method, rid, &bytes, Instant::now())
        .await;
    Response {
        status: response.status,
        payload: response.body,
    }
}

/// Reads one telemetry group of `device` once, in the poll lane behind every method, and
/// answers its values as a telemetry message would carry them (without `ts`).
async fn read(device: &registry::Device, group: &str, rid: &str) -> Response {
    let Some(g) = device.groups.iter().find(|g| g.name == group) else {
        let names = device.groups.iter().map(|g| g.name.as_str());
        let nearest = crate::config::suggest::nearest(group, names);
        let mut response = Response::not_found("group", group, nearest);
        response.payload["groups"] = device.groups.iter().map(|g| g.name.clone()).collect();
        return response;
    };
    let id = &*device.methods.id;
    match device
        .methods
        .read(&g.reads, &format!("telemetry {group}"))
        .await
    {
        Ok(values) => {
            log::info!(device_id = id, group = group, rid = rid, service = "control"; "control: read telemetry group {group} of {id}: 200");
            Response::ok(values)
        }
        Err(failure) => {
            let (status, body, level) = respond(&failure);
            log::log!(level, device_id = id, group = group, rid = rid, service = "control"; "control: read telemetry group {group} of {id}: {status} {}", crate::chain::chain(&failure));
            Response {
                status,
                payload: body,
            }
        }
    }
}

/// The status document: this process, every device's connection, every bus, and the last
/// warnings and errors logged.
#[must_use]
pub fn status(registry: &Registry, config: &std::path::Path) -> Response {
    let devices: Vec<Value> = registry
        .devices()
        .into_iter()
        .map(|(id, d)| {
            let p = d.presence.get();
            json!({
                "id": id,
                "bus": d.bus,
                "connected": p.connected,
                "since": utc(p.since),
                "last_error": p.last_error.map(|(at, message)| json!({"at": utc(at), "message": message})),
            })
        })
        .collect();
    let buses: Vec<Value> = registry
        .buses()
        .into_iter()
        .map(|(id, b)| {
            let (queued, polls) = b.handle.queued();
            let down: Vec<u8> = b.handle.down_watch().borrow().iter().copied().collect();
            json!({
                "id": id,
                "kind": b.kind.name(),
                "up": b.handle.is_up(),
                "queued": queued,
                "polls_queued": polls,
                "units_down": down,
            })
        })
        .collect();
    let recent: Vec<Value> = crate::recent::lines()
        .into_iter()
        .map(|l| {
            json!({
                "at": utc(l.at),
                "level": l.level.as_str().to_lowercase(),
                "device": l.device,
                "message": l.message,
            })
        })
        .collect();
    Response::ok(json!({
        "leafgate": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "config": config.display().to_string(),
        "started": utc(registry.started),
        "devices": devices,
        "buses": buses,
        "recent": recent,
    }))
}

//! leafgate's own view of a device, reported under one key (`leafgate`) of its twin: what an
//! operator looking at the twin in the portal needs first. Pure.

use std::time::SystemTime;

use serde_json::{Map, Value, json};

use crate::services::methods::MethodStats;
use crate::utc::utc;

/// What the view is made of.
#[derive(Debug, Clone)]
pub struct View<'a> {
    pub bus: &'a str,
    pub unit: u8,
    /// The bus's line is open and the circuit breaker does not hold the unit down.
    pub online: bool,
    /// When `online` last changed (or the view started).
    pub since: SystemTime,
    pub stats: &'a MethodStats,
}

/// The `leafgate` object: gateway version, bus and unit, online or down and since when, the
/// last failed request, and requests counted by status (keys are the statuses as text, which
/// the twin's key rules allow).
#[must_use]
pub fn report(view: &View<'_>) -> Value {
    let methods: Map<String, Value> = view
        .stats
        .by_status
        .iter()
        .map(|(status, n)| (status.to_string(), Value::from(*n)))
        .collect();
    let last_error = view.stats.last_error.as_ref().map_or(
        Value::Null,
        |e| json!({"status": e.status, "method": e.method, "at": utc(e.at)}),
    );
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "bus": view.bus,
        "unit": view.unit,
        "state": if view.online { "online" } else { "down" },
        "since": utc(view.since),
        "lastError": last_error,
        "methods": methods,
    })
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::services::methods::LastError;

    #[test]
    fn the_view_names_state_since_last_error_and_counts() {
        let at = UNIX_EPOCH + Duration::from_secs(1_765_000_000);
        let mut stats = MethodStats::default();
        stats.by_status.insert(200, 3);
        stats.by_status.insert(504, 1);
        stats.last_error = Some(LastError {
            status: 504,
            method: "setSpeed".into(),
            at,
        });
        let view = View {
            bus: "line-1",
            unit: 7,
            online: false,
            since: at,
            stats: &stats,
        };
        let got = report(&view);
        assert_eq!(got["state"], "down");
        assert_eq!(got["since"], "2025-12-06T05:46:40.000Z");
        assert_eq!(got["unit"], 7);
        assert_eq!(got["methods"], json!({"200": 3, "504": 1}));
        assert_eq!(
            got["lastError"],
            json!({"status": 504, "method": "setSpeed", "at": "2025-12-06T05:46:40.000Z"})
        );
        let quiet = MethodStats::default();
        let got = report(&View {
            online: true,
            stats: &quiet,
            ..view
        });
        assert_eq!(got["state"], "online");
        assert_eq!(got["lastError"], Value::Null);
        assert_eq!(got["methods"], json!({}));
    }
}

//! What one demo run found: each call's answer and latency, and whether it was the expected
//! one. Public so the binary and the tests decide what a failed run means.

use std::time::Duration;

use serde_json::Value;

/// What one call got, and whether it was what the script expected.
#[derive(Debug, Clone)]
pub struct RoundTrip {
    pub device: String,
    pub method: String,
    pub request: Value,
    /// The method status the device answered; `None` when no method response arrived.
    pub status: Option<u16>,
    /// The reply payload, or the service API's error body, or the client error text.
    pub response: Value,
    /// From sending the HTTP request to having its whole response, at the caller.
    pub latency: Duration,
    /// Shown beside deliberate errors.
    pub note: Option<String>,
    /// Why the answer was not the expected one; `None` when it was.
    pub problem: Option<String>,
}

impl RoundTrip {
    #[must_use]
    pub fn passed(&self) -> bool {
        self.problem.is_none()
    }
}

/// The first device-to-cloud message of a device with telemetry, as the hub received it.
#[derive(Debug, Clone)]
pub struct Telemetry {
    pub device: String,
    /// The `group` application property.
    pub group: Option<String>,
    /// The message body; `None` when nothing arrived in time.
    pub body: Option<Value>,
}

/// Every round trip of one demo run, and what telemetry arrived.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub round_trips: Vec<RoundTrip>,
    pub telemetry: Vec<Telemetry>,
}

impl Summary {
    /// Every call answered as expected and every device with telemetry sent some.
    #[must_use]
    pub fn all_passed(&self) -> bool {
        self.round_trips.iter().all(RoundTrip::passed)
            && self.telemetry.iter().all(|t| t.body.is_some())
    }

    /// One line per failed round trip: `#3 meter-1 getReadings: expected status 200, got 504`.
    #[must_use]
    pub fn failures(&self) -> Vec<String> {
        self.round_trips
            .iter()
            .enumerate()
            .filter_map(|(i, rt)| {
                let problem = rt.problem.as_ref()?;
                Some(format!("#{} {} {}: {problem}", i + 1, rt.device, rt.method))
            })
            .chain(
                self.telemetry
                    .iter()
                    .filter(|t| t.body.is_none())
                    .map(|t| format!("{}: no telemetry arrived", t.device)),
            )
            .collect()
    }
}

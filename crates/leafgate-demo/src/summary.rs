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

/// The device twin and cloud-to-device part of a run, on one device.
#[derive(Debug, Clone, Default)]
pub struct Twin {
    pub device: String,
    /// The desired `speedSetpoint` set, the version the hub gave it, and the acknowledgement
    /// leafgate reported (`None`: none in time).
    pub setpoint: f64,
    pub version: u64,
    pub ack: Option<Value>,
    /// The speed the PLC holds afterwards, read through the `getStatus` method.
    pub speed_after_setpoint: Option<f64>,
    /// The cloud-to-device command sent (`setSpeed`), and whether the hub saw it completed.
    pub command: Value,
    pub command_completed: bool,
    pub speed_after_command: Option<f64>,
    /// leafgate's view of the device, from its reported properties.
    pub health: Option<Value>,
    /// What was not as expected.
    pub problems: Vec<String>,
}

/// How one device reached the hub, as the emulator saw it: over WebSockets, or through DPS.
#[derive(Debug, Clone)]
pub struct Reach {
    pub device: String,
    /// What the emulator saw, as a sentence.
    pub seen: String,
    /// Whether that is what the config asks for.
    pub ok: bool,
}

/// Every round trip of one demo run, and what telemetry arrived.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub round_trips: Vec<RoundTrip>,
    pub telemetry: Vec<Telemetry>,
    pub twin: Option<Twin>,
    pub reach: Vec<Reach>,
}

impl Summary {
    /// Every call answered as expected and every device with telemetry sent some.
    #[must_use]
    pub fn all_passed(&self) -> bool {
        self.round_trips.iter().all(RoundTrip::passed)
            && self.telemetry.iter().all(|t| t.body.is_some())
            && self.twin.as_ref().is_none_or(|t| t.problems.is_empty())
            && self.reach.iter().all(|r| r.ok)
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
            .chain(
                self.twin
                    .iter()
                    .flat_map(|t| t.problems.iter().map(|p| format!("{} twin: {p}", t.device))),
            )
            .chain(
                self.reach
                    .iter()
                    .filter(|r| !r.ok)
                    .map(|r| format!("{}: {}", r.device, r.seen)),
            )
            .collect()
    }
}

//! The demo's fixed script of direct method calls and what a healthy site answers to each, so
//! every run checks the whole path end to end instead of just showing replies.

use serde_json::{Value, json};

/// One scripted call and what a healthy site answers.
pub(crate) struct Call {
    pub(crate) device: &'static str,
    pub(crate) method: &'static str,
    pub(crate) payload: Value,
    pub(crate) status: u16,
    /// Keys the reply payload must have, with these values (numbers compared as numbers).
    pub(crate) expect: Value,
    /// Shown beside deliberate errors.
    pub(crate) note: Option<&'static str>,
}

/// The round trips, in order; later ones rely on earlier ones (the PSU's output is switched on
/// before it is measured).
pub(crate) fn script() -> Vec<Call> {
    let call = |device, method, payload, status, expect| Call {
        device,
        method,
        payload,
        status,
        expect,
        note: None,
    };
    vec![
        call(
            "plc-1",
            "getStatus",
            json!({}),
            200,
            json!({"speed": 850.0, "temperature": 42.3, "running": true, "run_hours": 12873}),
        ),
        call(
            "plc-1",
            "setSpeed",
            json!({"speed": 1200}),
            200,
            json!({"speed": 1200.0}),
        ),
        call(
            "meter-1",
            "getReadings",
            json!({}),
            200,
            json!({"voltage": 230.4, "current": 12.47, "energy_kwh": 12345.67, "frequency_hz": 50.01}),
        ),
        call(
            "meter-2",
            "getReadings",
            json!({}),
            200,
            json!({"voltage": 231.8, "current": 3.05, "energy_kwh": 482.13, "frequency_hz": 49.98}),
        ),
        call(
            "psu-1",
            "identify",
            json!({}),
            200,
            json!({"maker": "LEAFGATE", "model": "PSU-1", "serial": "0001", "firmware": "1.0"}),
        ),
        call(
            "psu-1",
            "setVoltage",
            json!({"volts": 5.0}),
            200,
            json!({"volts": 5.0}),
        ),
        call("psu-1", "outputOn", json!({}), 200, json!({"output": true})),
        call(
            "psu-1",
            "measure",
            json!({}),
            200,
            json!({"volts": 5.0, "amps": 1.5}),
        ),
        Call {
            note: Some("deliberate: unknown method"),
            ..call(
                "meter-2",
                "calibrate",
                json!({}),
                501,
                json!({"error": "unknown_method"}),
            )
        },
        Call {
            note: Some("deliberate: speed above max 1500"),
            ..call(
                "plc-1",
                "setSpeed",
                json!({"speed": 9000}),
                400,
                json!({"error": "bad_request", "field": "speed"}),
            )
        },
    ]
}

/// Compares a method's answer with the script; `None` if it is as expected.
pub(crate) fn check(call: &Call, status: u16, payload: &Value) -> Option<String> {
    if status != call.status {
        return Some(format!(
            "expected status {}, got {status} {payload}",
            call.status
        ));
    }
    let Value::Object(want) = &call.expect else {
        return None;
    };
    let mismatches: Vec<String> = want
        .iter()
        .filter_map(|(key, want)| {
            let got = payload.get(key).unwrap_or(&Value::Null);
            (!same(want, got)).then(|| format!("{key}: expected {want}, got {got}"))
        })
        .collect();
    (!mismatches.is_empty()).then(|| mismatches.join("; "))
}

/// JSON equality, with numbers compared by value (1200 == 1200.0).
fn same(want: &Value, got: &Value) -> bool {
    match (want.as_f64(), got.as_f64()) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(1.0),
        _ => want == got,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_checked_by_status_and_key_values() {
        let call = Call {
            device: "d",
            method: "m",
            payload: json!({}),
            status: 200,
            expect: json!({"speed": 1200.0, "running": true}),
            note: None,
        };
        let cases = [
            (
                200,
                json!({"speed": 1200, "running": true, "extra": 1}),
                None,
            ),
            (
                200,
                json!({"speed": 1199.5, "running": true}),
                Some("speed: expected 1200.0, got 1199.5"),
            ),
            (
                200,
                json!({"speed": 1200.0}),
                Some("running: expected true, got null"),
            ),
            (
                504,
                json!({"error": "device_timeout"}),
                Some(r#"expected status 200, got 504 {"error":"device_timeout"}"#),
            ),
        ];
        for (status, payload, want) in cases {
            assert_eq!(check(&call, status, &payload).as_deref(), want, "{payload}");
        }
    }
}

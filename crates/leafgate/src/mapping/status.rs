//! The method status contract (design.md): every failure becomes one status, one JSON body and
//! one log level, here and nowhere else. The `match` is exhaustive on purpose: a new error
//! variant must be given a status before the code compiles.

use serde_json::{Value, json};

use super::method::{ReplyError, RequestError};
use crate::bus;

/// Why a method request did not produce a 200.
///
/// `Display` says what failed and never repeats the cause: a variant with a cause returns it from
/// `source()`, and the gateway's log line appends each source in the chain (`bad request: 9000
/// is out of range 0..=1500`). Variants holding only text have no source and show it.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("payload of {size} bytes exceeds the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    #[error("bad request")]
    BadRequest(#[from] RequestError),
    #[error("no method of that name")]
    UnknownMethod { methods: Vec<String> },
    #[error("bus {bus}")]
    Bus {
        bus: String,
        #[source]
        error: bus::Error,
        timeout_ms: u64,
    },
    #[error("unusable device reply")]
    Reply(#[from] ReplyError),
    /// The device is stopping (shutdown, or a restart with a changed config): a request that
    /// arrives meanwhile is refused rather than started, since its reply might not get out.
    #[error("leafgate is stopping this device (shutdown or config reload)")]
    ShuttingDown { bus: String },
    /// `limit` requests for the device are already in progress: one device's flood must not hold
    /// unbounded memory or starve its bus-mates, so the excess never reaches the hardware.
    #[error("{limit} requests for this device are already in progress; try again later")]
    TooManyInProgress { bus: String, limit: usize },
    #[error("internal error: {0}")]
    Internal(String),
}

/// Status, body and log level for a failure.
#[must_use]
pub fn respond(failure: &Failure) -> (u16, Value, log::Level) {
    use log::Level::{Error, Info, Warn};
    match failure {
        Failure::TooLarge { size, limit } => (
            413,
            json!({"error": "payload_too_large", "message": failure.to_string(), "size": size, "limit": limit}),
            Warn,
        ),
        Failure::NotJson(msg) => (
            400,
            json!({"error": "bad_request", "message": format!("payload is not JSON: {msg}")}),
            Info,
        ),
        Failure::BadRequest(e) => {
            let mut body = json!({"error": "bad_request", "message": e.message});
            if let Some(field) = &e.field {
                body["field"] = Value::String(field.clone());
            }
            (400, body, Info)
        }
        Failure::UnknownMethod { methods } => (
            501,
            json!({"error": "unknown_method", "methods": methods}),
            Info,
        ),
        Failure::Bus {
            bus,
            error,
            timeout_ms,
        } => match error {
            bus::Error::Exception { code } => (
                422,
                json!({"error": "device_exception", "code": code, "name": bus::error::exception_name(*code)}),
                Warn,
            ),
            // `timeout` names the limit that ran out and `timeout_ms` is that limit: a silent unit
            // is told apart from a method whose deadline was too short for the queue ahead.
            bus::Error::Timeout(bus::Timeout {
                limit: bus::Limit::Bus { ms },
                ..
            }) => (
                504,
                json!({"error": "device_timeout", "timeout": "bus", "timeout_ms": ms, "message": error.to_string()}),
                Warn,
            ),
            bus::Error::Timeout(bus::Timeout {
                limit: bus::Limit::Deadline { .. },
                ..
            })
            | bus::Error::Expired => (
                504,
                json!({"error": "device_timeout", "timeout": "method", "timeout_ms": timeout_ms, "message": error.to_string()}),
                Warn,
            ),
            bus::Error::Protocol(msg) => (
                502,
                json!({"error": "bad_device_reply", "message": msg}),
                Warn,
            ),
            bus::Error::Unavailable { .. }
            | bus::Error::QueueFull(_)
            | bus::Error::Busy { .. }
            | bus::Error::ShuttingDown => (
                503,
                json!({"error": "bus_unavailable", "bus": bus, "message": with_sources(error)}),
                Warn,
            ),
        },
        Failure::Reply(e) => (
            502,
            json!({"error": "bad_device_reply", "message": e.0}),
            Warn,
        ),
        // Expected at every stop and reload, and a flooding caller is told at once: info, so
        // neither fills the journal's warnings.
        Failure::ShuttingDown { bus } | Failure::TooManyInProgress { bus, .. } => (
            503,
            json!({"error": "bus_unavailable", "bus": bus, "message": failure.to_string()}),
            Info,
        ),
        // Details go to the journal only; the caller learns nothing about internals.
        Failure::Internal(_) => (
            500,
            json!({"error": "internal", "message": "internal error; see the gateway's journal"}),
            Error,
        ),
    }
}

/// `error` followed by each of its sources: the body's message keeps the cause (the OS error
/// behind an unavailable bus) that `Display` leaves to the chain, each part once.
fn with_sources(error: &dyn std::error::Error) -> String {
    crate::chain::chain(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A timeout of unit 1 on `limit`.
    fn timeout(limit: bus::Limit) -> bus::Error {
        bus::Error::Timeout(bus::Timeout {
            unit: Some(1),
            limit,
        })
    }

    fn bus_failure(error: bus::Error) -> Failure {
        Failure::Bus {
            bus: "rs485".to_owned(),
            error,
            timeout_ms: 2000,
        }
    }

    #[test]
    fn every_failure_has_its_contract_status_and_error_name() {
        let cases: Vec<(Failure, u16, &str)> = vec![
            (
                Failure::TooLarge {
                    size: 2000,
                    limit: 1024,
                },
                413,
                "payload_too_large",
            ),
            (Failure::NotJson("eof".to_owned()), 400, "bad_request"),
            (
                Failure::BadRequest(RequestError::new(Some("speed"), "out of range")),
                400,
                "bad_request",
            ),
            (
                Failure::UnknownMethod {
                    methods: vec!["a".to_owned()],
                },
                501,
                "unknown_method",
            ),
            (
                bus_failure(bus::Error::Exception { code: 2 }),
                422,
                "device_exception",
            ),
            (
                bus_failure(bus::Error::Protocol("bad CRC".to_owned())),
                502,
                "bad_device_reply",
            ),
            (
                Failure::Reply(ReplyError("no match".to_owned())),
                502,
                "bad_device_reply",
            ),
            (
                bus_failure(bus::Error::unavailable("refused")),
                503,
                "bus_unavailable",
            ),
            (
                bus_failure(bus::Error::QueueFull(64)),
                503,
                "bus_unavailable",
            ),
            (
                bus_failure(bus::Error::Busy {
                    wait_ms: 1600,
                    left_ms: 990,
                }),
                503,
                "bus_unavailable",
            ),
            (
                bus_failure(bus::Error::ShuttingDown),
                503,
                "bus_unavailable",
            ),
            (
                Failure::ShuttingDown {
                    bus: "rs485".to_owned(),
                },
                503,
                "bus_unavailable",
            ),
            (
                Failure::TooManyInProgress {
                    bus: "rs485".to_owned(),
                    limit: 1024,
                },
                503,
                "bus_unavailable",
            ),
            (
                bus_failure(timeout(bus::Limit::Bus { ms: 500 })),
                504,
                "device_timeout",
            ),
            (
                bus_failure(timeout(bus::Limit::Deadline { ms: 120 })),
                504,
                "device_timeout",
            ),
            (bus_failure(bus::Error::Expired), 504, "device_timeout"),
            (
                Failure::Internal("index out of bounds in decode".to_owned()),
                500,
                "internal",
            ),
        ];
        for (failure, status, error) in cases {
            let (got, body, _) = respond(&failure);
            assert_eq!(
                (got, body["error"].as_str()),
                (status, Some(error)),
                "{failure:?}"
            );
            assert!(body.is_object());
        }
    }

    /// The failure as the gateway's log line shows it (`gateway/device.rs`): `Display`, then
    /// `: {source}` for each source in the chain.
    fn log_line(failure: &Failure) -> String {
        crate::chain::chain(failure)
    }

    #[test]
    fn log_lines_state_each_cause_once() {
        let cases = [
            (
                Failure::BadRequest(RequestError::new(
                    Some("speed"),
                    "9000 is out of range 0..=1500",
                )),
                "bad request: 9000 is out of range 0..=1500",
            ),
            (
                Failure::Reply(ReplyError(
                    "reply \"ERR\" does not match \"^OK$\"".to_owned(),
                )),
                "unusable device reply: reply \"ERR\" does not match \"^OK$\"",
            ),
            (
                bus_failure(timeout(bus::Limit::Bus { ms: 500 })),
                "bus rs485: no answer from unit 1 within the bus timeout of 500 ms",
            ),
            (
                bus_failure(timeout(bus::Limit::Deadline { ms: 120 })),
                "bus rs485: no answer from unit 1 within the 120 ms left before the method's deadline",
            ),
            (
                bus_failure(bus::Error::Timeout(bus::Timeout {
                    unit: None,
                    limit: bus::Limit::Bus { ms: 300 },
                })),
                "bus rs485: no answer from the device within the bus timeout of 300 ms",
            ),
            (
                bus_failure(bus::Error::Exception { code: 2 }),
                "bus rs485: device answered with modbus exception 2 (illegal data address)",
            ),
            (
                bus_failure(bus::Error::transport(
                    "cannot connect to 10.0.0.5:502",
                    std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
                )),
                "bus rs485: bus unavailable: cannot connect to 10.0.0.5:502: connection refused",
            ),
            (
                Failure::NotJson("EOF while parsing".to_owned()),
                "payload is not JSON: EOF while parsing",
            ),
            (
                Failure::Internal("index out of bounds".to_owned()),
                "internal error: index out of bounds",
            ),
            (
                Failure::ShuttingDown {
                    bus: "rs485".to_owned(),
                },
                "leafgate is stopping this device (shutdown or config reload)",
            ),
            (
                Failure::TooManyInProgress {
                    bus: "rs485".to_owned(),
                    limit: 1024,
                },
                "1024 requests for this device are already in progress; try again later",
            ),
        ];
        for (failure, want) in cases {
            let line = log_line(&failure);
            assert_eq!(line, want, "{failure:?}");
            // Whatever a source says appears once: Display does not repeat it.
            let mut source = std::error::Error::source(&failure);
            while let Some(s) = source {
                let detail = s.to_string();
                assert_eq!(line.matches(&detail).count(), 1, "{line}");
                assert!(!failure.to_string().contains(&detail), "{line}");
                source = s.source();
            }
        }
    }

    #[test]
    fn bodies_carry_the_details_the_contract_names() {
        let (_, body, _) = respond(&bus_failure(bus::Error::Exception { code: 2 }));
        assert_eq!(
            body,
            json!({"error": "device_exception", "code": 2, "name": "illegal data address"})
        );
        // A timeout names the limit that ran out, in ms: the bus's, or the method's deadline
        // (`timeout_ms` is then the method's timeout; the message says how long was left).
        let (_, body, _) = respond(&bus_failure(timeout(bus::Limit::Bus { ms: 300 })));
        assert_eq!(
            body,
            json!({"error": "device_timeout", "timeout": "bus", "timeout_ms": 300,
                "message": "no answer from unit 1 within the bus timeout of 300 ms"})
        );
        let (_, body, _) = respond(&bus_failure(timeout(bus::Limit::Deadline { ms: 120 })));
        assert_eq!(
            body,
            json!({"error": "device_timeout", "timeout": "method", "timeout_ms": 2000,
                "message": "no answer from unit 1 within the 120 ms left before the method's deadline"})
        );
        let (_, body, _) = respond(&bus_failure(bus::Error::Expired));
        assert_eq!(
            (&body["timeout"], &body["timeout_ms"]),
            (&json!("method"), &json!(2000))
        );
        // A refusal made before any work names the bus like every other 503.
        let (status, body, _) = respond(&Failure::TooManyInProgress {
            bus: "rs485".to_owned(),
            limit: 1024,
        });
        assert_eq!(
            (status, body),
            (
                503,
                json!({"error": "bus_unavailable", "bus": "rs485",
                    "message": "1024 requests for this device are already in progress; try again later"})
            )
        );
        let (_, body, _) = respond(&Failure::ShuttingDown {
            bus: "rs485".to_owned(),
        });
        assert_eq!(body["bus"], "rs485");
        let (_, body, _) = respond(&bus_failure(bus::Error::QueueFull(64)));
        assert_eq!(body["bus"], "rs485");
        // The OS error behind an unavailable bus is its source; the body still says it, once.
        let (_, body, _) = respond(&bus_failure(bus::Error::transport(
            "cannot connect to 10.0.0.5:502",
            std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
        )));
        assert_eq!(
            body["message"],
            "bus unavailable: cannot connect to 10.0.0.5:502: connection refused"
        );
        let (_, body, _) = respond(&Failure::BadRequest(RequestError::new(
            Some("speed"),
            "too fast",
        )));
        assert_eq!(
            body,
            json!({"error": "bad_request", "message": "too fast", "field": "speed"})
        );
        // Internals stay in the journal.
        let (_, body, level) = respond(&Failure::Internal("secret detail".to_owned()));
        assert!(!body.to_string().contains("secret"));
        assert_eq!(level, log::Level::Error);
    }
}

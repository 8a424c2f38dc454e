//! The control socket's protocol: the client writes one request as a JSON object on one line,
//! the daemon answers one JSON object on one line and closes the connection.
//!
//! ```text
//! → {"op":"call","device":"pump-7","method":"setSpeed","payload":{"speed":12.5}}
//! ← {"status":200,"payload":{"speed":12.5}}
//! → {"op":"read","device":"meter-1","group":"fast"}
//! ← {"status":200,"payload":{"voltage":230.1}}
//! → {"op":"status"}
//! ← {"status":200,"payload":{"leafgate":"0.1.0","devices":[...],"buses":[...],"recent":[...]}}
//! ```
//!
//! Every reply has the shape of an IoT Hub direct method's result (`status`, `payload`); the
//! statuses of calls are the method contract's, plus 404 for a device or group the daemon does
//! not run and 400 for a request it cannot read.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The largest request line the daemon reads: a method payload is bounded by `[hub]
/// max_payload_bytes` (at most 256 KiB), escaped at worst six bytes for one.
pub const MAX_REQUEST: usize = 2 * 1024 * 1024;

/// The longest device id, method or group name a request may carry: ids are at most 128
/// (`check`), and a longer name could only cost the daemon time to compare.
pub const MAX_NAME: usize = 128;

/// One request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Runs a configured or raw method, as the hub would call it.
    Call {
        device: String,
        method: String,
        /// The method's payload; absent is `null`, as an empty payload from the hub is.
        #[serde(default)]
        payload: Value,
    },
    /// Reads a telemetry group once, in the bus's poll lane; nothing is sent to the hub.
    Read { device: String, group: String },
    /// What runs: devices, buses, recent warnings and errors.
    Status,
}

/// What a call or a read asks of its device.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    Call { method: String, payload: Value },
    Read { group: String },
}

impl Work {
    /// The method's or the group's name.
    #[must_use]
    pub fn name(&self) -> &str {
        match self {
            Work::Call { method, .. } => method,
            Work::Read { group } => group,
        }
    }
}

impl Request {
    /// The device a call or read is for, and what to do there; `None` for a status request.
    #[must_use]
    pub fn work(self) -> Option<(String, Work)> {
        match self {
            Request::Status => None,
            Request::Call {
                device,
                method,
                payload,
            } => Some((device, Work::Call { method, payload })),
            Request::Read { device, group } => Some((device, Work::Read { group })),
        }
    }
}

/// One reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub status: u16,
    pub payload: Value,
}

impl Response {
    #[must_use]
    pub fn ok(payload: Value) -> Self {
        Self {
            status: 200,
            payload,
        }
    }

    /// A request the daemon cannot read.
    #[must_use]
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            payload: json!({"error": "bad_request", "message": message.into()}),
        }
    }

    /// A failure of the daemon itself; details in the journal.
    #[must_use]
    pub fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        log::error!(service = "control"; "control: {message}");
        Self {
            status: 500,
            payload: json!({"error": "internal", "message": message}),
        }
    }

    /// A device or group this gateway does not run, with the nearest name when one is close.
    #[must_use]
    pub fn not_found(what: &str, name: &str, nearest: Option<&str>) -> Self {
        let mut message = format!("no {what} {name:?} here");
        if let Some(n) = nearest {
            message.push_str(&format!("; did you mean {n:?}?"));
        }
        Self {
            status: 404,
            payload: json!({"error": format!("unknown_{what}"), "message": message}),
        }
    }

    /// The line written on the socket.
    #[must_use]
    pub fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_else(|_| {
            br#"{"status":500,"payload":{"error":"internal","message":"cannot encode the reply"}}"#.to_vec()
        });
        line.push(b'\n');
        line
    }
}

#[cfg(test)]
mod tests {
    use super::{Request, Response};
    use serde_json::json;

    #[test]
    fn requests_read_as_documented_and_strangers_are_refused() {
        let call: Request = serde_json::from_str(
            r#"{"op":"call","device":"pump-7","method":"setSpeed","payload":{"speed":12.5}}"#,
        )
        .unwrap();
        assert_eq!(
            call,
            Request::Call {
                device: "pump-7".into(),
                method: "setSpeed".into(),
                payload: json!({"speed": 12.5})
            }
        );
        let bare: Request =
            serde_json::from_str(r#"{"op":"call","device":"d","method":"m"}"#).unwrap();
        assert!(matches!(bare, Request::Call { payload, .. } if payload.is_null()));
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"status"}"#).unwrap(),
            Request::Status
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"reboot"}"#).is_err());
        // A misspelt key is refused, not taken for an empty payload.
        assert!(
            serde_json::from_str::<Request>(
                r#"{"op":"call","device":"d","method":"m","paylaod":{"speed":1}}"#
            )
            .is_err()
        );
        let line = Response::not_found("device", "metr-1", Some("meter-1")).to_line();
        assert!(line.ends_with(b"\n"));
        let back: Response = serde_json::from_slice(&line).unwrap();
        assert_eq!(back.status, 404);
        assert_eq!(back.payload["error"], "unknown_device");
        assert!(
            back.payload["message"]
                .as_str()
                .unwrap()
                .contains("\"meter-1\"")
        );
    }
}

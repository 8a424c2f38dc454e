//! Why a bus job failed. Each variant maps to one method status in `mapping::status`.

use std::time::Duration;

/// A device refusing (an exception) is kept apart from a broken link, as tokio-modbus does.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The device answered with Modbus exception `code`.
    #[error("device answered with modbus exception {code} ({})", exception_name(*code))]
    Exception { code: u8 },
    /// No (complete) answer within the bus timeout or before the job's deadline; which of the
    /// two ran out is part of the error, because only the first says anything about the unit.
    #[error("{0}")]
    Timeout(Timeout),
    /// Too little of the job's deadline was left to send it (it waited in the queue, or an
    /// earlier step took the time); it was never sent.
    #[error("deadline too close to send the request; not executed")]
    Expired,
    /// The answer was unusable: bad CRC or MBAP header, wrong unit/function/transaction/length,
    /// reply not matching the request. The message says which, for the 502 and the log.
    #[error("unusable reply from the device: {0}")]
    Protocol(String),
    /// The transport could not be opened/connected, or broke during the transaction. `what`
    /// says what was being done; the OS error, when there is one, stays the `source` (shown by
    /// whoever prints the chain, never repeated by `Display`).
    #[error("bus unavailable: {what}")]
    Unavailable {
        what: Box<str>,
        #[source]
        source: Option<std::io::Error>,
    },
    /// The bus queue is full.
    #[error("bus queue is full ({0} jobs waiting)")]
    QueueFull(usize),
    /// The work queued ahead would outlast the job's deadline (estimated from how long recent
    /// jobs took), so it is refused at once instead of timing out at the back of the queue.
    #[error(
        "bus is busy: about {wait_ms} ms of queued work ahead, {left_ms} ms left before the method's deadline"
    )]
    Busy { wait_ms: u64, left_ms: u64 },
    /// leafgate is stopping or the bus is being restarted.
    #[error("bus is shutting down")]
    ShuttingDown,
}

impl Error {
    /// The transport is unavailable for a reason that has no OS error behind it.
    #[must_use]
    pub fn unavailable(what: impl Into<Box<str>>) -> Error {
        Error::Unavailable {
            what: what.into(),
            source: None,
        }
    }

    /// The transport failed while doing `what`, with the OS error kept as the source.
    #[must_use]
    pub fn transport(what: impl Into<Box<str>>, source: std::io::Error) -> Error {
        Error::Unavailable {
            what: what.into(),
            source: Some(source),
        }
    }

    /// What went wrong, with its cause, without the "bus unavailable" the variant adds: a
    /// reason kept to be wrapped again later (`Unavailable` for jobs arriving while the link is
    /// down) must not carry the prefix twice.
    #[must_use]
    pub fn reason(&self) -> String {
        match self {
            Error::Unavailable {
                what,
                source: Some(source),
            } => format!("{what}: {source}"),
            Error::Unavailable { what, source: None } => what.to_string(),
            other => other.to_string(),
        }
    }
}

/// A wait for an answer that ran out: whom the bus asked and which limit ended the wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout {
    /// The Modbus unit asked; `None` on a raw serial line, whose device has no unit id.
    pub unit: Option<u8>,
    pub limit: Limit,
}

/// Which limit ended a wait for an answer, with its length in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The bus's `timeout_ms` ran out in full: the unit is silent or too slow. Counts towards
    /// marking the unit down.
    Bus { ms: u64 },
    /// The method's deadline came first, after `ms` of waiting (the job waited in the queue, or
    /// an earlier step took the time). Says nothing about the unit.
    Deadline { ms: u64 },
}

impl Timeout {
    /// Milliseconds of a duration, saturating (for limits and messages).
    #[must_use]
    pub fn ms(d: Duration) -> u64 {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    }
}

impl std::fmt::Display for Timeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.unit {
            Some(unit) => write!(f, "no answer from unit {unit} ")?,
            None => f.write_str("no answer from the device ")?,
        }
        match self.limit {
            Limit::Bus { ms } => write!(f, "within the bus timeout of {ms} ms"),
            Limit::Deadline { ms } => {
                write!(f, "within the {ms} ms left before the method's deadline")
            }
        }
    }
}

/// The name Modbus gives each exception code, for replies and logs.
#[must_use]
pub fn exception_name(code: u8) -> &'static str {
    match code {
        1 => "illegal function",
        2 => "illegal data address",
        3 => "illegal data value",
        4 => "server device failure",
        5 => "acknowledge",
        6 => "server device busy",
        8 => "memory parity error",
        10 => "gateway path unavailable",
        11 => "gateway target device failed to respond",
        _ => "unknown exception",
    }
}

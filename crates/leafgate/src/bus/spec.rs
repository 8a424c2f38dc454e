//! What a bus is: its kind, its link (address or serial line) and framing, and the settings its
//! actor runs with. The field side owns this vocabulary; `config` deserialises and validates into
//! it, so the bus layer never needs to know about the config file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// The kinds of bus the config file can name (`kind = "modbus_tcp"` …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BusKind {
    ModbusTcp,
    ModbusRtu,
    Serial,
}

impl BusKind {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            BusKind::ModbusTcp => "modbus_tcp",
            BusKind::ModbusRtu => "modbus_rtu",
            BusKind::Serial => "serial",
        }
    }

    #[must_use]
    pub fn is_modbus(self) -> bool {
        matches!(self, BusKind::ModbusTcp | BusKind::ModbusRtu)
    }
}

/// How Modbus frames travel on a TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TcpFraming {
    /// Modbus TCP: MBAP header, no CRC.
    #[default]
    Mbap,
    /// RTU frames (unit, PDU, CRC) tunnelled over TCP, as serial-to-Ethernet converters do.
    Rtu,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Parity {
    #[default]
    None,
    Even,
    Odd,
}

/// One validated bus: what the supervisor starts an actor for.
#[derive(Debug, Clone, PartialEq)]
pub struct Bus {
    pub id: String,
    pub spec: BusSpec,
    /// Per-transaction timeout (one request/response exchange).
    pub timeout: Duration,
    pub queue_capacity: usize,
    /// Extra attempts after an unusable (garbled) reply.
    pub retries: u32,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Consecutive timeouts after which a unit is marked down (0: never).
    pub down_after: u32,
    /// How long a unit marked down is answered 503 without being asked.
    pub down_for: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub enum BusSpec {
    ModbusTcp {
        address: String,
        framing: TcpFraming,
    },
    ModbusRtu {
        line: Line,
        frame_gap: Duration,
    },
    Serial {
        line: Line,
        framing: SerialFraming,
        /// Written after each text request that does not already end with it.
        line_ending: Option<Vec<u8>>,
    },
}

impl BusSpec {
    #[must_use]
    pub fn kind(&self) -> BusKind {
        match self {
            BusSpec::ModbusTcp { .. } => BusKind::ModbusTcp,
            BusSpec::ModbusRtu { .. } => BusKind::ModbusRtu,
            BusSpec::Serial { .. } => BusKind::Serial,
        }
    }
}

impl Bus {
    /// The serial device this bus owns, if any.
    #[must_use]
    pub fn device_path(&self) -> Option<&Path> {
        match &self.spec {
            BusSpec::ModbusTcp { .. } => None,
            BusSpec::ModbusRtu { line, .. } | BusSpec::Serial { line, .. } => Some(&line.path),
        }
    }
}

/// A serial line and its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub path: PathBuf,
    pub baud_rate: u32,
    pub parity: Parity,
    pub data_bits: u8,
    pub stop_bits: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SerialFraming {
    /// A reply ends with these bytes (stripped from the reply).
    Terminator(Vec<u8>),
    /// A reply is exactly this many bytes.
    Length(usize),
    /// A reply ends when the line has been quiet this long.
    IdleGap(Duration),
}

impl Line {
    /// The Modbus RTU silent interval: 3.5 character times, fixed at 1.75 ms above 19200 baud
    /// (Modbus over serial line v1.02, 2.5.1.1).
    #[must_use]
    pub fn silent_interval(&self) -> Duration {
        if self.baud_rate > 19_200 {
            return Duration::from_micros(1750);
        }
        let bits_per_char = 1
            + u64::from(self.data_bits)
            + u64::from(self.stop_bits)
            + u64::from(self.parity != Parity::None);
        // Rounded up: a gap a fraction of a microsecond short of 3.5 characters is out of spec.
        Duration::from_micros(
            (bits_per_char * 3_500_000).div_ceil(u64::from(self.baud_rate.max(1))),
        )
    }
}

//! What a bus can be asked to do, and what comes back. Built by `mapping`, executed by a bus actor.

use serde::Deserialize;

/// The four Modbus data tables (`table = "holding"` in a method step).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Table {
    Holding,
    Input,
    Coil,
    Discrete,
}

impl Table {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Table::Holding => "holding",
            Table::Input => "input",
            Table::Coil => "coil",
            Table::Discrete => "discrete",
        }
    }

    #[must_use]
    pub fn is_bits(self) -> bool {
        matches!(self, Table::Coil | Table::Discrete)
    }

    #[must_use]
    pub fn is_writable(self) -> bool {
        matches!(self, Table::Holding | Table::Coil)
    }
}

/// One transaction on a bus. A method's operations run back to back as one unit of work: no other
/// job's frames go between them (a write and its read-back see the same device state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// FC 01 (coil), 02 (discrete), 03 (holding), 04 (input).
    Read {
        unit: u8,
        table: Table,
        address: u16,
        count: u16,
    },
    /// FC 06 (one register) or 16; FC 05 (one coil) or 15.
    Write {
        unit: u8,
        address: u16,
        data: WriteData,
    },
    /// A raw serial exchange: send `request`, then (unless `reply` is false) read one framed reply.
    /// A `text` request is a line: the bus's line ending follows it.
    Serial {
        request: Vec<u8>,
        reply: bool,
        text: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteData {
    Registers(Vec<u16>),
    Coils(Vec<bool>),
}

/// The result of one [`Op`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Registers(Vec<u16>),
    Bits(Vec<bool>),
    Written,
    Reply(Vec<u8>),
}

/// Modbus limits per request (Modbus Application Protocol v1.1b3, 6.1–6.12).
pub const MAX_READ_REGISTERS: u16 = 125;
pub const MAX_WRITE_REGISTERS: u16 = 123;
pub const MAX_READ_BITS: u16 = 2000;
pub const MAX_WRITE_BITS: u16 = 1968;

impl Op {
    /// The function code this operation uses on the wire, for logs.
    #[must_use]
    pub fn function_code(&self) -> Option<u8> {
        Some(match self {
            Op::Read { table, .. } => match table {
                Table::Coil => 1,
                Table::Discrete => 2,
                Table::Holding => 3,
                Table::Input => 4,
            },
            Op::Write {
                data: WriteData::Registers(r),
                ..
            } => {
                if r.len() == 1 {
                    6
                } else {
                    16
                }
            }
            Op::Write {
                data: WriteData::Coils(c),
                ..
            } => {
                if c.len() == 1 {
                    5
                } else {
                    15
                }
            }
            Op::Serial { .. } => return None,
        })
    }
}

//! Modbus request PDUs: decoding and executing them against a unit's data, as a conforming slave
//! does. No I/O, no faults: what a healthy device answers.
//!
//! Checks follow the order of the spec's state diagrams (Modbus Application Protocol v1.1b3,
//! section 6): function code (01), then quantity and byte count (03), then address range (02).
//! Quantity limits are the spec's: reads up to 2000 bits or 125 registers, writes up to 1968 coils
//! or 123 registers.

use super::Table;
use super::store::UnitData;

/// Exception code 01: the function code is not supported.
pub const ILLEGAL_FUNCTION: u8 = 0x01;
/// Exception code 02: an address in the request does not exist on the unit.
pub const ILLEGAL_DATA_ADDRESS: u8 = 0x02;
/// Exception code 03: a quantity, byte count or value in the request is malformed.
pub const ILLEGAL_DATA_VALUE: u8 = 0x03;
/// Exception code 0B: a gateway found no unit with this id behind it.
pub const GATEWAY_TARGET_FAILED: u8 = 0x0B;

/// A request as the log records it, plus what to do or why it is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Decoded {
    pub(crate) function: u8,
    /// First address, or 0 when the request has none (unknown or malformed function).
    pub(crate) address: u16,
    /// Number of coils or registers: 1 for single writes, 0 when the request has none.
    pub(crate) count: u16,
    pub(crate) op: Result<Op, u8>,
}

/// A well-formed request of a supported function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// Function codes 1, 2: read coils or discrete inputs.
    ReadBits { table: Table },
    /// Function codes 3, 4: read holding or input registers.
    ReadWords { table: Table },
    /// Function code 5.
    WriteCoil { value: bool },
    /// Function code 6.
    WriteRegister { value: u16 },
    /// Function code 15.
    WriteCoils { values: Vec<bool> },
    /// Function code 16.
    WriteRegisters { values: Vec<u16> },
}

impl Op {
    pub(crate) fn table(&self) -> Table {
        match self {
            Op::ReadBits { table } | Op::ReadWords { table } => *table,
            Op::WriteCoil { .. } | Op::WriteCoils { .. } => Table::Coils,
            Op::WriteRegister { .. } | Op::WriteRegisters { .. } => Table::HoldingRegisters,
        }
    }

    pub(crate) fn is_write(&self) -> bool {
        !matches!(self, Op::ReadBits { .. } | Op::ReadWords { .. })
    }
}

fn be16(pdu: &[u8], at: usize) -> u16 {
    match (pdu.get(at), pdu.get(at + 1)) {
        (Some(hi), Some(lo)) => u16::from_be_bytes([*hi, *lo]),
        _ => 0,
    }
}

/// Decodes a request PDU (function code first).
pub(crate) fn decode(pdu: &[u8]) -> Decoded {
    let function = pdu.first().copied().unwrap_or(0);
    let address = be16(pdu, 1);
    let word = be16(pdu, 3);
    let mut decoded = Decoded {
        function,
        address,
        count: word,
        op: Err(ILLEGAL_DATA_VALUE),
    };
    let fixed = pdu.len() == 5;
    decoded.op = match function {
        1 | 2 if fixed && (1..=2000).contains(&word) => Ok(Op::ReadBits {
            table: if function == 1 {
                Table::Coils
            } else {
                Table::DiscreteInputs
            },
        }),
        3 | 4 if fixed && (1..=125).contains(&word) => Ok(Op::ReadWords {
            table: if function == 3 {
                Table::HoldingRegisters
            } else {
                Table::InputRegisters
            },
        }),
        1..=4 => Err(ILLEGAL_DATA_VALUE),
        5 => {
            decoded.count = 1;
            match word {
                0xFF00 if fixed => Ok(Op::WriteCoil { value: true }),
                0x0000 if fixed => Ok(Op::WriteCoil { value: false }),
                _ => Err(ILLEGAL_DATA_VALUE),
            }
        }
        6 => {
            decoded.count = 1;
            if fixed {
                Ok(Op::WriteRegister { value: word })
            } else {
                Err(ILLEGAL_DATA_VALUE)
            }
        }
        15 => decode_write_coils(pdu, word),
        16 => decode_write_registers(pdu, word),
        _ => {
            decoded.address = 0;
            decoded.count = 0;
            Err(ILLEGAL_FUNCTION)
        }
    };
    decoded
}

fn decode_write_coils(pdu: &[u8], count: u16) -> Result<Op, u8> {
    let byte_count = usize::from(pdu.get(5).copied().unwrap_or(0));
    let data = pdu.get(6..).unwrap_or_default();
    if !(1..=1968).contains(&count)
        || byte_count != usize::from(count).div_ceil(8)
        || data.len() != byte_count
    {
        return Err(ILLEGAL_DATA_VALUE);
    }
    let values = (0..usize::from(count))
        .map(|i| data[i / 8] & (1 << (i % 8)) != 0)
        .collect();
    Ok(Op::WriteCoils { values })
}

fn decode_write_registers(pdu: &[u8], count: u16) -> Result<Op, u8> {
    let byte_count = usize::from(pdu.get(5).copied().unwrap_or(0));
    let data = pdu.get(6..).unwrap_or_default();
    if !(1..=123).contains(&count)
        || byte_count != 2 * usize::from(count)
        || data.len() != byte_count
    {
        return Err(ILLEGAL_DATA_VALUE);
    }
    let values = data
        .chunks_exact(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]))
        .collect();
    Ok(Op::WriteRegisters { values })
}

/// Executes `op` on `unit`, returning the response PDU, or the exception code when an address
/// does not exist.
pub(crate) fn execute(unit: &mut UnitData, decoded: &Decoded, op: &Op) -> Result<Vec<u8>, u8> {
    let (function, address, count) = (decoded.function, decoded.address, decoded.count);
    if !unit.covers(op.table(), address, count) {
        return Err(ILLEGAL_DATA_ADDRESS);
    }
    let mut response = vec![function];
    match op {
        Op::ReadBits { table } => {
            let bits = unit
                .bits(*table)
                .map(|space| space.read(address, count))
                .unwrap_or_default();
            let mut packed = vec![0u8; bits.len().div_ceil(8)];
            for (i, bit) in bits.iter().enumerate() {
                if *bit {
                    packed[i / 8] |= 1 << (i % 8);
                }
            }
            response.push(u8::try_from(packed.len()).map_err(|_| ILLEGAL_DATA_VALUE)?);
            response.extend(packed);
        }
        Op::ReadWords { table } => {
            let words = unit
                .words(*table)
                .map(|space| space.read(address, count))
                .unwrap_or_default();
            response.push(u8::try_from(2 * words.len()).map_err(|_| ILLEGAL_DATA_VALUE)?);
            response.extend(words.iter().flat_map(|w| w.to_be_bytes()));
        }
        Op::WriteCoil { value } => {
            unit.coils.write(address, &[*value]);
            response.extend(address.to_be_bytes());
            response.extend(if *value { [0xFF, 0x00] } else { [0x00, 0x00] });
        }
        Op::WriteRegister { value } => {
            unit.holding_registers.write(address, &[*value]);
            response.extend(address.to_be_bytes());
            response.extend(value.to_be_bytes());
        }
        Op::WriteCoils { values } => {
            unit.coils.write(address, values);
            response.extend(address.to_be_bytes());
            response.extend(count.to_be_bytes());
        }
        Op::WriteRegisters { values } => {
            unit.holding_registers.write(address, values);
            response.extend(address.to_be_bytes());
            response.extend(count.to_be_bytes());
        }
    }
    Ok(response)
}

/// The exception response PDU for `function`.
pub(crate) fn exception(function: u8, code: u8) -> Vec<u8> {
    vec![function | 0x80, code]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(unit: &mut UnitData, pdu: &[u8]) -> Vec<u8> {
        let decoded = decode(pdu);
        match &decoded.op {
            Ok(op) => {
                execute(unit, &decoded, op).unwrap_or_else(|code| exception(decoded.function, code))
            }
            Err(code) => exception(decoded.function, *code),
        }
    }

    #[test]
    fn requests_get_the_responses_and_exceptions_the_spec_gives() {
        let mut unit = UnitData::default();
        unit.holding_registers.write(0, &[0x1234, 0xABCD]);
        unit.coils.write(0, &[true, false, true]);
        unit.input_registers.write(7, &[7]);
        unit.set_mapped(Table::DiscreteInputs, Some(vec![0..=9]));

        #[rustfmt::skip]
        let cases: &[(&str, &[u8], &[u8])] = &[
            ("read holding", &[3, 0, 0, 0, 2], &[3, 4, 0x12, 0x34, 0xAB, 0xCD]),
            ("read input", &[4, 0, 7, 0, 1], &[4, 2, 0, 7]),
            ("read coils", &[1, 0, 0, 0, 3], &[1, 1, 0b101]),
            ("read 9 coils spans 2 bytes", &[1, 0, 0, 0, 9], &[1, 2, 0b101, 0]),
            ("read discrete in map", &[2, 0, 0, 0, 10], &[2, 2, 0, 0]),
            ("read discrete past map", &[2, 0, 5, 0, 6], &[0x82, 2]),
            ("write coil on", &[5, 0, 9, 0xFF, 0], &[5, 0, 9, 0xFF, 0]),
            ("write coil bad value", &[5, 0, 9, 0x12, 0x34], &[0x85, 3]),
            ("write register", &[6, 0, 1, 0xBE, 0xEF], &[6, 0, 1, 0xBE, 0xEF]),
            ("write coils", &[15, 0, 20, 0, 10, 2, 0xFF, 0x03], &[15, 0, 20, 0, 10]),
            ("write coils byte count wrong", &[15, 0, 20, 0, 10, 1, 0xFF], &[0x8F, 3]),
            ("write registers", &[16, 0, 2, 0, 2, 4, 0, 1, 0, 2], &[16, 0, 2, 0, 2]),
            ("write registers byte count wrong", &[16, 0, 2, 0, 2, 3, 0, 1, 0], &[0x90, 3]),
            ("read 0 registers", &[3, 0, 0, 0, 0], &[0x83, 3]),
            ("read 126 registers", &[3, 0, 0, 0, 126], &[0x83, 3]),
            ("read 125 registers", &[4, 0, 0, 0, 125], &{
                let mut r = vec![4, 250];
                r.extend([0; 250]);
                r[2 + 15] = 7;
                r
            }),
            ("read 2001 coils", &[1, 0, 0, 0x07, 0xD1], &[0x81, 3]),
            ("write 124 registers", &[16, 0, 0, 0, 124, 248], &[0x90, 3]),
            ("read past 0xFFFF", &[3, 0xFF, 0xFF, 0, 2], &[0x83, 2]),
            ("unsupported function", &[0x2B, 0x0E, 1, 0], &[0xAB, 1]),
            ("diagnostics unsupported", &[8, 0, 0, 0, 0], &[0x88, 1]),
            ("read with extra bytes", &[3, 0, 0, 0, 1, 0], &[0x83, 3]),
        ];
        for (name, request, expected) in cases {
            assert_eq!(run(&mut unit, request), *expected, "{name}");
        }
        assert_eq!(unit.holding_registers.read(1, 3), vec![0xBEEF, 1, 2]);
        assert_eq!(
            unit.coils.read(20, 10),
            [true; 8]
                .into_iter()
                .chain([true, true])
                .collect::<Vec<_>>()
        );
        assert_eq!(unit.coils.read(9, 1), vec![true]);
    }

    #[test]
    fn decode_records_address_and_count_for_the_log() {
        let d = decode(&[16, 0x01, 0x00, 0, 2, 4, 0, 1, 0, 2]);
        assert_eq!((d.function, d.address, d.count), (16, 0x100, 2));
        let d = decode(&[6, 0, 9, 0, 1]);
        assert_eq!((d.function, d.address, d.count), (6, 9, 1));
        let d = decode(&[0x11]);
        assert_eq!((d.function, d.address, d.count, d.op), (0x11, 0, 0, Err(1)));
    }
}

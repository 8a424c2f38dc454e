//! Modbus RTU frames: request encoding, reply length prediction, reply decoding with CRC check;
//! and the PDU encoding and checks that Modbus TCP shares, so both framings refuse the same
//! replies. Pure functions; `modbus_rtu` and `modbus_tcp` do the I/O.
//!
//! Written by hand rather than through tokio-modbus's RTU client because a shared RS-485 line
//! needs what that client does not do: know a reply's exact length up front (so we stop reading
//! at the frame's end and keep the 3.5-character gap), check the unit id and function code of
//! every reply, and resynchronise after noise or a late reply.

use super::Error;
use super::op::{Op, Output, WriteData};

/// CRC-16/MODBUS: poly 0xA001 (reflected 0x8005), init 0xFFFF; sent low byte first.
#[must_use]
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for byte in data {
        crc ^= u16::from(*byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xA001
            } else {
                crc >> 1
            };
        }
    }
    crc
}

/// The request PDU (function code and data) for a Modbus operation.
///
/// # Errors
/// `Protocol` for a serial operation, which has no PDU.
pub fn request_pdu(op: &Op) -> Result<Vec<u8>, Error> {
    let fc = op
        .function_code()
        .ok_or_else(|| Error::Protocol("not a modbus operation".to_owned()))?;
    let mut pdu = vec![fc];
    match op {
        Op::Read { address, count, .. } => {
            pdu.extend(address.to_be_bytes());
            pdu.extend(count.to_be_bytes());
        }
        Op::Write { address, data, .. } => {
            pdu.extend(address.to_be_bytes());
            match data {
                WriteData::Registers(regs) if regs.len() == 1 => pdu.extend(regs[0].to_be_bytes()),
                WriteData::Coils(bits) if bits.len() == 1 => {
                    pdu.extend(if bits[0] { [0xFF, 0x00] } else { [0x00, 0x00] });
                }
                WriteData::Registers(regs) => {
                    let n = u16::try_from(regs.len()).map_err(|_| too_long())?;
                    pdu.extend(n.to_be_bytes());
                    pdu.push(u8::try_from(regs.len() * 2).map_err(|_| too_long())?);
                    for r in regs {
                        pdu.extend(r.to_be_bytes());
                    }
                }
                WriteData::Coils(bits) => {
                    let n = u16::try_from(bits.len()).map_err(|_| too_long())?;
                    pdu.extend(n.to_be_bytes());
                    let packed = pack_bits(bits);
                    pdu.push(u8::try_from(packed.len()).map_err(|_| too_long())?);
                    pdu.extend(packed);
                }
            }
        }
        Op::Serial { .. } => unreachable_serial()?,
    }
    Ok(pdu)
}

fn unreachable_serial() -> Result<(), Error> {
    Err(Error::Protocol("not a modbus operation".to_owned()))
}

fn too_long() -> Error {
    Error::Protocol("request too long for one frame".to_owned())
}

fn pack_bits(bits: &[bool]) -> Vec<u8> {
    bits.chunks(8)
        .map(|chunk| {
            chunk
                .iter()
                .enumerate()
                .fold(0u8, |acc, (i, b)| acc | (u8::from(*b) << i))
        })
        .collect()
}

/// A full RTU request: unit, PDU, CRC.
///
/// # Errors
/// As [`request_pdu`].
pub fn encode_request(unit: u8, op: &Op) -> Result<Vec<u8>, Error> {
    let mut adu = vec![unit];
    adu.extend(request_pdu(op)?);
    let crc = crc16(&adu);
    adu.extend(crc.to_le_bytes());
    Ok(adu)
}

/// The total RTU reply length, known once the first three bytes (unit, function, and byte
/// count or first data byte) are in. `None` if the function code is not the one we asked for.
#[must_use]
pub fn reply_len(op: &Op, head: [u8; 3]) -> Option<usize> {
    let fc = op.function_code()?;
    let [_, got_fc, third] = head;
    if got_fc == fc | 0x80 {
        return Some(5); // unit, fc|0x80, exception code, crc
    }
    if got_fc != fc {
        return None;
    }
    Some(match fc {
        1..=4 => 3 + usize::from(third) + 2,
        _ => 8, // 5, 6, 15, 16 echo address and value/count
    })
}

/// Decodes a complete RTU reply to `op` sent to `unit`.
///
/// # Errors
/// `Exception` for an exception reply; `Protocol` for a bad CRC, another unit or function, or a
/// reply whose size or echo does not match the request.
pub fn decode_reply(unit: u8, op: &Op, adu: &[u8]) -> Result<Output, Error> {
    if adu.len() < 5 {
        return Err(Error::Protocol(format!(
            "reply of {} bytes is too short",
            adu.len()
        )));
    }
    let (body, crc) = adu.split_at(adu.len() - 2);
    if crc16(body).to_le_bytes() != [crc[0], crc[1]] {
        return Err(Error::Protocol("reply has a bad CRC".to_owned()));
    }
    if body[0] != unit {
        return Err(Error::Protocol(format!(
            "reply from unit {} while waiting for unit {unit}",
            body[0]
        )));
    }
    decode_pdu(op, &body[1..])
}

/// Decodes a reply PDU (function code first) to `op`.
///
/// # Errors
/// As [`decode_reply`], minus the CRC and unit checks.
pub fn decode_pdu(op: &Op, pdu: &[u8]) -> Result<Output, Error> {
    let fc = op
        .function_code()
        .ok_or_else(|| Error::Protocol("not a modbus operation".to_owned()))?;
    let (&got_fc, data) = pdu
        .split_first()
        .ok_or_else(|| Error::Protocol("empty reply".to_owned()))?;
    if got_fc == fc | 0x80 {
        let code = data
            .first()
            .copied()
            .ok_or_else(|| Error::Protocol("exception reply without a code".to_owned()))?;
        return Err(Error::Exception { code });
    }
    if got_fc != fc {
        return Err(Error::Protocol(format!(
            "reply has function code {got_fc}, expected {fc}"
        )));
    }
    match op {
        Op::Read { count, .. } => {
            let (&n, bytes) = data
                .split_first()
                .ok_or_else(|| Error::Protocol("reply without byte count".to_owned()))?;
            if usize::from(n) != bytes.len() {
                return Err(Error::Protocol(format!(
                    "byte count {n} but {} bytes follow",
                    bytes.len()
                )));
            }
            let count = usize::from(*count);
            if matches!(fc, 1 | 2) {
                if bytes.len() != count.div_ceil(8) {
                    return Err(Error::Protocol(format!(
                        "{} bytes of bits for {count} bits",
                        bytes.len()
                    )));
                }
                let bits = (0..count)
                    .map(|i| bytes[i / 8] >> (i % 8) & 1 == 1)
                    .collect();
                Ok(Output::Bits(bits))
            } else {
                if bytes.len() != count * 2 {
                    return Err(Error::Protocol(format!(
                        "{} bytes for {count} registers",
                        bytes.len()
                    )));
                }
                Ok(Output::Registers(
                    bytes
                        .chunks_exact(2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .collect(),
                ))
            }
        }
        Op::Write { .. } => {
            // Every write reply echoes the request's first four data bytes: the address and the
            // value (FC 5, 6) or the quantity (FC 15, 16). A stale echo of an earlier write to
            // the same address with another value fails here.
            let request = request_pdu(op)?;
            let sent = request.get(1..5).unwrap_or_default();
            if data == sent {
                return Ok(Output::Written);
            }
            let what = if matches!(fc, 5 | 6) {
                "value"
            } else {
                "quantity"
            };
            let pair = |b: &[u8]| match b {
                [a0, a1, v0, v1] => format!(
                    "address {}, {what} {}",
                    u16::from_be_bytes([*a0, *a1]),
                    u16::from_be_bytes([*v0, *v1])
                ),
                _ => format!("{} bytes", b.len()),
            };
            Err(Error::Protocol(format!(
                "write reply echoes {} but the request was {}",
                pair(data),
                pair(sent)
            )))
        }
        Op::Serial { .. } => Err(Error::Protocol("not a modbus operation".to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::op::Table;

    #[test]
    fn crc_matches_the_spec_example() {
        // Read 10 holding registers from unit 1 at 0: 01 03 00 00 00 0A C5 CD.
        let op = Op::Read {
            unit: 1,
            table: Table::Holding,
            address: 0,
            count: 10,
        };
        assert_eq!(
            encode_request(1, &op).unwrap(),
            [0x01, 0x03, 0x00, 0x00, 0x00, 0x0A, 0xC5, 0xCD]
        );
    }

    fn with_crc(mut body: Vec<u8>) -> Vec<u8> {
        let crc = crc16(&body);
        body.extend(crc.to_le_bytes());
        body
    }

    #[test]
    fn decodes_register_bit_write_and_exception_replies() {
        let read = Op::Read {
            unit: 7,
            table: Table::Holding,
            address: 100,
            count: 2,
        };
        let reply = with_crc(vec![7, 3, 4, 0x12, 0x34, 0xAB, 0xCD]);
        assert_eq!(reply_len(&read, [7, 3, 4]), Some(reply.len()));
        assert_eq!(
            decode_reply(7, &read, &reply).unwrap(),
            Output::Registers(vec![0x1234, 0xABCD])
        );

        let coils = Op::Read {
            unit: 7,
            table: Table::Coil,
            address: 0,
            count: 10,
        };
        let reply = with_crc(vec![7, 1, 2, 0b0000_0101, 0b0000_0010]);
        let Output::Bits(bits) = decode_reply(7, &coils, &reply).unwrap() else {
            panic!()
        };
        assert_eq!(
            bits,
            [
                true, false, true, false, false, false, false, false, false, true
            ]
        );

        let write = Op::Write {
            unit: 7,
            address: 5,
            data: WriteData::Registers(vec![1, 2]),
        };
        assert_eq!(
            encode_request(7, &write).unwrap()[..7],
            [7, 16, 0, 5, 0, 2, 4]
        );
        assert_eq!(
            decode_reply(7, &write, &with_crc(vec![7, 16, 0, 5, 0, 2])).unwrap(),
            Output::Written
        );
        assert!(matches!(
            decode_reply(7, &write, &with_crc(vec![7, 16, 0, 6, 0, 2])),
            Err(Error::Protocol(_))
        ));
        // A single-register write's echo carries the value: a stale echo of another value fails.
        let single = Op::Write {
            unit: 7,
            address: 5,
            data: WriteData::Registers(vec![0x0102]),
        };
        assert_eq!(
            decode_reply(7, &single, &with_crc(vec![7, 6, 0, 5, 1, 2])).unwrap(),
            Output::Written
        );
        assert!(matches!(
            decode_reply(7, &single, &with_crc(vec![7, 6, 0, 5, 1, 3])),
            Err(Error::Protocol(_))
        ));

        let exc = with_crc(vec![7, 0x83, 2]);
        assert_eq!(reply_len(&read, [7, 0x83, 2]), Some(5));
        assert!(matches!(
            decode_reply(7, &read, &exc),
            Err(Error::Exception { code: 2 })
        ));
    }

    #[test]
    fn refuses_bad_crc_other_units_and_wrong_lengths() {
        let read = Op::Read {
            unit: 7,
            table: Table::Input,
            address: 0,
            count: 1,
        };
        let mut bad = with_crc(vec![7, 4, 2, 0, 1]);
        bad[3] ^= 0xFF;
        assert!(
            matches!(decode_reply(7, &read, &bad), Err(Error::Protocol(m)) if m.contains("CRC"))
        );
        assert!(matches!(
            decode_reply(7, &read, &with_crc(vec![8, 4, 2, 0, 1])),
            Err(Error::Protocol(_))
        ));
        assert!(matches!(
            decode_reply(7, &read, &with_crc(vec![7, 4, 4, 0, 1, 0, 2])),
            Err(Error::Protocol(_))
        ));
        assert_eq!(reply_len(&read, [7, 3, 2]), None);
        assert!(matches!(
            decode_reply(7, &read, &[7, 4]),
            Err(Error::Protocol(_))
        ));
    }

    #[test]
    fn single_writes_use_fc5_and_fc6() {
        let coil = Op::Write {
            unit: 1,
            address: 3,
            data: WriteData::Coils(vec![true]),
        };
        assert_eq!(
            encode_request(1, &coil).unwrap()[..6],
            [1, 5, 0, 3, 0xFF, 0]
        );
        let reg = Op::Write {
            unit: 1,
            address: 3,
            data: WriteData::Registers(vec![0x0102]),
        };
        assert_eq!(encode_request(1, &reg).unwrap()[..6], [1, 6, 0, 3, 1, 2]);
        let coils = Op::Write {
            unit: 1,
            address: 0,
            data: WriteData::Coils(vec![true, false, true]),
        };
        assert_eq!(
            encode_request(1, &coils).unwrap()[..8],
            [1, 15, 0, 0, 0, 3, 1, 0b101]
        );
    }
}

//! CRC-16/MODBUS, the checksum closing every RTU frame, and the frame it closes ([`frame`], used
//! by the RTU slave and by faults that garble replies, so neither imports the other).
//!
//! Deliberately not shared with `bus::frame::crc16`: a simulator that reused the gateway's code
//! would agree with the gateway's bugs.

/// CRC-16/MODBUS of `data`: reflected polynomial 0xA001, initial value 0xFFFF. On the wire it goes
/// low byte first, so append `crc16(data).to_le_bytes()`.
#[must_use]
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0xFFFF;
    for &byte in data {
        crc ^= u16::from(byte);
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

/// `unit, pdu, CRC`.
pub(crate) fn frame(unit: u8, pdu: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(pdu.len() + 3);
    frame.push(unit);
    frame.extend_from_slice(pdu);
    frame.extend(crc16(&frame).to_le_bytes());
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors_match_the_modbus_spec_and_crc_catalogue() {
        // Read 10 holding registers from unit 1: the frame ends in C5 CD.
        assert_eq!(
            crc16(&[0x01, 0x03, 0x00, 0x00, 0x00, 0x0A]).to_le_bytes(),
            [0xC5, 0xCD]
        );
        // The catalogue check value for CRC-16/MODBUS.
        assert_eq!(crc16(b"123456789"), 0x4B37);
        assert_eq!(crc16(&[]), 0xFFFF);
    }
}

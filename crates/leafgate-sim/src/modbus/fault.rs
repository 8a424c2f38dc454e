//! Faults a simulated unit can be told to show, switchable while it runs.

use std::mem::discriminant;
use std::time::Duration;

use super::Table;
use super::pdu::Decoded;

/// Misbehaviour of one unit. Arm it with [`Registers::set_fault`](super::Registers::set_fault)
/// (until cleared) or [`Registers::set_fault_times`](super::Registers::set_fault_times) (for the
/// next N requests it applies to). Faults of different kinds combine: a delayed, garbled
/// exception is possible; `Silent` overrides the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The unit hears the request (it is logged) but neither executes nor answers it, like a
    /// hung device. The gateway sees a timeout.
    Silent,
    /// The unit executes the request at once but answers only after this delay, so the reply can
    /// arrive after the gateway has given up and sent its next request.
    Delay(Duration),
    /// Every request is refused with this exception code, without being executed.
    Exception(u8),
    /// Requests touching `address` in `table` are refused with `code`, without being executed.
    ExceptionAt {
        /// The address space of the address.
        table: Table,
        /// The address that triggers the exception when inside a request's range.
        address: u16,
        /// Exception code, e.g. 4 (server device failure).
        code: u8,
    },
    /// The request is executed, but the reply arrives damaged.
    Garbage(Garbage),
}

/// How a reply gets damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Garbage {
    /// RTU: the CRC is wrong. Modbus TCP frames carry no CRC, so over TCP the MBAP protocol
    /// identifier is set to 0xFFFF instead, which a client must reject just the same.
    BadCrc,
    /// The last three bytes of the frame are never sent.
    Truncated,
    /// These bytes precede the (intact) frame.
    NoiseBefore(Vec<u8>),
    /// These bytes follow the (intact) frame, in the same write.
    NoiseAfter(Vec<u8>),
    /// These bytes are sent instead of the frame.
    Noise(Vec<u8>),
    /// A well-formed frame (right unit, transaction id, MBAP length or CRC) that carries this
    /// PDU instead of the real answer: a wrong register count, a write echo naming another
    /// address or quantity, a byte count that disagrees with the data, an unknown function code.
    Pdu(Vec<u8>),
    /// A well-formed frame that names this unit instead of the one asked.
    Unit(u8),
    /// Modbus TCP: the transaction id is one more than the request's, as in a reply to another
    /// request. RTU frames carry none and are sent intact.
    TransactionId,
    /// Modbus TCP: the MBAP length field says this instead of the true length; the rest of the
    /// frame is sent as is. RTU frames carry none and are sent intact.
    MbapLength(u16),
}

impl Garbage {
    /// `len` random bytes, for [`Garbage::NoiseBefore`] or [`Garbage::Noise`]. Tests that need a
    /// deterministic outcome should spell the bytes out instead: random noise can look like the
    /// start of a long frame and make a client wait for the rest.
    #[must_use]
    pub fn random_bytes(len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        rand::fill(&mut bytes[..]);
        bytes
    }

    /// Damages a complete frame (RTU with CRC, or MBAP with header).
    pub(crate) fn apply(&self, mut frame: Vec<u8>, rtu: bool) -> Vec<u8> {
        match self {
            Garbage::BadCrc if rtu => {
                let n = frame.len();
                for byte in frame.iter_mut().skip(n.saturating_sub(2)) {
                    *byte ^= 0xFF;
                }
                frame
            }
            Garbage::BadCrc => {
                if let Some(protocol) = frame.get_mut(2..4) {
                    protocol.copy_from_slice(&[0xFF, 0xFF]);
                }
                frame
            }
            Garbage::Truncated => {
                frame.truncate(frame.len().saturating_sub(3).max(1));
                frame
            }
            Garbage::NoiseBefore(noise) => {
                let mut out = noise.clone();
                out.extend(frame);
                out
            }
            Garbage::NoiseAfter(noise) => {
                frame.extend(noise);
                frame
            }
            Garbage::Noise(noise) => noise.clone(),
            Garbage::Pdu(pdu) if rtu => super::crc::frame(frame.first().copied().unwrap_or(0), pdu),
            Garbage::Pdu(pdu) => {
                let mut out = frame.get(..4).unwrap_or_default().to_vec();
                out.extend(u16::try_from(pdu.len() + 1).unwrap_or(0).to_be_bytes());
                out.push(frame.get(6).copied().unwrap_or(0));
                out.extend(pdu);
                out
            }
            Garbage::Unit(unit) if rtu => {
                let pdu = frame
                    .get(1..frame.len().saturating_sub(2))
                    .unwrap_or_default();
                super::crc::frame(*unit, pdu)
            }
            Garbage::Unit(unit) => {
                if let Some(byte) = frame.get_mut(6) {
                    *byte = *unit;
                }
                frame
            }
            Garbage::TransactionId | Garbage::MbapLength(_) if rtu => frame,
            Garbage::TransactionId => {
                if let Some(id) = frame.get_mut(0..2) {
                    let next = u16::from_be_bytes([id[0], id[1]]).wrapping_add(1);
                    id.copy_from_slice(&next.to_be_bytes());
                }
                frame
            }
            Garbage::MbapLength(len) => {
                if let Some(field) = frame.get_mut(4..6) {
                    field.copy_from_slice(&len.to_be_bytes());
                }
                frame
            }
        }
    }
}

impl Fault {
    /// Whether arming `other` replaces `self`: one fault per kind, one per exception address.
    pub(crate) fn same_slot(&self, other: &Fault) -> bool {
        match (self, other) {
            (
                Fault::ExceptionAt { table, address, .. },
                Fault::ExceptionAt {
                    table: other_table,
                    address: other_address,
                    ..
                },
            ) => table == other_table && address == other_address,
            _ => discriminant(self) == discriminant(other),
        }
    }

    /// Whether the fault concerns this request (all do, except an address-bound exception on a
    /// request not touching its address).
    pub(crate) fn applies_to(&self, request: &Decoded) -> bool {
        match self {
            Fault::ExceptionAt { table, address, .. } => request.op.as_ref().is_ok_and(|op| {
                op.table() == *table
                    && u32::from(*address) >= u32::from(request.address)
                    && u32::from(*address) < u32::from(request.address) + u32::from(request.count)
            }),
            Fault::Silent | Fault::Delay(_) | Fault::Exception(_) | Fault::Garbage(_) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::pdu::decode;
    use super::*;

    #[test]
    fn an_address_bound_exception_applies_only_to_requests_covering_its_address() {
        let fault = Fault::ExceptionAt {
            table: Table::HoldingRegisters,
            address: 10,
            code: 4,
        };
        assert!(fault.applies_to(&decode(&[3, 0, 8, 0, 3])));
        assert!(!fault.applies_to(&decode(&[3, 0, 8, 0, 2])));
        assert!(!fault.applies_to(&decode(&[4, 0, 8, 0, 3])));
        assert!(fault.applies_to(&decode(&[6, 0, 10, 0, 1])));
    }

    #[test]
    fn garbage_damages_rtu_and_tcp_frames_as_documented() {
        let rtu = vec![1, 3, 2, 0, 0, 0xB8, 0x44];
        assert_eq!(
            Garbage::BadCrc.apply(rtu.clone(), true),
            [1, 3, 2, 0, 0, 0x47, 0xBB]
        );
        assert_eq!(Garbage::Truncated.apply(rtu.clone(), true), [1, 3, 2, 0]);
        assert_eq!(
            Garbage::NoiseBefore(vec![9]).apply(rtu.clone(), true)[..2],
            [9, 1]
        );
        assert_eq!(
            Garbage::Pdu(vec![3, 2, 0, 7]).apply(rtu.clone(), true),
            super::super::crc::frame(1, &[3, 2, 0, 7])
        );
        assert_eq!(
            Garbage::Unit(9).apply(rtu.clone(), true),
            super::super::crc::frame(9, &[3, 2, 0, 0])
        );
        assert_eq!(Garbage::TransactionId.apply(rtu.clone(), true), rtu);
        let tcp = vec![0, 1, 0, 0, 0, 3, 1, 0x83, 2];
        assert_eq!(
            Garbage::BadCrc.apply(tcp.clone(), false)[..4],
            [0, 1, 0xFF, 0xFF]
        );
        assert_eq!(
            Garbage::Pdu(vec![0x41, 0, 0]).apply(tcp.clone(), false),
            [0, 1, 0, 0, 0, 4, 1, 0x41, 0, 0]
        );
        assert_eq!(Garbage::Unit(9).apply(tcp.clone(), false)[6], 9);
        assert_eq!(
            Garbage::TransactionId.apply(tcp.clone(), false)[..2],
            [0, 2]
        );
        assert_eq!(
            Garbage::MbapLength(0).apply(tcp, false),
            [0, 1, 0, 0, 0, 0, 1, 0x83, 2]
        );
    }
}

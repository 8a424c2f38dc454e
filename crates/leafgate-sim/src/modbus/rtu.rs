//! Modbus RTU framing on the device side, for a pty line or RTU-over-TCP.
//!
//! A request is `unit, PDU, CRC` (CRC low byte first). Its length follows from the function code
//! (and the byte count for 15/16), so requests split across reads are reassembled without any
//! timing. A pty has no 3.5-character gaps to detect; instead, bytes that cannot start a valid
//! frame are skipped until one does (noise, a truncated request, another master's junk), and a
//! partial frame left alone for [`DISCARD_PARTIAL_AFTER`] is dropped, as a real slave drops it on
//! line silence. Only the addressed unit answers; broadcasts (unit 0) are never answered.

use std::io;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite};

use super::crc::{crc16, frame};
use super::registers::{Registers, Transport};
use crate::driver::{self, Next, Outgoing, Protocol};

/// The largest RTU frame the spec allows.
const MAX_FRAME: usize = 256;

/// How long an unfinished request may wait for its remaining bytes.
pub const DISCARD_PARTIAL_AFTER: Duration = Duration::from_millis(100);

/// What the start of a buffer holds.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Scan {
    /// A complete frame with a valid CRC at `start`, `len` bytes long; bytes before it are junk.
    Frame { start: usize, len: usize },
    /// No complete frame yet.
    Incomplete,
}

/// Looks for the first complete, CRC-valid request frame in `buf`.
pub(crate) fn scan_request(buf: &[u8]) -> Scan {
    for start in 0..buf.len() {
        if let Some(len) = frame_at(&buf[start..]) {
            return Scan::Frame { start, len };
        }
    }
    Scan::Incomplete
}

/// The length of a valid request frame starting at `buf[0]`, if there is one.
fn frame_at(buf: &[u8]) -> Option<usize> {
    let function = *buf.get(1)?;
    let len = match function {
        1..=6 => 8,
        15 | 16 => 9 + usize::from(*buf.get(6)?),
        // Unknown length: the shortest CRC-valid prefix, so we can still answer exception 01.
        _ => {
            return (4..=buf.len().min(MAX_FRAME)).find(|&len| crc_ok(&buf[..len]));
        }
    };
    (len <= buf.len() && crc_ok(&buf[..len])).then_some(len)
}

fn crc_ok(frame: &[u8]) -> bool {
    let (body, crc) = frame.split_at(frame.len() - 2);
    crc16(body).to_le_bytes() == crc
}

/// The RTU slave side of every unit in a [`Registers`].
pub(crate) struct Rtu {
    pub(crate) registers: Registers,
}

impl Protocol for Rtu {
    fn on_input(&mut self, input: &mut BytesMut, out: &mut Vec<Outgoing>) -> Next {
        while let Scan::Frame { start, len } = scan_request(input) {
            if start > 0 {
                log::debug!("sim: rtu skipped {start} bytes that start no frame");
            }
            input.advance(start);
            let request = input.split_to(len);
            let unit = request[0];
            if let Some(reply) = self
                .registers
                .handle(unit, &request[1..len - 2], Transport::Rtu)
            {
                let bytes = frame(unit, &reply.pdu);
                out.push(Outgoing {
                    delay: reply.delay,
                    bytes: match &reply.garbage {
                        Some(garbage) => garbage.apply(bytes, true),
                        None => bytes,
                    },
                });
            }
        }
        // A flood of junk never forms a frame: keep only what could still start one.
        if input.len() > 2 * MAX_FRAME {
            let excess = input.len() - MAX_FRAME;
            input.advance(excess);
        }
        Next::Continue
    }

    fn discard_partial_after(&self) -> Option<Duration> {
        Some(DISCARD_PARTIAL_AFTER)
    }
}

/// Serves every unit in `registers` as RTU slaves on `transport` (a [`Pty`](crate::pty::Pty)
/// master, a TCP stream for RTU-over-TCP, or an in-memory duplex) until it closes.
///
/// # Errors
/// When reading or writing the transport fails.
///
/// # Cancel safety
/// Dropping the future drops the transport and any late replies not yet sent.
pub async fn serve_rtu<T>(transport: T, registers: Registers) -> io::Result<()>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    driver::run(transport, Rtu { registers }).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_found_behind_noise_and_only_when_complete() {
        let request = frame(1, &[3, 0, 0, 0, 10]);
        assert_eq!(request, [1, 3, 0, 0, 0, 10, 0xC5, 0xCD]);
        assert_eq!(scan_request(&request[..5]), Scan::Incomplete);
        assert_eq!(scan_request(&request), Scan::Frame { start: 0, len: 8 });

        let mut noisy = vec![0xFF, 0x03, 0x10];
        noisy.extend(&request);
        assert_eq!(scan_request(&noisy), Scan::Frame { start: 3, len: 8 });

        let write = frame(2, &[16, 0, 0, 0, 2, 4, 0, 1, 0, 2]);
        assert_eq!(scan_request(&write[..10]), Scan::Incomplete);
        assert_eq!(scan_request(&write), Scan::Frame { start: 0, len: 13 });

        let unknown = frame(1, &[0x2B, 0x0E, 0x01, 0x00]);
        assert_eq!(scan_request(&unknown), Scan::Frame { start: 0, len: 7 });

        let mut bad_crc = request.clone();
        bad_crc[7] ^= 1;
        assert_eq!(scan_request(&bad_crc), Scan::Incomplete);
    }

    #[test]
    fn only_the_addressed_unit_answers_and_garbage_is_applied() {
        let registers = Registers::with_units([1, 2]);
        registers.set_holding(2, 0, &[5]);
        let mut rtu = Rtu {
            registers: registers.clone(),
        };
        let mut input = BytesMut::new();
        input.extend(frame(2, &[3, 0, 0, 0, 1]));
        input.extend(frame(0, &[6, 0, 1, 0, 9]));
        input.extend(&frame(1, &[3, 0, 0, 0, 1])[..4]);
        let mut out = Vec::new();
        assert_eq!(rtu.on_input(&mut input, &mut out), Next::Continue);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].bytes, frame(2, &[3, 2, 0, 5]));
        assert_eq!(
            input.len(),
            4,
            "the partial request stays for the next read"
        );
        assert_eq!(registers.holding(1, 1, 1), vec![9]);
    }
}

//! Serial ports shared by the Modbus RTU and raw serial links: opening with the configured line
//! settings, and draining stray input so the next exchange starts clean.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio_serial::{DataBits, Parity as SParity, SerialPortBuilderExt, SerialStream, StopBits};

use super::Error;
use crate::config::Line;
use crate::config::schema::Parity;

/// Opens a serial device as configured.
///
/// # Errors
/// `Unavailable` when the device cannot be opened (missing, busy, no permission).
pub fn open(line: &Line) -> Result<SerialStream, Error> {
    let path = line.path.to_string_lossy();
    let data_bits = match line.data_bits {
        5 => DataBits::Five,
        6 => DataBits::Six,
        7 => DataBits::Seven,
        _ => DataBits::Eight,
    };
    let parity = match line.parity {
        Parity::None => SParity::None,
        Parity::Even => SParity::Even,
        Parity::Odd => SParity::Odd,
    };
    let stop_bits = if line.stop_bits == 2 {
        StopBits::Two
    } else {
        StopBits::One
    };
    let port = tokio_serial::new(path.as_ref(), line.baud_rate)
        .data_bits(data_bits)
        .parity(parity)
        .stop_bits(stop_bits)
        .open_native_async()
        .map_err(|e| Error::Unavailable(format!("cannot open {path}: {e}")))?;
    // Bytes that arrived while the port was closed belong to nobody; a USB adapter drops them,
    // a pty or a kernel buffer may not.
    if let Err(e) = tokio_serial::SerialPort::clear(&port, tokio_serial::ClearBuffer::Input) {
        log::debug!("cannot clear input of {path}: {e}");
    }
    Ok(port)
}

/// Reads and discards input until the line has been quiet for `quiet`, or `limit` has passed.
/// Returns how many bytes were discarded.
///
/// # Errors
/// `Unavailable` when the port fails (unplugged adapter).
pub async fn drain<R: AsyncReadExt + Unpin>(
    port: &mut R,
    quiet: Duration,
    limit: Duration,
) -> Result<usize, Error> {
    let mut discarded = 0;
    let mut buf = [0u8; 256];
    let until = tokio::time::Instant::now() + limit;
    loop {
        let wait = quiet.min(until.saturating_duration_since(tokio::time::Instant::now()));
        if wait.is_zero() {
            return Ok(discarded);
        }
        match tokio::time::timeout(wait, port.read(&mut buf)).await {
            Err(_) => return Ok(discarded),
            Ok(Ok(0)) => return Err(Error::Unavailable("line closed".to_owned())),
            Ok(Ok(n)) => discarded += n,
            Ok(Err(e)) => return Err(Error::Unavailable(format!("read failed: {e}"))),
        }
    }
}

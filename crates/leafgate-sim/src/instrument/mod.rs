//! A simulated line-based serial instrument: a bench power supply answering one `\r\n`-terminated
//! command with one `\r\n`-terminated reply (see [`command`] for the command set).
//!
//! Like the Modbus model, [`Psu`] is shared state the test observes and steers (settings, faults,
//! a log of the commands received); [`serve_instrument`] speaks it on any transport, and
//! [`SerialLine::instrument`](crate::SerialLine::instrument) puts it on a pty.
//!
//! Lines may end in `\r\n` or a bare `\n`; blank lines are ignored as real instruments do. A line
//! longer than [`MAX_LINE`] bytes is answered `ERR line too long` and discarded. Not simulated:
//! SCPI long forms, command chaining with `;`, an error queue.

pub mod command;

use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tokio::time::Instant;

pub use command::State;

use crate::armed::Armed;
use crate::driver::{self, Next, Outgoing, Protocol};

/// Longest command line accepted, terminator included.
pub const MAX_LINE: usize = 256;

/// Misbehaviour of the instrument, switchable while it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// The command is heard (logged) but neither executed nor answered.
    Silent,
    /// The command is executed at once but answered only after this delay.
    Delay(Duration),
    /// The command is executed, but these bytes are sent instead of the reply line.
    Garbage(Vec<u8>),
}

impl Fault {
    /// A garbage reply: `len` random bytes and a `\r\n`, so a line reader gets a line that matches
    /// no expected reply.
    #[must_use]
    pub fn garbage_line(len: usize) -> Fault {
        let mut bytes = crate::modbus::Garbage::random_bytes(len);
        bytes.extend(b"\r\n");
        Fault::Garbage(bytes)
    }
}

/// One command line as the instrument received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// Position in the log, from 0.
    pub seq: usize,
    /// When the line was complete on the instrument side.
    pub at: Instant,
    /// The line without its terminator (invalid UTF-8 replaced).
    pub line: String,
    /// The reply line as the healthy instrument would give it; `None` when a silent fault
    /// swallowed the command.
    pub reply: Option<String>,
}

/// The power supply's shared state. Cloning is cheap and shares it.
#[derive(Clone)]
pub struct Psu {
    shared: Arc<Shared>,
}

struct Shared {
    inner: Mutex<Inner>,
    received: watch::Sender<usize>,
}

#[derive(Default)]
struct Inner {
    state: State,
    faults: Armed<Fault>,
    log: Vec<Command>,
}

impl Default for Psu {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Psu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("Psu")
            .field("state", &inner.state)
            .field("commands", &inner.log.len())
            .finish()
    }
}

fn same_kind(a: &Fault, b: &Fault) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

impl Psu {
    /// A supply in its power-on state.
    #[must_use]
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                inner: Mutex::new(Inner::default()),
                received: watch::Sender::new(0),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.shared
            .inner
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The current settings.
    #[must_use]
    pub fn state(&self) -> State {
        self.lock().state
    }

    /// Overwrites the settings, e.g. to start a test from a known output state.
    pub fn set_state(&self, state: State) {
        self.lock().state = state;
    }

    /// Arms `fault` until cleared, replacing one of the same kind.
    pub fn set_fault(&self, fault: Fault) {
        self.lock().faults.arm(fault, None, same_kind);
    }

    /// Arms `fault` for the next `times` commands.
    pub fn set_fault_times(&self, fault: Fault, times: u32) {
        self.lock().faults.arm(fault, Some(times), same_kind);
    }

    /// Disarms every fault.
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// Every command received so far, in order.
    #[must_use]
    pub fn commands(&self) -> Vec<Command> {
        self.lock().log.clone()
    }

    /// Waits until at least `n` commands have been received in total, then returns the log.
    ///
    /// # Cancel safety
    /// Cancel safe: nothing is consumed.
    pub async fn wait_commands(&self, n: usize) -> Vec<Command> {
        let mut received = self.shared.received.subscribe();
        // The sender lives in `self.shared`, so it cannot be dropped while we wait.
        let _ = received.wait_for(|count| *count >= n).await;
        self.commands()
    }

    /// Handles one line: logs it, applies faults, executes it; returns what to send and when.
    fn handle(&self, line: String) -> Option<Outgoing> {
        let mut inner = self.lock();
        let silent = inner.faults.any(|f| *f == Fault::Silent);
        let fired = inner.faults.fire(|f| !silent || *f == Fault::Silent);
        let reply = (!silent).then(|| command::execute(&mut inner.state, &line));
        let seq = inner.log.len();
        inner.log.push(Command {
            seq,
            at: Instant::now(),
            line,
            reply: reply.clone(),
        });
        drop(inner);
        self.shared.received.send_modify(|count| *count += 1);

        let mut outgoing = Outgoing {
            delay: Duration::ZERO,
            bytes: format!("{}\r\n", reply?).into_bytes(),
        };
        for fault in fired {
            match fault {
                Fault::Delay(delay) => outgoing.delay = delay,
                Fault::Garbage(bytes) => outgoing.bytes = bytes,
                Fault::Silent => {}
            }
        }
        Some(outgoing)
    }
}

/// The instrument's side of the line protocol.
struct Lines {
    psu: Psu,
    /// Inside an overlong line already refused: drop bytes up to its end.
    skipping: bool,
}

impl Lines {
    fn new(psu: Psu) -> Self {
        Self {
            psu,
            skipping: false,
        }
    }
}

const TOO_LONG: &[u8] = b"ERR line too long\r\n";

impl Protocol for Lines {
    fn on_input(&mut self, input: &mut BytesMut, out: &mut Vec<Outgoing>) -> Next {
        while let Some(end) = input.iter().position(|&b| b == b'\n') {
            let raw = input.split_to(end + 1);
            if std::mem::take(&mut self.skipping) {
                continue;
            }
            if raw.len() > MAX_LINE {
                out.push(Outgoing {
                    delay: Duration::ZERO,
                    bytes: TOO_LONG.to_vec(),
                });
                continue;
            }
            let line = String::from_utf8_lossy(&raw).trim().to_string();
            if !line.is_empty() {
                out.extend(self.psu.handle(line));
            }
        }
        if self.skipping {
            input.clear();
        } else if input.len() > MAX_LINE {
            // No terminator in sight: refuse the line now, drop the rest of it as it arrives.
            input.clear();
            self.skipping = true;
            out.push(Outgoing {
                delay: Duration::ZERO,
                bytes: TOO_LONG.to_vec(),
            });
        }
        Next::Continue
    }
}

/// Serves `psu` on `transport` until it closes.
///
/// # Errors
/// When reading or writing the transport fails.
///
/// # Cancel safety
/// Dropping the future drops the transport and any late replies not yet sent.
pub async fn serve_instrument<T>(transport: T, psu: Psu) -> io::Result<()>
where
    T: AsyncRead + AsyncWrite + Unpin,
{
    driver::run(transport, Lines::new(psu)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(lines: &mut Lines, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut input = BytesMut::from(bytes);
        let mut out = Vec::new();
        lines.on_input(&mut input, &mut out);
        out.into_iter().map(|o| o.bytes).collect()
    }

    #[test]
    fn lines_are_answered_in_order_and_faults_apply() {
        let psu = Psu::new();
        let mut lines = Lines::new(psu.clone());
        assert_eq!(
            feed(&mut lines, b"VOLT 3\r\nVOLT?\n\r\n"),
            [b"OK\r\n".to_vec(), b"VOLT 3.000\r\n".to_vec()]
        );
        psu.set_fault_times(Fault::Silent, 1);
        psu.set_fault(Fault::Garbage(b"\xff\xfe".to_vec()));
        assert!(feed(&mut lines, b"VOLT 4\r\n").is_empty());
        assert_eq!(
            psu.state().millivolts,
            3000,
            "a silent instrument executes nothing"
        );
        assert_eq!(feed(&mut lines, b"VOLT 5\r\n"), [b"\xff\xfe".to_vec()]);
        assert_eq!(psu.state().millivolts, 5000);
        let log: Vec<_> = psu
            .commands()
            .into_iter()
            .map(|c| (c.line, c.reply))
            .collect();
        assert_eq!(log[2], ("VOLT 4".to_string(), None));
        assert_eq!(log[3], ("VOLT 5".to_string(), Some("OK".to_string())));
    }

    #[test]
    fn an_overlong_line_is_refused_once() {
        let mut lines = Lines::new(Psu::new());
        let long = vec![b'A'; MAX_LINE + 10];
        assert_eq!(feed(&mut lines, &long), [TOO_LONG.to_vec()]);
        assert!(feed(&mut lines, b"AAAA\r\n").is_empty());
        assert_eq!(
            feed(&mut lines, b"VOLT?\r\n"),
            [b"VOLT 12.500\r\n".to_vec()]
        );
    }
}

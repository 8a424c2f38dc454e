//! A pseudo-terminal pair standing in for a USB serial adapter.
//!
//! The gateway opens the slave path (`/dev/pts/N`) with tokio-serial exactly as it would open
//! `/dev/ttyUSB0`; the simulated device reads and writes the master end, which is non-blocking and
//! driven by tokio's reactor through [`AsyncFd`] (no blocking threads).
//!
//! What this module leaves to others: the protocols spoken on the line (`sim::modbus`,
//! `sim::instrument`) and the plug/unplug life cycle with a running device (`sim::line`).
//!
//! How a pty differs from a real adapter, and what we do about it:
//! - When the last slave descriptor closes, Linux hangs up the master: reads return `EIO` until
//!   someone opens the slave again, and there is no event for "opened again". [`Pty`] therefore
//!   keeps a slave descriptor of its own ([`Slave`]) for as long as it lives, so the gateway can
//!   open, close and reopen the port at will. That descriptor is opened without `TIOCEXCL` and
//!   without `flock`, because serialport (under tokio-serial) opens ports with `TIOCEXCL` plus
//!   `flock(LOCK_EX | LOCK_NB)`: a lock held here would make every gateway open fail.
//! - Bytes written to the master while the gateway has the port closed stay queued in the slave's
//!   input buffer and are read after the next open (a real USB adapter drops them).
//!   [`Slave::discard_input`] empties that queue when a test wants adapter-like behaviour.
//! - `TIOCEXCL` is a flag on the tty, not on a descriptor. A real adapter's tty is freed on its
//!   last close, which clears the flag; a pty's tty lives as long as the master, so a gateway that
//!   dies without `TIOCNXCL` leaves the port exclusive and a non-root reopen fails with `EBUSY`
//!   (root bypasses the check). [`Slave::is_exclusive`] and [`Slave::clear_exclusive`] let tests
//!   see and undo that.

use std::ffi::{CStr, OsStr};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A pseudo-terminal: the async master end, plus the sim's own handle on the slave side.
///
/// Dropping it closes the master, which is what unplugging a USB adapter looks like to the
/// gateway: the slave path disappears and its open descriptor reads end-of-file and fails writes
/// with `EIO`.
#[derive(Debug)]
pub struct Pty {
    master: AsyncFd<OwnedFd>,
    slave: Slave,
}

/// The sim's own descriptor on the slave side of a [`Pty`], kept open so the master never sees a
/// hang-up when the gateway closes the port. Also the place to inspect what the gateway did to the
/// port. Cloning is cheap and shares the descriptor; it never reads, so it never steals bytes
/// meant for the gateway.
#[derive(Debug, Clone)]
pub struct Slave {
    fd: Arc<File>,
    path: PathBuf,
}

impl Pty {
    /// Opens a new pseudo-terminal with the slave in raw mode (as `cfmakeraw`, plus `CLOCAL` and
    /// `CREAD`, as serialport sets them), so bytes pass through unchanged before the gateway has
    /// configured the port.
    ///
    /// # Errors
    /// When no pseudo-terminal can be allocated, the slave cannot be opened or configured, or
    /// there is no tokio runtime (the master registers with its reactor).
    pub fn open() -> io::Result<Pty> {
        // SAFETY: posix_openpt takes only flags; the result is checked before use.
        let raw = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a freshly opened descriptor that nothing else owns.
        let master = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: both take a valid descriptor we own.
        check(unsafe { libc::grantpt(master.as_raw_fd()) })?;
        check(unsafe { libc::unlockpt(master.as_raw_fd()) })?;
        let path = slave_path(master.as_raw_fd())?;

        // std opens with O_CLOEXEC; O_NOCTTY keeps the port from becoming our controlling tty.
        let slave = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(&path)?;
        make_raw(slave.as_raw_fd())?;
        set_nonblocking(master.as_raw_fd())?;

        // Registering outside a runtime would panic; say so as an error instead.
        tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
        // SAFETY: the OwnedFd owns the descriptor for the AsyncFd's whole life and always returns
        // the same one from as_raw_fd.
        let master = unsafe { AsyncFd::register(master) }?;
        Ok(Pty {
            master,
            slave: Slave {
                fd: Arc::new(slave),
                path,
            },
        })
    }

    /// The slave path the gateway opens, e.g. `/dev/pts/7`.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.slave.path
    }

    /// The sim's handle on the slave side; it stays usable (but inert) after the pty is dropped.
    #[must_use]
    pub fn slave(&self) -> &Slave {
        &self.slave
    }

    /// Closes the master: the slave path disappears and the gateway's descriptor is hung up.
    /// The same as dropping the pty, spelled out for fault tests.
    pub fn unplug(self) {
        drop(self);
    }
}

impl Slave {
    /// The slave path, e.g. `/dev/pts/7`. After the pty is dropped the path no longer exists.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the tty is in exclusive mode (`TIOCGEXCL`): true while a gateway that opened it
    /// with tokio-serial's defaults holds it, and after such a gateway died without releasing it.
    ///
    /// # Errors
    /// When the pty was dropped or the kernel lacks `TIOCGEXCL` (Linux before 3.8).
    pub fn is_exclusive(&self) -> io::Result<bool> {
        let mut flag: libc::c_int = 0;
        // SAFETY: TIOCGEXCL writes one c_int through the pointer, which is valid for that.
        check(unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TIOCGEXCL, &mut flag) })?;
        Ok(flag != 0)
    }

    /// Clears exclusive mode (`TIOCNXCL`), as the kernel does when a real adapter's last
    /// descriptor closes: use it to simulate a replug after a gateway crash.
    ///
    /// # Errors
    /// When the pty was dropped.
    pub fn clear_exclusive(&self) -> io::Result<()> {
        // SAFETY: TIOCNXCL takes no argument.
        check(unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::TIOCNXCL) })
    }

    /// Drops bytes the device sent that the gateway has not read yet (`tcflush(TCIFLUSH)` on the
    /// slave), as a real adapter loses what arrives while the port is closed.
    ///
    /// # Errors
    /// When the pty was dropped.
    pub fn discard_input(&self) -> io::Result<()> {
        // SAFETY: plain call on a descriptor we own.
        check(unsafe { libc::tcflush(self.fd.as_raw_fd(), libc::TCIFLUSH) })
    }
}

impl AsyncRead for Pty {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.master.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let result = guard.try_io(|fd| {
                // SAFETY: `unfilled` is valid for writes of its length.
                let n = unsafe {
                    libc::read(fd.as_raw_fd(), unfilled.as_mut_ptr().cast(), unfilled.len())
                };
                usize::try_from(n).map_err(|_| io::Error::last_os_error())
            });
            match result {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => {}
            }
        }
    }
}

impl AsyncWrite for Pty {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.master.poll_write_ready(cx))?;
            let result = guard.try_io(|fd| {
                // SAFETY: `data` is valid for reads of its length.
                let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
                usize::try_from(n).map_err(|_| io::Error::last_os_error())
            });
            match result {
                Ok(done) => return Poll::Ready(done),
                Err(_would_block) => {}
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A write to the master lands in the slave's input queue at once; nothing is buffered.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // A serial line cannot be half-closed; closing is dropping the pty.
        Poll::Ready(Ok(()))
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn slave_path(master: RawFd) -> io::Result<PathBuf> {
    let mut name = [0 as libc::c_char; 128];
    // SAFETY: the buffer and its length match; ptsname_r NUL-terminates on success.
    let rc = unsafe { libc::ptsname_r(master, name.as_mut_ptr(), name.len()) };
    if rc != 0 {
        // ptsname_r returns the error number instead of setting errno.
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: ptsname_r succeeded, so `name` holds a NUL-terminated string.
    let name = unsafe { CStr::from_ptr(name.as_ptr()) };
    Ok(PathBuf::from(OsStr::from_bytes(name.to_bytes())))
}

fn make_raw(fd: RawFd) -> io::Result<()> {
    // SAFETY: termios is plain data; tcgetattr fills it before we read it.
    let mut termios: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and a valid pointer to a termios.
    check(unsafe { libc::tcgetattr(fd, &mut termios) })?;
    // SAFETY: cfmakeraw only edits the struct it is given.
    unsafe { libc::cfmakeraw(&mut termios) };
    termios.c_cflag |= libc::CREAD | libc::CLOCAL;
    // SAFETY: valid descriptor and a valid pointer to a termios.
    check(unsafe { libc::tcsetattr(fd, libc::TCSANOW, &termios) })
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    check(flags)?;
    // SAFETY: as above.
    check(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The kernel reuses pty numbers at once: a pty opened by a parallel test right after
    /// another's unplug would take the same path. Tests that open ptys take turns.
    static PTY_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

    #[tokio::test]
    async fn bytes_written_to_the_slave_path_arrive_at_the_master_unchanged() {
        let _turn = PTY_LOCK.lock().await;
        let mut pty = Pty::open().unwrap();
        let mut port = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY)
            .open(pty.path())
            .unwrap();
        // Raw mode: CR, LF, 0x03 (^C) and 0x7f pass untouched, nothing is echoed back.
        let sent = [0x01, b'\r', b'\n', 0x03, 0x7f, 0x00];
        io::Write::write_all(&mut port, &sent).unwrap();
        let mut got = [0u8; 6];
        pty.read_exact(&mut got).await.unwrap();
        assert_eq!(got, sent);

        pty.write_all(b"\r\nok").await.unwrap();
        let mut back = [0u8; 4];
        io::Read::read_exact(&mut port, &mut back).unwrap();
        assert_eq!(&back, b"\r\nok");
    }

    #[tokio::test]
    async fn the_slave_path_disappears_when_the_pty_is_dropped() {
        let _turn = PTY_LOCK.lock().await;
        let pty = Pty::open().unwrap();
        let path = pty.path().to_owned();
        assert!(path.exists());
        pty.unplug();
        assert!(!path.exists());
    }
}

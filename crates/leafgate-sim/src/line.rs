//! [`SerialLine`]: a simulated device answering on a pty, with the plug life cycle of a USB
//! serial adapter: unplug (the port vanishes under the gateway) and replug (a new port appears).
//!
//! A real adapter usually comes back under the same `/dev/serial/by-id/...` name while its
//! `/dev/ttyUSBn` may change; [`SerialLine::linked`] gives the same: a symlink kept pointing at the
//! current pty, removed while unplugged.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::Error;
use crate::instrument::{Psu, serve_instrument};
use crate::modbus::{Registers, serve_rtu};
use crate::pty::{Pty, Slave};

type Serve = Arc<dyn Fn(Pty) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync>;

/// A device served on a pty. Dropping it unplugs the device (and removes its link).
pub struct SerialLine {
    serve: Serve,
    slave: Slave,
    link: Option<PathBuf>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for SerialLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialLine")
            .field("path", &self.slave.path())
            .field("link", &self.link)
            .field("plugged", &self.is_plugged())
            .finish_non_exhaustive()
    }
}

impl SerialLine {
    /// Puts every unit of `registers` on one RTU line (multi-drop RS-485). Must be called within
    /// a tokio runtime.
    ///
    /// # Errors
    /// When no pty can be opened.
    pub fn modbus_rtu(registers: Registers) -> Result<SerialLine, Error> {
        Self::start(Arc::new(move |pty| {
            let registers = registers.clone();
            Box::pin(async move {
                if let Err(e) = serve_rtu(pty, registers).await {
                    log::warn!("sim: rtu line stopped: {e}");
                }
            })
        }))
    }

    /// Puts the power supply `psu` on a serial line. Must be called within a tokio runtime.
    ///
    /// # Errors
    /// When no pty can be opened.
    pub fn instrument(psu: Psu) -> Result<SerialLine, Error> {
        Self::start(Arc::new(move |pty| {
            let psu = psu.clone();
            Box::pin(async move {
                if let Err(e) = serve_instrument(pty, psu).await {
                    log::warn!("sim: instrument line stopped: {e}");
                }
            })
        }))
    }

    fn start(serve: Serve) -> Result<SerialLine, Error> {
        let pty = Pty::open().map_err(Error::OpenPty)?;
        let slave = pty.slave().clone();
        let task = tokio::spawn(serve(pty));
        Ok(SerialLine {
            serve,
            slave,
            link: None,
            task: Some(task),
        })
    }

    /// Keeps a symlink at `link` pointing to the current pty, like a `/dev/serial/by-id` name:
    /// created now and on every replug, removed on unplug and drop. An existing file at `link` is
    /// replaced.
    ///
    /// # Errors
    /// When the symlink cannot be created.
    pub fn linked(mut self, link: impl Into<PathBuf>) -> Result<SerialLine, Error> {
        self.link = Some(link.into());
        self.update_link()?;
        Ok(self)
    }

    fn update_link(&self) -> Result<(), Error> {
        let Some(link) = &self.link else {
            return Ok(());
        };
        let fail = |source| Error::Link {
            link: link.clone(),
            source,
        };
        remove_link(link).map_err(fail)?;
        if self.is_plugged() {
            std::os::unix::fs::symlink(self.slave.path(), link).map_err(fail)?;
        }
        Ok(())
    }

    /// The pty slave path, e.g. `/dev/pts/7`: what the gateway opens. After an unplug it names
    /// the vanished port until the next replug.
    #[must_use]
    pub fn path(&self) -> &Path {
        self.slave.path()
    }

    /// The stable symlink, when [`SerialLine::linked`] set one.
    #[must_use]
    pub fn link(&self) -> Option<&Path> {
        self.link.as_deref()
    }

    /// The sim's handle on the slave side, to see whether the gateway holds the port exclusively
    /// or to drop bytes it has not read.
    #[must_use]
    pub fn slave(&self) -> &Slave {
        &self.slave
    }

    /// Whether the device is plugged in.
    #[must_use]
    pub fn is_plugged(&self) -> bool {
        self.task.is_some()
    }

    /// Pulls the plug: stops the device, closes the pty master and removes the link. When this
    /// returns the slave path is gone and the gateway's open port reads end-of-file and fails
    /// writes with `EIO`. Replies not yet sent are lost.
    pub async fn unplug(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // Completes once the task's future, which owns the pty, has been dropped.
            let _ = task.await;
        }
        if let Some(link) = &self.link
            && let Err(e) = remove_link(link)
        {
            log::warn!("sim: could not remove {}: {e}", link.display());
        }
    }

    /// Plugs the device back in on a new pty (unplugging first if needed). The state in its
    /// [`Registers`] or [`Psu`] survives, as a device's memory survives a cable swap. The new
    /// slave path may differ from the old one; the link, if any, follows it.
    ///
    /// # Errors
    /// When no pty can be opened or the link cannot be updated.
    pub async fn replug(&mut self) -> Result<(), Error> {
        self.unplug().await;
        let pty = Pty::open().map_err(Error::OpenPty)?;
        self.slave = pty.slave().clone();
        self.task = Some(tokio::spawn((self.serve)(pty)));
        self.update_link()
    }
}

impl Drop for SerialLine {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        if let Some(link) = &self.link {
            let _ = remove_link(link);
        }
    }
}

fn remove_link(link: &Path) -> io::Result<()> {
    match std::fs::remove_file(link) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

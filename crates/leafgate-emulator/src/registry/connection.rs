//! The registry's handle on a live connection task: a queue for messages to publish and a way
//! to close it with a reason. The task owns its socket; this is all anyone else may do to it.

use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::reason::DisconnectReason;
use crate::lock::lock;

/// A message for a connection task to publish to its device.
#[derive(Debug)]
pub(crate) struct Outbound {
    pub(crate) topic: String,
    pub(crate) payload: Bytes,
}

/// The handle the registry keeps for an attached connection: how to send to it and how to close
/// it with a reason.
#[derive(Debug)]
pub(crate) struct Connection {
    pub(crate) id: u64,
    pub(crate) outbound: mpsc::Sender<Outbound>,
    kill: CancellationToken,
    kill_reason: Mutex<Option<DisconnectReason>>,
}

impl Connection {
    pub(crate) fn new(id: u64, outbound: mpsc::Sender<Outbound>, kill: CancellationToken) -> Self {
        Connection {
            id,
            outbound,
            kill,
            kill_reason: Mutex::new(None),
        }
    }

    /// Asks the connection task to close; the first reason given wins.
    pub(crate) fn kick(&self, reason: DisconnectReason) {
        lock(&self.kill_reason).get_or_insert(reason);
        self.kill.cancel();
    }

    pub(crate) fn kill_token(&self) -> &CancellationToken {
        &self.kill
    }

    pub(crate) fn kill_reason(&self) -> Option<DisconnectReason> {
        lock(&self.kill_reason).clone()
    }
}

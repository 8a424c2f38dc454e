//! Sends a device's backlog to the hub, in order, at least once.
//!
//! Up to `window` readings await their PUBACK at once. A reading leaves the backlog only on its
//! PUBACK. When a connection ends before some PUBACKs, the sender lets every reading in flight
//! settle, then sends again from the oldest one still in the backlog, with the same topic and
//! message id: the hub's back end drops a duplicate by its `$.mid`. Every send takes a slot of
//! the gateway-wide pacer first, so a backlog drained after an outage never exceeds the hub's
//! device-to-cloud throttle.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::Shared;
use super::backlog::{Backlog, Next};
use super::store::Store;
use crate::hub::service::{Delivery, Message, Outbound, Outlet};
use crate::metrics;

/// How long to wait before reading the store again after it failed.
const RETRY: std::time::Duration = std::time::Duration::from_secs(5);

pub struct Sender {
    pub device_id: Arc<str>,
    pub backlog: Arc<Backlog>,
    pub store: Store,
    pub outlet: Outlet,
    pub shared: Arc<Shared>,
}

impl Sender {
    /// Runs until `stop`; what is still in the backlog then stays there (in the store, once
    /// committed) for the device's next session.
    pub async fn run(self, stop: CancellationToken) {
        let id = &*self.device_id;
        let window = self.backlog.max_in_flight(self.shared.window);
        let mut in_flight: VecDeque<(u64, oneshot::Receiver<Delivery>)> = VecDeque::new();
        // The last reading handed to the session; the next goes after it.
        let mut cursor: Option<u64> = None;
        // A reading in flight came back unconfirmed: send nothing new until the rest settled,
        // then start again from the oldest one left.
        let mut resend = false;
        loop {
            while !resend && in_flight.len() < window {
                let next = match self.backlog.next_after(cursor) {
                    Next::Ready(next) => next,
                    Next::Empty => break,
                    Next::Fetch => {
                        let fetched = tokio::select! {
                            () = stop.cancelled() => return self.stopped(),
                            f = self.store.fetch(&self.backlog) => f,
                        };
                        if let Err(why) = fetched {
                            log::warn!(device_id = id; "device {id}: cannot read stored telemetry readings back ({why}); trying again in {RETRY:?}");
                            tokio::select! {
                                () = stop.cancelled() => return self.stopped(),
                                () = tokio::time::sleep(RETRY) => {}
                            }
                        }
                        continue;
                    }
                };
                tokio::select! {
                    () = stop.cancelled() => return self.stopped(),
                    () = self.shared.pacer.acquire() => {}
                }
                let (delivery, rx) = oneshot::channel();
                let message = Outbound::Message(Message {
                    topic: next.topic,
                    body: next.body,
                    delivery,
                });
                if self.outlet.send(message).await.is_err() {
                    // The session has ended: the device is stopping.
                    return self.stopped();
                }
                cursor = Some(next.seq);
                in_flight.push_back((next.seq, rx));
                if let Some(m) = metrics::get() {
                    m.telemetry_sent.get_or_create(&m.device(id)).inc();
                }
            }
            let window_has_room = !resend && in_flight.len() < window;
            let Some((_, oldest)) = in_flight.front_mut() else {
                if resend {
                    resend = false;
                    cursor = None;
                    continue;
                }
                tokio::select! {
                    () = stop.cancelled() => return self.stopped(),
                    () = self.backlog.added() => {}
                }
                continue;
            };
            // The oldest message's fate, unless a new reading can go out first.
            let delivery = tokio::select! {
                () = stop.cancelled() => return self.stopped(),
                () = self.backlog.added(), if window_has_room => continue,
                d = oldest => d,
            };
            let Some((seq, _)) = in_flight.pop_front() else {
                continue;
            };
            match delivery {
                Ok(Delivery::Acked) => {
                    self.backlog.remove(seq);
                    if let Some(m) = metrics::get() {
                        m.telemetry_acknowledged.get_or_create(&m.device(id)).inc();
                    }
                }
                // Unconfirmed, or dropped unsent by a stopping session.
                Ok(Delivery::Unconfirmed) | Err(_) => {
                    if !resend {
                        log::debug!(device_id = id; "device {id}: telemetry reading {seq} not confirmed by the hub; sending again from the oldest unconfirmed");
                    }
                    resend = true;
                }
            }
            if resend && in_flight.is_empty() {
                resend = false;
                cursor = None;
            }
        }
    }

    fn stopped(&self) {
        let left = self.backlog.len();
        if left > 0 {
            let id = &*self.device_id;
            log::debug!(device_id = id; "device {id}: telemetry stopping with {left} reading(s) not yet confirmed by the hub; they are kept for the next session");
        }
    }
}

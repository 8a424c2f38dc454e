//! The message ids of one device's recent cloud-to-device messages, so a message the hub
//! delivers again (its PUBACK was lost with a connection, or its lock timed out while the
//! command still ran) is not run twice. Pure.

use std::collections::VecDeque;
use std::hash::{Hash as _, Hasher as _};
use std::time::Duration;

use tokio::time::Instant;

use crate::hub::service::Ack;

/// Ids kept at most: IoT Hub queues at most 50 messages per device, so a redelivery is always
/// among the last few hundred.
const MAX_KEPT: usize = 256;

/// Deliveries of one running message whose acknowledgements wait for its run; a hub that
/// delivers it more often than this gets the oldest of them dropped (unacknowledged, so
/// delivered once more later).
const MAX_WAITING: usize = 16;

/// Ids are kept as digests: a message id comes from the back end and may be long.
fn digest(mid: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    mid.hash(&mut hasher);
    hasher.finish()
}

enum State {
    /// Running; the acknowledgements of later deliveries wait for it.
    Running(Vec<Ack>),
    Done,
}

/// What to do with a delivery.
#[derive(Debug)]
pub enum Verdict {
    /// Not seen within the window: run it, and acknowledge it when it has run.
    New(Option<Ack>),
    /// Still running: its acknowledgement goes out when the run ends.
    Running,
    /// Ran already: acknowledge at once.
    Done(Option<Ack>),
}

pub struct Seen {
    window: Duration,
    ids: VecDeque<(u64, Instant, State)>,
}

impl Seen {
    #[must_use]
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            ids: VecDeque::new(),
        }
    }

    /// A delivery of message `mid`, with its acknowledgement.
    pub fn delivered(&mut self, mid: &str, ack: Option<Ack>, now: Instant) -> Verdict {
        let mid = digest(mid);
        while self.ids.front().is_some_and(|(_, at, state)| {
            now.duration_since(*at) > self.window && matches!(state, State::Done)
        }) {
            self.ids.pop_front();
        }
        match self.ids.iter_mut().find(|(id, _, _)| *id == mid) {
            Some((_, _, State::Running(acks))) => {
                if acks.len() >= MAX_WAITING {
                    acks.remove(0);
                }
                acks.extend(ack);
                Verdict::Running
            }
            Some((_, _, State::Done)) => Verdict::Done(ack),
            None => {
                if self.ids.len() >= MAX_KEPT
                    && let Some(i) = self
                        .ids
                        .iter()
                        .position(|(_, _, s)| matches!(s, State::Done))
                {
                    self.ids.remove(i);
                }
                self.ids
                    .push_back((mid.to_owned(), now, State::Running(Vec::new())));
                Verdict::New(ack)
            }
        }
    }

    /// The run of `mid` ended: the acknowledgements of the deliveries that came meanwhile.
    pub fn finished(&mut self, mid: &str) -> Vec<Ack> {
        let mid = digest(mid);
        match self.ids.iter_mut().find(|(id, _, _)| *id == mid) {
            Some((_, _, state)) => match std::mem::replace(state, State::Done) {
                State::Running(acks) => acks,
                State::Done => Vec::new(),
            },
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_runs_once_within_the_window_and_again_after_it() {
        let start = Instant::now();
        let mut seen = Seen::new(Duration::from_secs(60));
        assert!(matches!(
            seen.delivered("m1", None, start),
            Verdict::New(None)
        ));
        assert!(matches!(
            seen.delivered("m1", None, start),
            Verdict::Running
        ));
        assert!(seen.finished("m1").is_empty());
        assert!(matches!(
            seen.delivered("m1", None, start + Duration::from_secs(59)),
            Verdict::Done(None)
        ));
        assert!(matches!(
            seen.delivered("m1", None, start + Duration::from_secs(61)),
            Verdict::New(None)
        ));
    }

    #[test]
    fn the_oldest_finished_ids_make_room() {
        let now = Instant::now();
        let mut seen = Seen::new(Duration::from_secs(3600));
        for i in 0..=MAX_KEPT {
            assert!(matches!(
                seen.delivered(&i.to_string(), None, now),
                Verdict::New(None)
            ));
            seen.finished(&i.to_string());
        }
        assert_eq!(seen.ids.len(), MAX_KEPT);
        assert!(matches!(seen.delivered("0", None, now), Verdict::New(None)));
        assert!(matches!(
            seen.delivered(&MAX_KEPT.to_string(), None, now),
            Verdict::Done(None)
        ));
    }
}

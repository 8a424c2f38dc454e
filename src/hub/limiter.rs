//! Paces new MQTT connections across all sessions, so a restart or a hub-wide drop never opens
//! more than the configured number per second (IoT Hub throttles new connections per unit, and
//! a thundering herd can lock every device out).

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Hands out connection slots at most `rate` per second, evenly spaced (no bursts).
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    next: Mutex<Instant>,
}

impl Pacer {
    #[must_use]
    pub fn new(per_second: u32) -> Self {
        Pacer {
            interval: Duration::from_secs(1) / per_second.max(1),
            next: Mutex::new(Instant::now()),
        }
    }

    /// Waits for this caller's slot.
    ///
    /// # Cancel safety
    /// A cancelled wait still consumes its slot; that only makes the pace slower, never faster.
    pub async fn acquire(&self) {
        let slot = {
            // A poisoned lock only means another task panicked mid-update; the Instant inside is
            // still valid.
            let mut next = self
                .next
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            let slot = (*next).max(now);
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn spaces_slots_evenly_at_the_configured_rate() {
        let pacer = std::sync::Arc::new(Pacer::new(10));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..25 {
            let p = pacer.clone();
            tasks.push(tokio::spawn(async move {
                p.acquire().await;
                Instant::now()
            }));
        }
        let mut times = Vec::new();
        for t in tasks {
            times.push(t.await.unwrap() - start);
        }
        times.sort();
        // 25 slots 100 ms apart: the last at 2.4 s; never more than 10 in any 1 s window.
        assert_eq!(times.last().copied(), Some(Duration::from_millis(2400)));
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..]
                .iter()
                .filter(|u| **u < *t + Duration::from_secs(1))
                .count();
            assert!(in_window <= 10, "{in_window} connects within 1 s of {t:?}");
        }
    }
}

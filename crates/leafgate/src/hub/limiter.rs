//! Paces new MQTT connections across all sessions, so a restart or a hub-wide drop never opens
//! more than the configured number per second (IoT Hub throttles new connections per unit, and
//! a thundering herd can lock every device out).

use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

/// How far a slot taken late may still catch up with the schedule. Ordinary timer lateness (a
/// millisecond or two) costs no throughput; a long stall of the runtime (a busy mass reconnect
/// doing TLS handshakes) does not turn into a burst: at most this much of the schedule is made
/// up at once, i.e. `CATCH_UP` x rate extra connects in any window.
const CATCH_UP: Duration = Duration::from_millis(10);

/// Hands out connection slots at most `rate` per second, evenly spaced (no bursts), spaced from
/// when each slot is really taken.
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    /// When the next slot opens. The caller waiting for it holds the lock while it sleeps;
    /// tokio's mutex is fair, so the others queue in arrival order.
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
    /// A cancelled wait gives its place up without taking a slot.
    pub async fn acquire(&self) {
        let mut next = self.next.lock().await;
        let due = *next;
        tokio::time::sleep_until(due).await;
        // Slots used to be handed out in advance, each one interval after the previous one was
        // due: when a busy runtime woke the sleepers late, every overdue caller went through at
        // once, above the configured rate.
        let taken = Instant::now();
        let floor = taken.checked_sub(CATCH_UP).unwrap_or(taken);
        *next = due.max(floor) + self.interval;
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

    /// A runtime stalled while callers wait (here: its only thread blocked) wakes them late;
    /// they must still go through one interval apart, not all at once.
    #[tokio::test]
    async fn a_late_wake_up_does_not_let_the_waiting_callers_through_in_a_burst() {
        let pacer = std::sync::Arc::new(Pacer::new(10));
        pacer.acquire().await;
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let p = pacer.clone();
            tasks.push(tokio::spawn(async move {
                p.acquire().await;
                Instant::now()
            }));
        }
        // Let every task take its place in the queue, then block the runtime past two slots.
        tokio::task::yield_now().await;
        std::thread::sleep(Duration::from_millis(350));
        let mut times = Vec::new();
        for t in tasks {
            times.push(t.await.unwrap());
        }
        times.sort();
        for pair in times.windows(2) {
            let gap = pair[1] - pair[0];
            assert!(
                gap >= Duration::from_millis(100) - CATCH_UP,
                "slots {gap:?} apart after a stall"
            );
        }
    }
}

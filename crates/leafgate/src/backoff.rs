//! Exponential backoff with full jitter, shared by hub sessions and bus links.
//!
//! Delay for attempt n is uniform in [min, min(max, min·2ⁿ)]: jitter spreads a crowd of devices
//! that failed together, so they do not come back in lock step.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    #[must_use]
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            attempt: 0,
        }
    }

    /// The next delay; grows until it reaches the cap.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self.cap();
        self.attempt = self.attempt.saturating_add(1);
        jitter(self.min, cap)
    }

    /// The current upper bound (for logs and tests).
    #[must_use]
    pub fn cap(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// Uniform in [lo, hi].
#[must_use]
pub fn jitter(lo: Duration, hi: Duration) -> Duration {
    if hi <= lo {
        return lo;
    }
    let span = u64::try_from((hi - lo).as_micros()).unwrap_or(u64::MAX);
    lo + Duration::from_micros(rand::random_range(0..=span))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_with_jitter_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut caps = Vec::new();
        for _ in 0..8 {
            let cap = b.cap();
            let d = b.next_delay();
            assert!(
                d >= Duration::from_millis(100) && d <= cap,
                "{d:?} not in [100ms, {cap:?}]"
            );
            caps.push(cap.as_millis());
        }
        assert_eq!(caps, [100, 200, 400, 800, 1600, 2000, 2000, 2000]);
        b.reset();
        assert_eq!(b.cap(), Duration::from_millis(100));
        // Jitter actually varies.
        let samples: std::collections::BTreeSet<_> = (0..50)
            .map(|_| jitter(Duration::ZERO, Duration::from_secs(1)))
            .collect();
        assert!(samples.len() > 40);
    }
}

//! Waiting out the silent interval between RTU frames, precisely and without a busy core.
//!
//! The interval is 3.5 character times, 1.75 ms above 19,200 baud, and every microsecond the
//! master waits beyond it is line time no unit can use. tokio's timer has 1 ms slots and rounds
//! every deadline up to the next slot it processes, so `sleep_until` returned 1.3 ms late at
//! the median on the benchmark machine: most of the gap again. A Linux `timerfd` is a kernel
//! hrtimer with nanosecond resolution whose expiry makes the descriptor readable, so tokio's
//! reactor wakes the task at the deadline with one `epoll` event and no extra thread.
//!
//! Where a timerfd cannot be had (not Linux, no descriptors left), the wait falls back to
//! tokio's timer: late, never early.

use tokio::time::Instant;

/// One per line, reused for every frame: the descriptor is created on the first wait and kept.
#[derive(Debug, Default)]
pub struct GapTimer {
    #[cfg(target_os = "linux")]
    fd: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
    warned: bool,
}

impl GapTimer {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns at `deadline` or later, never before: a master that speaks early runs its frame
    /// into the previous one and corrupts both. Must run on a runtime with I/O enabled, as every
    /// serial line does (registering the timer without a reactor panics).
    ///
    /// # Cancel safety
    /// Dropping the future leaves the timer armed; the next wait re-arms it and ignores a stale
    /// expiry.
    pub async fn wait_until(&mut self, deadline: Instant) {
        if Instant::now() >= deadline {
            return;
        }
        #[cfg(target_os = "linux")]
        match self.precise(deadline).await {
            Ok(()) => return,
            Err(e) => {
                // Retried at the next wait: running out of descriptors may pass.
                self.fd = None;
                if !self.warned {
                    log::warn!(
                        "no high-resolution timer for the frame gap ({e}); using tokio's, which adds about 1 ms per frame"
                    );
                }
            }
        }
        self.warned = true;
        tokio::time::sleep_until(deadline).await;
    }

    #[cfg(target_os = "linux")]
    async fn precise(&mut self, deadline: Instant) -> std::io::Result<()> {
        use rustix::time::{
            Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec, timerfd_create,
            timerfd_settime,
        };
        use tokio::io::Interest;
        use tokio::io::unix::AsyncFd;

        let fd = match &mut self.fd {
            Some(fd) => fd,
            slot @ None => {
                let fd = timerfd_create(
                    TimerfdClockId::Monotonic,
                    TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
                )?;
                // SAFETY: the OwnedFd is owned by the AsyncFd for its whole life and always
                // yields the same descriptor, which is all `register` asks. A reactor is present:
                // the line being waited on is itself registered with it.
                let fd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }?;
                slot.insert(fd)
            }
        };
        // `Instant` reads CLOCK_MONOTONIC, the timer's clock. A relative expiry counts from the
        // kernel's now, which is later than ours, so it can only err late. The loop covers the
        // theoretical case of an expiry read as early.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            let value = Itimerspec {
                it_interval: Timespec {
                    tv_sec: 0,
                    tv_nsec: 0,
                },
                it_value: Timespec {
                    tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
                    tv_nsec: left.subsec_nanos().into(),
                },
            };
            // Also clears an expiry left over from a cancelled wait (the count restarts at 0).
            timerfd_settime(fd.get_ref(), TimerfdTimerFlags::empty(), &value)?;
            loop {
                let mut ready = fd.readable().await?;
                let mut expirations = [0u8; 8];
                match ready.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), &mut expirations)?)) {
                    Ok(read) => {
                        read?;
                        break;
                    }
                    // Readiness from a stale expiry that the re-arm cleared: keep waiting.
                    Err(_would_block) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Lower bounds only: on a loaded machine any wait may be late, none may be early.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn never_returns_before_the_deadline() {
        let mut timer = GapTimer::new();
        for i in 0..200u64 {
            let deadline = Instant::now() + Duration::from_micros(100 + (i * 37) % 3000);
            timer.wait_until(deadline).await;
            let now = Instant::now();
            assert!(
                now >= deadline,
                "returned {:?} early",
                deadline.duration_since(now)
            );
        }
        assert!(timer.fd.is_some(), "the timerfd was not used");
    }

    #[tokio::test]
    async fn a_deadline_in_the_past_returns_at_once_and_a_cancelled_wait_leaves_no_trace() {
        let mut timer = GapTimer::new();
        tokio::time::timeout(
            Duration::from_secs(1),
            timer.wait_until(Instant::now() - Duration::from_millis(1)),
        )
        .await
        .unwrap();
        // Arm a wait and drop it, let its expiry pass, then wait again: the stale expiry must
        // not end the new wait early.
        {
            let wait = timer.wait_until(Instant::now() + Duration::from_millis(3));
            let mut wait = std::pin::pin!(wait);
            std::future::poll_fn(|cx| {
                let _ = wait.as_mut().poll(cx);
                std::task::Poll::Ready(())
            })
            .await;
        }
        std::thread::sleep(Duration::from_millis(5));
        let deadline = Instant::now() + Duration::from_millis(20);
        timer.wait_until(deadline).await;
        assert!(Instant::now() >= deadline);
    }
}

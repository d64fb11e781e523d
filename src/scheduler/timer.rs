//! The batcher's wait for a fuller batch, ended to the microsecond.
//!
//! Tokio's timer wheel has a resolution of one millisecond and rounds every deadline *up* to the next whole tick, then
//! sleeps in whole milliseconds: a 500 µs `max_queue_delay` became 1.6 ms, and every delay overshot by 1.10–1.15 ms
//! (measured with `sluice_queue_duration_seconds` at c=1, docs/BENCHMARKS.md). For a model whose compute is 9 µs that
//! overshoot was the whole latency of a lone request. A Linux `timerfd` armed for the exact remaining time and polled by
//! the runtime's own reactor (epoll) wakes the batcher within tens of microseconds of the deadline, with no spinning and
//! no extra thread: one file descriptor per model, re-armed for each wait (one `timerfd_settime` syscall).
//!
//! Where a timerfd cannot be had (not Linux, or the call fails), or `[model_defaults] precise_batch_timer = false`, the
//! wait falls back to Tokio's timer, with its millisecond rounding.

use std::time::Instant;

/// One model's batching timer. Not shared: the batcher task owns it.
pub struct BatchTimer {
    #[cfg(target_os = "linux")]
    fd: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
    /// The deadline the timerfd is armed for and has not reported yet. The batcher asks again for the same deadline
    /// after every arrival that does not complete a batch (its `select!` drops the wait): re-arming each time was a
    /// syscall per request, which cost `fraud_mlp` a third of its c=64 throughput (docs/BENCHMARKS.md).
    #[cfg(target_os = "linux")]
    armed: Option<Instant>,
}

impl BatchTimer {
    /// A precise timer when `precise` and the platform allows it; otherwise Tokio's. Must run inside the runtime.
    pub fn new(precise: bool) -> BatchTimer {
        #[cfg(target_os = "linux")]
        {
            let fd = if precise { linux::create() } else { None };
            BatchTimer { fd, armed: None }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = precise;
            BatchTimer {}
        }
    }

    /// Whether waits end to the microsecond (for logs and tests).
    pub fn is_precise(&self) -> bool {
        #[cfg(target_os = "linux")]
        {
            self.fd.is_some()
        }
        #[cfg(not(target_os = "linux"))]
        {
            false
        }
    }

    /// Returns at `at` (at once if it has passed). Cancel-safe: dropping the future leaves the timer ready for the next
    /// wait, which re-arms it (a late expiry of an abandoned wait is read and ignored).
    pub async fn sleep_until(&mut self, at: Instant) {
        #[cfg(target_os = "linux")]
        if let Some(fd) = &self.fd {
            if linux::sleep_until(fd, at, &mut self.armed).await {
                return;
            }
        }
        tokio::time::sleep_until(at.into()).await;
    }
}

#[cfg(target_os = "linux")]
mod linux {
    use rustix::time::{timerfd_create, timerfd_settime, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags};
    use rustix::time::Timespec;
    use std::os::fd::OwnedFd;
    use std::time::{Duration, Instant};
    use tokio::io::unix::AsyncFd;
    use tokio::io::Interest;

    pub fn create() -> Option<AsyncFd<OwnedFd>> {
        // CLOCK_MONOTONIC is the clock `Instant` reads on Linux; the timer is armed relative, so the two never need
        // converting.
        let made = timerfd_create(TimerfdClockId::Monotonic, TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC)
            .map_err(std::io::Error::from)
            .and_then(|fd| {
                // SAFETY: an `OwnedFd` keeps its descriptor open, and the same, until it is dropped, which happens only
                // with the `AsyncFd`; nothing here replaces it (`get_mut` is never used).
                unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(|e| e.into())
            });
        match made {
            Ok(fd) => Some(fd),
            Err(error) => {
                tracing::warn!(%error, "no timerfd for the batcher: batching waits use the runtime's millisecond timer");
                None
            }
        }
    }

    fn timespec(d: Duration) -> Timespec {
        Timespec { tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX), tv_nsec: i64::from(d.subsec_nanos()) }
    }

    /// Waits with the timerfd; false when it cannot be armed or read (the caller falls back to Tokio's timer).
    /// `armed`: the deadline the timer is armed for and has not reported yet (kept across abandoned waits).
    pub async fn sleep_until(fd: &AsyncFd<OwnedFd>, at: Instant, armed: &mut Option<Instant>) -> bool {
        let left = at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        if *armed != Some(at) {
            // Arming resets the expiry count, so a previous, abandoned wait's expiry cannot end this one: its
            // readiness may still be cached, but the read below then finds nothing (EAGAIN) and clears it.
            let spec = Itimerspec { it_interval: Timespec { tv_sec: 0, tv_nsec: 0 }, it_value: timespec(left) };
            if let Err(error) = timerfd_settime(fd.get_ref(), TimerfdTimerFlags::empty(), &spec) {
                *armed = None;
                tracing::warn!(error = %std::io::Error::from(error), "cannot arm the batcher's timerfd");
                return false;
            }
            *armed = Some(at);
        }
        loop {
            let Ok(mut guard) = fd.readable().await else { return false };
            let mut expirations = [0u8; 8];
            match rustix::io::read(fd.get_ref(), &mut expirations) {
                Ok(8) => {
                    *armed = None;
                    return true;
                }
                Ok(_) => return false,
                Err(rustix::io::Errno::AGAIN) => guard.clear_ready(),
                Err(rustix::io::Errno::INTR) => {}
                Err(error) => {
                    tracing::warn!(error = %std::io::Error::from(error), "cannot read the batcher's timerfd");
                    return false;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// The point of the timer: a wait ends well inside a millisecond of its deadline, where Tokio's would end up to
    /// ~1.1 ms late. The bound is generous for a busy CI machine (it fails only at the old timer's overshoot).
    #[tokio::test(flavor = "current_thread")]
    async fn waits_end_near_their_deadline() {
        let mut timer = BatchTimer::new(true);
        assert!(timer.is_precise(), "timerfd should be available on Linux");
        let mut late = Vec::new();
        for delay_us in [300u64, 500, 700, 1_300, 2_500] {
            let at = Instant::now() + Duration::from_micros(delay_us);
            timer.sleep_until(at).await;
            let now = Instant::now();
            assert!(now >= at, "woke {:?} early", at - now);
            late.push(now - at);
        }
        late.sort();
        // The median of five: one preemption on a loaded machine must not fail the test.
        assert!(late[2] < Duration::from_micros(900), "waits overshot by {late:?}");
    }

    /// An abandoned wait (the batcher's select! picked a new arrival) must not end the next wait early.
    #[tokio::test(flavor = "current_thread")]
    async fn an_abandoned_wait_does_not_end_the_next_early() {
        let mut timer = BatchTimer::new(true);
        let short = Instant::now() + Duration::from_micros(200);
        let _ = tokio::time::timeout(Duration::from_micros(10), timer.sleep_until(short)).await;
        std::thread::sleep(Duration::from_millis(1)); // the abandoned timer expires meanwhile
        let at = Instant::now() + Duration::from_millis(3);
        timer.sleep_until(at).await;
        assert!(Instant::now() >= at);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_runtime_timer_is_the_fallback() {
        let mut timer = BatchTimer::new(false);
        assert!(!timer.is_precise());
        let at = Instant::now() + Duration::from_millis(2);
        timer.sleep_until(at).await;
        assert!(Instant::now() >= at);
    }
}

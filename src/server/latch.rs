//! [`Latch`]: a one-way signal (shutdown began, the drain time ran out) that many tasks wait on cheaply.
//!
//! A waiting task is polled whenever anything it selects on makes progress: a connection on each request, a forwarded
//! request on each socket event. Polling a `watch` receiver or a `Notify` waiter again takes its lock to compare
//! wakers, a few hundred instructions per forwarded request (docs/BENCHMARKS.md). [`Latch::wait`] registers its waiter
//! once per task waker; later polls only read the flag.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Poll, Waker};
use tokio::sync::Notify;

#[derive(Default)]
pub struct Latch {
    set: AtomicBool,
    notify: Notify,
}

impl Latch {
    pub fn new() -> Latch {
        Latch::default()
    }

    /// Sets the latch and wakes every waiter; it stays set.
    pub fn set(&self) {
        self.set.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub fn is_set(&self) -> bool {
        self.set.load(Ordering::Acquire)
    }

    /// Resolves once the latch is set (at once if it is).
    pub async fn wait(&self) {
        let notified = self.notify.notified();
        tokio::pin!(notified);
        // The waker the waiter was last registered with.
        let mut registered: Option<Waker> = None;
        std::future::poll_fn(|cx| {
            if self.is_set() {
                return Poll::Ready(());
            }
            // Registered with this task's waker already: `set` will wake it, and the flag is read first then.
            if registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                return Poll::Pending;
            }
            // The waiter is registered before the flag is read again, so a `set` in between is not missed.
            if notified.as_mut().poll(cx).is_ready() || self.is_set() {
                return Poll::Ready(());
            }
            registered = Some(cx.waker().clone());
            Poll::Pending
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::Latch;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn waiters_wake_when_it_is_set_and_later_waits_end_at_once() {
        let latch = Arc::new(Latch::new());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let latch = latch.clone();
                tokio::spawn(async move { latch.wait().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(waiters.iter().all(|w| !w.is_finished()));
        latch.set();
        for waiter in waiters {
            tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken in time").expect("no panic");
        }
        assert!(latch.is_set());
        tokio::time::timeout(Duration::from_secs(5), latch.wait()).await.expect("a set latch is passed at once");
    }

    /// Selected beside a future that keeps waking the task (as a busy connection does), it still wakes when set.
    #[tokio::test]
    async fn a_waiter_polled_for_other_reasons_still_wakes() {
        let latch = Arc::new(Latch::new());
        let setter = {
            let latch = latch.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                latch.set();
            })
        };
        let wait = latch.wait();
        tokio::pin!(wait);
        let mut other_wakes = 0;
        let finished = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                tokio::select! {
                    biased;
                    _ = wait.as_mut() => return,
                    _ = tokio::time::sleep(Duration::from_millis(1)) => other_wakes += 1,
                }
            }
        })
        .await;
        assert!(finished.is_ok(), "the waiter never woke");
        assert!(other_wakes > 0);
        setter.await.expect("no panic");
    }
}

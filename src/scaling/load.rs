//! The counters behind the scaling signal, kept per model version on the request path: requests and rows that arrived
//! (accepted or not), rows served, and instance busy time. Plain atomics, so the hot path pays a few relaxed adds; the
//! sampler in [`super::signal`] turns them into rates.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

/// A cumulative reading of a [`LoadTracker`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LoadReading {
    pub arrived_requests: u64,
    pub arrived_rows: u64,
    pub served_rows: u64,
    /// Instance busy time, including batches still running.
    pub busy_ns: u64,
    /// Requests admitted and not answered yet (queued or running).
    pub in_flight: usize,
}

/// When an instance started its current batch (nanoseconds after the tracker's epoch, plus one; 0 = idle).
#[derive(Default)]
struct InstanceClock(AtomicU64);

pub struct LoadTracker {
    epoch: Instant,
    arrived_requests: AtomicU64,
    arrived_rows: AtomicU64,
    served_rows: AtomicU64,
    busy_ns: AtomicU64,
    in_flight: AtomicUsize,
    instances: Vec<InstanceClock>,
}

impl LoadTracker {
    pub fn new(instances: usize) -> LoadTracker {
        LoadTracker {
            epoch: Instant::now(),
            arrived_requests: AtomicU64::new(0),
            arrived_rows: AtomicU64::new(0),
            served_rows: AtomicU64::new(0),
            busy_ns: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            instances: (0..instances.max(1)).map(|_| InstanceClock::default()).collect(),
        }
    }

    pub fn instances(&self) -> usize {
        self.instances.len()
    }

    fn since_epoch(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.epoch).as_nanos() as u64
    }

    /// A request reached the model's queue admission. Counted whether or not it is admitted: the arrival rate is the
    /// offered load, which is what capacity must follow (requests refused with 429 are demand too).
    pub fn arrived(&self, rows: usize) {
        self.arrived_requests.fetch_add(1, Ordering::Relaxed);
        self.arrived_rows.fetch_add(rows as u64, Ordering::Relaxed);
    }

    /// Counts a request as in flight until the guard drops.
    pub fn in_flight(&self) -> InFlightGuard<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self)
    }

    /// Instance `index` started a batch at `at`.
    pub fn batch_started(&self, index: usize, at: Instant) {
        if let Some(clock) = self.instances.get(index) {
            clock.0.store(self.since_epoch(at) + 1, Ordering::Release);
        }
    }

    /// Instance `index` finished the batch it started (served or failed: either way it used the instance).
    pub fn batch_finished(&self, index: usize, rows: usize, at: Instant) {
        let Some(clock) = self.instances.get(index) else { return };
        let started = clock.0.swap(0, Ordering::AcqRel);
        if started > 0 {
            let busy = self.since_epoch(at).saturating_sub(started - 1);
            self.busy_ns.fetch_add(busy, Ordering::Relaxed);
        }
        self.served_rows.fetch_add(rows as u64, Ordering::Relaxed);
    }

    pub fn read(&self, now: Instant) -> LoadReading {
        let now_ns = self.since_epoch(now);
        let running: u64 = self
            .instances
            .iter()
            .map(|c| c.0.load(Ordering::Acquire))
            .filter(|&started| started > 0)
            .map(|started| now_ns.saturating_sub(started - 1))
            .sum();
        LoadReading {
            arrived_requests: self.arrived_requests.load(Ordering::Relaxed),
            arrived_rows: self.arrived_rows.load(Ordering::Relaxed),
            served_rows: self.served_rows.load(Ordering::Relaxed),
            busy_ns: self.busy_ns.load(Ordering::Relaxed) + running,
            in_flight: self.in_flight.load(Ordering::Relaxed),
        }
    }
}

pub struct InFlightGuard<'a>(&'a LoadTracker);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn busy_time_counts_running_and_finished_batches() {
        let t = LoadTracker::new(2);
        let t0 = Instant::now();
        t.batch_started(0, t0);
        let r = t.read(t0 + Duration::from_millis(30));
        assert_eq!(r.busy_ns, 30_000_000);
        t.batch_finished(0, 8, t0 + Duration::from_millis(50));
        t.batch_started(1, t0 + Duration::from_millis(40));
        let r = t.read(t0 + Duration::from_millis(60));
        assert_eq!(r.busy_ns, 50_000_000 + 20_000_000);
        assert_eq!(r.served_rows, 8);
        // An out-of-range instance index is ignored rather than trusted.
        t.batch_finished(7, 1, t0);
        assert_eq!(t.read(t0).served_rows, 8);
    }

    #[test]
    fn arrivals_and_in_flight() {
        let t = LoadTracker::new(1);
        t.arrived(3);
        t.arrived(1);
        let g = t.in_flight();
        let r = t.read(Instant::now());
        assert_eq!((r.arrived_requests, r.arrived_rows, r.in_flight), (2, 4, 1));
        drop(g);
        assert_eq!(t.read(Instant::now()).in_flight, 0);
    }
}

//! The datapoints waiting to be posted, oldest first, bounded in count and age.
//!
//! Bounded in count so an unreachable endpoint costs a fixed amount of memory; when full, the *oldest* point goes,
//! since autoscaling acts on recent values. Bounded in age because OCI refuses datapoints more than two hours old:
//! posting them would only earn per-object failures. The batch being posted is taken out of the buffer and put back
//! in front when the post is to be retried, so a point is either delivered, refused, or counted as dropped once.

use super::payload::Datapoint;
use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

/// OCI accepts datapoints less than 2 h old. Points are dropped a minute before that, so one that is posted (and
/// possibly retried for a timeout's worth) still arrives in time.
pub const MAX_AGE: Duration = Duration::from_secs(2 * 60 * 60 - 60);

/// What a change to the buffer dropped, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    pub buffer_full: u64,
    pub too_old: u64,
}

#[derive(Debug)]
pub struct Buffer {
    points: VecDeque<Datapoint>,
    capacity: usize,
}

impl Buffer {
    /// `capacity` ≥ 1 (checked by the config).
    pub fn new(capacity: usize) -> Buffer {
        let capacity = capacity.max(1);
        Buffer { points: VecDeque::with_capacity(capacity.min(4096)), capacity }
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Datapoint> {
        self.points.iter()
    }

    /// Appends `points` (newest), dropping the oldest beyond the capacity.
    pub fn push(&mut self, points: impl IntoIterator<Item = Datapoint>) -> Dropped {
        self.points.extend(points);
        Dropped { buffer_full: self.trim(), too_old: 0 }
    }

    /// Removes and returns the `n` oldest points (the batch to post).
    pub fn take_front(&mut self, n: usize) -> Vec<Datapoint> {
        let n = n.min(self.points.len());
        self.points.drain(..n).collect()
    }

    /// Puts a batch whose post will be retried back in front, in its order; beyond the capacity the oldest go.
    pub fn put_back(&mut self, batch: Vec<Datapoint>) -> Dropped {
        for p in batch.into_iter().rev() {
            self.points.push_front(p);
        }
        Dropped { buffer_full: self.trim(), too_old: 0 }
    }

    /// Drops the points older than [`MAX_AGE`] at `now`.
    pub fn expire(&mut self, now: SystemTime) -> Dropped {
        let Some(cutoff) = now.checked_sub(MAX_AGE) else { return Dropped::default() };
        let before = self.points.len();
        self.points.retain(|p| p.timestamp >= cutoff);
        Dropped { buffer_full: 0, too_old: (before - self.points.len()) as u64 }
    }

    fn trim(&mut self) -> u64 {
        let excess = self.points.len().saturating_sub(self.capacity);
        self.points.drain(..excess);
        excess as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::oci::payload::{Metric, StreamKey};
    use std::sync::Arc;
    use std::time::UNIX_EPOCH;

    fn point(second: u64) -> Datapoint {
        Datapoint {
            stream: StreamKey { metric: Metric::QueueRequests, model: Arc::from("m") },
            timestamp: UNIX_EPOCH + Duration::from_secs(1_000_000 + second),
            value: second as f64,
        }
    }

    fn values(b: &Buffer) -> Vec<f64> {
        b.iter().map(|p| p.value).collect()
    }

    #[test]
    fn full_buffer_drops_the_oldest() {
        let mut b = Buffer::new(3);
        assert_eq!(b.push((0..2).map(point)).buffer_full, 0);
        assert_eq!(b.push((2..5).map(point)).buffer_full, 2);
        assert_eq!(values(&b), [2.0, 3.0, 4.0]);
    }

    #[test]
    fn retried_batches_go_back_in_front() {
        let mut b = Buffer::new(4);
        b.push((0..3).map(point));
        let batch = b.take_front(2);
        assert_eq!(batch.iter().map(|p| p.value).collect::<Vec<_>>(), [0.0, 1.0]);
        b.push((3..5).map(point));
        assert_eq!(values(&b), [2.0, 3.0, 4.0]);
        // Back in front; 5 points in a buffer of 4: the oldest (0) goes.
        assert_eq!(b.put_back(batch).buffer_full, 1);
        assert_eq!(values(&b), [1.0, 2.0, 3.0, 4.0]);
        assert_eq!(b.take_front(10).len(), 4);
        assert!(b.is_empty());
    }

    #[test]
    fn old_points_expire() {
        let mut b = Buffer::new(10);
        b.push((0..5).map(point));
        let now = point(3).timestamp + MAX_AGE;
        assert_eq!(b.expire(now).too_old, 3);
        assert_eq!(values(&b), [3.0, 4.0]);
        assert_eq!(b.expire(UNIX_EPOCH).too_old, 0);
    }
}

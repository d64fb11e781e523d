//! Per-model counters behind Triton's statistics extension (`GET /v2/models/{m}/stats`): how many requests and batches
//! ran, how long they queued and computed, and the batch sizes that formed. Updated once per batch, not per request.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CountNs {
    pub count: u64,
    pub ns: u64,
}

impl CountNs {
    fn add(&mut self, count: u64, ns: u64) {
        self.count += count;
        self.ns += ns;
    }
}

#[derive(Clone, Debug, Default)]
pub struct StatsSnapshot {
    /// Milliseconds since the epoch of the last finished batch.
    pub last_inference_ms: u64,
    /// Rows inferred.
    pub inference_count: u64,
    /// Batches run.
    pub execution_count: u64,
    pub success: CountNs,
    pub fail: CountNs,
    pub queue: CountNs,
    pub compute_infer: CountNs,
    /// Requests rejected because the queue was full.
    pub rejected: u64,
    /// Requests that timed out in the queue.
    pub timed_out: u64,
    /// Rows per batch -> (batches, compute time).
    pub batch_sizes: BTreeMap<usize, CountNs>,
}

#[derive(Default)]
pub struct ModelStats {
    inner: Mutex<StatsSnapshot>,
}

impl ModelStats {
    pub fn record_batch(&self, requests: usize, rows: usize, queue_ns: u64, compute: Duration, ok: bool) {
        let compute_ns = compute.as_nanos() as u64;
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let mut s = self.inner.lock();
        s.last_inference_ms = now_ms;
        s.queue.add(requests as u64, queue_ns);
        if ok {
            s.inference_count += rows as u64;
            s.execution_count += 1;
            s.success.add(requests as u64, compute_ns);
            s.compute_infer.add(requests as u64, compute_ns);
            s.batch_sizes.entry(rows).or_default().add(1, compute_ns);
        } else {
            s.fail.add(requests as u64, compute_ns);
        }
    }

    pub fn record_rejection(&self) {
        self.inner.lock().rejected += 1;
    }

    pub fn record_timeout(&self) {
        self.inner.lock().timed_out += 1;
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        self.inner.lock().clone()
    }
}

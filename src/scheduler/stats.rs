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

/// Time spent on the batches of one size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchTimes {
    pub compute_input: CountNs,
    pub compute_infer: CountNs,
    pub compute_output: CountNs,
}

/// The phases of one batch, timed by the instance thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct BatchTiming {
    /// Summed over the batch's requests: time from admission to the batch forming.
    pub queue: Duration,
    pub input: Duration,
    pub infer: Duration,
    pub output: Duration,
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
    pub compute_input: CountNs,
    pub compute_infer: CountNs,
    pub compute_output: CountNs,
    /// Requests rejected because the queue was full.
    pub rejected: u64,
    /// Requests that timed out in the queue.
    pub timed_out: u64,
    /// Rows per batch -> batches and their time joining inputs, running, and splitting outputs.
    pub batch_sizes: BTreeMap<usize, BatchTimes>,
}

#[derive(Default)]
pub struct ModelStats {
    inner: Mutex<StatsSnapshot>,
}

impl ModelStats {
    pub fn record_batch(&self, requests: usize, rows: usize, t: BatchTiming, ok: bool) {
        let ns = |d: Duration| d.as_nanos() as u64;
        let n = requests as u64;
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let total = ns(t.input) + ns(t.infer) + ns(t.output);
        let mut s = self.inner.lock();
        s.last_inference_ms = now_ms;
        s.queue.add(n, ns(t.queue));
        if ok {
            s.inference_count += rows as u64;
            s.execution_count += 1;
            // As in Triton, every request of a batch is charged the batch's whole duration.
            s.success.add(n, n * total);
            s.compute_input.add(n, n * ns(t.input));
            s.compute_infer.add(n, n * ns(t.infer));
            s.compute_output.add(n, n * ns(t.output));
            let b = s.batch_sizes.entry(rows).or_default();
            b.compute_input.add(1, ns(t.input));
            b.compute_infer.add(1, ns(t.infer));
            b.compute_output.add(1, ns(t.output));
        } else {
            s.fail.add(n, n * total);
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

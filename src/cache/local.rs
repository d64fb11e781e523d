//! The in-process tier: a `moka` cache bounded by the bytes of its entries, each with its own lifetime.
//!
//! `moka` keeps admission and eviction in the TinyLFU family (frequently used entries survive a scan of one-off
//! requests), which a plain LRU does not. Entries are weighed by their outputs' size, so `max_bytes` bounds memory
//! whatever the models' output sizes are.

use super::key::CacheKey;
use super::Outputs;
use crate::metrics::{catalogue, Metrics};
use ::metrics::{Counter, Gauge};
use moka::future::Cache;
use moka::notification::RemovalCause;
use std::time::{Duration, Instant};

/// One cached answer and how long it may be served.
#[derive(Clone)]
struct Entry {
    outputs: Outputs,
    ttl: Duration,
    weight: u32,
}

/// Expires each entry `ttl` after it was stored (models may have shorter lifetimes than the server default).
struct PerEntryTtl;

impl moka::Expiry<CacheKey, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _key: &CacheKey, value: &Entry, _created_at: Instant) -> Option<Duration> {
        Some(value.ttl)
    }

    /// A refreshed answer (`no-cache`, `"cache": false`) lives its full lifetime from now, not the old entry's rest.
    fn expire_after_update(&self, _key: &CacheKey, value: &Entry, _updated_at: Instant, _left: Option<Duration>) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// Bytes an entry is charged: its tensors' data plus names and shapes, and a fixed overhead per tensor.
pub fn weight_of(outputs: &[crate::protocol::NamedTensor]) -> usize {
    outputs.iter().map(|o| o.tensor.data().len() + o.name.len() + o.tensor.shape().len() * 8 + 64).sum()
}

pub struct LocalTier {
    cache: Cache<CacheKey, Entry>,
    bytes: Gauge,
    entries: Gauge,
}

impl LocalTier {
    pub fn new(max_bytes: u64, metrics: &Metrics) -> LocalTier {
        let eviction = |reason: &'static str| metrics.counter(catalogue::CACHE_EVICTIONS, &[("reason", reason)]);
        let (size, expired, replaced) = (eviction("size"), eviction("expired"), eviction("replaced"));
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_key: &CacheKey, entry: &Entry| entry.weight)
            .expire_after(PerEntryTtl)
            .eviction_listener(move |_key, _entry, cause| counter_for(cause, &size, &expired, &replaced).increment(1))
            .build();
        LocalTier { cache, bytes: metrics.gauge(catalogue::CACHE_BYTES, &[]), entries: metrics.gauge(catalogue::CACHE_ENTRIES, &[]) }
    }

    pub async fn get(&self, key: &CacheKey) -> Option<Outputs> {
        self.cache.get(key).await.map(|e| e.outputs)
    }

    /// Stores an answer whose weight the caller has already checked against the entry limit.
    pub async fn insert(&self, key: CacheKey, outputs: Outputs, weight: usize, ttl: Duration) {
        let weight = u32::try_from(weight).unwrap_or(u32::MAX);
        self.cache.insert(key, Entry { outputs, ttl, weight }).await;
    }

    /// Applies pending evictions and publishes the size gauges (run periodically, not on the request path).
    pub async fn upkeep(&self) {
        self.cache.run_pending_tasks().await;
        self.bytes.set(self.cache.weighted_size() as f64);
        self.entries.set(self.cache.entry_count() as f64);
    }

    /// Bytes currently held (after pending evictions have run).
    pub async fn weighted_size(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.weighted_size()
    }
}

fn counter_for<'a>(cause: RemovalCause, size: &'a Counter, expired: &'a Counter, replaced: &'a Counter) -> &'a Counter {
    match cause {
        RemovalCause::Size => size,
        RemovalCause::Expired => expired,
        // Explicit removals (invalidation) are not evictions; counting them with replacements keeps one series less.
        RemovalCause::Replaced | RemovalCause::Explicit => replaced,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::NamedTensor;
    use crate::tensor::{DataType, Tensor};
    use std::sync::Arc;

    fn outputs(bytes: usize) -> Outputs {
        let t = Tensor::new(DataType::U8, vec![bytes], bytes::Bytes::from(vec![1u8; bytes])).unwrap();
        Arc::from(vec![NamedTensor { name: "o".into(), tensor: t }])
    }

    #[tokio::test]
    async fn bounded_by_bytes_and_ttl() {
        let tier = LocalTier::new(10_000, &Metrics::new(false));
        for i in 0..100u8 {
            let out = outputs(1000);
            tier.insert(CacheKey([i; 32]), out.clone(), weight_of(&out), Duration::from_secs(60)).await;
        }
        let held = tier.weighted_size().await;
        assert!(held <= 10_000, "held {held} bytes over a 10,000-byte bound");
        assert!(held > 0);

        let out = outputs(10);
        tier.insert(CacheKey([200; 32]), out.clone(), weight_of(&out), Duration::from_millis(50)).await;
        assert!(tier.get(&CacheKey([200; 32])).await.is_some());
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(tier.get(&CacheKey([200; 32])).await.is_none(), "expired after its ttl");
    }
}

//! The response cache: answers repeated requests without running the model, and runs identical requests that arrive
//! together only once.
//!
//! A request of a cache-enabled model goes through [`ResponseCache::run`] between validation and the scheduler:
//!
//! 1. its [`key`] is computed from the model identity, the validated inputs and the requested outputs;
//! 2. the local tier ([`local`], a size-bounded `moka` cache weighed in bytes) is asked;
//! 3. on a miss, [`coalesce`] makes the first request the leader of a *flight* and identical requests its followers;
//!    the leader's task asks the Redis tier ([`redis`], when configured), else runs the model;
//! 4. a successful answer is stored in every tier before the flight ends (errors never are); the Redis write happens
//!    in the background.
//!
//! Entries are tensors, not encodings, so one entry answers JSON and binary, HTTP and gRPC alike.

pub mod codec;
pub mod coalesce;
pub mod key;
pub mod local;
pub mod redis;

use crate::config::{CacheConfig, CacheMode};
use crate::metrics::{catalogue, Metrics};
use crate::protocol::{ApiError, NamedTensor};
use ::metrics::Counter;
use axum::http::StatusCode;
use coalesce::{Coalescer, Joined, Origin};
use key::CacheKey;
use local::LocalTier;
use redis::RedisTier;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// A cached answer: the requested outputs, in the order asked. Cloning shares the tensors' bytes.
pub type Outputs = Arc<[NamedTensor]>;

/// Why the cache cannot start (checked at server start, so a bad set-up is found at deploy time).
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache.redis.url '{url}' is not a valid Redis URL: {message}")]
    RedisUrl { url: String, message: String },
}

/// How a request was answered, for the `x-sluice-cache` header, the gRPC `sluice_cache` parameter and the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheStatus {
    /// From a cache tier, without running the model.
    Hit,
    /// The model ran for this request; its answer is now cached.
    Miss,
    /// An identical request was already running: this one shared its answer.
    Coalesced,
    /// The client asked for a fresh answer (`"cache": false`, `Cache-Control: no-cache` or `no-store`).
    Bypass,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Coalesced => "coalesced",
            CacheStatus::Bypass => "bypass",
        }
    }
}

/// What the client allows the cache to do with its request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Answer from the cache when possible, share identical executions, store the answer.
    Use,
    /// Run the model (no lookup, no sharing) and store the fresh answer: `"cache": false`, `Cache-Control: no-cache`.
    Refresh,
    /// Run the model and store nothing: `Cache-Control: no-store`.
    NoStore,
}

/// The cache settings and counters of one cache-enabled model version (made when it loads).
pub struct ModelCache {
    pub ttl: Duration,
    /// BLAKE3 of the model file: part of every key, so a replaced file never serves old entries.
    pub fingerprint: [u8; 32],
    results: [Counter; 4],
}

impl ModelCache {
    pub fn new(model: &str, ttl: Duration, fingerprint: [u8; 32], metrics: &Metrics) -> ModelCache {
        let result = |r: CacheStatus| metrics.counter(catalogue::CACHE_REQUESTS, &[("model", model), ("result", r.as_str())]);
        ModelCache {
            ttl,
            fingerprint,
            results: [result(CacheStatus::Hit), result(CacheStatus::Miss), result(CacheStatus::Coalesced), result(CacheStatus::Bypass)],
        }
    }

    fn count(&self, status: CacheStatus) {
        self.results[status as usize].increment(1);
    }
}

/// The server's response cache: its tiers and the flights in the air.
pub struct ResponseCache {
    local: Option<LocalTier>,
    redis: Option<RedisTier>,
    flights: Arc<Coalescer>,
    coalesce: bool,
    max_entry_bytes: usize,
    local_hits: Counter,
    redis_hits: Counter,
    too_large: Counter,
}

impl ResponseCache {
    /// Builds the tiers `config.mode` asks for. Redis need not be reachable yet (the tier is fail-open); a malformed
    /// URL is an error.
    pub fn new(config: &CacheConfig, metrics: &Metrics) -> Result<ResponseCache, CacheError> {
        let local = matches!(config.mode, CacheMode::Local | CacheMode::Tiered).then(|| LocalTier::new(config.max_bytes, metrics));
        let redis = match config.mode {
            CacheMode::Redis | CacheMode::Tiered => Some(RedisTier::new(&config.redis, metrics)?),
            CacheMode::Local => None,
        };
        let hits = |tier: &'static str| metrics.counter(catalogue::CACHE_TIER_HITS, &[("tier", tier)]);
        Ok(ResponseCache {
            local,
            redis,
            flights: Arc::default(),
            coalesce: config.coalesce,
            max_entry_bytes: config.max_entry_bytes,
            local_hits: hits("local"),
            redis_hits: hits("redis"),
            too_large: metrics.counter(catalogue::CACHE_NOT_STORED, &[("reason", "too_large")]),
        })
    }

    /// Answers a request with key `key` from the cache, from an identical request in flight, or by running `compute`
    /// (the model). `wait` is this request's own deadline: past it, this request alone gets 504 while a shared
    /// execution goes on for the others (and still fills the cache).
    pub async fn run<F>(self: &Arc<Self>, key: CacheKey, model: &Arc<ModelCache>, model_name: &str, policy: Policy, wait: Option<Duration>, compute: F) -> (Result<Outputs, ApiError>, CacheStatus)
    where
        F: Future<Output = Result<Outputs, ApiError>> + Send + 'static,
    {
        let waited = async {
            match policy {
                Policy::Refresh | Policy::NoStore => {
                    let result = compute.await;
                    if let (Policy::Refresh, Ok(outputs)) = (policy, &result) {
                        self.store(key, outputs, model.ttl).await;
                    }
                    (result, CacheStatus::Bypass)
                }
                Policy::Use => {
                    if let Some(hit) = self.local_get(&key).await {
                        return (Ok(hit), CacheStatus::Hit);
                    }
                    if !self.coalesce {
                        return match self.lookup_or_compute(key, model.ttl, compute).await {
                            Ok((outputs, Origin::Cached)) => (Ok(outputs), CacheStatus::Hit),
                            Ok((outputs, Origin::Computed)) => (Ok(outputs), CacheStatus::Miss),
                            Err(e) => (Err(e), CacheStatus::Miss),
                        };
                    }
                    let (slot, status) = match self.flights.join(key) {
                        Joined::Follower(slot) => (slot, CacheStatus::Coalesced),
                        Joined::Leader(flight, slot) => {
                            // The execution belongs to the flight, not to this request: if this client goes away,
                            // the others still get their answer.
                            let cache = self.clone();
                            let ttl = model.ttl;
                            tokio::spawn(async move {
                                let result = cache.lookup_or_compute(key, ttl, compute).await;
                                flight.finish(result);
                            });
                            (slot, CacheStatus::Miss)
                        }
                    };
                    match coalesce::wait(slot).await {
                        Some(Ok((outputs, origin))) => {
                            let status = if status == CacheStatus::Miss && origin == Origin::Cached { CacheStatus::Hit } else { status };
                            (Ok(outputs), status)
                        }
                        Some(Err(e)) => (Err(e), status),
                        None => (Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the shared execution ended without an answer (internal error)")), status),
                    }
                }
            }
        };
        let (result, status) = match wait {
            None => waited.await,
            Some(limit) => match tokio::time::timeout(limit, waited).await {
                Ok(answered) => answered,
                Err(_) => (
                    Err(ApiError::new(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!("no answer from model '{model_name}' within the request's timeout of {limit:?}"),
                    )),
                    if policy == Policy::Use { CacheStatus::Miss } else { CacheStatus::Bypass },
                ),
            },
        };
        model.count(status);
        (result, status)
    }

    async fn local_get(&self, key: &CacheKey) -> Option<Outputs> {
        let hit = self.local.as_ref()?.get(key).await?;
        self.local_hits.increment(1);
        Some(hit)
    }

    /// The leader's work: the local tier once more (a flight for this key may have finished between this request's
    /// miss and its joining), then Redis, then the model; a computed answer is stored before returning.
    async fn lookup_or_compute<F>(&self, key: CacheKey, ttl: Duration, compute: F) -> Result<(Outputs, Origin), ApiError>
    where
        F: Future<Output = Result<Outputs, ApiError>>,
    {
        if let Some(hit) = self.local_get(&key).await {
            return Ok((hit, Origin::Cached));
        }
        if let Some(redis) = &self.redis {
            if let Some(found) = redis.get(&key).await {
                self.redis_hits.increment(1);
                let outputs: Outputs = Arc::from(found);
                // Entries are bounded here too: another replica (or another writer) may have stored a larger one.
                let weight = local::weight_of(&outputs);
                if let (Some(local), true) = (&self.local, weight <= self.max_entry_bytes) {
                    local.insert(key, outputs.clone(), weight, ttl).await;
                }
                return Ok((outputs, Origin::Cached));
            }
        }
        let outputs = compute.await?;
        self.store(key, &outputs, ttl).await;
        Ok((outputs, Origin::Computed))
    }

    async fn store(&self, key: CacheKey, outputs: &Outputs, ttl: Duration) {
        let weight = local::weight_of(outputs);
        if weight > self.max_entry_bytes {
            self.too_large.increment(1);
            return;
        }
        if let Some(local) = &self.local {
            local.insert(key, outputs.clone(), weight, ttl).await;
        }
        if let Some(redis) = &self.redis {
            redis.put(&key, outputs, ttl);
        }
    }

    /// Periodic housekeeping: pending evictions and the size gauges.
    pub async fn upkeep(&self) {
        if let Some(local) = &self.local {
            local.upkeep().await;
        }
    }

    /// Flights in the air (for tests and debugging).
    pub fn in_flight(&self) -> usize {
        self.flights.in_flight()
    }
}

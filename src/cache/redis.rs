//! The shared tier: entries in Redis, so replicas behind a load balancer share each other's hits.
//!
//! Redis is an optimisation here, never a dependency: every operation is bounded by `cache.redis.timeout`, and any
//! failure (timeout, refused connection, error reply, corrupt value) makes the request a miss that the model answers
//! (*fail-open*). A failure opens a circuit breaker: requests skip Redis while a probe task PINGs every connection
//! each `retry_after`, and the breaker closes once all of them answer, so an outage costs requests one timeout in
//! all, not one each, and sharing resumes on its own when Redis is back. Connections are `redis`' `ConnectionManager`s,
//! which reconnect after an error (the probe's PINGs are what drives that during an outage); `pool_size` of them are
//! used in turn, each multiplexing many requests.
//!
//! Writes happen in background tasks (a request never waits for a SET), at most [`MAX_WRITES_IN_FLIGHT`] at once:
//! beyond that a write is skipped rather than queued, so an outage cannot pile up tasks or memory.

use super::codec;
use super::key::CacheKey;
use super::CacheError;
use crate::config::RedisConfig;
use crate::metrics::{catalogue, Metrics};
use crate::protocol::NamedTensor;
use ::metrics::{Counter, Histogram};
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Background SETs allowed at once.
pub const MAX_WRITES_IN_FLIGHT: usize = 64;

/// At most one warning per this period while Redis keeps failing.
const LOG_PERIOD: Duration = Duration::from_secs(10);

/// Why an operation did not get an answer from Redis (the `kind` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    Timeout,
    Connection,
    Response,
    Corrupt,
    Skipped,
}

impl Failure {
    fn label(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Connection => "connection",
            Failure::Response => "response",
            Failure::Corrupt => "corrupt",
            Failure::Skipped => "skipped",
        }
    }

    fn of(e: &redis::RedisError) -> Failure {
        if e.is_timeout() {
            Failure::Timeout
        } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
            Failure::Connection
        } else {
            Failure::Response
        }
    }
}

#[derive(Clone, Copy)]
enum Op {
    Get = 0,
    Set = 1,
}

impl Op {
    fn label(self) -> &'static str {
        match self {
            Op::Get => "get",
            Op::Set => "set",
        }
    }
}

/// The breaker and the rate-limited log.
#[derive(Default)]
struct Health {
    /// Redis is skipped (a probe task is running).
    open: bool,
    last_log: Option<Instant>,
    suppressed: u64,
}

struct Counters {
    /// [op][failure]
    errors: [[Counter; 5]; 2],
    duration: [Histogram; 2],
}

struct Inner {
    connections: Vec<ConnectionManager>,
    next: AtomicUsize,
    prefix: String,
    timeout: Duration,
    retry_after: Duration,
    health: Mutex<Health>,
    /// Set while the breaker is open: read on every operation without taking the lock.
    open: std::sync::atomic::AtomicBool,
    writes: Arc<Semaphore>,
    counters: Counters,
}

/// The Redis tier. Cheap to clone.
#[derive(Clone)]
pub struct RedisTier(Arc<Inner>);

impl RedisTier {
    /// Checks the URL and prepares the connections without connecting: Redis may be down when Sluice starts (the
    /// tier is fail-open) and is connected to on first use. Must be called inside a Tokio runtime.
    pub fn new(config: &RedisConfig, metrics: &Metrics) -> Result<RedisTier, CacheError> {
        let bad_url = |message: String| CacheError::RedisUrl { url: config.url.clone(), message };
        let client = redis::Client::open(config.url.as_str()).map_err(|e| bad_url(e.to_string()))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.timeout))
            // Reconnection is retried by the next operation after the breaker's period, not in a loop here.
            .set_number_of_retries(1);
        let connections = (0..config.pool_size.max(1))
            .map(|_| ConnectionManager::new_lazy_with_config(client.clone(), manager_config.clone()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad_url(e.to_string()))?;
        let error = |op: Op, f: Failure| metrics.counter(catalogue::CACHE_REDIS_ERRORS, &[("op", op.label()), ("kind", f.label())]);
        let errors_of = |op: Op| [Failure::Timeout, Failure::Connection, Failure::Response, Failure::Corrupt, Failure::Skipped].map(|f| error(op, f));
        let duration = |op: Op| metrics.histogram(catalogue::CACHE_REDIS_DURATION, &[("op", op.label())]);
        Ok(RedisTier(Arc::new(Inner {
            connections,
            next: AtomicUsize::new(0),
            prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            retry_after: config.retry_after,
            health: Mutex::new(Health::default()),
            open: std::sync::atomic::AtomicBool::new(false),
            writes: Arc::new(Semaphore::new(MAX_WRITES_IN_FLIGHT)),
            counters: Counters { errors: [errors_of(Op::Get), errors_of(Op::Set)], duration: [duration(Op::Get), duration(Op::Set)] },
        })))
    }

    /// The entry under `key`, or `None` on a miss or any failure.
    pub async fn get(&self, key: &CacheKey) -> Option<Vec<NamedTensor>> {
        let inner = &self.0;
        if !inner.allowed(Op::Get) {
            return None;
        }
        let command = redis::cmd("GET").arg(inner.redis_key(key)).clone();
        let value: Option<Vec<u8>> = inner.run(Op::Get, command).await?;
        let value = value?;
        match codec::decode(&bytes::Bytes::from(value)) {
            Ok(outputs) => Some(outputs),
            Err(e) => {
                // Written by something else, or damaged: a miss; the fresh answer will overwrite it.
                inner.counters.errors[Op::Get as usize][Failure::Corrupt as usize].increment(1);
                tracing::debug!(key = %key.to_hex(), error = %e, "corrupt entry in Redis, ignored");
                None
            }
        }
    }

    /// Stores `outputs` under `key` for `ttl`, in the background.
    pub fn put(&self, key: &CacheKey, outputs: &[NamedTensor], ttl: Duration) {
        let inner = self.0.clone();
        if !inner.allowed(Op::Set) {
            return;
        }
        let Ok(permit) = inner.writes.clone().try_acquire_owned() else {
            inner.counters.errors[Op::Set as usize][Failure::Skipped as usize].increment(1);
            return;
        };
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let command = redis::cmd("SET").arg(inner.redis_key(key)).arg(codec::encode(outputs)).arg("PX").arg(millis).clone();
        tokio::spawn(async move {
            let _: Option<()> = inner.run(Op::Set, command).await;
            drop(permit);
        });
    }
}

impl Inner {
    fn redis_key(&self, key: &CacheKey) -> String {
        format!("{}{}", self.prefix, key.to_hex())
    }

    /// False while the breaker is open (the operation is counted as skipped).
    fn allowed(&self, op: Op) -> bool {
        if self.open.load(Ordering::Acquire) {
            self.counters.errors[op as usize][Failure::Skipped as usize].increment(1);
            return false;
        }
        true
    }

    /// Runs one command on the next connection, bounded by the timeout; `None` on any failure.
    async fn run<T: redis::FromRedisValue>(self: &Arc<Self>, op: Op, command: redis::Cmd) -> Option<T> {
        let mut connection = self.connections[self.next.fetch_add(1, Ordering::Relaxed) % self.connections.len()].clone();
        let started = Instant::now();
        let outcome = match tokio::time::timeout(self.timeout, command.query_async::<T>(&mut connection)).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => Err((Failure::of(&e), e.to_string())),
            Err(_) => Err((Failure::Timeout, format!("no answer within {:?}", self.timeout))),
        };
        match outcome {
            Ok(value) => {
                self.counters.duration[op as usize].record(started.elapsed().as_secs_f64());
                Some(value)
            }
            Err((failure, message)) => {
                self.counters.errors[op as usize][failure as usize].increment(1);
                self.failed(op, failure, &message);
                None
            }
        }
    }

    /// Opens the breaker (starting the probe if it is not running) and logs, at most once per [`LOG_PERIOD`].
    fn failed(self: &Arc<Self>, op: Op, failure: Failure, message: &str) {
        let now = Instant::now();
        let mut health = self.health.lock();
        // A reply error (e.g. a Redis out of memory refusing writes) says nothing about reachability: no need to stop.
        if failure != Failure::Response && !health.open {
            health.open = true;
            self.open.store(true, Ordering::Release);
            tokio::spawn(self.clone().probe());
        }
        if health.last_log.is_none_or(|at| now.duration_since(at) >= LOG_PERIOD) {
            tracing::warn!(
                op = op.label(),
                kind = failure.label(),
                error = message,
                suppressed = health.suppressed,
                retry_in_ms = self.retry_after.as_millis() as u64,
                "Redis cache tier failed; serving without it (fail-open)"
            );
            health.last_log = Some(now);
            health.suppressed = 0;
        } else {
            health.suppressed += 1;
        }
    }

    /// While the breaker is open: every `retry_after`, PING each connection (which also makes a broken one reconnect);
    /// once all answer, close the breaker.
    async fn probe(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.retry_after).await;
            let mut all = true;
            for connection in &self.connections {
                let mut connection = connection.clone();
                let ping = redis::cmd("PING");
                let answered = tokio::time::timeout(self.timeout.max(Duration::from_millis(100)), ping.query_async::<String>(&mut connection)).await;
                all &= matches!(answered, Ok(Ok(_)));
            }
            if all {
                let mut health = self.health.lock();
                health.open = false;
                self.open.store(false, Ordering::Release);
                tracing::info!(suppressed = health.suppressed, "Redis cache tier answers again; sharing resumes");
                health.suppressed = 0;
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bad_urls_are_refused_and_an_unreachable_redis_is_not() {
        let metrics = Metrics::new(false);
        let config = |url: &str| RedisConfig { url: url.into(), ..RedisConfig::default() };
        assert!(matches!(RedisTier::new(&config("http://x"), &metrics), Err(CacheError::RedisUrl { .. })));
        // Nothing listens on port 1: construction succeeds, operations fail open and then skip while the breaker is open.
        let tier = RedisTier::new(&RedisConfig { timeout: Duration::from_millis(200), ..config("redis://127.0.0.1:1") }, &metrics).unwrap();
        let started = Instant::now();
        assert!(tier.get(&CacheKey([1; 32])).await.is_none());
        assert!(started.elapsed() < Duration::from_secs(2));
        let started = Instant::now();
        for _ in 0..100 {
            assert!(tier.get(&CacheKey([1; 32])).await.is_none());
        }
        assert!(started.elapsed() < Duration::from_millis(100), "the open breaker skips Redis: {:?}", started.elapsed());
    }
}

//! The shared tier: entries in Redis, so replicas behind a load balancer share each other's hits.
//!
//! Redis is an optimisation here, never a dependency: every operation is bounded by `cache.redis.timeout`, and any
//! failure (timeout, refused connection, error reply, corrupt value) makes the request a miss that the model answers
//! (*fail-open*). A failure to reach Redis opens a circuit breaker: requests skip Redis while a probe task PINGs every
//! connection each `retry_after`, and the breaker closes once all of them answer, so an outage costs requests one
//! timeout in all, not one each, and sharing resumes on its own when Redis is back. Connections are `redis`'
//! `ConnectionManager`s, which reconnect after an I/O error; the probe replaces any whose PING fails with a fresh one,
//! so recovery does not depend on which errors the crate reconnects after. `pool_size` of them are used in turn, each
//! multiplexing many requests.
//!
//! Nothing here needs Redis to be up, or even a runtime, when the tier is built: the connections are made on first
//! use, and - when built inside a Tokio runtime, as the server does - a background task connects them right away, so
//! the first requests neither pay for the connection nor wait on a Redis that is down at start (the warm-up opens the
//! breaker instead).
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
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Background SETs allowed at once.
pub const MAX_WRITES_IN_FLIGHT: usize = 64;

/// At most one warning per this period while Redis keeps failing.
const LOG_PERIOD: Duration = Duration::from_secs(10);

/// The longest expiry written (about 35 000 years): Redis refuses a `PX` that overflows its clock, and a refused SET
/// would be an error on every write.
const MAX_TTL_MS: u64 = 1 << 50;

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
    const ALL: [Failure; 5] = [Failure::Timeout, Failure::Connection, Failure::Response, Failure::Corrupt, Failure::Skipped];

    fn label(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Connection => "connection",
            Failure::Response => "response",
            Failure::Corrupt => "corrupt",
            Failure::Skipped => "skipped",
        }
    }

    /// `Response` is Redis answering the command with an error reply (a Redis out of memory or a read-only replica
    /// refusing writes, a foreign key of another type) or a value of the wrong type: Redis is there, and the
    /// connection is fine. Anything else - I/O, a connection that could not be set up (refused, authentication, a
    /// server that does not speak RESP) - is `Connection`: the connection is not usable.
    fn of(e: &redis::RedisError) -> Failure {
        if e.is_timeout() {
            Failure::Timeout
        } else if matches!(e.kind(), redis::ErrorKind::Server(_) | redis::ErrorKind::Extension | redis::ErrorKind::UnexpectedReturnType) {
            Failure::Response
        } else {
            Failure::Connection
        }
    }

    /// Whether this failure says Redis cannot be reached (or is too slow), so requests should stop trying for a while.
    /// An error reply or a bad value came from a Redis that answers: the next request may well succeed, and it costs
    /// no timeout to find out.
    fn opens_breaker(self) -> bool {
        matches!(self, Failure::Timeout | Failure::Connection)
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
    /// When the last line was logged: failures are logged at most once per [`LOG_PERIOD`].
    last_log: Option<Instant>,
    /// Failures not logged since the last line.
    suppressed: u64,
    /// The last line logged reported an outage (the breaker opening): the recovery is logged too, so the log never
    /// ends on an outage that is over.
    outage_logged: bool,
}

struct Counters {
    /// [op][failure]
    errors: [[Counter; 5]; 2],
    duration: [Histogram; 2],
}

struct Inner {
    client: redis::Client,
    manager_config: ConnectionManagerConfig,
    pool_size: usize,
    /// Made on first use, inside the runtime: making a `ConnectionManager` spawns a task, and `new` must not need one.
    /// A slot's manager is replaced by the probe when its PING fails: a `ConnectionManager` reconnects by itself
    /// only after I/O errors, and one whose connection setup failed otherwise (authentication, a server that is still
    /// starting) would keep returning that error.
    connections: OnceLock<Vec<Mutex<ConnectionManager>>>,
    next: AtomicUsize,
    prefix: String,
    timeout: Duration,
    /// A probe's or the warm-up's wait for one PING: a (re)connection and an answer. No request waits on it.
    probe_timeout: Duration,
    retry_after: Duration,
    health: Mutex<Health>,
    /// Set while the breaker is open: read on every operation without taking the lock.
    open: AtomicBool,
    writes: Arc<Semaphore>,
    counters: Counters,
}

/// The Redis tier. Cheap to clone.
#[derive(Clone)]
pub struct RedisTier(Arc<Inner>);

/// `url` without its password, for messages: a URL may hold credentials (`redis://user:secret@host`).
fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end + 3 => format!("{}***{}", &url[..scheme_end + 3], &url[at..]),
        _ => url.to_string(),
    }
}

impl RedisTier {
    /// Checks the URL and prepares the connections without waiting on Redis: Redis may be down when Sluice starts (the
    /// tier is fail-open). Inside a Tokio runtime the connections are made in the background at once; elsewhere, on
    /// first use.
    pub fn new(config: &RedisConfig, metrics: &Metrics) -> Result<RedisTier, CacheError> {
        let client = redis::Client::open(config.url.as_str()).map_err(|e| CacheError::RedisUrl { url: redacted(&config.url), message: e.to_string() })?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.timeout))
            // A failed (re)connection is tried once more, then left to the next operation: during an outage that is
            // the probe, once per `retry_after`, not a reconnection loop per connection.
            .set_number_of_retries(1);
        let error = |op: Op, f: Failure| metrics.counter(catalogue::CACHE_REDIS_ERRORS, &[("op", op.label()), ("kind", f.label())]);
        let errors_of = |op: Op| Failure::ALL.map(|f| error(op, f));
        let duration = |op: Op| metrics.histogram(catalogue::CACHE_REDIS_DURATION, &[("op", op.label())]);
        let tier = RedisTier(Arc::new(Inner {
            client,
            manager_config,
            pool_size: config.pool_size.max(1),
            connections: OnceLock::new(),
            next: AtomicUsize::new(0),
            prefix: config.key_prefix.clone(),
            timeout: config.timeout,
            probe_timeout: config.connect_timeout.saturating_add(config.timeout),
            retry_after: config.retry_after,
            health: Mutex::new(Health::default()),
            open: AtomicBool::new(false),
            writes: Arc::new(Semaphore::new(MAX_WRITES_IN_FLIGHT)),
            counters: Counters { errors: [errors_of(Op::Get), errors_of(Op::Set)], duration: [duration(Op::Get), duration(Op::Set)] },
        }));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(warm_up(Arc::downgrade(&tier.0)));
        }
        Ok(tier)
    }

    /// The entry under `key`, or `None` on a miss or any failure (within about `timeout`; at once while the breaker is
    /// open).
    pub async fn get(&self, key: &CacheKey) -> Option<Vec<NamedTensor>> {
        let inner = &self.0;
        if !inner.allowed(Op::Get) {
            return None;
        }
        let mut command = redis::cmd("GET");
        command.arg(inner.redis_key(key));
        let value: Option<Vec<u8>> = inner.run(Op::Get, &command).await?;
        match codec::decode(&bytes::Bytes::from(value?)) {
            Ok(outputs) => Some(outputs),
            Err(e) => {
                // Damaged, or written by another program under our prefix: a miss, and the fresh answer overwrites it.
                // Not deleted here: a good entry may have replaced it since, and the overwrite comes anyway.
                inner.counters.errors[Op::Get as usize][Failure::Corrupt as usize].increment(1);
                inner.failed(Op::Get.label(), Failure::Corrupt, &format!("entry {}{}: {e}", inner.prefix, key.to_hex()));
                None
            }
        }
    }

    /// Stores `outputs` under `key` for `ttl` (at least 1 ms), in the background: returns at once, and a failure is
    /// only counted. Skipped (counted as `skipped`) while the breaker is open, when [`MAX_WRITES_IN_FLIGHT`] writes are
    /// already in flight, outside a Tokio runtime, or when the answer is outside the entry format's bounds.
    pub fn put(&self, key: &CacheKey, outputs: &[NamedTensor], ttl: Duration) {
        let inner = &self.0;
        if !inner.allowed(Op::Set) {
            return;
        }
        let skipped = || inner.counters.errors[Op::Set as usize][Failure::Skipped as usize].increment(1);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            skipped();
            return;
        };
        let Ok(permit) = inner.writes.clone().try_acquire_owned() else {
            skipped();
            return;
        };
        let value = match codec::encode(outputs) {
            Ok(value) => value,
            Err(e) => {
                skipped();
                inner.failed(Op::Set.label(), Failure::Skipped, &e.to_string());
                return;
            }
        };
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).clamp(1, MAX_TTL_MS);
        let mut command = redis::cmd("SET");
        command.arg(inner.redis_key(key)).arg(value).arg("PX").arg(millis);
        let inner = inner.clone();
        runtime.spawn(async move {
            let _: Option<()> = inner.run(Op::Set, &command).await;
            drop(permit);
        });
    }

    /// Whether Redis is being skipped after a failure (for tests and debugging).
    pub fn breaker_open(&self) -> bool {
        self.0.open.load(Ordering::Acquire)
    }
}

impl Inner {
    fn redis_key(&self, key: &CacheKey) -> String {
        format!("{}{}", self.prefix, key.to_hex())
    }

    /// A connection that connects on first use (needs a runtime). `None` only if `redis` refused our (fixed, valid)
    /// configuration.
    fn new_connection(&self) -> Option<ConnectionManager> {
        ConnectionManager::new_lazy_with_config(self.client.clone(), self.manager_config.clone()).ok()
    }

    /// The pool, made on first use. Empty only if `redis` refused our configuration.
    fn pool(&self) -> &[Mutex<ConnectionManager>] {
        self.connections.get_or_init(|| (0..self.pool_size).filter_map(|_| self.new_connection().map(Mutex::new)).collect())
    }

    /// The next connection in turn.
    fn connection(&self) -> Option<ConnectionManager> {
        let pool = self.pool();
        match pool.len() {
            0 => None,
            n => Some(pool[self.next.fetch_add(1, Ordering::Relaxed) % n].lock().clone()),
        }
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
    async fn run<T: redis::FromRedisValue>(self: &Arc<Self>, op: Op, command: &redis::Cmd) -> Option<T> {
        let started = Instant::now();
        let outcome = match self.connection() {
            None => Err((Failure::Connection, "no Redis connection could be made".to_string())),
            Some(mut connection) => match tokio::time::timeout(self.timeout, command.query_async::<T>(&mut connection)).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(e)) => Err((Failure::of(&e), e.to_string())),
                Err(_) => Err((Failure::Timeout, format!("no answer within {:?}", self.timeout))),
            },
        };
        match outcome {
            Ok(value) => {
                self.counters.duration[op as usize].record(started.elapsed().as_secs_f64());
                Some(value)
            }
            Err((failure, message)) => {
                self.counters.errors[op as usize][failure as usize].increment(1);
                self.failed(op.label(), failure, &message);
                None
            }
        }
    }

    /// Opens the breaker when `failure` says Redis is out of reach (starting the probe if it is not running) and logs,
    /// at most once per [`LOG_PERIOD`] (the line says how many failures were left out since the last one).
    fn failed(self: &Arc<Self>, op: &'static str, failure: Failure, message: &str) {
        let now = Instant::now();
        let mut health = self.health.lock();
        let mut opened = false;
        if failure.opens_breaker() && !health.open {
            // The probe is what closes the breaker: without a runtime to run it on (cannot happen in an async
            // operation) the breaker stays closed rather than open for good.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                health.open = true;
                self.open.store(true, Ordering::Release);
                runtime.spawn(probe(Arc::downgrade(self), self.retry_after));
                opened = true;
            }
        }
        if health.last_log.is_some_and(|at| now.duration_since(at) < LOG_PERIOD) {
            health.suppressed += 1;
            return;
        }
        let suppressed = std::mem::take(&mut health.suppressed);
        health.last_log = Some(now);
        health.outage_logged |= opened;
        drop(health);
        if opened {
            let retry_in_ms = self.retry_after.as_millis() as u64;
            tracing::warn!(op, kind = failure.label(), error = message, suppressed, retry_in_ms, "Redis cache tier failed; serving without it (fail-open)");
        } else {
            tracing::warn!(op, kind = failure.label(), error = message, suppressed, "Redis cache tier operation failed; request served without it (fail-open)");
        }
    }

    /// Closes the breaker: requests use Redis again. Logged when the outage was (a flapping Redis logs at most one
    /// outage and one recovery per [`LOG_PERIOD`]).
    fn recovered(&self) {
        let mut health = self.health.lock();
        health.open = false;
        self.open.store(false, Ordering::Release);
        if !std::mem::take(&mut health.outage_logged) {
            return;
        }
        let suppressed = std::mem::take(&mut health.suppressed);
        health.last_log = Some(Instant::now());
        drop(health);
        tracing::info!(suppressed, "Redis cache tier answers again; sharing resumes");
    }

    /// PINGs every connection at once (which also makes a broken one reconnect), and replaces each one that fails by a
    /// fresh one for the next try; the first failure, if any.
    async fn ping_all(&self) -> Result<(), (Failure, String)> {
        let pool = self.pool();
        let mut pings = tokio::task::JoinSet::new();
        for (slot, connection) in pool.iter().enumerate() {
            let mut connection = connection.lock().clone();
            let limit = self.probe_timeout;
            pings.spawn(async move {
                let answer = match tokio::time::timeout(limit, redis::cmd("PING").query_async::<String>(&mut connection)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err((Failure::of(&e), e.to_string())),
                    Err(_) => Err((Failure::Timeout, format!("no answer to PING within {limit:?}"))),
                };
                (slot, answer)
            });
        }
        if pings.is_empty() {
            return Err((Failure::Connection, "no Redis connection could be made".to_string()));
        }
        let mut outcome = Ok(());
        while let Some(joined) = pings.join_next().await {
            let answer = match joined {
                Ok((slot, Err(failure))) => {
                    if let (Some(fresh), Some(connection)) = (self.new_connection(), pool.get(slot)) {
                        *connection.lock() = fresh;
                    }
                    Err(failure)
                }
                Ok((_, Ok(()))) => Ok(()),
                Err(e) => Err((Failure::Connection, format!("PING task failed: {e}"))),
            };
            if outcome.is_ok() {
                outcome = answer;
            }
        }
        outcome
    }
}

/// Connects the pool in the background as the tier is built. A Redis that does not answer opens the breaker (and says
/// so in the log) before requests wait on it; one that answers has its connections ready for the first request.
/// Holds the tier weakly: a tier dropped meanwhile is not kept alive.
async fn warm_up(tier: Weak<Inner>) {
    let Some(inner) = tier.upgrade() else { return };
    if let Err((failure, message)) = inner.ping_all().await {
        // Counted nowhere (no request was served without Redis yet); logged and, for an unreachable Redis, skipped.
        inner.failed("connect", failure, &message);
    }
}

/// While the breaker is open: every `retry_after`, PING each connection; once all answer, close the breaker. Holds the
/// tier weakly, so a tier dropped during an outage stops probing (and frees its connections).
async fn probe(tier: Weak<Inner>, retry_after: Duration) {
    loop {
        tokio::time::sleep(retry_after).await;
        let Some(inner) = tier.upgrade() else { return };
        if inner.ping_all().await.is_ok() {
            inner.recovered();
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::ScalingSnapshot;
    use crate::tensor::{DataType, Tensor};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    fn config(url: &str) -> RedisConfig {
        RedisConfig { url: url.into(), timeout: Duration::from_millis(100), retry_after: Duration::from_millis(200), ..RedisConfig::default() }
    }

    fn outputs() -> Vec<NamedTensor> {
        vec![NamedTensor { name: "y".into(), tensor: Tensor::from_slice(DataType::F32, vec![1, 2], &[1.0f32, 2.0]).unwrap() }]
    }

    /// The value of `sluice_cache_redis_errors_total{op, kind}`.
    fn errors(metrics: &Metrics, op: &str, kind: &str) -> f64 {
        let snapshot =
            ScalingSnapshot { timestamp: std::time::SystemTime::now(), target_utilization: 0.7, desired_replicas: 0.0, active: false, models: Default::default() };
        let text = metrics.render(&snapshot).unwrap();
        text.lines()
            .filter(|l| l.starts_with(catalogue::CACHE_REDIS_ERRORS) && l.contains(&format!("op=\"{op}\"")) && l.contains(&format!("kind=\"{kind}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// A "Redis" that accepts connections and reads them, and never answers: a hung server or a black hole.
    async fn silent_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {}
                });
            }
        });
        url
    }

    /// A server that answers everything with bytes that are not RESP.
    async fn babbling_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("redis://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {
                        if socket.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        url
    }

    #[tokio::test]
    async fn bad_urls_are_refused_and_an_unreachable_redis_is_not() {
        let metrics = Metrics::new(false);
        assert!(matches!(RedisTier::new(&config("http://x"), &metrics), Err(CacheError::RedisUrl { .. })));
        // Nothing listens on port 1: construction succeeds, operations fail open and then skip while the breaker is open.
        let tier = RedisTier::new(&config("redis://127.0.0.1:1"), &metrics).unwrap();
        let started = Instant::now();
        assert!(tier.get(&CacheKey([1; 32])).await.is_none());
        assert!(started.elapsed() < Duration::from_secs(2));
        let started = Instant::now();
        for _ in 0..100 {
            assert!(tier.get(&CacheKey([1; 32])).await.is_none());
        }
        assert!(started.elapsed() < Duration::from_millis(100), "the open breaker skips Redis: {:?}", started.elapsed());
        assert!(tier.breaker_open());
    }

    #[test]
    fn a_password_in_a_bad_url_is_not_repeated() {
        let metrics = Metrics::new(false);
        let Err(CacheError::RedisUrl { url, message }) = RedisTier::new(&config("redis://user:hunter2@host:port/0"), &metrics) else {
            panic!("a URL with a bad port is refused");
        };
        assert_eq!(url, "redis://***@host:port/0");
        assert!(!message.contains("hunter2"), "{message}");
        assert_eq!(redacted("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
        assert_eq!(redacted("rediss://:pw@h:1"), "rediss://***@h:1");
    }

    /// Built, written to and dropped outside any runtime: no panic, the write is counted as skipped.
    #[test]
    fn no_runtime_needed_to_build_or_to_put() {
        let metrics = Metrics::new(true);
        let tier = RedisTier::new(&config("redis://127.0.0.1:1"), &metrics).unwrap();
        tier.put(&CacheKey([2; 32]), &outputs(), Duration::from_secs(1));
        assert_eq!(errors(&metrics, "set", "skipped"), 1.0);
        assert!(tier.0.connections.get().is_none(), "no connection made outside a runtime");
    }

    /// A Redis that takes connections and never answers: the first operation costs one `timeout`, and the breaker then
    /// skips it - the worst outage, a black hole rather than a refused connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_redis_costs_one_timeout_then_is_skipped() {
        let metrics = Metrics::new(true);
        let tier = RedisTier::new(&config(&silent_server().await), &metrics).unwrap();
        let started = Instant::now();
        assert!(tier.get(&CacheKey([3; 32])).await.is_none());
        let took = started.elapsed();
        assert!(took < Duration::from_millis(100) + Duration::from_millis(150), "bounded by the timeout: {took:?}");
        assert!(tier.breaker_open());
        let started = Instant::now();
        for _ in 0..1000 {
            assert!(tier.get(&CacheKey([3; 32])).await.is_none());
            tier.put(&CacheKey([3; 32]), &outputs(), Duration::from_secs(1));
        }
        assert!(started.elapsed() < Duration::from_millis(100), "skipped while open: {:?}", started.elapsed());
        assert!(errors(&metrics, "get", "skipped") >= 1000.0);
        assert!(errors(&metrics, "set", "skipped") >= 1000.0);
        // Probes keep failing (a silent server never answers PING): the breaker stays open.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(tier.breaker_open());
    }

    /// A server that does not speak RESP is a failed operation within the timeout, not a panic, and a connection
    /// failure (the breaker opens: the connection cannot be set up).
    #[tokio::test]
    async fn a_garbage_answer_is_a_miss() {
        let metrics = Metrics::new(true);
        let tier = RedisTier::new(&config(&babbling_server().await), &metrics).unwrap();
        let started = Instant::now();
        assert!(tier.get(&CacheKey([4; 32])).await.is_none());
        assert!(started.elapsed() < Duration::from_millis(250), "{:?}", started.elapsed());
        assert!(tier.breaker_open());
        // The probe (every 200 ms, with fresh connections) keeps finding garbage: still open, still no panic.
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(tier.breaker_open());
        assert!(tier.get(&CacheKey([4; 32])).await.is_none());
        let counted: f64 = Failure::ALL.iter().map(|f| errors(&metrics, "get", f.label())).sum();
        assert_eq!(counted, 2.0, "every get is counted");
    }

    /// At most [`MAX_WRITES_IN_FLIGHT`] writes wait on a slow Redis; the rest are skipped, not queued.
    #[tokio::test(flavor = "current_thread")]
    async fn writes_in_flight_are_bounded() {
        let metrics = Metrics::new(true);
        let tier = RedisTier::new(&config(&silent_server().await), &metrics).unwrap();
        // No await in between: none of the spawned writes has run (and failed, opening the breaker) yet.
        for _ in 0..MAX_WRITES_IN_FLIGHT + 36 {
            tier.put(&CacheKey([5; 32]), &outputs(), Duration::from_secs(1));
        }
        assert_eq!(tier.0.writes.available_permits(), 0);
        assert_eq!(errors(&metrics, "set", "skipped"), 36.0);
        // Each write ends within its timeout and gives its permit back.
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(tier.0.writes.available_permits(), MAX_WRITES_IN_FLIGHT);
    }

    /// A dropped tier stops probing and frees its connections, even during an outage.
    #[tokio::test]
    async fn a_dropped_tier_stops_its_probe() {
        let metrics = Metrics::new(false);
        let tier = RedisTier::new(&config("redis://127.0.0.1:1"), &metrics).unwrap();
        assert!(tier.get(&CacheKey([6; 32])).await.is_none());
        assert!(tier.breaker_open());
        let weak = Arc::downgrade(&tier.0);
        drop(tier);
        let deadline = Instant::now() + Duration::from_secs(2);
        while weak.strong_count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(weak.strong_count(), 0, "something still holds the tier");
    }

    #[test]
    fn failures_are_classified() {
        use std::io::{Error, ErrorKind};
        assert_eq!(Failure::of(&Error::from(ErrorKind::TimedOut).into()), Failure::Timeout);
        assert_eq!(Failure::of(&Error::from(ErrorKind::ConnectionRefused).into()), Failure::Connection);
        assert_eq!(Failure::of(&Error::from(ErrorKind::ConnectionReset).into()), Failure::Connection);
        let reply: redis::RedisError = (redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError), "OOM command not allowed").into();
        assert_eq!(Failure::of(&reply), Failure::Response);
        assert_eq!(Failure::of(&(redis::ErrorKind::UnexpectedReturnType, "not a string").into()), Failure::Response);
        assert_eq!(Failure::of(&(redis::ErrorKind::Parse, "not RESP").into()), Failure::Connection);
        assert_eq!(Failure::of(&(redis::ErrorKind::AuthenticationFailed, "WRONGPASS").into()), Failure::Connection);
        assert!(Failure::Timeout.opens_breaker() && Failure::Connection.opens_breaker());
        assert!(!Failure::Response.opens_breaker() && !Failure::Corrupt.opens_breaker() && !Failure::Skipped.opens_breaker());
    }
}

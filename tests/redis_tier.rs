//! The Redis tier (`sluice::cache::redis::RedisTier`) on its own against a real `redis-server` (Debian's package;
//! `bash scripts/setup.sh --test` installs it) on 127.0.0.1: entries round-trip byte for byte under `<prefix><hex key>`
//! with a millisecond expiry; misses, corrupt values and values of another type are misses, never panics; a Redis
//! killed, hung (SIGSTOP) or down at start costs at most one timeout and is then skipped, and is used again on its own
//! once it is back. Every await is bounded, so a regression fails a test instead of hanging it.

use sluice::cache::key::CacheKey;
use sluice::cache::redis::RedisTier;
use sluice::config::RedisConfig;
use sluice::metrics::{catalogue, Metrics};
use sluice::protocol::NamedTensor;
use sluice::scaling::ScalingSnapshot;
use sluice::tensor::{DataType, Tensor};

use crate::common::redis_server::RedisServer;
use std::future::Future;
use std::time::{Duration, Instant};

/// Every await in these tests finishes well within this, or the test fails.
const HANG: Duration = Duration::from_secs(5);

const TIMEOUT: Duration = Duration::from_millis(100);
const RETRY_AFTER: Duration = Duration::from_millis(300);

/// A plain connection for looking at (and damaging) what the tier wrote.
async fn raw(redis: &RedisServer) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(redis.url()).expect("client");
    bounded(client.get_multiplexed_async_connection()).await.expect("raw connection")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port").local_addr().expect("its address").port()
}

/// `f`, or a failed test when it takes longer than [`HANG`].
async fn bounded<F: Future>(f: F) -> F::Output {
    match tokio::time::timeout(HANG, f).await {
        Ok(output) => output,
        Err(_) => panic!("an operation hung for {HANG:?}"),
    }
}

fn config(url: &str, prefix: &str) -> RedisConfig {
    RedisConfig {
        url: url.into(),
        pool_size: 2,
        connect_timeout: Duration::from_millis(200),
        timeout: TIMEOUT,
        retry_after: RETRY_AFTER,
        key_prefix: prefix.into(),
    }
}

fn key(b: u8) -> CacheKey {
    let mut k = [b; 32];
    k[31] = 0x5a;
    CacheKey(k)
}

/// One output of every datatype (BYTES included), zero-row tensors and a scalar.
fn every_datatype() -> Vec<NamedTensor> {
    let mut out = Vec::new();
    for (i, dtype) in DataType::ALL.into_iter().enumerate() {
        let tensor = match dtype.element_size() {
            Some(size) => Tensor::new(dtype, vec![3, 2], bytes::Bytes::from((0..6 * size).map(|b| (b * 31 + i) as u8).collect::<Vec<_>>())).unwrap(),
            None => Tensor::from_byte_strings(vec![3, 1], &[b"".as_slice(), b"\x00\xffbinary", "ünï".as_bytes()]).unwrap(),
        };
        out.push(NamedTensor { name: format!("out_{}", dtype.v2_name()), tensor });
        out.push(NamedTensor { name: format!("none_{}", dtype.v2_name()), tensor: Tensor::new(dtype, vec![0, 7], bytes::Bytes::new()).unwrap() });
    }
    out.push(NamedTensor { name: "scalar".into(), tensor: Tensor::from_slice(DataType::I64, vec![], &[-42i64]).unwrap() });
    out
}

fn small() -> Vec<NamedTensor> {
    vec![NamedTensor { name: "y".into(), tensor: Tensor::from_slice(DataType::F32, vec![1, 4], &[0.5f32, -1.0, 2.0, 1e-9]).unwrap() }]
}

/// Waits (bounded) until `key` is readable through the tier: writes happen in the background.
async fn visible(tier: &RedisTier, key: &CacheKey, within: Duration) -> Option<Vec<NamedTensor>> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = bounded(tier.get(key)).await {
            return Some(found);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The sum of a metric's samples whose line has every one of `labels` (`op="get"`, ...).
fn metric(metrics: &Metrics, name: &str, labels: &[&str]) -> f64 {
    let snapshot =
        ScalingSnapshot { timestamp: std::time::SystemTime::now(), target_utilization: 0.7, desired_replicas: 0.0, active: false, models: Default::default() };
    let text = metrics.render(&snapshot).expect("metrics are enabled");
    text.lines()
        .filter(|l| l.starts_with(name) && (l.as_bytes().get(name.len()) == Some(&b'{')) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn errors(metrics: &Metrics, op: &str, kind: &str) -> f64 {
    metric(metrics, catalogue::CACHE_REDIS_ERRORS, &[&format!("op=\"{op}\""), &format!("kind=\"{kind}\"")])
}

fn assert_identical(found: &[NamedTensor], expected: &[NamedTensor]) {
    assert_eq!(found.len(), expected.len());
    for (f, e) in found.iter().zip(expected) {
        assert_eq!(f.name, e.name);
        assert_eq!((f.tensor.dtype(), f.tensor.shape()), (e.tensor.dtype(), e.tensor.shape()), "{}", e.name);
        assert_eq!(f.tensor.data().as_ref(), e.tensor.data().as_ref(), "{}: bytes differ", e.name);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_then_get_round_trips_byte_identical_tensors() {
    let redis = RedisServer::start();
    let metrics = Metrics::new(true);
    let tier = RedisTier::new(&config(&redis.url(), "sluice-test:"), &metrics).unwrap();
    let outputs = every_datatype();
    tier.put(&key(1), &outputs, Duration::from_secs(60));
    let found = visible(&tier, &key(1), Duration::from_secs(2)).await.expect("the entry never became readable");
    assert_identical(&found, &outputs);

    // Stored where and how the docs say: `<prefix><hex key>`, with a millisecond expiry no longer than the TTL.
    let mut raw = raw(&redis).await;
    let name = format!("sluice-test:{}", key(1).to_hex());
    let pttl: i64 = bounded(redis::cmd("PTTL").arg(&name).query_async(&mut raw)).await.unwrap();
    assert!(pttl > 55_000 && pttl <= 60_000, "PTTL {pttl}");
    let keys: Vec<String> = bounded(redis::cmd("KEYS").arg("*").query_async(&mut raw)).await.unwrap();
    assert_eq!(keys, vec![name]);

    // A second put replaces the entry.
    tier.put(&key(1), &small(), Duration::from_secs(60));
    let deadline = Instant::now() + Duration::from_secs(2);
    while bounded(tier.get(&key(1))).await.map(|f| f.len()) != Some(1) {
        assert!(Instant::now() < deadline, "the entry was not replaced");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let failures: f64 = ["timeout", "connection", "response", "corrupt", "skipped"].iter().map(|k| errors(&metrics, "get", k) + errors(&metrics, "set", k)).sum();
    assert_eq!(failures, 0.0, "no failures against a healthy Redis");
    assert!(metric(&metrics, "sluice_cache_redis_duration_seconds_count", &["op=\"get\""]) >= 2.0);
    // A SET's time is recorded by its task once the answer is in, which may be just after a get has seen the value.
    let deadline = Instant::now() + Duration::from_secs(2);
    while metric(&metrics, "sluice_cache_redis_duration_seconds_count", &["op=\"set\""]) < 2.0 {
        assert!(Instant::now() < deadline, "the SETs' durations were not recorded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_expire_after_their_ttl() {
    let redis = RedisServer::start();
    let tier = RedisTier::new(&config(&redis.url(), "ttl:"), &Metrics::new(false)).unwrap();
    let put_at = Instant::now();
    tier.put(&key(2), &small(), Duration::from_millis(400));
    tier.put(&key(3), &small(), Duration::from_secs(60));
    assert!(visible(&tier, &key(2), Duration::from_millis(300)).await.is_some(), "not readable before its TTL");
    tokio::time::sleep(Duration::from_millis(700).saturating_sub(put_at.elapsed())).await;
    assert!(bounded(tier.get(&key(2))).await.is_none(), "still there {:?} after a 400 ms TTL", put_at.elapsed());
    assert!(bounded(tier.get(&key(3))).await.is_some(), "the long-lived entry expired too");
    // A sub-millisecond TTL is stored as 1 ms, not refused (PX 0 is an error in Redis) nor kept forever.
    tier.put(&key(4), &small(), Duration::from_micros(10));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(bounded(tier.get(&key(4))).await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_that_is_not_there_is_a_miss_and_no_failure() {
    let redis = RedisServer::start();
    let metrics = Metrics::new(true);
    let tier = RedisTier::new(&config(&redis.url(), "miss:"), &metrics).unwrap();
    for b in 0..20 {
        assert!(bounded(tier.get(&key(b))).await.is_none());
    }
    assert!(!tier.breaker_open());
    assert_eq!(errors(&metrics, "get", "connection") + errors(&metrics, "get", "timeout") + errors(&metrics, "get", "skipped"), 0.0);
    assert_eq!(metric(&metrics, "sluice_cache_redis_duration_seconds_count", &["op=\"get\""]), 20.0, "a miss is an answer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_foreign_values_are_misses_not_panics() {
    let redis = RedisServer::start();
    let metrics = Metrics::new(true);
    let tier = RedisTier::new(&config(&redis.url(), "bad:"), &metrics).unwrap();
    let mut raw = raw(&redis).await;
    let name = |k: &CacheKey| format!("bad:{}", k.to_hex());

    // Garbage; a valid header with a truncated body; an entry of a future format; a list instead of a string.
    let _: () = bounded(redis::cmd("SET").arg(name(&key(5))).arg(b"\x00\xffnot an entry".as_slice()).query_async(&mut raw)).await.unwrap();
    let _: () = bounded(redis::cmd("SET").arg(name(&key(6))).arg(b"SLC\x01\x02\x00\x00\x00\x01".as_slice()).query_async(&mut raw)).await.unwrap();
    let _: () = bounded(redis::cmd("SET").arg(name(&key(7))).arg(b"SLC\x63\x00\x00\x00\x00".as_slice()).query_async(&mut raw)).await.unwrap();
    let _: () = bounded(redis::cmd("RPUSH").arg(name(&key(8))).arg("x").query_async(&mut raw)).await.unwrap();
    for k in [5, 6, 7, 8] {
        let started = Instant::now();
        assert!(bounded(tier.get(&key(k))).await.is_none(), "key {k}");
        assert!(started.elapsed() < TIMEOUT + Duration::from_millis(200));
    }
    assert_eq!(errors(&metrics, "get", "corrupt"), 3.0);
    assert_eq!(errors(&metrics, "get", "response"), 1.0, "WRONGTYPE is an error reply");
    assert!(!tier.breaker_open(), "a Redis that answers is not skipped");

    // The fresh answer overwrites the corrupt entry, and is read back.
    tier.put(&key(5), &small(), Duration::from_secs(60));
    let found = visible(&tier, &key(5), Duration::from_secs(2)).await.expect("the corrupt entry was not overwritten");
    assert_identical(&found, &small());
}

/// Redis killed: one failed get (no longer than the timeout), then Redis is skipped at once, reads and writes; Redis
/// restarted on the same port: after `retry_after` (a probe or two), entries are written and read again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_redis_is_skipped_and_sharing_resumes_when_it_is_back() {
    let mut redis = RedisServer::start();
    let metrics = Metrics::new(true);
    let tier = RedisTier::new(&config(&redis.url(), "outage:"), &metrics).unwrap();
    tier.put(&key(9), &small(), Duration::from_secs(60));
    assert!(visible(&tier, &key(9), Duration::from_secs(2)).await.is_some());

    redis.stop();
    let started = Instant::now();
    assert!(bounded(tier.get(&key(9))).await.is_none());
    let first = started.elapsed();
    assert!(first < TIMEOUT + Duration::from_millis(200), "the first failure took {first:?}");
    assert!(tier.breaker_open());
    let started = Instant::now();
    for _ in 0..200 {
        assert!(bounded(tier.get(&key(9))).await.is_none());
        tier.put(&key(9), &small(), Duration::from_secs(60));
    }
    let skipped = started.elapsed();
    assert!(skipped < Duration::from_millis(250), "200 gets and puts with the breaker open took {skipped:?}");
    assert!(errors(&metrics, "get", "skipped") >= 200.0 && errors(&metrics, "set", "skipped") >= 200.0);
    // The first get failed (connection) or - when the tier's background connection warm-up saw Redis die first - was
    // already skipped: every get is counted either way.
    let failed_gets: f64 = ["timeout", "connection", "skipped"].iter().map(|k| errors(&metrics, "get", k)).sum();
    assert!(failed_gets >= 201.0, "{failed_gets} failed gets counted");
    // Still down after a few probes: still skipped.
    tokio::time::sleep(RETRY_AFTER * 3).await;
    assert!(tier.breaker_open());

    redis.restart();
    let back = Instant::now();
    let deadline = back + Duration::from_secs(4);
    let mut n = 100u8;
    loop {
        assert!(Instant::now() < deadline, "sharing did not resume within 4 s of Redis coming back");
        n = n.wrapping_add(1);
        tier.put(&key(n), &small(), Duration::from_secs(60));
        if let Some(found) = visible(&tier, &key(n), Duration::from_millis(50)).await {
            assert_identical(&found, &small());
            break;
        }
    }
    let recovered = back.elapsed();
    eprintln!("sharing resumed {recovered:?} after Redis came back (retry_after {RETRY_AFTER:?})");
    assert!(!tier.breaker_open());
    // Every connection of the pool works again (each get goes to the next one).
    for _ in 0..4 {
        assert!(bounded(tier.get(&key(n))).await.is_some());
    }
}

/// A Redis that keeps its connections but stops answering (SIGSTOP) is the costly outage: it must cost one timeout,
/// not one per request, and be used again once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_redis_costs_one_timeout() {
    let redis = RedisServer::start();
    let metrics = Metrics::new(true);
    let tier = RedisTier::new(&config(&redis.url(), "hung:"), &metrics).unwrap();
    tier.put(&key(10), &small(), Duration::from_secs(60));
    assert!(visible(&tier, &key(10), Duration::from_secs(2)).await.is_some());

    redis.signal(libc::SIGSTOP);
    let started = Instant::now();
    assert!(bounded(tier.get(&key(10))).await.is_none());
    let took = started.elapsed();
    assert!(took >= TIMEOUT - Duration::from_millis(5) && took < TIMEOUT + Duration::from_millis(150), "a hung Redis cost {took:?}");
    assert_eq!(errors(&metrics, "get", "timeout"), 1.0);
    let started = Instant::now();
    for _ in 0..200 {
        assert!(bounded(tier.get(&key(10))).await.is_none());
    }
    assert!(started.elapsed() < Duration::from_millis(250), "skipped while hung: {:?}", started.elapsed());

    redis.signal(libc::SIGCONT);
    let deadline = Instant::now() + Duration::from_secs(4);
    while bounded(tier.get(&key(10))).await.is_none() {
        assert!(Instant::now() < deadline, "Redis not used again within 4 s of answering again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Nothing listening at start: the tier is built, every get is a quick miss; a Redis started later on that port is
/// used without a restart of ours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_at_start_is_fail_open() {
    let port = free_port();
    let tier = RedisTier::new(&config(&format!("redis://127.0.0.1:{port}"), "late:"), &Metrics::new(false)).expect("built without Redis");
    let started = Instant::now();
    for b in 0..50 {
        assert!(bounded(tier.get(&key(b))).await.is_none());
        tier.put(&key(b), &small(), Duration::from_secs(60));
    }
    assert!(started.elapsed() < TIMEOUT + Duration::from_millis(300), "50 gets and puts took {:?}", started.elapsed());

    let _redis = RedisServer::start_on(port);
    let deadline = Instant::now() + Duration::from_secs(4);
    loop {
        assert!(Instant::now() < deadline, "Redis started late was never used");
        tier.put(&key(60), &small(), Duration::from_secs(60));
        if visible(&tier, &key(60), Duration::from_millis(50)).await.is_some() {
            break;
        }
    }
}

/// Latency of the tier's round trips on loopback (printed; run with `--nocapture`): GET of a 4 KiB entry as seen by
/// the caller, and SET as timed by the tier's own histogram. Only loosely asserted: CI machines vary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_latency_on_loopback() {
    let redis = RedisServer::start();
    let metrics = Metrics::new(true);
    let mut cfg = config(&redis.url(), "lat:");
    cfg.timeout = Duration::from_secs(1);
    let tier = RedisTier::new(&cfg, &metrics).unwrap();
    let outputs = vec![NamedTensor { name: "scores".into(), tensor: Tensor::from_slice(DataType::F32, vec![1, 1024], &[0.25f32; 1024]).unwrap() }];
    tier.put(&key(11), &outputs, Duration::from_secs(60));
    assert!(visible(&tier, &key(11), Duration::from_secs(2)).await.is_some());

    let mut gets = Vec::new();
    for _ in 0..500 {
        let started = Instant::now();
        assert!(bounded(tier.get(&key(11))).await.is_some());
        gets.push(started.elapsed());
    }
    gets.sort();
    let mut put_calls = Duration::ZERO;
    for i in 0..200u32 {
        let started = Instant::now();
        tier.put(&key((i % 200) as u8), &outputs, Duration::from_secs(60));
        put_calls += started.elapsed();
        // Paced, so that the bound on writes in flight is not what is measured.
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sets = metric(&metrics, "sluice_cache_redis_duration_seconds_count", &["op=\"set\""]);
    let set_seconds = metric(&metrics, "sluice_cache_redis_duration_seconds_sum", &["op=\"set\""]);
    eprintln!(
        "loopback, 4 KiB entry: get p50 {:?} p99 {:?} max {:?}; put() call mean {:?}; SET round trip mean {:.1} µs over {sets} writes",
        gets[gets.len() / 2],
        gets[gets.len() * 99 / 100],
        gets[gets.len() - 1],
        put_calls / 200,
        set_seconds / sets * 1e6,
    );
    assert!(sets >= 200.0, "only {sets} of 201 writes answered");
    assert!(gets[gets.len() / 2] < Duration::from_millis(20), "a loopback GET took {:?}", gets[gets.len() / 2]);
}

//! The shared Redis tier end to end: two Sluice servers (127.0.0.1:0) in `tiered` mode in front of one real
//! `redis-server` share a hit; Redis killed in the middle of a load → every request still answered 200 (fail-open)
//! and the failures counted; Redis back on the same port → sharing resumes on its own.

use crate::common::redis_server::RedisServer;
use crate::common::*;
use hyper::StatusCode;
use serde_json::{json, Value};
use sluice::config::{CacheMode, Config};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CACHED_IDENTITY: &str = "max_batch_size = 64\n[cache]\nenabled = true\n";

fn request(seed: f32) -> Value {
    let data: Vec<f32> = (0..256).map(|i| seed + i as f32).collect();
    json!({"inputs": [{"name": "input", "shape": [1, 256], "datatype": "FP32", "data": data}]})
}

/// A server whose model `cached` is the demo `identity` file (both servers hash the same file: the same keys).
async fn server(redis: &RedisServer) -> Server {
    let mut config = Config::default();
    config.cache.mode = CacheMode::Tiered;
    config.cache.redis.url = redis.url();
    config.cache.redis.timeout = Duration::from_millis(100);
    config.cache.redis.retry_after = Duration::from_millis(300);
    let repo = TempRepo::new().model("cached", "identity", 1, CACHED_IDENTITY);
    config.server.models = repo.path().to_path_buf();
    start_with(config, Some(repo)).await
}

fn status_of(r: &Reply) -> &str {
    r.header("x-sluice-cache").unwrap_or("none")
}

/// Waits (at most `within`) until Redis holds at least `n` keys: writes to Redis happen in the background.
async fn wait_for_keys(redis: &RedisServer, n: u64, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if redis.dbsize().unwrap_or(0) >= n {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines().filter(|l| l.starts_with(prefix)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_hits_and_survive_a_redis_outage() {
    let mut redis = RedisServer::start();
    let a = Arc::new(server(&redis).await);
    let b = Arc::new(server(&redis).await);

    // 1. A computes; once the entry is in Redis, B answers the same request from it.
    let first = a.infer("cached", &request(1.0)).await;
    assert_eq!((first.status, status_of(&first)), (StatusCode::OK, "miss"));
    assert!(wait_for_keys(&redis, 1, Duration::from_secs(5)).await, "A's answer never reached Redis");
    let shared = b.infer("cached", &request(1.0)).await;
    assert_eq!((shared.status, status_of(&shared)), (StatusCode::OK, "hit"), "B did not find A's entry in Redis");
    assert_eq!(shared.json()["outputs"], first.json()["outputs"]);
    assert_eq!(b.stats("cached").await["execution_count"], 0, "B never ran the model");

    // 2. A load on both servers, with Redis killed a third of the way in: every request is answered 200.
    let load: Vec<_> = (0..120)
        .map(|i| {
            let server = if i % 2 == 0 { a.clone() } else { b.clone() };
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(5 * i)).await;
                server.infer("cached", &request(100.0 + (i % 40) as f32)).await.status
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.stop();
    for t in load {
        assert_eq!(t.await.unwrap(), StatusCode::OK, "a request failed while Redis went away");
    }
    // Still serving with Redis down, from the model and the local tier.
    let during = a.infer("cached", &request(500.0)).await;
    assert_eq!((during.status, status_of(&during)), (StatusCode::OK, "miss"));
    let text = String::from_utf8(a.admin_get("/metrics").await.body.to_vec()).unwrap();
    assert!(metric(&text, "sluice_cache_redis_errors_total{") > 0.0, "the outage is not counted:\n{}",
        text.lines().filter(|l| l.contains("redis")).collect::<Vec<_>>().join("\n"));

    // 3. Redis back (empty, same port): within a few retry periods the servers use it again - A's new entries reach
    //    it and B answers them from it.
    redis.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seed = 1000.0;
    loop {
        assert!(Instant::now() < deadline, "sharing did not resume within 10 s of Redis coming back");
        seed += 1.0;
        let keys = redis.dbsize().unwrap_or(0);
        let r = a.infer("cached", &request(seed)).await;
        assert_eq!(r.status, StatusCode::OK);
        if !wait_for_keys(&redis, keys + 1, Duration::from_millis(300)).await {
            continue; // A still skips Redis (its breaker has not closed yet)
        }
        let r = b.infer("cached", &request(seed)).await;
        assert_eq!(r.status, StatusCode::OK);
        if status_of(&r) == "hit" {
            break;
        }
        // B still skipped Redis and computed it itself: try again with a new request.
    }
}

/// A model file replaced under the same name and version never serves the old file's entries, even from a Redis that
/// outlives the server: the file's own hash is part of the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_model_file_does_not_reuse_entries() {
    let redis = RedisServer::start();
    let start = |file_version: u32| {
        let mut config = Config::default();
        config.cache.mode = CacheMode::Redis;
        config.cache.redis.url = redis.url();
        // fraud_mlp's two versions have the same signature and different weights: "fm" version 1 is one, then the other.
        let repo = TempRepo::new().model("fm", "fraud_mlp", file_version, "max_batch_size = 8\n[cache]\nenabled = true\n");
        config.server.models = repo.path().to_path_buf();
        start_with(config, Some(repo))
    };
    let body = json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": vec![0.25; 64]}]});

    let old = start(1).await;
    let first = old.infer("fm", &body).await;
    assert_eq!(status_of(&first), "miss");
    assert!(wait_for_keys(&redis, 1, Duration::from_secs(5)).await);
    let again = old.infer("fm", &body).await;
    assert_eq!(status_of(&again), "hit", "mode redis: the hit comes from Redis");
    drop(old);

    let new = start(2).await;
    let replaced = new.infer("fm", &body).await;
    assert_eq!((replaced.status, status_of(&replaced)), (StatusCode::OK, "miss"), "the old file's entry was served");
    assert_ne!(replaced.json()["outputs"], first.json()["outputs"]);
    assert_eq!(replaced.json()["model_version"], "1");
}

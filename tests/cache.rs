//! The response cache end to end, against the real server on 127.0.0.1:0 (local tier; the Redis tier has its own
//! tests): hits are byte-identical to fresh answers in JSON and binary, statuses show in `x-sluice-cache`, identical
//! concurrent requests run once (proved by the model's execution counter), errors are never cached and reach every
//! waiter, each waiter keeps its own deadline, a leaving leader does not cancel the others, versions never share
//! entries, and bad cache settings stop the start with a message naming the key.

use crate::common::*;
use hyper::StatusCode;
use serde_json::{json, Value};
use sluice::config::Config;
use std::sync::Arc;
use std::time::Duration;

/// `identity` with the cache on, answering only when a batch fills (64 rows) or after `hold`: requests stay in flight
/// long enough for identical ones to join them, with no timing luck involved. At most `capacity` requests queue.
fn held_identity(hold: &str, capacity: usize) -> String {
    format!(
        "max_batch_size = 64\n[dynamic_batching]\nmax_queue_delay = \"{hold}\"\nwait_when_alone = true\npreferred_batch_sizes = [64]\n\
         [queue]\ntimeout = \"10s\"\ncapacity = {capacity}\n[cache]\nenabled = true\n"
    )
}

const CACHED_IDENTITY: &str = "max_batch_size = 64\n[cache]\nenabled = true\n";

fn identity_request(seed: f32, rows: usize) -> Value {
    let data: Vec<f32> = (0..rows * 256).map(|i| seed + i as f32 * 0.5).collect();
    json!({"inputs": [{"name": "input", "shape": [rows, 256], "datatype": "FP32", "data": data}]})
}

fn cache_header(r: &Reply) -> Option<&str> {
    r.header("x-sluice-cache")
}

async fn execution_count(server: &Server, model: &str) -> u64 {
    server.stats(model).await["execution_count"].as_u64().expect("execution_count")
}

/// Sum of `sluice_cache_requests_total{model, result}` from the admin /metrics.
async fn cache_results(server: &Server, model: &str, result: &str) -> f64 {
    let text = String::from_utf8(server.admin_get("/metrics").await.body.to_vec()).unwrap();
    let needle = format!("sluice_cache_requests_total{{model=\"{model}\",result=\"{result}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(needle.as_str())).map_or(0.0, |v| v.trim().parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_are_byte_identical_in_every_encoding() {
    let server = start_repo(TempRepo::new().model("cached", "identity", 1, CACHED_IDENTITY).link("fraud_mlp")).await;
    let request = identity_request(1.0, 2);
    let first = server.infer("cached", &request).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.error());
    assert_eq!(cache_header(&first), Some("miss"));
    let second = server.infer("cached", &request).await;
    assert_eq!(cache_header(&second), Some("hit"));
    assert_eq!(first.body, second.body, "a JSON hit is the same bytes as the fresh JSON answer");

    // The same request in the binary extension is the same key: a hit, with the same tensor bytes.
    let floats: Vec<f32> = request["inputs"][0]["data"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    let raw: Vec<u8> = floats.iter().flat_map(|f| f.to_le_bytes()).collect();
    let header = json!({"inputs": [{"name": "input", "shape": [2, 256], "datatype": "FP32", "parameters": {"binary_data_size": raw.len()}}],
                        "outputs": [{"name": "output", "parameters": {"binary_data": true}}]});
    let binary = server.infer_binary("/v2/models/cached/infer", &header, &raw).await;
    assert_eq!(binary.status, StatusCode::OK, "{}", binary.error());
    assert_eq!(cache_header(&binary), Some("hit"), "naming the only output is the same answer as naming none: one entry");
    let binary_again = server.infer_binary("/v2/models/cached/infer", &header, &raw).await;
    assert_eq!(cache_header(&binary_again), Some("hit"));
    let json_len: usize = binary_again.header("inference-header-content-length").unwrap().parse().unwrap();
    assert_eq!(&binary_again.body[json_len..], &raw[..], "identity returns its input: the cached bytes are the input's");
    assert_eq!(binary.body, binary_again.body);

    // A fresh computation (bypass) gives the same bytes as the hit, and says so.
    let mut fresh = request.clone();
    fresh["parameters"] = json!({"cache": false});
    let bypass = server.infer("cached", &fresh).await;
    assert_eq!(cache_header(&bypass), Some("bypass"));
    assert_eq!(bypass.body, first.body);
    let no_cache = server.post_raw("/v2/models/cached/infer", &[("cache-control", "no-cache")], serde_json::to_vec(&request).unwrap()).await;
    assert_eq!(cache_header(&no_cache), Some("bypass"));
    assert_eq!(execution_count(&server, "cached").await, 3, "one miss and two bypasses ran; three hits did not");

    // Models without the cache say nothing about it.
    let plain = server.infer("fraud_mlp", &json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": vec![0.5; 64]}]})).await;
    assert_eq!(plain.status, StatusCode::OK);
    assert_eq!(cache_header(&plain), None);

    assert_eq!(cache_results(&server, "cached", "hit").await, 3.0);
    assert_eq!(cache_results(&server, "cached", "miss").await, 1.0);
    assert_eq!(cache_results(&server, "cached", "bypass").await, 2.0);
}

/// `Cache-Control: no-store` computes without storing: the next identical request is still a miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_store_leaves_nothing_behind() {
    let server = start_repo(TempRepo::new().model("cached", "identity", 1, CACHED_IDENTITY)).await;
    let body = serde_json::to_vec(&identity_request(2.0, 1)).unwrap();
    let r = server.post_raw("/v2/models/cached/infer", &[("cache-control", "no-store")], body.clone()).await;
    assert_eq!(cache_header(&r), Some("bypass"));
    let r = server.post_raw("/v2/models/cached/infer", &[], body.clone()).await;
    assert_eq!(cache_header(&r), Some("miss"));
    let r = server.post_raw("/v2/models/cached/infer", &[], body).await;
    assert_eq!(cache_header(&r), Some("hit"));
}

/// 100 identical requests at once on a model that holds them 300 ms: one execution, one miss, the rest coalesced or
/// (arriving after the answer) hits - all with the same answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_concurrent_requests_run_once() {
    let server = Arc::new(start_repo(TempRepo::new().model("held", "identity", 1, &held_identity("300ms", 1024))).await);
    let request = Arc::new(identity_request(3.0, 1));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (server, request) = (server.clone(), request.clone());
            tokio::spawn(async move { server.infer("held", &request).await })
        })
        .collect();
    let mut statuses = std::collections::HashMap::<String, usize>::new();
    let mut bodies = std::collections::HashSet::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.error());
        *statuses.entry(cache_header(&r).unwrap_or("none").to_string()).or_default() += 1;
        bodies.insert(r.body.clone());
    }
    assert_eq!(execution_count(&server, "held").await, 1, "statuses: {statuses:?}");
    assert_eq!(statuses.get("miss"), Some(&1), "{statuses:?}");
    assert!(statuses.get("coalesced").copied().unwrap_or(0) >= 1, "nobody joined the 300 ms flight: {statuses:?}");
    assert_eq!(statuses.values().sum::<usize>(), 100);
    assert_eq!(bodies.len(), 1, "every answer is the same");
}

/// A shared execution that fails (429: the model's queue is full of other requests) answers every waiter with the
/// error, and the error is not cached: once the queue has room, the same request runs and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_reach_every_waiter_and_are_never_cached() {
    let server = Arc::new(start_repo(TempRepo::new().model("held", "identity", 1, &held_identity("400ms", 2))).await);
    // Two different requests fill the queue of 2 for 400 ms.
    let fillers: Vec<_> = (0..2)
        .map(|i| {
            let server = server.clone();
            tokio::spawn(async move { server.infer("held", &identity_request(100.0 + i as f32, 1)).await.status })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let request = Arc::new(identity_request(4.0, 1));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (server, request) = (server.clone(), request.clone());
            tokio::spawn(async move { server.infer("held", &request).await })
        })
        .collect();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", String::from_utf8_lossy(&r.body));
        assert!(r.error().contains("held"), "{}", r.error());
    }
    for f in fillers {
        assert_eq!(f.await.unwrap(), StatusCode::OK);
    }
    let again = server.infer("held", &request).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.error());
    assert_eq!(cache_header(&again), Some("miss"), "the error was not cached");
    assert_eq!(cache_results(&server, "held", "hit").await, 0.0);
}

/// Each waiter keeps its own deadline: a follower with a 50 ms `timeout` gets 504 while the others, without one, get
/// the answer; a leader whose client goes away does not cancel the execution the others wait for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_keep_their_own_deadlines_and_the_leader_may_leave() {
    let server = Arc::new(start_repo(TempRepo::new().model("held", "identity", 1, &held_identity("400ms", 1024))).await);
    let request = identity_request(5.0, 1);

    // The leader: its client gives up after 50 ms (the future is dropped, the connection closed).
    let leader = {
        let (server, request) = (server.clone(), request.clone());
        tokio::spawn(async move { tokio::time::timeout(Duration::from_millis(50), server.infer("held", &request)).await.is_err() })
    };
    tokio::time::sleep(Duration::from_millis(10)).await;
    let mut impatient = request.clone();
    impatient["parameters"] = json!({"timeout": 50_000});
    let short = {
        let server = server.clone();
        tokio::spawn(async move { server.infer("held", &impatient).await })
    };
    let patient: Vec<_> = (0..5)
        .map(|_| {
            let (server, request) = (server.clone(), request.clone());
            tokio::spawn(async move { server.infer("held", &request).await })
        })
        .collect();
    assert!(leader.await.unwrap(), "the leader's client gave up before the answer");
    let short = short.await.unwrap();
    assert_eq!(short.status, StatusCode::GATEWAY_TIMEOUT, "{}", String::from_utf8_lossy(&short.body));
    assert!(short.error().contains("timeout"), "{}", short.error());
    for p in patient {
        let r = p.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.error());
        assert_eq!(cache_header(&r), Some("coalesced"));
    }
    assert_eq!(execution_count(&server, "held").await, 1);
}

/// Two versions of a model never share entries: the same request on each is a miss, with each version's own answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_do_not_share_entries() {
    let repo = TempRepo::new();
    let dir = repo.path().join("fm");
    for v in [1, 2] {
        std::fs::create_dir_all(dir.join(v.to_string())).unwrap();
        std::os::unix::fs::symlink(models_dir().join("fraud_mlp").join(v.to_string()).join("model.onnx"), dir.join(v.to_string()).join("model.onnx")).unwrap();
    }
    std::fs::write(dir.join("model.toml"), "max_batch_size = 8\n[cache]\nenabled = true\n").unwrap();
    let server = start_repo(repo).await;
    let request = json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": vec![0.25; 64]}]});
    let v1 = server.post_json("/v2/models/fm/versions/1/infer", &request).await;
    let v2 = server.post_json("/v2/models/fm/versions/2/infer", &request).await;
    assert_eq!((cache_header(&v1), cache_header(&v2)), (Some("miss"), Some("miss")));
    assert_ne!(v1.json()["outputs"], v2.json()["outputs"], "the two versions have different weights");
    let v1_again = server.post_json("/v2/models/fm/versions/1/infer", &request).await;
    assert_eq!(cache_header(&v1_again), Some("hit"));
    assert_eq!(v1_again.json()["outputs"], v1.json()["outputs"]);
    assert_eq!(v1_again.json()["model_version"], "1");
}

/// The version number alone keeps entries apart: two versions with the very same file (same fingerprint) still miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_file_under_two_versions_still_two_keys() {
    let repo = TempRepo::new();
    let dir = repo.path().join("same");
    for v in [1, 2] {
        std::fs::create_dir_all(dir.join(v.to_string())).unwrap();
        std::os::unix::fs::symlink(models_dir().join("identity/1/model.onnx"), dir.join(v.to_string()).join("model.onnx")).unwrap();
    }
    std::fs::write(dir.join("model.toml"), CACHED_IDENTITY).unwrap();
    let server = start_repo(repo).await;
    let request = identity_request(7.0, 1);
    let v1 = server.post_json("/v2/models/same/versions/1/infer", &request).await;
    let v2 = server.post_json("/v2/models/same/versions/2/infer", &request).await;
    assert_eq!((cache_header(&v1), cache_header(&v2)), (Some("miss"), Some("miss")));
    assert_eq!(v2.json()["model_version"], "2");
}

/// A bad priority is refused before the cache: 400 whether or not the answer is cached, and never shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_priority_is_refused_before_the_cache() {
    let server = start_repo(TempRepo::new().model("cached", "identity", 1, CACHED_IDENTITY)).await;
    let request = identity_request(8.0, 1);
    assert_eq!(cache_header(&server.infer("cached", &request).await), Some("miss"));
    let mut bad = request.clone();
    bad["parameters"] = json!({"priority": 9});
    let r = server.infer("cached", &bad).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "a cached answer must not hide a bad priority");
    assert!(r.error().contains("priority"), "{}", r.error());
}

/// Bad cache settings stop the start with a message naming the key; an unreachable Redis does not (fail-open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cache_settings_are_start_errors() {
    let bad = |edit: &dyn Fn(&mut Config)| {
        let mut config = Config::default();
        edit(&mut config);
        config.validate(std::path::Path::new("sluice.toml")).unwrap_err().to_string()
    };
    assert!(bad(&|c| c.cache.max_bytes = 0).contains("cache.max_bytes"));
    assert!(bad(&|c| c.cache.ttl = Duration::ZERO).contains("cache.ttl"));
    assert!(bad(&|c| {
        c.cache.mode = sluice::config::CacheMode::Redis;
        c.cache.redis.url = "http://127.0.0.1:1".into();
    })
    .contains("cache.redis.url"));

    // A model's ttl of 0 names the model file and key.
    let repo = TempRepo::new().model("cached", "identity", 1, "max_batch_size = 8\n[cache]\nenabled = true\nttl = \"0s\"\n");
    let mut config = Config::default();
    config.server.models = repo.path().to_path_buf();
    for addr in [&mut config.server.http, &mut config.server.grpc, &mut config.admin.listen, &mut config.scaling.keda.listen] {
        *addr = "127.0.0.1:0".parse().unwrap();
    }
    let err = sluice::app::start(&config, std::future::pending::<()>()).await.err().expect("start must fail").to_string();
    assert!(err.contains("cache.ttl") && err.contains("model.toml"), "{err}");

    // Redis down at start: the server starts and serves from the model.
    let mut config = Config::default();
    config.cache.mode = sluice::config::CacheMode::Tiered;
    config.cache.redis.url = "redis://127.0.0.1:1".into();
    let repo = TempRepo::new().model("cached", "identity", 1, CACHED_IDENTITY);
    config.server.models = repo.path().to_path_buf();
    let server = start_with(config, Some(repo)).await;
    let request = identity_request(6.0, 1);
    let first = server.infer("cached", &request).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.error());
    assert_eq!(cache_header(&first), Some("miss"));
    let second = server.infer("cached", &request).await;
    assert_eq!(cache_header(&second), Some("hit"), "the local tier works while Redis is down");
}

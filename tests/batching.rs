//! Dynamic batching, backpressure and timeouts against the real server and real ONNX Runtime sessions.
//! Behaviour is proven by counts, statuses and equality with single-request references, never by timing.

use crate::common::*;
use hyper::StatusCode;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const REL: f32 = 1e-5;

fn random_f32(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect()
}

fn scheduler_depth(server: &Server, model: &str) -> (usize, usize) {
    server.running.as_ref().unwrap().state.repository.get(model, None).unwrap().scheduler.depth()
}

fn sluice_stat(stats: &Value, key: &str) -> u64 {
    stats["sluice"][key].as_u64().unwrap_or_else(|| panic!("no sluice.{key} in {stats}"))
}

fn fraud_request(rows: usize, data: &[f32]) -> Value {
    json!({"inputs": [{"name": "input", "shape": [rows, 64], "datatype": "FP32", "data": data}]})
}

fn recommender_request(rows: usize, items: &[i64], features: &[f32]) -> Value {
    json!({"inputs": [
        {"name": "item_ids", "shape": [rows, 20], "datatype": "INT64", "data": items},
        {"name": "user_features", "shape": [rows, 32], "datatype": "FP32", "data": features},
    ]})
}

/// 200 concurrent requests of 1..8 random rows each: every answer equals the same rows sent one at a time, and the
/// server really did batch them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_results_equal_single_row_results() {
    let batching = "max_batch_size = 64\n[dynamic_batching]\nmax_queue_delay = \"5ms\"\n[queue]\ncapacity = 1024\ntimeout = \"20s\"\n";
    let single = "max_batch_size = 64\n[queue]\ncapacity = 1024\ntimeout = \"20s\"\n";
    let rec_batching = "max_batch_size = 32\n[dynamic_batching]\nmax_queue_delay = \"5ms\"\n[queue]\ncapacity = 1024\ntimeout = \"20s\"\n";
    let repo = TempRepo::new()
        .model("fraud_b", "fraud_mlp", 2, batching)
        .model("fraud_ref", "fraud_mlp", 2, single)
        .model("rec_b", "recommender", 1, rec_batching)
        .model("rec_ref", "recommender", 1, single);
    let server = Arc::new(start_repo(repo).await);
    let mut rng = StdRng::seed_from_u64(2024);

    // fraud_mlp: 200 requests, all in flight at once.
    let fraud: Vec<(usize, Vec<f32>)> = (0..200)
        .map(|_| {
            let rows = rng.random_range(1..=8);
            (rows, random_f32(&mut rng, rows * 64))
        })
        .collect();
    let handles: Vec<_> = fraud
        .iter()
        .map(|(rows, data)| {
            let server = server.clone();
            let body = fraud_request(*rows, data);
            tokio::spawn(async move { server.infer("fraud_b", &body).await })
        })
        .collect();
    let mut batched = Vec::new();
    for h in handles {
        let r = h.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
        batched.push(output_f32(&r.json(), "logits"));
    }
    for (i, (rows, data)) in fraud.iter().enumerate() {
        assert_eq!(batched[i].len(), rows * 2);
        for row in 0..*rows {
            let r = server.infer("fraud_ref", &fraud_request(1, &data[row * 64..(row + 1) * 64])).await;
            assert_eq!(r.status, StatusCode::OK);
            let single = output_f32(&r.json(), "logits");
            assert_close(&batched[i][row * 2..row * 2 + 2], &single, REL, &format!("fraud request {i} row {row}"));
        }
    }
    let total_rows: usize = fraud.iter().map(|r| r.0).sum();
    let s = server.stats("fraud_b").await;
    assert_eq!(success_count(&s), 200);
    assert_eq!(s["inference_count"].as_u64().unwrap() as usize, total_rows);
    let sizes = batch_sizes(&s);
    assert!(sizes.iter().all(|&(size, _)| size <= 64), "{sizes:?}");
    assert_eq!(sizes.iter().map(|&(size, n)| size * n).sum::<u64>() as usize, total_rows);
    assert!(sizes.iter().any(|&(size, _)| size > 8), "no batch joined two requests: {sizes:?}");
    assert!(s["execution_count"].as_u64().unwrap() < 200, "{s}");
    let r = server.stats("fraud_ref").await;
    assert_eq!(batch_sizes(&r), vec![(1, total_rows as u64)], "reference rows ran one at a time");

    // recommender: two inputs (INT64 + FP32), 200 requests of 1..8 rows (ids anywhere in i64, the model takes them mod 1000).
    let rec: Vec<(usize, Vec<i64>, Vec<f32>)> = (0..200)
        .map(|_| {
            let rows = rng.random_range(1..=8);
            let items: Vec<i64> = (0..rows * 20).map(|_| rng.random_range(-5000i64..5000)).collect();
            (rows, items, random_f32(&mut rng, rows * 32))
        })
        .collect();
    let handles: Vec<_> = rec
        .iter()
        .map(|(rows, items, features)| {
            let server = server.clone();
            let body = recommender_request(*rows, items, features);
            tokio::spawn(async move { server.infer("rec_b", &body).await })
        })
        .collect();
    let mut batched = Vec::new();
    for h in handles {
        let r = h.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
        batched.push(output_f32(&r.json(), "scores"));
    }
    for (i, (rows, items, features)) in rec.iter().enumerate() {
        for row in 0..*rows {
            let body = recommender_request(1, &items[row * 20..(row + 1) * 20], &features[row * 32..(row + 1) * 32]);
            let r = server.infer("rec_ref", &body).await;
            assert_eq!(r.status, StatusCode::OK);
            let single = output_f32(&r.json(), "scores");
            assert_close(&batched[i][row * 100..(row + 1) * 100], &single, REL, &format!("recommender request {i} row {row}"));
        }
    }
    let s = server.stats("rec_b").await;
    assert_eq!(success_count(&s), 200);
    let sizes = batch_sizes(&s);
    assert!(sizes.iter().all(|&(size, _)| size <= 32), "{sizes:?}");
    assert!(sizes.iter().any(|&(size, _)| size > 8), "no batch joined two requests: {sizes:?}");

    Arc::try_unwrap(server).ok().expect("no request still holds the server").shutdown().await;
}

/// ~100 clients against a small queue in front of a slow model: some 429 (with Retry-After), every request answered
/// exactly once, every 200 correct, and the 200s / 429s agree with the server's own counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_gets_429_with_retry_after_and_every_200_is_right() {
    let toml = "max_batch_size = 64\ninstances = 1\nthreads = 1\n[queue]\ncapacity = 8\ntimeout = \"5s\"\n";
    let server = Arc::new(start_repo(TempRepo::new().model("wide_small", "wide", 1, toml)).await);
    let mut rng = StdRng::seed_from_u64(99);
    let inputs: Vec<Vec<f32>> = (0..8).map(|_| random_f32(&mut rng, 512)).collect();
    let mut references = Vec::new();
    for x in &inputs {
        let r = server.infer("wide_small", &json!({"inputs": [{"name": "input", "shape": [1, 512], "datatype": "FP32", "data": x}]})).await;
        assert_eq!(r.status, StatusCode::OK);
        references.push(output_f32(&r.json(), "logits"));
    }
    let before = server.stats("wide_small").await;

    const CLIENTS: usize = 100;
    const EACH: usize = 3;
    let inputs = Arc::new(inputs);
    let handles: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let server = server.clone();
            let inputs = inputs.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for k in 0..EACH {
                    let which = (c * EACH + k) % inputs.len();
                    let body = json!({"inputs": [{"name": "input", "shape": [1, 512], "datatype": "FP32", "data": inputs[which]}]});
                    answers.push((which, server.infer("wide_small", &body).await));
                }
                answers
            })
        })
        .collect();
    let (mut ok, mut rejected) = (0u64, 0u64);
    let mut answers = 0;
    for h in handles {
        for (which, r) in h.await.unwrap() {
            answers += 1;
            match r.status {
                StatusCode::OK => {
                    ok += 1;
                    assert_close(&output_f32(&r.json(), "logits"), &references[which], REL, &format!("input {which}"));
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    rejected += 1;
                    let after: u64 = r.header("retry-after").expect("429 carries Retry-After").parse().expect("whole seconds");
                    assert!(after >= 1);
                    assert!(r.error().contains("overloaded"), "{}", r.error());
                }
                other => panic!("unexpected {other}: {}", String::from_utf8_lossy(&r.body)),
            }
        }
    }
    assert_eq!(answers, CLIENTS * EACH);
    assert!(rejected > 0, "a queue of 8 in front of 100 clients never overflowed");
    assert!(ok > 0);
    let after = server.stats("wide_small").await;
    assert_eq!(success_count(&after) - success_count(&before), ok, "200s = successful requests the model counted");
    assert_eq!(sluice_stat(&after, "rejected") - sluice_stat(&before, "rejected"), rejected);
    assert_eq!(sluice_stat(&after, "timed_out"), 0);
    assert_eq!(after["inference_stats"]["fail"]["count"], 0);
    assert_eq!(sluice_stat(&after, "queued_requests"), 0);
    Arc::try_unwrap(server).ok().expect("no request still holds the server").shutdown().await;
}

/// Requests with a tiny `timeout` parameter behind a busy instance get 504 and never run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_timeouts_behind_a_busy_queue_get_504_and_never_run() {
    let toml = "max_batch_size = 64\ninstances = 1\nthreads = 1\n[queue]\ncapacity = 64\ntimeout = \"20s\"\n";
    let server = Arc::new(start_repo(TempRepo::new().model("wide_slow", "wide", 1, toml)).await);
    // Full batches sent as binary (cheap to decode, so they arrive faster than the model runs them): one runs, the rest
    // wait, and since each fills max_batch_size nothing can join them.
    const BIG: usize = 20;
    let big = json!({"inputs": [{"name": "input", "shape": [64, 512], "datatype": "FP32", "parameters": {"binary_data_size": 64 * 512 * 4}}]});
    let big_bytes = f32_bytes(&vec![0.01f32; 64 * 512]);
    let big_handles: Vec<_> = (0..BIG)
        .map(|_| {
            let server = server.clone();
            let (json, bytes) = (big.clone(), big_bytes.clone());
            tokio::spawn(async move { server.infer_binary("/v2/models/wide_slow/infer", &json, &bytes).await })
        })
        .collect();
    assert!(
        wait_until(Duration::from_secs(20), || scheduler_depth(&server, "wide_slow").0 >= 5).await,
        "the big requests never queued up: {:?}",
        scheduler_depth(&server, "wide_slow")
    );
    let mut tiny = Vec::new();
    for (i, timeout_us) in [1u64, 1, 1, 1000, 1000, 1000].into_iter().enumerate() {
        let server = server.clone();
        let body = json!({"id": format!("tiny{i}"), "parameters": {"timeout": timeout_us},
                          "inputs": [{"name": "input", "shape": [1, 512], "datatype": "FP32", "data": vec![0.5f32; 512]}]});
        tiny.push(tokio::spawn(async move { server.infer("wide_slow", &body).await }));
    }
    for h in tiny {
        let r = h.await.unwrap();
        assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT, "{}", String::from_utf8_lossy(&r.body));
        assert!(r.error().contains("timeout"), "{}", r.error());
        assert!(r.error().contains("not run"), "{}", r.error());
    }
    for h in big_handles {
        let r = h.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    }
    let s = server.stats("wide_slow").await;
    assert_eq!(success_count(&s), BIG as u64, "only the big requests ran");
    assert_eq!(s["inference_count"], BIG * 64);
    assert_eq!(batch_sizes(&s), vec![(64, BIG as u64)]);
    assert_eq!(sluice_stat(&s, "timed_out"), 6);
    Arc::try_unwrap(server).ok().expect("no request still holds the server").shutdown().await;
}

/// A client that disconnects while its request waits in the queue is withdrawn: the request never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_while_queued_never_runs() {
    use tokio::io::AsyncWriteExt;
    let toml = "max_batch_size = 64\ninstances = 1\nthreads = 1\n[queue]\ncapacity = 64\ntimeout = \"20s\"\n";
    let server = Arc::new(start_repo(TempRepo::new().model("wide_slow", "wide", 1, toml)).await);
    const BIG: usize = 20;
    let big = json!({"inputs": [{"name": "input", "shape": [64, 512], "datatype": "FP32", "parameters": {"binary_data_size": 64 * 512 * 4}}]});
    let big_bytes = f32_bytes(&vec![0.01f32; 64 * 512]);
    let big_handles: Vec<_> = (0..BIG)
        .map(|_| {
            let server = server.clone();
            let (json, bytes) = (big.clone(), big_bytes.clone());
            tokio::spawn(async move { server.infer_binary("/v2/models/wide_slow/infer", &json, &bytes).await })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(20), || scheduler_depth(&server, "wide_slow").0 >= 8).await, "the big requests never queued up");
    // A 3-row request over a raw connection, closed once it is queued (its rows make the queued row count odd).
    let body = serde_json::to_vec(&json!({"inputs": [{"name": "input", "shape": [3, 512], "datatype": "FP32", "data": vec![0.5f32; 3 * 512]}]})).unwrap();
    let mut raw = format!("POST /v2/models/wide_slow/infer HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", server.addr, body.len()).into_bytes();
    raw.extend_from_slice(&body);
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(&raw).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || scheduler_depth(&server, "wide_slow").1 % 64 == 3).await,
        "the 3-row request never queued: {:?}",
        scheduler_depth(&server, "wide_slow")
    );
    drop(stream);
    assert!(
        wait_until(Duration::from_secs(20), || scheduler_depth(&server, "wide_slow").1 % 64 == 0).await,
        "the abandoned request stayed queued: {:?}",
        scheduler_depth(&server, "wide_slow")
    );
    for h in big_handles {
        let r = h.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    }
    let s = server.stats("wide_slow").await;
    assert_eq!(success_count(&s), BIG as u64);
    assert_eq!(s["inference_count"], BIG * 64, "the abandoned rows never ran");
    assert_eq!(batch_sizes(&s), vec![(64, BIG as u64)]);
    Arc::try_unwrap(server).ok().expect("no request still holds the server").shutdown().await;
}

/// fixed_affine has no batch dimension: under concurrency every execution is a single request, and every answer is
/// x W + b (W and b learnt from basis vectors beforehand).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_without_batching_runs_every_request_alone() {
    let server = Arc::new(start_repo(TempRepo::new().link("fixed_affine")).await);
    let b = affine(server.clone(), vec![0.0; 8]).await;
    let mut w = Vec::new();
    for i in 0..8 {
        let mut e = vec![0.0f32; 8];
        e[i] = 1.0;
        let y = affine(server.clone(), e).await;
        w.push(y.iter().zip(&b).map(|(y, b)| y - b).collect::<Vec<f32>>());
    }
    let mut rng = StdRng::seed_from_u64(5);
    let xs: Vec<Vec<f32>> = (0..200).map(|_| random_f32(&mut rng, 8)).collect();
    // 40 clients x 5 requests (the queue holds 64).
    let handles: Vec<_> = xs
        .chunks(5)
        .map(|chunk| {
            let chunk = chunk.to_vec();
            let server = server.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                for x in chunk {
                    out.push((x.clone(), affine(server.clone(), x).await));
                }
                out
            })
        })
        .collect();
    for h in handles {
        for (x, y) in h.await.unwrap() {
            let want: Vec<f32> = (0..4).map(|j| b[j] + (0..8).map(|i| x[i] * w[i][j]).sum::<f32>()).collect();
            assert_close(&y, &want, 1e-4, "x W + b");
        }
    }
    let s = server.stats("fixed_affine").await;
    assert_eq!(batch_sizes(&s), vec![(1, 209)], "every execution ran exactly one request");
    assert_eq!(success_count(&s), 209);
    assert_eq!(s["execution_count"], 209);
    Arc::try_unwrap(server).ok().expect("no request still holds the server").shutdown().await;
}

async fn affine(server: Arc<Server>, x: Vec<f32>) -> Vec<f32> {
    let r = server.infer("fixed_affine", &json!({"inputs": [{"name": "x", "shape": [8], "datatype": "FP32", "data": x}]})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    output_f32(&r.json(), "y")
}

/// A request with more rows than a preferred batch size must be served, not left in the queue until it times out
/// (models/wide/model.toml as committed used preferred_batch_sizes = [32, 64]: a 40-row request alone hit this).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_larger_than_a_preferred_batch_size_is_served() {
    let toml = "max_batch_size = 8\n[dynamic_batching]\npreferred_batch_sizes = [2]\n[queue]\ntimeout = \"1s\"\n";
    let server = start_repo(TempRepo::new().model("fraud_pref", "fraud_mlp", 2, toml)).await;
    let r = server.infer("fraud_pref", &fraud_request(4, &vec![0.1f32; 4 * 64])).await;
    assert_eq!(r.status, StatusCode::OK, "4 rows, preferred_batch_sizes = [2]: {}", String::from_utf8_lossy(&r.body));
    server.shutdown().await;
}

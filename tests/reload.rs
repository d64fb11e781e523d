//! The model lifecycle on the real server: versions swapped by the repository watcher while requests run, broken
//! model files that must never replace working ones, warm-up before a version takes traffic, the repository API on
//! the admin port, unloads that let running requests finish, and remote models that reloads leave alone.
//! Every loop is bounded in count and time.

use bytes::Bytes;
use crate::common::*;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use serde_json::{json, Value};
use sluice::config::{Config, UpstreamConfig, UpstreamProtocol};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A config on `repo` with a fast watcher (`poll` 0 = off).
fn config(repo: &TempRepo, poll: Duration) -> Config {
    let mut config = Config::default();
    config.server.models = repo.path().to_path_buf();
    config.repository.poll_interval = poll;
    config.repository.debounce = Duration::from_millis(60);
    config
}

const FAST: Duration = Duration::from_millis(20);

/// Puts a copy of `models/<source>/1/model.onnx` at `<model_dir>/<version>/model.onnx`: written beside it, then
/// renamed into place (a new version directory appears whole; an existing file is replaced in one step).
fn place(model_dir: &Path, version: u64, source: &str) {
    place_bytes(model_dir, version, &std::fs::read(models_dir().join(source).join("1/model.onnx")).expect("read the demo model"));
}

fn place_bytes(model_dir: &Path, version: u64, bytes: &[u8]) {
    let target = model_dir.join(version.to_string());
    if target.is_dir() {
        let staged = model_dir.join(format!(".model-{version}.onnx"));
        std::fs::write(&staged, bytes).unwrap();
        std::fs::rename(&staged, target.join("model.onnx")).unwrap();
    } else {
        let staged = model_dir.join(format!(".staging-{version}"));
        std::fs::create_dir_all(&staged).unwrap();
        std::fs::write(staged.join("model.onnx"), bytes).unwrap();
        std::fs::rename(&staged, &target).unwrap();
    }
}

/// Garbage where an ONNX file should be.
const GARBAGE: &[u8] = b"\x08\x07this is not an ONNX model \xff\xfe\x00\x01 at all";

fn identity_request(seed: f32) -> Value {
    let data: Vec<f32> = (0..256).map(|i| seed + i as f32).collect();
    json!({"inputs": [{"name": "input", "shape": [1, 256], "datatype": "FP32", "data": data}]})
}

/// The version that serves `model` by default now, as the server resolves it (`None`: not served).
fn serving(server: &Server, model: &str) -> Option<u64> {
    server.running.as_ref().unwrap().state.repository.get(model, None).ok().map(|m| m.version)
}

fn versions_draining(server: &Server) -> usize {
    server.running.as_ref().unwrap().state.repository.draining()
}

async fn admin_post(server: &Server, path: &str, body: &str) -> Reply {
    admin_request(server, Method::POST, path, body).await
}

async fn admin_request(server: &Server, method: Method, path: &str, body: &str) -> Reply {
    let admin = server.admin_addr.expect("the admin listener is enabled");
    let req = Request::builder().method(method).uri(format!("http://{admin}{path}")).body(Full::new(Bytes::from(body.to_string()))).unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(60), server.client.request(req))
        .await
        .unwrap_or_else(|_| panic!("admin {path}: no answer within 60 s"))
        .unwrap_or_else(|e| panic!("admin {path}: request failed: {e:?}"));
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.expect("admin body").to_bytes();
    Reply { status, headers, body }
}

/// The repository index as `(name, version) → (state, reason)`.
async fn index(server: &Server) -> std::collections::BTreeMap<(String, String), (String, String)> {
    let r = admin_post(server, "/v2/repository/index", "").await;
    assert_eq!(r.status, StatusCode::OK, "index: {}", String::from_utf8_lossy(&r.body));
    r.json()
        .as_array()
        .expect("the index is an array")
        .iter()
        .map(|e| {
            let s = |k: &str| e[k].as_str().unwrap_or_else(|| panic!("index entry without '{k}': {e}")).to_string();
            ((s("name"), s("version")), (s("state"), s("reason")))
        })
        .collect()
}


async fn loads(server: &Server, model: &str, result: &str) -> f64 {
    let text = String::from_utf8_lossy(&server.admin_get("/metrics").await.body).to_string();
    metric(&text, "sluice_model_loads_total", &[("model", model), ("result", result)])
}

/// Waits (at most `limit`) until `model` has had `count` loads with `result`.
async fn wait_for_loads(server: &Server, model: &str, result: &str, count: f64, limit: Duration) {
    let end = Instant::now() + limit;
    loop {
        let now = loads(server, model, result).await;
        if now >= count {
            assert_eq!(now, count, "more loads of {model} with result {result} than expected");
            return;
        }
        assert!(Instant::now() < end, "{model}: {now} loads with result {result} after {limit:?}, expected {count}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_for_serving(server: &Server, model: &str, version: Option<u64>, limit: Duration) {
    let end = Instant::now() + limit;
    while serving(server, model) != version {
        assert!(Instant::now() < end, "{model}: version {:?} serves after {limit:?}, expected {version:?}", serving(server, model));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What a steady load saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: parking_lot::Mutex<Vec<String>>,
    versions: parking_lot::Mutex<std::collections::BTreeSet<String>>,
}

/// `clients` loops sending identity requests to `model` until `stop` (at most `limit`, at most 100 000 requests each),
/// checking every answer.
fn steady_load(server: &Arc<Server>, model: &'static str, clients: usize, stop: &Arc<AtomicBool>, limit: Duration) -> (Arc<Tally>, Vec<tokio::task::JoinHandle<()>>) {
    let tally = Arc::new(Tally::default());
    let tasks = (0..clients)
        .map(|c| {
            let (server, stop, tally) = (server.clone(), stop.clone(), tally.clone());
            tokio::spawn(async move {
                let end = Instant::now() + limit;
                for i in 0..100_000u32 {
                    if stop.load(Ordering::Acquire) || Instant::now() > end {
                        break;
                    }
                    let seed = (c * 100_000) as f32 + i as f32;
                    let r = server.infer(model, &identity_request(seed)).await;
                    if r.status != StatusCode::OK {
                        tally.failed.lock().push(format!("{} {}", r.status, String::from_utf8_lossy(&r.body)));
                        continue;
                    }
                    let body = r.json();
                    let out = output_f32(&body, "output");
                    if out.first() != Some(&seed) || out.len() != 256 {
                        tally.failed.lock().push(format!("wrong answer for seed {seed}: {:?}", &out[..out.len().min(3)]));
                        continue;
                    }
                    tally.versions.lock().insert(body["model_version"].as_str().unwrap_or_default().to_string());
                    tally.ok.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    (tally, tasks)
}

/// 20 swaps while 4 clients send requests: new version directories (the older ones removed), and the serving
/// version's file replaced in place. Every request is answered 200 with the right outputs, and the replaced versions
/// are unloaded once their requests are done.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_version_swaps_under_load_fail_no_request() {
    let repo = TempRepo::new();
    let dir = repo.path().join("m");
    std::fs::create_dir_all(&dir).unwrap();
    place(&dir, 1, "identity");
    std::fs::write(dir.join("model.toml"), "max_batch_size = 16\n[warmup]\nrequests = 1\n").unwrap();
    let server = Arc::new(start_with(config(&repo, FAST), Some(repo)).await);
    let stop = Arc::new(AtomicBool::new(false));
    let (tally, clients) = steady_load(&server, "m", 4, &stop, Duration::from_secs(90));
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = Instant::now();
    let mut current = 1u64;
    let mut expected_loads = 1.0;
    for swap in 1..=20 {
        let before = tally.ok.load(Ordering::Relaxed);
        if swap % 3 == 0 {
            // The serving version's own file replaced: the same version number is reloaded beside itself.
            place(&dir, current, "identity");
        } else {
            current += 1;
            place(&dir, current, "identity");
            if current > 2 && dir.join((current - 2).to_string()).is_dir() {
                std::fs::remove_dir_all(dir.join((current - 2).to_string())).unwrap();
            }
        }
        expected_loads += 1.0;
        wait_for_loads(&server, "m", "ok", expected_loads, Duration::from_secs(15)).await;
        wait_for_serving(&server, "m", Some(current), Duration::from_secs(5)).await;
        // Requests keep flowing across every swap.
        let end = Instant::now() + Duration::from_secs(10);
        while tally.ok.load(Ordering::Relaxed) < before + 20 && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let swapping = started.elapsed();
    stop.store(true, Ordering::Release);
    for c in clients {
        c.await.unwrap();
    }
    let failed = tally.failed.lock().clone();
    assert!(failed.is_empty(), "{} of {} requests failed during the swaps, first: {:?}", failed.len(), tally.ok.load(Ordering::Relaxed) + failed.len() as u64, &failed[..failed.len().min(5)]);
    let ok = tally.ok.load(Ordering::Relaxed);
    assert!(ok >= 400, "only {ok} requests in {swapping:?}");
    let versions = tally.versions.lock().clone();
    assert!(versions.len() >= 10, "the clients saw versions {versions:?}");
    assert_eq!(loads(&server, "m", "load_failed").await, 0.0);
    // Nothing holds the replaced versions any more: every one of them is unloaded.
    assert!(wait_until(Duration::from_secs(5), || versions_draining(&server) == 0).await, "{} versions still draining", versions_draining(&server));
    let text = String::from_utf8_lossy(&server.admin_get("/metrics").await.body).to_string();
    assert_eq!(metric(&text, "sluice_model_unloads_total", &[("model", "m"), ("reason", "replaced")]), 6.0, "{text}");
    assert!(metric(&text, "sluice_model_unloads_total", &[("model", "m"), ("reason", "removed")]) >= 10.0);
    eprintln!("20 swaps in {swapping:?}; {ok} requests, all answered 200; versions seen: {}", versions.len());
    Arc::into_inner(server).expect("clients are done").shutdown().await;
}

/// A broken model file never replaces a working one: not as a new version, not over the serving version's own file.
/// The failure is counted and shown by the index; fixing the file loads it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_corrupt_model_file_never_replaces_a_working_one() {
    let repo = TempRepo::new();
    let dir = repo.path().join("m");
    std::fs::create_dir_all(&dir).unwrap();
    place(&dir, 1, "identity");
    let server = Arc::new(start_with(config(&repo, FAST), Some(repo)).await);
    let stop = Arc::new(AtomicBool::new(false));
    let (tally, clients) = steady_load(&server, "m", 2, &stop, Duration::from_secs(60));

    // A new version whose file is garbage.
    place_bytes(&dir, 2, GARBAGE);
    wait_for_loads(&server, "m", "load_failed", 1.0, Duration::from_secs(10)).await;
    assert_eq!(serving(&server, "m"), Some(1));
    let r = server.infer("m", &identity_request(1.0)).await;
    assert_eq!((r.status, r.json()["model_version"].as_str()), (StatusCode::OK, Some("1")));
    let entries = index(&server).await;
    let (state, reason) = &entries[&("m".into(), "2".into())];
    assert_eq!(state, "UNAVAILABLE");
    assert!(reason.contains("2/model.onnx"), "the reason names the file: {reason}");
    assert_eq!(entries[&("m".into(), "1".into())], ("READY".into(), String::new()));
    // Asking for it by number: 404, as for any version that is not served.
    assert_eq!(server.post_json("/v2/models/m/versions/2/infer", &identity_request(1.0)).await.status, StatusCode::NOT_FOUND);

    // The serving version's own file replaced by garbage: the loaded version keeps serving.
    place_bytes(&dir, 1, GARBAGE);
    wait_for_loads(&server, "m", "load_failed", 2.0, Duration::from_secs(10)).await;
    assert_eq!(serving(&server, "m"), Some(1));
    let (state, reason) = index(&server).await[&("m".into(), "1".into())].clone();
    assert_eq!(state, "READY");
    assert!(reason.contains("failed to load"), "{reason}");
    // The same broken files are not retried on every poll.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(loads(&server, "m", "load_failed").await, 2.0);

    // Fixed: version 2 loads and takes over.
    place(&dir, 2, "identity");
    wait_for_serving(&server, "m", Some(2), Duration::from_secs(10)).await;
    assert_eq!(index(&server).await[&("m".into(), "2".into())], ("READY".into(), String::new()));
    // Let the clients see version 2, then stop them.
    let seen_2 = Instant::now() + Duration::from_secs(5);
    while !tally.versions.lock().contains("2") && Instant::now() < seen_2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Release);
    for c in clients {
        c.await.unwrap();
    }
    let failed = tally.failed.lock().clone();
    assert!(failed.is_empty(), "requests failed while broken files appeared: {:?}", &failed[..failed.len().min(5)]);
    assert!(tally.ok.load(Ordering::Relaxed) > 50);
    let text = String::from_utf8_lossy(&server.admin_get("/metrics").await.body).to_string();
    assert!(text.contains("# TYPE sluice_model_loads_total counter"), "{text}");
    assert!(metric(&text, "sluice_model_load_duration_seconds_count", &[("model", "m")]) >= 4.0);
    Arc::into_inner(server).expect("clients are done").shutdown().await;
}

/// `[warmup]` requests run through a version before it takes traffic: at start (before the listeners open) and at
/// every reload (before the swap). A changed model.toml reloads every version of the model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warmup_runs_before_a_version_takes_traffic() {
    let repo = TempRepo::new();
    let dir = repo.path().join("w");
    std::fs::create_dir_all(&dir).unwrap();
    place(&dir, 1, "identity");
    std::fs::write(dir.join("model.toml"), "max_batch_size = 8\n[warmup]\nrequests = 2\ndata = \"random\"\n").unwrap();
    let server = start_with(config(&repo, FAST), Some(repo)).await;
    // Before any client request: two requests of 1 row and two of 8 have run.
    let stats = server.stats("w").await;
    assert_eq!(success_count(&stats), 4, "{stats}");
    assert_eq!(batch_sizes(&stats), vec![(1, 2), (8, 2)]);
    assert_eq!(server.get("/v2/health/ready").await.status, StatusCode::OK);

    // A new version is warmed up before it is put in the table: the first moment it serves, its warm-up is done.
    place(&dir, 2, "identity");
    wait_for_serving(&server, "w", Some(2), Duration::from_secs(10)).await;
    let v2 = server.running.as_ref().unwrap().state.repository.get("w", Some("2")).unwrap();
    assert!(v2.is_ready());
    assert_eq!(v2.scheduler.stats().snapshot().execution_count, 4, "version 2 served before its warm-up was done");
    drop(v2);

    // A changed model.toml reloads both versions, each warmed up with the new settings.
    std::fs::write(dir.join("model.toml"), "max_batch_size = 4\n[warmup]\nrequests = 1\nbatch_sizes = [3]\n").unwrap();
    wait_for_loads(&server, "w", "ok", 4.0, Duration::from_secs(10)).await;
    for v in ["1", "2"] {
        let m = server.running.as_ref().unwrap().state.repository.get("w", Some(v)).unwrap();
        assert_eq!(m.settings.max_batch_size, 4);
        assert_eq!(m.scheduler.stats().snapshot().execution_count, 1, "version {v}");
    }
    // A warm-up the model cannot take is a load failure; both versions keep serving as they were.
    std::fs::write(dir.join("model.toml"), "max_batch_size = 4\n[warmup]\nrequests = 1\nbatch_sizes = [9]\n").unwrap();
    wait_for_loads(&server, "w", "load_failed", 2.0, Duration::from_secs(10)).await;
    let (state, reason) = index(&server).await[&("w".into(), "2".into())].clone();
    assert_eq!(state, "READY");
    assert!(reason.contains("warmup.batch_sizes"), "{reason}");
    let r = server.infer("w", &identity_request(3.0)).await;
    assert_eq!((r.status, r.json()["model_version"].as_str()), (StatusCode::OK, Some("2")));
    server.shutdown().await;
}

/// The repository API: index, load (also of versions added while the watcher is off), unload, and its errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_api_index_load_and_unload() {
    let repo = TempRepo::new().link("fraud_mlp");
    let dir = repo.path().join("m");
    std::fs::create_dir_all(&dir).unwrap();
    place(&dir, 1, "identity");
    let server = start_with(config(&repo, Duration::ZERO), Some(repo)).await;

    let entries = index(&server).await;
    assert_eq!(entries.len(), 3, "{entries:?}");
    for key in [("fraud_mlp", "1"), ("fraud_mlp", "2"), ("m", "1")] {
        assert_eq!(entries[&(key.0.into(), key.1.into())], ("READY".into(), String::new()));
    }
    let r = admin_post(&server, "/v2/repository/index", "{\"ready\": true}").await;
    assert_eq!(r.json().as_array().unwrap().len(), 3);
    assert_eq!(r.json()[0], json!({"name": "fraud_mlp", "version": "1", "state": "READY", "reason": ""}));

    // Added on disk while the watcher is off: listed, not served until loaded.
    place(&dir, 2, "identity");
    let (state, reason) = index(&server).await[&("m".into(), "2".into())].clone();
    assert_eq!(state, "UNAVAILABLE");
    assert!(reason.contains("not loaded"), "{reason}");
    assert_eq!(admin_post(&server, "/v2/repository/index", "{\"ready\": true}").await.json().as_array().unwrap().len(), 3);
    assert_eq!(serving(&server, "m"), Some(1));
    let r = admin_post(&server, "/v2/repository/models/m/load", "").await;
    assert_eq!((r.status, r.json()), (StatusCode::OK, json!({})));
    let r = server.infer("m", &identity_request(2.0)).await;
    assert_eq!((r.status, r.json()["model_version"].as_str()), (StatusCode::OK, Some("2")));

    // Unloaded: 404 for its requests, listed as unloaded, left alone until loaded again.
    let r = admin_post(&server, "/v2/repository/models/m/unload", "{}").await;
    assert_eq!((r.status, r.json()), (StatusCode::OK, json!({})));
    let r = server.infer("m", &identity_request(2.0)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.error().contains("unknown model 'm'"), "{}", r.error());
    let entries = index(&server).await;
    assert_eq!(entries[&("m".into(), "1".into())], ("UNAVAILABLE".into(), "unloaded".into()));
    assert_eq!(entries[&("m".into(), "2".into())], ("UNAVAILABLE".into(), "unloaded".into()));
    assert_eq!(server.get("/v2/models/fraud_mlp").await.status, StatusCode::OK, "other models are untouched");
    assert_eq!(server.get("/v2/health/ready").await.status, StatusCode::OK);
    let r = admin_post(&server, "/v2/repository/models/m/load", "{\"parameters\": {}}").await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(server.infer("m", &identity_request(2.0)).await.status, StatusCode::OK);

    // A broken new version: 400 naming it, and the serving version stays.
    place_bytes(&dir, 3, GARBAGE);
    let r = admin_post(&server, "/v2/repository/models/m/load", "").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("version 3") && r.error().contains("keeps serving"), "{}", r.error());
    assert_eq!(serving(&server, "m"), Some(2));
    assert_eq!(loads(&server, "m", "load_failed").await, 1.0);
    // Loading again retries the failed version (the watcher would wait for new files); it fails the same way.
    assert_eq!(admin_post(&server, "/v2/repository/models/m/load", "").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(loads(&server, "m", "load_failed").await, 2.0);
    std::fs::remove_dir_all(dir.join("3")).unwrap();
    assert_eq!(admin_post(&server, "/v2/repository/models/m/load", "").await.status, StatusCode::OK);
    assert!(!index(&server).await.contains_key(&("m".into(), "3".into())));

    // Errors.
    let r = admin_post(&server, "/v2/repository/models/nope/load", "").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.error().contains("nope"), "{}", r.error());
    assert_eq!(admin_post(&server, "/v2/repository/models/nope/unload", "").await.status, StatusCode::NOT_FOUND);
    let r = admin_post(&server, "/v2/repository/models/m/load", "{\"parameters\": {\"config\": \"{}\"}}").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("'config' is not supported"), "{}", r.error());
    let r = admin_post(&server, "/v2/repository/index", "not json").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("JSON"), "{}", r.error());
    assert_eq!(admin_post(&server, "/v2/repository/index", "{\"ready\": 1}").await.status, StatusCode::BAD_REQUEST);
    let r = admin_request(&server, Method::GET, "/v2/repository/index", "").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(r.error().contains("POST"), "{}", r.error());
    // The repository API is on the admin port only.
    assert_eq!(server.post_raw("/v2/repository/index", &[], "").await.status, StatusCode::NOT_FOUND);
    server.shutdown().await;
}

/// Unloading, or replacing, a version while a request is queued on it: the request is answered by that version; new
/// requests get 404 (unloaded) or the new version (replaced); the old version is dropped once its request is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_requests_finish_on_the_version_they_started_on() {
    let repo = TempRepo::new();
    let dir = repo.path().join("slow");
    std::fs::create_dir_all(&dir).unwrap();
    place(&dir, 1, "identity");
    // A lone request waits 1.5 s in the queue for company: long enough to act while it is in flight.
    std::fs::write(dir.join("model.toml"), "max_batch_size = 8\n[dynamic_batching]\nmax_queue_delay = \"1500ms\"\nwait_when_alone = true\n[queue]\ntimeout = \"10s\"\n").unwrap();
    let server = Arc::new(start_with(config(&repo, Duration::ZERO), Some(repo)).await);
    let queued = |server: &Server| server.running.as_ref().unwrap().state.repository.get("slow", None).map(|m| m.scheduler.depth().0).unwrap_or(0);

    // Unload with a request in flight.
    let in_flight = {
        let server = server.clone();
        tokio::spawn(async move { server.infer("slow", &identity_request(5.0)).await })
    };
    assert!(wait_until(Duration::from_secs(5), || queued(&server) == 1).await, "the request never queued");
    let asked = Instant::now();
    let r = admin_post(&server, "/v2/repository/models/slow/unload", "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(asked.elapsed() < Duration::from_millis(1000), "unload waited for the running request: {:?}", asked.elapsed());
    assert_eq!(server.infer("slow", &identity_request(6.0)).await.status, StatusCode::NOT_FOUND);
    assert_eq!(versions_draining(&server), 1);
    assert_eq!(index(&server).await[&("slow".into(), "1".into())].0, "UNLOADING");
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(output_f32(&r.json(), "output")[0], 5.0);
    assert!(wait_until(Duration::from_secs(5), || versions_draining(&server) == 0).await, "the unloaded version was never dropped");

    // Replace the file and reload with a request in flight: it finishes on the old version, new ones go to the new one.
    assert_eq!(admin_post(&server, "/v2/repository/models/slow/load", "").await.status, StatusCode::OK);
    let old = server.running.as_ref().unwrap().state.repository.get("slow", None).unwrap();
    let old_weak = Arc::downgrade(&old);
    drop(old);
    let in_flight = {
        let server = server.clone();
        tokio::spawn(async move { server.infer("slow", &identity_request(7.0)).await })
    };
    assert!(wait_until(Duration::from_secs(5), || queued(&server) == 1).await, "the request never queued");
    place(&dir, 1, "identity");
    assert_eq!(admin_post(&server, "/v2/repository/models/slow/load", "").await.status, StatusCode::OK);
    let new = server.running.as_ref().unwrap().state.repository.get("slow", None).unwrap();
    assert!(!std::ptr::eq(Arc::as_ptr(&new), old_weak.as_ptr()), "the version was not replaced");
    assert_eq!(new.scheduler.depth().0, 0, "the running request moved to the new version");
    drop(new);
    assert!(old_weak.upgrade().is_some(), "the old version was dropped under its running request");
    let r = in_flight.await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(output_f32(&r.json(), "output")[0], 7.0);
    assert!(wait_until(Duration::from_secs(5), || old_weak.upgrade().is_none()).await, "the replaced version was never dropped");
    Arc::into_inner(server).expect("requests are done").shutdown().await;
}

/// Models served by an upstream pool are not on disk: reloads leave them alone, a directory of the same name is
/// ignored, and the repository API refuses to load or unload them. A repository directory that appears after the
/// start is picked up; a model directory removed from it is unloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_models_survive_reloads() {
    let worker = start_repo(TempRepo::new().link("identity")).await;
    let repo = TempRepo::new();
    // The gateway starts without a local repository (its directory does not exist yet), as gateways usually do.
    let root = repo.path().join("later");
    let mut config = config(&repo, FAST);
    config.server.models = root.clone();
    config.upstreams = vec![UpstreamConfig {
        name: "workers".into(),
        protocol: UpstreamProtocol::Http,
        endpoints: vec![worker.addr.to_string()],
        models: vec!["identity".into()],
        startup_timeout: Duration::from_secs(10),
        ..UpstreamConfig::default()
    }];
    let gateway = start_with(config, Some(repo)).await;
    assert_eq!(gateway.infer("identity", &identity_request(1.0)).await.status, StatusCode::OK);
    assert_eq!(serving(&gateway, "m"), None);

    // The repository appears: its models are loaded.
    let dir = root.join("m");
    std::fs::create_dir_all(&dir).unwrap();
    place(&dir, 1, "identity");
    wait_for_serving(&gateway, "m", Some(1), Duration::from_secs(10)).await;
    place(&dir, 2, "identity");
    wait_for_serving(&gateway, "m", Some(2), Duration::from_secs(10)).await;
    // A directory named like the remote model: ignored.
    let clash = root.join("identity");
    std::fs::create_dir_all(&clash).unwrap();
    place_bytes(&clash, 1, GARBAGE);
    // The whole model directory removed: the model is unloaded.
    std::fs::remove_dir_all(&dir).unwrap();
    wait_for_serving(&gateway, "m", None, Duration::from_secs(10)).await;
    assert_eq!(gateway.infer("m", &identity_request(1.0)).await.status, StatusCode::NOT_FOUND);

    let r = gateway.infer("identity", &identity_request(4.0)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(output_f32(&r.json(), "output")[0], 4.0);
    let remote = gateway.running.as_ref().unwrap().state.repository.get("identity", None).unwrap();
    assert_eq!(remote.platform, "remote");
    drop(remote);
    assert_eq!(loads(&gateway, "identity", "load_failed").await, 0.0, "the clashing directory was not loaded");
    assert_eq!(index(&gateway).await[&("identity".into(), "1".into())], ("READY".into(), String::new()));
    for action in ["load", "unload"] {
        let r = admin_post(&gateway, &format!("/v2/repository/models/identity/{action}"), "").await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{action}");
        assert!(r.error().contains("upstream pool"), "{}", r.error());
    }
    assert_eq!(gateway.infer("identity", &identity_request(4.0)).await.status, StatusCode::OK);
    gateway.shutdown().await;
    worker.shutdown().await;
}

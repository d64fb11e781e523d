//! The admin listener end to end: `/metrics` counts what clients saw (by model, version, protocol and code), carries
//! every catalogued family with help text, histograms with buckets and the process readings; `/scaling` follows load;
//! turning metrics off removes `/metrics` but keeps the scaling signal.

use crate::common::*;
use hyper::StatusCode;
use serde_json::{json, Value};
use sluice::config::Config;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One sample line of the Prometheus text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: HashMap<String, String>,
    value: f64,
}

fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), HashMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("bad labels in {line:?}"));
                let labels = body
                    .split("\",")
                    .filter(|p| !p.is_empty())
                    .map(|p| {
                        let (k, v) = p.split_once("=\"").unwrap_or_else(|| panic!("bad label {p:?} in {line:?}"));
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
        };
        samples.push(Sample { name, labels, value });
    }
    samples
}

/// The value of the one series named `name` whose labels include `want` (0 when there is none).
fn value(samples: &[Sample], name: &str, want: &[(&str, &str)]) -> f64 {
    let matching: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.name == name && want.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .collect();
    assert!(matching.len() <= 1, "{name} {want:?} matches several series: {matching:?}");
    matching.first().map_or(0.0, |s| s.value)
}

async fn scrape(server: &Server) -> (String, Vec<Sample>) {
    let r = server.admin_get("/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let text = String::from_utf8(r.body.to_vec()).expect("UTF-8 exposition");
    let samples = parse_exposition(&text);
    (text, samples)
}

fn identity_request(rows: usize) -> Value {
    json!({"inputs": [{"name": "input", "shape": [rows, 256], "datatype": "FP32", "data": vec![0.5f32; rows * 256]}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_counters_match_what_clients_saw() {
    let server = start_repo(TempRepo::new().link("identity").link("fraud_mlp")).await;
    for _ in 0..5 {
        assert_eq!(server.infer("identity", &identity_request(2)).await.status, StatusCode::OK);
    }
    // A known model with a bad request, a pinned version, and an unknown model (counted apart, not by its name).
    assert_eq!(server.infer("identity", &json!({"inputs": []})).await.status, StatusCode::BAD_REQUEST);
    let fraud = json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": vec![0.1f32; 64]}]});
    let r = server.post_json("/v2/models/fraud_mlp/versions/1/infer", &fraud).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(server.infer("no_such_model_x", &identity_request(1)).await.status, StatusCode::NOT_FOUND);

    let (text, samples) = scrape(&server).await;
    let requests = |model: &str, version: &str, code: &str| {
        value(&samples, "sluice_requests_total", &[("model", model), ("version", version), ("protocol", "http"), ("code", code)])
    };
    assert_eq!(requests("identity", "1", "200"), 5.0, "{text}");
    assert_eq!(requests("identity", "1", "400"), 1.0);
    assert_eq!(requests("fraud_mlp", "1", "200"), 1.0);
    assert_eq!(requests("_unknown", "", "404"), 1.0);
    assert!(!text.contains("no_such_model_x"), "a client-chosen name became a label");

    // Histograms: 6 HTTP answers on identity (5 ok + 1 bad), 5 queued requests, batches covering 10 rows.
    let count = |name: &str| value(&samples, name, &[("model", "identity"), ("version", "1")]);
    assert_eq!(value(&samples, "sluice_request_duration_seconds_count", &[("model", "identity"), ("protocol", "http")]), 6.0);
    assert_eq!(count("sluice_queue_duration_seconds_count"), 5.0);
    assert_eq!(count("sluice_batch_size_sum"), 10.0);
    assert!(count("sluice_compute_duration_seconds_count") >= 1.0);
    let le_inf = value(&samples, "sluice_queue_duration_seconds_bucket", &[("model", "identity"), ("le", "+Inf")]);
    assert_eq!(le_inf, 5.0, "histograms are rendered with buckets, not as summaries");
    assert!(text.contains("le=\"0.000025\""), "the smallest latency bucket is 25 µs");

    // Every family has help text; process readings are there.
    for line in text.lines().filter(|l| l.starts_with("# TYPE ")) {
        let family = line.split_whitespace().nth(2).unwrap();
        assert!(text.contains(&format!("# HELP {family} ")), "no help for {family}");
    }
    assert!(value(&samples, "process_resident_memory_bytes", &[]) > 1e6);
    assert!(value(&samples, "process_open_fds", &[]) >= 3.0);
    assert!(text.contains("# TYPE process_cpu_seconds_total counter"));
    assert_eq!(value(&samples, "sluice_build_info", &[("version", env!("CARGO_PKG_VERSION"))]), 1.0);
    // Per-model gauges from the scaling signal.
    for gauge in ["sluice_queue_requests", "sluice_queue_rows", "sluice_inflight_requests", "sluice_desired_replicas", "sluice_instance_busy_ratio"] {
        assert!(samples.iter().any(|s| s.name == gauge && s.labels.get("model").map(String::as_str) == Some("identity")), "no {gauge}");
    }

    // The data port does not serve metrics; the admin port answers unknown paths with a V2 error body.
    assert_eq!(server.get("/metrics").await.status, StatusCode::NOT_FOUND);
    let r = server.admin_get("/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.error().contains("/metrics"));
    server.shutdown().await;
}

/// Overload and queue timeouts are counted by reason, and agree exactly with the statuses clients got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_by_reason_agree_with_client_statuses() {
    let toml = "max_batch_size = 64\ninstances = 1\nthreads = 1\n[queue]\ncapacity = 4\ntimeout = \"5s\"\n";
    let server = Arc::new(start_repo(TempRepo::new().model("wide_small", "wide", 1, toml)).await);
    let body = Arc::new(json!({"inputs": [{"name": "input", "shape": [1, 512], "datatype": "FP32", "data": vec![0.25f32; 512]}]}));
    let handles: Vec<_> = (0..60)
        .map(|_| {
            let (server, body) = (server.clone(), body.clone());
            tokio::spawn(async move { server.infer("wide_small", &body).await.status })
        })
        .collect();
    let mut by_code: HashMap<u16, f64> = HashMap::new();
    for h in handles {
        *by_code.entry(h.await.unwrap().as_u16()).or_default() += 1.0;
    }
    assert!(by_code.get(&429).copied().unwrap_or(0.0) > 0.0, "a queue of 4 never overflowed: {by_code:?}");
    let (_, samples) = scrape(&server).await;
    let labels = [("model", "wide_small"), ("version", "1")];
    for (code, n) in &by_code {
        let c = code.to_string();
        assert_eq!(value(&samples, "sluice_requests_total", &[labels[0], labels[1], ("protocol", "http"), ("code", c.as_str())]), *n, "code {code}");
    }
    // The 200 series of each protocol exist from model load, at zero, so rate() and increase() work from the start.
    assert_eq!(value(&samples, "sluice_requests_total", &[labels[0], labels[1], ("protocol", "grpc"), ("code", "200")]), 0.0);
    let rejected = |reason: &str| value(&samples, "sluice_rejected_requests_total", &[labels[0], labels[1], ("reason", reason)]);
    assert_eq!(rejected("queue_full"), by_code[&429]);
    assert_eq!(rejected("queue_timeout"), by_code.get(&504).copied().unwrap_or(0.0));
    Arc::try_unwrap(server).ok().expect("no request holds the server").shutdown().await;
}

/// `/scaling` has the documented shape, reflects arrivals within a second, and names unknown models clearly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_endpoint_follows_load() {
    let server = start_repo(TempRepo::new().link("identity")).await;
    let idle = server.admin_get("/scaling").await;
    assert_eq!(idle.status, StatusCode::OK);
    let v = idle.json();
    for key in ["timestamp", "target_utilization", "desired_replicas", "active", "models"] {
        assert!(v.get(key).is_some(), "no {key} in {v}");
    }
    assert!(v["timestamp"].as_str().unwrap().ends_with('Z'), "RFC 3339 UTC: {v}");
    assert_eq!(v["target_utilization"], 0.7);
    let model = &v["models"]["identity"];
    for key in ["desired_replicas", "active", "queue_requests", "queue_rows", "in_flight", "arrival_rate", "arrival_rows_rate", "service_rows_rate", "busy_ratio", "instances"] {
        assert!(model.get(key).is_some(), "no models.identity.{key} in {v}");
    }
    assert_eq!(model["active"], false);
    assert_eq!(model["desired_replicas"], 0.0);

    let started = Instant::now();
    for _ in 0..20 {
        assert_eq!(server.infer("identity", &identity_request(4)).await.status, StatusCode::OK);
    }
    // The sampler publishes every 100 ms; poll for at most 1 s after the requests.
    let deadline = Instant::now() + Duration::from_secs(1);
    let seen = loop {
        let m = server.admin_get("/scaling/identity").await.json();
        if m["arrival_rate"].as_f64().unwrap() > 0.0 && m["service_rows_rate"].as_f64().unwrap() > 0.0 {
            break m;
        }
        assert!(Instant::now() < deadline, "no arrivals seen 1 s after {:?} of load: {m}", started.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(seen["arrival_rows_rate"].as_f64().unwrap() >= 4.0 * seen["arrival_rate"].as_f64().unwrap() * 0.99, "{seen}");
    assert!(seen["desired_replicas"].as_f64().unwrap() > 0.0, "{seen}");
    assert_eq!(seen["active"], true, "arrivals in the fast window make the model active: {seen}");

    let r = server.admin_get("/scaling/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.error(), "unknown model 'nope'");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_off_removes_metrics_but_keeps_scaling() {
    let repo = TempRepo::new().link("identity");
    let mut config = Config::default();
    config.server.models = repo.path().to_path_buf();
    config.metrics.enabled = false;
    let server = start_with(config, Some(repo)).await;
    assert_eq!(server.infer("identity", &identity_request(1)).await.status, StatusCode::OK);
    let r = server.admin_get("/metrics").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.error().contains("disabled"));
    assert_eq!(server.admin_get("/scaling").await.status, StatusCode::OK);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_and_scaler_can_be_turned_off() {
    let repo = TempRepo::new().link("identity");
    let mut config = Config::default();
    config.server.models = repo.path().to_path_buf();
    config.admin.enabled = false;
    config.scaling.keda.enabled = false;
    let server = start_with(config, Some(repo)).await;
    assert!(server.admin_addr.is_none());
    assert!(server.scaler_addr.is_none());
    assert_eq!(server.infer("identity", &identity_request(1)).await.status, StatusCode::OK);
    server.shutdown().await;
}

//! How fast the scaling signal follows a load step: `cargo bench --bench scaling_reaction`.
//!
//! Starts a real server in-process on 127.0.0.1 (the demo models, default `[scaling]` settings), opens KEDA's
//! `StreamIsActive` on model `wide` through the generated external-scaler client, polls `GET /scaling/wide` on the
//! admin port every 10 ms, and drives open-loop load (1-row requests at a fixed rate over HTTP). Each trial:
//!
//! 1. idle until the model is idle again and its desired replicas are back to 0 (the 10 s window has forgotten);
//! 2. step idle → `LOW_RATE` for `STEP`: time to the StreamIsActive `true` push, to `/scaling` showing the model
//!    active, and to `desired_replicas` reaching 90% of the step (its settled value: the median over the step's last
//!    `SETTLED` seconds);
//! 3. step `LOW_RATE` → `HIGH_RATE` for `STEP`: time to 90% of the rise in `desired_replicas`;
//! 4. stop: time from the last answer to the `false` push.
//!
//! Times are from the first request of a step being sent (the `false` push: from the last answer). `/scaling` times
//! are accurate to the 10 ms poll. Every loop is bounded in count and time; the load only targets 127.0.0.1.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use sluice::config::Config;
use sluice::scaling::keda::pb::external_scaler_client::ExternalScalerClient;
use sluice::scaling::keda::pb::ScaledObjectRef;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

const MODEL: &str = "wide";
const TRIALS: usize = 5;
const LOW_RATE: f64 = 60.0;
const HIGH_RATE: f64 = 240.0;
const STEP: Duration = Duration::from_secs(4);
const SETTLED: Duration = Duration::from_millis(1500);
const POLL: Duration = Duration::from_millis(10);
/// Longest wait for the model to be idle with desired 0 again between trials.
const IDLE_WAIT: Duration = Duration::from_secs(30);

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// What the poller saw: (when, desired_replicas, active).
type Samples = Arc<Mutex<Vec<(Instant, f64, bool)>>>;
/// What StreamIsActive pushed: (when, active).
type Pushes = Arc<Mutex<Vec<(Instant, bool)>>>;

fn main() {
    // `cargo test --all-targets` runs bench targets too, without `--bench`: a minute of load is not a test.
    if !std::env::args().any(|a| a == "--bench") {
        println!("scaling_reaction: a benchmark; run it with `cargo bench --bench scaling_reaction`");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(run());
}

async fn run() {
    let mut config = Config::default();
    config.server.models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
    for addr in [&mut config.server.http, &mut config.server.grpc, &mut config.admin.listen, &mut config.scaling.keda.listen] {
        *addr = "127.0.0.1:0".parse().expect("address");
    }
    let running = sluice::app::start(&config, std::future::pending::<()>()).await.expect("server start (run scripts/setup.sh first)");
    let http = running.http_addr;
    let admin = running.admin_addr.expect("admin listener");
    let scaler = running.scaler_addr.expect("scaler listener");
    let client: HttpClient = Client::builder(TokioExecutor::new()).build(HttpConnector::new());

    let samples: Samples = Arc::default();
    let pushes: Pushes = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let poller = tokio::spawn(poll_scaling(client.clone(), admin, samples.clone(), done.clone()));
    let stream = tokio::spawn(watch_stream(scaler, pushes.clone(), done.clone()));

    println!("scaling reaction: model {MODEL}, steps idle -> {LOW_RATE} req/s -> {HIGH_RATE} req/s (1 row each), {TRIALS} trials");
    println!("warm-up: 2 s at {LOW_RATE} req/s so the service rate is measured");
    load(&client, http, LOW_RATE, Duration::from_secs(2)).await;

    let mut rows: Vec<[f64; 5]> = Vec::new();
    for trial in 1..=TRIALS {
        wait_idle(&samples).await;
        let low = load(&client, http, LOW_RATE, STEP).await;
        let high = load(&client, http, HIGH_RATE, STEP).await;
        tokio::time::sleep(Duration::from_secs(3)).await; // the `false` push comes about 1 s after the last answer
        let s = samples.lock().expect("samples").clone();
        let p = pushes.lock().expect("pushes").clone();
        let baseline = 0.0;
        let low_settled = settled(&s, low.first_sent, low.first_sent + STEP);
        let high_settled = settled(&s, high.first_sent, high.first_sent + STEP);
        let ms = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
        let push_true = ms(p.iter().find(|(at, v)| *at >= low.first_sent && *v).map(|(at, _)| *at - low.first_sent));
        let active = ms(s.iter().find(|(at, _, a)| *at >= low.first_sent && *a).map(|(at, _, _)| *at - low.first_sent));
        let low90 = ms(time_to(&s, low.first_sent, baseline + 0.9 * (low_settled - baseline)));
        let high90 = ms(time_to(&s, high.first_sent, low_settled + 0.9 * (high_settled - low_settled)));
        let push_false = ms(p.iter().find(|(at, v)| *at >= high.last_answer && !*v).map(|(at, _)| *at - high.last_answer));
        println!(
            "trial {trial}: idle->low: push true {push_true:.0} ms, /scaling active {active:.0} ms, desired 90% {low90:.0} ms \
             (0 -> {low_settled:.2}); low->high: desired 90% {high90:.0} ms ({low_settled:.2} -> {high_settled:.2}); \
             stop: push false {push_false:.0} ms; answered {} + {} (non-200: {})",
            low.answered,
            high.answered,
            low.failed + high.failed
        );
        rows.push([push_true, active, low90, high90, push_false]);
    }
    done.store(true, Ordering::Relaxed);
    let _ = poller.await;
    stream.abort();

    println!("\n| measure | median ms | max ms |\n|---|---|---|");
    let names = [
        "idle → load: StreamIsActive `true` pushed",
        "idle → load: `/scaling` shows the model active",
        "idle → load: `/scaling` desired_replicas at 90% of the step",
        "load ×4: `/scaling` desired_replicas at 90% of the rise",
        "load end → StreamIsActive `false` pushed",
    ];
    for (i, name) in names.iter().enumerate() {
        let mut v: Vec<f64> = rows.iter().map(|r| r[i]).collect();
        v.sort_by(|a, b| a.total_cmp(b));
        println!("| {name} | {:.0} | {:.0} |", v[v.len() / 2], v[v.len() - 1]);
    }
    let _ = running.shutdown().await;
}

/// The median desired_replicas over the last `SETTLED` of [from, to].
fn settled(samples: &[(Instant, f64, bool)], from: Instant, to: Instant) -> f64 {
    let start = (to - SETTLED).max(from);
    let mut v: Vec<f64> = samples.iter().filter(|(at, _, _)| *at >= start && *at <= to).map(|(_, d, _)| *d).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Time from `from` to the first sample at or above `level`.
fn time_to(samples: &[(Instant, f64, bool)], from: Instant, level: f64) -> Option<Duration> {
    samples.iter().find(|(at, d, _)| *at >= from && *d >= level).map(|(at, _, _)| *at - from)
}

/// Waits until the latest sample shows the model idle with desired 0 (bounded by `IDLE_WAIT`).
async fn wait_idle(samples: &Samples) {
    let deadline = Instant::now() + IDLE_WAIT;
    while Instant::now() < deadline {
        if let Some((_, d, a)) = samples.lock().expect("samples").last() {
            if *d == 0.0 && !*a {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("warning: the model did not return to idle within {IDLE_WAIT:?}");
}

struct Step {
    first_sent: Instant,
    last_answer: Instant,
    answered: usize,
    failed: usize,
}

/// Open-loop load: one 1-row request every 1/rate seconds for `length`, each on its own task; returns once every
/// request has been answered.
async fn load(client: &HttpClient, http: SocketAddr, rate: f64, length: Duration) -> Step {
    let body = Bytes::from(
        serde_json::json!({"inputs": [{"name": "input", "shape": [1, 512], "datatype": "FP32", "data": vec![0.5f32; 512]}]}).to_string(),
    );
    let uri: hyper::Uri = format!("http://{http}/v2/models/{MODEL}/infer").parse().expect("uri");
    let mut tasks = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let first_sent = Instant::now();
    let count = (rate * length.as_secs_f64()).round() as usize;
    for _ in 0..count {
        tick.tick().await;
        let (client, uri, body) = (client.clone(), uri.clone(), body.clone());
        tasks.spawn(async move {
            let request = hyper::Request::post(uri).header("content-type", "application/json").body(Full::new(body)).expect("request");
            let ok = match tokio::time::timeout(Duration::from_secs(10), client.request(request)).await {
                Ok(Ok(response)) => {
                    let status = response.status();
                    let _ = response.into_body().collect().await;
                    status == hyper::StatusCode::OK
                }
                _ => false,
            };
            (ok, Instant::now())
        });
    }
    let (mut answered, mut failed, mut last_answer) = (0, 0, first_sent);
    while let Some(joined) = tasks.join_next().await {
        if let Ok((ok, at)) = joined {
            answered += 1;
            failed += usize::from(!ok);
            last_answer = last_answer.max(at);
        }
    }
    Step { first_sent, last_answer, answered, failed }
}

/// Polls `GET /scaling/{MODEL}` every `POLL` until `done`.
async fn poll_scaling(client: HttpClient, admin: SocketAddr, samples: Samples, done: Arc<AtomicBool>) {
    let uri: hyper::Uri = format!("http://{admin}/scaling/{MODEL}").parse().expect("uri");
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !done.load(Ordering::Relaxed) {
        tick.tick().await;
        let Ok(response) = client.get(uri.clone()).await else { continue };
        let Ok(body) = response.into_body().collect().await else { continue };
        let Ok(value) = serde_json::from_slice::<serde_json::Value>(&body.to_bytes()) else { continue };
        let desired = value["desired_replicas"].as_f64().unwrap_or(f64::NAN);
        let active = value["active"].as_bool().unwrap_or(false);
        samples.lock().expect("samples").push((Instant::now(), desired, active));
    }
}

/// Records every StreamIsActive message for `MODEL`.
async fn watch_stream(scaler: SocketAddr, pushes: Pushes, done: Arc<AtomicBool>) {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{scaler}")).expect("endpoint").connect().await.expect("scaler connect");
    let mut client = ExternalScalerClient::new(channel);
    let metadata = HashMap::from([("model".to_string(), MODEL.to_string()), ("scalerAddress".to_string(), scaler.to_string())]);
    let object = ScaledObjectRef { name: "bench".into(), namespace: "bench".into(), scaler_metadata: metadata };
    let mut stream = client.stream_is_active(object).await.expect("StreamIsActive").into_inner();
    while !done.load(Ordering::Relaxed) {
        match stream.message().await {
            Ok(Some(message)) => pushes.lock().expect("pushes").push((Instant::now(), message.result)),
            _ => return,
        }
    }
}

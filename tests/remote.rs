//! The `remote` backend end to end on loopback: a Sluice gateway (started in this process on port 0) in front of real
//! Sluice workers (in-process servers, or `sluice serve` processes where a worker must be SIGKILLed), and in front of
//! small test proxies that forward to a real worker but can be switched to hang, to answer garbage, to answer 429 or
//! to add latency. Every request loop is bounded in count and time.

use bytes::Bytes;
use crate::common::*;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};
use sluice::config::{Config, UpstreamConfig, UpstreamProtocol};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A pool config with test-friendly timings: health checks every 100 ms, ejection after 2 failures in a row.
fn pool(endpoints: Vec<String>, protocol: UpstreamProtocol) -> UpstreamConfig {
    let mut pool = UpstreamConfig {
        name: "workers".into(),
        protocol,
        endpoints,
        models: vec!["identity".into()],
        connect_timeout: Duration::from_millis(300),
        try_timeout: Duration::from_millis(500),
        timeout: Duration::from_secs(5),
        startup_timeout: Duration::from_secs(10),
        ..UpstreamConfig::default()
    };
    pool.health.interval = Duration::from_millis(100);
    pool.health.timeout = Duration::from_millis(200);
    pool.health.healthy_threshold = 2;
    pool.health.unhealthy_threshold = 2;
    pool.ejection.consecutive_failures = 2;
    pool.ejection.base_time = Duration::from_millis(500);
    pool.ejection.max_time = Duration::from_secs(2);
    pool
}

async fn start_gateway(pool: UpstreamConfig) -> Server {
    let mut config = Config::default();
    config.server.models = "/nonexistent/sluice-gateway-test".into();
    config.upstreams = vec![pool];
    config.validate(std::path::Path::new("test")).expect("valid gateway config");
    start_with(config, None).await
}

fn identity_request(seed: f32) -> Value {
    let data: Vec<f32> = (0..256).map(|i| seed + i as f32).collect();
    json!({"inputs": [{"name": "input", "shape": [1, 256], "datatype": "FP32", "data": data}]})
}

/// The first value of the identity model's answer.
fn first_output(reply: &Reply) -> f64 {
    reply.json()["outputs"][0]["data"][0].as_f64().unwrap_or(f64::NAN)
}


/// A gRPC call to `identity` on `addr` (inputs 0..256), with `deadline` if any.
async fn grpc_identity(addr: SocketAddr, deadline: Option<Duration>) -> Result<tonic::Response<sluice::protocol::grpc::pb::ModelInferResponse>, tonic::Status> {
    let mut grpc = sluice::protocol::grpc::pb::grpc_inference_service_client::GrpcInferenceServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("gRPC connect");
    let data: Vec<f32> = (0..256).map(|i| i as f32).collect();
    let tensor = sluice::tensor::Tensor::from_slice(sluice::tensor::DataType::F32, vec![1, 256], &data).expect("tensor");
    let mut request = tonic::Request::new(sluice::protocol::grpc::encode_request("identity", None, None, &[sluice::protocol::NamedTensor { name: "input".into(), tensor }]));
    if let Some(deadline) = deadline {
        request.set_timeout(deadline);
    }
    grpc.model_infer(request).await
}

/// The `identity` model's metadata as a gateway would declare it, with its output named `output`.
fn declared_identity(output: &str) -> sluice::config::DeclaredSignature {
    let tensor = |name: &str| sluice::config::DeclaredTensor { name: name.into(), datatype: "FP32".into(), shape: vec![-1, 256] };
    sluice::config::DeclaredSignature { version: None, inputs: vec![tensor("input")], outputs: vec![tensor(output)] }
}

// ---------------------------------------------------------------------------------------------------------------
// A test proxy in front of a real worker.

#[derive(Clone, Copy, Debug, PartialEq)]
enum Behaviour {
    /// Forwards everything, after this delay on inference requests.
    Forward(Duration),
    /// Accepts connections and requests and never answers any of them.
    Hang,
    /// Never answers inference requests; the rest (health checks, metadata) is forwarded.
    HangInfer,
    /// Answers readiness checks 503 at once; the rest is forwarded.
    Unready,
    /// Answers inference requests 200 with a body that is not V2; the rest is forwarded.
    Garbage,
    /// Answers inference requests with this status and a V2 error body; the rest is forwarded.
    Status(u16),
}

struct Proxy {
    addr: SocketAddr,
    behaviour: Arc<parking_lot::Mutex<Behaviour>>,
    /// Inference requests received.
    infers: Arc<AtomicU64>,
}

impl Proxy {
    async fn start(target: SocketAddr, behaviour: Behaviour) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let behaviour = Arc::new(parking_lot::Mutex::new(behaviour));
        let infers = Arc::new(AtomicU64::new(0));
        let (b, n) = (behaviour.clone(), infers.clone());
        tokio::spawn(async move {
            let upstream = client();
            loop {
                let Ok((stream, _)) = listener.accept().await else { break };
                let (b, n, upstream) = (b.clone(), n.clone(), upstream.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let (b, n, upstream) = (b.clone(), n.clone(), upstream.clone());
                        let behaviour = *b.lock();
                        async move { Ok::<_, std::convert::Infallible>(proxy_one(req, target, behaviour, &n, &upstream).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        Proxy { addr, behaviour, infers }
    }

    fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock() = behaviour;
    }

    fn infers(&self) -> u64 {
        self.infers.load(Ordering::Relaxed)
    }
}

async fn proxy_one(req: Request<hyper::body::Incoming>, target: SocketAddr, behaviour: Behaviour, infers: &AtomicU64, upstream: &HttpClient) -> Response<Full<Bytes>> {
    let is_infer = req.uri().path().ends_with("/infer");
    if is_infer {
        infers.fetch_add(1, Ordering::Relaxed);
    }
    match behaviour {
        Behaviour::Hang => std::future::pending::<()>().await,
        Behaviour::HangInfer if is_infer => std::future::pending::<()>().await,
        Behaviour::Unready if req.uri().path() == "/v2/health/ready" => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            return r;
        }
        Behaviour::Garbage if is_infer => return Response::new(Full::new(Bytes::from_static(b"<html>this is not a V2 answer</html>"))),
        Behaviour::Status(code) if is_infer => {
            let mut r = Response::new(Full::new(Bytes::from(json!({"error": format!("test proxy says {code}")}).to_string())));
            *r.status_mut() = StatusCode::from_u16(code).expect("status");
            r.headers_mut().insert("retry-after", "2".parse().expect("header"));
            return r;
        }
        Behaviour::Forward(delay) if is_infer => tokio::time::sleep(delay).await,
        _ => {}
    }
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let mut forward = Request::builder().method(parts.method).uri(format!("http://{target}{}", parts.uri.path()));
    for (k, v) in parts.headers.iter().filter(|(k, _)| *k != "host") {
        forward = forward.header(k, v);
    }
    let Ok(forward) = forward.body(Full::new(body)) else { return Response::new(Full::new(Bytes::new())) };
    match upstream.request(forward).await {
        Ok(answer) => {
            let (parts, body) = answer.into_parts();
            let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            Response::from_parts(parts, Full::new(body))
        }
        Err(_) => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::BAD_GATEWAY;
            r
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Workers as processes, for the tests that kill one.

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// `sluice serve` on fixed ports of 127.0.0.1, killed (SIGKILL) when dropped.
struct WorkerProcess {
    http: u16,
    grpc: u16,
    child: Option<Child>,
}

impl WorkerProcess {
    fn start() -> WorkerProcess {
        // A port found free can be taken (by another test's outgoing connection) before the worker binds it: then
        // start on other ports. Restarts keep theirs (the tests need the same address).
        let mut last = String::new();
        for _ in 0..5 {
            let mut w = WorkerProcess { http: free_port(), grpc: free_port(), child: None };
            match w.try_restart() {
                Ok(()) => return w,
                Err(said) if said.contains("Address already in use") => last = said,
                Err(said) => panic!("the worker did not start on port {} within 60 s; it said: {said}", w.http),
            }
        }
        panic!("no free ports for a worker after 5 tries; last: {last}");
    }

    /// Starts (again) on the same ports and waits until it says it is listening.
    fn restart(&mut self) {
        if let Err(said) = self.try_restart() {
            panic!("the worker did not start on port {} within 60 s; it said: {said}", self.http);
        }
    }

    fn try_restart(&mut self) -> Result<(), String> {
        self.kill();
        let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["serve", "--models"])
            .arg(models_dir().join("identity").parent().expect("models dir"))
            .args(["--http", &format!("127.0.0.1:{}", self.http), "--grpc", &format!("127.0.0.1:{}", self.grpc)])
            .args(["--admin", "127.0.0.1:0", "--scaler", "127.0.0.1:0"])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start a sluice worker");
        let stdout = child.stdout.take().expect("worker stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("sluice listening") {
                    let _ = tx.send(());
                }
            }
        });
        // The worker's (warn-level) log: kept (the first 64 KiB) to explain a failed start, drained after that.
        let stderr = child.stderr.take().expect("worker stderr");
        let log = std::thread::spawn(move || {
            let mut kept = String::new();
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if kept.len() < 64 * 1024 {
                    kept.push_str(&line);
                    kept.push('\n');
                }
            }
            kept
        });
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(log.join().unwrap_or_default());
        }
        self.child = Some(child);
        Ok(())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Inference requests a worker process has counted for `identity` (0 when it does not answer).
async fn worker_count(http: u16) -> u64 {
    let c = client();
    let Ok(uri) = format!("http://127.0.0.1:{http}/v2/models/identity/stats").parse::<hyper::Uri>() else { return 0 };
    let Ok(Ok(r)) = tokio::time::timeout(Duration::from_secs(2), c.get(uri)).await else { return 0 };
    let body = r.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    v["model_stats"][0]["inference_stats"]["success"]["count"].as_u64().unwrap_or(0)
}

/// Runs `clients` request loops against the gateway until `stop` is set or `until` passes, whichever is first;
/// returns (answers, failures as status: message).
async fn load(gateway: &Server, clients: usize, stop: Arc<AtomicBool>, until: Instant) -> (u64, Vec<String>) {
    let gateway_addr = gateway.addr;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let client = client();
            let (mut ok, mut failed) = (0u64, Vec::new());
            let mut i = 0u64;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) && i < 1_000_000 {
                i += 1;
                let seed = (c as u64 * 1_000_000 + i) as f32;
                let body = Bytes::from(identity_request(seed).to_string());
                let req = Request::post(format!("http://{gateway_addr}/v2/models/identity/infer"))
                    .header("content-type", "application/json")
                    .body(Full::new(body))
                    .expect("request");
                match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
                    Ok(Ok(r)) => {
                        let status = r.status();
                        let body = r.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        if status == StatusCode::OK && v["outputs"][0]["data"][0].as_f64() == Some(seed as f64) {
                            ok += 1;
                        } else {
                            failed.push(format!("{status}: {}", String::from_utf8_lossy(&body)));
                        }
                    }
                    Ok(Err(e)) => failed.push(format!("client error: {e}")),
                    Err(_) => failed.push("no answer within 10 s".into()),
                }
            }
            (ok, failed)
        }));
    }
    let mut total = (0, Vec::new());
    for t in tasks {
        let (ok, failed) = t.await.expect("load task");
        total.0 += ok;
        total.1.extend(failed);
    }
    total
}

/// Polls the gateway's /metrics until `check` holds; returns how long that took, or `None` after `within`.
async fn wait_for_metric(gateway: &Server, within: Duration, check: impl Fn(&str) -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < within {
        let text = String::from_utf8_lossy(&gateway.admin_get("/metrics").await.body).to_string();
        if check(&text) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

async fn killed_worker_scenario(protocol: UpstreamProtocol, seconds: u64) {
    let mut workers: Vec<WorkerProcess> = (0..3).map(|_| WorkerProcess::start()).collect();
    let port = |w: &WorkerProcess| if protocol == UpstreamProtocol::Http { w.http } else { w.grpc };
    let endpoints: Vec<String> = workers.iter().map(|w| format!("127.0.0.1:{}", port(w))).collect();
    let victim = endpoints[1].clone();
    let gateway = start_gateway(pool(endpoints, protocol)).await;

    let started = Instant::now();
    // The load runs at least `seconds`, and on until the restarted worker has served (so a slow restart on a busy
    // machine cannot end the load before the worker is back); 60 s is the hard bound.
    let stop = Arc::new(AtomicBool::new(false));
    let gateway = Arc::new(gateway);
    let load_task = {
        let (g, stop) = (gateway.clone(), stop.clone());
        tokio::spawn(async move { load(&g, 6, stop, started + Duration::from_secs(60)).await })
    };
    tokio::time::sleep(Duration::from_secs(seconds / 4)).await;
    workers[1].kill();
    let killed_at = Instant::now();
    let available = |text: &str| metric(text, "sluice_upstream_available", &[("endpoint", &victim)]);
    let ejected_after = wait_for_metric(&gateway, Duration::from_secs(5), |t| available(t) == 0.0).await;
    let ejections = metric(&String::from_utf8_lossy(&gateway.admin_get("/metrics").await.body), "sluice_upstream_ejections_total", &[("endpoint", &victim)]);
    tokio::time::sleep((killed_at + Duration::from_secs(seconds / 4)).saturating_duration_since(Instant::now())).await;
    workers[1].restart();
    let restarted_at = Instant::now();
    let back_after = wait_for_metric(&gateway, Duration::from_secs(5), |t| available(t) == 1.0).await;
    let mut served_after_restart = worker_count(workers[1].http).await;
    let serving_deadline = Instant::now() + Duration::from_secs(10);
    while served_after_restart == 0 && Instant::now() < serving_deadline && !load_task.is_finished() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        served_after_restart = worker_count(workers[1].http).await;
    }
    let first_served_after = restarted_at.elapsed();
    tokio::time::sleep((started + Duration::from_secs(seconds)).saturating_duration_since(Instant::now())).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = load_task.await.expect("load");
    served_after_restart = served_after_restart.max(worker_count(workers[1].http).await);

    assert!(failed.is_empty(), "{} of {} requests failed, e.g. {:?}", failed.len(), ok as usize + failed.len(), &failed[..failed.len().min(3)]);
    assert!(ok > 100, "only {ok} requests answered in {seconds} s");
    let ejected_after = ejected_after.expect("the killed worker was not taken out of rotation within 5 s");
    // Two failed attempts (at once, under load) or two failed checks 100 ms apart; 1 s leaves room for a busy machine.
    assert!(ejected_after < Duration::from_secs(1), "ejected {ejected_after:?} after the kill");
    // Counted whichever way it went out: passive ejection (failed attempts) or the active checks, whichever came first.
    assert!(ejections >= 1.0, "no ejection counted for {victim}");
    let back_after = back_after.expect("the restarted worker did not come back within 5 s");
    assert!(
        served_after_restart > 0,
        "the restarted worker got no traffic within 10 s under load ({back_after:?} after its restart it was available again)"
    );
    eprintln!(
        "{protocol:?}: {ok} requests, 0 failed; ejected {ejected_after:?} after the kill; available again {back_after:?} after the restart, \
         first served within {first_served_after:?}; the restarted worker served {served_after_restart}"
    );
}

/// A pool whose only worker is gone (scaled to zero) holds requests for up to `wait_for_endpoint` instead of failing
/// them at once: they count as in flight, so the scaling signal says the model needs workers, and they are answered
/// when a worker is back. A pool that does not wait answers 503 at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_scaled_to_zero_holds_requests_until_a_worker_is_back() {
    let mut worker = WorkerProcess::start();
    let endpoint = format!("127.0.0.1:{}", worker.http);
    let mut config = pool(vec![endpoint.clone()], UpstreamProtocol::Http);
    config.wait_for_endpoint = Duration::from_secs(30);
    let gateway = Arc::new(start_gateway(config).await);
    assert_eq!(gateway.infer("identity", &identity_request(1.0)).await.status, StatusCode::OK);

    worker.kill();
    let available = |t: &str| metric(t, "sluice_upstream_available", &[("endpoint", &endpoint)]);
    wait_for_metric(&gateway, Duration::from_secs(5), |t| available(t) == 0.0).await.expect("the killed worker was not taken out of rotation");
    let waiting: Vec<_> = (0..3)
        .map(|i| {
            let g = gateway.clone();
            tokio::spawn(async move { g.infer("identity", &identity_request(10.0 * i as f32)).await })
        })
        .collect();
    // Held, not failed: in flight at the gateway, and the model is active for the autoscaler.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let m = gateway.admin_get("/scaling/identity").await.json();
        if m["in_flight"].as_f64() == Some(3.0) && m["active"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "the held requests do not show in the scaling signal: {m}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(waiting.iter().all(|w| !w.is_finished()), "a request was answered while the pool had no worker");

    worker.restart();
    for (i, w) in waiting.into_iter().enumerate() {
        let r = tokio::time::timeout(Duration::from_secs(20), w).await.expect("answered once the worker was back").expect("request task");
        assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(first_output(&r), 10.0 * i as f64);
    }
    let text = String::from_utf8_lossy(&gateway.admin_get("/metrics").await.body).to_string();
    assert_eq!(metric(&text, "sluice_upstream_endpoint_waits_total", &[("result", "found")]), 3.0, "{text}");
    assert_eq!(metric(&text, "sluice_upstream_endpoint_waits_total", &[("result", "timed_out")]), 0.0, "{text}");
}

/// With the model's metadata declared in the configuration, a gateway starts while its pool has no worker at all
/// (scaled to zero), holds requests, and serves them once a worker is up; a worker that disagrees with the declared
/// metadata gets no traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_with_declared_signatures_starts_with_no_worker() {
    // Its ports are chosen, nothing listens on them yet.
    let mut worker = WorkerProcess { http: free_port(), grpc: free_port(), child: None };
    let endpoint = format!("127.0.0.1:{}", worker.http);
    let mut config = pool(vec![endpoint.clone()], UpstreamProtocol::Http);
    config.signatures.insert("identity".into(), declared_identity("output"));
    config.wait_for_endpoint = Duration::from_secs(30);
    config.startup_timeout = Duration::from_secs(60);
    let started = Instant::now();
    let gateway = Arc::new(start_gateway(config).await);
    assert!(started.elapsed() < Duration::from_secs(5), "the start took {:?}: it waited for a worker", started.elapsed());
    assert_eq!(gateway.get("/v2/health/ready").await.status, StatusCode::OK);
    let metadata = gateway.get("/v2/models/identity").await.json();
    assert_eq!(metadata["outputs"][0]["name"], "output", "{metadata}");
    assert_eq!(metadata["inputs"][0]["shape"], json!([-1, 256]), "{metadata}");

    let held = {
        let g = gateway.clone();
        tokio::spawn(async move { g.infer("identity", &identity_request(5.0)).await })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!held.is_finished(), "answered while no worker was up");
    worker.restart();
    let r = tokio::time::timeout(Duration::from_secs(20), held).await.expect("answered once the worker was up").expect("request task");
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(first_output(&r), 5.0);

    // Declared wrong (an output the worker does not have): that worker is never used.
    let mut config = pool(vec![endpoint.clone()], UpstreamProtocol::Http);
    config.signatures.insert("identity".into(), declared_identity("logits"));
    let wrong = start_gateway(config).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let r = wrong.infer("identity", &identity_request(1.0)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(worker_count(worker.http).await, 1, "only the first gateway's request reached the worker");
}

/// Without `wait_for_endpoint`, a pool with no usable endpoint answers 503 at once, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_with_no_usable_endpoint_answers_503_at_once_unless_told_to_wait() {
    let worker = start_models().await;
    let proxy = Proxy::start(worker.addr, Behaviour::Forward(Duration::ZERO)).await;
    let endpoint = proxy.addr.to_string();
    let gateway = start_gateway(pool(vec![endpoint.clone()], UpstreamProtocol::Http)).await;
    proxy.set(Behaviour::Hang);
    let available = |t: &str| metric(t, "sluice_upstream_available", &[("endpoint", &endpoint)]);
    wait_for_metric(&gateway, Duration::from_secs(5), |t| available(t) == 0.0).await.expect("the hanging worker was not taken out of rotation");
    // Unhealthy by its checks, so no longer verified: not even the last-resort tier takes it.
    let started = Instant::now();
    let r = gateway.infer("identity", &identity_request(1.0)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.error().contains("no endpoint is available"), "{}", r.error());
    assert!(started.elapsed() < Duration::from_millis(500), "took {:?}", started.elapsed());
}

/// Three worker processes behind the gateway (HTTP upstreams); one is SIGKILLed during a 20 s load and restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_worker_costs_no_request_and_is_readmitted_after_restart() {
    killed_worker_scenario(UpstreamProtocol::Http, 20).await;
}

/// The same over gRPC upstreams, shorter.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_upstreams_survive_a_killed_worker() {
    killed_worker_scenario(UpstreamProtocol::Grpc, 8).await;
}

/// A gRPC worker whose HTTP/2 stream limit inference keeps full still passes the gateway's health checks: they go
/// over a connection of their own. (Sharing the inference connection, they waited behind inference, timed out, and
/// the busy but healthy worker was taken out of rotation by its checks.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_health_checks_pass_while_inference_fills_the_stream_limit() {
    // The worker holds every request 1.2 s for a fuller batch and allows one stream per HTTP/2 connection.
    let slow = "max_batch_size = 64\ninstances = 1\nthreads = 1\n[dynamic_batching]\nmax_queue_delay = \"1200ms\"\npreferred_batch_sizes = [64]\n[queue]\ntimeout = \"5s\"\n";
    let repo = TempRepo::new().model("identity", "identity", 1, slow);
    let mut config = Config::default();
    config.server.models = repo.path().to_path_buf();
    config.server.max_concurrent_streams = 1;
    let worker = start_with(config, Some(repo)).await;
    let mut upstream = pool(vec![worker.grpc_addr.to_string()], UpstreamProtocol::Grpc);
    upstream.try_timeout = Duration::from_secs(4);
    // Room for a busy test machine; a check queued behind a 1.2 s inference still misses it.
    upstream.health.timeout = Duration::from_millis(400);
    let gateway = Arc::new(start_gateway(upstream).await);
    // Two requests in turn: the inference connection's only stream is taken for ~2.4 s.
    let load = {
        let gateway = gateway.clone();
        tokio::spawn(async move {
            let mut statuses = Vec::new();
            for i in 0..2 {
                statuses.push(gateway.infer("identity", &identity_request(i as f32)).await.status);
            }
            statuses
        })
    };
    // Checks every 100 ms, unhealthy after 2 misses: checks blocked behind inference would show within ~1 s.
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let text = String::from_utf8_lossy(&gateway.admin_get("/metrics").await.body).to_string();
    let endpoint = worker.grpc_addr.to_string();
    assert_eq!(metric(&text, "sluice_upstream_ejections_total", &[("endpoint", &endpoint), ("reason", "health_check")]), 0.0, "{text}");
    assert_eq!(metric(&text, "sluice_upstream_available", &[("endpoint", &endpoint)]), 1.0, "{text}");
    let statuses = tokio::time::timeout(Duration::from_secs(15), load).await.expect("the requests ended").expect("no panic");
    assert_eq!(statuses, vec![StatusCode::OK, StatusCode::OK]);
}

/// Endpoints that accept and never answer delay the start by one metadata timeout together, not one each: a pool's
/// endpoints are asked at once (four silent ones asked in turn would take 4 s here before the good one answered).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_endpoints_delay_the_start_by_one_timeout_together() {
    let worker = start_models().await;
    let good = Proxy::start(worker.addr, Behaviour::Forward(Duration::ZERO)).await;
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(Proxy::start(worker.addr, Behaviour::Hang).await);
    }
    let mut endpoints: Vec<String> = silent.iter().map(|p| p.addr.to_string()).collect();
    endpoints.push(good.addr.to_string());
    let mut config = pool(endpoints, UpstreamProtocol::Http);
    config.health.timeout = Duration::from_secs(1);
    let started = Instant::now();
    let gateway = start_gateway(config).await;
    let took = started.elapsed();
    // One timeout to find the model, one to check the silent endpoints against it (both rounds ask all at once).
    assert!(took < Duration::from_millis(3500), "the start took {took:?}");
    let r = gateway.infer("identity", &identity_request(3.0)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(first_output(&r), 3.0);
}

/// A worker that accepts and never answers costs each request at most one try timeout, is ejected, and the gateway
/// keeps answering (health probes at once, inference through the other worker).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hanging_worker_is_timed_out_and_ejected_and_the_gateway_stays_responsive() {
    let worker = start_models().await;
    let good = Proxy::start(worker.addr, Behaviour::Forward(Duration::ZERO)).await;
    let hanging = Proxy::start(worker.addr, Behaviour::Forward(Duration::ZERO)).await;
    let mut config = pool(vec![good.addr.to_string(), hanging.addr.to_string()], UpstreamProtocol::Http);
    config.try_timeout = Duration::from_millis(300);
    let gateway = start_gateway(config).await;
    hanging.set(Behaviour::Hang);
    let hung_at = Instant::now();

    let mut slowest = Duration::ZERO;
    for i in 0..30 {
        let started = Instant::now();
        let r = gateway.infer("identity", &identity_request(i as f32)).await;
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(first_output(&r), i as f64);
        slowest = slowest.max(started.elapsed());
        let probe = Instant::now();
        assert_eq!(gateway.get("/v2/health/ready").await.status, StatusCode::OK);
        assert!(probe.elapsed() < Duration::from_millis(200), "a health probe took {:?}", probe.elapsed());
    }
    // A request that met the hanging worker waited one try timeout (300 ms) and was answered by the other one.
    assert!(slowest < Duration::from_millis(1500), "slowest request {slowest:?}");
    let hanging_label = hanging.addr.to_string();
    let out = wait_for_metric(&gateway, Duration::from_secs(3), |t| metric(t, "sluice_upstream_available", &[("endpoint", &hanging_label)]) == 0.0).await;
    let out = out.map(|_| hung_at.elapsed()).expect("the hanging worker was not taken out of rotation");
    // Two missed health checks (100 ms apart, 200 ms timeout each), with room for a busy machine.
    assert!(out < Duration::from_millis(1500), "taken out {out:?} after it started hanging");
    let text = String::from_utf8_lossy(&gateway.admin_get("/metrics").await.body).to_string();
    // Out of rotation: by passive ejection (timeouts in a row) or by the active checks, whichever came first (the
    // checks hang too, and two missed checks 100 ms apart make it unhealthy).
    assert!(metric(&text, "sluice_upstream_requests_total", &[("endpoint", &hanging_label), ("outcome", "timeout")]) >= 1.0, "{text}");
    assert_eq!(metric(&text, "sluice_upstream_available", &[("endpoint", &hanging_label)]), 0.0, "{text}");
    assert!(metric(&text, "sluice_upstream_ejections_total", &[("endpoint", &hanging_label)]) >= 1.0, "{text}");
    // After the ejection the hanging worker got (almost) nothing: at most a probe per ejection expiry.
    assert!(hanging.infers() <= 6, "the hanging worker still got {} requests", hanging.infers());
}

/// A client's deadline ends the attempt it waits on, not the attempt's own (long) timeout: a gRPC call is answered
/// DEADLINE_EXCEEDED when its deadline passes and its attempt to a hanging worker is dropped at once (no longer
/// outstanding upstream); an HTTP client that hangs up withdraws its attempt the same way (docs/REMOTE.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_deadline_or_hang_up_ends_its_upstream_attempt() {
    let worker = start_models().await;
    let proxy = Proxy::start(worker.addr, Behaviour::Forward(Duration::ZERO)).await;
    let mut config = pool(vec![proxy.addr.to_string()], UpstreamProtocol::Http);
    config.try_timeout = Duration::from_secs(8);
    config.timeout = Duration::from_secs(10);
    config.max_attempts = 1;
    let gateway = start_gateway(config).await;
    proxy.set(Behaviour::HangInfer);
    let endpoint = proxy.addr.to_string();
    let outstanding = move |t: &str| metric(t, "sluice_upstream_outstanding_requests", &[("endpoint", &endpoint)]);

    let started = Instant::now();
    let call = tokio::spawn(grpc_identity(gateway.grpc_addr, Some(Duration::from_millis(600))));
    wait_for_metric(&gateway, Duration::from_secs(2), |t| outstanding(t) == 1.0).await.expect("the gRPC request's attempt never started");
    let status = call.await.expect("call task").expect_err("the worker hangs");
    // From the server (which answers just before the deadline) or from tonic's own timer, whichever comes first.
    assert!(matches!(status.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled), "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "answered after {:?}", started.elapsed());
    wait_for_metric(&gateway, Duration::from_secs(3), |t| outstanding(t) == 0.0).await.expect("the attempt outlived the gRPC deadline");
    assert!(started.elapsed() < Duration::from_secs(6), "the attempt ended only after {:?} (try_timeout is 8 s)", started.elapsed());

    // An HTTP client that gives up after 600 ms (its connection closes with the dropped request); the answer it got
    // instead, if any, is kept for the failure message.
    let started = Instant::now();
    let hang_up = tokio::spawn({
        let gateway_addr = gateway.addr;
        async move {
            let body = identity_request(1.0).to_string();
            let request = Request::post(format!("http://{gateway_addr}/v2/models/identity/infer")).body(Full::new(Bytes::from(body))).expect("request");
            match tokio::time::timeout(Duration::from_millis(600), client().request(request)).await {
                Err(_) => None,
                Ok(Ok(answer)) => Some(format!("{} {:?}", answer.status(), answer.into_body().collect().await.map(|b| b.to_bytes()))),
                Ok(Err(e)) => Some(format!("{e}")),
            }
        }
    });
    if wait_for_metric(&gateway, Duration::from_secs(2), |t| outstanding(t) == 1.0).await.is_none() {
        panic!("the HTTP request's attempt never started: {:?}", hang_up.await);
    }
    assert_eq!(hang_up.await.expect("client task"), None, "the hanging worker answered");
    wait_for_metric(&gateway, Duration::from_secs(3), |t| outstanding(t) == 0.0).await.expect("the attempt outlived its client");
    assert!(started.elapsed() < Duration::from_secs(6), "the attempt ended only after {:?} (try_timeout is 8 s)", started.elapsed());
    assert_eq!(proxy.infers(), 2, "one attempt per request (max_attempts = 1)");
    // The gateway still serves once the worker does.
    proxy.set(Behaviour::Forward(Duration::ZERO));
    let r = gateway.infer("identity", &identity_request(3.0)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
}

/// Health checks run per endpoint: one whose checks hang (each until a 3 s timeout) does not slow down the checks
/// of another, which is taken out of rotation within a few check intervals of failing them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_endpoint_does_not_slow_the_health_checks_of_the_others() {
    let worker = start_models().await;
    let slow = Proxy::start(worker.addr, Behaviour::Forward(Duration::ZERO)).await;
    let other = Proxy::start(worker.addr, Behaviour::Forward(Duration::ZERO)).await;
    let mut config = pool(vec![slow.addr.to_string(), other.addr.to_string()], UpstreamProtocol::Http);
    config.health.timeout = Duration::from_secs(3);
    let gateway = start_gateway(config).await;
    let other_label = other.addr.to_string();
    let available = |t: &str| metric(t, "sluice_upstream_available", &[("endpoint", &other_label)]);
    wait_for_metric(&gateway, Duration::from_secs(3), |t| available(t) == 1.0).await.expect("both endpoints start available");
    slow.set(Behaviour::Hang);
    tokio::time::sleep(Duration::from_millis(300)).await;
    other.set(Behaviour::Unready);
    let out = wait_for_metric(&gateway, Duration::from_secs(5), |t| available(t) == 0.0).await.expect("the unready endpoint stayed in rotation");
    // Two failed checks 100 ms apart; a round that waited for the hanging endpoint would take 3 s per check.
    assert!(out < Duration::from_millis(1500), "taken out {out:?} after it turned unready");
}

/// A gRPC pool tells its workers how long each attempt is waited for (`grpc-timeout`), lowered to the client's own
/// deadline: a worker whose batcher would hold a lone request for 5 s runs it before that deadline instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_workers_are_told_the_clients_deadline() {
    let toml = "max_batch_size = 64\n[dynamic_batching]\nmax_queue_delay = \"5s\"\npreferred_batch_sizes = [64]\n[queue]\ntimeout = \"30s\"\n";
    let worker = start_repo(TempRepo::new().model("identity", "identity", 1, toml)).await;
    let mut config = pool(vec![worker.grpc_addr.to_string()], UpstreamProtocol::Grpc);
    config.try_timeout = Duration::from_secs(10);
    config.timeout = Duration::from_secs(20);
    let gateway = start_gateway(config).await;
    let started = Instant::now();
    // The answer may or may not beat the deadline by the worker's margin (a few ms); either way the worker ran it.
    let result = grpc_identity(gateway.grpc_addr, Some(Duration::from_secs(1))).await;
    assert!(started.elapsed() < Duration::from_millis(2500), "answered after {:?}", started.elapsed());
    assert_eq!(worker_count(worker.addr.port()).await, 1, "the worker held the request past its deadline: {result:?}");
}

/// A clients' deadline ends a batch's attempt even though the batch runs in its own task, without blaming the
/// endpoint: the attempt is counted as `client_deadline`, the endpoint is not ejected and stays available.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_attempt_ends_at_its_clients_deadline_without_blaming_the_endpoint() {
    let worker = start_models().await;
    let proxy = Proxy::start(worker.addr, Behaviour::Forward(Duration::ZERO)).await;
    let endpoint = proxy.addr.to_string();
    let mut config = pool(vec![endpoint.clone()], UpstreamProtocol::Http);
    config.try_timeout = Duration::from_secs(8);
    config.timeout = Duration::from_secs(10);
    config.ejection.consecutive_failures = 1;
    let settings: sluice::config::ModelFile = toml::from_str("max_batch_size = 8\n[dynamic_batching]\nmax_queue_delay = \"1ms\"").expect("settings");
    config.model_settings.insert("identity".into(), settings);
    let gateway = start_gateway(config).await;
    proxy.set(Behaviour::HangInfer);
    let started = Instant::now();
    let status = grpc_identity(gateway.grpc_addr, Some(Duration::from_millis(600))).await.expect_err("the worker hangs");
    assert!(matches!(status.code(), tonic::Code::DeadlineExceeded | tonic::Code::Cancelled), "{status:?}");
    let outstanding = |t: &str| metric(t, "sluice_upstream_outstanding_requests", &[("endpoint", &endpoint)]);
    wait_for_metric(&gateway, Duration::from_secs(3), |t| outstanding(t) == 0.0).await.expect("the batch's attempt outlived its client");
    assert!(started.elapsed() < Duration::from_secs(5), "the attempt ended only after {:?} (try_timeout is 8 s)", started.elapsed());
    let text = String::from_utf8_lossy(&gateway.admin_get("/metrics").await.body).to_string();
    assert_eq!(metric(&text, "sluice_upstream_requests_total", &[("endpoint", &endpoint), ("outcome", "client_deadline")]), 1.0, "{text}");
    assert_eq!(metric(&text, "sluice_upstream_ejections_total", &[("endpoint", &endpoint)]), 0.0, "{text}");
    assert_eq!(metric(&text, "sluice_upstream_available", &[("endpoint", &endpoint)]), 1.0, "{text}");
    assert_eq!(proxy.infers(), 1, "no retry once the deadline has passed");
}

/// Workers that require an API key: the gateway presents the one in `api_key_file` on inference, health and
/// metadata requests, over HTTP and gRPC; without it the workers refuse it and it serves nothing from them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_presents_its_api_key_to_workers_that_require_one() {
    const KEY: &str = "gateway-secret-7";
    let mut config = Config::default();
    config.server.models = models_dir();
    config.auth.enabled = true;
    config.auth.tenants = vec![sluice::config::TenantConfig {
        name: "gateway".into(),
        key_sha256: vec![sluice::admission::auth::hash_key(KEY)],
        ..sluice::config::TenantConfig::default()
    }];
    let worker = start_with(config, None).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{KEY}\n")).expect("write key");

    for (protocol, addr) in [(UpstreamProtocol::Http, worker.addr), (UpstreamProtocol::Grpc, worker.grpc_addr)] {
        let mut upstream = pool(vec![addr.to_string()], protocol);
        upstream.api_key_file = Some(key_file.clone());
        let gateway = start_gateway(upstream).await;
        let r = gateway.infer("identity", &identity_request(2.0)).await;
        assert_eq!(r.status, StatusCode::OK, "{protocol:?}: {}", String::from_utf8_lossy(&r.body));
        assert_eq!(first_output(&r), 2.0);
        let endpoint = addr.to_string();
        wait_for_metric(&gateway, Duration::from_secs(2), |t| metric(t, "sluice_upstream_available", &[("endpoint", &endpoint)]) == 1.0)
            .await
            .unwrap_or_else(|| panic!("{protocol:?}: the worker did not pass its checks with the key"));
    }

    // No key (the metadata declared, so that the gateway starts): the worker's metadata refuses it, so it gets no traffic.
    let mut upstream = pool(vec![worker.addr.to_string()], UpstreamProtocol::Http);
    upstream.signatures.insert("identity".into(), declared_identity("output"));
    let gateway = start_gateway(upstream).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = gateway.infer("identity", &identity_request(2.0)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", String::from_utf8_lossy(&r.body));

    // A key file that holds no key stops the start with a clear message.
    std::fs::write(&key_file, "\n").expect("write key");
    let mut upstream = pool(vec![worker.addr.to_string()], UpstreamProtocol::Http);
    upstream.api_key_file = Some(key_file.clone());
    let mut config = Config::default();
    config.server.models = "/nonexistent/sluice-gateway-test".into();
    config.server.http = "127.0.0.1:0".parse().expect("addr");
    config.server.grpc = "127.0.0.1:0".parse().expect("addr");
    config.admin.listen = "127.0.0.1:0".parse().expect("addr");
    config.scaling.keda.listen = "127.0.0.1:0".parse().expect("addr");
    config.upstreams = vec![upstream];
    let err = match sluice::app::start(&config, std::future::pending::<()>()).await {
        Ok(_) => panic!("a gateway started with an empty key file"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("api_key_file") && err.contains("first line"), "{err}");
}

/// Garbage from the only worker is a 502 that says what was wrong, over HTTP and gRPC; the gateway keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_answer_is_a_502_with_a_clear_message() {
    let worker = start_models().await;
    let garbage = Proxy::start(worker.addr, Behaviour::Forward(Duration::ZERO)).await;
    let gateway = start_gateway(pool(vec![garbage.addr.to_string()], UpstreamProtocol::Http)).await;
    garbage.set(Behaviour::Garbage);
    for _ in 0..3 {
        let r = gateway.infer("identity", &identity_request(1.0)).await;
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", String::from_utf8_lossy(&r.body));
        let message = r.error();
        assert!(message.contains("malformed") && message.contains(&garbage.addr.to_string()), "{message}");
    }
    // Malformed answers are not retried (the upstream did run the request).
    assert_eq!(garbage.infers(), 3);
    let status = grpc_identity(gateway.grpc_addr, None).await.expect_err("a malformed upstream answer is an error");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(status.message().contains("malformed"), "{status:?}");
    garbage.set(Behaviour::Forward(Duration::ZERO));
    let r = gateway.infer("identity", &identity_request(7.0)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
}

/// 429 from a worker: retried on another worker when there is one; passed on as 429 with Retry-After when every
/// worker says it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_worker_is_retried_elsewhere_or_passed_on_as_429() {
    let worker = start_models().await;
    let busy = Proxy::start(worker.addr, Behaviour::Forward(Duration::ZERO)).await;
    let good = Proxy::start(worker.addr, Behaviour::Forward(Duration::ZERO)).await;
    let gateway = start_gateway(pool(vec![busy.addr.to_string(), good.addr.to_string()], UpstreamProtocol::Http)).await;
    busy.set(Behaviour::Status(429));
    for i in 0..20 {
        let r = gateway.infer("identity", &identity_request(i as f32)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    }
    assert!(busy.infers() > 0, "the busy worker was never tried, so the retry was not exercised");
    let text = String::from_utf8_lossy(&gateway.admin_get("/metrics").await.body).to_string();
    assert!(metric(&text, "sluice_upstream_retries_total", &[("result", "sent")]) >= 1.0);
    // 429 is backpressure, not a failure: the busy worker is not ejected for it.
    assert_eq!(metric(&text, "sluice_upstream_ejections_total", &[("endpoint", &busy.addr.to_string())]), 0.0);

    good.set(Behaviour::Status(429));
    let r = gateway.infer("identity", &identity_request(1.0)).await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("retry-after"), Some("2"));
    assert!(r.error().contains("overloaded"), "{}", r.error());
    // 503 everywhere is "unavailable".
    busy.set(Behaviour::Status(503));
    good.set(Behaviour::Status(503));
    let r = gateway.infer("identity", &identity_request(1.0)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", String::from_utf8_lossy(&r.body));
    // A 400 from the worker is the client's problem: passed on, not retried.
    let before = busy.infers() + good.infers();
    busy.set(Behaviour::Status(400));
    good.set(Behaviour::Status(400));
    let r = gateway.infer("identity", &identity_request(1.0)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(busy.infers() + good.infers(), before + 1);
}

/// Models without gateway batching or cache are forwarded undecoded: the worker's answer comes back byte for byte
/// (binary extension and JSON alike, the request's `id` echoed by the worker), and bad input is refused by the worker,
/// with its message. With gateway batching the same request takes the decoded path and gets the same outputs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_batching_or_cache_are_forwarded_as_they_are() {
    let worker = start_models().await;
    let gateway = start_gateway(pool(vec![worker.addr.to_string()], UpstreamProtocol::Http)).await;
    let data: Vec<u8> = (0..256).flat_map(|i| (i as f32 * 0.5).to_le_bytes()).collect();
    let head = json!({"id": "fwd-1", "parameters": {"binary_data_output": true},
        "inputs": [{"name": "input", "shape": [1, 256], "datatype": "FP32", "parameters": {"binary_data_size": 1024}}]});
    let direct = worker.infer_binary("/v2/models/identity/infer", &head, &data).await;
    let via_gateway = gateway.infer_binary("/v2/models/identity/infer", &head, &data).await;
    assert_eq!(via_gateway.status, StatusCode::OK, "{}", String::from_utf8_lossy(&via_gateway.body));
    assert_eq!(via_gateway.body, direct.body);
    assert_eq!(via_gateway.header("inference-header-content-length"), direct.header("inference-header-content-length"));
    assert_eq!(via_gateway.header("content-type"), Some("application/octet-stream"));
    let json_request = identity_request(3.0);
    let direct = worker.infer("identity", &json_request).await;
    let via_gateway = gateway.infer("identity", &json_request).await;
    assert_eq!(via_gateway.status, StatusCode::OK);
    assert_eq!(via_gateway.body, direct.body);
    assert_eq!(via_gateway.header("content-type"), Some("application/json"));
    let bad = gateway.post_raw("/v2/models/identity/infer", &[("content-type", "application/json")], "{not json").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(&bad.body));
    assert!(bad.error().contains("malformed JSON request"), "{}", bad.error());
    // A header length past the body is the gateway's own 400 (it is not forwarded).
    let r = gateway.post_raw("/v2/models/identity/infer", &[("inference-header-content-length", "999")], "{}").await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    let mut batching = pool(vec![worker.addr.to_string()], UpstreamProtocol::Http);
    let settings = sluice::config::ModelFile { max_batch_size: Some(8), ..Default::default() };
    batching.model_settings.insert("identity".into(), settings);
    let decoded = start_gateway(batching).await.infer("identity", &json_request).await;
    assert_eq!(decoded.status, StatusCode::OK, "{}", String::from_utf8_lossy(&decoded.body));
    assert_eq!(decoded.json()["outputs"], direct.json()["outputs"]);
}

/// With one worker 100 ms slower than the other, the balancer sends it a small share of the traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_worker_gets_a_smaller_share() {
    let worker = start_models().await;
    let fast = Proxy::start(worker.addr, Behaviour::Forward(Duration::ZERO)).await;
    let slow = Proxy::start(worker.addr, Behaviour::Forward(Duration::from_millis(100))).await;
    let gateway = Arc::new(start_gateway(pool(vec![fast.addr.to_string(), slow.addr.to_string()], UpstreamProtocol::Http)).await);
    let (ok, failed) = load(&gateway, 4, Arc::new(AtomicBool::new(false)), Instant::now() + Duration::from_secs(3)).await;
    assert!(failed.is_empty(), "{failed:?}");
    let (f, s) = (fast.infers(), slow.infers());
    let share = s as f64 / (f + s) as f64;
    eprintln!("{ok} requests: fast {f}, slow {s} ({:.1} % to the slow worker)", share * 100.0);
    // Even on a loaded machine (where the fast worker is slow too) the slow one gets far less than half.
    assert!(share < 0.25, "the slow worker got {:.1} % of the traffic (fast {f}, slow {s})", share * 100.0);
}

/// An endpoint whose model metadata differs from the pool's gets no traffic; the gateway serves from the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_with_different_metadata_gets_no_traffic() {
    let good = start_models().await;
    // A worker whose "identity" is really another model.
    let odd = start_repo(TempRepo::new().model("identity", "fraud_mlp", 1, "")).await;
    let good_proxy = Proxy::start(good.addr, Behaviour::Forward(Duration::ZERO)).await;
    let odd_proxy = Proxy::start(odd.addr, Behaviour::Forward(Duration::ZERO)).await;
    let gateway = start_gateway(pool(vec![good_proxy.addr.to_string(), odd_proxy.addr.to_string()], UpstreamProtocol::Http)).await;
    for i in 0..20 {
        let r = gateway.infer("identity", &identity_request(i as f32)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    }
    assert_eq!(odd_proxy.infers(), 0);
    let text = String::from_utf8_lossy(&gateway.admin_get("/metrics").await.body).to_string();
    assert_eq!(metric(&text, "sluice_upstream_available", &[("endpoint", &odd_proxy.addr.to_string())]), 0.0);
    assert_eq!(metric(&text, "sluice_upstream_available", &[("endpoint", &good_proxy.addr.to_string())]), 1.0);
}

/// The gateway serves the upstream's metadata, its own queue settings, and the same answers as the worker; batching
/// at the gateway (model_settings) groups concurrent requests into one upstream call.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateway_batching_and_metadata() {
    let worker = start_models().await;
    let counter = Proxy::start(worker.addr, Behaviour::Forward(Duration::from_millis(20))).await;
    let mut config = pool(vec![counter.addr.to_string()], UpstreamProtocol::Http);
    config.max_outstanding = 1;
    let settings: sluice::config::ModelFile =
        toml::from_str("max_batch_size = 16\n[dynamic_batching]\nmax_queue_delay = \"5ms\"\n").expect("model settings");
    config.model_settings.insert("identity".into(), settings);
    let gateway = Arc::new(start_gateway(config).await);

    let upstream_meta = worker.get("/v2/models/identity").await.json();
    let meta = gateway.get("/v2/models/identity").await.json();
    assert_eq!(meta["inputs"], upstream_meta["inputs"]);
    assert_eq!(meta["outputs"], upstream_meta["outputs"]);

    let mut tasks = Vec::new();
    for i in 0..32 {
        let g = gateway.clone();
        tasks.push(tokio::spawn(async move { g.infer("identity", &identity_request(i as f32)).await }));
    }
    for (i, t) in tasks.into_iter().enumerate() {
        let r = t.await.expect("task");
        assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(first_output(&r), i as f64, "each request gets its own rows back");
    }
    assert!(counter.infers() < 16, "32 concurrent requests took {} upstream calls; the gateway did not batch", counter.infers());
}

/// config/sidecar.toml and config/gateway.toml load and validate.
#[test]
fn shipped_remote_configs_are_valid() {
    for name in ["sidecar.toml", "gateway.toml"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config").join(name);
        let config = Config::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(config.upstreams.len(), 1, "{name}");
    }
}

/// A pool named by DNS: `localhost:<port>` resolves to the worker's address, which becomes the endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_found_by_dns_serves() {
    let worker = start_models().await;
    let mut config = pool(Vec::new(), UpstreamProtocol::Http);
    config.dns = Some(format!("localhost:{}", worker.addr.port()));
    config.dns_refresh = Duration::from_millis(200);
    let gateway = start_gateway(config).await;
    for i in 0..5 {
        let r = gateway.infer("identity", &identity_request(i as f32)).await;
        assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(first_output(&r), i as f64);
    }
    let text = String::from_utf8_lossy(&gateway.admin_get("/metrics").await.body).to_string();
    assert_eq!(metric(&text, "sluice_upstream_available", &[("endpoint", &worker.addr.to_string())]), 1.0, "{text}");
}

/// At the drain deadline, a request still waiting on a worker that never answers gets a 503 (never silence), and the
/// server's stop completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_deadline_answers_requests_still_in_flight_with_503() {
    let worker = start_models().await;
    let hanging = Proxy::start(worker.addr, Behaviour::Forward(Duration::ZERO)).await;
    let mut config = Config::default();
    config.server.models = "/nonexistent/sluice-gateway-test".into();
    let mut upstream = pool(vec![hanging.addr.to_string()], UpstreamProtocol::Http);
    upstream.try_timeout = Duration::from_secs(30);
    upstream.timeout = Duration::from_secs(30);
    config.upstreams = vec![upstream];
    config.shutdown.drain_timeout = Duration::from_millis(300);
    let mut gateway = start_with(config, None).await;
    hanging.set(Behaviour::Hang);
    let addr = gateway.addr;
    let in_flight = tokio::spawn(async move {
        let body = Bytes::from(identity_request(1.0).to_string());
        let req = Request::post(format!("http://{addr}/v2/models/identity/infer")).header("content-type", "application/json").body(Full::new(body)).expect("request");
        let r = client().request(req).await.expect("an answer, not a dropped connection");
        let status = r.status();
        let body = r.into_body().collect().await.expect("body").to_bytes();
        (status, String::from_utf8_lossy(&body).to_string())
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stop_started = Instant::now();
    let running = gateway.running.take().expect("running");
    tokio::time::timeout(Duration::from_secs(5), running.shutdown()).await.expect("the server stopped within 5 s").expect("clean stop");
    let (status, body) = tokio::time::timeout(Duration::from_secs(5), in_flight).await.expect("answered").expect("task");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("drain time ran out"), "{body}");
    assert!(stop_started.elapsed() < Duration::from_secs(3), "stop took {:?}", stop_started.elapsed());
}

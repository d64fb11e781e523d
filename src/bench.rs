//! `sluice bench`: a load generator over KServe V2 HTTP, and a raw in-process ONNX Runtime baseline on the same model.
//!
//! - Closed loop (default): `--concurrency` clients each send a request, wait for the answer, and send the next.
//! - Open loop (`--rate R`): requests start at a fixed rate whatever the server does, which is how overload is measured
//!   (a closed loop slows down with the server and never overloads it).
//! - Baseline (`--baseline`): loads the model in this process with ONNX Runtime and times `run` at several batch sizes,
//!   so gateway figures can be read as ratios of the raw engine measured on the same machine.
//!
//! Results print as text, or as one JSON object with `--json` (for docs/BENCHMARKS.md).

use crate::backend::{onnx, BackendInstance, ModelSignature};
use crate::config::{ModelDefaults, ModelFile};
use crate::protocol::grpc::{self, pb};
use crate::protocol::{json, model_metadata, NamedTensor};
use crate::tensor::{DataType, Tensor};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// Server base URL (HTTP, or gRPC with `--protocol grpc`; default :8000 for HTTP, :8001 for gRPC).
    #[arg(long)]
    pub url: Option<String>,
    /// Protocol: KServe V2 over `http` (JSON or binary extension) or `grpc` (raw tensor contents).
    #[arg(long, value_enum, default_value = "http")]
    pub protocol: Protocol,
    /// Model to load.
    #[arg(long, short)]
    pub model: String,
    /// Model version (default: the server's default version).
    #[arg(long)]
    pub version: Option<String>,
    /// Closed-loop clients.
    #[arg(long, short, default_value_t = 1)]
    pub concurrency: usize,
    /// Open-loop arrival rate in requests per second (overrides --concurrency).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Measurement length (e.g. 20s).
    #[arg(long, short, value_parser = humantime::parse_duration, default_value = "10s")]
    pub duration: Duration,
    /// Stop after this many requests instead (closed loop).
    #[arg(long, short = 'n')]
    pub requests: Option<u64>,
    /// Warm-up before measuring, not counted.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub warmup: Duration,
    /// Rows per request (the batch dimension of each input).
    #[arg(long, short, default_value_t = 1)]
    pub batch: usize,
    /// Send inputs and ask for outputs with the binary tensor data extension instead of JSON.
    #[arg(long)]
    pub binary: bool,
    /// Random seed for the generated inputs.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Distinct request bodies, sent in turn. With a response cache, 1..64 distinct bodies make every request after
    /// the first round a hit.
    #[arg(long, default_value_t = 64)]
    pub distinct: usize,
    /// Make every request's inputs unique (a request counter is written into the first two values of the first
    /// input), so that with a response cache every request is a miss. HTTP with `--binary` only.
    #[arg(long)]
    pub unique: bool,
    /// HTTP client: `hyper` (async, default) or `blocking` (one OS thread and one keep-alive socket per client, the
    /// leanest client there is: use it to measure the gateway's added latency at low concurrency).
    #[arg(long, value_enum, default_value = "hyper")]
    pub client: ClientKind,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
    /// Measure raw in-process ONNX Runtime on the model instead of the server.
    #[arg(long)]
    pub baseline: bool,
    /// Model repository (baseline mode).
    #[arg(long, default_value = "models")]
    pub models: PathBuf,
    /// Batch sizes to time (baseline mode).
    #[arg(long, value_delimiter = ',', default_value = "1,8,16,32,64")]
    pub batch_sizes: Vec<usize>,
    /// Intra-op threads (baseline mode).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Grpc,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientKind {
    Hyper,
    Blocking,
}

pub fn main(args: BenchArgs) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let report = if args.baseline { baseline(&args)? } else { runtime.block_on(load(&args))? };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
    } else {
        print_text(&report);
    }
    Ok(())
}

/// Percentiles of a latency sample, in microseconds.
pub fn percentiles(samples: &mut [u64]) -> Value {
    if samples.is_empty() {
        return json!(null);
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1];
    json!({ "p50_us": at(0.50), "p90_us": at(0.90), "p99_us": at(0.99), "max_us": samples[samples.len() - 1], "count": samples.len() })
}

/// Random inputs shaped after the model's signature, with `batch` rows where the model has a dynamic first dim.
pub fn random_inputs(signature: &ModelSignature, batching: bool, batch: usize, rng: &mut StdRng) -> Result<Vec<Tensor>, String> {
    signature
        .inputs
        .iter()
        .map(|spec| {
            let shape: Vec<usize> = spec
                .dims
                .iter()
                .enumerate()
                .map(|(i, &d)| if i == 0 && batching { batch } else if d < 0 { 1 } else { d as usize })
                .collect();
            let n: usize = shape.iter().product();
            let t = match spec.dtype {
                DataType::F32 => Tensor::from_slice(spec.dtype, shape, &(0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect::<Vec<_>>()),
                DataType::F64 => Tensor::from_slice(spec.dtype, shape, &(0..n).map(|_| rng.random_range(-1.0f64..1.0)).collect::<Vec<_>>()),
                DataType::F16 => Tensor::from_slice(
                    spec.dtype,
                    shape,
                    &(0..n).map(|_| half::f16::from_f32(rng.random_range(-1.0f32..1.0))).collect::<Vec<_>>(),
                ),
                DataType::I64 => Tensor::from_slice(spec.dtype, shape, &(0..n).map(|_| rng.random_range(0i64..1000)).collect::<Vec<_>>()),
                DataType::I32 => Tensor::from_slice(spec.dtype, shape, &(0..n).map(|_| rng.random_range(0i32..1000)).collect::<Vec<_>>()),
                DataType::Bytes => {
                    let items: Vec<String> = (0..n).map(|_| format!("item-{}", rng.random_range(0..1000))).collect();
                    Tensor::from_byte_strings(shape, &items)
                }
                other => {
                    let size = other.element_size().unwrap_or(1);
                    let bytes: Vec<u8> = (0..n * size).map(|_| rng.random_range(0u8..2)).collect();
                    Tensor::new(other, shape, Bytes::from(bytes))
                }
            };
            t.map_err(|e| format!("cannot generate input '{}': {e}", spec.name))
        })
        .collect()
}

/// Names generated inputs after the model's signature (they are generated in signature order).
fn named_inputs(signature: &ModelSignature, tensors: Vec<Tensor>) -> Vec<NamedTensor> {
    signature.inputs.iter().zip(tensors).map(|(spec, tensor)| NamedTensor { name: spec.name.clone(), tensor }).collect()
}

/// A V2 request body (JSON, or with `binary` a JSON header + binary tensors that asks for binary outputs too).
/// Returns (body, JSON header length if binary).
fn request_body(signature: &ModelSignature, tensors: Vec<Tensor>, binary: bool) -> Result<(Bytes, Option<usize>), String> {
    let encoded = json::encode_request(&named_inputs(signature, tensors), binary, binary).map_err(|e| format!("cannot encode a request: {e}"))?;
    Ok((encoded.body, encoded.json_header_length))
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

async fn get_body(client: &HttpClient, url: &str) -> Result<Bytes, String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL {url}: {e}"))?;
    let response = client.get(uri).await.map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    if !status.is_success() {
        return Err(format!("GET {url}: {status} {}", String::from_utf8_lossy(&body)));
    }
    Ok(body)
}

async fn get_json(client: &HttpClient, url: &str) -> Result<Value, String> {
    serde_json::from_slice(&get_body(client, url).await?).map_err(|e| format!("GET {url}: {e}"))
}

/// Batch sizes the server ran (from Triton's statistics extension): size -> batches.
async fn batch_counts(client: &HttpClient, base: &str) -> BTreeMap<u64, u64> {
    let mut counts = BTreeMap::new();
    if let Ok(stats) = get_json(client, &format!("{base}/stats")).await {
        // Unversioned statistics list every version; requests without a version go to the highest.
        let entries = stats["model_stats"].as_array().cloned().unwrap_or_default();
        let served = entries.into_iter().max_by_key(|s| s["version"].as_str().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0));
        for b in served.iter().flat_map(|s| s["batch_stats"].as_array().into_iter().flatten()) {
            if let (Some(size), Some(count)) = (b["batch_size"].as_u64(), b["compute_infer"]["count"].as_u64()) {
                counts.insert(size, count);
            }
        }
    }
    counts
}

struct Sample {
    status: u16,
    micros: u64,
}

async fn send(client: &HttpClient, uri: &hyper::Uri, body: &(Bytes, Option<usize>)) -> Sample {
    let started = Instant::now();
    let mut builder = hyper::Request::post(uri.clone()).header("content-type", "application/json");
    if let Some(n) = body.1 {
        builder = builder.header("inference-header-content-length", n);
    }
    let status = match builder.body(Full::new(body.0.clone())) {
        Ok(request) => match client.request(request).await {
            Ok(response) => {
                let status = response.status().as_u16();
                match response.into_body().collect().await {
                    Ok(_) => status,
                    Err(_) => 0,
                }
            }
            Err(_) => 0,
        },
        Err(_) => 0,
    };
    Sample { status, micros: started.elapsed().as_micros() as u64 }
}

async fn load(args: &BenchArgs) -> Result<Value, String> {
    let target = match args.protocol {
        Protocol::Http => http_target(args).await?,
        Protocol::Grpc => grpc_target(args).await?,
    };
    // Warm-up (connections, caches), then measure.
    if !args.warmup.is_zero() {
        run_phase(args, &target, args.warmup, None).await;
    }
    let before = target.batch_counts().await;
    let started = Instant::now();
    let samples = run_phase(args, &target, args.duration, args.requests).await;
    let elapsed = started.elapsed().as_secs_f64();
    let after = target.batch_counts().await;

    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    let mut ok: Vec<u64> = Vec::new();
    let mut rejected: Vec<u64> = Vec::new();
    for s in &samples {
        *by_status.entry(if s.status == 0 { "connection_error".into() } else { s.status.to_string() }).or_default() += 1;
        match s.status {
            200 => ok.push(s.micros),
            429 | 503 => rejected.push(s.micros),
            _ => {}
        }
    }
    let mut batches: BTreeMap<String, u64> = BTreeMap::new();
    for (size, count) in &after {
        let delta = count - before.get(size).copied().unwrap_or(0);
        if delta > 0 {
            batches.insert(size.to_string(), delta);
        }
    }
    let total: u64 = batches.values().sum();
    let rows: u64 = batches.iter().map(|(s, c)| s.parse::<u64>().unwrap_or(0) * c).sum();
    Ok(json!({
        "mode": if args.rate.is_some() { "open-loop" } else { "closed-loop" },
        "model": args.model,
        "concurrency": args.concurrency,
        "rate_per_s": args.rate,
        "batch": args.batch,
        "protocol": if args.protocol == Protocol::Grpc { "grpc" } else { "http" },
        "encoding": if args.protocol == Protocol::Grpc { "raw" } else if args.binary { "binary" } else { "json" },
        "seconds": elapsed,
        "requests": samples.len(),
        "ok": ok.len(),
        "throughput_rps": ok.len() as f64 / elapsed,
        "throughput_rows_per_s": (ok.len() * args.batch) as f64 / elapsed,
        "latency_ok": percentiles(&mut ok),
        "latency_rejected": percentiles(&mut rejected),
        "status": by_status,
        "server_batches": batches,
        "server_mean_batch_rows": if total > 0 { rows as f64 / total as f64 } else { 0.0 },
    }))
}

/// Where the load goes, with its pre-built requests.
// Built once per run and cloned once per worker, never moved on a hot path: the variants' size difference costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone)]
enum Target {
    Http { client: HttpClient, base: String, uri: hyper::Uri, bodies: Arc<Vec<(Bytes, Option<usize>)>>, unique: Option<Arc<UniqueInputs>> },
    Grpc { clients: Arc<Vec<GrpcClient>>, model: String, version: String, requests: Arc<Vec<pb::ModelInferRequest>> },
}

type GrpcClient = pb::grpc_inference_service_client::GrpcInferenceServiceClient<tonic::transport::Channel>;

/// Makes request bodies unique (`--unique`): the first two values of the first input's binary data (FP32 or INT64)
/// become a per-run random number and a request counter, both exactly representable, so no two requests of a run (or
/// of two runs) share a cache key.
struct UniqueInputs {
    next: std::sync::atomic::AtomicU64,
    run: u32,
    int64: bool,
}

impl UniqueInputs {
    fn apply(&self, body: &(Bytes, Option<usize>)) -> (Bytes, Option<usize>) {
        let n = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut patched = body.0.to_vec();
        match body.1 {
            Some(at) if self.int64 && at + 16 <= patched.len() => {
                patched[at..at + 8].copy_from_slice(&i64::from(self.run).to_le_bytes());
                patched[at + 8..at + 16].copy_from_slice(&(n as i64).to_le_bytes());
            }
            Some(at) if !self.int64 && at + 8 <= patched.len() => {
                // Both below 2^24: exact as f32.
                patched[at..at + 4].copy_from_slice(&(self.run as f32).to_le_bytes());
                patched[at + 4..at + 8].copy_from_slice(&((n % (1 << 24)) as f32 + (n >> 24) as f32 * 0.5).to_le_bytes());
            }
            _ => {}
        }
        (Bytes::from(patched), body.1)
    }
}

/// Differs between runs even with the same `--seed`, so a second run against the same server misses too.
fn run_id(rng: &mut StdRng) -> u32 {
    let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    (clock ^ rng.random::<u32>()) >> 12
}

async fn http_target(args: &BenchArgs) -> Result<Target, String> {
    let mut connector = hyper_util::client::legacy::connect::HttpConnector::new();
    connector.set_nodelay(true);
    let client: HttpClient = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(4096).build(connector);
    let url = args.url.clone().unwrap_or_else(|| "http://127.0.0.1:8000".into());
    let base = match &args.version {
        Some(v) => format!("{}/v2/models/{}/versions/{v}", url.trim_end_matches('/'), args.model),
        None => format!("{}/v2/models/{}", url.trim_end_matches('/'), args.model),
    };
    let metadata = get_body(&client, &base).await?;
    let config = get_json(&client, &format!("{base}/config")).await?;
    let signature = model_metadata::from_json(&metadata).map_err(|e| format!("GET {base}: {e}"))?.signature;
    let batching = config["max_batch_size"].as_u64().unwrap_or(0) > 0;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let bodies = (0..args.distinct.max(1))
        .map(|_| request_body(&signature, random_inputs(&signature, batching, args.batch, &mut rng)?, args.binary))
        .collect::<Result<_, _>>()?;
    let uri: hyper::Uri = format!("{base}/infer").parse().map_err(|e| format!("bad URL: {e}"))?;
    let unique = match args.unique {
        false => None,
        true if !args.binary || args.client == ClientKind::Blocking => return Err("--unique needs --binary and the hyper client".into()),
        true => {
            let dtype = signature.inputs.first().map(|i| i.dtype);
            if !matches!(dtype, Some(DataType::F32 | DataType::I64)) {
                return Err("--unique needs a model whose first input is FP32 or INT64".into());
            }
            let int64 = dtype == Some(DataType::I64);
            Some(Arc::new(UniqueInputs { next: std::sync::atomic::AtomicU64::new(0), run: run_id(&mut rng), int64 }))
        }
    };
    Ok(Target::Http { client, base, uri, bodies: Arc::new(bodies), unique })
}

async fn grpc_target(args: &BenchArgs) -> Result<Target, String> {
    if args.client == ClientKind::Blocking {
        return Err("--client blocking is an HTTP client; use the default client with --protocol grpc".into());
    }
    let url = args.url.clone().unwrap_or_else(|| "http://127.0.0.1:8001".into());
    // A few HTTP/2 connections, each multiplexing many calls.
    let mut clients = Vec::new();
    for _ in 0..args.concurrency.clamp(1, 4) {
        let channel = tonic::transport::Endpoint::from_shared(url.clone())
            .map_err(|e| format!("bad URL {url}: {e}"))?
            .tcp_nodelay(true)
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {url}: {e}"))?;
        clients.push(GrpcClient::new(channel).max_decoding_message_size(usize::MAX).max_encoding_message_size(usize::MAX));
    }
    let version = args.version.clone().unwrap_or_default();
    let mut client = clients[0].clone();
    let metadata = client
        .model_metadata(pb::ModelMetadataRequest { name: args.model.clone(), version: version.clone() })
        .await
        .map_err(|e| format!("ModelMetadata: {}", e.message()))?
        .into_inner();
    let config = client
        .model_config(pb::ModelConfigRequest { name: args.model.clone(), version: version.clone() })
        .await
        .map_err(|e| format!("ModelConfig: {}", e.message()))?
        .into_inner();
    let signature = model_metadata::from_grpc(metadata).map_err(|e| format!("ModelMetadata: {e}"))?.signature;
    let batching = config.config.is_some_and(|c| c.max_batch_size > 0);
    let mut rng = StdRng::seed_from_u64(args.seed);
    let version_arg = Some(version.as_str()).filter(|v| !v.is_empty());
    let mut requests = Vec::new();
    for _ in 0..64 {
        let inputs = named_inputs(&signature, random_inputs(&signature, batching, args.batch, &mut rng)?);
        requests.push(grpc::encode_request(&args.model, version_arg, None, &inputs));
    }
    Ok(Target::Grpc { clients: Arc::new(clients), model: args.model.clone(), version, requests: Arc::new(requests) })
}

/// The HTTP status a gRPC code corresponds to, so both protocols report alike.
fn grpc_status(code: tonic::Code) -> u16 {
    match code {
        tonic::Code::Ok => 200,
        tonic::Code::InvalidArgument => 400,
        tonic::Code::NotFound => 404,
        tonic::Code::ResourceExhausted => 429,
        tonic::Code::Unavailable => 503,
        tonic::Code::DeadlineExceeded => 504,
        _ => 500,
    }
}

impl Target {
    async fn send(&self, i: usize) -> Sample {
        match self {
            Target::Http { client, uri, bodies, unique: None, .. } => send(client, uri, &bodies[i % bodies.len()]).await,
            Target::Http { client, uri, bodies, unique: Some(unique), .. } => send(client, uri, &unique.apply(&bodies[i % bodies.len()])).await,
            Target::Grpc { clients, requests, .. } => {
                let started = Instant::now();
                let mut client = clients[i % clients.len()].clone();
                let status = match client.model_infer(requests[i % requests.len()].clone()).await {
                    Ok(_) => 200,
                    Err(status) => grpc_status(status.code()),
                };
                Sample { status, micros: started.elapsed().as_micros() as u64 }
            }
        }
    }

    /// Batch sizes the server ran: size -> batches, from the statistics extension of either protocol.
    async fn batch_counts(&self) -> BTreeMap<u64, u64> {
        match self {
            Target::Http { client, base, .. } => batch_counts(client, base).await,
            Target::Grpc { clients, model, version, .. } => {
                let mut client = clients[0].clone();
                let request = pb::ModelStatisticsRequest { name: model.clone(), version: version.clone() };
                let mut counts = BTreeMap::new();
                if let Ok(response) = client.model_statistics(request).await {
                    let stats = response.into_inner().model_stats;
                    if let Some(served) = stats.iter().max_by_key(|s| s.version.parse::<u64>().unwrap_or(0)) {
                        for b in &served.batch_stats {
                            counts.insert(b.batch_size, b.compute_infer.as_ref().map_or(0, |d| d.count));
                        }
                    }
                }
                counts
            }
        }
    }
}

async fn run_phase(args: &BenchArgs, target: &Target, duration: Duration, count: Option<u64>) -> Vec<Sample> {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    if let Some(rate) = args.rate.filter(|r| *r > 0.0) {
        // Open loop: one task per request at fixed intervals; in-flight requests are capped to bound memory.
        let interval = Duration::from_secs_f64(1.0 / rate);
        let in_flight = Arc::new(tokio::sync::Semaphore::new(16_384));
        let mut next = Instant::now();
        let mut i = 0usize;
        while next < deadline {
            tokio::time::sleep_until(next.into()).await;
            let Ok(permit) = in_flight.clone().acquire_owned().await else { break };
            let target = target.clone();
            tasks.push(tokio::spawn(async move {
                let s = target.send(i).await;
                drop(permit);
                vec![s]
            }));
            i += 1;
            next += interval;
        }
    } else if let (ClientKind::Blocking, Target::Http { uri, bodies, .. }) = (args.client, target) {
        let budget = Arc::new(std::sync::atomic::AtomicU64::new(count.unwrap_or(u64::MAX)));
        let threads: Vec<_> = (0..args.concurrency.max(1))
            .map(|c| {
                let (uri, bodies, budget) = (uri.clone(), bodies.clone(), budget.clone());
                std::thread::spawn(move || blocking_client(&uri, &bodies, c, deadline, count.is_some(), &budget))
            })
            .collect();
        let mut all = Vec::new();
        for t in threads {
            if let Ok(mut s) = t.join() {
                all.append(&mut s);
            }
        }
        return all;
    } else {
        let budget = Arc::new(std::sync::atomic::AtomicU64::new(count.unwrap_or(u64::MAX)));
        for c in 0..args.concurrency.max(1) {
            let (target, budget) = (target.clone(), budget.clone());
            tasks.push(tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut i = c;
                while Instant::now() < deadline || count.is_some() {
                    let left = budget.fetch_update(std::sync::atomic::Ordering::AcqRel, std::sync::atomic::Ordering::Acquire, |n| n.checked_sub(1));
                    if left.is_err() {
                        break;
                    }
                    samples.push(target.send(i).await);
                    i += 1;
                }
                samples
            }));
        }
    }
    let mut all = Vec::new();
    for t in tasks {
        if let Ok(mut s) = t.await {
            all.append(&mut s);
        }
    }
    all
}

/// One closed-loop client on a plain blocking socket with HTTP/1.1 keep-alive.
fn blocking_client(
    uri: &hyper::Uri,
    bodies: &[(Bytes, Option<usize>)],
    first: usize,
    deadline: Instant,
    counted: bool,
    budget: &std::sync::atomic::AtomicU64,
) -> Vec<Sample> {
    use std::io::{Read, Write};
    let authority = uri.authority().map(|a| a.as_str().to_string()).unwrap_or_default();
    let path = uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    let mut samples = Vec::new();
    let mut stream: Option<std::net::TcpStream> = None;
    let mut buf = vec![0u8; 1 << 16];
    let mut i = first;
    while Instant::now() < deadline || counted {
        if budget.fetch_update(std::sync::atomic::Ordering::AcqRel, std::sync::atomic::Ordering::Acquire, |n| n.checked_sub(1)).is_err() {
            break;
        }
        let (body, header_len) = &bodies[i % bodies.len()];
        i += 1;
        let started = Instant::now();
        if stream.is_none() {
            stream = std::net::TcpStream::connect(&authority).ok();
            if let Some(s) = &stream {
                let _ = s.set_nodelay(true);
            }
        }
        let Some(s) = stream.as_mut() else {
            samples.push(Sample { status: 0, micros: started.elapsed().as_micros() as u64 });
            continue;
        };
        let mut request = format!("POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n", body.len());
        if let Some(n) = header_len {
            request.push_str(&format!("Inference-Header-Content-Length: {n}\r\n"));
        }
        request.push_str("\r\n");
        let mut wire = request.into_bytes();
        wire.extend_from_slice(body);
        let status = (|| -> Option<u16> {
            s.write_all(&wire).ok()?;
            // Read the head, then exactly Content-Length bytes of body.
            let mut got = 0usize;
            let head_end = loop {
                let n = s.read(&mut buf[got..]).ok().filter(|&n| n > 0)?;
                got += n;
                if let Some(p) = buf[..got].windows(4).position(|w| w == b"\r\n\r\n") {
                    break p + 4;
                }
                if got == buf.len() {
                    return None;
                }
            };
            let head = std::str::from_utf8(&buf[..head_end]).ok()?;
            let status: u16 = head.get(9..12)?.parse().ok()?;
            let length: usize = head
                .lines()
                .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")).map(|(_, v)| v.trim()))
                .and_then(|v| v.parse().ok())?;
            let mut left = (head_end + length).saturating_sub(got);
            while left > 0 {
                let n = s.read(&mut buf[..left.min(1 << 16)]).ok().filter(|&n| n > 0)?;
                left -= n;
            }
            Some(status)
        })();
        if status.is_none() {
            stream = None;
        }
        samples.push(Sample { status: status.unwrap_or(0), micros: started.elapsed().as_micros() as u64 });
    }
    samples
}

/// Times raw in-process ONNX Runtime `run` calls at each batch size on this thread.
fn baseline(args: &BenchArgs) -> Result<Value, String> {
    onnx::init_runtime(None).map_err(|e| e.to_string())?;
    let dir = args.models.join(&args.model);
    let version = match &args.version {
        Some(v) => v.clone(),
        None => std::fs::read_dir(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()))
            .max()
            .ok_or_else(|| format!("{} has no version", dir.display()))?
            .to_string(),
    };
    let path = dir.join(&version).join("model.onnx");
    let file = ModelFile { threads: Some(args.threads), instances: Some(1), ..ModelFile::load(&dir.join("model.toml")).map_err(|e| e.to_string())? };
    let (loaded, settings) = onnx::load(&path, |sig| {
        file.resolve(&ModelDefaults::default(), sig.can_batch(), &dir.join("model.toml"))
            .map_err(|e| crate::backend::BackendError::Load { path: path.display().to_string(), message: e.to_string() })
    })
    .map_err(|e| e.to_string())?;
    let batching = settings.max_batch_size > 0;
    let mut instance: Box<dyn BackendInstance> = match loaded.executor {
        crate::backend::Executor::Threads(mut instances) => instances.pop().ok_or("no instance")?,
        crate::backend::Executor::Async { .. } => return Err("the baseline runs ONNX models only".into()),
    };
    let mut rng = StdRng::seed_from_u64(args.seed);
    let sizes: Vec<usize> = if batching { args.batch_sizes.clone() } else { vec![1] };
    let per_size = args.duration.div_f64(sizes.len().max(1) as f64);
    let mut results = Vec::new();
    let mut best = 0.0f64;
    for &size in &sizes {
        let inputs = random_inputs(&loaded.signature, batching, size, &mut rng)?;
        for _ in 0..3 {
            instance.infer(&inputs).map_err(|e| e.to_string())?;
        }
        let mut samples = Vec::new();
        let started = Instant::now();
        while started.elapsed() < per_size || samples.len() < 5 {
            let t = Instant::now();
            instance.infer(&inputs).map_err(|e| e.to_string())?;
            samples.push(t.elapsed().as_micros() as u64);
        }
        let rows_per_s = (samples.len() * size) as f64 / started.elapsed().as_secs_f64();
        best = best.max(rows_per_s);
        results.push(json!({ "batch": size, "rows_per_s": rows_per_s, "latency": percentiles(&mut samples) }));
    }
    Ok(json!({ "mode": "baseline", "model": args.model, "threads": args.threads, "results": results, "best_rows_per_s": best }))
}

fn print_text(report: &Value) {
    if report["mode"] == "baseline" {
        println!("raw in-process ONNX Runtime, model {}, {} intra-op thread(s)", report["model"], report["threads"]);
        for r in report["results"].as_array().into_iter().flatten() {
            let l = &r["latency"];
            println!(
                "  batch {:>4}: {:>10.1} rows/s   run p50 {} us  p99 {} us",
                r["batch"], r["rows_per_s"].as_f64().unwrap_or(0.0), l["p50_us"], l["p99_us"]
            );
        }
        println!("  best: {:.1} rows/s", report["best_rows_per_s"].as_f64().unwrap_or(0.0));
        return;
    }
    println!(
        "{} {}: model {} batch {} {} for {:.1}s",
        report["mode"].as_str().unwrap_or(""),
        if report["mode"] == "open-loop" { format!("rate {}/s", report["rate_per_s"]) } else { format!("concurrency {}", report["concurrency"]) },
        report["model"],
        report["batch"],
        report["encoding"].as_str().unwrap_or(""),
        report["seconds"].as_f64().unwrap_or(0.0)
    );
    println!(
        "  throughput: {:.1} req/s ({:.1} rows/s), {} of {} requests OK",
        report["throughput_rps"].as_f64().unwrap_or(0.0),
        report["throughput_rows_per_s"].as_f64().unwrap_or(0.0),
        report["ok"],
        report["requests"]
    );
    for (label, key) in [("latency (200)", "latency_ok"), ("latency (429/503)", "latency_rejected")] {
        let l = &report[key];
        if !l.is_null() {
            println!("  {label}: p50 {} us  p90 {} us  p99 {} us  max {} us", l["p50_us"], l["p90_us"], l["p99_us"], l["max_us"]);
        }
    }
    println!("  status: {}", report["status"]);
    println!("  server batch sizes (rows: batches): {}  mean {:.1} rows", report["server_batches"], report["server_mean_batch_rows"].as_f64().unwrap_or(0.0));
}

//! Hostile clients against the real server: 200 slowloris connections (one header byte a second) do not slow normal
//! clients down and are cut off at the header read timeout; idle keep-alive connections are closed; oversized bodies
//! (Content-Length or chunked) get 413 at once, slow bodies 408, huge element counts 400, oversized heads 431; the
//! connection limit closes connections over it at once; gRPC prefaces, stalled gRPC messages and concurrent streams
//! are bounded too. Nothing here hangs: every wait has a deadline.

use bytes::Bytes;
use crate::common::*;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use sluice::config::Config;
use sluice::protocol::grpc::pb;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MAX_BODY: usize = 1 << 20;

async fn start(tune: impl FnOnce(&mut Config)) -> Server {
    let repo = TempRepo::new().link("fixed_affine");
    let mut config = Config::default();
    config.server.models = repo.path().to_path_buf();
    config.server.max_body_bytes = MAX_BODY;
    tune(&mut config);
    start_with(config, Some(repo)).await
}

fn infer_body() -> Bytes {
    Bytes::from(json!({"inputs": [{"name": "x", "shape": [8], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6, 7, 8]}]}).to_string())
}

/// Reads until the peer closes (or `limit` passes): what came, and whether it closed.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    let mut got = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return (got, false),
        }
    }
}

fn status_of(response: &[u8]) -> Option<u16> {
    let line = response.split(|&b| b == b'\n').next()?;
    std::str::from_utf8(line).ok()?.split_whitespace().nth(1)?.parse().ok()
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_do_not_stop_normal_clients_and_are_cut_off() {
    const ATTACKERS: usize = 200;
    const HEADER_TIMEOUT: Duration = Duration::from_secs(3);
    const RUN: Duration = Duration::from_secs(5);
    let server = start(|c| c.server.header_read_timeout = HEADER_TIMEOUT).await;
    let addr = server.addr;
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let cut_off = Arc::new(parking_lot::Mutex::new(Vec::<Duration>::new()));
    let connected = Arc::new(AtomicU64::new(0));
    let mut attackers = Vec::new();
    for i in 0..ATTACKERS {
        let (stop, cut_off, connected) = (stop.clone(), cut_off.clone(), connected.clone());
        attackers.push(tokio::spawn(async move {
            // A valid request head, one byte a second; reconnect when cut off, until the run is over.
            let head = format!("POST /v2/models/fixed_affine/infer HTTP/1.1\r\nhost: slow{i}\r\ncontent-length: 10\r\n\r\n").into_bytes();
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut tcp) = TcpStream::connect(addr).await else { return };
                connected.fetch_add(1, Ordering::Relaxed);
                let since = Instant::now();
                let mut sent = 0;
                let mut buf = [0u8; 1024];
                loop {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if tcp.write_all(&head[sent..sent + 1]).await.is_err() {
                        cut_off.lock().push(since.elapsed());
                        break;
                    }
                    sent = (sent + 1) % head.len();
                    // Wait a second, noticing a close by the server.
                    match tokio::time::timeout(Duration::from_secs(1), tcp.read(&mut buf)).await {
                        Err(_) => {}
                        Ok(Ok(0)) | Ok(Err(_)) => {
                            cut_off.lock().push(since.elapsed());
                            break;
                        }
                        Ok(Ok(_)) => {}
                    }
                }
            }
        }));
    }
    // Let the attackers connect before measuring.
    while connected.load(Ordering::Relaxed) < ATTACKERS as u64 && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(connected.load(Ordering::Relaxed), ATTACKERS as u64, "the attackers could not all connect");
    // A normal client (keep-alive, as client libraries are) for the rest of the run, plus new connections now and then.
    let mut latencies = Vec::new();
    let body = infer_body();
    while started.elapsed() < RUN {
        let t = Instant::now();
        let r = server.post_raw("/v2/models/fixed_affine/infer", &[("content-type", "application/json")], body.clone()).await;
        latencies.push(t.elapsed());
        assert_eq!(r.status, StatusCode::OK, "a normal request failed during the attack: {}", String::from_utf8_lossy(&r.body));
        if latencies.len() % 50 == 0 {
            let t = Instant::now();
            let fresh = client();
            let req = Request::get(server.url("/v2/health/ready")).body(Full::new(Bytes::new())).unwrap();
            let r = tokio::time::timeout(Duration::from_secs(5), fresh.request(req)).await.expect("a new connection is served").unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            latencies.push(t.elapsed());
        }
    }
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        let _ = tokio::time::timeout(Duration::from_secs(5), a).await;
    }
    latencies.sort();
    let (p50, p99, max) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99), *latencies.last().unwrap());
    let cut = cut_off.lock().clone();
    println!(
        "{} normal requests during {ATTACKERS} slowloris connections: p50 {p50:?}, p99 {p99:?}, max {max:?}; {} slow connections cut off after {:?}..{:?}",
        latencies.len(),
        cut.len(),
        cut.iter().min(),
        cut.iter().max()
    );
    assert!(latencies.len() >= 50, "only {} normal requests in {RUN:?}", latencies.len());
    assert!(p99 < Duration::from_millis(500), "p99 {p99:?} under attack");
    // Every slow connection was closed by the server at the header timeout (not before, not much after).
    assert!(cut.len() >= ATTACKERS, "only {} of {ATTACKERS} slow connections were cut off", cut.len());
    for lifetime in &cut {
        assert!(*lifetime >= HEADER_TIMEOUT - Duration::from_millis(300) && *lifetime < HEADER_TIMEOUT + Duration::from_millis(1500), "cut off after {lifetime:?}");
    }
    let metrics = String::from_utf8_lossy(&server.admin_get("/metrics").await.body).to_string();
    assert!(metric(&metrics, "sluice_connections_refused_total{listener=\"http\",reason=\"header_timeout\"}") >= ATTACKERS as f64, "{metrics}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_close_and_a_slow_second_head_is_timed_from_its_first_byte() {
    let server = start(|c| {
        c.server.idle_timeout = Duration::from_millis(1500);
        c.server.header_read_timeout = Duration::from_millis(700);
    })
    .await;
    let request = format!("GET /v2/health/live HTTP/1.1\r\nhost: {}\r\n\r\n", server.addr).into_bytes();
    // An idle keep-alive connection lives past the header timeout, and is closed at the idle timeout.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&request).await.unwrap();
    let since = Instant::now();
    let (got, closed) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    assert!(closed && status_of(&got) == Some(200), "{}", String::from_utf8_lossy(&got));
    let idle = since.elapsed();
    assert!(idle >= Duration::from_millis(1300) && idle < Duration::from_millis(2800), "idle connection closed after {idle:?}");
    // After a request, a next head that starts but does not finish is cut off at the header timeout from its first byte.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&request).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = tcp.read(&mut buf).await.unwrap();
    assert_eq!(status_of(&buf[..n]), Some(200));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    tcp.write_all(b"GET /v2/hea").await.unwrap();
    let since = Instant::now();
    let (_, closed) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    let waited = since.elapsed();
    assert!(closed && waited >= Duration::from_millis(500) && waited < Duration::from_millis(1500), "slow second head closed after {waited:?}");
    // A connection that never sends a byte is closed at the header timeout.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let since = Instant::now();
    let (_, closed) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    let waited = since.elapsed();
    assert!(closed && waited >= Duration::from_millis(500) && waited < Duration::from_millis(1500), "silent connection closed after {waited:?}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_slow_bodies_are_refused_fast() {
    let server = start(|c| c.server.body_read_timeout = Duration::from_secs(1)).await;
    let head = |extra: &str| format!("POST /v2/models/fixed_affine/infer HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n{extra}\r\n", server.addr);

    // Content-Length over the limit: 413 before the body is sent at all.
    let started = Instant::now();
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(head("content-length: 1073741824\r\n").as_bytes()).await.unwrap();
    tcp.write_all(b"{\"inputs\": [").await.unwrap();
    let (got, _) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    assert_eq!(status_of(&got), Some(413), "{}", String::from_utf8_lossy(&got));
    assert!(started.elapsed() < Duration::from_secs(1), "413 after {:?}", started.elapsed());
    println!("413 for a declared 1 GiB body after {:?}", started.elapsed());

    // Chunked, without end: 413 once past the limit; the server stops reading (the client cannot push 256 MiB).
    let started = Instant::now();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let (mut rx, mut tx) = tcp.into_split();
    let request_head = head("transfer-encoding: chunked\r\n");
    let written = Arc::new(AtomicU64::new(0));
    let counter = written.clone();
    let writer = tokio::spawn(async move {
        let chunk = [b' '; 64 * 1024];
        let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
        framed.extend_from_slice(&chunk);
        framed.extend_from_slice(b"\r\n");
        if tx.write_all(request_head.as_bytes()).await.is_err() {
            return;
        }
        for _ in 0..4096 {
            match tokio::time::timeout(Duration::from_secs(3), tx.write_all(&framed)).await {
                Ok(Ok(())) => counter.fetch_add(framed.len() as u64, Ordering::Relaxed),
                _ => return,
            };
        }
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), rx.read(&mut buf)).await.expect("413 for an endless chunked body") {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    let answered = started.elapsed();
    assert_eq!(status_of(&got), Some(413), "{}", String::from_utf8_lossy(&got));
    assert!(answered < Duration::from_secs(2), "413 after {answered:?}");
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
    let sent = written.load(Ordering::Relaxed);
    assert!(sent < 64 << 20, "the server read {sent} bytes of an endless body");
    println!("413 for an endless chunked body after {answered:?}; the client got {sent} bytes out");

    // A body that trickles: 408 with a V2 error at the body read timeout (1 s), Content-Length and chunked alike.
    for (extra, first, more) in [
        ("content-length: 100\r\n", &b"{\"inputs\""[..], &b" "[..]),
        ("transfer-encoding: chunked\r\n", b"5\r\n{\"inp\r\n", b"1\r\n \r\n"),
    ] {
        let mut tcp = TcpStream::connect(server.addr).await.unwrap();
        tcp.write_all(head(extra).as_bytes()).await.unwrap();
        tcp.write_all(first).await.unwrap();
        let started = Instant::now();
        let mut response = Vec::new();
        let mut buf = [0u8; 4096];
        // A byte every 300 ms until the server answers and closes.
        while started.elapsed() < Duration::from_secs(5) {
            match tokio::time::timeout(Duration::from_millis(300), tcp.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => response.extend_from_slice(&buf[..n]),
                Err(_) => {
                    let _ = tcp.write_all(more).await;
                }
            }
        }
        let waited = started.elapsed();
        let text = String::from_utf8_lossy(&response).to_string();
        assert_eq!(status_of(&response), Some(408), "{extra}: {text}");
        assert!(text.contains("body_read_timeout") && text.contains("\"error\""), "{text}");
        assert!(waited >= Duration::from_millis(800) && waited < Duration::from_millis(2500), "{extra}: 408 after {waited:?}");
    }
    let metrics = String::from_utf8_lossy(&server.admin_get("/metrics").await.body).to_string();
    assert!(metric(&metrics, "sluice_connections_refused_total{listener=\"http\",reason=\"body_timeout\"}") >= 2.0, "{metrics}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_element_counts_are_400_at_once_over_http_and_grpc() {
    let server = start(|_| {}).await;
    for shape in [json!([1u64 << 40, 1u64 << 40]), json!([u64::MAX / 2, 4]), json!([1u64 << 31])] {
        let body = json!({"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": []}]});
        let started = Instant::now();
        let r = server.infer("fixed_affine", &body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{shape}: {}", String::from_utf8_lossy(&r.body));
        assert!(r.error().contains("limit"), "{shape}: {}", r.error());
        assert!(started.elapsed() < Duration::from_millis(500), "{shape}: 400 after {:?}", started.elapsed());
    }
    // The binary extension: a huge shape with a tiny binary part.
    let started = Instant::now();
    let json = json!({"inputs": [{"name": "x", "shape": [1u64 << 40], "datatype": "FP32", "parameters": {"binary_data_size": 32}}]});
    let r = server.infer_binary("/v2/models/fixed_affine/infer", &json, &[0u8; 32]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(&r.body));
    assert!(started.elapsed() < Duration::from_millis(500));
    // gRPC: INVALID_ARGUMENT, as fast.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc_addr)).unwrap().connect().await.unwrap();
    let mut client = pb::grpc_inference_service_client::GrpcInferenceServiceClient::new(channel);
    let request = pb::ModelInferRequest {
        model_name: "fixed_affine".into(),
        inputs: vec![pb::model_infer_request::InferInputTensor { name: "x".into(), datatype: "FP32".into(), shape: vec![1 << 40, 1 << 40], ..Default::default() }],
        raw_input_contents: vec![Bytes::from_static(&[0u8; 32])],
        ..Default::default()
    };
    let started = Instant::now();
    let status = tokio::time::timeout(Duration::from_secs(5), client.model_infer(request)).await.unwrap().unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(started.elapsed() < Duration::from_millis(500));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_heads_get_431_and_the_connection_closes() {
    let server = start(|_| {}).await;
    let addr = server.addr;
    let big = "a".repeat(100 * 1024);
    let many: String = (0..150).map(|i| format!("x-h{i}: v\r\n")).collect();
    for (what, request) in [
        ("a 100 KiB header", format!("GET /v2/health/live HTTP/1.1\r\nhost: x\r\nx-big: {big}\r\n\r\n")),
        ("150 headers", format!("GET /v2/health/live HTTP/1.1\r\nhost: x\r\n{many}\r\n")),
    ] {
        let started = Instant::now();
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        let _ = tcp.write_all(request.as_bytes()).await;
        let (got, closed) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
        assert_eq!(status_of(&got), Some(431), "{what}: {}", String::from_utf8_lossy(&got));
        assert!(closed && started.elapsed() < Duration::from_secs(1), "{what}: after {:?}", started.elapsed());
    }
    // A header line that never ends: 431 once past the limit; the server does not buffer the rest.
    let started = Instant::now();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut rx, mut tx) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let _ = tx.write_all(b"GET /v2/health/live HTTP/1.1\r\nx-endless: ").await;
        let chunk = [b'a'; 64 * 1024];
        let mut sent = 0u64;
        for _ in 0..1024 {
            match tokio::time::timeout(Duration::from_secs(3), tx.write_all(&chunk)).await {
                Ok(Ok(())) => sent += chunk.len() as u64,
                _ => break,
            }
        }
        sent
    });
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), rx.read(&mut buf)).await.expect("431 for an endless header") {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    assert_eq!(status_of(&got), Some(431), "{}", String::from_utf8_lossy(&got));
    let sent = tokio::time::timeout(Duration::from_secs(10), writer).await.unwrap().unwrap();
    assert!(sent < 64 << 20, "the server took {sent} bytes of one header");
    println!("431 for an endless header after {:?} ({sent} bytes out before the close)", started.elapsed());
    // The server is fine.
    assert_eq!(server.get("/v2/health/live").await.status, StatusCode::OK);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed_at_once() {
    const LIMIT: usize = 16;
    let server = start(|c| {
        c.server.max_connections = LIMIT;
        c.server.header_read_timeout = Duration::from_secs(30);
    })
    .await;
    for (addr, listener) in [(server.addr, "http"), (server.grpc_addr, "grpc")] {
        let mut held = Vec::new();
        for _ in 0..LIMIT {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        // The server has taken them all (an over-limit connection is closed at once; these stay open).
        let started = Instant::now();
        loop {
            let text = String::from_utf8_lossy(&server.admin_get("/metrics").await.body).to_string();
            if metric(&text, &format!("sluice_connections_open{{listener=\"{listener}\"}}")) >= LIMIT as f64 {
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "{listener}: the held connections were not accepted: {text}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut over = TcpStream::connect(addr).await.unwrap();
        let started = Instant::now();
        let _ = over.write_all(format!("GET /v2/health/live HTTP/1.1\r\nhost: {addr}\r\n\r\n").as_bytes()).await;
        let (got, closed) = read_until_closed(&mut over, Duration::from_secs(5)).await;
        assert!(closed && got.is_empty(), "{listener}: a connection over the limit was served: {}", String::from_utf8_lossy(&got));
        assert!(started.elapsed() < Duration::from_secs(1), "{listener}: closed after {:?}", started.elapsed());
        // Places free up as connections close.
        held.truncate(LIMIT - 4);
        let started = Instant::now();
        loop {
            let mut tcp = TcpStream::connect(addr).await.unwrap();
            if listener == "http" {
                tcp.write_all(format!("GET /v2/health/live HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes()).await.unwrap();
                let (got, _) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
                if status_of(&got) == Some(200) {
                    break;
                }
            } else {
                let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await;
                let served = match channel {
                    Ok(channel) => pb::grpc_inference_service_client::GrpcInferenceServiceClient::new(channel).server_live(pb::ServerLiveRequest {}).await.is_ok(),
                    Err(_) => false,
                };
                if served {
                    break;
                }
            }
            assert!(started.elapsed() < Duration::from_secs(5), "{listener}: no place after closing connections");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        drop(held);
    }
    let text = String::from_utf8_lossy(&server.admin_get("/metrics").await.body).to_string();
    assert!(metric(&text, "sluice_connections_refused_total{listener=\"http\",reason=\"limit\"}") >= 1.0, "{text}");
    assert!(metric(&text, "sluice_connections_refused_total{listener=\"grpc\",reason=\"limit\"}") >= 1.0, "{text}");
    server.shutdown().await;
}

/// gRPC: a connection that sends no preface is closed at the header timeout; a request message that stops halfway fails
/// with DEADLINE_EXCEEDED at the body read timeout; streams over max_concurrent_streams wait for a free one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_prefaces_messages_and_streams_are_bounded() {
    let server = start(|c| {
        c.server.header_read_timeout = Duration::from_millis(700);
        c.server.body_read_timeout = Duration::from_secs(1);
        c.server.max_concurrent_streams = 4;
    })
    .await;
    // No preface.
    let mut tcp = TcpStream::connect(server.grpc_addr).await.unwrap();
    let started = Instant::now();
    let (_, closed) = read_until_closed(&mut tcp, Duration::from_secs(5)).await;
    let waited = started.elapsed();
    assert!(closed && waited >= Duration::from_millis(500) && waited < Duration::from_millis(2000), "closed after {waited:?}");

    // Half a message, then nothing (a raw HTTP/2 client, since gRPC clients send whole messages).
    let tcp = TcpStream::connect(server.grpc_addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.unwrap();
    tokio::spawn(conn);
    let (body_tx, body_rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    let request = Request::post(format!("http://{}/inference.GRPCInferenceService/ModelInfer", server.grpc_addr))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(body_rx)))
        .unwrap();
    body_tx.send(Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 100, 1, 2, 3, 4, 5])))).await.unwrap();
    let started = Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request)).await.expect("an answer to a stalled message").unwrap();
    let mut status = response.headers().get("grpc-status").map(|v| v.to_str().unwrap().to_string());
    let mut message = response.headers().get("grpc-message").map(|v| v.to_str().unwrap().to_string());
    if status.is_none() {
        let collected = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect()).await.unwrap().unwrap();
        let trailers = collected.trailers().cloned().unwrap_or_default();
        status = trailers.get("grpc-status").map(|v| v.to_str().unwrap().to_string());
        message = trailers.get("grpc-message").map(|v| v.to_str().unwrap().to_string());
    }
    let waited = started.elapsed();
    assert_eq!(status.as_deref(), Some("4"), "DEADLINE_EXCEEDED expected: {message:?}");
    assert!(waited >= Duration::from_millis(800) && waited < Duration::from_millis(2500), "answered after {waited:?}");
    drop(body_tx);

    // Four open streams fill the connection; a fifth call waits until one ends.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc_addr)).unwrap().connect().await.unwrap();
    let mut client = pb::grpc_inference_service_client::GrpcInferenceServiceClient::new(channel);
    let mut streams = Vec::new();
    for _ in 0..4 {
        let (tx, rx) = tokio::sync::mpsc::channel::<pb::ModelInferRequest>(1);
        let response = tokio::time::timeout(Duration::from_secs(5), client.model_stream_infer(tokio_stream::wrappers::ReceiverStream::new(rx)))
            .await
            .expect("a stream opens")
            .unwrap();
        streams.push((tx, response));
    }
    let mut fifth = client.clone();
    let live = tokio::spawn(async move { fifth.server_live(pb::ServerLiveRequest {}).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!live.is_finished(), "a fifth stream was opened over max_concurrent_streams = 4");
    streams.pop();
    let answered = tokio::time::timeout(Duration::from_secs(5), live).await.expect("the fifth call runs once a stream ends").unwrap();
    assert!(answered.unwrap().into_inner().live);
    drop(streams);
    server.shutdown().await;
}

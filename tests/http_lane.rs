//! The HTTP/1.1 inference lane (src/server/lane.rs) over real connections: requests of every kind on one keep-alive
//! connection, pipelined; a connection handed to hyper mid-way keeps answering; `Connection: close`; bad requests on
//! the lane get V2 errors and the connection carries on; the lane's answers match hyper's.

use crate::common::*;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One answer read off a connection.
struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Reads `count` answers (framed by Content-Length, which every answer here has) within 20 s.
async fn read_answers(tcp: &mut TcpStream, count: usize) -> Vec<Answer> {
    let read = async {
        let mut buf = Vec::new();
        let mut answers = Vec::new();
        let mut chunk = [0u8; 8192];
        while answers.len() < count {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().expect("a length")))
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status");
                    let body = buf[end + 4..end + 4 + length].to_vec();
                    buf.drain(..end + 4 + length);
                    answers.push(Answer { status, head, body });
                    continue;
                }
            }
            let n = tcp.read(&mut chunk).await.expect("read");
            assert!(n > 0, "closed after {} of {count} answers", answers.len());
            buf.extend_from_slice(&chunk[..n]);
        }
        answers
    };
    tokio::time::timeout(Duration::from_secs(20), read).await.expect("answers in time")
}

async fn closed_within(tcp: &mut TcpStream, limit: Duration) -> bool {
    let mut byte = [0u8; 1];
    matches!(tokio::time::timeout(limit, tcp.read(&mut byte)).await, Ok(Ok(0)) | Ok(Err(_)))
}

fn infer_body(first: f32) -> String {
    let data: Vec<f32> = (0..8).map(|i| first + i as f32).collect();
    json!({"inputs": [{"name": "x", "shape": [8], "datatype": "FP32", "data": data}]}).to_string()
}

fn post(path: &str, body: &str, extra: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\n\r\n{body}", body.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_carries_inference_and_metadata_pipelined() {
    let server = start_repo(TempRepo::new().link("fixed_affine")).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut requests = String::new();
    requests += &post("/v2/models/fixed_affine/infer", &infer_body(1.0), "x-request-id: first\r\n");
    requests += "GET /v2/health/ready HTTP/1.1\r\nhost: t\r\n\r\n";
    requests += "GET /v2/models/fixed_affine HTTP/1.1\r\nhost: t\r\n\r\n";
    requests += &post("/v2/models/fixed_affine/versions/1/infer", &infer_body(10.0), "");
    requests += &post("/v2/models/nope/infer", &infer_body(1.0), "");
    requests += &post("/v2/models/fixed_affine/infer", "{not json", "");
    requests += &post("/v2/models/fixed_affine/infer", &infer_body(1.0), "");
    // All in one write: the server reads them together and answers in order.
    tcp.write_all(requests.as_bytes()).await.unwrap();
    let answers = read_answers(&mut tcp, 7).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 404, 400, 200]);
    assert_eq!(answers[2].json()["name"], "fixed_affine");
    let (a, b) = (answers[0].json(), answers[3].json());
    assert_ne!(a["outputs"], b["outputs"], "each answer is its own request's");
    assert_eq!(answers[0].json()["outputs"], answers[6].json()["outputs"], "same input, same output");
    for bad in [&answers[4], &answers[5]] {
        assert!(bad.json()["error"].as_str().is_some_and(|e| !e.is_empty()), "{}", String::from_utf8_lossy(&bad.body));
        assert_eq!(bad.header("content-type").as_deref(), Some("application/json"));
    }
    assert!(answers.iter().all(|a| a.header("date").is_some() && a.header("connection").is_none()), "{}", answers[0].head);
    // Still open and answering.
    tcp.write_all(post("/v2/models/fixed_affine/infer", &infer_body(1.0), "").as_bytes()).await.unwrap();
    assert_eq!(read_answers(&mut tcp, 1).await[0].status, 200);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_handed_to_hyper_keeps_answering() {
    let server = start_repo(TempRepo::new().link("fixed_affine")).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let body = infer_body(2.0);
    let lane = post("/v2/models/fixed_affine/infer", &body, "");
    tcp.write_all(lane.as_bytes()).await.unwrap();
    let first = read_answers(&mut tcp, 1).await.remove(0);
    assert_eq!(first.status, 200);
    // A chunked body is hyper's: the connection leaves the lane, with this request's bytes, and stays open.
    let chunked = format!(
        "POST /v2/models/fixed_affine/infer HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
        body.len()
    );
    tcp.write_all(chunked.as_bytes()).await.unwrap();
    tcp.write_all(lane.as_bytes()).await.unwrap();
    let answers = read_answers(&mut tcp, 2).await;
    for answer in &answers {
        assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
        assert_eq!(answer.json()["outputs"], first.json()["outputs"]);
    }
    // HEAD is hyper's too.
    tcp.write_all(b"HEAD /v2/health/live HTTP/1.1\r\nhost: t\r\n\r\n").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await.expect("HEAD answer").unwrap();
        assert!(n > 0);
        got.extend_from_slice(&buf[..n]);
    }
    assert!(got.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&got));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_is_honoured_and_answers_match_hyper() {
    let server = start_repo(TempRepo::new().link("fixed_affine")).await;
    let body = infer_body(3.0);
    // Through the lane: Connection: close answers, says so, and closes.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(post("/v2/models/fixed_affine/infer", &body, "connection: close\r\n").as_bytes()).await.unwrap();
    let answer = read_answers(&mut tcp, 1).await.remove(0);
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("connection").as_deref(), Some("close"));
    assert!(closed_within(&mut tcp, Duration::from_secs(5)).await, "the connection stays open after Connection: close");
    // Through hyper (HTTP/1.0 is hyper's): the same answer.
    let request = format!(
        "POST /v2/models/fixed_affine/infer HTTP/1.0\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let via_hyper = raw_http(server.addr, request.as_bytes()).await;
    assert_eq!(via_hyper.status, 200);
    assert_eq!(via_hyper.json(), answer.json());
    assert_eq!(via_hyper.header("content-type"), answer.header("content-type").as_deref());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_answers_on_the_lane_carry_the_header_length() {
    let server = start_repo(TempRepo::new().link("fixed_affine")).await;
    let values: Vec<f32> = (0..8).map(|i| i as f32).collect();
    let json = json!({"inputs": [{"name": "x", "shape": [8], "datatype": "FP32", "parameters": {"binary_data_size": 32}}],
        "parameters": {"binary_data_output": true}})
    .to_string();
    let mut body = json.clone().into_bytes();
    body.extend_from_slice(&f32_bytes(&values));
    let mut request = format!(
        "POST /v2/models/fixed_affine/infer HTTP/1.1\r\nhost: t\r\ninference-header-content-length: {}\r\ncontent-length: {}\r\n\r\n",
        json.len(),
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(&request).await.unwrap();
    let answer = read_answers(&mut tcp, 1).await.remove(0);
    assert_eq!(answer.status, 200, "{}", String::from_utf8_lossy(&answer.body));
    let length: usize = answer.header("inference-header-content-length").expect("binary answer").parse().unwrap();
    assert_eq!(answer.header("content-type").as_deref(), Some("application/octet-stream"));
    let header: Value = serde_json::from_slice(&answer.body[..length]).unwrap();
    let size = header["outputs"][0]["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
    assert_eq!(answer.body.len(), length + size);
    server.shutdown().await;
}

/// A model whose queue holds one request and whose batcher holds it for a minute: the second request finds the queue full.
fn held_one() -> &'static str {
    "max_batch_size = 64\n[dynamic_batching]\nmax_queue_delay = \"60s\"\nwait_when_alone = true\npreferred_batch_sizes = [64]\n\
     [queue]\ncapacity = 1\ntimeout = \"60s\"\n"
}

/// A server whose `held_lane` queue is full: one request sits in it (sent on the returned connection, which must stay
/// open to keep it there). Also returns a request body for the model.
async fn full_queue(refused_hold: Duration) -> (Server, TcpStream, String) {
    let mut config = sluice::config::Config::default();
    config.server.refused_hold = refused_hold;
    let repo = TempRepo::new().model("held_lane", "identity", 1, held_one());
    config.server.models = repo.path().to_path_buf();
    let server = start_with(config, Some(repo)).await;
    let row: Vec<f32> = vec![1.0; 256];
    let body = json!({"inputs": [{"name": "input", "shape": [1, 256], "datatype": "FP32", "data": row}]}).to_string();
    let mut holder = TcpStream::connect(server.addr).await.unwrap();
    holder.write_all(post("/v2/models/held_lane/infer", &body, "").as_bytes()).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let text = String::from_utf8_lossy(&server.admin_get("/metrics").await.body).to_string();
        if text.lines().any(|l| l.starts_with("sluice_queue_requests{") && l.contains("held_lane") && l.ends_with(" 1")) {
            break;
        }
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("held_lane") && l.contains("queue")).collect();
        assert!(std::time::Instant::now() < deadline, "the first request never queued: {lines:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (server, holder, body)
}

/// Under overload the 429 is decided from the head: a small body is read and dropped (the connection carries on), a
/// large one is never read (the answer says `Connection: close` and the connection closes), and neither is decoded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_refused_from_the_head() {
    // Without the hold, so the pipelined request after the refusal is answered at once (the hold has its own test).
    let (server, holder, _) = full_queue(Duration::ZERO).await;
    // A small body: 429 with Retry-After, then the same connection is served (a malformed body included: it is
    // refused for the full queue, not parsed).
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut requests = post("/v2/models/held_lane/infer", "{not json at all", "");
    requests += "GET /v2/health/live HTTP/1.1\r\nhost: t\r\n\r\n";
    tcp.write_all(requests.as_bytes()).await.unwrap();
    let answers = read_answers(&mut tcp, 2).await;
    assert_eq!(answers[0].status, 429, "{}", String::from_utf8_lossy(&answers[0].body));
    assert!(answers[0].header("retry-after").is_some(), "{}", answers[0].head);
    assert!(answers[0].json()["error"].as_str().is_some_and(|e| e.contains("overloaded")));
    assert_eq!(answers[1].status, 200);
    // A large declared body (1 MiB, none of it sent): answered at once, connection closed.
    let mut big = TcpStream::connect(server.addr).await.unwrap();
    let head = "POST /v2/models/held_lane/infer HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: 1048576\r\n\r\n";
    big.write_all(head.as_bytes()).await.unwrap();
    let answer = read_answers(&mut big, 1).await;
    assert_eq!(answer[0].status, 429);
    assert_eq!(answer[0].header("connection").as_deref(), Some("close"));
    assert!(closed_within(&mut big, Duration::from_secs(5)).await, "the connection stayed open");
    let metrics = String::from_utf8_lossy(&server.admin_get("/metrics").await.body).to_string();
    assert!(metrics.contains("sluice_requests_total{model=\"held_lane\",version=\"1\",protocol=\"http\",code=\"429\"} 2"), "{metrics}");
    drop(holder);
    server.shutdown().await;
}

/// Once refusals outrun what the model serves (here: it has served nothing), a refused connection's next request is not
/// read until the queue has room: the 429 comes at once, the pipelined request after it only when the queued request
/// leaves (its client goes away), long before the 30 s hold would end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_waits_for_room_before_its_next_request() {
    let (server, holder, body) = full_queue(Duration::from_secs(30)).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut requests = post("/v2/models/held_lane/infer", &body, "");
    requests += "GET /v2/health/live HTTP/1.1\r\nhost: t\r\n\r\n";
    tcp.write_all(requests.as_bytes()).await.unwrap();
    let refused = read_answers(&mut tcp, 1).await;
    assert_eq!(refused[0].status, 429);
    // Held: nothing more comes while the queue stays full.
    let mut byte = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut byte)).await;
    assert!(early.is_err(), "the next request was read while the queue was still full");
    // The queued request's client leaves: its place frees up and the held connection is read again.
    drop(holder);
    let started = std::time::Instant::now();
    let rest = read_answers(&mut tcp, 1).await;
    assert_eq!(rest[0].status, 200, "{}", rest[0].head);
    assert!(started.elapsed() < Duration::from_secs(10), "the held request was answered only after {:?}", started.elapsed());
    server.shutdown().await;
}

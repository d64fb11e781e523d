//! Shared helpers for the integration tests: start the real server on 127.0.0.1:0, build temporary model repositories,
//! and talk to the server over HTTP with a small hyper client.
#![allow(dead_code)]

pub mod redis_server;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use sluice::app::Running;
use sluice::config::Config;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The repository's demo models.
pub fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}

/// A temporary model repository. Models are either linked from `models/` (read-only, keeps their `model.toml`) or copied
/// with a `model.toml` of the test's own.
pub struct TempRepo {
    pub dir: tempfile::TempDir,
}

impl TempRepo {
    pub fn new() -> TempRepo {
        TempRepo { dir: tempfile::tempdir().expect("temp dir") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Links `models/<name>` (every version, its own model.toml) into the repository.
    pub fn link(self, name: &str) -> TempRepo {
        std::os::unix::fs::symlink(models_dir().join(name), self.dir.path().join(name)).expect("symlink model");
        self
    }

    /// Adds model `name` version 1 as a copy (a link to the file) of `models/<source>/<version>/model.onnx`,
    /// with `toml` as its model.toml.
    pub fn model(self, name: &str, source: &str, source_version: u32, toml: &str) -> TempRepo {
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(dir.join("1")).expect("model dir");
        std::os::unix::fs::symlink(
            models_dir().join(source).join(source_version.to_string()).join("model.onnx"),
            dir.join("1").join("model.onnx"),
        )
        .expect("link model.onnx");
        std::fs::write(dir.join("model.toml"), toml).expect("write model.toml");
        self
    }
}

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(5)).build_http()
}

/// One HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The `error` message of a V2 error body.
    pub fn error(&self) -> String {
        let v = self.json();
        v.get("error").and_then(Value::as_str).unwrap_or_else(|| panic!("no 'error' string in {v}")).to_string()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The server under test plus a client for it.
pub struct Server {
    pub running: Option<Running>,
    /// The HTTP listener.
    pub addr: SocketAddr,
    /// The gRPC listener (KServe V2 gRPC, health, reflection).
    pub grpc_addr: SocketAddr,
    /// The admin listener (/metrics, /scaling), when enabled.
    pub admin_addr: Option<SocketAddr>,
    /// The KEDA external scaler, when enabled.
    pub scaler_addr: Option<SocketAddr>,
    pub client: HttpClient,
    /// Keeps a temporary repository alive while the server runs.
    pub repo: Option<TempRepo>,
}

/// Starts the real server on 127.0.0.1:0 (HTTP and gRPC) with `config` (its listen addresses are overridden).
pub async fn start_with(mut config: Config, repo: Option<TempRepo>) -> Server {
    config.server.http = "127.0.0.1:0".parse().unwrap();
    config.server.grpc = "127.0.0.1:0".parse().unwrap();
    config.admin.listen = "127.0.0.1:0".parse().unwrap();
    config.scaling.keda.listen = "127.0.0.1:0".parse().unwrap();
    let running = sluice::app::start(&config, std::future::pending::<()>()).await.unwrap_or_else(|e| panic!("server start: {e}"));
    let (addr, grpc_addr, admin_addr, scaler_addr) = (running.http_addr, running.grpc_addr, running.admin_addr, running.scaler_addr);
    Server { running: Some(running), addr, grpc_addr, admin_addr, scaler_addr, client: client(), repo }
}

/// Starts the server on a temporary repository.
pub async fn start_repo(repo: TempRepo) -> Server {
    let mut config = Config::default();
    config.server.models = repo.path().to_path_buf();
    start_with(config, Some(repo)).await
}

/// Starts the server on the repository's own `models/` (every demo model).
pub async fn start_models() -> Server {
    let mut config = Config::default();
    config.server.models = models_dir();
    start_with(config, None).await
}

impl Server {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub async fn request(&self, method: Method, path: &str, headers: &[(&str, &str)], body: Bytes) -> Reply {
        let mut req = Request::builder().method(method).uri(self.url(path));
        for (k, v) in headers {
            req = req.header(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        let req = req.body(Full::new(body)).unwrap();
        let fut = async {
            let resp = self.client.request(req).await.unwrap_or_else(|e| panic!("{path}: request failed: {e:?}"));
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.into_body().collect().await.expect("read body").to_bytes();
            Reply { status, headers, body }
        };
        tokio::time::timeout(Duration::from_secs(30), fut).await.unwrap_or_else(|_| panic!("{path}: no answer within 30 s"))
    }

    /// GETs `path` from the admin listener (/metrics, /scaling).
    pub async fn admin_get(&self, path: &str) -> Reply {
        let admin = self.admin_addr.expect("the admin listener is enabled");
        let req = Request::builder().uri(format!("http://{admin}{path}")).body(Full::new(Bytes::new())).unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .unwrap_or_else(|_| panic!("admin {path}: no answer within 30s"))
            .unwrap_or_else(|e| panic!("admin {path}: request failed: {e:?}"));
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.expect("admin body").to_bytes();
        Reply { status, headers, body }
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, &[], Bytes::new()).await
    }

    pub async fn post_raw(&self, path: &str, headers: &[(&str, &str)], body: impl Into<Bytes>) -> Reply {
        self.request(Method::POST, path, headers, body.into()).await
    }

    pub async fn post_json(&self, path: &str, value: &Value) -> Reply {
        self.post_raw(path, &[("content-type", "application/json")], Bytes::from(serde_json::to_vec(value).unwrap())).await
    }

    /// POSTs a V2 request to `/v2/models/{model}/infer`.
    pub async fn infer(&self, model: &str, value: &Value) -> Reply {
        self.post_json(&format!("/v2/models/{model}/infer"), value).await
    }

    /// POSTs a binary-extension body: `json` header then `binary`.
    pub async fn infer_binary(&self, path: &str, json: &Value, binary: &[u8]) -> Reply {
        let header = serde_json::to_vec(json).unwrap();
        let len = header.len().to_string();
        let mut body = header;
        body.extend_from_slice(binary);
        self.post_raw(path, &[("content-type", "application/octet-stream"), ("inference-header-content-length", &len)], body).await
    }

    /// `model_stats[0]` of `/v2/models/{model}/stats`.
    /// Statistics of the model's default (highest) version; the unversioned endpoint lists every version.
    pub async fn stats(&self, model: &str) -> Value {
        let r = self.get(&format!("/v2/models/{model}/stats")).await;
        assert_eq!(r.status, StatusCode::OK, "stats of {model}: {}", String::from_utf8_lossy(&r.body));
        let all = r.json()["model_stats"].as_array().cloned().unwrap_or_default();
        all.into_iter()
            .max_by_key(|s| s["version"].as_str().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
            .unwrap_or(Value::Null)
    }

    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(20), running.shutdown())
                .await
                .expect("server shut down in time")
                .expect("server shut down cleanly");
        }
    }
}

/// Stats helpers.
pub fn success_count(stats: &Value) -> u64 {
    stats["inference_stats"]["success"]["count"].as_u64().expect("success count")
}

/// `(batch_size, executions)` of every entry of `batch_stats`.
pub fn batch_sizes(stats: &Value) -> Vec<(u64, u64)> {
    stats["batch_stats"]
        .as_array()
        .expect("batch_stats")
        .iter()
        .map(|b| (b["batch_size"].as_u64().unwrap(), b["compute_infer"]["count"].as_u64().unwrap()))
        .collect()
}

/// The f32 values of a JSON array.
pub fn f32s(v: &Value) -> Vec<f32> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(|x| x.as_f64().expect("number") as f32).collect()
}

/// The f32 values of the named output of a JSON V2 response.
pub fn output_f32(response: &Value, name: &str) -> Vec<f32> {
    let out = response["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output '{name}' in {response}"));
    f32s(&out["data"])
}

/// Equality within `rel` relative tolerance (absolute near zero).
pub fn close(a: f32, b: f32, rel: f32) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1.0)
}

pub fn assert_close(got: &[f32], want: &[f32], rel: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths differ");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(close(*g, *w, rel), "{what}: element {i}: got {g}, want {w}");
    }
}

/// Little-endian bytes of f32 values.
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

pub fn f32_from_bytes(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Splits a binary-extension response into its JSON header and binary section.
pub fn split_binary(reply: &Reply) -> (Value, Bytes) {
    let n: usize = reply
        .header("inference-header-content-length")
        .unwrap_or_else(|| panic!("no Inference-Header-Content-Length in {:?}", reply.headers))
        .parse()
        .expect("header length is a number");
    assert!(n <= reply.body.len());
    let json: Value = serde_json::from_slice(&reply.body[..n]).expect("JSON header");
    (json, reply.body.slice(n..))
}

/// Polls `cond` every 2 ms for at most `limit`; true if it became true.
pub async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = tokio::time::Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if tokio::time::Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Sends `request` (a whole HTTP/1.1 request, headers and body) over a fresh connection in one write, then reads until
/// the server closes. Unlike the hyper client, a server that answers early and closes while the body is still being
/// written (413 on Content-Length) does not turn into a client-side BrokenPipe: the response already sent is returned.
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> Reply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let _ = stream.write_all(request).await;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if !buf.is_empty() => {
                    let _ = e;
                    break;
                }
                Err(e) => panic!("raw request: no response: {e}"),
            }
            if let Some(end) = find(&buf, b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let length = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap()));
                if length.is_some_and(|n| buf.len() >= end + 4 + n) {
                    break;
                }
            }
        }
        buf
    };
    let buf = tokio::time::timeout(Duration::from_secs(30), fut).await.expect("raw response in time");
    let end = find(&buf, b"\r\n\r\n").unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(&buf)));
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let mut lines = head.lines();
    let status_line = lines.next().unwrap();
    let code: u16 = status_line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut headers = HeaderMap::new();
    for line in lines {
        if let Some((k, v)) = line.split_once(':') {
            headers.append(HeaderName::from_bytes(k.trim().as_bytes()).unwrap(), HeaderValue::from_str(v.trim()).unwrap());
        }
    }
    Reply { status: StatusCode::from_u16(code).unwrap(), headers, body: Bytes::copy_from_slice(&buf[end + 4..]) }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The little-endian V2 bytes of JSON `data` of `datatype`.
pub fn v2_bytes(datatype: &str, data: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    for v in data.as_array().unwrap() {
        match datatype {
            "BOOL" => out.push(v.as_bool().unwrap() as u8),
            "INT8" => out.extend((v.as_i64().unwrap() as i8).to_le_bytes()),
            "INT16" => out.extend((v.as_i64().unwrap() as i16).to_le_bytes()),
            "INT32" => out.extend((v.as_i64().unwrap() as i32).to_le_bytes()),
            "INT64" => out.extend(v.as_i64().unwrap().to_le_bytes()),
            "UINT8" => out.extend((v.as_u64().unwrap() as u8).to_le_bytes()),
            "UINT16" => out.extend((v.as_u64().unwrap() as u16).to_le_bytes()),
            "UINT32" => out.extend((v.as_u64().unwrap() as u32).to_le_bytes()),
            "UINT64" => out.extend(v.as_u64().unwrap().to_le_bytes()),
            "FP16" => out.extend(half::f16::from_f64(v.as_f64().unwrap()).to_le_bytes()),
            "FP32" => out.extend((v.as_f64().unwrap() as f32).to_le_bytes()),
            "FP64" => out.extend(v.as_f64().unwrap().to_le_bytes()),
            "BYTES" => {
                let s = v.as_str().unwrap().as_bytes();
                out.extend((s.len() as u32).to_le_bytes());
                out.extend(s);
            }
            other => panic!("{other}"),
        }
    }
    out
}

/// The sum of the series of `name` in a Prometheus exposition whose labels include `labels` (0 when there is none).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|(k, v)| l.contains(&format!("{k}=\"{v}\""))))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

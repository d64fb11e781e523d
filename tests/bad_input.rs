//! A battery of malformed or unacceptable requests against the real server. Each must get its exact status and an
//! `{"error": ...}` body whose message names the problem; afterwards the server still serves good requests.

use crate::common::*;
use hyper::StatusCode;
use serde_json::{json, Value};

const MAX_BODY: usize = 64 * 1024;
const MAX_ELEMENTS: usize = 1 << 20;

struct Case {
    name: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: StatusCode,
    /// Words the error message must contain (case-insensitive).
    words: Vec<&'static str>,
}

fn good_fraud_input() -> Value {
    json!({"name": "input", "shape": [1, 64], "datatype": "FP32", "data": vec![0.5f32; 64]})
}

fn infer_path(model: &str) -> String {
    format!("/v2/models/{model}/infer")
}

fn json_case(name: &'static str, model: &str, body: Value, status: StatusCode, words: &[&'static str]) -> Case {
    Case {
        name,
        path: infer_path(model),
        headers: vec![("content-type", "application/json".into())],
        body: serde_json::to_vec(&body).unwrap(),
        status,
        words: words.to_vec(),
    }
}

fn raw_case(name: &'static str, model: &str, body: &str, status: StatusCode, words: &[&'static str]) -> Case {
    Case {
        name,
        path: infer_path(model),
        headers: vec![("content-type", "application/json".into())],
        body: body.as_bytes().to_vec(),
        status,
        words: words.to_vec(),
    }
}

/// A binary-extension body: `json` header (its length in the header unless `header_len` overrides it) then `binary`.
fn binary_case(
    name: &'static str,
    model: &str,
    json: Value,
    binary: &[u8],
    header_len: Option<&str>,
    status: StatusCode,
    words: &[&'static str],
) -> Case {
    let mut body = serde_json::to_vec(&json).unwrap();
    let len = header_len.map(str::to_string).unwrap_or_else(|| body.len().to_string());
    body.extend_from_slice(binary);
    Case {
        name,
        path: infer_path(model),
        headers: vec![("content-type", "application/octet-stream".into()), ("inference-header-content-length", len)],
        body,
        status,
        words: words.to_vec(),
    }
}

fn one_input(input: Value) -> Value {
    json!({ "inputs": [input] })
}

fn cases() -> Vec<Case> {
    use StatusCode as S;
    let bad = S::BAD_REQUEST;
    let g = good_fraud_input;
    let f32s = |n: usize| vec![0.25f32; n];
    let cases = vec![
        // --- body / JSON structure
        raw_case("malformed JSON", "fraud_mlp", r#"{"inputs": [{"name": "input""#, bad, &["JSON"]),
        raw_case("empty body", "fraud_mlp", "", bad, &["JSON"]),
        raw_case("JSON array instead of object", "fraud_mlp", "[1, 2, 3]", bad, &["JSON"]),
        raw_case("trailing garbage after JSON", "fraud_mlp", r#"{"inputs": []} xyz"#, bad, &["JSON"]),
        json_case("missing inputs key", "fraud_mlp", json!({"id": "x"}), bad, &["inputs"]),
        json_case("inputs is not a list", "fraud_mlp", json!({"inputs": 5}), bad, &["JSON"]),
        json_case("no inputs", "fraud_mlp", json!({"inputs": []}), bad, &["no inputs"]),
        json_case("input without shape", "fraud_mlp", one_input(json!({"name": "input", "datatype": "FP32", "data": f32s(64)})), bad, &["shape"]),
        json_case("input without datatype", "fraud_mlp", one_input(json!({"name": "input", "shape": [1, 64], "data": f32s(64)})), bad, &["datatype"]),
        json_case("id is not a string", "fraud_mlp", json!({"id": 5, "inputs": [g()]}), bad, &["string"]),
        // --- datatypes and names
        json_case("unknown datatype", "fraud_mlp", one_input(json!({"name": "input", "shape": [1, 64], "datatype": "FLOAT32", "data": f32s(64)})), bad, &["unknown datatype", "FLOAT32"]),
        json_case("lower-case datatype", "fraud_mlp", one_input(json!({"name": "input", "shape": [1, 64], "datatype": "fp32", "data": f32s(64)})), bad, &["unknown datatype"]),
        json_case("wrong datatype for the model", "fraud_mlp", one_input(json!({"name": "input", "shape": [1, 64], "datatype": "FP64", "data": f32s(64)})), bad, &["datatype", "FP64", "FP32"]),
        json_case("wrong input name", "fraud_mlp", one_input(json!({"name": "features", "shape": [1, 64], "datatype": "FP32", "data": f32s(64)})), bad, &["unknown input", "features"]),
        json_case(
            "missing input",
            "recommender",
            one_input(json!({"name": "item_ids", "shape": [1, 20], "datatype": "INT64", "data": vec![1i64; 20]})),
            bad,
            &["missing input", "user_features"],
        ),
        json_case("duplicate input", "fraud_mlp", json!({"inputs": [g(), g()]}), bad, &["more than once", "input"]),
        // --- shapes and element counts
        json_case("fewer data than the shape needs", "fraud_mlp", one_input(json!({"name": "input", "shape": [1, 64], "datatype": "FP32", "data": f32s(63)})), bad, &["63 elements", "64"]),
        json_case("more data than the shape holds", "fraud_mlp", one_input(json!({"name": "input", "shape": [1, 64], "datatype": "FP32", "data": f32s(65)})), bad, &["more elements"]),
        json_case("negative dimension", "fraud_mlp", one_input(json!({"name": "input", "shape": [-1, 64], "datatype": "FP32", "data": f32s(64)})), bad, &["-1"]),
        json_case(
            "nested data of the wrong count",
            "fraud_mlp",
            one_input(json!({"name": "input", "shape": [2, 64], "datatype": "FP32", "data": [f32s(64), f32s(63)]})),
            bad,
            &["127 elements"],
        ),
        json_case("zero batch", "fraud_mlp", one_input(json!({"name": "input", "shape": [0, 64], "datatype": "FP32", "data": []})), bad, &["shape"]),
        json_case("wrong rank", "fraud_mlp", one_input(json!({"name": "input", "shape": [64], "datatype": "FP32", "data": f32s(64)})), bad, &["shape"]),
        json_case("wrong inner dimension", "fraud_mlp", one_input(json!({"name": "input", "shape": [1, 63], "datatype": "FP32", "data": f32s(63)})), bad, &["shape", "63"]),
        json_case("batch over max_batch_size", "fraud_mlp", one_input(json!({"name": "input", "shape": [65, 64], "datatype": "FP32", "data": f32s(65 * 64)})), bad, &["max_batch_size", "65"]),
        json_case("fixed_affine given a batch dimension", "fixed_affine", one_input(json!({"name": "x", "shape": [1, 8], "datatype": "FP32", "data": f32s(8)})), bad, &["shape", "[8]"]),
        json_case(
            "inputs disagree on batch size",
            "recommender",
            json!({"inputs": [
                {"name": "item_ids", "shape": [2, 20], "datatype": "INT64", "data": vec![1i64; 40]},
                {"name": "user_features", "shape": [3, 32], "datatype": "FP32", "data": f32s(96)},
            ]}),
            bad,
            &["disagree", "batch"],
        ),
        // --- element values
        json_case("string in FP32 data", "fraud_mlp", one_input(json!({"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1.0, "two"]})), bad, &["string"]),
        json_case("float in INT64 data", "recommender", one_input(json!({"name": "item_ids", "shape": [1, 2], "datatype": "INT64", "data": [1, 1.5]})), bad, &["whole numbers"]),
        json_case("float in INT32 data", "all_types", one_input(json!({"name": "in_int32", "shape": [1, 1], "datatype": "INT32", "data": [2.5]})), bad, &["whole numbers"]),
        json_case("out of range INT8", "all_types", one_input(json!({"name": "in_int8", "shape": [1, 2], "datatype": "INT8", "data": [1, 300]})), bad, &["out of range", "300", "INT8"]),
        json_case("negative UINT8", "all_types", one_input(json!({"name": "in_uint8", "shape": [1, 1], "datatype": "UINT8", "data": [-1]})), bad, &["out of range", "UINT8"]),
        json_case("null element", "fraud_mlp", one_input(json!({"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1.0, null]})), bad, &["null"]),
        json_case("object element", "fraud_mlp", one_input(json!({"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1.0, {"v": 2}]})), bad, &["object"]),
        json_case("boolean in FP32 data", "fraud_mlp", one_input(json!({"name": "input", "shape": [1, 1], "datatype": "FP32", "data": [true]})), bad, &["boolean"]),
        json_case("BOOL given 1", "all_types", one_input(json!({"name": "in_bool", "shape": [1, 1], "datatype": "BOOL", "data": [1]})), bad, &["true or false"]),
        json_case("BYTES given a number", "all_types", one_input(json!({"name": "in_bytes", "shape": [1, 1], "datatype": "BYTES", "data": [7]})), bad, &["strings"]),
        // --- binary extension
        binary_case(
            "binary_data_size larger than the body",
            "fraud_mlp",
            one_input(json!({"name": "input", "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": 256}})),
            &[0u8; 200],
            None,
            bad,
            &["binary_data_size", "256"],
        ),
        binary_case(
            "leftover binary bytes",
            "fraud_mlp",
            one_input(json!({"name": "input", "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": 256}})),
            &[0u8; 260],
            None,
            bad,
            &["4 bytes", "no input claims"],
        ),
        binary_case(
            "binary size does not match the shape",
            "fraud_mlp",
            one_input(json!({"name": "input", "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": 200}})),
            &[0u8; 200],
            None,
            bad,
            &["bytes"],
        ),
        binary_case(
            "malformed BYTES binary data",
            "all_types",
            one_input(json!({"name": "in_bytes", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}})),
            &[9, 0, 0, 0, b'a', b'b'],
            None,
            bad,
            &["malformed"],
        ),
        binary_case(
            "Inference-Header-Content-Length is not a number",
            "fraud_mlp",
            json!({"inputs": [g()]}),
            &[],
            Some("twelve"),
            bad,
            &["Inference-Header-Content-Length", "twelve"],
        ),
        binary_case(
            "Inference-Header-Content-Length larger than the body",
            "fraud_mlp",
            json!({"inputs": [g()]}),
            &[],
            Some("999999"),
            bad,
            &["Inference-Header-Content-Length", "larger"],
        ),
        binary_case(
            "both data and binary_data_size",
            "fraud_mlp",
            one_input(json!({"name": "input", "shape": [1, 64], "datatype": "FP32", "data": f32s(64), "parameters": {"binary_data_size": 256}})),
            &[0u8; 256],
            None,
            bad,
            &["both"],
        ),
        json_case("neither data nor binary_data_size", "fraud_mlp", one_input(json!({"name": "input", "shape": [1, 64], "datatype": "FP32"})), bad, &["neither"]),
        // --- outputs
        json_case("unknown output", "fraud_mlp", json!({"inputs": [g()], "outputs": [{"name": "probabilities"}]}), bad, &["unknown output", "probabilities"]),
        json_case("duplicate output", "fraud_mlp", json!({"inputs": [g()], "outputs": [{"name": "logits"}, {"name": "logits"}]}), bad, &["more than once", "logits"]),
        json_case(
            "classification extension",
            "fraud_mlp",
            json!({"inputs": [g()], "outputs": [{"name": "logits", "parameters": {"classification": 1}}]}),
            bad,
            &["classification"],
        ),
        json_case("binary_data_output is not a boolean", "fraud_mlp", json!({"inputs": [g()], "parameters": {"binary_data_output": "yes"}}), bad, &["binary_data_output"]),
        // --- parameters
        json_case("priority above the model's levels", "recommender", json!({"parameters": {"priority": 3}, "inputs": recommender_inputs()}), bad, &["priority", "3"]),
        json_case("priority on a one-level model", "fraud_mlp", json!({"parameters": {"priority": 2}, "inputs": [g()]}), bad, &["priority"]),
        json_case("priority is not an integer", "recommender", json!({"parameters": {"priority": "high"}, "inputs": recommender_inputs()}), bad, &["priority"]),
        json_case("priority is negative", "recommender", json!({"parameters": {"priority": -1}, "inputs": recommender_inputs()}), bad, &["priority"]),
        json_case("priority is fractional", "recommender", json!({"parameters": {"priority": 1.5}, "inputs": recommender_inputs()}), bad, &["priority"]),
        json_case("timeout is not a number", "fraud_mlp", json!({"parameters": {"timeout": "soon"}, "inputs": [g()]}), bad, &["timeout"]),
        json_case("timeout is negative", "fraud_mlp", json!({"parameters": {"timeout": -5}, "inputs": [g()]}), bad, &["timeout"]),
        json_case("cache is not a boolean", "recommender", json!({"parameters": {"cache": "no"}, "inputs": recommender_inputs()}), bad, &["cache"]),
        // --- routing
        json_case("unknown model", "no_such_model", json!({"inputs": [g()]}), S::NOT_FOUND, &["unknown model", "no_such_model"]),
        Case {
            name: "bad version string",
            path: "/v2/models/fraud_mlp/versions/latest/infer".into(),
            headers: vec![("content-type", "application/json".into())],
            body: serde_json::to_vec(&json!({"inputs": [g()]})).unwrap(),
            status: bad,
            words: vec!["version", "latest"],
        },
        Case {
            name: "unknown version",
            path: "/v2/models/fraud_mlp/versions/9/infer".into(),
            headers: vec![("content-type", "application/json".into())],
            body: serde_json::to_vec(&json!({"inputs": [g()]})).unwrap(),
            status: S::NOT_FOUND,
            words: vec!["version", "9"],
        },
        // --- transport
        Case {
            name: "unsupported Content-Encoding",
            path: infer_path("fraud_mlp"),
            headers: vec![("content-type", "application/json".into()), ("content-encoding", "gzip".into())],
            body: serde_json::to_vec(&json!({"inputs": [g()]})).unwrap(),
            status: S::UNSUPPORTED_MEDIA_TYPE,
            words: vec!["Content-Encoding", "gzip"],
        },
        Case {
            name: "body over max_body_bytes",
            path: infer_path("fraud_mlp"),
            headers: vec![("content-type", "application/json".into())],
            body: serde_json::to_vec(&json!({"id": "x".repeat(MAX_BODY + 1000), "inputs": [g()]})).unwrap(),
            status: S::PAYLOAD_TOO_LARGE,
            words: vec!["limit", "65536"],
        },
    ];
    cases
}

fn recommender_inputs() -> Value {
    json!([
        {"name": "item_ids", "shape": [1, 20], "datatype": "INT64", "data": vec![3i64; 20]},
        {"name": "user_features", "shape": [1, 32], "datatype": "FP32", "data": vec![0.1f32; 32]},
    ])
}

async fn start() -> Server {
    let repo = TempRepo::new().link("fraud_mlp").link("fixed_affine").link("recommender").link("all_types");
    let mut config = sluice::config::Config::default();
    config.server.models = repo.path().to_path_buf();
    config.server.max_body_bytes = MAX_BODY;
    config.server.max_tensor_elements = MAX_ELEMENTS;
    start_with(config, Some(repo)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_exact_statuses_and_named_errors() {
    let server = start().await;
    let cases = cases();
    assert!(cases.len() >= 30);
    let mut names = std::collections::HashSet::new();
    let mut failures = Vec::new();
    for case in &cases {
        assert!(names.insert(case.name), "duplicate case name {}", case.name);
        let headers: Vec<(&str, &str)> = case.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = if case.status == StatusCode::PAYLOAD_TOO_LARGE {
            // The server answers 413 from Content-Length and closes without reading the body: send it in one write.
            let mut raw = format!("POST {} HTTP/1.1\r\nhost: {}\r\nconnection: close\r\ncontent-length: {}\r\n", case.path, server.addr, case.body.len());
            for (k, v) in &headers {
                raw.push_str(&format!("{k}: {v}\r\n"));
            }
            raw.push_str("\r\n");
            let mut raw = raw.into_bytes();
            raw.extend_from_slice(&case.body);
            raw_http(server.addr, &raw).await
        } else {
            server.post_raw(&case.path, &headers, case.body.clone()).await
        };
        let body = String::from_utf8_lossy(&r.body).to_string();
        let message = serde_json::from_slice::<Value>(&r.body)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_string));
        if std::env::var_os("SHOW_ERRORS").is_some() { eprintln!("{:<50} {} {:?}", case.name, r.status.as_u16(), message); }
        let Some(message) = message else {
            failures.push(format!("{}: status {}, body is not a V2 error: {body:?}", case.name, r.status));
            continue;
        };
        if r.status != case.status {
            failures.push(format!("{}: expected {}, got {} ({message})", case.name, case.status, r.status));
            continue;
        }
        if r.header("content-type") != Some("application/json") {
            failures.push(format!("{}: content-type {:?}", case.name, r.header("content-type")));
        }
        for word in &case.words {
            if !message.to_lowercase().contains(&word.to_lowercase()) {
                failures.push(format!("{}: message {message:?} lacks {word:?}", case.name));
            }
        }
    }

    // The server keeps serving, and none of the refused requests reached a model.
    let r = server.infer("fraud_mlp", &json!({"inputs": [good_fraud_input()]})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["outputs"][0]["shape"], json!([1, 2]));
    let r = server.infer("recommender", &json!({"parameters": {"priority": 1}, "inputs": recommender_inputs()})).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    for model in ["fraud_mlp", "recommender", "all_types", "fixed_affine"] {
        let s = server.stats(model).await;
        let expected = if model == "fraud_mlp" || model == "recommender" { 1 } else { 0 };
        assert_eq!(s["inference_stats"]["success"]["count"], expected, "{model}: {s}");
        assert_eq!(s["inference_stats"]["fail"]["count"], 0, "{model}: {s}");
    }
    server.shutdown().await;
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// `server.max_tensor_elements` is documented (config.rs, config/sluice.toml) as "400 above it"; a tensor over it must get
/// 400 before anything is allocated, and so must a shape whose element count overflows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tensor_over_max_tensor_elements_is_400() {
    let server = start().await;
    for (what, shape) in [("over the limit", json!([20000, 64])), ("overflowing usize", json!([u64::MAX / 2, 4]))] {
        let body = one_input(json!({"name": "input", "shape": shape, "datatype": "FP32", "data": []}));
        let r = server.infer("fraud_mlp", &body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}: {}", String::from_utf8_lossy(&r.body));
        assert!(r.error().contains("limit"), "{what}: {}", r.error());
    }
    // Exactly at the limit is decoded (and then refused by the model for its batch size, which is a different 400).
    let r = server.infer("fraud_mlp", &one_input(json!({"name": "input", "shape": [MAX_ELEMENTS / 64, 64], "datatype": "FP32", "data": []}))).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("elements but the shape needs"), "{}", r.error());
    server.shutdown().await;
}

/// Errors on the other endpoints are V2 error bodies too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_endpoints_refuse_unknown_models_and_versions() {
    let server = start().await;
    for (path, status, word) in [
        ("/v2/models/nope", StatusCode::NOT_FOUND, "nope"),
        ("/v2/models/nope/config", StatusCode::NOT_FOUND, "nope"),
        ("/v2/models/nope/stats", StatusCode::NOT_FOUND, "nope"),
        ("/v2/models/nope/ready", StatusCode::NOT_FOUND, "nope"),
        ("/v2/models/fraud_mlp/versions/7", StatusCode::NOT_FOUND, "version"),
        ("/v2/models/fraud_mlp/versions/7/config", StatusCode::NOT_FOUND, "version"),
        ("/v2/models/fraud_mlp/versions/7/stats", StatusCode::NOT_FOUND, "version"),
        ("/v2/models/fraud_mlp/versions/-1", StatusCode::BAD_REQUEST, "version"),
        ("/v2/models/fraud_mlp/versions/one/ready", StatusCode::BAD_REQUEST, "version"),
    ] {
        let r = server.get(path).await;
        assert_eq!(r.status, status, "{path}: {}", String::from_utf8_lossy(&r.body));
        assert!(r.error().contains(word), "{path}: {}", r.error());
    }
    server.shutdown().await;
}

/// A chunked body (no Content-Length) that grows past max_body_bytes is cut off with 413 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_body_over_max_body_bytes_is_413() {
    let server = start().await;
    let mut raw = format!(
        "POST /v2/models/fraud_mlp/infer HTTP/1.1\r\nhost: {}\r\nconnection: close\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n",
        server.addr
    )
    .into_bytes();
    let chunk = vec![b' '; 16 * 1024];
    for _ in 0..(MAX_BODY / chunk.len() + 2) {
        raw.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        raw.extend_from_slice(&chunk);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let r = raw_http(server.addr, &raw).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.error().contains("limit"), "{}", r.error());
    // Just under the limit is read (and is then bad JSON, not too large).
    let r = server.post_raw("/v2/models/fraud_mlp/infer", &[], vec![b' '; MAX_BODY]).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.error().contains("JSON"), "{}", r.error());
    server.shutdown().await;
}

/// Integers just past the 64-bit limits are whole numbers out of range; the message should say so (not "must be whole
/// numbers", which is what serde_json's fallback to f64 for such literals leads to).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integers_beyond_64_bits_are_reported_out_of_range() {
    let server = start().await;
    for (name, dt, literal) in [
        ("in_uint64", "UINT64", "18446744073709551616"),
        ("in_int64", "INT64", "-9223372036854775809"),
        ("in_int64", "INT64", "9223372036854775808"),
        ("in_int32", "INT32", "99999999999999999999999"),
    ] {
        let body = format!(r#"{{"inputs":[{{"name":"{name}","shape":[1,1],"datatype":"{dt}","data":[{literal}]}}]}}"#);
        let r = server.post_raw("/v2/models/all_types/infer", &[("content-type", "application/json")], body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{dt} {literal}");
        assert!(r.error().contains("out of range"), "{dt} {literal}: {}", r.error());
    }
    server.shutdown().await;
}

/// ONNX string tensors are C strings of UTF-8 text: a BYTES element with a NUL byte or invalid UTF-8 is refused with 400
/// before it queues (it would otherwise be truncated or mangled), and a clean request still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_elements_must_be_utf8_without_nul() {
    let server = start().await;
    let full_request = |bytes_element: &[u8]| {
        let mut inputs = Vec::new();
        for (suffix, dt) in [
            ("bool", "BOOL"), ("int8", "INT8"), ("int16", "INT16"), ("int32", "INT32"), ("int64", "INT64"),
            ("uint8", "UINT8"), ("uint16", "UINT16"), ("uint32", "UINT32"), ("uint64", "UINT64"),
            ("fp16", "FP16"), ("fp32", "FP32"), ("fp64", "FP64"),
        ] {
            let data = if dt == "BOOL" { json!([true]) } else { json!([1]) };
            inputs.push(json!({"name": format!("in_{suffix}"), "shape": [1, 1], "datatype": dt, "data": data}));
        }
        let mut element = (bytes_element.len() as u32).to_le_bytes().to_vec();
        element.extend_from_slice(bytes_element);
        inputs.push(json!({"name": "in_bytes", "shape": [1, 1], "datatype": "BYTES", "parameters": {"binary_data_size": element.len()}}));
        let header = serde_json::to_vec(&json!({ "inputs": inputs, "outputs": [{"name": "out_bytes"}] })).unwrap();
        let length = header.len().to_string();
        let mut body = header;
        body.extend_from_slice(&element);
        (length, body)
    };
    for (element, words) in [(&b"a\0b"[..], "NUL"), (&[0xff, 0xfe][..], "UTF-8")] {
        let (length, body) = full_request(element);
        let r = server.post_raw("/v2/models/all_types/infer", &[("inference-header-content-length", length.as_str())], body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", String::from_utf8_lossy(&r.body));
        assert!(r.error().contains(words) && r.error().contains("in_bytes"), "{}", r.error());
    }
    let (length, body) = full_request("héllo".as_bytes());
    let r = server.post_raw("/v2/models/all_types/infer", &[("inference-header-content-length", length.as_str())], body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    server.shutdown().await;
}

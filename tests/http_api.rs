//! The KServe V2 HTTP API end to end against the real server: every endpoint, every demo model, every datatype in JSON and
//! in the binary extension, version routing, output selection, id echo, binary response framing, 404/405 bodies.

use crate::common::*;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};

/// A small repository of read-only demo models (linked from models/), without the big `wide`.
fn small_repo() -> TempRepo {
    TempRepo::new().link("fraud_mlp").link("fixed_affine").link("all_types").link("recommender").link("identity")
}

fn ok(r: &Reply, what: &str) {
    assert_eq!(r.status, StatusCode::OK, "{what}: {}", String::from_utf8_lossy(&r.body));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_server_metadata_and_model_endpoints() {
    let server = start_repo(small_repo()).await;

    let r = server.get("/v2").await;
    ok(&r, "GET /v2");
    let v = r.json();
    assert_eq!(v["name"], "sluice");
    assert!(v["version"].is_string());
    let ext: Vec<&str> = v["extensions"].as_array().unwrap().iter().map(|e| e.as_str().unwrap()).collect();
    for e in ["binary_tensor_data", "model_configuration", "statistics"] {
        assert!(ext.contains(&e), "extensions {ext:?} lack {e}");
    }
    ok(&server.get("/v2/health/live").await, "live");
    ok(&server.get("/v2/health/ready").await, "ready");

    // Model metadata: default version = highest, and every version listed.
    let r = server.get("/v2/models/fraud_mlp").await;
    ok(&r, "fraud_mlp metadata");
    let m = r.json();
    assert_eq!(m["name"], "fraud_mlp");
    assert_eq!(m["versions"], json!(["1", "2"]));
    assert_eq!(m["platform"], "onnxruntime_onnx");
    assert_eq!(m["inputs"], json!([{ "name": "input", "datatype": "FP32", "shape": [-1, 64] }]));
    assert_eq!(m["outputs"], json!([{ "name": "logits", "datatype": "FP32", "shape": [-1, 2] }]));
    let r = server.get("/v2/models/fraud_mlp/versions/1").await;
    ok(&r, "fraud_mlp v1 metadata");
    assert_eq!(r.json()["name"], "fraud_mlp");
    let r = server.get("/v2/models/recommender").await;
    let m = r.json();
    assert_eq!(
        m["inputs"],
        json!([
            { "name": "item_ids", "datatype": "INT64", "shape": [-1, 20] },
            { "name": "user_features", "datatype": "FP32", "shape": [-1, 32] },
        ])
    );
    assert_eq!(server.get("/v2/models/all_types").await.json()["inputs"].as_array().unwrap().len(), 13);

    // Readiness.
    ok(&server.get("/v2/models/fraud_mlp/ready").await, "model ready");
    ok(&server.get("/v2/models/fraud_mlp/versions/1/ready").await, "version ready");
    ok(&server.get("/v2/models/fraud_mlp/versions/2/ready").await, "version ready");
    let r = server.get("/v2/models/fraud_mlp/versions/3/ready").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.error().contains("version"), "{}", r.error());
    let r = server.get("/v2/models/nope/ready").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.error().contains("nope"), "{}", r.error());

    // Triton model configuration: batch dim dropped from dims when the model batches.
    let r = server.get("/v2/models/fraud_mlp/config").await;
    ok(&r, "config");
    let c = r.json();
    assert_eq!(c["name"], "fraud_mlp");
    // Settings as models/fraud_mlp/model.toml gives them (read here, so tuning that file does not break this test).
    let toml_path = models_dir().join("fraud_mlp").join("model.toml");
    let settings = sluice::config::ModelFile::load(&toml_path)
        .unwrap()
        .resolve(&sluice::config::ModelDefaults::default(), true, &toml_path)
        .unwrap();
    assert_eq!(c["max_batch_size"], settings.max_batch_size);
    assert_eq!(c["input"], json!([{ "name": "input", "data_type": "TYPE_FP32", "dims": [64] }]));
    assert_eq!(c["output"], json!([{ "name": "logits", "data_type": "TYPE_FP32", "dims": [2] }]));
    let db = &c["dynamic_batching"];
    assert_eq!(db["max_queue_delay_microseconds"], settings.max_queue_delay.as_micros() as u64);
    assert_eq!(db["preferred_batch_size"], json!(settings.preferred_batch_sizes));
    assert_eq!(db["default_queue_policy"]["max_queue_size"], settings.queue_capacity);
    assert_eq!(db["default_queue_policy"]["default_timeout_microseconds"], settings.queue_timeout.as_micros() as u64);
    assert_eq!(db["priority_levels"], settings.priority_levels);
    assert_eq!(c["instance_group"][0]["count"], settings.instances);
    assert_eq!(c["instance_group"][0]["kind"], "KIND_CPU");
    let c = server.get("/v2/models/fixed_affine/versions/1/config").await.json();
    assert_eq!(c["max_batch_size"], 0);
    assert_eq!(c["input"], json!([{ "name": "x", "data_type": "TYPE_FP32", "dims": [8] }]));
    assert!(c.get("dynamic_batching").is_none(), "a non-batching model has no dynamic_batching: {c}");
    let c = server.get("/v2/models/recommender/config").await.json();
    assert_eq!(c["dynamic_batching"]["priority_levels"], 2);
    assert_eq!(c["dynamic_batching"]["default_priority_level"], 2);
    let c = server.get("/v2/models/all_types/config").await.json();
    let types: Vec<&str> = c["input"].as_array().unwrap().iter().map(|i| i["data_type"].as_str().unwrap()).collect();
    assert!(types.contains(&"TYPE_STRING") && types.contains(&"TYPE_FP16") && types.contains(&"TYPE_BOOL"), "{types:?}");

    // Statistics: start at zero, count one request of 3 rows.
    let s = server.stats("fraud_mlp").await;
    assert_eq!(s["name"], "fraud_mlp");
    assert_eq!(s["version"], "2");
    assert_eq!(s["inference_count"], 0);
    assert_eq!(s["execution_count"], 0);
    let r = server.infer("fraud_mlp", &json!({"inputs": [{"name": "input", "shape": [3, 64], "datatype": "FP32", "data": vec![0.25f32; 192]}]})).await;
    ok(&r, "infer");
    let s = server.stats("fraud_mlp").await;
    assert_eq!(s["inference_count"], 3);
    assert_eq!(s["execution_count"], 1);
    assert_eq!(success_count(&s), 1);
    assert_eq!(batch_sizes(&s), vec![(3, 1)]);
    let s1 = server.stats("fraud_mlp/versions/1").await;
    assert_eq!(s1["version"], "1");
    assert_eq!(s1["inference_count"], 0, "v1 stats are separate");
    let r = server.get("/v2/models/stats").await;
    ok(&r, "all stats");
    let all = r.json()["model_stats"].as_array().unwrap().clone();
    // fraud_mlp has two versions, the others one each.
    assert_eq!(all.len(), 6, "{all:?}");
    assert!(all.iter().any(|m| m["name"] == "fraud_mlp" && m["version"] == "2" && m["inference_count"] == 3));

    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_demo_model_answers() {
    let server = start_models().await;
    let list = server.get("/v2/models/stats").await.json();
    let names: Vec<&str> = list["model_stats"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    for m in ["all_types", "fixed_affine", "fraud_mlp", "identity", "recommender", "wide"] {
        assert!(names.contains(&m), "{m} not served: {names:?}");
        ok(&server.get(&format!("/v2/models/{m}/ready")).await, m);
    }

    let r = server.infer("fraud_mlp", &json!({"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": vec![0.5f32; 128]}]})).await;
    ok(&r, "fraud_mlp");
    let v = r.json();
    assert_eq!(v["model_name"], "fraud_mlp");
    assert_eq!(v["model_version"], "2");
    assert_eq!(v["outputs"][0]["name"], "logits");
    assert_eq!(v["outputs"][0]["datatype"], "FP32");
    assert_eq!(v["outputs"][0]["shape"], json!([2, 2]));
    let logits = output_f32(&v, "logits");
    assert_eq!(logits.len(), 4);
    assert_eq!(logits[0..2], logits[2..4], "equal rows give equal logits");

    let r = server.infer("wide", &json!({"inputs": [{"name": "input", "shape": [1, 512], "datatype": "FP32", "data": vec![0.1f32; 512]}]})).await;
    ok(&r, "wide");
    let v = r.json();
    assert_eq!(v["outputs"][0]["shape"], json!([1, 16]));
    assert!(output_f32(&v, "logits").iter().all(|x| x.is_finite()));

    let items: Vec<i64> = (0..40).map(|i| i * 37 - 300).collect();
    let r = server
        .infer(
            "recommender",
            &json!({"inputs": [
                {"name": "item_ids", "shape": [2, 20], "datatype": "INT64", "data": items},
                {"name": "user_features", "shape": [2, 32], "datatype": "FP32", "data": vec![0.3f32; 64]},
            ]}),
        )
        .await;
    ok(&r, "recommender");
    let v = r.json();
    assert_eq!(v["outputs"][0]["name"], "scores");
    assert_eq!(v["outputs"][0]["shape"], json!([2, 100]));

    let data: Vec<f32> = (0..512).map(|i| i as f32 * 0.5 - 100.0).collect();
    let r = server.infer("identity", &json!({"inputs": [{"name": "input", "shape": [2, 256], "datatype": "FP32", "data": data}]})).await;
    ok(&r, "identity");
    assert_eq!(output_f32(&r.json(), "output"), data);

    // fixed_affine: y = x W + b with b = [0, 1, 2, 3], so x = 0 gives b.
    let r = server.infer("fixed_affine", &json!({"inputs": [{"name": "x", "shape": [8], "datatype": "FP32", "data": vec![0.0f32; 8]}]})).await;
    ok(&r, "fixed_affine");
    let v = r.json();
    assert_eq!(v["outputs"][0]["name"], "y");
    assert_eq!(v["outputs"][0]["shape"], json!([4]));
    assert_eq!(output_f32(&v, "y"), vec![0.0, 1.0, 2.0, 3.0]);
    // Linear: f(2x) - b == 2 (f(x) - b).
    let x: Vec<f32> = (0..8).map(|i| i as f32 - 3.5).collect();
    let x2: Vec<f32> = x.iter().map(|v| v * 2.0).collect();
    let y1 = output_f32(&server.infer("fixed_affine", &json!({"inputs": [{"name": "x", "shape": [8], "datatype": "FP32", "data": x}]})).await.json(), "y");
    let y2 = output_f32(&server.infer("fixed_affine", &json!({"inputs": [{"name": "x", "shape": [8], "datatype": "FP32", "data": x2}]})).await.json(), "y");
    for i in 0..4 {
        assert!(close(y2[i] - i as f32, 2.0 * (y1[i] - i as f32), 1e-5), "{y1:?} {y2:?}");
    }

    let (request, _) = all_types_request(false);
    ok(&server.infer("all_types", &request).await, "all_types");
    server.shutdown().await;
}

/// One all_types input: suffix, V2 datatype, six values (JSON form).
fn all_types_values() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        ("bool", "BOOL", json!([true, false, true, true, false, false])),
        ("int8", "INT8", json!([-128, 127, 0, -1, 1, 42])),
        ("int16", "INT16", json!([-32768, 32767, 0, -1, 1, 1234])),
        ("int32", "INT32", json!([-2147483648i64, 2147483647, 0, -1, 1, 123456])),
        ("int64", "INT64", json!([i64::MIN, i64::MAX, 0, -1, 1, 1234567890123i64])),
        ("uint8", "UINT8", json!([0, 255, 1, 2, 128, 7])),
        ("uint16", "UINT16", json!([0, 65535, 1, 2, 32768, 7])),
        ("uint32", "UINT32", json!([0, 4294967295u64, 1, 2, 2147483648u64, 7])),
        ("uint64", "UINT64", json!([0, u64::MAX, 1, 2, 9223372036854775808u64, 7])),
        // Exactly representable in FP16: 0.5, -2, the largest finite, the smallest normal, the smallest subnormal, 1/3 rounded.
        ("fp16", "FP16", json!([0.5, -2.0, 65504.0, 6.103515625e-05, 5.960464477539063e-08, half::f16::from_f64(1.0 / 3.0).to_f64()])),
        ("fp32", "FP32", json!([0.1f32, -1.5, f32::MAX, f32::MIN_POSITIVE, 1e-45f32, 1.0f32 / 3.0])),
        ("fp64", "FP64", json!([0.1, -1.5, f64::MAX, f64::MIN_POSITIVE, 5e-324, 1.0 / 3.0])),
        ("bytes", "BYTES", json!(["", "héllo", "日本語テキスト", "🎉 emoji", "quote\" back\\slash", "tab\tnl\n"])),
    ]
}


/// An all_types request with every input of shape [2, 3]; binary inputs when `binary` (returns the binary section).
fn all_types_request(binary: bool) -> (Value, Vec<u8>) {
    let mut inputs = Vec::new();
    let mut section = Vec::new();
    for (suffix, dt, data) in all_types_values() {
        if binary {
            let bytes = v2_bytes(dt, &data);
            inputs.push(json!({"name": format!("in_{suffix}"), "shape": [2, 3], "datatype": dt, "parameters": {"binary_data_size": bytes.len()}}));
            section.extend(bytes);
        } else {
            inputs.push(json!({"name": format!("in_{suffix}"), "shape": [2, 3], "datatype": dt, "data": data}));
        }
    }
    (json!({"inputs": inputs}), section)
}

fn find_output<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["outputs"].as_array().unwrap().iter().find(|o| o["name"] == name).unwrap_or_else(|| panic!("no output {name} in {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_types_round_trip_json_binary_and_mixed() {
    let server = start_repo(TempRepo::new().link("all_types")).await;

    // JSON in, JSON out: every value comes back exactly (compared as V2 bytes of its datatype).
    let (request, _) = all_types_request(false);
    let r = server.infer("all_types", &request).await;
    ok(&r, "all_types JSON");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert!(r.header("inference-header-content-length").is_none());
    let v = r.json();
    assert_eq!(v["outputs"].as_array().unwrap().len(), 13);
    for (suffix, dt, data) in all_types_values() {
        let out = find_output(&v, &format!("out_{suffix}"));
        assert_eq!(out["datatype"], dt, "{suffix}");
        assert_eq!(out["shape"], json!([2, 3]), "{suffix}");
        assert_eq!(v2_bytes(dt, &out["data"]), v2_bytes(dt, &data), "{suffix}: JSON values differ: sent {data}, got {}", out["data"]);
        if dt == "BYTES" || dt == "BOOL" || dt.contains("INT") {
            assert_eq!(out["data"], data, "{suffix}: JSON values differ");
        }
    }

    // Binary in, binary out: the bytes come back unchanged, in output order, with binary_data_size per output.
    let (mut request, mut section) = all_types_request(true);
    // Values JSON cannot carry: NaN with a payload, infinities, negative zero.
    let specials: [(usize, Vec<u8>); 3] = [
        (9, [0x7e01u16, 0xfc00, 0x8000, 0x7c00, 0x0001, 0x3555].iter().flat_map(|b| b.to_le_bytes()).collect()),
        (10, [0x7fc0_0001u32, 0xff80_0000, 0x8000_0000, 0x7f80_0000, 0x0000_0001, 0x3eaa_aaab].iter().flat_map(|b| b.to_le_bytes()).collect()),
        (11, [0x7ff8_0000_0000_0001u64, 0xfff0_0000_0000_0000, 0x8000_0000_0000_0000, 1, 2, 3].iter().flat_map(|b| b.to_le_bytes()).collect()),
    ];
    let mut per_input: Vec<Vec<u8>> = all_types_values().iter().map(|(_, dt, data)| v2_bytes(dt, data)).collect();
    for (i, bytes) in &specials {
        per_input[*i] = bytes.clone();
    }
    section.clear();
    for b in &per_input {
        section.extend(b);
    }
    request["parameters"] = json!({"binary_data_output": true});
    let r = server.infer_binary("/v2/models/all_types/infer", &request, &section).await;
    ok(&r, "all_types binary");
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    let (header, binary) = split_binary(&r);
    let mut at = 0usize;
    for (i, out) in header["outputs"].as_array().unwrap().iter().enumerate() {
        assert!(out.get("data").is_none(), "binary outputs carry no data: {out}");
        let size = out["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
        assert_eq!(out["name"], format!("out_{}", all_types_values()[i].0), "outputs follow the model's order");
        assert_eq!(&binary[at..at + size], &per_input[i][..], "{}: bytes differ", out["name"]);
        at += size;
    }
    assert_eq!(at, binary.len(), "binary section holds exactly the outputs");

    // JSON in, some outputs binary: only those are in the binary section, and their bytes equal the JSON values.
    let (mut request, _) = all_types_request(false);
    request["outputs"] = json!([
        {"name": "out_bytes", "parameters": {"binary_data": true}},
        {"name": "out_fp16", "parameters": {"binary_data": true}},
        {"name": "out_int64"},
        {"name": "out_bool", "parameters": {"binary_data": false}},
    ]);
    let r = server.infer("all_types", &request).await;
    ok(&r, "mixed");
    let (header, binary) = split_binary(&r);
    let outs = header["outputs"].as_array().unwrap();
    let names: Vec<&str> = outs.iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["out_bytes", "out_fp16", "out_int64", "out_bool"], "outputs in requested order");
    let values = all_types_values();
    let bytes_of = |suffix: &str| {
        let (_, dt, data) = values.iter().find(|(s, _, _)| *s == suffix).unwrap();
        v2_bytes(dt, data)
    };
    let b = bytes_of("bytes");
    let f = bytes_of("fp16");
    assert_eq!(outs[0]["parameters"]["binary_data_size"], b.len());
    assert_eq!(outs[1]["parameters"]["binary_data_size"], f.len());
    assert_eq!(&binary[..b.len()], &b[..]);
    assert_eq!(&binary[b.len()..], &f[..]);
    assert_eq!(outs[2]["data"], values[4].2);
    assert_eq!(outs[3]["data"], values[0].2);

    // binary_data_output with one output asking for JSON.
    let (mut request, _) = all_types_request(false);
    request["parameters"] = json!({"binary_data_output": true});
    request["outputs"] = json!([{"name": "out_uint8", "parameters": {"binary_data": false}}, {"name": "out_int16"}]);
    let r = server.infer("all_types", &request).await;
    ok(&r, "binary_data_output default");
    let (header, binary) = split_binary(&r);
    assert_eq!(header["outputs"][0]["data"], values[5].2);
    assert_eq!(&binary[..], &bytes_of("int16")[..]);

    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn version_routing_output_selection_id_and_binary_framing() {
    let server = start_repo(TempRepo::new().link("fraud_mlp").link("all_types")).await;
    let data: Vec<f32> = (0..128).map(|i| ((i * 7) % 13) as f32 / 13.0 - 0.4).collect();
    let request = json!({"id": "req-ü-42", "inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": data}]});

    let r1 = server.post_json("/v2/models/fraud_mlp/versions/1/infer", &request).await;
    let r2 = server.post_json("/v2/models/fraud_mlp/versions/2/infer", &request).await;
    let rd = server.post_json("/v2/models/fraud_mlp/infer", &request).await;
    for r in [&r1, &r2, &rd] {
        ok(r, "fraud_mlp");
        assert_eq!(r.json()["id"], "req-ü-42", "id is echoed");
    }
    assert_eq!(r1.json()["model_version"], "1");
    assert_eq!(r2.json()["model_version"], "2");
    assert_eq!(rd.json()["model_version"], "2", "the default is the highest version");
    let (l1, l2, ld) = (output_f32(&r1.json(), "logits"), output_f32(&r2.json(), "logits"), output_f32(&rd.json(), "logits"));
    assert_ne!(l1, l2, "versions 1 and 2 are different models");
    assert_eq!(ld, l2);

    for (path, status, word) in [
        ("/v2/models/fraud_mlp/versions/3/infer", StatusCode::NOT_FOUND, "version"),
        ("/v2/models/fraud_mlp/versions/0/infer", StatusCode::BAD_REQUEST, "version"),
        ("/v2/models/fraud_mlp/versions/x1/infer", StatusCode::BAD_REQUEST, "version"),
        ("/v2/models/nope/versions/1/infer", StatusCode::NOT_FOUND, "nope"),
    ] {
        let r = server.post_json(path, &request).await;
        assert_eq!(r.status, status, "{path}: {}", String::from_utf8_lossy(&r.body));
        assert!(r.error().contains(word), "{path}: {}", r.error());
    }
    let r = server.get("/v2/models/fraud_mlp/versions/3").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // No id: none echoed.
    let r = server.infer("fraud_mlp", &json!({"inputs": request["inputs"].clone()})).await;
    ok(&r, "no id");
    assert!(r.json().get("id").is_none());

    // Binary response framing: the same logits, as raw little-endian bytes after the JSON header.
    let mut binary_request = request.clone();
    binary_request["parameters"] = json!({"binary_data_output": true});
    let r = server.infer("fraud_mlp", &binary_request).await;
    ok(&r, "binary output");
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    let (header, binary) = split_binary(&r);
    assert_eq!(header["id"], "req-ü-42");
    assert_eq!(header["model_version"], "2");
    let out = &header["outputs"][0];
    assert_eq!(out["name"], "logits");
    assert_eq!(out["shape"], json!([2, 2]));
    assert_eq!(out["datatype"], "FP32");
    assert_eq!(out["parameters"]["binary_data_size"], 16);
    assert_eq!(binary.len(), 16);
    assert_eq!(f32_from_bytes(&binary), l2, "binary bytes equal the JSON values");
    let content_length: usize = r.header("content-length").unwrap().parse().unwrap();
    assert_eq!(content_length, r.body.len());

    // Binary input, JSON output: same answer as JSON input.
    let bin_in = json!({"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "parameters": {"binary_data_size": 512}}]});
    let r = server.infer_binary("/v2/models/fraud_mlp/versions/1/infer", &bin_in, &f32_bytes(&data)).await;
    ok(&r, "binary input");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(output_f32(&r.json(), "logits"), l1);

    // Nested data decodes like flat data.
    let nested: Vec<Vec<f32>> = data.chunks(64).map(|c| c.to_vec()).collect();
    let r = server.infer("fraud_mlp", &json!({"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": nested}]})).await;
    ok(&r, "nested");
    assert_eq!(output_f32(&r.json(), "logits"), l2);

    // Output selection on all_types: only the requested outputs, in the requested order; explicit empty list = all.
    let (mut at, _) = all_types_request(false);
    at["outputs"] = json!([{"name": "out_fp64"}, {"name": "out_int8"}]);
    let r = server.infer("all_types", &at).await;
    ok(&r, "selection");
    let v = r.json();
    let names: Vec<&str> = v["outputs"].as_array().unwrap().iter().map(|o| o["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["out_fp64", "out_int8"]);
    at["outputs"] = json!([]);
    let r = server.infer("all_types", &at).await;
    ok(&r, "empty selection");
    assert_eq!(r.json()["outputs"].as_array().unwrap().len(), 13);

    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_and_wrong_methods() {
    let server = start_repo(TempRepo::new().link("identity")).await;
    for path in ["/nope", "/v2/nope", "/v2/models", "/v2/models/identity/infer/extra", "/v3/models/identity/infer"] {
        let r = server.get(path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{path}");
        assert!(r.error().contains(path), "{path}: {}", r.error());
    }
    let r = server.post_json("/v2/models/identity/predict", &json!({})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.error().contains("route"), "{}", r.error());

    for (method, path) in [
        (Method::GET, "/v2/models/identity/infer"),
        (Method::GET, "/v2/models/identity/versions/1/infer"),
        (Method::POST, "/v2"),
        (Method::POST, "/v2/health/live"),
        (Method::PUT, "/v2/health/ready"),
        (Method::DELETE, "/v2/models/identity"),
        (Method::POST, "/v2/models/identity/config"),
        (Method::POST, "/v2/models/identity/stats"),
    ] {
        let r = server.request(method.clone(), path, &[], bytes::Bytes::new()).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(r.error().contains("not allowed"), "{method} {path}: {}", r.error());
        assert!(r.error().contains(method.as_str()), "{method} {path}: {}", r.error());
    }
    // Inference paths are routed by hand (server::http::DataPlane) unless they hold something only the router
    // handles: percent-escapes are decoded as the router does, odd shapes get the router's answers.
    let request = json!({"inputs": [{"name": "input", "shape": [1, 256], "datatype": "FP32", "data": vec![1.0f32; 256]}]});
    for path in ["/v2/models/identit%79/infer", "/v2/models/identity/versions/%31/infer", "/v2/models/identity/infer?x=1"] {
        let r = server.post_json(path, &request).await;
        ok(&r, path);
        assert_eq!(r.json()["model_name"], "identity", "{path}");
    }
    for path in ["/v2/models//infer", "/v2/models/identity/infer/", "/v2/models/identity/infer/extra", "/v2/models/identity/versions/1/2/infer"] {
        let r = server.post_json(path, &request).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.error());
    }
    // Still serving.
    let r = server.infer("identity", &request).await;
    ok(&r, "identity");
    server.shutdown().await;
}

/// Number forms JSON allows (exponents, negative zero, whitespace, nesting) decode to exactly the right values, floats
/// correctly rounded, and integers at the 64-bit limits stay exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_number_forms_decode_exactly() {
    let server = start_repo(TempRepo::new().link("all_types")).await;
    // Raw request text: every input [1, k] (k differs per input).
    let inputs: Vec<(&str, &str, usize, &str)> = vec![
        ("bool", "BOOL", 2, "[ [ true ,false ] ]"),
        ("int8", "INT8", 3, "[[-128,\n127 , -0]]"),
        ("int16", "INT16", 1, "[[ 0 ]]"),
        ("int32", "INT32", 2, "[-2147483648,2147483647]"),
        ("int64", "INT64", 3, "[[-9223372036854775808],[9223372036854775807],[-1]]"),
        ("uint8", "UINT8", 1, "255"),
        ("uint16", "UINT16", 1, "[65535]"),
        ("uint32", "UINT32", 1, "[4294967295]"),
        ("uint64", "UINT64", 2, "[18446744073709551615, 0]"),
        ("fp16", "FP16", 4, "[1E0, -2.5e-1, 6.5504e4, 1e-7]"),
        ("fp32", "FP32", 6, "[1e3, -2.5E-3, -0.0, 3.4028235e38, 1e-45, 1.00000005960464477539062501]"),
        ("fp64", "FP64", 5, "[1e300, -0, 2.2250738585072014e-308, 0.1, 4.9406564584124654e-324]"),
        ("bytes", "BYTES", 2, "[\"\\u00e9\\n\", \"\\ud83c\\udf89\"]"),
    ];
    let parts: Vec<String> = inputs
        .iter()
        .map(|(s, dt, k, data)| format!("{{\"name\":\"in_{s}\",\"shape\":[1,{k}],\"datatype\":\"{dt}\",\"data\":{data}}}"))
        .collect();
    let body = format!("{{\"inputs\":[{}],\"parameters\":{{\"binary_data_output\":true}}}}", parts.join(","));
    let r = server.post_raw("/v2/models/all_types/infer", &[("content-type", "application/json")], body).await;
    ok(&r, "number forms");
    let (header, binary) = split_binary(&r);
    let mut sections = std::collections::HashMap::new();
    let mut at = 0;
    for out in header["outputs"].as_array().unwrap() {
        let n = out["parameters"]["binary_data_size"].as_u64().unwrap() as usize;
        sections.insert(out["name"].as_str().unwrap().to_string(), binary[at..at + n].to_vec());
        at += n;
    }
    let le = |v: &[u8]| v.to_vec();
    assert_eq!(sections["out_bool"], le(&[1, 0]));
    assert_eq!(sections["out_int8"], [-128i8, 127, 0].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>());
    assert_eq!(sections["out_int32"], [i32::MIN, i32::MAX].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>());
    assert_eq!(sections["out_int64"], [i64::MIN, i64::MAX, -1].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>());
    assert_eq!(sections["out_uint8"], le(&[255]));
    assert_eq!(sections["out_uint64"], [u64::MAX, 0].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>());
    let f16: Vec<u16> = [1.0f64, -0.25, 65504.0, 1e-7].iter().map(|v| half::f16::from_f64(*v).to_bits()).collect();
    assert_eq!(sections["out_fp16"], f16.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>());
    // The last FP32 value lies just above the midpoint between 1 and the next f32: correctly rounded it is 1 + 2^-23
    // (rounding through f64 first would give 1.0).
    let f32_bits: Vec<u32> = vec![1000f32.to_bits(), (-2.5e-3f32).to_bits(), 0x8000_0000, f32::MAX.to_bits(), 1, 0x3f80_0001];
    assert_eq!(sections["out_fp32"], f32_bits.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>());
    let f64_bits: Vec<u64> = vec![1e300f64.to_bits(), (-0.0f64).to_bits(), f64::MIN_POSITIVE.to_bits(), 0.1f64.to_bits(), 1];
    assert_eq!(sections["out_fp64"], f64_bits.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>());
    let mut bytes = Vec::new();
    for s in ["é\n", "🎉"] {
        bytes.extend((s.len() as u32).to_le_bytes());
        bytes.extend(s.as_bytes());
    }
    assert_eq!(sections["out_bytes"], bytes);
    server.shutdown().await;
}

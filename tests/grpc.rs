//! KServe V2 over gRPC against the real server (127.0.0.1, port 0): the same requests give the same bytes as over HTTP
//! (JSON and binary), for every demo model and every datatype, typed and raw contents alike; the metadata, configuration,
//! statistics and readiness RPCs agree with the HTTP endpoints; bad requests get their exact gRPC code and a message that
//! names the problem; a full queue answers RESOURCE_EXHAUSTED and a passed deadline DEADLINE_EXCEEDED; ModelStreamInfer
//! answers every request by id; gRPC health follows the models and the server's shutdown.

use bytes::Bytes;
use crate::common::*;
use pb::grpc_inference_service_client::GrpcInferenceServiceClient;
use pb::infer_parameter::ParameterChoice;
use pb::model_infer_request::{InferInputTensor, InferRequestedOutputTensor};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use sluice::protocol::grpc::pb;
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

type Grpc = GrpcInferenceServiceClient<Channel>;

/// Every await on the server is bounded: a hang fails the test instead of stalling the suite.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), fut).await.unwrap_or_else(|_| panic!("{what}: no answer within 30 s"))
}

async fn channel(server: &Server) -> Channel {
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc_addr)).unwrap();
    within("gRPC connect", endpoint.connect()).await.expect("gRPC connect")
}

async fn grpc(server: &Server) -> Grpc {
    GrpcInferenceServiceClient::new(channel(server).await).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20)
}

// ---------------------------------------------------------------------------------------------------------------------
// Tensors as V2 bytes, and their JSON, typed-contents and raw forms.
// ---------------------------------------------------------------------------------------------------------------------

/// One input: V2 little-endian bytes (BYTES: 4-byte length + payload per element).
#[derive(Clone, Debug)]
struct In {
    name: String,
    datatype: &'static str,
    shape: Vec<i64>,
    data: Vec<u8>,
}

fn input(name: &str, datatype: &'static str, shape: &[i64], data: Vec<u8>) -> In {
    In { name: name.into(), datatype, shape: shape.to_vec(), data }
}

/// One output as a client sees it.
#[derive(Clone, Debug, PartialEq)]
struct Out {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    data: Vec<u8>,
}

fn le<T: Copy, const N: usize>(values: &[T], to: impl Fn(T) -> [u8; N]) -> Vec<u8> {
    values.iter().flat_map(|&v| to(v)).collect()
}

fn byte_strings(items: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for item in items {
        out.extend((item.len() as u32).to_le_bytes());
        out.extend(*item);
    }
    out
}

fn split_byte_strings(mut data: &[u8]) -> Vec<Vec<u8>> {
    let mut items = Vec::new();
    while !data.is_empty() {
        let n = u32::from_le_bytes(data[..4].try_into().unwrap()) as usize;
        items.push(data[4..4 + n].to_vec());
        data = &data[4 + n..];
    }
    items
}

fn chunks<const N: usize>(data: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    data.chunks_exact(N).map(|c| c.try_into().unwrap())
}

/// The JSON `data` array of V2 bytes.
fn json_data(datatype: &str, data: &[u8]) -> Value {
    let values: Vec<Value> = match datatype {
        "BOOL" => data.iter().map(|&b| json!(b != 0)).collect(),
        "INT8" => data.iter().map(|&b| json!(b as i8)).collect(),
        "UINT8" => data.iter().map(|&b| json!(b)).collect(),
        "INT16" => chunks::<2>(data).map(|c| json!(i16::from_le_bytes(c))).collect(),
        "UINT16" => chunks::<2>(data).map(|c| json!(u16::from_le_bytes(c))).collect(),
        "INT32" => chunks::<4>(data).map(|c| json!(i32::from_le_bytes(c))).collect(),
        "UINT32" => chunks::<4>(data).map(|c| json!(u32::from_le_bytes(c))).collect(),
        "INT64" => chunks::<8>(data).map(|c| json!(i64::from_le_bytes(c))).collect(),
        "UINT64" => chunks::<8>(data).map(|c| json!(u64::from_le_bytes(c))).collect(),
        "FP16" => chunks::<2>(data).map(|c| json!(half::f16::from_le_bytes(c).to_f64())).collect(),
        "FP32" => chunks::<4>(data).map(|c| json!(f32::from_le_bytes(c) as f64)).collect(),
        "FP64" => chunks::<8>(data).map(|c| json!(f64::from_le_bytes(c))).collect(),
        "BYTES" => split_byte_strings(data).into_iter().map(|b| json!(String::from_utf8(b).expect("UTF-8 for JSON"))).collect(),
        other => panic!("datatype {other}"),
    };
    Value::Array(values)
}

/// V2 bytes of a JSON `data` array.
fn json_bytes(datatype: &str, data: &Value) -> Vec<u8> {
    v2_bytes(datatype, data)
}

/// The typed `contents` of V2 bytes (FP16 has no typed field).
fn typed_contents(datatype: &str, data: &[u8]) -> pb::InferTensorContents {
    let mut c = pb::InferTensorContents::default();
    match datatype {
        "BOOL" => c.bool_contents = data.iter().map(|&b| b != 0).collect(),
        "INT8" => c.int_contents = data.iter().map(|&b| b as i8 as i32).collect(),
        "INT16" => c.int_contents = chunks::<2>(data).map(|x| i16::from_le_bytes(x) as i32).collect(),
        "INT32" => c.int_contents = chunks::<4>(data).map(i32::from_le_bytes).collect(),
        "INT64" => c.int64_contents = chunks::<8>(data).map(i64::from_le_bytes).collect(),
        "UINT8" => c.uint_contents = data.iter().map(|&b| b as u32).collect(),
        "UINT16" => c.uint_contents = chunks::<2>(data).map(|x| u16::from_le_bytes(x) as u32).collect(),
        "UINT32" => c.uint_contents = chunks::<4>(data).map(u32::from_le_bytes).collect(),
        "UINT64" => c.uint64_contents = chunks::<8>(data).map(u64::from_le_bytes).collect(),
        "FP32" => c.fp32_contents = chunks::<4>(data).map(f32::from_le_bytes).collect(),
        "FP64" => c.fp64_contents = chunks::<8>(data).map(f64::from_le_bytes).collect(),
        "BYTES" => c.bytes_contents = split_byte_strings(data),
        other => panic!("{other} has no typed contents"),
    }
    c
}

fn f32_data(values: &[f32]) -> Vec<u8> {
    le(values, f32::to_le_bytes)
}

fn random_f32(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-2.0f32..2.0)).collect()
}

// ---------------------------------------------------------------------------------------------------------------------
// The four ways to send one request.
// ---------------------------------------------------------------------------------------------------------------------

fn infer_path(model: &str, version: Option<&str>) -> String {
    match version {
        Some(v) => format!("/v2/models/{model}/versions/{v}/infer"),
        None => format!("/v2/models/{model}/infer"),
    }
}

fn expect_ok(r: &Reply, what: &str) {
    assert_eq!(r.status, hyper::StatusCode::OK, "{what}: {}", String::from_utf8_lossy(&r.body));
}

/// HTTP, JSON in and JSON out.
async fn http_json(server: &Server, model: &str, version: Option<&str>, inputs: &[In]) -> Vec<Out> {
    let body = json!({
        "id": "parity-json",
        "inputs": inputs.iter().map(|i| json!({"name": i.name, "datatype": i.datatype, "shape": i.shape, "data": json_data(i.datatype, &i.data)})).collect::<Vec<_>>(),
    });
    let r = server.post_json(&infer_path(model, version), &body).await;
    expect_ok(&r, &format!("{model}: HTTP JSON"));
    let v = r.json();
    assert_eq!(v["id"], "parity-json");
    v["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .map(|o| {
            let datatype = o["datatype"].as_str().unwrap().to_string();
            Out {
                name: o["name"].as_str().unwrap().into(),
                data: json_bytes(&datatype, &o["data"]),
                datatype,
                shape: o["shape"].as_array().unwrap().iter().map(|d| d.as_i64().unwrap()).collect(),
            }
        })
        .collect()
}

/// HTTP with the binary tensor data extension both ways.
async fn http_binary(server: &Server, model: &str, version: Option<&str>, inputs: &[In]) -> Vec<Out> {
    let header = json!({
        "inputs": inputs.iter().map(|i| json!({"name": i.name, "datatype": i.datatype, "shape": i.shape, "parameters": {"binary_data_size": i.data.len()}})).collect::<Vec<_>>(),
        "parameters": {"binary_data_output": true},
    });
    let section: Vec<u8> = inputs.iter().flat_map(|i| i.data.iter().copied()).collect();
    let r = server.infer_binary(&infer_path(model, version), &header, &section).await;
    expect_ok(&r, &format!("{model}: HTTP binary"));
    let (header, binary) = split_binary(&r);
    let mut at = 0;
    let outs = header["outputs"]
        .as_array()
        .expect("outputs")
        .iter()
        .map(|o| {
            let size = o["parameters"]["binary_data_size"].as_u64().unwrap_or_else(|| panic!("{model}: no binary_data_size in {o}")) as usize;
            at += size;
            Out {
                name: o["name"].as_str().unwrap().into(),
                datatype: o["datatype"].as_str().unwrap().into(),
                shape: o["shape"].as_array().unwrap().iter().map(|d| d.as_i64().unwrap()).collect(),
                data: binary[at - size..at].to_vec(),
            }
        })
        .collect();
    assert_eq!(at, binary.len(), "{model}: the binary section holds exactly the outputs");
    outs
}

fn grpc_input(i: &In, contents: Option<pb::InferTensorContents>) -> InferInputTensor {
    InferInputTensor { name: i.name.clone(), datatype: i.datatype.into(), shape: i.shape.clone(), parameters: HashMap::new(), contents }
}

/// A gRPC request with raw contents (`typed` false) or typed contents.
fn grpc_request(model: &str, version: Option<&str>, id: &str, inputs: &[In], typed: bool) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: model.into(),
        model_version: version.unwrap_or_default().into(),
        id: id.into(),
        inputs: inputs.iter().map(|i| grpc_input(i, typed.then(|| typed_contents(i.datatype, &i.data)))).collect(),
        raw_input_contents: if typed { vec![] } else { inputs.iter().map(|i| Bytes::from(i.data.clone())).collect() },
        ..Default::default()
    }
}

/// The outputs of a gRPC response (always raw contents, one per output).
fn grpc_outputs(r: &pb::ModelInferResponse, what: &str) -> Vec<Out> {
    assert_eq!(r.raw_output_contents.len(), r.outputs.len(), "{what}: one raw_output_contents entry per output");
    r.outputs
        .iter()
        .zip(&r.raw_output_contents)
        .map(|(o, raw)| {
            assert!(o.contents.is_none(), "{what}: outputs travel as raw contents only");
            Out { name: o.name.clone(), datatype: o.datatype.clone(), shape: o.shape.clone(), data: raw.to_vec() }
        })
        .collect()
}

async fn grpc_infer(client: &mut Grpc, model: &str, version: Option<&str>, inputs: &[In], typed: bool) -> Vec<Out> {
    let what = format!("{model}: gRPC {}", if typed { "typed" } else { "raw" });
    let id = format!("parity-{}", if typed { "typed" } else { "raw" });
    let r = within(&what, client.model_infer(grpc_request(model, version, &id, inputs, typed)))
        .await
        .unwrap_or_else(|s| panic!("{what}: {:?} {}", s.code(), s.message()))
        .into_inner();
    assert_eq!(r.model_name, model, "{what}");
    if let Some(v) = version {
        assert_eq!(r.model_version, v, "{what}");
    }
    assert_eq!(r.id, id, "{what}: the id comes back");
    grpc_outputs(&r, &what)
}

fn assert_same(got: &[Out], want: &[Out], what: &str) {
    let names = |o: &[Out]| o.iter().map(|o| o.name.clone()).collect::<Vec<_>>();
    assert_eq!(names(got), names(want), "{what}: output names and order");
    for (g, w) in got.iter().zip(want) {
        assert_eq!((&g.datatype, &g.shape), (&w.datatype, &w.shape), "{what}: output '{}' datatype/shape", g.name);
        if g.data != w.data {
            let at = g.data.iter().zip(&w.data).position(|(a, b)| a != b).unwrap_or(g.data.len().min(w.data.len()));
            panic!("{what}: output '{}' bytes differ ({} vs {} bytes, first difference at byte {at})", g.name, g.data.len(), w.data.len());
        }
    }
}

/// Sends `inputs` every way allowed and checks that every answer has the same bytes. Returns the outputs.
async fn parity(server: &Server, client: &mut Grpc, model: &str, version: Option<&str>, inputs: &[In], json_ok: bool) -> Vec<Out> {
    let binary = http_binary(server, model, version, inputs).await;
    assert!(!binary.is_empty());
    let raw = grpc_infer(client, model, version, inputs, false).await;
    assert_same(&raw, &binary, &format!("{model}: gRPC raw vs HTTP binary"));
    if inputs.iter().all(|i| i.datatype != "FP16") {
        let typed = grpc_infer(client, model, version, inputs, true).await;
        assert_same(&typed, &binary, &format!("{model}: gRPC typed vs HTTP binary"));
    }
    if json_ok {
        let json = http_json(server, model, version, inputs).await;
        assert_same(&json, &binary, &format!("{model}: HTTP JSON vs HTTP binary"));
    }
    binary
}

// ---------------------------------------------------------------------------------------------------------------------
// A model written here: all_types without FP16, so every typed-contents field can travel in one request.
// (all_types needs all 13 inputs, and FP16 can only be raw while raw contents must cover every input.)
// ---------------------------------------------------------------------------------------------------------------------

mod onnx {
    //! The few ONNX protobuf messages an Identity graph needs (field numbers of onnx.proto).

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ModelProto {
        #[prost(int64, tag = "1")]
        pub ir_version: i64,
        #[prost(string, tag = "2")]
        pub producer_name: String,
        #[prost(message, optional, tag = "7")]
        pub graph: Option<GraphProto>,
        #[prost(message, repeated, tag = "8")]
        pub opset_import: Vec<OperatorSetIdProto>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct OperatorSetIdProto {
        #[prost(string, tag = "1")]
        pub domain: String,
        #[prost(int64, tag = "2")]
        pub version: i64,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct GraphProto {
        #[prost(message, repeated, tag = "1")]
        pub node: Vec<NodeProto>,
        #[prost(string, tag = "2")]
        pub name: String,
        #[prost(message, repeated, tag = "11")]
        pub input: Vec<ValueInfoProto>,
        #[prost(message, repeated, tag = "12")]
        pub output: Vec<ValueInfoProto>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct NodeProto {
        #[prost(string, repeated, tag = "1")]
        pub input: Vec<String>,
        #[prost(string, repeated, tag = "2")]
        pub output: Vec<String>,
        #[prost(string, tag = "3")]
        pub name: String,
        #[prost(string, tag = "4")]
        pub op_type: String,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ValueInfoProto {
        #[prost(string, tag = "1")]
        pub name: String,
        #[prost(message, optional, tag = "2")]
        pub r#type: Option<TypeProto>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TypeProto {
        #[prost(message, optional, tag = "1")]
        pub tensor_type: Option<TensorTypeProto>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorTypeProto {
        #[prost(int32, tag = "1")]
        pub elem_type: i32,
        #[prost(message, optional, tag = "2")]
        pub shape: Option<TensorShapeProto>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct TensorShapeProto {
        #[prost(message, repeated, tag = "1")]
        pub dim: Vec<Dimension>,
    }
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Dimension {
        /// `dim_param` of the `value` oneof (a symbolic, dynamic dimension).
        #[prost(string, tag = "2")]
        pub dim_param: String,
    }
}

/// (suffix, V2 datatype, ONNX elem_type) of every datatype with a typed-contents field.
const TYPED_TYPES: [(&str, &str, i32); 12] = [
    ("bool", "BOOL", 9),
    ("int8", "INT8", 3),
    ("int16", "INT16", 5),
    ("int32", "INT32", 6),
    ("int64", "INT64", 7),
    ("uint8", "UINT8", 2),
    ("uint16", "UINT16", 4),
    ("uint32", "UINT32", 12),
    ("uint64", "UINT64", 13),
    ("fp32", "FP32", 1),
    ("fp64", "FP64", 11),
    ("bytes", "BYTES", 8),
];

/// Writes model `typed_types` (in_<t> [batch, n] -> Identity -> out_<t>, max_batch_size 8) into `repo`.
fn write_typed_types_model(repo: &std::path::Path) {
    use onnx::*;
    let value = |name: String, elem_type: i32| ValueInfoProto {
        name,
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type,
                shape: Some(TensorShapeProto { dim: vec![Dimension { dim_param: "batch".into() }, Dimension { dim_param: "n".into() }] }),
            }),
        }),
    };
    let graph = GraphProto {
        name: "typed_types".into(),
        node: TYPED_TYPES
            .iter()
            .map(|(s, _, _)| NodeProto { input: vec![format!("in_{s}")], output: vec![format!("out_{s}")], name: format!("id_{s}"), op_type: "Identity".into() })
            .collect(),
        input: TYPED_TYPES.iter().map(|(s, _, t)| value(format!("in_{s}"), *t)).collect(),
        output: TYPED_TYPES.iter().map(|(s, _, t)| value(format!("out_{s}"), *t)).collect(),
    };
    let model = ModelProto {
        ir_version: 8,
        producer_name: "sluice-tests-grpc".into(),
        graph: Some(graph),
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 17 }],
    };
    let dir = repo.join("typed_types");
    std::fs::create_dir_all(dir.join("1")).unwrap();
    std::fs::write(dir.join("1").join("model.onnx"), prost::Message::encode_to_vec(&model)).unwrap();
    std::fs::write(dir.join("model.toml"), "max_batch_size = 8\nthreads = 1\n").unwrap();
}

/// Values of one datatype, `n` of them, edge cases first (every one exact in JSON too).
fn values_of(datatype: &str, n: usize) -> Vec<u8> {
    let take = |v: Vec<u8>, size: usize| v[..n * size].to_vec();
    match datatype {
        "BOOL" => take(vec![1, 0, 1, 1, 0, 0, 1, 0], 1),
        "INT8" => take(le(&[-128i8, 127, 0, -1, 1, 42, -7, 99], i8::to_le_bytes), 1),
        "INT16" => take(le(&[-32768i16, 32767, 0, -1, 1, 1234, -300, 255], i16::to_le_bytes), 2),
        "INT32" => take(le(&[i32::MIN, i32::MAX, 0, -1, 1, 123456, -65536, 1 << 24], i32::to_le_bytes), 4),
        "INT64" => take(le(&[i64::MIN, i64::MAX, 0, -1, 1, 1234567890123, 1 << 53, -(1 << 40)], i64::to_le_bytes), 8),
        "UINT8" => take(vec![0, 255, 1, 2, 128, 7, 254, 100], 1),
        "UINT16" => take(le(&[0u16, 65535, 1, 2, 32768, 7, 256, 999], u16::to_le_bytes), 2),
        "UINT32" => take(le(&[0u32, u32::MAX, 1, 2, 1 << 31, 7, 65536, 123456789], u32::to_le_bytes), 4),
        "UINT64" => take(le(&[0u64, u64::MAX, 1, 2, 1 << 63, 7, (1 << 53) + 1, 987654321987], u64::to_le_bytes), 8),
        "FP16" => take(
            le(&[0.5f64, -2.0, 65504.0, 6.103515625e-05, 5.960464477539063e-08, 1.0 / 3.0, -0.0, 1000.0], |v| half::f16::from_f64(v).to_le_bytes()),
            2,
        ),
        "FP32" => take(le(&[0.1f32, -1.5, f32::MAX, f32::MIN_POSITIVE, 1e-45, 1.0 / 3.0, -0.0, -3.4e38], f32::to_le_bytes), 4),
        "FP64" => take(le(&[0.1f64, -1.5, f64::MAX, f64::MIN_POSITIVE, 5e-324, 1.0 / 3.0, -0.0, 1e300], f64::to_le_bytes), 8),
        "BYTES" => {
            let items: [&[u8]; 8] = [b"", "héllo".as_bytes(), "日本語".as_bytes(), "🎉 emoji".as_bytes(), b"quote\" back\\slash", b"tab\tnl\n", b"x", b"ascii"];
            byte_strings(&items[..n])
        }
        other => panic!("{other}"),
    }
}

/// An all-datatype request of shape [2, 4] per input, for `all_types` (with FP16) or `typed_types` (without).
fn every_type_inputs(with_fp16: bool) -> Vec<In> {
    let mut types: Vec<(&str, &'static str)> = TYPED_TYPES.iter().map(|(s, d, _)| (*s, *d)).collect();
    if with_fp16 {
        types.insert(9, ("fp16", "FP16"));
    }
    types.into_iter().map(|(s, d)| input(&format!("in_{s}"), d, &[2, 4], values_of(d, 8))).collect()
}

// ---------------------------------------------------------------------------------------------------------------------
// 1. Parity.
// ---------------------------------------------------------------------------------------------------------------------

fn all_models_repo() -> TempRepo {
    let repo = TempRepo::new().link("fraud_mlp").link("wide").link("recommender").link("identity").link("fixed_affine").link("all_types");
    write_typed_types_model(repo.path());
    repo
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_model_and_datatype_gives_the_same_bytes_over_http_json_http_binary_grpc_raw_and_grpc_typed() {
    let server = start_repo(all_models_repo()).await;
    let mut client = grpc(&server).await;
    let mut rng = StdRng::seed_from_u64(7);

    // fraud_mlp: both versions, and the default (the highest) is version 2.
    let fraud = [input("input", "FP32", &[3, 64], f32_data(&random_f32(&mut rng, 3 * 64)))];
    let v1 = parity(&server, &mut client, "fraud_mlp", Some("1"), &fraud, true).await;
    let v2 = parity(&server, &mut client, "fraud_mlp", Some("2"), &fraud, true).await;
    let default = parity(&server, &mut client, "fraud_mlp", None, &fraud, true).await;
    assert_eq!(v1[0].shape, vec![3, 2]);
    assert_ne!(v1, v2, "versions 1 and 2 are different models");
    assert_eq!(default, v2, "no version: the highest");

    let wide = [input("input", "FP32", &[2, 512], f32_data(&random_f32(&mut rng, 2 * 512)))];
    assert_eq!(parity(&server, &mut client, "wide", None, &wide, true).await[0].shape, vec![2, 16]);

    let ids: Vec<i64> = (0..40).map(|i| if i % 3 == 0 { -(i as i64) * 977 } else { i as i64 * 1_000_003 }).collect();
    let recommender = [
        input("item_ids", "INT64", &[2, 20], le(&ids, i64::to_le_bytes)),
        input("user_features", "FP32", &[2, 32], f32_data(&random_f32(&mut rng, 64))),
    ];
    assert_eq!(parity(&server, &mut client, "recommender", None, &recommender, true).await[0].shape, vec![2, 100]);
    // Inputs in another order than the model's give the same answer.
    let reversed = [recommender[1].clone(), recommender[0].clone()];
    let r1 = grpc_infer(&mut client, "recommender", None, &recommender, false).await;
    assert_same(&grpc_infer(&mut client, "recommender", None, &reversed, false).await, &r1, "recommender: inputs reordered");

    let identity_in = random_f32(&mut rng, 3 * 256);
    let identity = [input("input", "FP32", &[3, 256], f32_data(&identity_in))];
    let out = parity(&server, &mut client, "identity", None, &identity, true).await;
    assert_eq!(out[0].data, identity[0].data, "identity returns its input");
    // Values JSON cannot carry (NaN with a payload, infinities, -0, subnormals) pass through raw contents unchanged.
    let specials: Vec<u32> = (0..256).map(|i| [0x7fc0_0001, 0xff80_0000, 0x8000_0000, 0x7f80_0000, 0x0000_0001, 0xffff_ffff][i % 6]).collect();
    let special = [input("input", "FP32", &[1, 256], le(&specials, u32::to_le_bytes))];
    let out = parity(&server, &mut client, "identity", None, &special, false).await;
    assert_eq!(out[0].data, special[0].data, "identity keeps every bit pattern");

    let x: Vec<f32> = (0..8).map(|i| i as f32 * 0.25 - 1.0).collect();
    let fixed = [input("x", "FP32", &[8], f32_data(&x))];
    let out = parity(&server, &mut client, "fixed_affine", None, &fixed, true).await;
    assert_eq!((out[0].name.as_str(), out[0].shape.as_slice()), ("y", &[4i64][..]));

    // all_types: 13 datatypes in one request (FP16 included, so raw contents only).
    let every = every_type_inputs(true);
    let out = parity(&server, &mut client, "all_types", None, &every, true).await;
    assert_eq!(out.len(), 13);
    for (o, i) in out.iter().zip(&every) {
        assert_eq!(o.name, i.name.replace("in_", "out_"));
        assert_eq!((o.datatype.as_str(), &o.data), (i.datatype, &i.data), "{}: passthrough", o.name);
    }
    // FP16 bit patterns JSON cannot carry, through gRPC raw and HTTP binary.
    let mut odd = every.clone();
    odd[9].data = le(&[0x7e01u16, 0xfc00, 0x8000, 0x7c00, 0x0001, 0x3555, 0xffff, 0x03ff], u16::to_le_bytes);
    let out = parity(&server, &mut client, "all_types", None, &odd, false).await;
    assert_eq!(out[9].data, odd[9].data);

    // typed_types: the 12 datatypes that have typed contents, every field at once, four ways.
    let typed = every_type_inputs(false);
    let out = parity(&server, &mut client, "typed_types", None, &typed, true).await;
    assert_eq!(out.len(), 12);
    for (o, i) in out.iter().zip(&typed) {
        assert_eq!((o.datatype.as_str(), o.shape.as_slice(), &o.data), (i.datatype, &[2i64, 4][..], &i.data), "{}: passthrough", o.name);
    }
    // One datatype at a time too (each typed field alone in its request, other inputs raw would not be allowed).
    for (k, (suffix, datatype, _)) in TYPED_TYPES.iter().enumerate() {
        let mut one = typed.clone();
        // The same values in reverse element order.
        let size = one[k].data.len() / 8;
        one[k].data = values_of(datatype, 8).chunks(size).rev().flatten().copied().collect();
        if *datatype == "BYTES" {
            one[k].data = byte_strings(&[b"z", b"", b"yy", "ü".as_bytes(), b"", b"0123456789", b"a b", b"-"]);
        }
        if *datatype == "BOOL" {
            one[k].data = vec![0, 0, 1, 0, 1, 1, 1, 0];
        }
        let out = parity(&server, &mut client, "typed_types", None, &one, true).await;
        assert_eq!(out[k].data, one[k].data, "out_{suffix}");
    }
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------------
// 2. Metadata, configuration, statistics and readiness.
// ---------------------------------------------------------------------------------------------------------------------

fn strings(v: &Value) -> Vec<String> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(|s| s.as_str().unwrap().to_string()).collect()
}

fn i64s(v: &Value) -> Vec<i64> {
    v.as_array().unwrap_or_else(|| panic!("not an array: {v}")).iter().map(|s| s.as_i64().unwrap()).collect()
}

fn check_config(g: &pb::ModelConfig, h: &Value, model: &str) {
    assert_eq!(g.name, h["name"], "{model}");
    assert_eq!(g.platform, h["platform"], "{model}");
    assert_eq!(g.backend, h["backend"], "{model}");
    assert_eq!(g.max_batch_size as i64, h["max_batch_size"].as_i64().unwrap(), "{model}");
    assert!(matches!(g.version_policy.as_ref().and_then(|p| p.policy_choice.as_ref()), Some(pb::model_version_policy::PolicyChoice::All(_))));
    assert!(h["version_policy"]["all"].is_object(), "{model}");
    let dtype = |t: i32| pb::DataType::try_from(t).unwrap().as_str_name().to_string();
    let tensors = |g: Vec<(String, i32, Vec<i64>)>, h: &Value, what: &str| {
        let h = h.as_array().unwrap();
        assert_eq!(g.len(), h.len(), "{model}: {what} count");
        for ((name, t, dims), h) in g.into_iter().zip(h) {
            assert_eq!(name, h["name"], "{model}: {what}");
            assert_eq!(dtype(t), h["data_type"], "{model}: {what} '{name}' data_type");
            assert_eq!(dims, i64s(&h["dims"]), "{model}: {what} '{name}' dims");
        }
    };
    tensors(g.input.iter().map(|t| (t.name.clone(), t.data_type, t.dims.clone())).collect(), &h["input"], "input");
    tensors(g.output.iter().map(|t| (t.name.clone(), t.data_type, t.dims.clone())).collect(), &h["output"], "output");
    assert_eq!(g.instance_group.len(), 1);
    let (gi, hi) = (&g.instance_group[0], &h["instance_group"][0]);
    assert_eq!(gi.name, hi["name"], "{model}");
    assert_eq!(gi.count as i64, hi["count"].as_i64().unwrap(), "{model}");
    assert_eq!(pb::model_instance_group::Kind::try_from(gi.kind).unwrap().as_str_name(), hi["kind"], "{model}");
    for (k, v) in &g.parameters {
        assert_eq!(v.string_value, h["parameters"][k]["string_value"], "{model}: parameter {k}");
    }
    assert_eq!(g.parameters.len(), h["parameters"].as_object().unwrap().len(), "{model}: parameters");
    match &g.scheduling_choice {
        None => assert!(h.get("dynamic_batching").is_none(), "{model}: dynamic_batching only over HTTP: {h}"),
        Some(pb::model_config::SchedulingChoice::DynamicBatching(d)) => {
            let hd = &h["dynamic_batching"];
            assert_eq!(d.preferred_batch_size.iter().map(|&p| p as i64).collect::<Vec<_>>(), i64s(&hd["preferred_batch_size"]), "{model}");
            assert_eq!(d.max_queue_delay_microseconds, hd["max_queue_delay_microseconds"].as_u64().unwrap(), "{model}");
            assert_eq!(d.preserve_ordering, hd["preserve_ordering"].as_bool().unwrap(), "{model}");
            assert_eq!(d.priority_levels, hd["priority_levels"].as_u64().unwrap(), "{model}");
            assert_eq!(d.default_priority_level, hd["default_priority_level"].as_u64().unwrap(), "{model}");
            let (gq, hq) = (d.default_queue_policy.as_ref().unwrap(), &hd["default_queue_policy"]);
            assert_eq!(pb::model_queue_policy::TimeoutAction::try_from(gq.timeout_action).unwrap().as_str_name(), hq["timeout_action"], "{model}");
            assert_eq!(gq.default_timeout_microseconds, hq["default_timeout_microseconds"].as_u64().unwrap(), "{model}");
            assert_eq!(gq.allow_timeout_override, hq["allow_timeout_override"].as_bool().unwrap(), "{model}");
            assert_eq!(gq.max_queue_size as u64, hq["max_queue_size"].as_u64().unwrap(), "{model}");
        }
    }
}

fn check_stats(g: &pb::ModelStatistics, h: &Value, what: &str) {
    assert_eq!(g.name, h["name"], "{what}");
    assert_eq!(g.version, h["version"], "{what}");
    assert_eq!(g.last_inference, h["last_inference"].as_u64().unwrap(), "{what}: last_inference");
    assert_eq!(g.inference_count, h["inference_count"].as_u64().unwrap(), "{what}: inference_count");
    assert_eq!(g.execution_count, h["execution_count"].as_u64().unwrap(), "{what}: execution_count");
    let s = g.inference_stats.as_ref().unwrap();
    let hs = &h["inference_stats"];
    for (name, d) in [
        ("success", &s.success),
        ("fail", &s.fail),
        ("queue", &s.queue),
        ("compute_input", &s.compute_input),
        ("compute_infer", &s.compute_infer),
        ("compute_output", &s.compute_output),
        ("cache_hit", &s.cache_hit),
        ("cache_miss", &s.cache_miss),
    ] {
        let d = d.as_ref().unwrap_or_else(|| panic!("{what}: no {name}"));
        assert_eq!((d.count, d.ns), (hs[name]["count"].as_u64().unwrap(), hs[name]["ns"].as_u64().unwrap()), "{what}: {name}");
    }
    let gb: Vec<(u64, u64, u64)> = g.batch_stats.iter().map(|b| (b.batch_size, b.compute_infer.unwrap().count, b.compute_infer.unwrap().ns)).collect();
    let hb: Vec<(u64, u64, u64)> = h["batch_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| (b["batch_size"].as_u64().unwrap(), b["compute_infer"]["count"].as_u64().unwrap(), b["compute_infer"]["ns"].as_u64().unwrap()))
        .collect();
    assert_eq!(gb, hb, "{what}: batch_stats");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_config_statistics_and_readiness_agree_with_http() {
    let server = start_repo(TempRepo::new().link("fraud_mlp").link("wide").link("recommender").link("identity").link("fixed_affine").link("all_types")).await;
    let mut client = grpc(&server).await;

    assert!(client.server_live(pb::ServerLiveRequest {}).await.unwrap().into_inner().live);
    assert!(client.server_ready(pb::ServerReadyRequest {}).await.unwrap().into_inner().ready);
    let meta = client.server_metadata(pb::ServerMetadataRequest {}).await.unwrap().into_inner();
    let h = server.get("/v2").await.json();
    assert_eq!((meta.name.as_str(), meta.version.as_str()), (h["name"].as_str().unwrap(), h["version"].as_str().unwrap()));
    assert_eq!(meta.extensions, strings(&h["extensions"]));

    let models = ["all_types", "fixed_affine", "fraud_mlp", "identity", "recommender", "wide"];
    for model in models {
        let g = client.model_metadata(pb::ModelMetadataRequest { name: model.into(), version: String::new() }).await.unwrap().into_inner();
        let h = server.get(&format!("/v2/models/{model}")).await.json();
        assert_eq!(g.name, h["name"], "{model}");
        assert_eq!(g.platform, h["platform"], "{model}");
        assert_eq!(g.versions, strings(&h["versions"]), "{model}");
        for (gt, ht, what) in [(&g.inputs, &h["inputs"], "inputs"), (&g.outputs, &h["outputs"], "outputs")] {
            let got: Vec<(String, String, Vec<i64>)> = gt.iter().map(|t| (t.name.clone(), t.datatype.clone(), t.shape.clone())).collect();
            let want: Vec<(String, String, Vec<i64>)> = ht
                .as_array()
                .unwrap()
                .iter()
                .map(|t| (t["name"].as_str().unwrap().into(), t["datatype"].as_str().unwrap().into(), i64s(&t["shape"])))
                .collect();
            assert_eq!(got, want, "{model}: {what}");
        }
        let g = client.model_config(pb::ModelConfigRequest { name: model.into(), version: String::new() }).await.unwrap().into_inner();
        let h = server.get(&format!("/v2/models/{model}/config")).await.json();
        check_config(g.config.as_ref().unwrap(), &h, model);
        assert!(client.model_ready(pb::ModelReadyRequest { name: model.into(), version: String::new() }).await.unwrap().into_inner().ready, "{model}");
        assert_eq!(server.get(&format!("/v2/models/{model}/ready")).await.status, hyper::StatusCode::OK);
    }

    // Spot checks of what the configuration says.
    let cfg = |name: &str| {
        let mut client = client.clone();
        let name = name.to_string();
        async move { client.model_config(pb::ModelConfigRequest { name, version: String::new() }).await.unwrap().into_inner().config.unwrap() }
    };
    let fraud = cfg("fraud_mlp").await;
    assert_eq!(fraud.max_batch_size, 64);
    assert_eq!(fraud.input[0].dims, vec![64], "dims without the batch dimension");
    assert_eq!(fraud.input[0].data_type, pb::DataType::TypeFp32 as i32);
    let Some(pb::model_config::SchedulingChoice::DynamicBatching(d)) = &fraud.scheduling_choice else { panic!("fraud_mlp batches") };
    assert_eq!(d.max_queue_delay_microseconds, 500);
    assert_eq!(d.default_queue_policy.unwrap().max_queue_size, 512);
    let fixed = cfg("fixed_affine").await;
    assert_eq!((fixed.max_batch_size, fixed.input[0].dims.clone(), fixed.scheduling_choice.is_none()), (0, vec![8], true));
    let rec = cfg("recommender").await;
    let Some(pb::model_config::SchedulingChoice::DynamicBatching(d)) = &rec.scheduling_choice else { panic!("recommender batches") };
    assert_eq!((d.priority_levels, d.default_priority_level), (2, 2));
    assert_eq!(rec.input.iter().map(|t| t.data_type).collect::<Vec<_>>(), vec![pb::DataType::TypeInt64 as i32, pb::DataType::TypeFp32 as i32]);
    let wide = cfg("wide").await;
    let Some(pb::model_config::SchedulingChoice::DynamicBatching(d)) = &wide.scheduling_choice else { panic!("wide batches") };
    assert_eq!((d.preferred_batch_size.clone(), d.max_queue_delay_microseconds, d.default_queue_policy.unwrap().max_queue_size), (vec![64], 5000, 128));
    let all = cfg("all_types").await;
    let kinds: BTreeSet<&str> = all.input.iter().map(|t| pb::DataType::try_from(t.data_type).unwrap().as_str_name()).collect();
    assert_eq!(kinds.len(), 13, "{kinds:?}");
    assert!(kinds.contains("TYPE_STRING") && kinds.contains("TYPE_FP16") && kinds.contains("TYPE_BOOL"));

    // Versions: metadata and config of a named version; readiness of unknown models and versions is false, not an error.
    let v1 = client.model_metadata(pb::ModelMetadataRequest { name: "fraud_mlp".into(), version: "1".into() }).await.unwrap().into_inner();
    assert_eq!(v1.versions, vec!["1", "2"]);
    let ready = |name: &str, version: &str| {
        let mut client = client.clone();
        let r = pb::ModelReadyRequest { name: name.into(), version: version.into() };
        async move { client.model_ready(r).await.map(|r| r.into_inner().ready) }
    };
    assert!(ready("fraud_mlp", "1").await.unwrap());
    assert!(!ready("fraud_mlp", "9").await.unwrap(), "unknown version: not ready");
    assert!(!ready("fraud_mlp", "x").await.unwrap(), "bad version: not ready");
    assert!(!ready("nope", "").await.unwrap(), "unknown model: not ready, not an error");
    for (name, version, code, word) in [("nope", "", Code::NotFound, "unknown model 'nope'"), ("fraud_mlp", "9", Code::NotFound, "no version 9"), ("fraud_mlp", "x", Code::InvalidArgument, "'x' is not a model version")] {
        let e = client.model_metadata(pb::ModelMetadataRequest { name: name.into(), version: version.into() }).await.unwrap_err();
        assert_eq!((e.code(), e.message().contains(word)), (code, true), "metadata {name}/{version}: {e:?}");
        let e = client.model_config(pb::ModelConfigRequest { name: name.into(), version: version.into() }).await.unwrap_err();
        assert_eq!((e.code(), e.message().contains(word)), (code, true), "config {name}/{version}: {e:?}");
        let e = client.model_statistics(pb::ModelStatisticsRequest { name: name.into(), version: version.into() }).await.unwrap_err();
        assert_eq!((e.code(), e.message().contains(word)), (code, true), "statistics {name}/{version}: {e:?}");
    }

    // Statistics after a few requests over both protocols.
    let row = |rows: i64| [input("input", "FP32", &[rows, 64], f32_data(&vec![0.25; rows as usize * 64]))];
    for rows in [1, 2, 3] {
        grpc_infer(&mut client, "fraud_mlp", Some("1"), &row(rows), false).await;
    }
    grpc_infer(&mut client, "fraud_mlp", Some("1"), &row(4), true).await;
    http_binary(&server, "fraud_mlp", Some("1"), &row(5)).await;
    let g = client.model_statistics(pb::ModelStatisticsRequest { name: "fraud_mlp".into(), version: "1".into() }).await.unwrap().into_inner();
    assert_eq!(g.model_stats.len(), 1);
    let h = server.get("/v2/models/fraud_mlp/versions/1/stats").await.json();
    check_stats(&g.model_stats[0], &h["model_stats"][0], "fraud_mlp v1");
    let s = &g.model_stats[0];
    assert_eq!((s.inference_count, s.execution_count), (15, 5), "sequential requests run one batch each");
    assert_eq!(s.inference_stats.as_ref().unwrap().success.unwrap().count, 5);
    assert_eq!(s.batch_stats.iter().map(|b| b.batch_size).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);
    assert!(s.last_inference > 0);

    // A model without a version: every version; no name: every model and version (as the HTTP endpoint lists them).
    let g = client.model_statistics(pb::ModelStatisticsRequest { name: "fraud_mlp".into(), version: String::new() }).await.unwrap().into_inner();
    let versions: BTreeSet<String> = g.model_stats.iter().map(|s| s.version.clone()).collect();
    assert_eq!(versions, BTreeSet::from(["1".to_string(), "2".to_string()]));
    let g = client.model_statistics(pb::ModelStatisticsRequest::default()).await.unwrap().into_inner();
    let h = server.get("/v2/models/stats").await.json();
    let got: BTreeSet<(String, String)> = g.model_stats.iter().map(|s| (s.name.clone(), s.version.clone())).collect();
    let want: BTreeSet<(String, String)> = h["model_stats"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().into(), s["version"].as_str().unwrap().into()))
        .collect();
    assert_eq!(got, want);
    assert_eq!(got.len(), 7, "six models, fraud_mlp with two versions: {got:?}");
    for s in &g.model_stats {
        let h = h["model_stats"].as_array().unwrap().iter().find(|h| h["name"] == s.name && h["version"] == s.version).unwrap();
        check_stats(s, h, &format!("{} v{}", s.name, s.version));
    }
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------------
// 3. Bad input.
// ---------------------------------------------------------------------------------------------------------------------

const BATTERY_MAX_MESSAGE: usize = 1 << 20;
const BATTERY_MAX_ELEMENTS: usize = 1 << 20;

struct Case {
    name: &'static str,
    request: pb::ModelInferRequest,
    code: Code,
    /// Words the message must contain (case-insensitive).
    words: Vec<&'static str>,
}

fn case(name: &'static str, request: pb::ModelInferRequest, code: Code, words: &[&'static str]) -> Case {
    Case { name, request, code, words: words.to_vec() }
}

fn fraud_in(rows: i64) -> In {
    input("input", "FP32", &[rows, 64], f32_data(&vec![0.5; rows as usize * 64]))
}

fn raw_req(model: &str, inputs: &[In]) -> pb::ModelInferRequest {
    grpc_request(model, None, "", inputs, false)
}

fn typed_req(model: &str, inputs: &[In]) -> pb::ModelInferRequest {
    grpc_request(model, None, "", inputs, true)
}

fn recommender_in(rows: i64) -> [In; 2] {
    [
        input("item_ids", "INT64", &[rows, 20], le(&vec![3i64; rows as usize * 20], i64::to_le_bytes)),
        input("user_features", "FP32", &[rows, 32], f32_data(&vec![0.1; rows as usize * 32])),
    ]
}

fn with_param(mut r: pb::ModelInferRequest, name: &str, choice: ParameterChoice) -> pb::ModelInferRequest {
    r.parameters.insert(name.into(), pb::InferParameter { parameter_choice: Some(choice) });
    r
}

fn battery() -> Vec<Case> {
    let good = || raw_req("fraud_mlp", &[fraud_in(1)]);
    let mut cases = Vec::new();

    let mut r = good();
    r.model_name = "nope".into();
    cases.push(case("unknown model", r, Code::NotFound, &["unknown model 'nope'"]));
    let mut r = good();
    r.model_name = String::new();
    cases.push(case("empty model name", r, Code::NotFound, &["unknown model ''"]));
    let mut r = good();
    r.model_version = "9".into();
    cases.push(case("unknown version", r, Code::NotFound, &["fraud_mlp", "no version 9", "available"]));
    let mut r = good();
    r.model_version = "latest".into();
    cases.push(case("bad version", r, Code::InvalidArgument, &["'latest' is not a model version"]));

    let mut r = good();
    r.inputs[0].datatype = "FP8".into();
    cases.push(case("unknown datatype", r, Code::InvalidArgument, &["input 'input'", "unknown datatype 'FP8'"]));
    let mut r = good();
    r.inputs[0].datatype = "fp32".into();
    cases.push(case("datatype in lower case", r, Code::InvalidArgument, &["unknown datatype 'fp32'"]));
    let f64s = input("input", "FP64", &[1, 64], le(&[0.5f64; 64], f64::to_le_bytes));
    cases.push(case("wrong datatype", raw_req("fraud_mlp", &[f64s]), Code::InvalidArgument, &["input 'input'", "datatype FP64", "expects FP32"]));
    let short = input("input", "FP32", &[1, 63], f32_data(&[0.5; 63]));
    cases.push(case("wrong shape", raw_req("fraud_mlp", &[short]), Code::InvalidArgument, &["input 'input'", "shape [1, 63]", "64"]));
    let flat = input("input", "FP32", &[64], f32_data(&[0.5; 64]));
    cases.push(case("missing batch dimension", raw_req("fraud_mlp", &[flat]), Code::InvalidArgument, &["input 'input'", "shape [64]"]));
    let batched = input("x", "FP32", &[1, 8], f32_data(&[0.5; 8]));
    cases.push(case("batch dimension on a non-batching model", raw_req("fixed_affine", &[batched]), Code::InvalidArgument, &["input 'x'", "shape [1, 8]", "[8]"]));

    let mut r = good();
    r.raw_input_contents[0] = Bytes::from(vec![0u8; 255]);
    cases.push(case("raw contents one byte short", r, Code::InvalidArgument, &["input 'input'", "256 bytes", "255 bytes"]));
    let mut r = good();
    r.raw_input_contents[0] = Bytes::from(vec![0u8; 260]);
    cases.push(case("raw contents too long", r, Code::InvalidArgument, &["input 'input'", "256 bytes", "260 bytes"]));
    let mut r = raw_req("recommender", &recommender_in(1));
    r.raw_input_contents.pop();
    cases.push(case("fewer raw contents than inputs", r, Code::InvalidArgument, &["raw_input_contents has 1 entries", "2 inputs"]));
    let mut r = good();
    r.raw_input_contents.push(Bytes::from_static(&[0; 4]));
    cases.push(case("more raw contents than inputs", r, Code::InvalidArgument, &["raw_input_contents has 2 entries", "1 inputs"]));
    let mut r = good();
    r.inputs[0].contents = Some(typed_contents("FP32", &fraud_in(1).data));
    cases.push(case("both raw and typed contents", r, Code::InvalidArgument, &["input 'input'", "both"]));
    let mut r = typed_req("fraud_mlp", &[fraud_in(1)]);
    r.inputs[0].contents.as_mut().unwrap().fp32_contents.pop();
    cases.push(case("typed contents one element short", r, Code::InvalidArgument, &["input 'input'", "fp32_contents holds 63", "needs 64"]));
    let mut r = typed_req("fraud_mlp", &[fraud_in(1)]);
    let c = r.inputs[0].contents.as_mut().unwrap();
    c.fp64_contents = c.fp32_contents.drain(..).map(f64::from).collect();
    cases.push(case("typed contents in the wrong field", r, Code::InvalidArgument, &["input 'input'", "fp32_contents holds 0", "needs 64"]));
    let mut r = typed_req("fraud_mlp", &[fraud_in(1)]);
    r.inputs[0].contents = None;
    cases.push(case("no contents at all", r, Code::InvalidArgument, &["input 'input'"]));

    let int8 = |v: i32| {
        let mut r = typed_req("all_types", &[input("in_int8", "INT8", &[1, 1], vec![0])]);
        r.inputs[0].contents.as_mut().unwrap().int_contents = vec![v];
        r
    };
    cases.push(case("INT8 300 in int_contents", int8(300), Code::InvalidArgument, &["input 'in_int8'", "value 300 is out of range for INT8"]));
    cases.push(case("INT8 -129 in int_contents", int8(-129), Code::InvalidArgument, &["input 'in_int8'", "value -129 is out of range for INT8"]));
    let mut r = typed_req("all_types", &[input("in_uint16", "UINT16", &[1, 1], vec![0, 0])]);
    r.inputs[0].contents.as_mut().unwrap().uint_contents = vec![70000];
    cases.push(case("UINT16 70000 in uint_contents", r, Code::InvalidArgument, &["input 'in_uint16'", "value 70000 is out of range for UINT16"]));
    let mut r = typed_req("all_types", &[input("in_bool", "BOOL", &[1, 1], vec![1])]);
    r.inputs.push(grpc_input(&input("in_fp16", "FP16", &[1, 1], vec![0, 0x3c]), Some(pb::InferTensorContents { fp32_contents: vec![1.0], ..Default::default() })));
    cases.push(case("FP16 as typed contents", r, Code::InvalidArgument, &["input 'in_fp16'", "FP16", "raw_input_contents"]));

    let zero = input("input", "FP32", &[0, 64], vec![]);
    cases.push(case("zero rows", raw_req("fraud_mlp", &[zero]), Code::InvalidArgument, &["input 'input'", "shape [0, 64]", "batch (1..max_batch_size)"]));
    let mut r = good();
    r.inputs[0].shape = vec![-1, 64];
    cases.push(case("negative dimension", r, Code::InvalidArgument, &["input 'input'", "dimension -1"]));
    let mut r = good();
    r.inputs[0].shape = vec![1, BATTERY_MAX_ELEMENTS as i64 + 1];
    r.raw_input_contents = vec![Bytes::new()];
    cases.push(case("tensor over max_tensor_elements", r, Code::InvalidArgument, &["input 'input'", "over the limit", "max_tensor_elements"]));
    let mut r = good();
    r.inputs[0].shape = vec![i64::MAX, i64::MAX, 4];
    r.raw_input_contents = vec![Bytes::new()];
    cases.push(case("element count overflows", r, Code::InvalidArgument, &["input 'input'", "more than 2^64"]));

    cases.push(case("missing input", raw_req("recommender", &recommender_in(1)[..1]), Code::InvalidArgument, &["missing input 'user_features'"]));
    let mut bogus = fraud_in(1);
    bogus.name = "bogus".into();
    cases.push(case("unknown input", raw_req("fraud_mlp", &[bogus]), Code::InvalidArgument, &["unknown input 'bogus'", "input"]));
    let mut r = good();
    r.outputs.push(InferRequestedOutputTensor { name: "probabilities".into(), parameters: HashMap::new() });
    cases.push(case("unknown output", r, Code::InvalidArgument, &["unknown output 'probabilities'", "logits"]));
    cases.push(case("duplicate input", raw_req("fraud_mlp", &[fraud_in(1), fraud_in(1)]), Code::InvalidArgument, &["input 'input' appears more than once"]));
    let mut r = good();
    r.outputs = vec![InferRequestedOutputTensor { name: "logits".into(), parameters: HashMap::new() }; 2];
    cases.push(case("duplicate output", r, Code::InvalidArgument, &["output 'logits' is requested more than once"]));
    let mut r = good();
    r.outputs.push(InferRequestedOutputTensor {
        name: "logits".into(),
        parameters: HashMap::from([("classification".to_string(), pb::InferParameter { parameter_choice: Some(ParameterChoice::Int64Param(2)) })]),
    });
    cases.push(case("classification extension", r, Code::InvalidArgument, &["classification", "not supported"]));
    cases.push(case("no inputs", raw_req("fraud_mlp", &[]), Code::InvalidArgument, &["no inputs"]));
    let mut mismatch = recommender_in(2).to_vec();
    mismatch[1] = recommender_in(1)[1].clone();
    cases.push(case("inputs disagree on the batch size", raw_req("recommender", &mismatch), Code::InvalidArgument, &["disagree on the batch size", "'item_ids' has 2 rows", "'user_features' has 1"]));
    cases.push(case("batch over max_batch_size", raw_req("fraud_mlp", &[fraud_in(65)]), Code::InvalidArgument, &["batch size 65", "max_batch_size of 64"]));

    cases.push(case("priority above the levels", with_param(raw_req("recommender", &recommender_in(1)), "priority", ParameterChoice::Uint64Param(3)), Code::InvalidArgument, &["priority 3 is not a level of model 'recommender", "1 = highest .. 2"]));
    cases.push(case("priority on a one-level model", with_param(good(), "priority", ParameterChoice::Int64Param(2)), Code::InvalidArgument, &["priority 2 is not a level of model 'fraud_mlp", "1 = highest .. 1"]));
    cases.push(case("negative priority", with_param(good(), "priority", ParameterChoice::Int64Param(-1)), Code::InvalidArgument, &["parameter 'priority'", "must not be negative"]));
    cases.push(case("priority as a string", with_param(good(), "priority", ParameterChoice::StringParam("high".into())), Code::InvalidArgument, &["parameter 'priority'", "int64_param or uint64_param"]));
    cases.push(case("timeout as a double", with_param(good(), "timeout", ParameterChoice::DoubleParam(1.5)), Code::InvalidArgument, &["parameter 'timeout'", "int64_param or uint64_param"]));
    cases.push(case("cache as a string", with_param(good(), "cache", ParameterChoice::StringParam("no".into())), Code::InvalidArgument, &["parameter 'cache'", "bool_param"]));

    // BYTES: a NUL byte or invalid UTF-8 would be mangled by ONNX Runtime; a bad length prefix is malformed.
    let strings_case = |items: &[&[u8]]| {
        let mut all: Vec<&[u8]> = items.to_vec();
        all.resize(8, b"a");
        let mut inputs = every_type_inputs(true);
        inputs[12] = input("in_bytes", "BYTES", &[2, 4], byte_strings(&all));
        raw_req("all_types", &inputs)
    };
    cases.push(case("BYTES with a NUL byte", strings_case(&[b"ok", b"a\0b"]), Code::InvalidArgument, &["input 'in_bytes'", "element 1", "NUL"]));
    cases.push(case("BYTES not UTF-8", strings_case(&[b"\xff\xfe"]), Code::InvalidArgument, &["input 'in_bytes'", "element 0", "UTF-8"]));
    let mut r = typed_req("all_types", &[input("in_bytes", "BYTES", &[1, 2], byte_strings(&[b"x", b"y"]))]);
    r.inputs[0].contents.as_mut().unwrap().bytes_contents.pop();
    cases.push(case("BYTES typed count short", r, Code::InvalidArgument, &["input 'in_bytes'", "bytes_contents holds 1", "needs 2"]));
    let mut inputs = every_type_inputs(true);
    inputs[12].data = vec![200, 0, 0, 0, b'x'];
    inputs[12].shape = vec![1, 1];
    cases.push(case("BYTES length prefix past the end", raw_req("all_types", &inputs), Code::InvalidArgument, &["input 'in_bytes'", "malformed"]));

    // Over server.grpc_max_message_bytes: refused by the transport before the service sees it.
    let rows = 2 * BATTERY_MAX_MESSAGE / 1024;
    let big = input("input", "FP32", &[rows as i64, 256], vec![0u8; rows * 1024]);
    cases.push(case("message over grpc_max_message_bytes", raw_req("identity", &[big]), Code::OutOfRange, &["message length too large", "1048576"]));
    cases
}

async fn battery_server() -> Server {
    let repo = TempRepo::new().link("fraud_mlp").link("fixed_affine").link("recommender").link("all_types").link("identity");
    let mut config = sluice::config::Config::default();
    config.server.models = repo.path().to_path_buf();
    config.server.grpc_max_message_bytes = BATTERY_MAX_MESSAGE;
    config.server.max_tensor_elements = BATTERY_MAX_ELEMENTS;
    start_with(config, Some(repo)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_exact_codes_and_messages_that_name_the_problem() {
    let server = battery_server().await;
    let mut client = grpc(&server).await;
    let cases = battery();
    assert!(cases.len() >= 30, "{} cases", cases.len());
    let mut names = BTreeSet::new();
    let mut failures = Vec::new();
    for c in cases {
        assert!(names.insert(c.name), "duplicate case {}", c.name);
        match within(c.name, client.model_infer(c.request)).await {
            Ok(r) => failures.push(format!("{}: succeeded: {:?}", c.name, r.into_inner().outputs)),
            Err(status) => {
                let message = status.message().to_lowercase();
                let missing: Vec<_> = c.words.iter().filter(|w| !message.contains(&w.to_lowercase())).collect();
                if status.code() != c.code || !missing.is_empty() {
                    failures.push(format!("{}: want {:?} with {:?}, got {:?}: {}", c.name, c.code, c.words, status.code(), status.message()));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} cases failed:\n{}", failures.len(), failures.join("\n"));

    // Afterwards the same connection still serves good requests, over both kinds of contents.
    let raw = grpc_infer(&mut client, "fraud_mlp", None, &[fraud_in(2)], false).await;
    assert_eq!(grpc_infer(&mut client, "fraud_mlp", None, &[fraud_in(2)], true).await, raw);
    assert_eq!(raw[0].shape, vec![2, 2]);
    // A message just under the limit passes.
    let rows = 60;
    let under = input("input", "FP32", &[rows, 256], f32_data(&vec![1.5; rows as usize * 256]));
    assert_eq!(grpc_infer(&mut client, "identity", None, std::slice::from_ref(&under), false).await[0].data, under.data);
    // Nothing refused ran.
    let stats = server.stats("fraud_mlp").await;
    assert_eq!(stats["inference_stats"]["fail"]["count"], 0);
    assert_eq!(success_count(&stats), 2);
    server.shutdown().await;
}

/// Error messages are shared with HTTP, but over gRPC they should name gRPC's fields (contents / raw_input_contents),
/// not the JSON body's ('data' / 'parameters.binary_data_size').
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contents_errors_name_grpc_fields_not_json_ones() {
    let server = battery_server().await;
    let mut client = grpc(&server).await;
    let mut both = raw_req("fraud_mlp", &[fraud_in(1)]);
    both.inputs[0].contents = Some(typed_contents("FP32", &fraud_in(1).data));
    let mut none = typed_req("fraud_mlp", &[fraud_in(1)]);
    none.inputs[0].contents = None;
    let mut failures = Vec::new();
    for (name, request) in [("both raw and typed contents", both), ("no contents", none)] {
        let e = client.model_infer(request).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{name}");
        let m = e.message();
        if !m.contains("contents") || m.contains("binary_data_size") || m.contains("'data'") {
            failures.push(format!("{name}: {m:?}"));
        }
    }
    server.shutdown().await;
    assert!(failures.is_empty(), "gRPC errors that name the HTTP JSON fields instead of gRPC's:\n{}", failures.join("\n"));
}

/// A response over `grpc_max_message_bytes` (recommender: 288 bytes in, 400 out per row) is a clean status, not a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_over_the_message_limit_is_a_clean_error() {
    let repo = TempRepo::new().link("recommender");
    let mut config = sluice::config::Config::default();
    config.server.models = repo.path().to_path_buf();
    config.server.grpc_max_message_bytes = 10_000;
    let server = start_with(config, Some(repo)).await;
    let mut client = grpc(&server).await;
    let small = grpc_infer(&mut client, "recommender", None, &recommender_in(2), false).await;
    assert_eq!(small[0].shape, vec![2, 100]);
    let request = raw_req("recommender", &recommender_in(32));
    assert!(prost::Message::encoded_len(&request) < 10_000);
    let e = within("oversized response", client.model_infer(request)).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    assert!(e.message().contains("encoded message length too large"), "{e:?}");
    // The connection still works.
    assert_eq!(grpc_infer(&mut client, "recommender", None, &recommender_in(2), false).await, small);
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------------
// 4. Backpressure and deadlines.
// ---------------------------------------------------------------------------------------------------------------------

const SMALL_QUEUE_WIDE: &str = r#"
max_batch_size = 64
instances = 1
threads = 1

[dynamic_batching]
max_queue_delay = "0s"
preferred_batch_sizes = [64]

[queue]
capacity = 4
timeout = "20s"
"#;

const SLOW_WIDE: &str = "max_batch_size = 64\ninstances = 1\nthreads = 1\n[queue]\ncapacity = 64\ntimeout = \"20s\"\n";

fn wide_in(rows: i64, seed: u64) -> In {
    let mut rng = StdRng::seed_from_u64(seed);
    input("input", "FP32", &[rows, 512], f32_data(&random_f32(&mut rng, rows as usize * 512)))
}

fn depth(server: &Server, model: &str) -> (usize, usize) {
    server.running.as_ref().unwrap().state.repository.get(model, None).unwrap().scheduler.depth()
}

fn count(stats: &Value, key: &str) -> u64 {
    stats[key].as_u64().unwrap_or_else(|| panic!("no {key} in {stats}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_resource_exhausted_and_every_admitted_request_is_correct() {
    let server = start_repo(TempRepo::new().model("wide", "wide", 1, SMALL_QUEUE_WIDE)).await;
    let mut client = grpc(&server).await;

    // References, one request at a time: 4 distinct 8-row inputs.
    let mut refs = Vec::new();
    for k in 0..4 {
        refs.push(f32_from_bytes(&grpc_infer(&mut client, "wide", None, &[wide_in(8, k)], false).await[0].data));
    }
    let before = server.stats("wide").await;

    // 40 requests of 8 rows at once, on one HTTP/2 connection, into a queue of 4: some are refused at once.
    let mut tasks = Vec::new();
    for i in 0..40u64 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let r = client.model_infer(grpc_request("wide", None, &format!("flood-{i}"), &[wide_in(8, i % 4)], i % 2 == 1)).await;
            (i, r)
        }));
    }
    let (mut ok, mut refused) = (0u64, 0u64);
    for t in tasks {
        let (i, r) = within("flood", t).await.unwrap();
        match r {
            Ok(r) => {
                let r = r.into_inner();
                assert_eq!(r.id, format!("flood-{i}"));
                assert_eq!(r.outputs[0].shape, vec![8, 16]);
                assert_close(&f32_from_bytes(&r.raw_output_contents[0]), &refs[(i % 4) as usize], 1e-5, &format!("flood {i}"));
                ok += 1;
            }
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "flood {i}: {e:?}");
                let m = e.message();
                assert!(m.contains("model 'wide") && m.contains("overloaded") && m.contains("queue holds") && m.contains("limits 4"), "flood {i}: {e:?}");
                refused += 1;
            }
        }
    }
    assert!(ok >= 1 && refused >= 1, "ok {ok}, refused {refused}");
    let after = server.stats("wide").await;
    assert_eq!(count(&after, "inference_count") - count(&before, "inference_count"), ok * 8, "only admitted requests ran");
    assert_eq!(count(&after["sluice"], "rejected") - count(&before["sluice"], "rejected"), refused);
    eprintln!("flood of 40 into a queue of 4: {ok} answered, {refused} RESOURCE_EXHAUSTED");
    // Once the queue drains, the same connection is served again.
    assert_eq!(depth(&server, "wide"), (0, 0));
    let again = grpc_infer(&mut client, "wide", None, &[wide_in(8, 0)], true).await;
    assert_close(&f32_from_bytes(&again[0].data), &refs[0], 1e-5, "after the flood");
    server.shutdown().await;
}

/// `grpc-timeout` is the request's deadline, queue time included. The server answers DEADLINE_EXCEEDED a little before it
/// passes, but tonic's client runs its own timer on the same deadline and reports CANCELLED ("Timeout expired") when
/// that fires first: both outcomes are accepted and counted; neither may run the request.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_passed_deadline_is_deadline_exceeded_and_the_request_never_runs() {
    let server = start_repo(TempRepo::new().model("wide_slow", "wide", 1, SLOW_WIDE)).await;
    let client = grpc(&server).await;
    // Full batches keep the one instance busy: one runs, the rest wait, and since each fills max_batch_size nothing can
    // join them (about 20 ms each on a desktop core, so well over 300 ms of work waits ahead of the deadlines below).
    const BIG: usize = 32;
    let big: Vec<_> = (0..BIG)
        .map(|k| {
            let mut client = client.clone();
            let request = raw_req("wide_slow", &[wide_in(64, 1000 + (k % 2) as u64)]);
            tokio::spawn(async move { client.model_infer(request).await })
        })
        .collect();
    assert!(wait_until(Duration::from_secs(20), || depth(&server, "wide_slow").0 >= 16).await, "the big requests never queued up: {:?}", depth(&server, "wide_slow"));

    // On a connection of their own, so that no big request's bytes delay them on the way in.
    let fresh = grpc(&server).await;
    let deadlines = [2u64, 2, 2, 2, 5, 5, 5, 5, 15, 15, 15, 15];
    let mut tiny = Vec::new();
    for (i, ms) in deadlines.into_iter().enumerate() {
        let mut client = fresh.clone();
        let mut request = tonic::Request::new(grpc_request("wide_slow", None, &format!("deadline-{i}"), &[wide_in(1, 7)], i % 2 == 0));
        request.set_timeout(Duration::from_millis(ms));
        tiny.push(tokio::spawn(async move { (ms, client.model_infer(request).await) }));
    }
    let mut outcomes: HashMap<(u64, &'static str), usize> = HashMap::new();
    for t in tiny {
        let (ms, r) = within("deadline", t).await.unwrap();
        let e = r.expect_err("the deadline passes while the instance is busy");
        let kind = match e.code() {
            Code::DeadlineExceeded => {
                assert!(e.message().contains("model 'wide_slow") && (e.message().contains("deadline") || e.message().contains("timeout")), "{e:?}");
                "DEADLINE_EXCEEDED"
            }
            Code::Cancelled => {
                assert_eq!(e.message(), "Timeout expired", "{e:?}");
                // No headers: tonic's client timer fired; with headers: the server's transport answered.
                if e.metadata().is_empty() {
                    "CANCELLED (client timer)"
                } else {
                    "CANCELLED (server)"
                }
            }
            other => panic!("deadline {ms} ms: want DEADLINE_EXCEEDED (or CANCELLED by the client's timer), got {other:?}: {}", e.message()),
        };
        *outcomes.entry((ms, kind)).or_default() += 1;
    }
    let mut outcomes: Vec<_> = outcomes.into_iter().collect();
    outcomes.sort();
    eprintln!("grpc-timeout outcomes ((ms, code), count): {outcomes:?}");

    // The V2 `timeout` parameter (microseconds) has no client-side timer: always the server's DEADLINE_EXCEEDED.
    // A tiny request whose client timer fired first may still expire in the server's queue a moment later (and be
    // counted then): wait until the count settles before taking the baseline.
    let mut before = count(&server.stats("wide_slow").await["sluice"], "timed_out");
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = count(&server.stats("wide_slow").await["sluice"], "timed_out");
        if now == before {
            break;
        }
        before = now;
    }
    for (i, choice) in [ParameterChoice::Uint64Param(1), ParameterChoice::Int64Param(1000), ParameterChoice::Uint64Param(5000)].into_iter().enumerate() {
        let request = with_param(grpc_request("wide_slow", None, &format!("timeout-{i}"), &[wide_in(1, 7)], false), "timeout", choice);
        let e = within("timeout parameter", fresh.clone().model_infer(request)).await.expect_err("the timeout passes while the instance is busy");
        assert_eq!(e.code(), Code::DeadlineExceeded, "{e:?}");
        assert!(e.message().contains("in the queue of model 'wide_slow") && e.message().contains("was not run"), "{e:?}");
    }
    assert_eq!(count(&server.stats("wide_slow").await["sluice"], "timed_out") - before, 3);
    assert!(depth(&server, "wide_slow").0 >= 1, "the instance was still busy: the checks above prove nothing otherwise");

    for b in big {
        let r = within("busy", b).await.unwrap().expect("the big requests succeed");
        assert_eq!(r.into_inner().outputs[0].shape, vec![64, 16]);
    }
    let s = server.stats("wide_slow").await;
    assert_eq!(count(&s, "inference_count"), (BIG * 64) as u64, "no request past its deadline ran");
    assert_eq!(count(&s, "execution_count"), BIG as u64);
    assert_eq!(batch_sizes(&s), vec![(64, BIG as u64)]);
    assert_eq!(s["inference_stats"]["fail"]["count"], 0);
    assert_eq!(depth(&server, "wide_slow"), (0, 0), "nothing left behind in the queue");
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------------
// 5. ModelStreamInfer.
// ---------------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_infer_answers_every_request_by_id_and_survives_a_bad_one() {
    let server = start_repo(TempRepo::new().link("fraud_mlp")).await;
    let mut client = grpc(&server).await;
    let mut rng = StdRng::seed_from_u64(5);
    let inputs: Vec<In> = (0..20)
        .map(|_| {
            let rows = rng.random_range(1..=4i64);
            input("input", "FP32", &[rows, 64], f32_data(&random_f32(&mut rng, rows as usize * 64)))
        })
        .collect();
    let mut refs = HashMap::new();
    for (i, x) in inputs.iter().enumerate() {
        refs.insert(format!("req-{i}"), f32_from_bytes(&grpc_infer(&mut client, "fraud_mlp", None, std::slice::from_ref(x), false).await[0].data));
    }

    let (tx, rx) = tokio::sync::mpsc::channel::<pb::ModelInferRequest>(64);
    let mut answers = within("open stream", client.model_stream_infer(tokio_stream::wrappers::ReceiverStream::new(rx))).await.unwrap().into_inner();
    let mut seen = HashMap::new();
    let check = |r: pb::ModelStreamInferResponse, seen: &mut HashMap<String, bool>| {
        let inner = r.infer_response.expect("every answer carries infer_response");
        if r.error_message.is_empty() {
            let want = refs.get(&inner.id).unwrap_or_else(|| panic!("answer with unknown id {:?}", inner.id));
            assert_eq!(inner.model_name, "fraud_mlp");
            assert_close(&f32_from_bytes(&inner.raw_output_contents[0]), want, 1e-5, &inner.id);
            assert!(seen.insert(inner.id, true).is_none(), "one answer per id");
        } else {
            assert!(seen.insert(inner.id, false).is_none(), "one answer per id");
        }
        r.error_message
    };
    let send = |i: usize, typed: bool| grpc_request("fraud_mlp", None, &format!("req-{i}"), std::slice::from_ref(&inputs[i]), typed);

    // First half, all answered before anything else is sent.
    for i in 0..10 {
        tx.send(send(i, i % 2 == 0)).await.unwrap();
    }
    for _ in 0..10 {
        let r = within("first half", answers.message()).await.unwrap().expect("an answer");
        assert_eq!(check(r, &mut seen), "");
    }
    // A bad request: answered with its id and an error message, and the stream stays open.
    let mut bad = raw_req("fraud_mlp", &[input("input", "FP32", &[1, 63], f32_data(&[0.0; 63]))]);
    bad.id = "bad-one".into();
    tx.send(bad).await.unwrap();
    let mut unknown = raw_req("nope", &[fraud_in(1)]);
    unknown.id = "bad-two".into();
    tx.send(unknown).await.unwrap();
    let mut errors = HashMap::new();
    for _ in 0..2 {
        let r = within("bad", answers.message()).await.unwrap().expect("an answer to the bad request");
        let id = r.infer_response.as_ref().unwrap().id.clone();
        let message = check(r, &mut seen);
        errors.insert(id, message);
    }
    assert!(errors["bad-one"].contains("input 'input'") && errors["bad-one"].contains("shape [1, 63]"), "{errors:?}");
    assert!(errors["bad-two"].contains("unknown model 'nope'"), "{errors:?}");
    // Second half, then the client closes its side: every answer still arrives, then the stream ends.
    for i in 10..20 {
        tx.send(send(i, i % 2 == 1)).await.unwrap();
    }
    drop(tx);
    let mut rest = 0;
    while let Some(r) = within("second half", answers.message()).await.expect("the stream ends cleanly") {
        assert_eq!(check(r, &mut seen), "");
        rest += 1;
    }
    assert_eq!(rest, 10, "every request of the second half answered before the stream ended");
    assert_eq!(seen.values().filter(|ok| **ok).count(), 20);
    assert_eq!(seen.len(), 22);
    assert_eq!(success_count(&server.stats("fraud_mlp").await), 40, "20 references + 20 streamed");
    server.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------------------
// 6. Health.
// ---------------------------------------------------------------------------------------------------------------------

async fn health_status(health: &mut HealthClient<Channel>, service: &str) -> Result<ServingStatus, tonic::Status> {
    let r = within("health", health.check(HealthCheckRequest { service: service.into() })).await?;
    Ok(ServingStatus::try_from(r.into_inner().status).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_serves_the_server_the_service_and_each_model_and_turns_not_serving_on_shutdown() {
    let mut server = start_repo(TempRepo::new().link("fraud_mlp").link("identity").link("fixed_affine")).await;
    let mut health = HealthClient::new(channel(&server).await);
    for service in ["", "inference.GRPCInferenceService", "fraud_mlp", "identity", "fixed_affine"] {
        assert_eq!(health_status(&mut health, service).await.unwrap(), ServingStatus::Serving, "{service:?}");
    }
    for service in ["nope", "inference.Nope", "fraud_mlp/1"] {
        let e = health_status(&mut health, service).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{service:?}: {e:?}");
    }

    // A watcher sees NOT_SERVING as soon as shutdown begins; the server ends once the watcher goes away.
    let mut watch = within("watch", health.watch(HealthCheckRequest { service: String::new() })).await.unwrap().into_inner();
    let first = within("watch", watch.message()).await.unwrap().unwrap();
    assert_eq!(ServingStatus::try_from(first.status).unwrap(), ServingStatus::Serving);
    let running = server.running.take().unwrap();
    let shutdown = tokio::spawn(running.shutdown());
    let next = within("watch after shutdown", watch.message()).await;
    match next {
        Ok(Some(update)) => assert_eq!(ServingStatus::try_from(update.status).unwrap(), ServingStatus::NotServing),
        other => panic!("the watcher should see NOT_SERVING, got {other:?}"),
    }
    drop(watch);
    drop(health);
    within("shutdown", shutdown).await.unwrap().expect("clean shutdown");
}

/// How long a shutdown may take here: nothing is running, so draining should be immediate.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(3);

/// `Running::shutdown` (and so `sluice serve` on SIGTERM) must end while a client keeps a Health/Watch stream open:
/// the watcher is told NOT_SERVING, but a watch never ends by itself, so a drain that waits for it waits forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_completes_while_a_client_holds_a_health_watch_open() {
    let mut server = start_repo(TempRepo::new().link("fraud_mlp")).await;
    let mut health = HealthClient::new(channel(&server).await);
    let mut watch = within("watch", health.watch(HealthCheckRequest { service: "fraud_mlp".into() })).await.unwrap().into_inner();
    let first = within("watch", watch.message()).await.unwrap().unwrap();
    assert_eq!(ServingStatus::try_from(first.status).unwrap(), ServingStatus::Serving);
    let mut shutdown = tokio::spawn(server.running.take().unwrap().shutdown());
    let update = within("watch after shutdown", watch.message()).await.unwrap().unwrap();
    assert_eq!(ServingStatus::try_from(update.status).unwrap(), ServingStatus::NotServing);
    let ended = tokio::time::timeout(SHUTDOWN_LIMIT, &mut shutdown).await;
    drop(watch);
    if ended.is_err() {
        within("shutdown once the watcher left", shutdown).await.unwrap().unwrap();
        panic!("Running::shutdown did not end within {SHUTDOWN_LIMIT:?} while a Health/Watch stream was open (it ended only once the client dropped the watch)");
    }
}

/// The same for an idle ModelStreamInfer stream (Triton's streaming clients keep one open for their whole life): its
/// answers are all delivered, so shutdown should end the stream rather than wait for the client to close it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_completes_while_a_client_holds_an_idle_inference_stream_open() {
    let mut server = start_repo(TempRepo::new().link("fraud_mlp")).await;
    let mut client = grpc(&server).await;
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::ModelInferRequest>(4);
    let mut answers = within("open stream", client.model_stream_infer(tokio_stream::wrappers::ReceiverStream::new(rx))).await.unwrap().into_inner();
    tx.send(raw_req("fraud_mlp", &[fraud_in(1)])).await.unwrap();
    let first = within("first answer", answers.message()).await.unwrap().unwrap();
    assert_eq!(first.error_message, "");
    let mut shutdown = tokio::spawn(server.running.take().unwrap().shutdown());
    let ended = tokio::time::timeout(SHUTDOWN_LIMIT, &mut shutdown).await;
    drop(tx);
    if ended.is_err() {
        within("shutdown once the client closed its stream", shutdown).await.unwrap().unwrap();
        panic!("Running::shutdown did not end within {SHUTDOWN_LIMIT:?} while an idle ModelStreamInfer stream was open (it ended only once the client closed its side)");
    }
}

// ---------------------------------------------------------------------------------------------------------------------
// 7. Concurrency.
// ---------------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_grpc_requests_match_http_one_row_at_a_time() {
    let server = start_repo(TempRepo::new().link("fraud_mlp")).await;
    let client = grpc(&server).await;
    let mut rng = StdRng::seed_from_u64(100);
    let requests: Vec<Vec<f32>> = (0..100).map(|_| {
        let rows = rng.random_range(1..=8usize);
        random_f32(&mut rng, rows * 64)
    }).collect();

    let mut tasks = Vec::new();
    for (i, x) in requests.iter().enumerate() {
        let mut client = client.clone();
        let rows = (x.len() / 64) as i64;
        let request = grpc_request("fraud_mlp", Some("1"), &format!("c{i}"), &[input("input", "FP32", &[rows, 64], f32_data(x))], i % 3 == 0);
        tasks.push(tokio::spawn(async move { client.model_infer(request).await }));
    }
    let mut answers = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let r = within("concurrent", t).await.unwrap().unwrap_or_else(|e| panic!("request {i}: {e:?}")).into_inner();
        assert_eq!(r.id, format!("c{i}"));
        assert_eq!(r.outputs[0].shape, vec![(requests[i].len() / 64) as i64, 2]);
        answers.push(f32_from_bytes(&r.raw_output_contents[0]));
    }

    let (mut rows, mut exact) = (0, 0);
    for (i, x) in requests.iter().enumerate() {
        for (row, chunk) in x.chunks(64).enumerate() {
            let r = server.post_json("/v2/models/fraud_mlp/versions/1/infer", &json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": chunk}]})).await;
            expect_ok(&r, "HTTP row");
            let want = output_f32(&r.json(), "logits");
            let got = &answers[i][row * 2..row * 2 + 2];
            assert_close(got, &want, 1e-5, &format!("request {i} row {row}"));
            rows += 1;
            exact += (got == want.as_slice()) as usize;
        }
    }
    eprintln!("{rows} rows: {exact} bit-identical between batched gRPC and single-row HTTP");
    let v1 = server.get("/v2/models/fraud_mlp/versions/1/stats").await.json();
    assert_eq!(v1["model_stats"][0]["inference_count"].as_u64().unwrap() as usize, 2 * rows, "every row ran twice (gRPC + HTTP)");
    server.shutdown().await;
}

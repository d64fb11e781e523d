//! The fuzz targets' inputs (fuzz/, see docs/FUZZING.md) replayed as ordinary tests, on stable Rust and without
//! cargo-fuzz: every committed seed of the corpus still decodes (a protocol change that breaks them says so here), and
//! every input a fuzzer once crashed on gets an error, not a panic.

use bytes::Bytes;
use prost::Message;
use sluice::protocol::grpc::{self, pb};
use sluice::protocol::json::{self, DecodeLimits};
use sluice::protocol::model_metadata;
use std::path::PathBuf;

/// The fuzz targets' limit (fuzz/src/lib.rs).
const LIMITS: DecodeLimits = DecodeLimits { max_elements: 1 << 20 };

/// `fuzz/src/lib.rs`'s `frame` for the two forms the seeds use: mode 0 (no header) and modes 1 and 2 (a `u16` header
/// length; mode 2 decorates the number).
fn split_framed(data: &[u8]) -> Result<(Bytes, Bytes), json::DecodeError> {
    let (&mode, rest) = data.split_first().expect("a framed input has a mode byte");
    match mode % 4 {
        0 => json::split_body(&Bytes::copy_from_slice(rest), None),
        1 | 2 => {
            let n = u16::from_le_bytes([rest[0], rest[1]]);
            let text = if mode % 4 == 1 { n.to_string() } else { format!(" {n} ") };
            json::split_body(&Bytes::copy_from_slice(&rest[2..]), Some(&text))
        }
        _ => panic!("the seeds use framing modes 0 to 2 only"),
    }
}

/// The committed seeds (`seed-*`) of one target's corpus.
fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.file_name().unwrap().to_string_lossy().starts_with("seed-"))
        .map(|path| (path.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&path).unwrap()))
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds in {}", dir.display());
    out
}

#[test]
fn seed_corpus_decodes() {
    for (name, data) in seeds("json_request") {
        json::decode_request(&data, Bytes::new(), LIMITS).unwrap_or_else(|e| panic!("json_request/{name}: {e}"));
    }
    for (name, data) in seeds("binary_request") {
        let (head, binary) = split_framed(&data).unwrap_or_else(|e| panic!("binary_request/{name}: {e}"));
        json::decode_request(&head, binary, LIMITS).unwrap_or_else(|e| panic!("binary_request/{name}: {e}"));
    }
    for (name, data) in seeds("json_response") {
        let (head, binary) = split_framed(&data).unwrap_or_else(|e| panic!("json_response/{name}: {e}"));
        let decoded = json::decode_response(&head, binary, LIMITS);
        // One seed is the error body a server may send with status 200: it must be refused, and say why.
        if name == "seed-error-body" {
            assert!(decoded.unwrap_err().to_string().contains("model is not ready"));
        } else {
            decoded.unwrap_or_else(|e| panic!("json_response/{name}: {e}"));
        }
    }
    for (name, data) in seeds("grpc_request") {
        let message = pb::ModelInferRequest::decode(data.as_slice()).unwrap_or_else(|e| panic!("grpc_request/{name}: {e}"));
        grpc::decode_request(message, LIMITS).unwrap_or_else(|e| panic!("grpc_request/{name}: {e}"));
    }
    for (name, data) in seeds("grpc_response") {
        let message = pb::ModelInferResponse::decode(data.as_slice()).unwrap_or_else(|e| panic!("grpc_response/{name}: {e}"));
        grpc::decode_response(message, LIMITS).unwrap_or_else(|e| panic!("grpc_response/{name}: {e}"));
    }
    for (name, data) in seeds("model_metadata") {
        if name == "seed-grpc" {
            let message = pb::ModelMetadataResponse::decode(data.as_slice()).unwrap_or_else(|e| panic!("model_metadata/{name}: {e}"));
            model_metadata::from_grpc(message).unwrap_or_else(|e| panic!("model_metadata/{name}: {e}"));
        } else {
            model_metadata::from_json(&data).unwrap_or_else(|e| panic!("model_metadata/{name}: {e}"));
        }
    }
}

/// A request with one FP16 input holding the JSON array `data` (a flat one: its shape is its length).
fn fp16_request(data: &str) -> String {
    let len = data.split(',').count();
    format!(r#"{{"inputs":[{{"name":"h","datatype":"FP16","shape":[{len}],"data":{data}}}]}}"#)
}

/// Found by fuzz target `json_request` (its round-trip check; the input it found, minimized by hand:
/// `{"inputs":[{"name":"h","datatype":"FP16","shape":[3],"data":[0.5,-655043082,-0e-324]}]}`).
///
/// An integer literal beyond FP16's range (|v| >= 65520) is taken as an infinity, where the same value written as a
/// fraction (`70000.0`) is refused as out of range: `DataSink::push_int` in src/protocol/json.rs converts integers with
/// `half::f16::from_f64(v as f64)` and no range check (the fast path, `json_fast::push_number`, rightly gives up on the
/// infinity, and the serde path then accepts it). Responses (`json::decode_response`) go through the same code.
/// Fixed: `push_int`'s FP16 arm refuses an infinite result as `push_float` does.
#[test]
fn fp16_integer_out_of_range_is_refused() {
    for data in ["[70000]", "[-70000]", "[65520]", "[0.5,-655043082,-0e-324]", "[18446744073709551615]"] {
        match json::decode_request(fp16_request(data).as_bytes(), Bytes::new(), LIMITS) {
            Err(e) => assert!(e.to_string().contains("out of range for FP16"), "{data}: {e}"),
            Ok(req) => panic!("{data}: FP16 data out of range decoded to {:?}", req.inputs[0].tensor.data()),
        }
    }
}

/// The behaviour `fp16_integer_out_of_range_is_refused` asks of integers: what fractions and in-range integers get now.
#[test]
fn fp16_range_is_checked_for_fractions() {
    let err = json::decode_request(fp16_request("[70000.0]").as_bytes(), Bytes::new(), LIMITS).unwrap_err();
    assert!(err.to_string().contains("out of range for FP16"), "{err}");
    let ok = json::decode_request(fp16_request("[65504]").as_bytes(), Bytes::new(), LIMITS).unwrap();
    assert_eq!(ok.inputs[0].tensor.data().as_ref(), &0x7bffu16.to_le_bytes(), "65504 is FP16's largest finite value");
}

/// Found by reading the decoders while writing the fuzz targets (the fuzzers' 4 KiB inputs are too small to show it):
/// the duplicate-name checks compared each name with every earlier one, so a body of many distinctly named outputs
/// (or inputs) cost O(n²) — 40,000 outputs took 1.8 s (JSON) and 1.5 s (gRPC) of CPU in a release build, a 64 MiB body
/// hours. Fixed with `protocol::decode::SeenNames` (a hash set past a few names). Here: 200,000 names decode (fast, but
/// no timing is asserted: these machines are shared), and a duplicate among many is still found.
#[test]
fn many_outputs_decode_and_duplicates_among_them_are_found() {
    let n = 200_000;
    let outputs: Vec<String> = (0..n).map(|i| format!(r#"{{"name":"o{i}"}}"#)).collect();
    let body = format!(r#"{{"inputs":[],"outputs":[{}]}}"#, outputs.join(","));
    assert_eq!(json::decode_request(body.as_bytes(), Bytes::new(), LIMITS).unwrap().outputs.len(), n);
    let duplicate = format!(r#"{{"inputs":[],"outputs":[{},{{"name":"o123"}}]}}"#, outputs.join(","));
    assert!(json::decode_request(duplicate.as_bytes(), Bytes::new(), LIMITS).unwrap_err().to_string().contains("o123"));
    let message = |extra: Option<&str>| pb::ModelInferRequest {
        outputs: (0..n)
            .map(|i| format!("o{i}"))
            .chain(extra.map(str::to_string))
            .map(|name| pb::model_infer_request::InferRequestedOutputTensor { name, parameters: Default::default() })
            .collect(),
        ..Default::default()
    };
    assert_eq!(grpc::decode_request(message(None), LIMITS).unwrap().request.outputs.len(), n);
    assert!(grpc::decode_request(message(Some("o7")), LIMITS).err().expect("duplicate").to_string().contains("o7"));
}

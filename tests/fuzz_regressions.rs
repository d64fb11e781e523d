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

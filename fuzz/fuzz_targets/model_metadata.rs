//! A remote V2 server's model metadata, both ways it can come: the input read as the HTTP JSON answer
//! (`model_metadata::from_json`) and as a protobuf `ModelMetadataResponse` (`model_metadata::from_grpc`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use sluice::protocol::grpc::pb;
use sluice::protocol::model_metadata::{from_grpc, from_json};

fuzz_target!(|data: &[u8]| {
    let _ = from_json(data);
    if let Ok(message) = pb::ModelMetadataResponse::decode(data) {
        let _ = from_grpc(message);
    }
});

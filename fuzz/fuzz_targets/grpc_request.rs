//! The gRPC request decoder: arbitrary bytes read as a protobuf `ModelInferRequest` (as tonic would hand it to the
//! `ModelInfer` handler), then `grpc::decode_request`. A request that decodes must survive a round trip through
//! `grpc::encode_request` and the protobuf encoding unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use sluice::protocol::grpc::{decode_request, encode_request, pb};
use sluice_fuzz::LIMITS;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = pb::ModelInferRequest::decode(data) else { return };
    let Ok(decoded) = decode_request(message, LIMITS) else { return };
    let id = decoded.request.id.as_deref();
    let wire = encode_request(&decoded.model, decoded.version.as_deref(), id, &decoded.request.inputs).encode_to_vec();
    let message = pb::ModelInferRequest::decode(wire.as_slice()).expect("an encoded request parses");
    let again = decode_request(message, LIMITS).unwrap_or_else(|e| panic!("re-encoded request fails to decode: {e}"));
    assert_eq!(again.request.inputs, decoded.request.inputs, "inputs change on a round trip");
    assert_eq!((&again.model, &again.version, &again.request.id), (&decoded.model, &decoded.version, &decoded.request.id));
});

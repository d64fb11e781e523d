//! The client side of the gRPC codec: arbitrary bytes read as a remote server's `ModelInferResponse`, then
//! `grpc::decode_response`. Outputs that decode must survive a round trip through `grpc::encode_response` unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use sluice::protocol::grpc::{decode_response, encode_response, pb};
use sluice::protocol::InferResponse;
use sluice_fuzz::LIMITS;

fuzz_target!(|data: &[u8]| {
    let Ok(message) = pb::ModelInferResponse::decode(data) else { return };
    let (model_name, model_version) = (message.model_name.clone(), message.model_version.clone());
    let Ok(outputs) = decode_response(message, LIMITS) else { return };
    let response = InferResponse { model_name, model_version, id: None, outputs: outputs.clone(), cache: None };
    let wire = encode_response(response).encode_to_vec();
    let message = pb::ModelInferResponse::decode(wire.as_slice()).expect("an encoded response parses");
    let again = decode_response(message, LIMITS).unwrap_or_else(|e| panic!("re-encoded response fails to decode: {e}"));
    assert_eq!(again, outputs, "outputs change on a round trip");
});

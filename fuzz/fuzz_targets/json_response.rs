//! The client side of the JSON codec: a remote V2 server's HTTP answer (`json::decode_response`), with or without the
//! binary extension (body and header length fuzzed together, see `sluice_fuzz::frame`). A response that decodes must
//! survive a binary round trip through `json::encode_response` unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::protocol::json::{decode_response, encode_response, split_body, EncodeChoice};
use sluice::protocol::InferResponse;
use sluice_fuzz::{frame, split, LIMITS};

fuzz_target!(|data: &[u8]| {
    let framed = frame(data);
    let Ok((json, binary)) = split_body(&framed.body, framed.header_length.as_deref()) else { return };
    let Ok(decoded) = decode_response(&json, binary, LIMITS) else { return };
    let response = InferResponse {
        model_name: decoded.model_name.clone(),
        model_version: decoded.model_version.clone().unwrap_or_default(),
        id: decoded.id.clone(),
        outputs: decoded.outputs.clone(),
        cache: None,
    };
    let encoded = encode_response(&response, &EncodeChoice { binary: vec![true; response.outputs.len()] }).expect("a decoded response encodes");
    let (json, bin) = split(&encoded);
    let again = decode_response(&json, bin, LIMITS).unwrap_or_else(|e| panic!("re-encoded response fails to decode: {e}"));
    assert_eq!(again.outputs, decoded.outputs, "outputs change on a binary round trip");
    assert_eq!((&again.model_name, &again.id), (&decoded.model_name, &decoded.id));
});

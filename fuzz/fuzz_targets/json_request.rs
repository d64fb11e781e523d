//! The V2 JSON request decoder (a plain JSON body, no binary extension), as `POST /v2/models/{m}/infer` runs it.
//! Every request that decodes must survive a round trip: encoded again as JSON (and as binary) it decodes to the same
//! inputs.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use sluice::protocol::json::{decode_request, encode_request};
use sluice_fuzz::{split, LIMITS};

fuzz_target!(|data: &[u8]| {
    let Ok(request) = decode_request(data, Bytes::new(), LIMITS) else { return };
    for binary in [false, true] {
        let encoded = encode_request(&request.inputs, binary, request.params.binary_data_output).expect("a decoded request encodes");
        let (json, bin) = split(&encoded);
        let again = decode_request(&json, bin, LIMITS).unwrap_or_else(|e| panic!("re-encoded request (binary: {binary}) fails to decode: {e}"));
        assert_eq!(again.inputs, request.inputs, "inputs change on a round trip (binary: {binary})");
        assert_eq!(again.params.binary_data_output, request.params.binary_data_output);
    }
});

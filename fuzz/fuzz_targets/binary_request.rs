//! The HTTP request path with the binary tensor data extension: `split_body` on the body and the
//! `Inference-Header-Content-Length` header (both fuzzed, see `sluice_fuzz::frame`), then the JSON decoder with the
//! binary tail. A request that decodes must survive a binary round trip unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::protocol::json::{decode_request, encode_request, split_body};
use sluice_fuzz::{frame, split, LIMITS};

fuzz_target!(|data: &[u8]| {
    let framed = frame(data);
    let Ok((json, binary)) = split_body(&framed.body, framed.header_length.as_deref()) else { return };
    let Ok(request) = decode_request(&json, binary, LIMITS) else { return };
    // Binary only: tensors that came binary may hold what JSON cannot say exactly (NaN, non-UTF-8 BYTES, BOOL 2).
    let encoded = encode_request(&request.inputs, true, request.params.binary_data_output).expect("a decoded request encodes");
    let (json, bin) = split(&encoded);
    let again = decode_request(&json, bin, LIMITS).unwrap_or_else(|e| panic!("re-encoded request fails to decode: {e}"));
    assert_eq!(again.inputs, request.inputs, "inputs change on a binary round trip");
});

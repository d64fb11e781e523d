//! Property tests: joining tensors along dim 0 and splitting them back is exact for every data type and shape,
//! and the JSON and binary codecs round-trip every data type.

use bytes::Bytes;
use proptest::prelude::*;
use sluice::protocol::json::{decode_request, encode_response, DecodeLimits, EncodeChoice};
use sluice::protocol::{InferResponse, NamedTensor};
use sluice::tensor::{DataType, Tensor};

fn dtype() -> impl Strategy<Value = DataType> {
    prop::sample::select(DataType::ALL.to_vec())
}

/// A tensor of `rows` rows with the given trailing dims and random contents valid for its dtype.
fn tensor_with(dtype: DataType, rows: usize, tail: Vec<usize>, seed: Vec<u8>) -> Tensor {
    let mut shape = vec![rows];
    shape.extend(tail);
    let n: usize = shape.iter().product();
    let byte = |i: usize| seed.get(i % seed.len().max(1)).copied().unwrap_or(7).wrapping_add(i as u8);
    match dtype {
        DataType::Bytes => {
            let items: Vec<Vec<u8>> = (0..n).map(|i| (0..(byte(i) % 5) as usize).map(|j| b'a' + byte(i + j) % 26).collect()).collect();
            Tensor::from_byte_strings(shape, &items).unwrap()
        }
        DataType::Bool => Tensor::new(dtype, shape, Bytes::from((0..n).map(|i| byte(i) % 2).collect::<Vec<_>>())).unwrap(),
        // Finite floats only, so that JSON (which has no NaN) can carry them.
        DataType::F16 => Tensor::from_slice(dtype, shape, &(0..n).map(|i| half::f16::from_f32(byte(i) as f32 / 8.0 - 3.0)).collect::<Vec<_>>()).unwrap(),
        DataType::F32 => Tensor::from_slice(dtype, shape, &(0..n).map(|i| byte(i) as f32 * 1.37 - 100.0).collect::<Vec<_>>()).unwrap(),
        DataType::F64 => Tensor::from_slice(dtype, shape, &(0..n).map(|i| byte(i) as f64 * -2.71 + 0.5).collect::<Vec<_>>()).unwrap(),
        other => {
            let size = other.element_size().unwrap();
            Tensor::new(other, shape, Bytes::from((0..n * size).map(byte).collect::<Vec<_>>())).unwrap()
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn concat_then_split_is_identity(
        dtype in dtype(),
        rows in prop::collection::vec(1usize..5, 1..6),
        tail in prop::collection::vec(0usize..4, 0..3),
        seed in prop::collection::vec(any::<u8>(), 1..32),
    ) {
        let parts: Vec<Tensor> = rows.iter().enumerate()
            .map(|(i, &r)| tensor_with(dtype, r, tail.clone(), seed.iter().map(|b| b.wrapping_add(i as u8)).collect()))
            .collect();
        let joined = Tensor::concat(&parts.iter().collect::<Vec<_>>()).unwrap();
        prop_assert_eq!(joined.shape()[0], rows.iter().sum::<usize>());
        prop_assert_eq!(joined.data().len(), parts.iter().map(|p| p.data().len()).sum::<usize>());
        let back = joined.split(&rows).unwrap();
        prop_assert_eq!(back, parts);
    }

    #[test]
    fn mismatched_trailing_dims_never_join(dtype in dtype(), a in 1usize..4, b in 1usize..4, seed in prop::collection::vec(any::<u8>(), 1..8)) {
        prop_assume!(a != b);
        let x = tensor_with(dtype, 1, vec![a], seed.clone());
        let y = tensor_with(dtype, 1, vec![b], seed);
        prop_assert!(Tensor::concat(&[&x, &y]).is_err());
    }

    #[test]
    fn json_and_binary_codecs_round_trip(
        dtype in dtype(),
        rows in 1usize..4,
        tail in prop::collection::vec(1usize..4, 0..2),
        seed in prop::collection::vec(any::<u8>(), 1..16),
        binary in any::<bool>(),
    ) {
        let t = tensor_with(dtype, rows, tail, seed);
        let response = InferResponse {
            model_name: "m".into(),
            model_version: "1".into(),
            id: Some("x".into()),
            outputs: vec![NamedTensor { name: "t".into(), tensor: t.clone() }],
            cache: None,
        };
        let encoded = encode_response(&response, &EncodeChoice { binary: vec![binary] }).unwrap();
        // Turn the response's output into a request input and decode it with the request decoder.
        let (json_part, binary_part) = match encoded.json_header_length {
            Some(n) => (encoded.body.slice(..n), encoded.body.slice(n..)),
            None => (encoded.body.clone(), Bytes::new()),
        };
        let value: serde_json::Value = serde_json::from_slice(&json_part).unwrap();
        let request = serde_json::json!({ "inputs": value["outputs"] });
        let decoded = decode_request(&serde_json::to_vec(&request).unwrap(), binary_part, DecodeLimits::default()).unwrap();
        prop_assert_eq!(&decoded.inputs[0].tensor, &t);
    }
}

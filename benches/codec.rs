//! Codec throughput: V2 JSON and binary-extension request decoding and response encoding, in MB/s of tensor data.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sluice::protocol::json::{decode_request, encode_response, DecodeLimits, EncodeChoice};
use sluice::protocol::{InferResponse, NamedTensor};
use sluice::tensor::{DataType, Tensor};

fn tensor(rows: usize) -> Tensor {
    let values: Vec<f32> = (0..rows * 512).map(|i| (i % 1000) as f32 * 0.001 - 0.5).collect();
    Tensor::from_slice(DataType::F32, vec![rows, 512], &values).unwrap()
}

fn bench_codec(c: &mut Criterion) {
    let t = tensor(16);
    let data_bytes = t.data().len() as u64;
    let response = InferResponse {
        model_name: "wide".into(),
        model_version: "1".into(),
        id: None,
        outputs: vec![NamedTensor { name: "input".into(), tensor: t.clone() }],
        cache: None,
    };
    let json = encode_response(&response, &EncodeChoice { binary: vec![false] }).unwrap().body;
    let json_value: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let json_request = serde_json::to_vec(&serde_json::json!({ "inputs": json_value["outputs"] })).unwrap();
    let bin = encode_response(&response, &EncodeChoice { binary: vec![true] }).unwrap();
    let n = bin.json_header_length.unwrap();
    let bin_value: serde_json::Value = serde_json::from_slice(&bin.body[..n]).unwrap();
    let bin_header = serde_json::to_vec(&serde_json::json!({ "inputs": bin_value["outputs"] })).unwrap();
    let bin_data = bin.body.slice(n..);

    let mut g = c.benchmark_group("codec_fp32_16x512");
    g.throughput(Throughput::Bytes(data_bytes));
    g.bench_function("decode_json", |b| {
        b.iter(|| decode_request(&json_request, Bytes::new(), DecodeLimits::default()).unwrap())
    });
    g.bench_function("decode_binary", |b| {
        b.iter(|| decode_request(&bin_header, bin_data.clone(), DecodeLimits::default()).unwrap())
    });
    g.bench_function("encode_json", |b| b.iter(|| encode_response(&response, &EncodeChoice { binary: vec![false] }).unwrap()));
    g.bench_function("encode_binary", |b| b.iter(|| encode_response(&response, &EncodeChoice { binary: vec![true] }).unwrap()));
    g.finish();
}

criterion_group!(benches, bench_codec);
criterion_main!(benches);

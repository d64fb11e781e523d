//! The V2 JSON codec with Triton's binary tensor data extension.
//!
//! A request body is either plain JSON, or (binary extension) a JSON header of `Inference-Header-Content-Length`
//! bytes followed by the raw bytes of every input that declares `parameters.binary_data_size`, in input order.
//! JSON `data` is parsed straight into tensor bytes (nested or flat arrays alike), after the datatype and shape are known.

use super::types::{InferRequest, InferResponse, NamedTensor, RequestParams, RequestedOutput};
use super::decode::{append_integer, checked_shape, parse_datatype, OutOfRange};
pub use super::decode::{DecodeError, DecodeLimits};
use crate::tensor::{append_byte_string, DataType, Tensor};
use bytes::{Bytes, BytesMut};
use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

#[derive(Deserialize)]
struct WireRequest<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default, borrow)]
    parameters: Option<HashMap<String, &'a RawValue>>,
    #[serde(borrow)]
    inputs: Vec<WireInput<'a>>,
    #[serde(default, borrow)]
    outputs: Option<Vec<WireOutput<'a>>>,
}

#[derive(Deserialize)]
struct WireInput<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default, borrow)]
    parameters: Option<HashMap<String, &'a RawValue>>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct WireOutput<'a> {
    name: String,
    #[serde(default, borrow)]
    parameters: Option<HashMap<String, &'a RawValue>>,
}

fn param<'a, T: Deserialize<'a>>(params: &Option<HashMap<String, &'a RawValue>>, name: &str) -> Result<Option<T>, DecodeError> {
    match params.as_ref().and_then(|p| p.get(name)) {
        None => Ok(None),
        Some(raw) => serde_json::from_str::<Option<T>>(raw.get())
            .map_err(|e| DecodeError::Parameter { name: name.to_string(), message: format!("{e} (got {})", raw.get()) }),
    }
}

/// Splits a request body into its JSON header and binary section, using the `Inference-Header-Content-Length` value.
pub fn split_body(body: &Bytes, header_length: Option<&str>) -> Result<(Bytes, Bytes), DecodeError> {
    match header_length {
        None => Ok((body.clone(), Bytes::new())),
        Some(text) => {
            let n: usize = text.trim().parse().map_err(|_| DecodeError::HeaderLength(format!("'{text}' is not a byte count")))?;
            if n > body.len() {
                return Err(DecodeError::HeaderLength(format!("{n} is larger than the {}-byte body", body.len())));
            }
            Ok((body.slice(..n), body.slice(n..)))
        }
    }
}

/// Decodes a V2 inference request: `json` is the JSON part, `binary` the bytes after it (empty without the extension).
pub fn decode_request(json: &[u8], binary: Bytes, limits: DecodeLimits) -> Result<InferRequest, DecodeError> {
    let wire: WireRequest<'_> = serde_json::from_slice(json).map_err(|e| DecodeError::Json(e.to_string()))?;

    let mut params = RequestParams {
        binary_data_output: param::<bool>(&wire.parameters, "binary_data_output")?.unwrap_or(false),
        ..RequestParams::default()
    };
    if let Some(p) = param::<u32>(&wire.parameters, "priority")? {
        params.priority = (p > 0).then_some(p);
    }
    // `timeout` is in microseconds, as Triton's clients send it.
    if let Some(us) = param::<u64>(&wire.parameters, "timeout")? {
        params.timeout = (us > 0).then(|| Duration::from_micros(us));
    }
    params.cache = param::<bool>(&wire.parameters, "cache")?;

    let mut inputs = Vec::with_capacity(wire.inputs.len());
    let mut binary_at = 0usize;
    for input in &wire.inputs {
        if inputs.iter().any(|t: &NamedTensor| t.name == input.name) {
            return Err(DecodeError::DuplicateInput(input.name.clone()));
        }
        let dtype = parse_datatype(&input.name, &input.datatype)?;
        let (shape, count) = checked_shape(&input.name, input.shape.iter().map(|&d| d as i128), limits)?;
        let binary_size = param::<u64>(&input.parameters, "binary_data_size")
            .map_err(|e| DecodeError::Data { name: input.name.clone(), message: e.to_string() })?;
        let bytes = match (input.data, binary_size) {
            (Some(_), Some(_)) => return Err(DecodeError::BothData { name: input.name.clone() }),
            (None, None) => return Err(DecodeError::NoData { name: input.name.clone() }),
            (None, Some(size)) => {
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                let left = binary.len() - binary_at;
                if size > left {
                    return Err(DecodeError::BinaryShort { name: input.name.clone(), size, left });
                }
                let slice = binary.slice(binary_at..binary_at + size);
                binary_at += size;
                slice
            }
            (Some(raw), None) => decode_data(&input.name, dtype, count, raw)?,
        };
        let tensor = Tensor::new(dtype, shape, bytes).map_err(|source| DecodeError::Tensor { name: input.name.clone(), source })?;
        inputs.push(NamedTensor { name: input.name.clone(), tensor });
    }
    if binary_at != binary.len() {
        return Err(DecodeError::BinaryLeftover(binary.len() - binary_at));
    }

    let mut outputs: Vec<RequestedOutput> = Vec::new();
    for out in wire.outputs.iter().flatten() {
        if outputs.iter().any(|o| o.name == out.name) {
            return Err(DecodeError::DuplicateOutput(out.name.clone()));
        }
        if param::<serde_json::Value>(&out.parameters, "classification")?.is_some() {
            return Err(DecodeError::Parameter {
                name: "classification".into(),
                message: format!("output '{}': the classification extension is not supported", out.name),
            });
        }
        outputs.push(RequestedOutput { name: out.name.clone(), binary_data: param::<bool>(&out.parameters, "binary_data")? });
    }
    Ok(InferRequest { id: wire.id, inputs, outputs, params })
}

/// Parses a JSON `data` value (flat or nested arrays) of `dtype` into V2 tensor bytes.
fn decode_data(name: &str, dtype: DataType, expected: usize, raw: &RawValue) -> Result<Bytes, DecodeError> {
    if let Some(bytes) = super::json_fast::decode_numbers(raw.get(), dtype, expected) {
        return Ok(bytes.freeze());
    }
    let capacity = dtype.element_size().map(|s| s * expected).unwrap_or(0);
    let mut sink = DataSink { dtype, expected, count: 0, buf: BytesMut::with_capacity(capacity), error: None };
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let result = (&mut sink).deserialize(&mut de);
    if let Some(message) = sink.error.take() {
        return Err(DecodeError::Data { name: name.to_string(), message });
    }
    result.map_err(|e| DecodeError::Data { name: name.to_string(), message: format!("bad 'data': {e}") })?;
    if sink.count != expected {
        return Err(DecodeError::Data {
            name: name.to_string(),
            message: format!("'data' holds {} elements but the shape needs {expected}", sink.count),
        });
    }
    Ok(sink.buf.freeze())
}

/// Receives JSON scalars in document order and appends them as `dtype` bytes.
struct DataSink {
    dtype: DataType,
    expected: usize,
    count: usize,
    buf: BytesMut,
    /// A precise message for the first problem (serde's own message would be generic).
    error: Option<String>,
}

impl DataSink {
    fn fail<E: serde::de::Error>(&mut self, message: String) -> E {
        let err = E::custom(&message);
        self.error.get_or_insert(message);
        err
    }

    fn admit<E: serde::de::Error>(&mut self) -> Result<(), E> {
        self.count += 1;
        if self.count > self.expected {
            return Err(self.fail(format!("'data' holds more elements than the shape's {}", self.expected)));
        }
        Ok(())
    }

    fn push_int<E: serde::de::Error>(&mut self, v: i128) -> Result<(), E> {
        self.admit()?;
        match append_integer(&mut self.buf, self.dtype, v) {
            Ok(true) => {}
            Err(OutOfRange) => return Err(self.fail(format!("value {v} is out of range for {}", self.dtype))),
            Ok(false) => match self.dtype {
                DataType::F16 => self.buf.extend_from_slice(&half::f16::from_f64(v as f64).to_le_bytes()),
                DataType::F32 => self.buf.extend_from_slice(&(v as f32).to_le_bytes()),
                DataType::F64 => self.buf.extend_from_slice(&(v as f64).to_le_bytes()),
                DataType::Bool => return Err(self.fail(format!("BOOL data must be true or false, got {v}"))),
                _ => return Err(self.fail(format!("BYTES data must be strings, got {v}"))),
            },
        }
        Ok(())
    }

    fn push_float<E: serde::de::Error>(&mut self, v: f64) -> Result<(), E> {
        self.admit()?;
        let out_of_range = |narrowed_is_infinite: bool| v.is_finite() && narrowed_is_infinite;
        match self.dtype {
            DataType::F16 if out_of_range(half::f16::from_f64(v).is_infinite()) => {}
            DataType::F32 if out_of_range((v as f32).is_infinite()) => {}
            DataType::F16 => {
                self.buf.extend_from_slice(&half::f16::from_f64(v).to_le_bytes());
                return Ok(());
            }
            DataType::F32 => {
                self.buf.extend_from_slice(&(v as f32).to_le_bytes());
                return Ok(());
            }
            DataType::F64 => {
                self.buf.extend_from_slice(&v.to_le_bytes());
                return Ok(());
            }
            // serde_json reads integer literals beyond 64 bits as floats: those are out of range, not fractions.
            other if v.fract() == 0.0 => return Err(self.fail(format!("a value of about {v:e} is out of range for {other}"))),
            other => return Err(self.fail(format!("{other} data must be whole numbers, got {v}"))),
        }
        Err(self.fail(format!("a value of about {v:e} is out of range for {}", self.dtype)))
    }
}

impl<'de> DeserializeSeed<'de> for &mut DataSink {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for &mut DataSink {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an array of {} values", self.dtype)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(&mut *self)?.is_some() {}
        Ok(())
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<(), E> {
        if self.dtype != DataType::Bool {
            return Err(self.fail(format!("{} data cannot hold the boolean {v}", self.dtype)));
        }
        self.admit()?;
        self.buf.extend_from_slice(&[v as u8]);
        Ok(())
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<(), E> {
        self.push_int(v as i128)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.push_int(v as i128)
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<(), E> {
        self.push_float(v)
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        if self.dtype != DataType::Bytes {
            return Err(self.fail(format!("{} data cannot hold the string \"{}\"", self.dtype, v.chars().take(32).collect::<String>())));
        }
        self.admit()?;
        append_byte_string(&mut self.buf, v.as_bytes()).map_err(|e| self.fail(e.to_string()))
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Err(self.fail(format!("null is not a {} value", self.dtype)))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, _map: A) -> Result<(), A::Error> {
        Err(self.fail(format!("an object is not a {} value", self.dtype)))
    }
}

/// How each output of a response is to be sent.
pub struct EncodeChoice {
    /// One flag per output of the response, in order: true = binary extension.
    pub binary: Vec<bool>,
}

impl EncodeChoice {
    /// Resolves per-output `binary_data` against the request-level `binary_data_output` default.
    pub fn for_request(request_outputs: &[RequestedOutput], params: &RequestParams, response: &InferResponse) -> EncodeChoice {
        let binary = response
            .outputs
            .iter()
            .map(|out| {
                request_outputs
                    .iter()
                    .find(|r| r.name == out.name)
                    .and_then(|r| r.binary_data)
                    .unwrap_or(params.binary_data_output)
            })
            .collect();
        EncodeChoice { binary }
    }
}

/// An encoded response body: the JSON header length is `Some` when binary data follows it.
pub struct EncodedResponse {
    pub body: Bytes,
    pub json_header_length: Option<usize>,
}

/// Encodes a response as V2 JSON, appending binary outputs after the JSON when `choice` asks for them.
/// Written by hand: the numeric data is the bulk of the body and is formatted straight into the buffer.
pub fn encode_response(response: &InferResponse, choice: &EncodeChoice) -> Result<EncodedResponse, serde_json::Error> {
    let mut out = Vec::with_capacity(256 + response.outputs.iter().map(|o| o.tensor.data().len() * 3).sum::<usize>());
    out.extend_from_slice(b"{\"model_name\":");
    serde_json::to_writer(&mut out, &response.model_name)?;
    out.extend_from_slice(b",\"model_version\":");
    serde_json::to_writer(&mut out, &response.model_version)?;
    if let Some(id) = &response.id {
        out.extend_from_slice(b",\"id\":");
        serde_json::to_writer(&mut out, id)?;
    }
    out.extend_from_slice(b",\"outputs\":[");
    for (i, (t, &binary)) in response.outputs.iter().zip(&choice.binary).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"name\":");
        serde_json::to_writer(&mut out, &t.name)?;
        out.extend_from_slice(b",\"datatype\":\"");
        out.extend_from_slice(t.tensor.dtype().v2_name().as_bytes());
        out.extend_from_slice(b"\",\"shape\":");
        serde_json::to_writer(&mut out, t.tensor.shape())?;
        if binary {
            out.extend_from_slice(format!(",\"parameters\":{{\"binary_data_size\":{}}}}}", t.tensor.data().len()).as_bytes());
        } else {
            out.extend_from_slice(b",\"data\":");
            super::json_fast::write_data(&mut out, &t.tensor)?;
            out.push(b'}');
        }
    }
    out.extend_from_slice(b"]}");
    if !choice.binary.iter().any(|&b| b) {
        return Ok(EncodedResponse { body: Bytes::from(out), json_header_length: None });
    }
    let header_len = out.len();
    for (t, _) in response.outputs.iter().zip(&choice.binary).filter(|(_, &b)| b) {
        out.extend_from_slice(t.tensor.data());
    }
    Ok(EncodedResponse { body: Bytes::from(out), json_header_length: Some(header_len) })
}

/// Writes a tensor's elements as a flat JSON array (the V2 `data` field).
pub fn write_tensor_data(out: &mut Vec<u8>, t: &Tensor) -> Result<(), serde_json::Error> {
    super::json_fast::write_data(out, t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(json: &str) -> Result<InferRequest, DecodeError> {
        decode_request(json.as_bytes(), Bytes::new(), DecodeLimits::default())
    }

    #[test]
    fn nested_and_flat_data_decode_alike() {
        let flat = decode(r#"{"inputs":[{"name":"x","shape":[2,2],"datatype":"INT32","data":[1,2,3,4]}]}"#).unwrap();
        let nested = decode(r#"{"inputs":[{"name":"x","datatype":"INT32","data":[[1,2],[3,4]],"shape":[2,2]}]}"#).unwrap();
        assert_eq!(flat.inputs, nested.inputs);
    }

    #[test]
    fn range_and_type_errors_name_the_problem() {
        let err = decode(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT8","data":[300]}]}"#).unwrap_err();
        assert!(err.to_string().contains("300 is out of range for INT8"), "{err}");
        let err = decode(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"INT32","data":[1.5]}]}"#).unwrap_err();
        assert!(err.to_string().contains("whole numbers"), "{err}");
        let err = decode(r#"{"inputs":[{"name":"x","shape":[3],"datatype":"FP32","data":[1,2]}]}"#).unwrap_err();
        assert!(err.to_string().contains("holds 2 elements but the shape needs 3"), "{err}");
    }

    #[test]
    fn binary_extension_takes_bytes_in_order() {
        let json = r#"{"inputs":[{"name":"a","shape":[2],"datatype":"INT16","parameters":{"binary_data_size":4}},
                                {"name":"b","shape":[1],"datatype":"UINT8","parameters":{"binary_data_size":1}}]}"#;
        let req = decode_request(json.as_bytes(), Bytes::from_static(&[1, 0, 2, 0, 9]), DecodeLimits::default()).unwrap();
        assert_eq!(req.inputs[0].tensor.data().as_ref(), &[1, 0, 2, 0]);
        assert_eq!(req.inputs[1].tensor.data().as_ref(), &[9]);
        let err = decode_request(json.as_bytes(), Bytes::from_static(&[1, 0, 2, 0, 9, 9]), DecodeLimits::default()).unwrap_err();
        assert!(matches!(err, DecodeError::BinaryLeftover(1)));
    }
}

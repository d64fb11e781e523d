//! The V2 JSON codec with Triton's binary tensor data extension, both ways round: the server decodes requests and
//! encodes responses; the remote backend, a client of another V2 server, encodes requests and decodes responses.
//!
//! A body is either plain JSON, or (binary extension) a JSON header of `Inference-Header-Content-Length` bytes followed
//! by the raw bytes of every tensor that declares `parameters.binary_data_size`, in tensor order.
//! JSON `data` is parsed straight into tensor bytes (nested or flat arrays alike), after the datatype and shape are known.

use super::types::{InferRequest, InferResponse, NamedTensor, RequestParams, RequestedOutput};
use super::decode::{append_integer, checked_shape, parse_datatype, OutOfRange};
pub use super::decode::{DecodeError, DecodeLimits, Role};
use crate::tensor::{append_byte_string, DataType, Tensor};
use bytes::{Bytes, BytesMut};
use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;
use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

type WireParams<'a> = Option<HashMap<String, &'a RawValue>>;

#[derive(Deserialize)]
struct WireRequest<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default, borrow)]
    parameters: WireParams<'a>,
    #[serde(borrow)]
    inputs: Vec<WireTensor<'a>>,
    #[serde(default, borrow)]
    outputs: Option<Vec<WireOutput<'a>>>,
}

/// A tensor as a request's `inputs` and a response's `outputs` both carry it.
#[derive(Deserialize)]
struct WireTensor<'a> {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default, borrow)]
    parameters: WireParams<'a>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct WireOutput<'a> {
    name: String,
    #[serde(default, borrow)]
    parameters: WireParams<'a>,
}

/// A V2 inference response. The fields are optional here so that a missing one gets a message of its own.
#[derive(Deserialize)]
struct WireResponse<'a> {
    #[serde(default)]
    model_name: Option<String>,
    #[serde(default)]
    model_version: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default, borrow)]
    outputs: Option<Vec<WireTensor<'a>>>,
    /// Not part of a successful response: read only to explain a body without outputs (an error body sent with 200).
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
}

/// A decoded V2 inference response, as a remote V2 server sent it.
#[derive(Clone, Debug, PartialEq)]
pub struct DecodedResponse {
    pub model_name: String,
    pub model_version: Option<String>,
    pub id: Option<String>,
    pub outputs: Vec<NamedTensor>,
}

fn param<'a, T: Deserialize<'a>>(params: &WireParams<'a>, name: &str) -> Result<Option<T>, DecodeError> {
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
    let params = request_params(&wire.parameters)?;
    let inputs = decode_tensors(Role::Input, &wire.inputs, binary, limits)?;
    let outputs = requested_outputs(wire.outputs.as_deref().unwrap_or_default())?;
    Ok(InferRequest { id: wire.id, inputs, outputs, params })
}

/// The request-level parameters Sluice acts on; the protocol lets unknown ones through.
fn request_params(wire: &WireParams<'_>) -> Result<RequestParams, DecodeError> {
    let mut params = RequestParams {
        binary_data_output: param::<bool>(wire, "binary_data_output")?.unwrap_or(false),
        ..RequestParams::default()
    };
    if let Some(p) = param::<u32>(wire, "priority")? {
        params.priority = (p > 0).then_some(p);
    }
    // `timeout` is in microseconds, as Triton's clients send it.
    if let Some(us) = param::<u64>(wire, "timeout")? {
        params.timeout = (us > 0).then(|| Duration::from_micros(us));
    }
    params.cache = param::<bool>(wire, "cache")?;
    Ok(params)
}

fn requested_outputs(wire: &[WireOutput<'_>]) -> Result<Vec<RequestedOutput>, DecodeError> {
    let mut outputs: Vec<RequestedOutput> = Vec::with_capacity(wire.len());
    let mut seen = super::decode::SeenNames::default();
    for out in wire {
        if !seen.first(&out.name) {
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
    Ok(outputs)
}

/// Decodes a V2 inference response from a remote server: `json` is the JSON part, `binary` the bytes after it (empty
/// without the extension). Binary outputs slice `binary`, they are not copied.
pub fn decode_response(json: &[u8], binary: Bytes, limits: DecodeLimits) -> Result<DecodedResponse, DecodeError> {
    let wire: WireResponse<'_> = serde_json::from_slice(json).map_err(|e| DecodeError::Response(e.to_string()))?;
    let WireResponse { model_name, model_version, id, outputs, error } = wire;
    let Some(outputs) = outputs else {
        let said = error.map(|e| format!("; the body says: {}", e.get().chars().take(256).collect::<String>())).unwrap_or_default();
        return Err(DecodeError::Response(format!("it has no 'outputs' (a V2 inference response lists its output tensors there){said}")));
    };
    let model_name = model_name.ok_or_else(|| DecodeError::Response("it has no 'model_name'".into()))?;
    let outputs = decode_tensors(Role::Output, &outputs, binary, limits)?;
    Ok(DecodedResponse { model_name, model_version, id, outputs })
}

/// Decodes the tensors of a request or a response. Binary tensors take their bytes from `binary` in order (slices, not
/// copies), and every byte of `binary` must be claimed.
fn decode_tensors(role: Role, wire: &[WireTensor<'_>], binary: Bytes, limits: DecodeLimits) -> Result<Vec<NamedTensor>, DecodeError> {
    let mut tensors: Vec<NamedTensor> = Vec::with_capacity(wire.len());
    let mut binary_at = 0usize;
    let mut seen = super::decode::SeenNames::default();
    for t in wire {
        if !seen.first(&t.name) {
            return Err(DecodeError::Duplicate { role, name: t.name.clone() });
        }
        let tensor = decode_tensor(role, t, &binary, &mut binary_at, limits)?;
        tensors.push(NamedTensor { name: t.name.clone(), tensor });
    }
    if binary_at != binary.len() {
        return Err(DecodeError::BinaryLeftover { role, bytes: binary.len() - binary_at });
    }
    Ok(tensors)
}

/// One tensor: datatype and shape first (checked before anything is allocated), then its bytes from the binary
/// section or from JSON `data`, whichever it declares.
fn decode_tensor(role: Role, t: &WireTensor<'_>, binary: &Bytes, binary_at: &mut usize, limits: DecodeLimits) -> Result<Tensor, DecodeError> {
    let name = &t.name;
    let dtype = parse_datatype(role, name, &t.datatype)?;
    let (shape, count) = checked_shape(role, name, t.shape.iter().map(|&d| d as i128), limits)?;
    let binary_size = param::<u64>(&t.parameters, "binary_data_size")
        .map_err(|e| DecodeError::Data { role, name: name.clone(), message: e.to_string() })?;
    let bytes = match (t.data, binary_size) {
        (Some(_), Some(_)) => return Err(DecodeError::BothData { role, name: name.clone() }),
        (None, None) => return Err(DecodeError::NoData { role, name: name.clone() }),
        (None, Some(size)) => take_binary(role, name, binary, binary_at, size)?,
        (Some(raw), None) => decode_data(role, name, dtype, count, raw)?,
    };
    Tensor::new(dtype, shape, bytes).map_err(|source| DecodeError::Tensor { role, name: name.clone(), source })
}

/// The next `size` bytes of the binary section, as a slice of it.
fn take_binary(role: Role, name: &str, binary: &Bytes, binary_at: &mut usize, size: u64) -> Result<Bytes, DecodeError> {
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    let left = binary.len() - *binary_at;
    if size > left {
        return Err(DecodeError::BinaryShort { role, name: name.to_string(), size, left });
    }
    let slice = binary.slice(*binary_at..*binary_at + size);
    *binary_at += size;
    Ok(slice)
}

/// Parses a JSON `data` value (flat or nested arrays) of `dtype` into V2 tensor bytes.
fn decode_data(role: Role, name: &str, dtype: DataType, expected: usize, raw: &RawValue) -> Result<Bytes, DecodeError> {
    if let Some(bytes) = super::json_fast::decode_numbers(raw.get(), dtype, expected) {
        return Ok(bytes.freeze());
    }
    // Every element takes at least one character of text: a tiny body cannot make this allocate for a huge shape.
    let capacity = dtype.element_size().map(|s| s * expected.min(raw.get().len())).unwrap_or(0);
    let mut sink = DataSink {
        dtype,
        expected,
        count: 0,
        buf: BytesMut::with_capacity(capacity),
        null_is_nan: role == Role::Output,
        error: None,
    };
    let data_err = |message: String| DecodeError::Data { role, name: name.to_string(), message };
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let result = (&mut sink).deserialize(&mut de);
    if let Some(message) = sink.error.take() {
        return Err(data_err(message));
    }
    result.map_err(|e| data_err(format!("bad 'data': {e}")))?;
    if sink.count != expected {
        return Err(data_err(format!("'data' holds {} elements but the shape needs {expected}", sink.count)));
    }
    Ok(sink.buf.freeze())
}

/// Receives JSON scalars in document order and appends them as `dtype` bytes.
struct DataSink {
    dtype: DataType,
    expected: usize,
    count: usize,
    buf: BytesMut,
    /// JSON has no NaN or infinity, and V2 servers (Sluice among them, like serde_json) write them as `null`: in a
    /// response, `null` in float data reads back as NaN (an infinity comes back as NaN; the text no longer says which).
    /// A request's `null` stays an error: there it is far more likely a client's bug than a NaN.
    null_is_nan: bool,
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
                DataType::F16 => {
                    // Beyond ±65504 an integer would round to an infinity; refused as for fractions (found by fuzzing).
                    let h = half::f16::from_f64(v as f64);
                    if h.is_infinite() {
                        return Err(self.fail(format!("a value of about {:e} is out of range for FP16", v as f64)));
                    }
                    self.buf.extend_from_slice(&h.to_le_bytes())
                }
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
        if self.null_is_nan && matches!(self.dtype, DataType::F16 | DataType::F32 | DataType::F64) {
            return self.push_float(f64::NAN);
        }
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

/// An encoded request or response body. The JSON header length is `Some` when binary data follows the JSON; it goes in
/// the `Inference-Header-Content-Length` header.
pub struct EncodedBody {
    pub body: Bytes,
    pub json_header_length: Option<usize>,
}

/// Encodes a response as V2 JSON, appending binary outputs after the JSON when `choice` asks for them.
/// Written by hand: the numeric data is the bulk of the body and is formatted straight into the buffer.
pub fn encode_response(response: &InferResponse, choice: &EncodeChoice) -> Result<EncodedBody, serde_json::Error> {
    let tensors = || response.outputs.iter().zip(choice.binary.iter().copied());
    let mut out = Vec::with_capacity(body_capacity(tensors()));
    out.extend_from_slice(b"{\"model_name\":");
    serde_json::to_writer(&mut out, &response.model_name)?;
    out.extend_from_slice(b",\"model_version\":");
    serde_json::to_writer(&mut out, &response.model_version)?;
    if let Some(id) = &response.id {
        out.extend_from_slice(b",\"id\":");
        serde_json::to_writer(&mut out, id)?;
    }
    out.extend_from_slice(b",\"outputs\":");
    write_tensors(&mut out, tensors())?;
    out.push(b'}');
    Ok(with_binary_section(out, tensors()))
}

/// Encodes a V2 inference request for `inputs` (every output requested), as JSON `data` or, with `binary`, as a JSON
/// header followed by the tensors' bytes. `binary_output` asks the server to send every output back binary
/// (`binary_data_output`), which spares both ends writing and parsing numbers as text.
/// The binary section is copied once into the body, which must be contiguous; nothing else is.
pub fn encode_request(inputs: &[NamedTensor], binary: bool, binary_output: bool) -> Result<EncodedBody, serde_json::Error> {
    let tensors = || inputs.iter().map(|t| (t, binary));
    let mut out = Vec::with_capacity(body_capacity(tensors()));
    out.push(b'{');
    if binary_output {
        out.extend_from_slice(b"\"parameters\":{\"binary_data_output\":true},");
    }
    out.extend_from_slice(b"\"inputs\":");
    write_tensors(&mut out, tensors())?;
    out.push(b'}');
    Ok(with_binary_section(out, tensors()))
}

/// A guess at a body's size that is rarely short: binary tensors go as they are, JSON numbers take about 3 characters
/// per byte of tensor data.
fn body_capacity<'a>(tensors: impl Iterator<Item = (&'a NamedTensor, bool)>) -> usize {
    256 + tensors.map(|(t, binary)| 96 + t.name.len() + if binary { t.tensor.data().len() } else { t.tensor.data().len() * 3 }).sum::<usize>()
}

/// Writes a JSON array of tensor objects; the flag says whether each goes in the binary section or as JSON `data`.
fn write_tensors<'a>(out: &mut Vec<u8>, tensors: impl Iterator<Item = (&'a NamedTensor, bool)>) -> Result<(), serde_json::Error> {
    out.push(b'[');
    for (i, (t, binary)) in tensors.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_tensor(out, t, binary)?;
    }
    out.push(b']');
    Ok(())
}

/// One tensor object: name, datatype, shape, then `parameters.binary_data_size` (binary) or `data`.
fn write_tensor(out: &mut Vec<u8>, t: &NamedTensor, binary: bool) -> Result<(), serde_json::Error> {
    out.extend_from_slice(b"{\"name\":");
    serde_json::to_writer(&mut *out, &t.name)?;
    out.extend_from_slice(b",\"datatype\":\"");
    out.extend_from_slice(t.tensor.dtype().v2_name().as_bytes());
    out.extend_from_slice(b"\",\"shape\":");
    serde_json::to_writer(&mut *out, t.tensor.shape())?;
    if binary {
        out.extend_from_slice(b",\"parameters\":{\"binary_data_size\":");
        out.extend_from_slice(itoa::Buffer::new().format(t.tensor.data().len()).as_bytes());
        out.extend_from_slice(b"}}");
    } else {
        out.extend_from_slice(b",\"data\":");
        super::json_fast::write_data(out, &t.tensor)?;
        out.push(b'}');
    }
    Ok(())
}

/// Appends the bytes of every binary tensor, in order, after the JSON in `out`; the header length is `Some` when any
/// tensor is binary (even an empty one: the JSON names it, so the reader must split the body).
fn with_binary_section<'a>(mut out: Vec<u8>, tensors: impl Iterator<Item = (&'a NamedTensor, bool)>) -> EncodedBody {
    let header_len = out.len();
    let mut any = false;
    for (t, _) in tensors.filter(|&(_, binary)| binary) {
        any = true;
        out.extend_from_slice(t.tensor.data());
    }
    EncodedBody { body: Bytes::from(out), json_header_length: any.then_some(header_len) }
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
        assert!(matches!(err, DecodeError::BinaryLeftover { role: Role::Input, bytes: 1 }));
    }

    use proptest::prelude::*;

    /// Every datatype with values that survive JSON text (finite floats, UTF-8 strings, 0/1 booleans), zero-row
    /// tensors of every datatype, a scalar and a non-ASCII name.
    fn sample() -> Vec<NamedTensor> {
        let mut out = Vec::new();
        for dtype in DataType::ALL {
            let values: Vec<f64> = (0..6).map(|i| i as f64 * 1.75 - 4.0).collect();
            let tensor = match dtype {
                DataType::Bool => Tensor::new(dtype, vec![2, 3], Bytes::from_static(&[1, 0, 0, 1, 1, 0])),
                DataType::F16 => Tensor::from_slice(dtype, vec![2, 3], &values.iter().map(|&v| half::f16::from_f64(v / 3.0)).collect::<Vec<_>>()),
                DataType::F32 => Tensor::from_slice(dtype, vec![2, 3], &values.iter().map(|&v| v as f32 / 3.0).collect::<Vec<_>>()),
                DataType::F64 => Tensor::from_slice(dtype, vec![2, 3], &values.iter().map(|&v| v / 3.0).collect::<Vec<_>>()),
                DataType::Bytes => Tensor::from_byte_strings(vec![3, 1], &["a", "", "héllo \"quoted\"\n"]),
                // Any bit pattern is a valid integer.
                d => Tensor::new(d, vec![2, 3], Bytes::from((0..6 * d.element_size().unwrap_or(1)).map(|b| (b * 37 + 200) as u8).collect::<Vec<_>>())),
            };
            out.push(NamedTensor { name: format!("out_{dtype}"), tensor: tensor.unwrap() });
            out.push(NamedTensor { name: format!("empty_{dtype}"), tensor: Tensor::new(dtype, vec![0, 4], Bytes::new()).unwrap() });
        }
        out.push(NamedTensor { name: "scalar".into(), tensor: Tensor::from_slice(DataType::F64, vec![], &[2.5f64]).unwrap() });
        out.push(NamedTensor { name: "ünïcode/名前".into(), tensor: Tensor::from_slice(DataType::I8, vec![1], &[-7i8]).unwrap() });
        out
    }

    fn response(outputs: Vec<NamedTensor>) -> InferResponse {
        InferResponse { model_name: "m".into(), model_version: "3".into(), id: Some("req-1".into()), outputs, cache: None }
    }

    /// Splits an encoded body the way a client does, with the header length it would send or receive.
    fn split(encoded: &EncodedBody) -> (Bytes, Bytes) {
        let length = encoded.json_header_length.map(|n| n.to_string());
        split_body(&encoded.body, length.as_deref()).unwrap()
    }

    #[test]
    fn responses_round_trip_as_json_binary_and_mixed() {
        let outputs = sample();
        let n = outputs.len();
        for binary in [vec![false; n], vec![true; n], (0..n).map(|i| i % 2 == 0).collect()] {
            let encoded = encode_response(&response(outputs.clone()), &EncodeChoice { binary: binary.clone() }).unwrap();
            assert_eq!(encoded.json_header_length.is_some(), binary.contains(&true));
            let (json, bin) = split(&encoded);
            let decoded = decode_response(&json, bin, DecodeLimits::default()).unwrap();
            assert_eq!(decoded, DecodedResponse { model_name: "m".into(), model_version: Some("3".into()), id: Some("req-1".into()), outputs: outputs.clone() });
        }
    }

    #[test]
    fn binary_outputs_share_the_body() {
        let encoded = encode_response(&response(sample()), &EncodeChoice { binary: vec![true; sample().len()] }).unwrap();
        let (json, bin) = split(&encoded);
        let decoded = decode_response(&json, bin.clone(), DecodeLimits::default()).unwrap();
        let first = decoded.outputs[0].tensor.data();
        assert_eq!(first.as_ptr(), bin.as_ptr(), "a binary output is a slice of the received body, not a copy");
    }

    #[test]
    fn requests_round_trip_as_json_and_binary() {
        let inputs = sample();
        for (binary, binary_output) in [(false, false), (true, true), (false, true), (true, false)] {
            let encoded = encode_request(&inputs, binary, binary_output).unwrap();
            assert_eq!(encoded.json_header_length.is_some(), binary);
            let (json, bin) = split(&encoded);
            let decoded = decode_request(&json, bin, DecodeLimits::default()).unwrap();
            assert_eq!(decoded.inputs, inputs);
            assert_eq!(decoded.params.binary_data_output, binary_output);
            assert!(decoded.outputs.is_empty(), "every output is asked for");
        }
    }

    #[test]
    fn null_reads_as_nan_in_responses_only() {
        let nan = NamedTensor { name: "y".into(), tensor: Tensor::from_slice(DataType::F32, vec![2], &[f32::NAN, 1.0]).unwrap() };
        let encoded = encode_response(&response(vec![nan]), &EncodeChoice { binary: vec![false] }).unwrap();
        let decoded = decode_response(&encoded.body, Bytes::new(), DecodeLimits::default()).unwrap();
        let data = decoded.outputs[0].tensor.data();
        assert!(f32::from_le_bytes([data[0], data[1], data[2], data[3]]).is_nan());
        let err = decode(r#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[null]}]}"#).unwrap_err();
        assert!(err.to_string().contains("null is not a FP32 value"), "{err}");
        let err = decode_response(br#"{"model_name":"m","outputs":[{"name":"y","shape":[1],"datatype":"INT32","data":[null]}]}"#, Bytes::new(), DecodeLimits::default())
            .unwrap_err();
        assert!(err.to_string().contains("null is not a INT32 value"), "{err}");
    }

    #[test]
    fn response_errors_name_the_output() {
        let err = |json: &str, binary: &'static [u8]| decode_response(json.as_bytes(), Bytes::from_static(binary), DecodeLimits::default()).unwrap_err().to_string();
        assert!(err(r#"{"model_name":"m"}"#, b"").contains("no 'outputs'"));
        let e = err(r#"{"error":"model is not ready"}"#, b"");
        assert!(e.contains("no 'outputs'") && e.contains("model is not ready"), "{e}");
        assert!(err(r#"{"outputs":[]}"#, b"").contains("no 'model_name'"));
        assert!(err("not json", b"").starts_with("malformed V2 response"));
        let e = err(r#"{"model_name":"m","outputs":[{"name":"y","shape":[1],"datatype":"BF16","data":[1]}]}"#, b"");
        assert!(e.starts_with("output 'y': unknown datatype 'BF16'"), "{e}");
        let e = err(r#"{"model_name":"m","outputs":[{"name":"y","shape":[2],"datatype":"INT8","parameters":{"binary_data_size":2}}]}"#, b"\x01");
        assert!(e.starts_with("output 'y': binary_data_size is 2 but only 1 bytes"), "{e}");
        let e = err(r#"{"model_name":"m","outputs":[]}"#, b"\x01\x02");
        assert_eq!(e, "2 bytes of binary data follow the JSON header but no output claims them");
        let e = err(r#"{"model_name":"m","outputs":[{"name":"y","shape":[0],"datatype":"INT8","data":[]},{"name":"y","shape":[0],"datatype":"INT8","data":[]}]}"#, b"");
        assert_eq!(e, "output 'y' appears more than once");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512), split_at in any::<prop::sample::Index>()) {
            let at = split_at.index(data.len() + 1);
            let _ = decode_response(&data[..at], Bytes::copy_from_slice(&data[at..]), DecodeLimits::default());
        }

        #[test]
        fn damaged_responses_never_panic(edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), binary in any::<bool>()) {
            let outputs = sample();
            let encoded = encode_response(&response(outputs.clone()), &EncodeChoice { binary: vec![binary; outputs.len()] }).unwrap();
            let mut body = encoded.body.to_vec();
            for (at, byte) in edits {
                let i = at.index(body.len());
                body[i] = byte;
            }
            let body = Bytes::from(body);
            let length = encoded.json_header_length.map(|n| n.to_string());
            let (json, bin) = split_body(&body, length.as_deref()).unwrap();
            let _ = decode_response(&json, bin, DecodeLimits::default());
        }
    }
}

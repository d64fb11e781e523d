//! The V2 gRPC codec: `ModelInferRequest` → [`InferRequest`] and [`InferResponse`] → `ModelInferResponse` on the server
//! side, and the reverse for the remote backend (a client of another V2 server), with the same tensor rules as HTTP.
//! Tensors may come as raw contents (one entry per tensor, zero-copy: the tensor slices the received buffer) or typed
//! contents; Sluice always sends raw contents (one entry per tensor, sharing the tensor's bytes), which is what Triton
//! and its clients read.

use super::decode::{append_integer, checked_shape, parse_datatype, DecodeError, DecodeLimits, Role};
use super::types::{InferRequest, InferResponse, NamedTensor, RequestParams, RequestedOutput};
use crate::tensor::{append_byte_string, DataType, Tensor};
use bytes::{Bytes, BytesMut};
use std::collections::HashMap;
use std::time::Duration;

/// Types generated from `proto/inference.proto` and `proto/model_config.proto`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("inference");

    /// The encoded descriptor set of Sluice's protos, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("inference_descriptor");
}

use pb::infer_parameter::ParameterChoice;
use pb::model_infer_request::InferInputTensor;

/// A decoded gRPC inference request and the model it is for.
pub struct GrpcInfer {
    pub model: String,
    /// `None`: the default version.
    pub version: Option<String>,
    pub request: InferRequest,
}

fn integer_param(params: &HashMap<String, pb::InferParameter>, name: &str) -> Result<Option<u64>, DecodeError> {
    let bad = |message: String| DecodeError::Parameter { name: name.to_string(), message };
    match params.get(name).and_then(|p| p.parameter_choice.as_ref()) {
        None => Ok(None),
        Some(ParameterChoice::Uint64Param(v)) => Ok(Some(*v)),
        Some(ParameterChoice::Int64Param(v)) => u64::try_from(*v).map(Some).map_err(|_| bad(format!("must not be negative, got {v}"))),
        Some(other) => Err(bad(format!("expected int64_param or uint64_param, got {}", param_kind(other)))),
    }
}

fn bool_param(params: &HashMap<String, pb::InferParameter>, name: &str) -> Result<Option<bool>, DecodeError> {
    match params.get(name).and_then(|p| p.parameter_choice.as_ref()) {
        None => Ok(None),
        Some(ParameterChoice::BoolParam(v)) => Ok(Some(*v)),
        Some(other) => Err(DecodeError::Parameter { name: name.to_string(), message: format!("expected bool_param, got {}", param_kind(other)) }),
    }
}

/// The proto field name of a parameter's value, for error messages.
fn param_kind(choice: &ParameterChoice) -> &'static str {
    match choice {
        ParameterChoice::BoolParam(_) => "bool_param",
        ParameterChoice::Int64Param(_) => "int64_param",
        ParameterChoice::StringParam(_) => "string_param",
        ParameterChoice::DoubleParam(_) => "double_param",
        ParameterChoice::Uint64Param(_) => "uint64_param",
    }
}

/// Decodes a `ModelInferRequest`. Raw contents, when present, must cover every input; typed contents are used otherwise.
pub fn decode_request(req: pb::ModelInferRequest, limits: DecodeLimits) -> Result<GrpcInfer, DecodeError> {
    let mut params = RequestParams::default();
    if let Some(p) = integer_param(&req.parameters, "priority")? {
        // Out-of-range levels stay out of range (and are refused by the scheduler with a clear message).
        params.priority = (p > 0).then(|| u32::try_from(p).unwrap_or(u32::MAX));
    }
    // `timeout` is in microseconds, as Triton's clients send it.
    if let Some(us) = integer_param(&req.parameters, "timeout")? {
        params.timeout = (us > 0).then(|| Duration::from_micros(us));
    }
    params.cache = bool_param(&req.parameters, "cache")?;
    let inputs = decode_tensors(Role::Input, req.inputs.into_iter().map(WireTensor::from).collect(), req.raw_input_contents, limits)?;
    let mut outputs: Vec<RequestedOutput> = Vec::with_capacity(req.outputs.len());
    let mut seen = super::decode::SeenNames::default();
    for out in req.outputs {
        if !seen.first(&out.name) {
            return Err(DecodeError::DuplicateOutput(out.name));
        }
        if out.parameters.contains_key("classification") {
            return Err(DecodeError::Parameter {
                name: "classification".into(),
                message: format!("output '{}': the classification extension is not supported", out.name),
            });
        }
        outputs.push(RequestedOutput { name: out.name, binary_data: None });
    }
    Ok(GrpcInfer {
        model: req.model_name,
        version: Some(req.model_version).filter(|v| !v.is_empty()),
        request: InferRequest { id: Some(req.id).filter(|id| !id.is_empty()), inputs, outputs, params },
    })
}

/// The parts of a tensor that a request's inputs and a response's outputs share.
struct WireTensor {
    name: String,
    datatype: String,
    shape: Vec<i64>,
    contents: Option<pb::InferTensorContents>,
}

impl From<InferInputTensor> for WireTensor {
    fn from(t: InferInputTensor) -> WireTensor {
        WireTensor { name: t.name, datatype: t.datatype, shape: t.shape, contents: t.contents }
    }
}

impl From<pb::model_infer_response::InferOutputTensor> for WireTensor {
    fn from(t: pb::model_infer_response::InferOutputTensor) -> WireTensor {
        WireTensor { name: t.name, datatype: t.datatype, shape: t.shape, contents: t.contents }
    }
}

/// The message field that holds one side's raw tensor bytes, for error messages.
fn raw_field(role: Role) -> &'static str {
    match role {
        Role::Input => "raw_input_contents",
        Role::Output => "raw_output_contents",
    }
}

/// Decodes the tensors of a request or a response. Raw contents, when present, must cover every tensor (one entry each,
/// shared, not copied); typed contents are used otherwise.
fn decode_tensors(role: Role, wire: Vec<WireTensor>, raw: Vec<Bytes>, limits: DecodeLimits) -> Result<Vec<NamedTensor>, DecodeError> {
    if !raw.is_empty() && raw.len() != wire.len() {
        let body = match role {
            Role::Input => "request",
            Role::Output => "response",
        };
        return Err(DecodeError::Data {
            role,
            name: wire.first().map(|t| t.name.clone()).unwrap_or_default(),
            message: format!(
                "{} has {} entries but the {body} has {} {role}s (one each is required)",
                raw_field(role),
                raw.len(),
                wire.len()
            ),
        });
    }
    let mut tensors: Vec<NamedTensor> = Vec::with_capacity(wire.len());
    let mut seen = super::decode::SeenNames::default();
    for (i, t) in wire.into_iter().enumerate() {
        if !seen.first(&t.name) {
            return Err(DecodeError::Duplicate { role, name: t.name });
        }
        let tensor = decode_tensor(role, &t, raw.get(i), limits)?;
        tensors.push(NamedTensor { name: t.name, tensor });
    }
    Ok(tensors)
}

/// One tensor: datatype and shape first (checked before anything is allocated), then its raw entry or typed contents.
fn decode_tensor(role: Role, t: &WireTensor, raw: Option<&Bytes>, limits: DecodeLimits) -> Result<Tensor, DecodeError> {
    let dtype = parse_datatype(role, &t.name, &t.datatype)?;
    let (shape, count) = checked_shape(role, &t.name, t.shape.iter().map(|&d| d as i128), limits)?;
    let bytes = match raw {
        Some(_) if t.contents.is_some() => {
            return Err(DecodeError::Data {
                role,
                name: t.name.clone(),
                message: format!("has both typed contents and a {} entry (send one or the other)", raw_field(role)),
            })
        }
        Some(bytes) => bytes.clone(),
        None => typed_contents(role, t, dtype, count)?,
    };
    Tensor::new(dtype, shape, bytes).map_err(|source| DecodeError::Tensor { role, name: t.name.clone(), source })
}

/// Typed `contents` of one tensor as V2 tensor bytes, with the element count and value ranges checked.
fn typed_contents(role: Role, t: &WireTensor, dtype: DataType, count: usize) -> Result<Bytes, DecodeError> {
    let empty = pb::InferTensorContents::default();
    let c = t.contents.as_ref().unwrap_or(&empty);
    let data_err = |message: String| DecodeError::Data { role, name: t.name.clone(), message };
    let check_len = |field: &str, len: usize| {
        if len == count {
            Ok(())
        } else if len == 0 && t.contents.is_none() {
            Err(data_err(format!("has neither typed contents nor a {} entry", raw_field(role))))
        } else {
            Err(data_err(format!("contents.{field} holds {len} elements but the shape needs {count}")))
        }
    };
    macro_rules! integers {
        ($values:expr, $field:expr) => {{
            check_len($field, $values.len())?;
            let mut out = BytesMut::with_capacity(count * dtype.element_size().unwrap_or(1));
            for &v in &$values {
                append_integer(&mut out, dtype, v as i128).map_err(|_| data_err(format!("value {v} is out of range for {dtype}")))?;
            }
            out.freeze()
        }};
    }
    macro_rules! floats {
        ($values:expr, $field:expr) => {{
            check_len($field, $values.len())?;
            let mut out = BytesMut::with_capacity(count * dtype.element_size().unwrap_or(1));
            for v in &$values {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.freeze()
        }};
    }
    Ok(match dtype {
        DataType::Bool => {
            check_len("bool_contents", c.bool_contents.len())?;
            Bytes::from(c.bool_contents.iter().map(|&b| b as u8).collect::<Vec<u8>>())
        }
        DataType::I8 | DataType::I16 | DataType::I32 => integers!(c.int_contents, "int_contents"),
        DataType::I64 => integers!(c.int64_contents, "int64_contents"),
        DataType::U8 | DataType::U16 | DataType::U32 => integers!(c.uint_contents, "uint_contents"),
        DataType::U64 => integers!(c.uint64_contents, "uint64_contents"),
        DataType::F32 => floats!(c.fp32_contents, "fp32_contents"),
        DataType::F64 => floats!(c.fp64_contents, "fp64_contents"),
        DataType::F16 => return Err(data_err(format!("FP16 data must be sent in {} (it has no typed contents field)", raw_field(role)))),
        DataType::Bytes => {
            check_len("bytes_contents", c.bytes_contents.len())?;
            let mut out = BytesMut::with_capacity(c.bytes_contents.iter().map(|b| b.len() + 4).sum());
            for item in &c.bytes_contents {
                append_byte_string(&mut out, item).map_err(|e| data_err(e.to_string()))?;
            }
            out.freeze()
        }
    })
}

/// Encodes a response with every output as raw contents (the tensors' bytes are shared, not copied).
pub fn encode_response(response: InferResponse) -> pb::ModelInferResponse {
    let mut outputs = Vec::with_capacity(response.outputs.len());
    let mut raw = Vec::with_capacity(response.outputs.len());
    for NamedTensor { name, tensor } in response.outputs {
        outputs.push(pb::model_infer_response::InferOutputTensor {
            name,
            datatype: tensor.dtype().v2_name().to_string(),
            shape: wire_shape(&tensor),
            parameters: HashMap::new(),
            contents: None,
        });
        raw.push(tensor.data().clone());
    }
    let mut parameters = HashMap::new();
    if let Some(status) = response.cache {
        // Response metadata of Sluice's own, beside the tensors: how the response cache answered.
        parameters.insert(
            "sluice_cache".to_string(),
            pb::InferParameter { parameter_choice: Some(ParameterChoice::StringParam(status.as_str().to_string())) },
        );
    }
    pb::ModelInferResponse {
        model_name: response.model_name,
        model_version: response.model_version,
        id: response.id.unwrap_or_default(),
        parameters,
        outputs,
        raw_output_contents: raw,
    }
}

/// A tensor's shape as the protos carry it. Dims come from a checked tensor, so they fit an `i64`.
fn wire_shape(tensor: &Tensor) -> Vec<i64> {
    tensor.shape().iter().map(|&d| d as i64).collect()
}

/// Encodes a request to a remote V2 server for every output of the model (`outputs` left empty), with every input as
/// raw contents that share the tensors' bytes. `version` `None` asks for the server's default version.
pub fn encode_request(model: &str, version: Option<&str>, id: Option<&str>, inputs: &[NamedTensor]) -> pb::ModelInferRequest {
    pb::ModelInferRequest {
        model_name: model.to_string(),
        model_version: version.unwrap_or_default().to_string(),
        id: id.unwrap_or_default().to_string(),
        parameters: HashMap::new(),
        inputs: inputs
            .iter()
            .map(|t| InferInputTensor {
                name: t.name.clone(),
                datatype: t.tensor.dtype().v2_name().to_string(),
                shape: wire_shape(&t.tensor),
                parameters: HashMap::new(),
                contents: None,
            })
            .collect(),
        outputs: Vec::new(),
        raw_input_contents: inputs.iter().map(|t| t.tensor.data().clone()).collect(),
    }
}

/// Decodes the outputs of a remote V2 server's `ModelInferResponse`, by the rules requests follow: raw output contents
/// (one entry per output, shared, not copied), or typed contents when the server sent no raw contents at all.
pub fn decode_response(resp: pb::ModelInferResponse, limits: DecodeLimits) -> Result<Vec<NamedTensor>, DecodeError> {
    decode_tensors(Role::Output, resp.outputs.into_iter().map(WireTensor::from).collect(), resp.raw_output_contents, limits)
}

/// Triton's model-configuration data type for a tensor data type.
pub fn config_data_type(dtype: DataType) -> pb::DataType {
    match dtype {
        DataType::Bool => pb::DataType::TypeBool,
        DataType::U8 => pb::DataType::TypeUint8,
        DataType::U16 => pb::DataType::TypeUint16,
        DataType::U32 => pb::DataType::TypeUint32,
        DataType::U64 => pb::DataType::TypeUint64,
        DataType::I8 => pb::DataType::TypeInt8,
        DataType::I16 => pb::DataType::TypeInt16,
        DataType::I32 => pb::DataType::TypeInt32,
        DataType::I64 => pb::DataType::TypeInt64,
        DataType::F16 => pb::DataType::TypeFp16,
        DataType::F32 => pb::DataType::TypeFp32,
        DataType::F64 => pb::DataType::TypeFp64,
        DataType::Bytes => pb::DataType::TypeString,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(name: &str, datatype: &str, shape: Vec<i64>, contents: Option<pb::InferTensorContents>) -> InferInputTensor {
        InferInputTensor { name: name.into(), datatype: datatype.into(), shape, parameters: HashMap::new(), contents }
    }

    #[test]
    fn typed_and_raw_contents_decode_to_the_same_tensor() {
        let typed = pb::ModelInferRequest {
            inputs: vec![input("x", "INT16", vec![1, 2], Some(pb::InferTensorContents { int_contents: vec![1, -2], ..Default::default() }))],
            ..Default::default()
        };
        let raw = pb::ModelInferRequest {
            inputs: vec![input("x", "INT16", vec![1, 2], None)],
            raw_input_contents: vec![Bytes::from_static(&[1, 0, 0xfe, 0xff])],
            ..Default::default()
        };
        let a = decode_request(typed, DecodeLimits::default()).unwrap().request;
        let b = decode_request(raw, DecodeLimits::default()).unwrap().request;
        assert_eq!(a.inputs, b.inputs);
    }

    #[test]
    fn typed_contents_errors_name_the_problem() {
        let over = pb::ModelInferRequest {
            inputs: vec![input("x", "INT8", vec![1], Some(pb::InferTensorContents { int_contents: vec![300], ..Default::default() }))],
            ..Default::default()
        };
        let err = decode_request(over, DecodeLimits::default()).err().unwrap();
        assert!(err.to_string().contains("out of range for INT8"), "{err}");
        let fp16 = pb::ModelInferRequest { inputs: vec![input("h", "FP16", vec![1], Some(Default::default()))], ..Default::default() };
        assert!(decode_request(fp16, DecodeLimits::default()).err().unwrap().to_string().contains("raw_input_contents"));
        let short = pb::ModelInferRequest {
            inputs: vec![input("x", "FP32", vec![3], None)],
            raw_input_contents: vec![Bytes::from_static(&[0; 8])],
            ..Default::default()
        };
        assert!(decode_request(short, DecodeLimits::default()).err().unwrap().to_string().contains("12 bytes"));
    }

    fn sample() -> Vec<NamedTensor> {
        let mut out = Vec::new();
        for dtype in DataType::ALL {
            let tensor = match dtype.element_size() {
                Some(size) => Tensor::new(dtype, vec![2, 3], Bytes::from((0..6 * size).map(|b| (b * 37 + 1) as u8 % 2).collect::<Vec<_>>())),
                None => Tensor::from_byte_strings(vec![3], &[&b"a"[..], b"", b"\xff\x00"]),
            };
            out.push(NamedTensor { name: format!("t_{dtype}"), tensor: tensor.unwrap() });
            out.push(NamedTensor { name: format!("empty_{dtype}"), tensor: Tensor::new(dtype, vec![0, 4], Bytes::new()).unwrap() });
        }
        out
    }

    #[test]
    fn responses_round_trip_sharing_bytes() {
        let outputs = sample();
        let response = InferResponse { model_name: "m".into(), model_version: "1".into(), id: None, outputs: outputs.clone(), cache: None };
        let decoded = decode_response(encode_response(response), DecodeLimits::default()).unwrap();
        assert_eq!(decoded, outputs);
        assert_eq!(decoded[0].tensor.data().as_ptr(), outputs[0].tensor.data().as_ptr(), "raw contents are shared, not copied");
    }

    #[test]
    fn requests_round_trip_sharing_bytes() {
        let inputs = sample();
        let req = encode_request("m", Some("2"), Some("id-7"), &inputs);
        assert_eq!(req.raw_input_contents[0].as_ptr(), inputs[0].tensor.data().as_ptr(), "raw contents are shared, not copied");
        let decoded = decode_request(req, DecodeLimits::default()).unwrap();
        assert_eq!((decoded.model.as_str(), decoded.version.as_deref(), decoded.request.id.as_deref()), ("m", Some("2"), Some("id-7")));
        assert_eq!(decoded.request.inputs, inputs);
        assert!(decoded.request.outputs.is_empty(), "every output is asked for");
        let default_version = encode_request("m", None, None, &inputs);
        assert_eq!((default_version.model_version.as_str(), default_version.id.as_str()), ("", ""));
    }

    #[test]
    fn typed_output_contents_are_read_and_errors_name_the_output() {
        let output = |datatype: &str, contents: Option<pb::InferTensorContents>| pb::model_infer_response::InferOutputTensor {
            name: "y".into(),
            datatype: datatype.into(),
            shape: vec![2],
            parameters: HashMap::new(),
            contents,
        };
        let typed = pb::ModelInferResponse {
            outputs: vec![output("FP32", Some(pb::InferTensorContents { fp32_contents: vec![1.5, -2.0], ..Default::default() }))],
            ..Default::default()
        };
        let decoded = decode_response(typed, DecodeLimits::default()).unwrap();
        assert_eq!(decoded[0].tensor, Tensor::from_slice(DataType::F32, vec![2], &[1.5f32, -2.0]).unwrap());
        let missing = pb::ModelInferResponse { outputs: vec![output("FP32", None)], ..Default::default() };
        let err = decode_response(missing, DecodeLimits::default()).unwrap_err().to_string();
        assert_eq!(err, "output 'y': has neither typed contents nor a raw_output_contents entry");
        let short = pb::ModelInferResponse {
            outputs: vec![output("INT8", None), output("INT8", None)],
            raw_output_contents: vec![Bytes::from_static(&[1, 2])],
            ..Default::default()
        };
        let err = decode_response(short, DecodeLimits::default()).unwrap_err().to_string();
        assert!(err.contains("raw_output_contents has 1 entries but the response has 2 outputs"), "{err}");
    }
}

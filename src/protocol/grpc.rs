//! The V2 gRPC codec: `ModelInferRequest` → [`InferRequest`] and [`InferResponse`] → `ModelInferResponse`, with the same
//! tensor rules as HTTP. Inputs may come as raw contents (one entry per input, zero-copy: the tensor slices the received
//! buffer) or typed contents; outputs always go back as raw contents (one entry per output, sharing the tensor's bytes),
//! which is what Triton's clients read.

use super::decode::{append_integer, checked_shape, parse_datatype, DecodeError, DecodeLimits};
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
    let raw = req.raw_input_contents;
    if !raw.is_empty() && raw.len() != req.inputs.len() {
        return Err(DecodeError::Data {
            name: req.inputs.first().map(|i| i.name.clone()).unwrap_or_default(),
            message: format!("raw_input_contents has {} entries but the request has {} inputs (one each is required)", raw.len(), req.inputs.len()),
        });
    }
    let mut inputs: Vec<NamedTensor> = Vec::with_capacity(req.inputs.len());
    for (i, input) in req.inputs.into_iter().enumerate() {
        if inputs.iter().any(|t| t.name == input.name) {
            return Err(DecodeError::DuplicateInput(input.name));
        }
        let dtype = parse_datatype(&input.name, &input.datatype)?;
        let (shape, count) = checked_shape(&input.name, input.shape.iter().map(|&d| d as i128), limits)?;
        let bytes = match raw.get(i) {
            Some(bytes) => {
                if input.contents.is_some() {
                    return Err(DecodeError::Data {
                        name: input.name,
                        message: "has both typed contents and a raw_input_contents entry (send one or the other)".into(),
                    });
                }
                bytes.clone()
            }
            None => typed_contents(&input, dtype, count)?,
        };
        let tensor = Tensor::new(dtype, shape, bytes).map_err(|source| DecodeError::Tensor { name: input.name.clone(), source })?;
        inputs.push(NamedTensor { name: input.name, tensor });
    }
    let mut outputs: Vec<RequestedOutput> = Vec::with_capacity(req.outputs.len());
    for out in req.outputs {
        if outputs.iter().any(|o| o.name == out.name) {
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

/// Typed `contents` of one input as V2 tensor bytes, with the element count and value ranges checked.
fn typed_contents(input: &InferInputTensor, dtype: DataType, count: usize) -> Result<Bytes, DecodeError> {
    let name = &input.name;
    let c = input.contents.clone().unwrap_or_default();
    let data_err = |message: String| DecodeError::Data { name: name.clone(), message };
    let check_len = |field: &str, len: usize| {
        if len == count {
            Ok(())
        } else if len == 0 && input.contents.is_none() {
            Err(data_err("has neither typed contents nor a raw_input_contents entry".into()))
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
        DataType::F16 => return Err(data_err("FP16 data must be sent in raw_input_contents (it has no typed contents field)".into())),
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
            shape: tensor.shape().iter().map(|&d| d as i64).collect(),
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
}

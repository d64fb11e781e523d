//! A remote V2 server's model metadata, read into the [`ModelSignature`] that requests are checked against: the HTTP
//! answer to `GET /v2/models/{m}[/versions/{v}]` and the gRPC `ModelMetadataResponse`. Sluice's own answers and
//! Triton's have the same shape (`{"name","versions","platform","inputs":[{"name","datatype","shape"}],"outputs"}`);
//! shapes keep `-1` for any size, the batch dimension included.

use super::grpc::pb;
use crate::backend::signature::{ModelSignature, TensorSpec};
use crate::tensor::DataType;
use serde::Deserialize;

/// What a remote server says about one model (version).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteMetadata {
    pub name: String,
    /// The versions the server lists (empty when it lists none: the field is optional in V2).
    pub versions: Vec<String>,
    pub platform: String,
    pub signature: ModelSignature,
}

/// Why a metadata answer cannot be used. Each names the field, e.g. `inputs[1].datatype`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MetadataError {
    #[error("malformed model metadata: {0}")]
    Json(String),
    #[error("model metadata has no '{0}'")]
    Missing(String),
    #[error("model metadata '{field}' (tensor '{tensor}'): unknown datatype '{datatype}' (expected one of BOOL, UINT8..UINT64, INT8..INT64, FP16, FP32, FP64, BYTES)")]
    UnknownDatatype { field: String, tensor: String, datatype: String },
    #[error("model metadata '{field}': {message}")]
    Invalid { field: String, message: String },
}

/// The HTTP answer. Every field is optional here so that a missing one gets a message naming it.
#[derive(Deserialize)]
struct WireMetadata {
    name: Option<String>,
    versions: Option<Vec<String>>,
    platform: Option<String>,
    inputs: Option<Vec<WireTensor>>,
    outputs: Option<Vec<WireTensor>>,
}

#[derive(Deserialize)]
struct WireTensor {
    name: Option<String>,
    datatype: Option<String>,
    shape: Option<Vec<i64>>,
}

/// One tensor's fields as either wire carries them; `None` is absent.
struct TensorFields<'a> {
    name: Option<&'a str>,
    datatype: Option<&'a str>,
    shape: Option<&'a [i64]>,
}

impl<'a> From<&'a WireTensor> for TensorFields<'a> {
    fn from(t: &'a WireTensor) -> TensorFields<'a> {
        TensorFields { name: t.name.as_deref(), datatype: t.datatype.as_deref(), shape: t.shape.as_deref() }
    }
}

impl<'a> From<&'a pb::model_metadata_response::TensorMetadata> for TensorFields<'a> {
    /// Proto3 cannot tell an absent string from an empty one: an empty name or datatype counts as missing.
    fn from(t: &'a pb::model_metadata_response::TensorMetadata) -> TensorFields<'a> {
        TensorFields { name: present(&t.name), datatype: present(&t.datatype), shape: Some(&t.shape) }
    }
}

fn present(s: &str) -> Option<&str> {
    Some(s).filter(|s| !s.is_empty())
}

/// Parses the V2 HTTP model metadata answer (`GET /v2/models/{m}[/versions/{v}]`).
pub fn from_json(v: &[u8]) -> Result<RemoteMetadata, MetadataError> {
    let wire: WireMetadata = serde_json::from_slice(v).map_err(|e| MetadataError::Json(e.to_string()))?;
    let name = wire.name.ok_or_else(|| missing("name"))?;
    let platform = wire.platform.ok_or_else(|| missing("platform"))?;
    let inputs = wire.inputs.as_deref().ok_or_else(|| missing("inputs"))?;
    let outputs = wire.outputs.as_deref().ok_or_else(|| missing("outputs"))?;
    let signature = ModelSignature { inputs: specs("inputs", inputs.iter().map(Into::into))?, outputs: specs("outputs", outputs.iter().map(Into::into))? };
    Ok(RemoteMetadata { name, versions: wire.versions.unwrap_or_default(), platform, signature })
}

/// Parses the gRPC `ModelMetadataResponse`. An empty name counts as missing (proto3 cannot tell them apart); an empty
/// platform is allowed, as some servers leave it blank.
pub fn from_grpc(resp: pb::ModelMetadataResponse) -> Result<RemoteMetadata, MetadataError> {
    if resp.name.is_empty() {
        return Err(missing("name"));
    }
    let signature =
        ModelSignature { inputs: specs("inputs", resp.inputs.iter().map(Into::into))?, outputs: specs("outputs", resp.outputs.iter().map(Into::into))? };
    Ok(RemoteMetadata { name: resp.name, versions: resp.versions, platform: resp.platform, signature })
}

/// A signature written as V2 metadata's `inputs` and `outputs` lists of (name, datatype, shape), checked as a
/// server's answer is: what a gateway's configuration declares (`[upstreams.signatures.<model>]`). Empty names and
/// datatypes count as missing.
pub fn signature_from<'a>(
    inputs: impl Iterator<Item = (&'a str, &'a str, &'a [i64])>,
    outputs: impl Iterator<Item = (&'a str, &'a str, &'a [i64])>,
) -> Result<ModelSignature, MetadataError> {
    let fields = |(name, datatype, shape): (&'a str, &'a str, &'a [i64])| TensorFields { name: present(name), datatype: present(datatype), shape: Some(shape) };
    Ok(ModelSignature { inputs: specs("inputs", inputs.map(fields))?, outputs: specs("outputs", outputs.map(fields))? })
}

fn missing(field: &str) -> MetadataError {
    MetadataError::Missing(field.to_string())
}

/// Reads the tensors of one list (`inputs` or `outputs`), naming the field of the first problem.
fn specs<'a>(list: &str, tensors: impl Iterator<Item = TensorFields<'a>>) -> Result<Vec<TensorSpec>, MetadataError> {
    let mut specs: Vec<TensorSpec> = Vec::new();
    for (i, t) in tensors.enumerate() {
        let at = |field: &str| format!("{list}[{i}].{field}");
        let name = t.name.ok_or_else(|| MetadataError::Missing(at("name")))?;
        let datatype = t.datatype.ok_or_else(|| MetadataError::Missing(at("datatype")))?;
        let dtype = DataType::from_v2_name(datatype).ok_or_else(|| MetadataError::UnknownDatatype {
            field: at("datatype"),
            tensor: name.to_string(),
            datatype: datatype.to_string(),
        })?;
        let shape = t.shape.ok_or_else(|| MetadataError::Missing(at("shape")))?;
        if let Some(d) = shape.iter().find(|&&d| d < -1) {
            return Err(MetadataError::Invalid { field: at("shape"), message: format!("dimension {d} of '{name}' is neither a size nor -1 (any size)") });
        }
        if specs.iter().any(|s| s.name == name) {
            return Err(MetadataError::Invalid { field: at("name"), message: format!("'{name}' is listed more than once") });
        }
        specs.push(TensorSpec { name: name.to_string(), dtype, dims: shape.to_vec() });
    }
    Ok(specs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::model_metadata_response::TensorMetadata;
    use proptest::prelude::*;

    fn spec(name: &str, dtype: DataType, dims: &[i64]) -> TensorSpec {
        TensorSpec { name: name.into(), dtype, dims: dims.to_vec() }
    }

    #[test]
    fn reads_sluice_and_triton_answers() {
        // What Sluice's own `GET /v2/models/{m}` sends (server::metadata::model), parameters included.
        let sluice = br#"{"name":"fraud_mlp","versions":["1","2"],"platform":"onnxruntime_onnx",
            "inputs":[{"name":"input","datatype":"FP32","shape":[-1,30]}],
            "outputs":[{"name":"prob","datatype":"FP32","shape":[-1,1]},{"name":"label","datatype":"BYTES","shape":[-1]}],
            "parameters":{"execution_provider":"cpu"}}"#;
        let m = from_json(sluice).unwrap();
        assert_eq!(m.name, "fraud_mlp");
        assert_eq!(m.versions, ["1", "2"]);
        assert_eq!(m.platform, "onnxruntime_onnx");
        assert_eq!(m.signature.inputs, [spec("input", DataType::F32, &[-1, 30])]);
        assert_eq!(m.signature.outputs[1], spec("label", DataType::Bytes, &[-1]));
        // Triton: the same shape; versions may be absent.
        let triton = br#"{"name":"simple","platform":"tensorflow_graphdef",
            "inputs":[{"name":"INPUT0","datatype":"INT32","shape":[-1,16]}],"outputs":[]}"#;
        let m = from_json(triton).unwrap();
        assert!(m.versions.is_empty());
        assert_eq!(m.signature.inputs, [spec("INPUT0", DataType::I32, &[-1, 16])]);
    }

    #[test]
    fn grpc_answer_reads_like_json() {
        let tensor = |name: &str, datatype: &str, shape: Vec<i64>| TensorMetadata { name: name.into(), datatype: datatype.into(), shape };
        let resp = pb::ModelMetadataResponse {
            name: "m".into(),
            versions: vec!["3".into()],
            platform: "onnxruntime_onnx".into(),
            inputs: vec![tensor("x", "FP16", vec![-1, 4])],
            outputs: vec![tensor("s", "INT64", vec![])],
        };
        let json = br#"{"name":"m","versions":["3"],"platform":"onnxruntime_onnx",
            "inputs":[{"name":"x","datatype":"FP16","shape":[-1,4]}],"outputs":[{"name":"s","datatype":"INT64","shape":[]}]}"#;
        assert_eq!(from_grpc(resp.clone()).unwrap(), from_json(json).unwrap());
        let mut bad = resp.clone();
        bad.outputs[0].datatype = String::new();
        assert_eq!(from_grpc(bad).unwrap_err(), MetadataError::Missing("outputs[0].datatype".into()));
        let mut bad = resp;
        bad.name = String::new();
        assert_eq!(from_grpc(bad).unwrap_err(), MetadataError::Missing("name".into()));
    }

    #[test]
    fn errors_name_the_field() {
        let err = |json: &str| from_json(json.as_bytes()).unwrap_err().to_string();
        let e = err(r#"{"name":"m","platform":"p","inputs":[{"name":"a","datatype":"FP32","shape":[1]},{"name":"b","datatype":"BF16","shape":[1]}],"outputs":[]}"#);
        assert!(e.contains("'inputs[1].datatype'") && e.contains("'b'") && e.contains("BF16"), "{e}");
        let e = err(r#"{"name":"m","platform":"p","inputs":[],"outputs":[{"name":"y","datatype":"FP32"}]}"#);
        assert_eq!(e, "model metadata has no 'outputs[0].shape'");
        assert_eq!(err(r#"{"name":"m","platform":"p","inputs":[]}"#), "model metadata has no 'outputs'");
        assert_eq!(err(r#"{"platform":"p","inputs":[],"outputs":[]}"#), "model metadata has no 'name'");
        let e = err(r#"{"name":"m","platform":"p","inputs":[{"name":"a","datatype":"FP32","shape":[-2]}],"outputs":[]}"#);
        assert!(e.contains("'inputs[0].shape'") && e.contains("-2"), "{e}");
        let e = err(r#"{"name":"m","platform":"p","inputs":[],"outputs":[{"name":"y","datatype":"FP32","shape":[]},{"name":"y","datatype":"FP32","shape":[]}]}"#);
        assert!(e.contains("'outputs[1].name'") && e.contains("more than once"), "{e}");
        assert!(err("[1,2]").starts_with("malformed model metadata"));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = from_json(&data);
        }
    }
}

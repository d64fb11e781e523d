//! Protocol-neutral request and response values. HTTP/JSON today, gRPC later: both decode into these.

use crate::tensor::Tensor;
use std::time::Duration;

/// A tensor with the name the model gives it.
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub tensor: Tensor,
}

/// An output the client asked for, and how it wants it back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestedOutput {
    pub name: String,
    /// `Some(true)`: return as binary (HTTP binary extension); `None`: follow the request-level default.
    pub binary_data: Option<bool>,
}

/// The request-level parameters Sluice understands. Unknown parameters are accepted and ignored, as the protocol allows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestParams {
    /// Priority level, 1 = highest (Triton's convention); `None` or 0 = the model's default level.
    pub priority: Option<u32>,
    /// Queue timeout for this request; may only lower the model's own.
    pub timeout: Option<Duration>,
    /// Default for outputs that don't say: send them as binary.
    pub binary_data_output: bool,
    /// The V2 `cache` parameter: `Some(false)` asks for a fresh answer from the model (the response cache is
    /// bypassed, and the fresh answer replaces the cached one).
    pub cache: Option<bool>,
}

/// A decoded inference request, before it is checked against a model.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InferRequest {
    pub id: Option<String>,
    pub inputs: Vec<NamedTensor>,
    /// Empty means "all outputs".
    pub outputs: Vec<RequestedOutput>,
    pub params: RequestParams,
}

/// A finished inference, ready to encode.
#[derive(Clone, Debug, PartialEq)]
pub struct InferResponse {
    pub model_name: String,
    pub model_version: String,
    pub id: Option<String>,
    pub outputs: Vec<NamedTensor>,
    /// How the response cache answered, for models that use it (`x-sluice-cache` / the `sluice_cache` parameter).
    pub cache: Option<crate::cache::CacheStatus>,
}

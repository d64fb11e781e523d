//! KServe V2 (Open Inference Protocol) on the wire: request/response types, the JSON and gRPC codecs (server side, and
//! the client side the remote backend uses) with the binary tensor data extension, model metadata, and the one mapping from every module's errors to a status code and a V2 error body.

pub mod answer_scan;
pub mod decode;
pub mod error;
pub mod grpc;
pub mod http1;
pub mod json;
mod json_fast;
pub mod model_metadata;
pub mod types;

pub use error::ApiError;
pub use types::{InferRequest, InferResponse, NamedTensor, RequestParams, RequestedOutput};

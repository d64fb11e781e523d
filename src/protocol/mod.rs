//! KServe V2 (Open Inference Protocol) on the wire: request/response types, the JSON codec with the binary tensor
//! data extension, and the one mapping from every module's errors to a status code and a V2 error body.

pub mod decode;
pub mod error;
pub mod grpc;
pub mod json;
mod json_fast;
pub mod types;

pub use error::ApiError;
pub use types::{InferRequest, InferResponse, NamedTensor, RequestParams, RequestedOutput};

//! The protocol-neutral middle of an inference, shared by HTTP and gRPC: find the model version, check the request
//! against it, queue it with its scheduler, and pick the requested outputs. Decoding and encoding stay with each protocol.

use super::AppState;
use crate::protocol::{ApiError, InferRequest, InferResponse, NamedTensor};
use crate::repository::ModelVersion;
use crate::scheduler::Job;
use crate::tensor::Tensor;
use axum::http::StatusCode;
use std::sync::Arc;
use std::time::Duration;

/// Finds a model version for a request that is about to run: unknown → 404, not ready or shutting down → 503.
pub fn serving_model(state: &AppState, model: &str, version: Option<&str>) -> Result<Arc<ModelVersion>, ApiError> {
    let m = state.repository.get(model, version)?;
    if !state.is_ready() || !m.is_ready() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("model '{model}' is not ready")));
    }
    Ok(m)
}

/// Runs a decoded request on `m`. `deadline` (e.g. gRPC's `grpc-timeout`) lowers the queue timeout like the V2
/// `timeout` parameter does. The request's `outputs` and `params` are only read, so callers can still use them to encode.
pub async fn infer(state: &AppState, m: &ModelVersion, request: &mut InferRequest, deadline: Option<Duration>) -> Result<InferResponse, ApiError> {
    let _in_flight = state.track_inference();
    let selected = m.signature.select_outputs(&request.outputs)?;
    let validated = m.signature.validate(std::mem::take(&mut request.inputs), m.settings.max_batch_size)?;
    let timeout = match (request.params.timeout, deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let job = Job { inputs: validated.tensors, rows: validated.rows, priority: request.params.priority, timeout };
    let mut outputs: Vec<Option<Tensor>> = m.scheduler.infer(job).await?.into_iter().map(Some).collect();
    let outputs: Vec<NamedTensor> = selected
        .iter()
        .map(|&i| {
            let tensor = outputs.get_mut(i).and_then(Option::take);
            tensor.map(|tensor| NamedTensor { name: m.signature.outputs[i].name.clone(), tensor })
        })
        .collect::<Option<_>>()
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the backend returned fewer outputs than the model declares"))?;
    Ok(InferResponse { model_name: m.name.clone(), model_version: m.version_string(), id: request.id.take(), outputs })
}

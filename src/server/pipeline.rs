//! The protocol-neutral middle of an inference, shared by HTTP and gRPC: find the model version, check the request
//! against it, answer it from the response cache or queue it with its scheduler, and pick the requested outputs.
//! Decoding and encoding stay with each protocol.

use super::AppState;
use crate::cache::key::{KeyBuilder, ModelIdentity};
use crate::backend::{RawAnswer, RawInfer};
use crate::cache::{Outputs, Policy, ResponseCache};
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
    if !state.is_admitting() || !m.is_ready() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, format!("model '{model}' is not ready")));
    }
    Ok(m)
}

/// The refusal a request for `m` gets before its body is read, when `m`'s queue is full (see
/// [`crate::scheduler::Scheduler::refuse_if_full`]). Never for a model with a response cache: a hit needs no queue.
pub fn refuse_early(state: &AppState, m: &ModelVersion) -> Option<ApiError> {
    if state.cache.is_some() && m.cache.is_some() {
        return None;
    }
    m.scheduler.refuse_if_full().map(ApiError::from)
}

/// The cache policy of a request: the V2 `cache` parameter, then the transport's `Cache-Control` (`header`).
pub fn cache_policy(request: &InferRequest, header: Option<&str>) -> Policy {
    let directives = header.unwrap_or("").split(',').map(|d| d.trim().to_ascii_lowercase());
    let mut policy = Policy::Use;
    for directive in directives {
        match directive.as_str() {
            "no-store" => return Policy::NoStore,
            "no-cache" | "max-age=0" => policy = Policy::Refresh,
            _ => {}
        }
    }
    if request.params.cache == Some(false) {
        policy = Policy::Refresh;
    }
    policy
}

/// Runs a decoded request on `m`. `deadline` (e.g. gRPC's `grpc-timeout`) lowers the queue timeout like the V2
/// `timeout` parameter does. The request's `outputs` and `params` are only read, so callers can still use them to encode.
pub async fn infer(
    state: &AppState,
    m: &Arc<ModelVersion>,
    request: &mut InferRequest,
    deadline: Option<Duration>,
    policy: Policy,
) -> Result<InferResponse, ApiError> {
    let _in_flight = state.track_inference();
    tokio::select! {
        biased;
        answer = infer_inner(state, m, request, deadline, policy) => answer,
        _ = state.aborted() => Err(drain_expired()),
    }
}

/// Passes a V2 HTTP body on undecoded when `m` needs nothing of the gateway but a pass: a remote model over HTTP
/// without gateway batching or cache, nothing queued, a slot free ([`crate::scheduler::Scheduler::forward`]).
/// `None`: the request takes the decoded path. Bad requests are the upstream's to refuse (its 4xx is passed on).
pub async fn forward(state: &AppState, m: &Arc<ModelVersion>, request: &RawInfer) -> Option<Result<RawAnswer, ApiError>> {
    if state.cache.is_some() && m.cache.is_some() {
        return None;
    }
    let _in_flight = state.track_inference();
    tokio::select! {
        biased;
        answer = m.scheduler.forward(request) => answer.map(|result| result.map_err(ApiError::from)),
        _ = state.aborted() => Some(Err(drain_expired())),
    }
}

fn drain_expired() -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down and its drain time ran out before this request was answered; retry it elsewhere")
        .with_retry_after(Duration::from_secs(1))
}

async fn infer_inner(
    state: &AppState,
    m: &Arc<ModelVersion>,
    request: &mut InferRequest,
    deadline: Option<Duration>,
    policy: Policy,
) -> Result<InferResponse, ApiError> {
    let selected = m.signature.select_outputs(&request.outputs)?;
    let validated = m.signature.validate(std::mem::take(&mut request.inputs), m.settings.max_batch_size)?;
    let timeout = match (request.params.timeout, deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    // The client's deadline for the whole request, for backends that call out (a remote pool's attempts).
    let client_deadline = deadline.map(|d| std::time::Instant::now() + d);
    let (outputs, cache) = match (&state.cache, &m.cache) {
        (Some(cache), Some(model_cache)) => {
            m.scheduler.priority_level(request.params.priority)?;
            let identity = ModelIdentity { name: &m.name, version: m.version, fingerprint: &model_cache.fingerprint };
            let key = KeyBuilder::new(&identity)
                .inputs(m.signature.inputs.iter().map(|spec| spec.name.as_str()).zip(&validated.tensors))
                .outputs(selected.iter().map(|&i| m.signature.outputs[i].name.as_str()))
                .finish();
            // A shared execution serves every identical request, so it waits as long as the model's queue allows;
            // this request's own deadline bounds only its own wait (see ResponseCache::run).
            let shared_timeout = if policy == Policy::Use { None } else { timeout };
            let deadline = if policy == Policy::Use { None } else { client_deadline };
            let job = Job { inputs: validated.tensors, rows: validated.rows, priority: request.params.priority, timeout: shared_timeout, deadline };
            let version = m.clone();
            let compute = async move { run_job(&version, job, &selected).await.map(Outputs::from) };
            let wait = if policy == Policy::Use { timeout } else { None };
            let (result, status) = ResponseCache::run(cache, key, model_cache, &m.name, policy, wait, compute).await;
            (result?.to_vec(), Some(status))
        }
        _ => {
            let job = Job { inputs: validated.tensors, rows: validated.rows, priority: request.params.priority, timeout, deadline: client_deadline };
            (run_job(m, job, &selected).await?, None)
        }
    };
    Ok(InferResponse { model_name: m.name.clone(), model_version: m.version_string(), id: request.id.take(), outputs, cache })
}

/// Queues a job with the model's scheduler and names the selected outputs.
async fn run_job(m: &ModelVersion, job: Job, selected: &[usize]) -> Result<Vec<NamedTensor>, ApiError> {
    let mut outputs: Vec<Option<Tensor>> = m.scheduler.infer(job).await?.into_iter().map(Some).collect();
    selected
        .iter()
        .map(|&i| {
            let tensor = outputs.get_mut(i).and_then(Option::take);
            tensor.map(|tensor| NamedTensor { name: m.signature.outputs[i].name.clone(), tensor })
        })
        .collect::<Option<_>>()
        .ok_or_else(|| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the backend returned fewer outputs than the model declares"))
}

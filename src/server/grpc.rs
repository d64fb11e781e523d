//! The KServe V2 gRPC service (`inference.GRPCInferenceService`), with Triton's streaming, configuration and statistics
//! extensions. It shares the HTTP server's state and inference pipeline, so the same request gets the same outputs,
//! errors and scheduling on both protocols.

use super::{metadata, pipeline, AppState};
use crate::metrics::Protocol;
use crate::protocol::grpc::{config_data_type, decode_request, encode_response, pb};
use crate::protocol::ApiError;
use crate::repository::ModelVersion;
use crate::scheduler::stats::CountNs;
use pb::grpc_inference_service_server::GrpcInferenceService;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

/// Responses of one `ModelStreamInfer` call that may wait for the client to read them.
const STREAM_BUFFER: usize = 256;

pub struct InferenceService {
    state: Arc<AppState>,
}

impl InferenceService {
    pub fn new(state: Arc<AppState>) -> InferenceService {
        InferenceService { state }
    }
}

/// Reads the `grpc-timeout` header (`<digits><unit>`, units H M S m u n) as the request's deadline.
pub fn grpc_timeout(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The transport cancels a call when its deadline passes; answering a little before gives the client a precise
/// DEADLINE_EXCEEDED instead of a bare cancellation.
const DEADLINE_MARGIN: Duration = Duration::from_millis(2);

/// One inference through the shared pipeline, with the gRPC deadline counted from arrival (queue time included).
async fn infer_one(state: &AppState, req: pb::ModelInferRequest, deadline: Option<Duration>, cache_control: Option<&str>) -> Result<pb::ModelInferResponse, ApiError> {
    let started = std::time::Instant::now();
    let labels = state.metrics.is_enabled().then(|| (req.model_name.clone(), req.model_version.clone()));
    let result = infer_decoded(state, req, deadline, cache_control).await;
    if let Some((model, version)) = labels {
        let code = result.as_ref().map_or_else(|e| e.status.as_u16(), |_| 200);
        state.observe_request(Protocol::Grpc, &model, Some(version.as_str()).filter(|v| !v.is_empty()), code, started);
    }
    result
}

async fn infer_decoded(state: &AppState, req: pb::ModelInferRequest, deadline: Option<Duration>, cache_control: Option<&str>) -> Result<pb::ModelInferResponse, ApiError> {
    let decoded = decode_request(req, state.limits)?;
    let m = pipeline::serving_model(state, &decoded.model, decoded.version.as_deref())?;
    let mut request = decoded.request;
    let budget = deadline.map(|d| d.saturating_sub(DEADLINE_MARGIN));
    let policy = pipeline::cache_policy(&request, cache_control);
    let run = pipeline::infer(state, &m, &mut request, budget, policy);
    let response = match budget {
        None => run.await?,
        Some(budget) => tokio::time::timeout(budget, run).await.map_err(|_| {
            let deadline = deadline.unwrap_or(budget);
            ApiError::new(axum::http::StatusCode::GATEWAY_TIMEOUT, format!("the request's deadline of {deadline:?} passed while model '{}' ran it", m.name))
        })??,
    };
    Ok(encode_response(response))
}

fn lookup(state: &AppState, name: &str, version: &str) -> Result<Arc<ModelVersion>, Status> {
    state.repository.get(name, Some(version).filter(|v| !v.is_empty())).map_err(|e| Status::from(ApiError::from(e)))
}

fn tensor_metadata(specs: &[crate::backend::TensorSpec]) -> Vec<pb::model_metadata_response::TensorMetadata> {
    specs
        .iter()
        .map(|t| pb::model_metadata_response::TensorMetadata { name: t.name.clone(), datatype: t.dtype.v2_name().into(), shape: t.dims.clone() })
        .collect()
}

fn model_config(m: &ModelVersion) -> pb::ModelConfig {
    let s = &m.settings;
    let batching = s.max_batch_size > 0;
    let dims = |t: &crate::backend::TensorSpec| if batching { t.dims.get(1..).unwrap_or(&[]).to_vec() } else { t.dims.clone() };
    let parameters = HashMap::from([
        ("execution_provider".to_string(), pb::ModelParameter { string_value: m.execution_provider.clone() }),
        ("intra_op_thread_count".to_string(), pb::ModelParameter { string_value: s.threads.to_string() }),
    ]);
    pb::ModelConfig {
        name: m.name.clone(),
        platform: m.platform.into(),
        backend: "onnxruntime".into(),
        version_policy: Some(pb::ModelVersionPolicy {
            policy_choice: Some(pb::model_version_policy::PolicyChoice::All(pb::model_version_policy::All {})),
        }),
        max_batch_size: i32::try_from(s.max_batch_size).unwrap_or(i32::MAX),
        input: m.signature.inputs.iter().map(|t| pb::ModelInput { name: t.name.clone(), data_type: config_data_type(t.dtype) as i32, dims: dims(t) }).collect(),
        output: m.signature.outputs.iter().map(|t| pb::ModelOutput { name: t.name.clone(), data_type: config_data_type(t.dtype) as i32, dims: dims(t) }).collect(),
        instance_group: vec![pb::ModelInstanceGroup {
            name: format!("{}_0", m.name),
            count: i32::try_from(s.instances).unwrap_or(i32::MAX),
            gpus: vec![],
            kind: if m.execution_provider == "cpu" { pb::model_instance_group::Kind::Cpu } else { pb::model_instance_group::Kind::Gpu } as i32,
        }],
        scheduling_choice: batching.then(|| {
            pb::model_config::SchedulingChoice::DynamicBatching(pb::ModelDynamicBatching {
                preferred_batch_size: s.preferred_batch_sizes.iter().map(|&p| i32::try_from(p).unwrap_or(i32::MAX)).collect(),
                max_queue_delay_microseconds: s.max_queue_delay.as_micros() as u64,
                preserve_ordering: false,
                priority_levels: s.priority_levels as u64,
                default_priority_level: s.default_priority as u64,
                default_queue_policy: Some(pb::ModelQueuePolicy {
                    timeout_action: pb::model_queue_policy::TimeoutAction::Reject as i32,
                    default_timeout_microseconds: s.queue_timeout.as_micros() as u64,
                    allow_timeout_override: true,
                    max_queue_size: u32::try_from(s.queue_capacity).unwrap_or(u32::MAX),
                }),
            })
        }),
        parameters,
    }
}

fn duration(c: CountNs) -> Option<pb::StatisticDuration> {
    Some(pb::StatisticDuration { count: c.count, ns: c.ns })
}

fn model_statistics(m: &ModelVersion) -> pb::ModelStatistics {
    let s = m.scheduler.stats().snapshot();
    pb::ModelStatistics {
        name: m.name.clone(),
        version: m.version_string(),
        last_inference: s.last_inference_ms,
        inference_count: s.inference_count,
        execution_count: s.execution_count,
        inference_stats: Some(pb::InferStatistics {
            success: duration(s.success),
            fail: duration(s.fail),
            queue: duration(s.queue),
            compute_input: duration(s.compute_input),
            compute_infer: duration(s.compute_infer),
            compute_output: duration(s.compute_output),
            cache_hit: duration(CountNs::default()),
            cache_miss: duration(CountNs::default()),
        }),
        batch_stats: s
            .batch_sizes
            .iter()
            .map(|(&size, t)| pb::InferBatchStatistics {
                batch_size: size as u64,
                compute_input: duration(t.compute_input),
                compute_infer: duration(t.compute_infer),
                compute_output: duration(t.compute_output),
            })
            .collect(),
        memory_usage: vec![],
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<pb::ModelStreamInferResponse, Status>> + Send>>;

#[tonic::async_trait]
impl GrpcInferenceService for InferenceService {
    async fn server_live(&self, _: Request<pb::ServerLiveRequest>) -> Result<Response<pb::ServerLiveResponse>, Status> {
        Ok(Response::new(pb::ServerLiveResponse { live: true }))
    }

    async fn server_ready(&self, _: Request<pb::ServerReadyRequest>) -> Result<Response<pb::ServerReadyResponse>, Status> {
        Ok(Response::new(pb::ServerReadyResponse { ready: self.state.is_ready() }))
    }

    /// An unknown model is "not ready", not an error (as Triton answers).
    async fn model_ready(&self, request: Request<pb::ModelReadyRequest>) -> Result<Response<pb::ModelReadyResponse>, Status> {
        let r = request.into_inner();
        let ready = lookup(&self.state, &r.name, &r.version).is_ok_and(|m| m.is_ready()) && self.state.is_ready();
        Ok(Response::new(pb::ModelReadyResponse { ready }))
    }

    async fn server_metadata(&self, _: Request<pb::ServerMetadataRequest>) -> Result<Response<pb::ServerMetadataResponse>, Status> {
        Ok(Response::new(pb::ServerMetadataResponse {
            name: "sluice".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: metadata::EXTENSIONS.iter().map(|e| e.to_string()).collect(),
        }))
    }

    async fn model_metadata(&self, request: Request<pb::ModelMetadataRequest>) -> Result<Response<pb::ModelMetadataResponse>, Status> {
        let r = request.into_inner();
        let m = lookup(&self.state, &r.name, &r.version)?;
        Ok(Response::new(pb::ModelMetadataResponse {
            name: m.name.clone(),
            versions: self.state.repository.all().filter(|v| v.name == m.name).map(|v| v.version_string()).collect(),
            platform: m.platform.into(),
            inputs: tensor_metadata(&m.signature.inputs),
            outputs: tensor_metadata(&m.signature.outputs),
        }))
    }

    async fn model_infer(&self, request: Request<pb::ModelInferRequest>) -> Result<Response<pb::ModelInferResponse>, Status> {
        let deadline = grpc_timeout(request.metadata());
        // `cache-control: no-cache` / `no-store` as call metadata, as over HTTP.
        let cache_control = request.metadata().get("cache-control").and_then(|v| v.to_str().ok()).map(str::to_string);
        let tenant = super::auth_layer::tenant_of(request.extensions());
        let (model, request_id) = (request.get_ref().model_name.clone(), request.get_ref().id.clone());
        let span = super::http::request_span(|| tracing::info_span!("infer", protocol = "grpc", model = %model, request_id = %request_id, tenant = %tenant));
        match infer_one(&self.state, request.into_inner(), deadline, cache_control.as_deref()).instrument(span).await {
            Ok(response) => Ok(Response::new(response)),
            Err(err) => {
                if err.status.is_server_error() {
                    tracing::warn!(protocol = "grpc", model = %model, request_id = %request_id, tenant = %tenant, status = err.status.as_u16(), error = %err.message, "inference failed");
                }
                Err(err.into())
            }
        }
    }

    type ModelStreamInferStream = ResponseStream;

    /// Each request of the stream runs as soon as it arrives; answers come back as they finish, matched by `id`.
    /// A failed request is answered with `error_message` (and its `id`), and the stream stays open.
    async fn model_stream_infer(&self, request: Request<Streaming<pb::ModelInferRequest>>) -> Result<Response<ResponseStream>, Status> {
        let cache_control: Option<Arc<str>> = request.metadata().get("cache-control").and_then(|v| v.to_str().ok()).map(Arc::from);
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::ModelStreamInferResponse, Status>>(STREAM_BUFFER);
        let state = self.state.clone();
        tokio::spawn(async move {
            loop {
                // Once shutdown begins the stream takes no more requests; it ends when those in flight are answered.
                let next = tokio::select! {
                    next = inbound.next() => next,
                    _ = state.shutdown_begun() => break,
                };
                let Some(next) = next else { break };
                let req = match next {
                    Ok(req) => req,
                    Err(status) => {
                        tracing::debug!(%status, "inference stream ended by the client");
                        break;
                    }
                };
                let (state, tx, cache_control) = (state.clone(), tx.clone(), cache_control.clone());
                tokio::spawn(async move {
                    let id = req.id.clone();
                    let answer = match infer_one(&state, req, None, cache_control.as_deref()).await {
                        Ok(response) => pb::ModelStreamInferResponse { error_message: String::new(), infer_response: Some(response) },
                        Err(err) => pb::ModelStreamInferResponse {
                            error_message: err.message,
                            infer_response: Some(pb::ModelInferResponse { id, ..Default::default() }),
                        },
                    };
                    let _ = tx.send(Ok(answer)).await;
                });
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn model_config(&self, request: Request<pb::ModelConfigRequest>) -> Result<Response<pb::ModelConfigResponse>, Status> {
        let r = request.into_inner();
        let m = lookup(&self.state, &r.name, &r.version)?;
        Ok(Response::new(pb::ModelConfigResponse { config: Some(model_config(&m)) }))
    }

    /// Empty name: every model; empty version: every version of the model.
    async fn model_statistics(&self, request: Request<pb::ModelStatisticsRequest>) -> Result<Response<pb::ModelStatisticsResponse>, Status> {
        let r = request.into_inner();
        let model_stats = if r.name.is_empty() {
            self.state.repository.all().map(|m| model_statistics(&m)).collect()
        } else if r.version.is_empty() {
            lookup(&self.state, &r.name, "")?;
            self.state.repository.all().filter(|m| m.name == r.name).map(|m| model_statistics(&m)).collect()
        } else {
            let m = lookup(&self.state, &r.name, &r.version)?;
            vec![model_statistics(&m)]
        };
        Ok(Response::new(pb::ModelStatisticsResponse { model_stats }))
    }
}

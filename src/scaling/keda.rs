//! KEDA's external scaler (`externalscaler.ExternalScaler`, from `proto/externalscaler.proto`) on its own gRPC
//! listener (`[scaling.keda] listen`, `sluice serve --scaler ADDR`), so KEDA can scale the replicas of a Sluice
//! Deployment (`type: external`) and wake it from zero at once (`type: external-push`). Every answer is read from the
//! latest [`ScalingSnapshot`] (at most [`SAMPLE_INTERVAL`] old), the same one `/scaling` and `/metrics` show.
//!
//! # Trigger metadata
//!
//! KEDA sends the trigger's whole `metadata` map as `ScaledObjectRef.scalerMetadata` (including `scalerAddress`);
//! keys other than these are ignored:
//!
//! | key | default | meaning |
//! |---|---|---|
//! | `model` | all models | The model whose signal is read. Absent or empty: all models of this replica together. |
//! | `metric` | `desired_replicas` | `desired_replicas`, `queue_requests`, `in_flight` or `arrival_rate` (requests/s). |
//! | `target` | `1` | The per-replica target value of the metric, a number > 0. |
//!
//! For all models, `desired_replicas` is the snapshot's overall figure (the sum over models: they share a replica's
//! CPUs and accelerators), the other metrics are sums, and the target is active when any model is. An unknown model is
//! answered `NOT_FOUND` (the message names it and lists the loaded models); a bad `metric` or `target` is answered
//! `INVALID_ARGUMENT`. Values are trimmed of surrounding whitespace.
//!
//! # The RPCs
//!
//! - **GetMetricSpec**: one `MetricSpec` named `sluice-<model or "all">-<metric>`, lowercased, with every character
//!   outside `[a-z0-9-]` replaced by `-` (e.g. `sluice-wide-desired-replicas`). `targetSizeFloat` is the target and
//!   `targetSize` the target rounded up (at least 1), for KEDA versions before the float fields (< 2.17).
//! - **GetMetrics**: the metric's current value as `metricValueFloat`, and rounded up as `metricValue` (older KEDA reads
//!   only the integer; rounding up leans toward scale-out). The response carries the `metricName` KEDA asked for (the
//!   one GetMetricSpec returned); the value itself follows the request's `scaledObjectRef` metadata. With
//!   `metric: desired_replicas`, `target: 1` and the HPA's `AverageValue` target, KEDA computes
//!   `ceil(desired_replicas / 1)` replicas.
//! - **IsActive**: whether the model (or any model) is active: requests queued or running, or arriving faster than
//!   `[scaling] activation_rate` over `fast_window`.
//! - **StreamIsActive** (for `external-push` triggers): sends the current activity as soon as the stream opens, then
//!   every change, within [`SAMPLE_INTERVAL`] of the sample that shows it. It also resends the current state every
//!   [`STREAM_KEEPALIVE`]: KEDA treats each message like a poll's IsActive, so a repeat changes nothing, and the write
//!   lets a dead connection be noticed. The stream ends when the client goes away, when the server shuts down, or with
//!   `NOT_FOUND` when the model stops being loaded (KEDA re-opens it with backoff).
//! - `StreamMetricSpec` is not implemented: tonic answers `UNIMPLEMENTED`, after which KEDA uses GetMetricSpec alone.
//!
//! The listener also serves `grpc.health.v1.Health` (`""` and `externalscaler.ExternalScaler`: SERVING until shutdown,
//! for Kubernetes gRPC probes) and server reflection (v1 and v1alpha, for grpcurl).
//!
//! Right after start, before the sampler's first snapshot, a request waits up to [`FIRST_SNAPSHOT_WAIT`] for it, so an
//! early request does not see an empty repository and get `NOT_FOUND` for a model that is loaded.
//!
//! [`SAMPLE_INTERVAL`]: super::signal::SAMPLE_INTERVAL

use super::ScalingSnapshot;
use pb::external_scaler_server::{ExternalScaler, ExternalScalerServer};
use pb::{GetMetricSpecResponse, GetMetricsRequest, GetMetricsResponse, IsActiveResponse, MetricSpec, MetricValue, ScaledObjectRef};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tonic_health::ServingStatus;

/// Types generated from `proto/externalscaler.proto` (server for Sluice, client for the tests).
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("externalscaler");

    /// The encoded descriptor set of `proto/externalscaler.proto`, for gRPC server reflection on the scaler listener.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("externalscaler_descriptor");
}

/// How often an open StreamIsActive resends the current state when nothing changes.
pub const STREAM_KEEPALIVE: Duration = Duration::from_secs(15);
/// Longest wait for the sampler's first snapshot (it is taken right after start; this only bounds a stalled start).
pub const FIRST_SNAPSHOT_WAIT: Duration = Duration::from_secs(1);
/// At shutdown, how long open calls get to finish before the remaining connections are closed. StreamIsActive streams
/// end at once; health `Watch` streams never end on their own, so without this bound they would hold the server.
const SHUTDOWN_LINGER: Duration = Duration::from_millis(500);

/// The metadata keys Sluice reads.
const MODEL_KEY: &str = "model";
const METRIC_KEY: &str = "metric";
const TARGET_KEY: &str = "target";

/// The metric a trigger scales on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Metric {
    DesiredReplicas,
    QueueRequests,
    InFlight,
    ArrivalRate,
}

impl Metric {
    const ALL: [Metric; 4] = [Metric::DesiredReplicas, Metric::QueueRequests, Metric::InFlight, Metric::ArrivalRate];

    fn name(self) -> &'static str {
        match self {
            Metric::DesiredReplicas => "desired_replicas",
            Metric::QueueRequests => "queue_requests",
            Metric::InFlight => "in_flight",
            Metric::ArrivalRate => "arrival_rate",
        }
    }
}

/// What one trigger asks for, from its `scalerMetadata`.
#[derive(Clone, Debug, PartialEq)]
struct Query {
    /// `None`: all models of this replica.
    model: Option<String>,
    metric: Metric,
    /// Per-replica target, > 0 and finite.
    target: f64,
}

impl Query {
    fn parse(metadata: &HashMap<String, String>) -> Result<Query, Status> {
        let value = |key: &str| metadata.get(key).map(|v| v.trim()).filter(|v| !v.is_empty());
        let model = value(MODEL_KEY).map(str::to_string);
        let metric = match value(METRIC_KEY) {
            None => Metric::DesiredReplicas,
            Some(name) => Metric::ALL.into_iter().find(|m| m.name() == name).ok_or_else(|| {
                let known: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
                Status::invalid_argument(format!(
                    "scalerMetadata '{METRIC_KEY}' is '{name}': expected one of {}",
                    known.join(", ")
                ))
            })?,
        };
        let target = match value(TARGET_KEY) {
            None => 1.0,
            Some(text) => match text.parse::<f64>() {
                Ok(t) if t.is_finite() && t > 0.0 => t,
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "scalerMetadata '{TARGET_KEY}' is '{text}': expected a number > 0 (the per-replica target)"
                    )))
                }
            },
        };
        Ok(Query { model, metric, target })
    }

    fn from_ref(object: Option<&ScaledObjectRef>) -> Result<Query, Status> {
        match object {
            Some(object) => Query::parse(&object.scaler_metadata),
            None => Query::parse(&HashMap::new()),
        }
    }

    /// `sluice-<model or all>-<metric>`, reduced to `[a-z0-9-]` so it is a valid HPA metric name.
    fn metric_name(&self) -> String {
        let raw = format!("sluice-{}-{}", self.model.as_deref().unwrap_or("all"), self.metric.name());
        let mut name = String::with_capacity(raw.len());
        for c in raw.chars().flat_map(char::to_lowercase) {
            let c = if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' };
            // One dash for a run of replaced characters keeps names readable.
            if !(c == '-' && name.ends_with('-')) {
                name.push(c);
            }
        }
        name.trim_end_matches('-').to_string()
    }

    /// The metric's value and the activity, from `snapshot`; `NOT_FOUND` for a model that is not loaded.
    fn read(&self, snapshot: &ScalingSnapshot) -> Result<(f64, bool), Status> {
        let Some(name) = &self.model else {
            let models = snapshot.models.values();
            let value = match self.metric {
                Metric::DesiredReplicas => snapshot.desired_replicas,
                Metric::QueueRequests => models.map(|m| m.queue_requests as f64).sum(),
                Metric::InFlight => models.map(|m| m.in_flight as f64).sum(),
                Metric::ArrivalRate => models.map(|m| m.arrival_rate).sum(),
            };
            return Ok((value, snapshot.active));
        };
        let Some(m) = snapshot.models.get(name) else {
            let known: Vec<&str> = snapshot.models.keys().map(String::as_str).collect();
            let known = if known.is_empty() { "none are loaded".to_string() } else { format!("loaded: {}", known.join(", ")) };
            return Err(Status::not_found(format!("model '{name}' is not loaded on this replica ({known})")));
        };
        let value = match self.metric {
            Metric::DesiredReplicas => m.desired_replicas,
            Metric::QueueRequests => m.queue_requests as f64,
            Metric::InFlight => m.in_flight as f64,
            Metric::ArrivalRate => m.arrival_rate,
        };
        Ok((value, m.active))
    }
}

/// Rounds up for the integer fields older KEDA versions read; non-finite or negative values (never produced by the
/// sampler) count as 0.
fn ceil_i64(value: f64) -> i64 {
    if value.is_finite() && value > 0.0 {
        value.ceil() as i64
    } else {
        0
    }
}

/// The latest snapshot; right after start, waits (bounded) for the sampler's first one.
///
/// `scaling` is never marked seen here (only clones are), so `has_changed` on a clone tells whether the sampler has
/// published anything since the channel was created with its empty placeholder.
async fn latest(scaling: &watch::Receiver<Arc<ScalingSnapshot>>) -> watch::Receiver<Arc<ScalingSnapshot>> {
    let mut rx = scaling.clone();
    if let Ok(false) = rx.has_changed() {
        let _ = tokio::time::timeout(FIRST_SNAPSHOT_WAIT, rx.changed()).await;
    }
    rx
}

/// The service: reads snapshots; `stop` turns true when the server shuts down (open streams end then).
struct Scaler {
    scaling: watch::Receiver<Arc<ScalingSnapshot>>,
    stop: watch::Receiver<bool>,
}

type ActiveStream = Pin<Box<dyn Stream<Item = Result<IsActiveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl ExternalScaler for Scaler {
    async fn is_active(&self, request: Request<ScaledObjectRef>) -> Result<Response<IsActiveResponse>, Status> {
        let query = Query::from_ref(Some(request.get_ref()))?;
        let rx = latest(&self.scaling).await;
        let snapshot = rx.borrow().clone();
        let (_, active) = query.read(&snapshot)?;
        Ok(Response::new(IsActiveResponse { result: active }))
    }

    type StreamIsActiveStream = ActiveStream;

    async fn stream_is_active(&self, request: Request<ScaledObjectRef>) -> Result<Response<ActiveStream>, Status> {
        let query = Query::from_ref(Some(request.get_ref()))?;
        let mut rx = latest(&self.scaling).await;
        let snapshot = rx.borrow_and_update().clone();
        // A bad model fails the call itself, before any message.
        let (_, mut active) = query.read(&snapshot)?;
        let (tx, out) = mpsc::channel::<Result<IsActiveResponse, Status>>(4);
        let mut stop = self.stop.clone();
        tokio::spawn(async move {
            if tx.send(Ok(IsActiveResponse { result: active })).await.is_err() {
                return;
            }
            let stopped = async move {
                // Err: the server is gone, which is a stop too.
                let _ = stop.wait_for(|s| *s).await;
            };
            tokio::pin!(stopped);
            let start = tokio::time::Instant::now() + STREAM_KEEPALIVE;
            let mut keepalive = tokio::time::interval_at(start, STREAM_KEEPALIVE);
            keepalive.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let send = tokio::select! {
                    biased;
                    _ = &mut stopped => break,
                    _ = tx.closed() => break,
                    changed = rx.changed() => {
                        if changed.is_err() {
                            break; // The sampler stopped: the server is shutting down.
                        }
                        let snapshot = rx.borrow_and_update().clone();
                        match query.read(&snapshot) {
                            Ok((_, now)) if now == active => continue,
                            Ok((_, now)) => {
                                active = now;
                                keepalive.reset();
                                Ok(IsActiveResponse { result: active })
                            }
                            Err(status) => {
                                let _ = tx.send(Err(status)).await;
                                break;
                            }
                        }
                    }
                    _ = keepalive.tick() => Ok(IsActiveResponse { result: active }),
                };
                if tx.send(send).await.is_err() {
                    break;
                }
            }
            // Dropping `tx` ends the response stream with status OK.
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))))
    }

    async fn get_metric_spec(&self, request: Request<ScaledObjectRef>) -> Result<Response<GetMetricSpecResponse>, Status> {
        let query = Query::from_ref(Some(request.get_ref()))?;
        // Check the model exists, so a misconfigured trigger fails when KEDA reconciles rather than at the first poll.
        let rx = latest(&self.scaling).await;
        let snapshot = rx.borrow().clone();
        query.read(&snapshot)?;
        let spec = MetricSpec {
            metric_name: query.metric_name(),
            target_size: ceil_i64(query.target).max(1),
            target_size_float: query.target,
        };
        Ok(Response::new(GetMetricSpecResponse { metric_specs: vec![spec] }))
    }

    async fn get_metrics(&self, request: Request<GetMetricsRequest>) -> Result<Response<GetMetricsResponse>, Status> {
        let request = request.into_inner();
        let query = Query::from_ref(request.scaled_object_ref.as_ref())?;
        let rx = latest(&self.scaling).await;
        let snapshot = rx.borrow().clone();
        let (value, _) = query.read(&snapshot)?;
        let value = if value.is_finite() && value > 0.0 { value } else { 0.0 };
        let metric_name = if request.metric_name.is_empty() { query.metric_name() } else { request.metric_name };
        let metric = MetricValue { metric_name, metric_value: ceil_i64(value), metric_value_float: value };
        Ok(Response::new(GetMetricsResponse { metric_values: vec![metric] }))
    }
}

/// A bound scaler listener, not yet serving.
pub struct KedaServer {
    listener: tokio::net::TcpListener,
    scaling: watch::Receiver<Arc<ScalingSnapshot>>,
}

impl KedaServer {
    pub async fn bind(addr: SocketAddr, scaling: watch::Receiver<Arc<ScalingSnapshot>>) -> std::io::Result<KedaServer> {
        Ok(KedaServer { listener: tokio::net::TcpListener::bind(addr).await?, scaling })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves: health turns NOT_SERVING, open StreamIsActive streams end, calls in progress
    /// get `SHUTDOWN_LINGER` (0.5 s) to finish, then the remaining connections are closed.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let (reporter, health) = tonic_health::server::health_reporter();
        reporter.set_service_status("", ServingStatus::Serving).await;
        reporter.set_serving::<ExternalScalerServer<Scaler>>().await;
        let reflection = |builder: tonic_reflection::server::Builder<'static>| {
            builder
                .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection(tonic_reflection::server::Builder::configure()).build_v1().map_err(std::io::Error::other)?;
        let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure()).build_v1alpha().map_err(std::io::Error::other)?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let scaler = ExternalScalerServer::new(Scaler { scaling: self.scaling, stop: stop_rx });
        let incoming = crate::server::grpc_listener::nodelay_incoming(self.listener);
        let (graceful_tx, graceful_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(scaler)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = graceful_rx.await;
            });
        tokio::pin!(server);
        tokio::pin!(shutdown);
        tokio::select! {
            ended = &mut server => return ended.map_err(std::io::Error::other),
            _ = &mut shutdown => {}
        }
        reporter.set_service_status("", ServingStatus::NotServing).await;
        reporter.set_not_serving::<ExternalScalerServer<Scaler>>().await;
        let _ = stop_tx.send(true);
        let _ = graceful_tx.send(());
        match tokio::time::timeout(SHUTDOWN_LINGER, &mut server).await {
            Ok(ended) => ended.map_err(std::io::Error::other),
            // Dropping the server future closes the remaining connections (health watches, stalled clients).
            Err(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::ModelSignal;
    use std::collections::BTreeMap;
    use std::time::SystemTime;

    fn meta(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn snapshot() -> ScalingSnapshot {
        let mut models = BTreeMap::new();
        models.insert(
            "wide".to_string(),
            ModelSignal { desired_replicas: 1.25, active: true, queue_requests: 3, in_flight: 5, arrival_rate: 40.0, ..ModelSignal::default() },
        );
        models.insert("identity".to_string(), ModelSignal { in_flight: 1, arrival_rate: 2.0, ..ModelSignal::default() });
        ScalingSnapshot { timestamp: SystemTime::now(), target_utilization: 0.7, desired_replicas: 1.25, active: true, models }
    }

    #[test]
    fn defaults_and_unknown_keys() {
        let q = Query::parse(&meta(&[("scalerAddress", "sluice:9100"), ("model", " "), ("other", "x")])).unwrap();
        assert_eq!(q, Query { model: None, metric: Metric::DesiredReplicas, target: 1.0 });
        assert_eq!(q.metric_name(), "sluice-all-desired-replicas");
    }

    #[test]
    fn parses_model_metric_target() {
        let q = Query::parse(&meta(&[("model", "My.Model_2"), ("metric", "in_flight"), ("target", " 2.5 ")])).unwrap();
        assert_eq!(q, Query { model: Some("My.Model_2".into()), metric: Metric::InFlight, target: 2.5 });
        assert_eq!(q.metric_name(), "sluice-my-model-2-in-flight");
    }

    #[test]
    fn bad_metric_and_target_are_invalid_argument() {
        let e = Query::parse(&meta(&[("metric", "gpu")])).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("'gpu'") && e.message().contains("arrival_rate"), "{}", e.message());
        for bad in ["0", "-1", "abc", "NaN", "inf"] {
            let e = Query::parse(&meta(&[("target", bad)])).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
            assert!(e.message().contains(TARGET_KEY), "{}", e.message());
        }
    }

    #[test]
    fn reads_model_and_overall() {
        let s = snapshot();
        let q = |pairs: &[(&str, &str)]| Query::parse(&meta(pairs)).unwrap();
        assert_eq!(q(&[("model", "wide")]).read(&s).unwrap(), (1.25, true));
        assert_eq!(q(&[("model", "identity"), ("metric", "arrival_rate")]).read(&s).unwrap(), (2.0, false));
        assert_eq!(q(&[("metric", "in_flight")]).read(&s).unwrap(), (6.0, true));
        assert_eq!(q(&[("metric", "queue_requests")]).read(&s).unwrap(), (3.0, true));
        assert_eq!(q(&[("metric", "arrival_rate")]).read(&s).unwrap(), (42.0, true));
        let e = q(&[("model", "nope")]).read(&s).unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert!(e.message().contains("'nope'") && e.message().contains("identity, wide"), "{}", e.message());
    }

    #[test]
    fn integer_fields_round_up() {
        assert_eq!(ceil_i64(0.0), 0);
        assert_eq!(ceil_i64(0.001), 1);
        assert_eq!(ceil_i64(2.0), 2);
        assert_eq!(ceil_i64(f64::NAN), 0);
        assert_eq!(ceil_i64(-1.0), 0);
    }
}

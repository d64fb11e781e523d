//! The gRPC listener: the inference service with message-size limits, `grpc.health.v1.Health` (the server as "" and
//! each model by name, so Kubernetes gRPC probes can target either) and server reflection (v1 and v1alpha, for grpcurl).

use super::conn::{self, GrpcMessageTimeoutLayer, Protection};
use super::grpc::InferenceService;
use super::auth_layer::GrpcAuth;
use super::AppState;
use crate::protocol::grpc::pb::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::protocol::grpc::pb::FILE_DESCRIPTOR_SET;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

/// After the last inference is answered, how long open streams get to end on their own (so their last answers flush).
const STREAM_LINGER: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum GrpcStartError {
    #[error("{0}")]
    Bind(std::io::Error),
    #[error("reflection: {0}")]
    Reflection(String),
}

/// A bound gRPC server, not yet serving.
pub struct GrpcServer {
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    state: Arc<AppState>,
    max_message_bytes: usize,
    protection: Protection,
}

impl GrpcServer {
    pub async fn bind(addr: SocketAddr, state: Arc<AppState>, max_message_bytes: usize) -> Result<GrpcServer, GrpcStartError> {
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(GrpcStartError::Bind)?;
        let addr = listener.local_addr().map_err(GrpcStartError::Bind)?;
        Ok(GrpcServer { listener, addr, state, max_message_bytes, protection: Protection::plain("grpc") })
    }

    /// TLS, connection limits and timeouts (the default: plaintext, the default limits).
    pub fn with_protection(mut self, protection: Protection) -> GrpcServer {
        self.protection = protection;
        self
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    async fn set_health(reporter: &HealthReporter, state: &AppState, status: ServingStatus) {
        reporter.set_service_status("", status).await;
        reporter.set_service_status("inference.GRPCInferenceService", status).await;
        for m in state.repository.all() {
            let model_status = if status == ServingStatus::Serving && m.is_ready() { ServingStatus::Serving } else { ServingStatus::NotServing };
            reporter.set_service_status(m.name.clone(), model_status).await;
        }
    }

    /// Serves until `shutdown` resolves, then in-flight calls finish (up to the drain deadline). Health turns
    /// NOT_SERVING as soon as draining begins, while calls are still served.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let (reporter, health) = tonic_health::server::health_reporter();
        Self::set_health(&reporter, &self.state, ServingStatus::Serving).await;
        let (drain_reporter, drain_state) = (reporter.clone(), self.state.clone());
        tokio::spawn(async move {
            drain_state.drain_begun().await;
            Self::set_health(&drain_reporter, &drain_state, ServingStatus::NotServing).await;
        });
        let reflection = |builder: tonic_reflection::server::Builder<'static>| {
            builder
                .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        // Inference and reflection need a key when [auth] is enabled; health stays open for probes.
        let auth = GrpcAuth(self.state.auth.clone());
        let reflection_v1 = reflection(tonic_reflection::server::Builder::configure()).build_v1().map_err(std::io::Error::other)?;
        let reflection_v1 = InterceptedService::new(reflection_v1, auth.clone());
        let reflection_v1alpha = reflection(tonic_reflection::server::Builder::configure()).build_v1alpha().map_err(std::io::Error::other)?;
        let reflection_v1alpha = InterceptedService::new(reflection_v1alpha, auth.clone());
        let inference = GrpcInferenceServiceServer::new(InferenceService::new(self.state.clone()))
            .max_decoding_message_size(self.max_message_bytes)
            .max_encoding_message_size(self.max_message_bytes);
        let inference = InterceptedService::new(inference, auth);
        // Connections come through conn.rs: TLS (ALPN h2), the connection limit, the preface timeout, TCP_NODELAY.
        let limits = self.protection.limits().clone();
        let message_timeout = GrpcMessageTimeoutLayer::new(&self.protection);
        let incoming = conn::incoming(conn::Listener::new(self.listener, self.protection, super::tls::Alpn::Grpc));
        let state = self.state.clone();
        let mut stop = Box::pin(shutdown);
        let (graceful_tx, graceful_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tonic::transport::Server::builder()
            .max_concurrent_streams(limits.max_concurrent_streams)
            .http2_max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
            .http2_keepalive_interval(limits.keepalive_interval)
            .http2_keepalive_timeout(Some(limits.keepalive_timeout))
            .layer(message_timeout)
            .add_service(health)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(inference)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = graceful_rx.await;
            });
        tokio::pin!(server);
        tokio::select! {
            ended = &mut server => return ended.map_err(std::io::Error::other),
            _ = &mut stop => {}
        }
        state.begin_shutdown();
        Self::set_health(&reporter, &state, ServingStatus::NotServing).await;
        let _ = graceful_tx.send(());
        // Graceful: unary calls and open inference streams finish what they hold. Streams that never end on their own
        // (health watches, idle clients) are closed once no inference is in flight; at the drain deadline the
        // inferences still running are answered 503 / UNAVAILABLE (see AppState::abort_in_flight) and flushed.
        tokio::select! {
            ended = &mut server => return ended.map_err(std::io::Error::other),
            _ = state.idle() => {}
            _ = super::abort_flushed(&state) => return Ok(()),
        }
        match tokio::time::timeout(STREAM_LINGER, &mut server).await {
            Ok(ended) => ended.map_err(std::io::Error::other),
            // Dropping the server future closes the remaining connections.
            Err(_) => Ok(()),
        }
    }
}

/// A listener's connections with Nagle's algorithm off: gRPC writes small frames (headers, short messages) that must
/// not wait for an ACK. Shared by every gRPC listener.
pub fn nodelay_incoming(listener: tokio::net::TcpListener) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|tcp| {
            let _ = tcp.set_nodelay(true);
        })
    })
}

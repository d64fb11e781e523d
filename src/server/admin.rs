//! The admin listener (default :8002), apart from the data ports so it can be firewalled and scraped separately:
//! `GET /metrics` (Prometheus text format) and `GET /scaling` (the scaling signal as JSON, for KEDA's metrics-api scaler).
//! It keeps answering while the data listeners drain, so autoscalers and scrapers see a shutting-down replica to the end.

use crate::metrics::Metrics;
use crate::protocol::ApiError;
use crate::scaling::ScalingSnapshot;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::watch;

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub scaling: watch::Receiver<Arc<ScalingSnapshot>>,
    /// The model repository, for the repository API (`/v2/repository/...`).
    pub repository: Arc<crate::repository::Repository>,
    /// When `[auth] enabled`: every admin route needs a key with the `admin` scope.
    pub auth: Option<Arc<crate::admission::Authenticator>>,
}

pub fn router(state: AdminState) -> Router {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/scaling", get(scaling))
        .route("/scaling/{model}", get(scaling_model))
        .merge(super::repository_api::router(state.repository.clone()))
        .fallback(|| async { ApiError::not_found("not found: the admin port serves /metrics, /scaling, /scaling/{model} and the repository API (POST /v2/repository/index, /v2/repository/models/{m}/load and /unload)") })
        .with_state(state.clone());
    match state.auth {
        Some(auth) => router.layer(axum::middleware::from_fn_with_state(auth, super::auth_layer::require_admin)),
        None => router,
    }
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let snapshot = state.scaling.borrow().clone();
    match state.metrics.render(&snapshot) {
        Some(text) => ([(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"))], text).into_response(),
        None => ApiError::not_found("metrics are disabled ([metrics] enabled = false)").into_response(),
    }
}

fn json(value: &impl serde::Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response(),
        Err(e) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the scaling signal: {e}")).into_response(),
    }
}

async fn scaling(State(state): State<AdminState>) -> Response {
    let snapshot = state.scaling.borrow().clone();
    json(&*snapshot)
}

/// One model's signal alone: the simplest `valueLocation` (`desired_replicas`) for model names that GJSON would need escaped.
async fn scaling_model(State(state): State<AdminState>, Path(model): Path<String>) -> Response {
    let snapshot = state.scaling.borrow().clone();
    match snapshot.models.get(&model) {
        Some(signal) => json(signal),
        None => ApiError::not_found(format!("unknown model '{model}'")).into_response(),
    }
}

/// A bound admin listener, not yet serving.
pub struct AdminServer {
    listener: tokio::net::TcpListener,
    state: AdminState,
    protection: super::conn::Protection,
}

impl AdminServer {
    pub async fn bind(addr: SocketAddr, state: AdminState) -> std::io::Result<AdminServer> {
        Ok(AdminServer { listener: tokio::net::TcpListener::bind(addr).await?, state, protection: super::conn::Protection::plain("admin") })
    }

    /// TLS (`[admin.tls]`), the connection limit and the timeouts of `[server]`.
    pub fn with_protection(mut self, protection: super::conn::Protection) -> AdminServer {
        self.protection = protection;
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let listener = super::conn::Listener::new(self.listener, self.protection, super::tls::Alpn::Http1);
        super::conn::serve_http(listener, router(self.state), shutdown, std::future::pending()).await
    }
}

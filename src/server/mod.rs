//! Listeners: the KServe V2 HTTP server (axum on hyper), the gRPC server (tonic), and their graceful shutdown.

pub mod admin;
pub mod conn;
pub mod auth_layer;
pub mod grpc;
pub mod grpc_listener;
pub mod http;
pub mod lane;
pub(crate) mod metadata;
pub mod pipeline;
pub mod latch;
pub mod tls;
pub mod repository_api;

use crate::metrics::{Metrics, Protocol, UNKNOWN_MODEL};
use crate::protocol::json::DecodeLimits;
use crate::repository::Repository;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{watch, Notify};

/// What every handler shares.
pub struct AppState {
    pub repository: Arc<Repository>,
    pub limits: DecodeLimits,
    pub max_body_bytes: usize,
    pub metrics: Arc<Metrics>,
    /// The response cache, when a loaded model uses it.
    pub cache: Option<Arc<crate::cache::ResponseCache>>,
    /// Checks API keys when `[auth] enabled`.
    pub auth: Option<Arc<crate::admission::Authenticator>>,
    /// Readiness is false (load balancers take the replica out); requests are still served.
    draining: watch::Sender<bool>,
    /// The listeners stopped accepting (gRPC streams take no more requests); what is in flight finishes.
    shutting_down: watch::Sender<bool>,
    /// The drain deadline passed: in-flight inferences are answered 503 / UNAVAILABLE now. A latch rather than a
    /// watch: every inference waits on it, and a latch's waiter costs a fraction of a watch receiver's.
    aborting: latch::Latch,
    /// Inferences between admission and answer, on any protocol.
    in_flight: AtomicUsize,
    idle: Notify,
}

impl AppState {
    pub fn new(repository: Arc<Repository>, limits: DecodeLimits, max_body_bytes: usize, metrics: Arc<Metrics>) -> AppState {
        AppState {
            repository,
            limits,
            max_body_bytes,
            metrics,
            cache: None,
            auth: None,
            draining: watch::Sender::new(false),
            shutting_down: watch::Sender::new(false),
            aborting: latch::Latch::new(),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
        }
    }

    /// Requires API keys on the data plane.
    pub fn with_auth(mut self, auth: Option<Arc<crate::admission::Authenticator>>) -> AppState {
        self.auth = auth;
        self
    }

    /// Answers cache-enabled models through `cache`.
    pub fn with_cache(mut self, cache: Option<Arc<crate::cache::ResponseCache>>) -> AppState {
        self.cache = cache;
        self
    }

    /// Ready means: not draining or shutting down, and every model loaded and ready.
    pub fn is_ready(&self) -> bool {
        !*self.draining.borrow() && self.is_admitting() && self.repository.is_ready()
    }

    /// Whether new inferences are taken: until the drain deadline. After the listeners close, a request that still
    /// arrives on an open keep-alive connection was sent before the client could know, and is served like the rest
    /// (the connection is closed after its answer).
    pub fn is_admitting(&self) -> bool {
        !self.aborting.is_set()
    }

    /// The first step of a graceful stop: readiness turns false at once (HTTP and gRPC health), while requests and
    /// new connections are still served, so load balancers can take the replica out without failing anyone.
    pub fn begin_drain(&self) {
        self.draining.send_replace(true);
    }

    /// Resolves once draining (or shutdown) has begun.
    pub async fn drain_begun(&self) {
        let mut rx = self.draining.subscribe();
        let _ = rx.wait_for(|begun| *begun).await;
    }

    /// Readiness turns false and the listeners stop accepting; requests already on their way are served.
    pub fn begin_shutdown(&self) {
        self.draining.send_replace(true);
        self.shutting_down.send_replace(true);
    }

    /// The drain deadline: every inference still in flight is answered 503 / UNAVAILABLE at once (their batches may
    /// still be running; their answers are dropped), so no accepted request ends in silence.
    pub fn abort_in_flight(&self) {
        self.begin_shutdown();
        self.aborting.set();
    }

    /// Resolves once [`AppState::abort_in_flight`] was called.
    pub async fn aborted(&self) {
        self.aborting.wait().await;
    }

    /// Resolves once shutdown has begun.
    pub async fn shutdown_begun(&self) {
        let mut rx = self.shutting_down.subscribe();
        let _ = rx.wait_for(|begun| *begun).await;
    }

    /// Counts one answered inference request. The model and version labels are those of the loaded version the request
    /// resolved to; a name that is not a loaded model is counted as [`UNKNOWN_MODEL`] so clients cannot mint series.
    pub fn observe_request(&self, protocol: Protocol, model: &str, version: Option<&str>, code: u16, started: std::time::Instant) {
        if !self.metrics.is_enabled() {
            return;
        }
        let elapsed = started.elapsed();
        match self.repository.get(model, version) {
            Ok(m) => m.request_metrics.record(protocol, code, elapsed),
            Err(_) if self.repository.get(model, None).is_ok() => self.metrics.request(protocol, model, "", code, elapsed),
            Err(_) => self.metrics.request(protocol, UNKNOWN_MODEL, "", code, elapsed),
        }
    }

    /// [`AppState::observe_request`] for a request that resolved to `m` (no second look-up).
    pub fn observe_request_of(&self, protocol: Protocol, m: &crate::repository::ModelVersion, code: u16, started: std::time::Instant) {
        if self.metrics.is_enabled() {
            m.request_metrics.record(protocol, code, started.elapsed());
        }
    }

    /// Counts an inference as in flight until the returned guard drops.
    pub fn track_inference(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self)
    }

    /// Resolves when no inference is in flight.
    pub async fn idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// An inference in flight (see [`AppState::track_inference`]).
pub struct InFlight<'a>(&'a AppState);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A bound HTTP server, not yet serving. Binding first lets callers learn the port (e.g. after binding port 0).
pub struct HttpServer {
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    protection: conn::Protection,
}

impl HttpServer {
    pub async fn bind(addr: SocketAddr, state: Arc<AppState>) -> std::io::Result<HttpServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        Ok(HttpServer { listener, state, protection: conn::Protection::plain("http") })
    }

    /// TLS, connection limits and timeouts (the default: plaintext, the default limits).
    pub fn with_protection(mut self, protection: conn::Protection) -> HttpServer {
        self.protection = protection;
        self
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish, and returns; at the
    /// drain deadline ([`AppState::abort_in_flight`]) it returns after [`ABORT_FLUSH`] whatever connections remain.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let state = self.state.clone();
        let service = http::DataPlane::new(self.state);
        // Our own accept loop (conn.rs): TLS, the connection limit, header and body timeouts; TCP_NODELAY so small V2
        // responses do not wait for Nagle's algorithm.
        let listener = conn::Listener::new(self.listener, self.protection, tls::Alpn::Http);
        let close_state = state.clone();
        let closing = async move {
            shutdown.await;
            close_state.begin_shutdown();
        };
        conn::serve_http(listener, service, closing, abort_flushed(&state)).await
    }
}

/// After the drain deadline, how long aborted requests' 503 answers get to reach their clients before the listeners'
/// remaining connections are dropped.
pub const ABORT_FLUSH: std::time::Duration = std::time::Duration::from_millis(500);

/// Resolves [`ABORT_FLUSH`] after the drain deadline.
pub async fn abort_flushed(state: &AppState) {
    state.aborted().await;
    tokio::time::sleep(ABORT_FLUSH).await;
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}

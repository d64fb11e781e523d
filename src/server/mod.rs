//! Listeners: the KServe V2 HTTP server (axum on hyper) and its graceful shutdown.

pub mod grpc;
pub mod grpc_listener;
pub mod http;
pub(crate) mod metadata;
pub mod pipeline;

use crate::protocol::json::DecodeLimits;
use axum::serve::ListenerExt;
use crate::repository::Repository;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What every handler shares.
pub struct AppState {
    pub repository: Arc<Repository>,
    pub limits: DecodeLimits,
    pub max_body_bytes: usize,
    shutting_down: AtomicBool,
}

impl AppState {
    pub fn new(repository: Arc<Repository>, limits: DecodeLimits, max_body_bytes: usize) -> AppState {
        AppState { repository, limits, max_body_bytes, shutting_down: AtomicBool::new(false) }
    }

    /// Ready means: not shutting down and every model loaded and ready.
    pub fn is_ready(&self) -> bool {
        !self.shutting_down.load(Ordering::Acquire) && self.repository.is_ready()
    }

    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Release);
    }
}

/// A bound HTTP server, not yet serving. Binding first lets callers learn the port (e.g. after binding port 0).
pub struct HttpServer {
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
}

impl HttpServer {
    pub async fn bind(addr: SocketAddr, state: Arc<AppState>) -> std::io::Result<HttpServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        Ok(HttpServer { listener, state })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets in-flight requests finish, and returns.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let state = self.state.clone();
        let router = http::router(self.state);
        // Small V2 responses must not wait for Nagle's algorithm.
        let listener = self.listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                shutdown.await;
                state.begin_shutdown();
            })
            .await
    }
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

//! Wiring: from a [`Config`] to a serving process with its HTTP and gRPC listeners. Used by `sluice serve` and by the
//! integration tests, which start the real server on port 0 and talk to it over the network.

use crate::backend::onnx;
use crate::config::Config;
use crate::protocol::json::DecodeLimits;
use crate::repository::{Repository, RepositoryError};
use crate::server::{grpc_listener, AppState, HttpServer};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Runtime(#[from] crate::backend::BackendError),
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot set up the gRPC server: {0}")]
    Grpc(String),
}

/// A running server: its addresses, and a handle to stop it.
pub struct Running {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    pub state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    servers: Vec<JoinHandle<std::io::Result<()>>>,
}

impl Running {
    /// Stops accepting, finishes in-flight requests, and waits for both listeners to end.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.wait().await
    }

    /// Waits until the server ends (after the `shutdown_on` future given to [`start`] resolved).
    pub async fn wait(mut self) -> std::io::Result<()> {
        let mut result = Ok(());
        for server in self.servers.drain(..) {
            let ended = server.await.unwrap_or_else(|e| Err(std::io::Error::other(e)));
            if result.is_ok() {
                result = ended;
            }
        }
        self.state.repository.close();
        result
    }
}

/// Resolves once the stop signal has been given.
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Loads ONNX Runtime and the repository, binds the listeners and starts serving. The server stops when
/// `shutdown_on` resolves or [`Running::shutdown`] is called.
pub async fn start(config: &Config, shutdown_on: impl std::future::Future<Output = ()> + Send + 'static) -> Result<Running, StartError> {
    onnx::init_runtime(config.onnxruntime.library.as_deref())?;
    let repository = Arc::new(Repository::load(&config.server.models, &config.model_defaults)?);
    let limits = DecodeLimits { max_elements: config.server.max_tensor_elements };
    let state = Arc::new(AppState::new(repository, limits, config.server.max_body_bytes));

    let addr = config.server.http;
    let http = HttpServer::bind(addr, state.clone()).await.map_err(|source| StartError::Bind { addr, source })?;
    let http_addr = http.local_addr().map_err(|source| StartError::Bind { addr, source })?;
    let addr = config.server.grpc;
    let grpc = grpc_listener::GrpcServer::bind(addr, state.clone(), config.server.grpc_max_message_bytes)
        .await
        .map_err(|e| match e {
            grpc_listener::GrpcStartError::Bind(source) => StartError::Bind { addr, source },
            other => StartError::Grpc(other.to_string()),
        })?;
    let grpc_addr = grpc.local_addr();

    // One stop signal for both listeners: the caller's future, or `Running::shutdown`.
    let (stop, stop_requested) = oneshot::channel::<()>();
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown_on => {}
            _ = stop_requested => {}
        }
        let _ = stop_tx.send(true);
    });
    let servers = vec![tokio::spawn(http.serve(stopped(stop_rx.clone()))), tokio::spawn(grpc.serve(stopped(stop_rx)))];
    Ok(Running { http_addr, grpc_addr, state, stop: Some(stop), servers })
}

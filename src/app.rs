//! Wiring: from a [`Config`] to a serving process. Used by `sluice serve` and by the integration tests, which start the
//! real server on port 0 and talk to it over the network.

use crate::backend::onnx;
use crate::config::Config;
use crate::protocol::json::DecodeLimits;
use crate::repository::{Repository, RepositoryError};
use crate::server::{AppState, HttpServer};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Runtime(#[from] crate::backend::BackendError),
    #[error(transparent)]
    Repository(#[from] RepositoryError),
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// A running server: its address, and a handle to stop it.
pub struct Running {
    pub http_addr: SocketAddr,
    pub state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops accepting, finishes in-flight requests, and waits for the server to end.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = self.task.await.unwrap_or_else(|e| Err(std::io::Error::other(e)));
        self.state.repository.close();
        result
    }

    /// Waits until the server ends (after `shutdown_on` resolved).
    pub async fn wait(mut self) -> std::io::Result<()> {
        let task = &mut self.task;
        let result = task.await.unwrap_or_else(|e| Err(std::io::Error::other(e)));
        self.state.repository.close();
        result
    }
}

/// Loads ONNX Runtime and the repository, binds the listener and starts serving. The server stops when
/// `shutdown_on` resolves or [`Running::shutdown`] is called.
pub async fn start(config: &Config, shutdown_on: impl std::future::Future<Output = ()> + Send + 'static) -> Result<Running, StartError> {
    onnx::init_runtime(config.onnxruntime.library.as_deref())?;
    let repository = Arc::new(Repository::load(&config.server.models, &config.model_defaults)?);
    let limits = DecodeLimits { max_elements: config.server.max_tensor_elements };
    let state = Arc::new(AppState::new(repository, limits, config.server.max_body_bytes));
    let addr = config.server.http;
    let server = HttpServer::bind(addr, state.clone()).await.map_err(|source| StartError::Bind { addr, source })?;
    let http_addr = server.local_addr().map_err(|source| StartError::Bind { addr, source })?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async move {
        tokio::select! {
            _ = shutdown_on => {}
            _ = stopped => {}
        }
    }));
    Ok(Running { http_addr, state, stop: Some(stop), task })
}

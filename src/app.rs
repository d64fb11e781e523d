//! Wiring: from a [`Config`] to a serving process with its HTTP and gRPC listeners. Used by `sluice serve` and by the
//! integration tests, which start the real server on port 0 and talk to it over the network.

use crate::backend::{onnx, remote};
use crate::cache::ResponseCache;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::json::DecodeLimits;
use crate::repository::{Repository, RepositoryError};
use crate::scaling::signal::{self, Formula, Sampler};
use crate::scaling::keda::KedaServer;
use crate::scaling::{oci, ScalingSnapshot};
use crate::server::admin::{AdminServer, AdminState};
use crate::server::conn::{ConnLimits, Protection};
use crate::server::tls::TlsSource;
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
    #[error(transparent)]
    Oci(#[from] crate::scaling::oci::OciError),
    #[error(transparent)]
    Cache(#[from] crate::cache::CacheError),
    #[error(transparent)]
    Remote(#[from] crate::backend::remote::RemoteError),
    #[error(transparent)]
    Tls(#[from] crate::server::tls::TlsError),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
}

/// A running server: its addresses, and a handle to stop it.
pub struct Running {
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    /// `/metrics` and `/scaling`; `None` when `[admin] enabled = false`.
    pub admin_addr: Option<SocketAddr>,
    /// KEDA's external scaler; `None` when `[scaling.keda] enabled = false`.
    pub scaler_addr: Option<SocketAddr>,
    pub state: Arc<AppState>,
    /// The latest scaling snapshot (refreshed every 100 ms while the server runs).
    pub scaling: watch::Receiver<Arc<ScalingSnapshot>>,
    stop: Option<oneshot::Sender<()>>,
    /// The data listeners (HTTP, gRPC): they drain first.
    servers: Vec<JoinHandle<std::io::Result<()>>>,
    /// Admin listener, scaler, sampler and publishers: they keep answering until the data listeners are done.
    observers: Vec<JoinHandle<std::io::Result<()>>>,
    finish: watch::Sender<bool>,
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
        let _ = self.finish.send(true);
        for task in self.observers.drain(..) {
            let ended = task.await.unwrap_or_else(|e| Err(std::io::Error::other(e)));
            if result.is_ok() {
                result = ended;
            }
        }
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
    // Callers may have changed a loaded config (command-line flags, tests): check it as a whole again.
    config.validate(std::path::Path::new("the configuration (file and command-line flags)"))?;
    onnx::init_runtime(config.onnxruntime.library.as_deref())?;
    let metrics = Arc::new(Metrics::new(config.metrics.enabled));
    // Certificates are checked before the models load: a bad file stops the start at once, naming its key.
    let data_tls = config.server.tls.as_ref().map(|t| TlsSource::load(t, false)).transpose()?;
    let admin_tls = config.admin.tls.as_ref().filter(|_| config.admin.enabled).map(|t| TlsSource::load(t, true)).transpose()?;
    let conn_limits = Arc::new(ConnLimits::from(&config.server));
    let limits = DecodeLimits { max_elements: config.server.max_tensor_elements };
    // A gateway may have no local models at all: a missing repository directory is fine when upstreams serve models.
    let mut repository = if config.upstreams.is_empty() || config.server.models.is_dir() {
        Repository::load(&config.server.models, &config.model_defaults, &config.cache, &metrics)?
    } else {
        Repository::empty(&config.server.models, &config.model_defaults, &config.cache, &metrics)
    };
    // Pools are set up side by side (each may wait for its workers up to its `startup_timeout`; the first to fail
    // stops the start); their models are added in configuration order.
    let max_message_bytes = config.server.grpc_max_message_bytes.max(config.server.max_body_bytes);
    let pools = futures_util::future::try_join_all(
        config.upstreams.iter().map(|pool| remote::load_pool(pool, &config.model_defaults, &metrics, max_message_bytes, limits)),
    )
    .await?;
    for loaded in pools {
        for remote in loaded {
            repository.add_remote(remote, &config.cache, &metrics)?;
        }
    }
    let repository = Arc::new(repository);
    repository.warm_up().await?;
    // The cache exists only when a model uses it: no memory bound reserved, no Redis connections otherwise.
    let cache = match repository.all().any(|m| m.cache.is_some()) {
        true => Some(Arc::new(ResponseCache::new(&config.cache, &metrics)?)),
        false => None,
    };
    let auth = crate::admission::Authenticator::new(&config.auth, &metrics);
    let state = Arc::new(
        AppState::new(repository.clone(), limits, config.server.max_body_bytes, metrics.clone()).with_cache(cache.clone()).with_auth(auth.clone()),
    );
    let (finish, finish_rx) = watch::channel(false);
    // The first snapshot is taken now, so `/scaling` lists every model from the first request on.
    let mut sampler = Sampler::new(Formula::from(&config.scaling));
    let first = sampler.sample(&repository, std::time::Instant::now());
    let (scaling_tx, scaling) = watch::channel(Arc::new(first));
    let mut observers = Vec::new();

    let admin_addr = if config.admin.enabled {
        let addr = config.admin.listen;
        let admin_state = AdminState { metrics: metrics.clone(), scaling: scaling.clone(), repository: repository.clone(), auth: auth.clone() };
        let admin = AdminServer::bind(addr, admin_state)
            .await
            .map_err(|source| StartError::Bind { addr, source })?
            .with_protection(Protection::new("admin", conn_limits.clone(), admin_tls.clone(), &metrics));
        let bound = admin.local_addr().map_err(|source| StartError::Bind { addr, source })?;
        observers.push(tokio::spawn(admin.serve(stopped(finish_rx.clone()))));
        Some(bound)
    } else {
        None
    };
    let scaler_addr = if config.scaling.keda.enabled {
        let addr = config.scaling.keda.listen;
        let scaler = KedaServer::bind(addr, scaling.clone()).await.map_err(|source| StartError::Bind { addr, source })?;
        let bound = scaler.local_addr().map_err(|source| StartError::Bind { addr, source })?;
        observers.push(tokio::spawn(scaler.serve(stopped(finish_rx.clone()))));
        Some(bound)
    } else {
        None
    };
    if config.scaling.oci.enabled {
        observers.push(oci::start(&config.scaling.oci, scaling.clone(), metrics.clone(), stopped(finish_rx.clone()))?);
    }

    let addr = config.server.http;
    let http = HttpServer::bind(addr, state.clone())
        .await
        .map_err(|source| StartError::Bind { addr, source })?
        .with_protection(Protection::new("http", conn_limits.clone(), data_tls.clone(), &metrics));
    let http_addr = http.local_addr().map_err(|source| StartError::Bind { addr, source })?;
    let addr = config.server.grpc;
    let grpc = grpc_listener::GrpcServer::bind(addr, state.clone(), config.server.grpc_max_message_bytes)
        .await
        .map_err(|e| match e {
            grpc_listener::GrpcStartError::Bind(source) => StartError::Bind { addr, source },
            other => StartError::Grpc(other.to_string()),
        })?;
    let grpc = grpc.with_protection(Protection::new("grpc", conn_limits, data_tls.clone(), &metrics));
    let grpc_addr = grpc.local_addr();

    // The stop sequence: readiness false at once, serve on for the pre-stop delay, close the listeners, let queued and
    // in-flight requests finish within the drain timeout, then answer whatever is left with 503.
    let (stop, stop_requested) = oneshot::channel::<()>();
    let (stop_tx, stop_rx) = watch::channel(false);
    let shutdown = config.shutdown.clone();
    let drain_state = state.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown_on => {}
            _ = stop_requested => {}
        }
        drain_state.begin_drain();
        tracing::info!(pre_stop_delay = ?shutdown.pre_stop_delay, drain_timeout = ?shutdown.drain_timeout, "draining: readiness is false; still serving");
        tokio::time::sleep(shutdown.pre_stop_delay).await;
        tracing::info!("closing the listeners; finishing queued and in-flight requests");
        drain_state.begin_shutdown();
        let _ = stop_tx.send(true);
        tokio::select! {
            _ = drain_state.idle() => {}
            _ = tokio::time::sleep(shutdown.drain_timeout) => {
                tracing::warn!(drain_timeout = ?shutdown.drain_timeout, "drain timeout: answering the requests still in flight with 503");
                drain_state.abort_in_flight();
            }
        }
    });
    let servers = vec![tokio::spawn(http.serve(stopped(stop_rx.clone()))), tokio::spawn(grpc.serve(stopped(stop_rx)))];
    // Certificate reload: new connections get the new files' certificate; open ones keep theirs.
    for (tls, listener) in [(&data_tls, "data"), (&admin_tls, "admin")] {
        if let Some(reloader) = tls.as_ref().and_then(|t| t.spawn_reloader(listener, &metrics, stopped(finish_rx.clone()))) {
            observers.push(reloader);
        }
    }

    observers.push(crate::repository::watch::spawn(repository.clone(), &config.repository, stopped(finish_rx.clone())));
    let sampler = signal::run(sampler, repository, scaling_tx, stopped(finish_rx.clone()));
    observers.push(tokio::spawn(async move {
        sampler.await;
        Ok(())
    }));
    if metrics.is_enabled() || cache.is_some() {
        let stop = stopped(finish_rx.clone());
        observers.push(tokio::spawn(async move {
            tokio::pin!(stop);
            let mut ticks = tokio::time::interval(std::time::Duration::from_secs(2));
            loop {
                tokio::select! {
                    _ = &mut stop => break,
                    _ = ticks.tick() => {
                        metrics.upkeep();
                        if let Some(cache) = &cache {
                            cache.upkeep().await;
                        }
                    }
                }
            }
            Ok(())
        }));
    }
    Ok(Running { http_addr, grpc_addr, admin_addr, scaler_addr, state, scaling, stop: Some(stop), servers, observers, finish })
}

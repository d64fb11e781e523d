//! The `remote` backend: models served by pools of upstream V2 servers (Triton, KServe predictors, other Sluice
//! instances). The gateway keeps its own queue, batching, cache and backpressure in front of them; this module only
//! gets each batch answered by some healthy upstream. See docs/REMOTE.md.
//!
//! - [`pool`]: endpoint set, balancing (power of two choices on peak-EWMA cost), retries within a budget
//! - [`endpoint`]: one upstream's load, health (active checks, passive ejection) and metrics
//! - [`transport`]: V2 over HTTP or gRPC, and how failures are classified ([`error`])

mod budget;
pub mod endpoint;
mod error;
mod h1;
pub mod pool;
pub mod transport;

use super::{AsyncBackend, BackendError, BackendFuture, Executor, ForwardFuture, ModelSignature, RawInfer};
use crate::config::{ConfigError, ModelDefaults, ModelSettings, UpstreamConfig};
use crate::metrics::Metrics;
use crate::protocol::json::DecodeLimits;
use crate::tensor::Tensor;
pub use error::{AttemptError, UpstreamError};
pub use pool::{Pool, PoolError, RemoteModelSpec};
use std::path::Path;
use std::sync::Arc;

/// One model of a pool, as the scheduler runs it.
pub struct RemoteModel {
    pool: Arc<Pool>,
    spec: Arc<RemoteModelSpec>,
}

impl AsyncBackend for RemoteModel {
    fn infer(&self, inputs: Vec<Tensor>, deadline: Option<std::time::Instant>) -> BackendFuture {
        let pool = self.pool.clone();
        let spec = self.spec.clone();
        Box::pin(async move { pool.infer(&spec, inputs, deadline).await.map_err(BackendError::Upstream) })
    }

    fn can_forward(&self) -> bool {
        self.pool.can_forward()
    }

    fn forward(&self, request: RawInfer) -> ForwardFuture {
        let pool = self.pool.clone();
        let spec = self.spec.clone();
        Box::pin(async move { pool.forward(&spec, request).await.map_err(BackendError::Upstream) })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error(transparent)]
    Pool(#[from] PoolError),
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// A remote model ready to be added to the repository.
pub struct LoadedRemote {
    pub name: String,
    /// The version number the gateway serves it under: the upstream's version when numeric, else 1.
    pub version: u64,
    pub signature: ModelSignature,
    pub settings: ModelSettings,
    pub executor: Executor,
    /// `remote:<pool>`.
    pub execution_provider: String,
    /// Stands in for a model file's hash in cache keys: the pool, the upstream model and version, and its metadata.
    pub fingerprint: [u8; 32],
}

/// Sets up one pool and finds each of its models on it (waiting up to `startup_timeout` for an endpoint to answer),
/// then starts the pool's background upkeep.
pub async fn load_pool(
    config: &UpstreamConfig,
    defaults: &ModelDefaults,
    metrics: &Metrics,
    max_message_bytes: usize,
    limits: DecodeLimits,
) -> Result<Vec<LoadedRemote>, RemoteError> {
    let pool = Pool::new(config, metrics, max_message_bytes, limits).await?;
    let files: Vec<_> = config
        .models
        .iter()
        .map(|name| {
            let mut file = config.model_settings.get(name).cloned().unwrap_or_default();
            // The upstream batches; the gateway only does when asked to.
            file.max_batch_size.get_or_insert(0);
            file
        })
        .collect();
    // Declared models need no worker; the others are looked for side by side (each may wait for a worker up to
    // `startup_timeout`).
    let specs = futures_util::future::try_join_all(config.models.iter().zip(&files).map(|(name, file)| {
        let idempotent = file.idempotent.unwrap_or(true);
        let pool = pool.clone();
        async move {
            match config.signatures.get(name) {
                Some(declared) => pool.declare(name, declared, idempotent),
                None => pool.discover(name, idempotent).await,
            }
        }
    }))
    .await?;
    let mut loaded = Vec::new();
    for ((name, spec), file) in config.models.iter().zip(specs).zip(files) {
        let where_ = format!("upstream pool '{}', model_settings.{name}", config.name);
        let settings = file.resolve(defaults, spec.signature.can_batch(), Path::new(&where_))?;
        let version = spec.version.as_deref().and_then(|v| v.parse::<u64>().ok()).filter(|&v| v > 0).unwrap_or(1);
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"sluice-remote-v1\0");
        for part in [config.name.as_str(), name, spec.version.as_deref().unwrap_or("")] {
            hasher.update(&(part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        hasher.update(format!("{:?}", spec.signature).as_bytes());
        tracing::info!(
            pool = %config.name,
            model = %name,
            upstream_version = spec.version.as_deref().unwrap_or("default"),
            metadata = if config.signatures.contains_key(name) { "declared" } else { "from the workers" },
            endpoints = pool.endpoints().len(),
            gateway_batching = settings.max_batch_size,
            "remote model ready"
        );
        loaded.push(LoadedRemote {
            name: name.clone(),
            version,
            signature: spec.signature.clone(),
            settings,
            executor: Executor::Async { backend: Arc::new(RemoteModel { pool: pool.clone(), spec }), concurrency: config.max_outstanding },
            execution_provider: format!("remote:{}", config.name),
            fingerprint: *hasher.finalize().as_bytes(),
        });
    }
    // Endpoints that answered are checked against the models found. A pool whose models are all declared asks no
    // worker at start: its first upkeep round, at once, checks them.
    if config.models.iter().any(|m| !config.signatures.contains_key(m)) {
        pool.verify_all().await;
    }
    pool.spawn_upkeep();
    Ok(loaded)
}

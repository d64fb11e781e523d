//! Loading one model version: the blocking part (ONNX Runtime sessions, the file's hash for the cache), then starting
//! its scheduler on the async runtime.

use super::disk::VersionStamp;
use super::{warmup, ModelVersion};
use crate::backend::{onnx, BackendError, Executor, ModelSignature};
use crate::cache::key::file_fingerprint;
use crate::cache::ModelCache;
use crate::config::{CacheConfig, ModelDefaults, ModelFile, ModelSettings};
use crate::metrics::{catalogue, Metrics};
use crate::scheduler::Scheduler;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use super::RepositoryError;

/// What every model version is loaded with, whichever it is and whenever it loads.
pub struct LoadContext {
    pub defaults: ModelDefaults,
    pub cache: CacheConfig,
    pub metrics: Metrics,
}

/// What a loaded model version is made of, wherever it runs.
pub struct VersionParts {
    pub signature: ModelSignature,
    pub platform: &'static str,
    pub execution_provider: String,
    pub settings: ModelSettings,
    pub executor: Executor,
    /// Identifies the model's content in cache keys.
    pub fingerprint: [u8; 32],
    pub warmup: warmup::Plan,
}

/// Loads a version's sessions from `path` with the settings of its model.toml (`file`, read from `toml_path`).
/// Blocking: at start it runs on the caller's thread, later on a blocking-pool thread.
pub fn prepare(name: &str, version: u64, path: &Path, file: &ModelFile, toml_path: &Path, defaults: &ModelDefaults) -> Result<VersionParts, RepositoryError> {
    let started = Instant::now();
    let config_error = |e: crate::config::ConfigError| BackendError::Load { path: path.display().to_string(), message: e.to_string() };
    let (backend, settings) = onnx::load(path, |signature| {
        let settings = file.resolve(defaults, signature.can_batch(), toml_path).map_err(config_error)?;
        // Checked before the sessions are made, so a bad [warmup] fails fast.
        file.warmup.plan(settings.max_batch_size, toml_path).map_err(config_error)?;
        Ok(settings)
    })?;
    let warmup = warmup::Plan::new(&file.warmup, settings.max_batch_size, toml_path)?;
    tracing::info!(
        model = name,
        version,
        provider = %backend.execution_provider,
        max_batch_size = settings.max_batch_size,
        instances = settings.instances,
        load_ms = started.elapsed().as_millis() as u64,
        "model loaded"
    );
    // Only cached models pay for reading the file again.
    let fingerprint = match settings.cache_enabled {
        true => file_fingerprint(path).map_err(|source| RepositoryError::Fingerprint { path: path.into(), source })?,
        false => [0; 32],
    };
    Ok(VersionParts {
        signature: backend.signature,
        platform: backend.platform,
        execution_provider: backend.execution_provider,
        settings,
        executor: backend.executor,
        fingerprint,
        warmup,
    })
}

impl LoadContext {
    /// Starts a version's scheduler (and its cache, when the model asks for one). Must run inside a Tokio runtime.
    /// The version is ready at once unless it has a warm-up to pass first.
    pub fn start(&self, name: &str, version: u64, parts: VersionParts, source: Option<VersionStamp>) -> ModelVersion {
        let VersionParts { signature, platform, execution_provider, settings, executor, fingerprint, warmup } = parts;
        let label = format!("{name}:{version}");
        let scheduler = Scheduler::start(label, &signature, settings.clone(), executor, self.metrics.model(name, version));
        let model_cache = settings.cache_enabled.then(|| {
            let ttl = settings.cache_ttl.map_or(self.cache.ttl, |t| t.min(self.cache.ttl));
            Arc::new(ModelCache::new(name, ttl, fingerprint, &self.metrics))
        });
        let ready = warmup.is_empty();
        ModelVersion {
            name: name.to_string(),
            version,
            signature,
            platform,
            execution_provider,
            settings,
            scheduler,
            request_metrics: self.metrics.requests(name, version),
            cache: model_cache,
            source,
            warmup,
            ready: AtomicBool::new(ready),
        }
    }

    /// Counts one load (`ok`, `load_failed`, `warmup_failed`) and its duration.
    pub fn count_load(&self, model: &str, result: &'static str, started: Instant) {
        self.metrics.counter(catalogue::MODEL_LOADS, &[("model", model), ("result", result)]).increment(1);
        self.metrics.histogram(catalogue::MODEL_LOAD_DURATION, &[("model", model)]).record(started.elapsed().as_secs_f64());
    }

    /// Counts one version taken out of service (`replaced`, `removed`, `api`).
    pub fn count_unload(&self, model: &str, reason: &'static str) {
        self.metrics.counter(catalogue::MODEL_UNLOADS, &[("model", model), ("reason", reason)]).increment(1);
    }
}

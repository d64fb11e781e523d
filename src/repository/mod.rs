//! The model repository on disk: `models/<name>/<version>/model.onnx` plus an optional `models/<name>/model.toml`.
//! Loading a version reads its signature from the ONNX file, resolves its settings and starts its scheduler.
//! The highest version of a model serves by default; the others are reachable by URL.

use crate::backend::remote::LoadedRemote;
use crate::backend::{onnx, BackendError, Executor, ModelSignature};
use crate::cache::key::file_fingerprint;
use crate::cache::ModelCache;
use crate::config::{CacheConfig, ConfigError, ModelDefaults, ModelFile, ModelSettings};
use crate::metrics::{Metrics, RequestMetrics};
use crate::scheduler::Scheduler;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    #[error("cannot read the model repository {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("model directory {0} holds no numbered version directory with a model.onnx")]
    NoVersions(PathBuf),
    #[error("cannot read {path} to fingerprint it for the response cache: {source}")]
    Fingerprint { path: PathBuf, source: std::io::Error },
    #[error("model '{0}' is both in the model repository and in an upstream pool; serve it from one place")]
    Duplicate(String),
}

/// Why a model could not be found for a request.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("unknown model '{0}'")]
    UnknownModel(String),
    #[error("model '{model}' has no version {version} (available: {available})")]
    UnknownVersion { model: String, version: String, available: String },
    #[error("'{0}' is not a model version (versions are positive integers)")]
    BadVersion(String),
    #[error("model '{0}' is not ready")]
    NotReady(String),
}

/// One loaded, serving model version.
pub struct ModelVersion {
    pub name: String,
    pub version: u64,
    pub signature: ModelSignature,
    pub platform: &'static str,
    pub execution_provider: String,
    pub settings: ModelSettings,
    pub scheduler: Scheduler,
    /// Where answered requests of this version are counted.
    pub request_metrics: RequestMetrics,
    /// Set when the model's responses are cached (`[cache] enabled = true` in its model.toml).
    pub cache: Option<Arc<ModelCache>>,
    ready: AtomicBool,
}

impl ModelVersion {
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn version_string(&self) -> String {
        self.version.to_string()
    }
}

/// All models and versions that loaded.
pub struct Repository {
    root: PathBuf,
    models: BTreeMap<String, BTreeMap<u64, Arc<ModelVersion>>>,
}

/// The numbered version directories of a model directory that hold a `model.onnx`, lowest first.
fn versions_on_disk(dir: &Path) -> Result<Vec<(u64, PathBuf)>, RepositoryError> {
    let read = std::fs::read_dir(dir).map_err(|source| RepositoryError::Read { path: dir.into(), source })?;
    let mut versions = Vec::new();
    for entry in read.flatten() {
        let name = entry.file_name();
        let Some(version) = name.to_str().and_then(|n| n.parse::<u64>().ok()).filter(|&v| v > 0) else { continue };
        let file = entry.path().join("model.onnx");
        if file.is_file() {
            versions.push((version, file));
        }
    }
    versions.sort();
    Ok(versions)
}

impl Repository {
    /// Loads every model under `root`. Must run inside a Tokio runtime (each version starts its scheduler).
    /// Any model that fails to load fails the whole start, with a message naming the file and the problem.
    pub fn load(root: &Path, defaults: &ModelDefaults, cache: &CacheConfig, metrics: &Metrics) -> Result<Repository, RepositoryError> {
        let read = std::fs::read_dir(root).map_err(|source| RepositoryError::Read { path: root.into(), source })?;
        let mut dirs: Vec<PathBuf> = read.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect();
        dirs.sort();
        let mut models = BTreeMap::new();
        for dir in dirs {
            let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
            if name.starts_with('.') || name == "__pycache__" {
                continue;
            }
            let versions = versions_on_disk(&dir)?;
            if versions.is_empty() {
                tracing::warn!(dir = %dir.display(), "skipping a directory with no numbered version holding a model.onnx");
                continue;
            }
            let toml_path = dir.join("model.toml");
            let file = ModelFile::load(&toml_path)?;
            let mut loaded = BTreeMap::new();
            for (version, path) in versions {
                let files = ModelFiles { file: &file, toml_path: &toml_path };
                let model = load_version(&name, version, &path, &files, &Shared { defaults, cache, metrics })?;
                loaded.insert(version, Arc::new(model));
            }
            models.insert(name, loaded);
        }
        if models.is_empty() {
            tracing::warn!(root = %root.display(), "the model repository holds no model");
        }
        Ok(Repository { root: root.into(), models })
    }

    /// A repository with no local models (a gateway whose models are all remote).
    pub fn empty(root: &Path) -> Repository {
        Repository { root: root.into(), models: BTreeMap::new() }
    }

    /// Adds a model served by an upstream pool and starts its scheduler.
    pub fn add_remote(&mut self, remote: LoadedRemote, cache: &CacheConfig, metrics: &Metrics) -> Result<(), RepositoryError> {
        if self.models.contains_key(&remote.name) {
            return Err(RepositoryError::Duplicate(remote.name));
        }
        let parts = VersionParts {
            signature: remote.signature,
            platform: "remote",
            execution_provider: remote.execution_provider,
            settings: remote.settings,
            executor: remote.executor,
            fingerprint: remote.fingerprint,
        };
        let model = start_version(&remote.name, remote.version, parts, &Shared { defaults: &ModelDefaults::default(), cache, metrics });
        self.models.entry(remote.name).or_default().insert(remote.version, Arc::new(model));
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Finds a model version: `None` means the highest.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<Arc<ModelVersion>, LookupError> {
        let versions = self.models.get(name).ok_or_else(|| LookupError::UnknownModel(name.to_string()))?;
        let model = match version.filter(|v| !v.is_empty()) {
            None => versions.values().next_back(),
            Some(text) => {
                let v: u64 = text.parse().ok().filter(|&v| v > 0).ok_or_else(|| LookupError::BadVersion(text.to_string()))?;
                Some(versions.get(&v).ok_or_else(|| LookupError::UnknownVersion {
                    model: name.to_string(),
                    version: text.to_string(),
                    available: versions.keys().map(u64::to_string).collect::<Vec<_>>().join(", "),
                })?)
            }
        };
        model.cloned().ok_or_else(|| LookupError::UnknownModel(name.to_string()))
    }

    /// Every loaded version, by name then version.
    pub fn all(&self) -> impl Iterator<Item = &Arc<ModelVersion>> {
        self.models.values().flat_map(|v| v.values())
    }

    /// Ready when every loaded version is ready.
    pub fn is_ready(&self) -> bool {
        self.all().all(|m| m.is_ready())
    }

    /// Stops admitting new requests to every model; queued ones still run.
    pub fn close(&self) {
        for m in self.all() {
            m.scheduler.close();
        }
    }
}

/// What every model version is loaded with, whichever it is.
struct Shared<'a> {
    defaults: &'a ModelDefaults,
    cache: &'a CacheConfig,
    metrics: &'a Metrics,
}

/// The model's own files: its `model.toml` (already read) and where it is.
struct ModelFiles<'a> {
    file: &'a ModelFile,
    toml_path: &'a Path,
}

fn load_version(name: &str, version: u64, path: &Path, files: &ModelFiles<'_>, shared: &Shared<'_>) -> Result<ModelVersion, RepositoryError> {
    let ModelFiles { file, toml_path } = *files;
    let started = std::time::Instant::now();
    let (backend, settings) = onnx::load(path, |signature| {
        file.resolve(shared.defaults, signature.can_batch(), toml_path)
            .map_err(|e| BackendError::Load { path: path.display().to_string(), message: e.to_string() })
    })?;
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
    let parts = VersionParts {
        signature: backend.signature,
        platform: backend.platform,
        execution_provider: backend.execution_provider,
        settings,
        executor: backend.executor,
        fingerprint,
    };
    Ok(start_version(name, version, parts, shared))
}

/// What a loaded model version is made of, wherever it runs.
struct VersionParts {
    signature: ModelSignature,
    platform: &'static str,
    execution_provider: String,
    settings: ModelSettings,
    executor: Executor,
    /// Identifies the model's content in cache keys.
    fingerprint: [u8; 32],
}

/// Starts a version's scheduler (and its cache, when the model asks for one).
fn start_version(name: &str, version: u64, parts: VersionParts, shared: &Shared<'_>) -> ModelVersion {
    let Shared { cache, metrics, .. } = *shared;
    let VersionParts { signature, platform, execution_provider, settings, executor, fingerprint } = parts;
    let label = format!("{name}:{version}");
    let scheduler = Scheduler::start(label, &signature, settings.clone(), executor, metrics.model(name, version));
    let model_cache = settings.cache_enabled.then(|| {
        let ttl = settings.cache_ttl.map_or(cache.ttl, |t| t.min(cache.ttl));
        Arc::new(ModelCache::new(name, ttl, fingerprint, metrics))
    });
    ModelVersion {
        name: name.to_string(),
        version,
        signature,
        platform,
        execution_provider,
        settings,
        scheduler,
        request_metrics: metrics.requests(name, version),
        cache: model_cache,
        ready: AtomicBool::new(true),
    }
}

//! The model repository on disk: `models/<name>/<version>/model.onnx` plus an optional `models/<name>/model.toml`,
//! and the models served from upstream pools.
//!
//! Every model is loaded at start. After that the repository changes while it serves (see docs/LIFECYCLE.md): the
//! watcher ([`watch`]) and the repository API ([`Repository::load_model`], [`Repository::unload_model`]) load new and
//! changed versions *beside* the serving ones, warm them up, and swap the model table in one step. Requests hold an
//! `Arc<ModelVersion>` from lookup to answer, so a replaced version finishes its in-flight work and is unloaded when
//! its last request drops it (dropping the last handle of a scheduler stops its batcher and instance threads).
//! The highest version of a model serves by default; the others are reachable by URL.

mod disk;
mod lifecycle;
mod loader;
pub mod watch;
mod warmup;

pub use lifecycle::{IndexEntry, LoadError, VersionState};

use crate::backend::remote::LoadedRemote;
use crate::backend::{BackendError, ModelSignature};
use crate::cache::ModelCache;
use crate::config::{CacheConfig, ConfigError, ModelDefaults, ModelFile, ModelSettings};
use crate::metrics::{Metrics, RequestMetrics};
use crate::scheduler::Scheduler;
use disk::VersionStamp;
use loader::{LoadContext, VersionParts};
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

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
    #[error("model '{model}' version {version}: {reason}")]
    Warmup { model: String, version: u64, reason: String },
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
    /// The files this version was loaded from (`None` for models served by an upstream pool).
    source: Option<VersionStamp>,
    /// The warm-up it must pass before it is ready.
    warmup: warmup::Plan,
    ready: AtomicBool,
}

impl ModelVersion {
    /// Ready once loaded and warmed up. Only ready versions are put in the model table, except at start, where
    /// [`Repository::warm_up`] runs before the listeners open.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn version_string(&self) -> String {
        self.version.to_string()
    }

    fn mark_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }
}

/// Every serving version: name → version → model.
type Table = BTreeMap<String, BTreeMap<u64, Arc<ModelVersion>>>;

/// All models and versions being served, and what is needed to load more.
pub struct Repository {
    root: PathBuf,
    /// Read on every request (a read lock and an `Arc` clone); replaced as a whole, under [`Repository::changes`].
    table: RwLock<Arc<Table>>,
    /// What versions are loaded with.
    context: LoadContext,
    /// Models served by upstream pools: never loaded from or unloaded for the disk.
    remote: BTreeSet<String>,
    /// One change of the table at a time (the watcher's and the API's).
    changes: tokio::sync::Mutex<()>,
    /// What the repository index reports beyond the serving versions: loads in progress, failures, unloads.
    status: Mutex<lifecycle::Status>,
    /// Versions taken out of the table that may still be finishing requests.
    retired: Mutex<Vec<Weak<ModelVersion>>>,
}

impl Repository {
    /// Loads every model under `root`. Must run inside a Tokio runtime (each version starts its scheduler).
    /// Any model that fails to load fails the whole start, with a message naming the file and the problem.
    /// Versions with a `[warmup]` are not ready until [`Repository::warm_up`] has run.
    pub fn load(root: &Path, defaults: &ModelDefaults, cache: &CacheConfig, metrics: &Metrics) -> Result<Repository, RepositoryError> {
        let repository = Repository::empty(root, defaults, cache, metrics);
        let on_disk = disk::scan(root).map_err(|source| RepositoryError::Read { path: root.into(), source })?;
        let mut table = Table::new();
        for (name, model) in on_disk.models {
            if model.versions.is_empty() {
                tracing::warn!(dir = %root.join(&name).display(), "skipping a directory with no numbered version holding a model.onnx");
                continue;
            }
            let file = ModelFile::load(&model.toml_path)?;
            let mut loaded = BTreeMap::new();
            for (version, on_disk) in model.versions {
                let started = std::time::Instant::now();
                let result = loader::prepare(&name, version, &on_disk.path, &file, &model.toml_path, defaults);
                repository.context.count_load(&name, if result.is_ok() { "ok" } else { "load_failed" }, started);
                let model = repository.context.start(&name, version, result?, Some(on_disk.stamp));
                loaded.insert(version, Arc::new(model));
            }
            table.insert(name, loaded);
        }
        if table.is_empty() {
            tracing::warn!(root = %root.display(), "the model repository holds no model");
        }
        *repository.table.write() = Arc::new(table);
        Ok(repository)
    }

    /// A repository with no models yet (a gateway whose models are all remote, or whose repository directory does
    /// not exist yet): models may still be loaded later, with these settings.
    pub fn empty(root: &Path, defaults: &ModelDefaults, cache: &CacheConfig, metrics: &Metrics) -> Repository {
        Repository {
            root: root.into(),
            table: RwLock::new(Arc::new(Table::new())),
            context: LoadContext { defaults: defaults.clone(), cache: cache.clone(), metrics: metrics.clone() },
            remote: BTreeSet::new(),
            changes: tokio::sync::Mutex::new(()),
            status: Mutex::new(lifecycle::Status::default()),
            retired: Mutex::new(Vec::new()),
        }
    }

    /// Adds a model served by an upstream pool and starts its scheduler. Remote models are not on disk: reloads
    /// and the repository API leave them alone.
    pub fn add_remote(&mut self, remote: LoadedRemote, cache: &CacheConfig, metrics: &Metrics) -> Result<(), RepositoryError> {
        let table = Arc::make_mut(self.table.get_mut());
        if table.contains_key(&remote.name) {
            return Err(RepositoryError::Duplicate(remote.name));
        }
        let parts = VersionParts {
            signature: remote.signature,
            platform: "remote",
            execution_provider: remote.execution_provider,
            settings: remote.settings,
            executor: remote.executor,
            fingerprint: remote.fingerprint,
            warmup: warmup::Plan::default(),
        };
        let context = LoadContext { defaults: ModelDefaults::default(), cache: cache.clone(), metrics: metrics.clone() };
        let model = context.start(&remote.name, remote.version, parts, None);
        self.remote.insert(remote.name.clone());
        table.entry(remote.name).or_default().insert(remote.version, Arc::new(model));
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The serving versions now. Cheap (an `Arc` clone); later changes do not show in it.
    fn snapshot(&self) -> Arc<Table> {
        self.table.read().clone()
    }

    /// Finds a model version: `None` means the highest.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<Arc<ModelVersion>, LookupError> {
        let table = self.table.read();
        let versions = table.get(name).ok_or_else(|| LookupError::UnknownModel(name.to_string()))?;
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

    /// Every serving version, by name then version, as of now (a snapshot: no lock is held while it is used).
    pub fn all(&self) -> impl Iterator<Item = Arc<ModelVersion>> {
        let table = self.snapshot();
        table.values().flat_map(|v| v.values().cloned()).collect::<Vec<_>>().into_iter()
    }

    /// Ready when every serving version is ready.
    pub fn is_ready(&self) -> bool {
        self.snapshot().values().flat_map(|v| v.values()).all(|m| m.is_ready())
    }

    /// Stops admitting new requests to every serving model; queued ones still run.
    pub fn close(&self) {
        for m in self.all() {
            m.scheduler.close();
        }
    }

    /// Runs the warm-up of every version that is not ready yet (at start, before the listeners open). A failure
    /// fails the start, as a model that does not load does.
    pub async fn warm_up(&self) -> Result<(), RepositoryError> {
        for m in self.all().filter(|m| !m.is_ready()) {
            let started = std::time::Instant::now();
            if let Err(reason) = warmup::run(&m).await {
                self.context.count_load(&m.name, "warmup_failed", started);
                return Err(RepositoryError::Warmup { model: m.name.clone(), version: m.version, reason });
            }
            m.mark_ready();
            tracing::info!(model = %m.name, version = m.version, requests = m.warmup.len(), warmup_ms = started.elapsed().as_millis() as u64, "model warmed up");
        }
        Ok(())
    }

    /// Versions taken out of service (replaced or unloaded) that are still finishing requests.
    pub fn draining(&self) -> usize {
        let mut retired = self.retired.lock();
        retired.retain(|w| w.strong_count() > 0);
        retired.len()
    }
}

//! Changing the served models while serving: bring a model in line with the disk (load new and changed versions beside
//! the serving ones, warm them up, swap the table in one step, retire what was replaced or removed), unload a model on
//! request, and report the state of every model and version (the repository index).
//!
//! A version that fails to load or warm up is never swapped in: the version it was to replace keeps serving, the
//! failure is logged, counted (`sluice_model_loads_total`) and shown by the index until its files change (the watcher
//! does not retry the same files; `POST .../load` does).

use super::disk::{self, ModelOnDisk, VersionOnDisk, VersionStamp};
use super::{loader, warmup, ModelVersion, Repository, Table};
use crate::config::ModelFile;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// A version's state in the repository index (Triton's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum VersionState {
    /// Serving.
    Ready,
    /// Being loaded or warmed up.
    Loading,
    /// Taken out of service; requests that were already running on it are finishing.
    Unloading,
    /// Not served: it failed to load, was unloaded, or has not been loaded yet (the reason says which).
    Unavailable,
}

/// One entry of `POST /v2/repository/index`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IndexEntry {
    pub name: String,
    pub version: String,
    pub state: VersionState,
    pub reason: String,
}

/// Why a repository API call failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("unknown model '{0}': there is no such directory in the model repository")]
    NotFound(String),
    #[error("model '{0}' is served by an upstream pool; the repository API manages only the models on disk")]
    Remote(String),
    #[error("model '{0}' has no numbered version directory holding a model.onnx")]
    NoVersions(String),
    #[error("cannot read the model repository {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("failed to load model '{model}' ({reasons}); what was serving before keeps serving")]
    Failed { model: String, reasons: String },
    #[error("the load of model '{0}' was interrupted")]
    Interrupted(String),
}

/// What the index reports besides the serving versions.
#[derive(Default)]
pub(super) struct Status {
    models: BTreeMap<String, ModelStatus>,
}

#[derive(Default)]
struct ModelStatus {
    /// Unloaded through the API: the watcher leaves the model alone until it is loaded again through the API.
    unloaded: bool,
    /// Versions being loaded or warmed up now.
    loading: BTreeSet<u64>,
    /// The last failure of each version, with the files that failed (the watcher does not retry the same files).
    failed: BTreeMap<u64, Failure>,
}

struct Failure {
    reason: String,
    stamp: VersionStamp,
}

/// How the table of one model changes.
struct Change {
    loaded: Vec<Arc<ModelVersion>>,
    removed: Vec<u64>,
    unload_reason: &'static str,
}

impl Repository {
    /// Brings every model in line with `snapshot` (a scan of the repository that the watcher saw stay the same for
    /// its debounce time). Remote models and models unloaded through the API are left alone.
    pub async fn sync(&self, snapshot: &disk::Snapshot) {
        let _one_change_at_a_time = self.changes.lock().await;
        let table = self.snapshot();
        let names: BTreeSet<&String> = snapshot.models.keys().chain(table.keys()).collect();
        for name in names {
            if self.remote.contains(name.as_str()) {
                if snapshot.models.contains_key(name.as_str()) {
                    tracing::warn!(model = %name, "a model directory has the name of a model served by an upstream pool; it is ignored");
                }
                continue;
            }
            if self.status.lock().models.get(name.as_str()).is_some_and(|s| s.unloaded) {
                continue;
            }
            self.sync_model(name, snapshot.models.get(name.as_str()), false).await;
        }
        // Forget models that are neither on disk nor served.
        let table = self.snapshot();
        self.status.lock().models.retain(|name, _| snapshot.models.contains_key(name) || table.contains_key(name));
    }

    /// Loads (or reloads) model `name` from disk: new versions, versions whose files changed, and versions that failed
    /// before (even with the same files); versions no longer on disk are unloaded. Models unloaded through the API
    /// are served again. Fails when any version failed; the versions that did load are served all the same.
    pub async fn load_model(&self, name: &str) -> Result<(), LoadError> {
        if self.remote.contains(name) {
            return Err(LoadError::Remote(name.into()));
        }
        let _one_change_at_a_time = self.changes.lock().await;
        let root = self.root.clone();
        let snapshot = tokio::task::spawn_blocking(move || disk::scan(&root))
            .await
            .map_err(|_| LoadError::Interrupted(name.into()))?
            .map_err(|source| LoadError::Read { path: self.root.clone(), source })?;
        let model = snapshot.models.get(name).ok_or_else(|| LoadError::NotFound(name.into()))?;
        if model.versions.is_empty() {
            return Err(LoadError::NoVersions(name.into()));
        }
        self.status.lock().models.entry(name.into()).or_default().unloaded = false;
        let failures = self.sync_model(name, Some(model), true).await;
        if failures.is_empty() {
            return Ok(());
        }
        let reasons = failures.iter().map(|(v, reason)| format!("version {v}: {reason}")).collect::<Vec<_>>().join("; ");
        Err(LoadError::Failed { model: name.into(), reasons })
    }

    /// Stops serving model `name`: new requests get 404 at once, requests already running finish. The watcher leaves
    /// the model alone until it is loaded again through the API.
    pub async fn unload_model(&self, name: &str) -> Result<(), LoadError> {
        if self.remote.contains(name) {
            return Err(LoadError::Remote(name.into()));
        }
        let _one_change_at_a_time = self.changes.lock().await;
        let serving: Vec<u64> = self.snapshot().get(name).map(|v| v.keys().copied().collect()).unwrap_or_default();
        let on_disk = self.root.join(name).is_dir();
        if serving.is_empty() && !on_disk && !self.status.lock().models.contains_key(name) {
            return Err(LoadError::NotFound(name.into()));
        }
        {
            let mut status = self.status.lock();
            let model = status.models.entry(name.into()).or_default();
            model.unloaded = true;
            model.failed.clear();
        }
        self.apply(name, Change { loaded: Vec::new(), removed: serving, unload_reason: "api" });
        Ok(())
    }

    /// Loads what changed for one model and swaps it in; returns the versions that failed, with why.
    async fn sync_model(&self, name: &str, on_disk: Option<&ModelOnDisk>, retry_failed: bool) -> Vec<(u64, String)> {
        let serving = self.snapshot().get(name).cloned().unwrap_or_default();
        let no_versions = BTreeMap::new();
        let disk_versions = on_disk.map_or(&no_versions, |m| &m.versions);
        let to_load: Vec<(u64, VersionOnDisk)> = {
            let mut status = self.status.lock();
            let model = status.models.entry(name.into()).or_default();
            model.failed.retain(|v, _| disk_versions.contains_key(v));
            let mut to_load = Vec::new();
            for (&v, found) in disk_versions {
                if serving.get(&v).is_some_and(|m| m.source == Some(found.stamp)) {
                    model.failed.remove(&v);
                    continue;
                }
                if !retry_failed && model.failed.get(&v).is_some_and(|f| f.stamp == found.stamp) {
                    continue;
                }
                to_load.push((v, found.clone()));
            }
            model.loading.extend(to_load.iter().map(|(v, _)| *v));
            to_load
        };
        let removed: Vec<u64> = serving.keys().filter(|v| !disk_versions.contains_key(v)).copied().collect();
        let mut loaded = Vec::new();
        let mut failures = Vec::new();
        if let (Some(model), false) = (on_disk, to_load.is_empty()) {
            match read_model_file(&model.toml_path).await {
                Err(reason) => {
                    for (v, _) in &to_load {
                        self.context.count_load(name, "load_failed", Instant::now());
                        failures.push((*v, reason.clone()));
                    }
                }
                Ok(file) => {
                    for (v, found) in &to_load {
                        match self.load_version(name, *v, found, &file, &model.toml_path).await {
                            Ok(m) => loaded.push(m),
                            Err(reason) => failures.push((*v, reason)),
                        }
                    }
                }
            }
        }
        {
            let mut status = self.status.lock();
            let model = status.models.entry(name.into()).or_default();
            for (v, found) in &to_load {
                model.loading.remove(v);
                model.failed.remove(v);
                if let Some((_, reason)) = failures.iter().find(|(f, _)| f == v) {
                    let keeps = if serving.contains_key(v) { "; the version loaded before keeps serving" } else { "" };
                    tracing::error!(model = name, version = v, error = %reason, "model version failed to load{keeps}");
                    model.failed.insert(*v, Failure { reason: reason.clone(), stamp: found.stamp });
                }
            }
        }
        if !loaded.is_empty() || !removed.is_empty() {
            self.apply(name, Change { loaded, removed, unload_reason: "removed" });
        }
        failures
    }

    /// Loads one version beside whatever serves, and warms it up; the error says why it cannot serve.
    async fn load_version(&self, name: &str, version: u64, found: &VersionOnDisk, file: &Arc<ModelFile>, toml_path: &Path) -> Result<Arc<ModelVersion>, String> {
        let started = Instant::now();
        let (model, path, file, toml_path, defaults) = (name.to_string(), found.path.clone(), file.clone(), toml_path.to_path_buf(), self.context.defaults.clone());
        // ONNX Runtime session creation blocks (and may take seconds): off the async workers.
        let prepared = tokio::task::spawn_blocking(move || loader::prepare(&model, version, &path, &file, &toml_path, &defaults)).await;
        let parts = match prepared {
            Ok(Ok(parts)) => parts,
            Ok(Err(e)) => {
                self.context.count_load(name, "load_failed", started);
                return Err(e.to_string());
            }
            Err(e) => {
                self.context.count_load(name, "load_failed", started);
                return Err(format!("the loading thread failed: {e}"));
            }
        };
        let model = self.context.start(name, version, parts, Some(found.stamp));
        if let Err(reason) = warmup::run(&model).await {
            self.context.count_load(name, "warmup_failed", started);
            return Err(reason);
        }
        model.mark_ready();
        self.context.count_load(name, "ok", started);
        tracing::info!(model = name, version, warmup_requests = model.warmup.len(), total_ms = started.elapsed().as_millis() as u64, "model version ready");
        Ok(Arc::new(model))
    }

    /// Swaps one model's versions in the table at once, then retires what left it. Callers hold [`Repository::changes`],
    /// so the table cannot change between their reading it and this write.
    fn apply(&self, name: &str, change: Change) {
        let mut table: Table = (*self.snapshot()).clone();
        let versions = table.entry(name.to_string()).or_default();
        let mut retired = Vec::new();
        for v in change.removed {
            if let Some(old) = versions.remove(&v) {
                retired.push((old, change.unload_reason));
            }
        }
        for m in change.loaded {
            if let Some(old) = versions.insert(m.version, m) {
                retired.push((old, "replaced"));
            }
        }
        if versions.is_empty() {
            table.remove(name);
        }
        *self.table.write() = Arc::new(table);
        let mut draining = self.retired.lock();
        for (old, reason) in retired {
            tracing::info!(model = %old.name, version = old.version, reason, "model version out of service; its running requests finish");
            self.context.count_unload(&old.name, reason);
            // Not closed: a request that looked it up just before the swap may still queue on it. Its scheduler
            // stops when the last request holding it is answered.
            draining.push(Arc::downgrade(&old));
        }
        draining.retain(|w| w.strong_count() > 0);
    }

    /// Every model and version the repository knows: serving, loading, failed, unloaded, draining, or on disk and not
    /// loaded yet. Blocking (it lists the repository directory).
    pub fn index(&self) -> Vec<IndexEntry> {
        let table = self.snapshot();
        let on_disk = disk::scan(&self.root).unwrap_or_default();
        let mut entries: BTreeMap<(String, u64), (VersionState, String)> = BTreeMap::new();
        let status = self.status.lock();
        for (name, versions) in table.iter() {
            for &v in versions.keys() {
                let reason = match status.models.get(name).and_then(|s| s.failed.get(&v)) {
                    Some(f) => format!("serving the files loaded before; newer files failed to load: {}", f.reason),
                    None => String::new(),
                };
                entries.insert((name.clone(), v), (VersionState::Ready, reason));
            }
        }
        for (name, model) in &status.models {
            for &v in &model.loading {
                entries.entry((name.clone(), v)).or_insert((VersionState::Loading, String::new()));
            }
            for (&v, failure) in &model.failed {
                entries.entry((name.clone(), v)).or_insert((VersionState::Unavailable, failure.reason.clone()));
            }
        }
        for m in self.retired.lock().iter().filter_map(|w| w.upgrade()) {
            entries.entry((m.name.clone(), m.version)).or_insert((VersionState::Unloading, "finishing the requests it was running".into()));
        }
        for (name, model) in &on_disk.models {
            let unloaded = status.models.get(name).is_some_and(|s| s.unloaded);
            for &v in model.versions.keys() {
                let reason = match (unloaded, self.remote.contains(name)) {
                    (_, true) => "ignored: a model of this name is served by an upstream pool".to_string(),
                    (true, _) => "unloaded".to_string(),
                    _ => format!("not loaded yet (the watcher loads it once the repository is stable, or POST /v2/repository/models/{name}/load)"),
                };
                entries.entry((name.clone(), v)).or_insert((VersionState::Unavailable, reason));
            }
        }
        entries
            .into_iter()
            .map(|((name, v), (state, reason))| IndexEntry { name, version: v.to_string(), state, reason })
            .collect()
    }
}

/// Reads a model's model.toml off the async workers; the error names the file and the key.
async fn read_model_file(path: &Path) -> Result<Arc<ModelFile>, String> {
    let path = path.to_path_buf();
    match tokio::task::spawn_blocking(move || ModelFile::load(&path)).await {
        Ok(Ok(file)) => Ok(Arc::new(file)),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("the loading thread failed: {e}")),
    }
}

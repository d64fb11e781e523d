//! The repository watcher: polls the repository directory (a listing and a `stat` per file, see [`disk::scan`]) and,
//! once a change has stayed the same for the debounce time, brings the served models in line with it
//! ([`Repository::sync`]).
//!
//! Polling rather than inotify: it works on every file system a repository lives on (NFS, overlayfs, Kubernetes
//! ConfigMap and CSI volumes whose files change by symlink swaps), needs no per-directory watches, and costs a few
//! microseconds per model per poll. The debounce is needed either way: a file still being copied must not be loaded.

use super::disk;
use super::Repository;
use crate::config::RepositoryConfig;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Starts watching `repository` until `stop` resolves; with `poll_interval = 0` nothing is watched and the task ends
/// at once (models then change only through the repository API).
pub fn spawn(repository: Arc<Repository>, config: &RepositoryConfig, stop: impl std::future::Future<Output = ()> + Send + 'static) -> JoinHandle<std::io::Result<()>> {
    let (poll, debounce) = (config.poll_interval, config.debounce);
    tokio::spawn(async move {
        if poll.is_zero() {
            return Ok(());
        }
        tokio::pin!(stop);
        tokio::select! {
            _ = &mut stop => {}
            _ = watch(&repository, poll, debounce) => {}
        }
        Ok(())
    })
}

async fn watch(repository: &Repository, poll: Duration, debounce: Duration) {
    // The last scan, when it was first seen, and the scan last acted on. The first scan is acted on too: anything
    // that changed between the start's load and the watcher's first look is caught up (usually nothing).
    let mut seen: Option<disk::Snapshot> = None;
    let mut seen_since = Instant::now();
    let mut synced: Option<disk::Snapshot> = None;
    // A gateway or sidecar without local models names a repository that does not exist: no warning for that, but
    // models placed there later are still picked up.
    let mut unreadable = !repository.root().is_dir();
    if unreadable {
        tracing::debug!(root = %repository.root().display(), "the model repository does not exist (yet); watching for it");
    }
    loop {
        // While a change settles, look again after the debounce time rather than a whole poll interval.
        let pending = seen.is_some() && seen != synced;
        let wait = if pending { debounce.min(poll).max(Duration::from_millis(10)) } else { poll };
        tokio::time::sleep(wait).await;
        let root = repository.root().to_path_buf();
        let scan = match tokio::task::spawn_blocking(move || disk::scan(&root)).await {
            Ok(scan) => scan,
            Err(_) => continue,
        };
        let scan = match scan {
            Ok(scan) => scan,
            Err(e) => {
                // A missing or unmounted repository is not an empty one: nothing is unloaded for it.
                if !unreadable {
                    tracing::warn!(root = %repository.root().display(), error = %e, "cannot read the model repository; the models loaded stay as they are");
                }
                unreadable = true;
                continue;
            }
        };
        if unreadable {
            tracing::info!(root = %repository.root().display(), "the model repository is readable");
            unreadable = false;
        }
        if seen.as_ref() != Some(&scan) {
            seen = Some(scan);
            seen_since = Instant::now();
            if !debounce.is_zero() {
                continue;
            }
        }
        if seen != synced && seen_since.elapsed() >= debounce {
            if let Some(stable) = &seen {
                repository.sync(stable).await;
            }
            synced = seen.clone();
        }
    }
}

//! What the repository directory holds, cheaply: model directories, their numbered version directories with a
//! `model.onnx`, and a stamp (size, modification time, inode) of each file a version is loaded from. Comparing two
//! scans tells what changed without reading any model file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// Identifies one state of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
    /// A file replaced by a rename has a new inode even when its size and time match the old one's.
    inode: u64,
}

impl FileStamp {
    /// The stamp of `path` (following symbolic links); `None` when it is missing.
    pub fn of(path: &Path) -> std::io::Result<Option<FileStamp>> {
        match std::fs::metadata(path) {
            Ok(meta) => Ok(Some(FileStamp { len: meta.len(), modified: meta.modified().ok(), inode: inode(&meta) })),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(unix)]
fn inode(meta: &std::fs::Metadata) -> u64 {
    std::os::unix::fs::MetadataExt::ino(meta)
}

#[cfg(not(unix))]
fn inode(_meta: &std::fs::Metadata) -> u64 {
    0
}

/// The files one version is loaded from: its `model.onnx` and its model's `model.toml` (a changed model.toml reloads
/// every version of the model).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionStamp {
    pub model: FileStamp,
    pub config: Option<FileStamp>,
}

/// One version directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionOnDisk {
    /// Its `model.onnx`.
    pub path: PathBuf,
    pub stamp: VersionStamp,
}

/// One model directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelOnDisk {
    pub toml_path: PathBuf,
    pub versions: BTreeMap<u64, VersionOnDisk>,
}

/// The whole repository directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub models: BTreeMap<String, ModelOnDisk>,
}

/// Lists the repository. Directories named like hidden files or `__pycache__` are not models; a model directory
/// with no numbered version holding a `model.onnx` is listed with no versions. Fails only when `root` itself cannot
/// be read (a missing or unmounted repository is not an empty one).
pub fn scan(root: &Path) -> std::io::Result<Snapshot> {
    let mut models = BTreeMap::new();
    for entry in std::fs::read_dir(root)?.flatten() {
        let dir = entry.path();
        let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else { continue };
        if name.starts_with('.') || name == "__pycache__" || !dir.is_dir() {
            continue;
        }
        let toml_path = dir.join("model.toml");
        // A model directory that vanished or cannot be read between listing and stat counts as having no versions.
        let Ok(config) = FileStamp::of(&toml_path) else { continue };
        let versions = versions_in(&dir, config);
        models.insert(name, ModelOnDisk { toml_path, versions });
    }
    Ok(Snapshot { models })
}

/// The numbered version directories of a model directory that hold a `model.onnx`.
fn versions_in(dir: &Path, config: Option<FileStamp>) -> BTreeMap<u64, VersionOnDisk> {
    let mut versions = BTreeMap::new();
    let Ok(read) = std::fs::read_dir(dir) else { return versions };
    for entry in read.flatten() {
        let name = entry.file_name();
        let Some(version) = name.to_str().and_then(|n| n.parse::<u64>().ok()).filter(|&v| v > 0) else { continue };
        let path = entry.path().join("model.onnx");
        if let Ok(Some(model)) = FileStamp::of(&path) {
            if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                versions.insert(version, VersionOnDisk { path, stamp: VersionStamp { model, config } });
            }
        }
    }
    versions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_sees_versions_and_changes() {
        let root = tempfile::tempdir().unwrap();
        let m = root.path().join("m");
        std::fs::create_dir_all(m.join("1")).unwrap();
        std::fs::create_dir_all(m.join("0")).unwrap();
        std::fs::create_dir_all(m.join("x")).unwrap();
        std::fs::create_dir_all(m.join("3")).unwrap();
        std::fs::create_dir_all(root.path().join(".hidden/1")).unwrap();
        std::fs::create_dir_all(root.path().join("empty")).unwrap();
        for dir in ["1", "0", "x"] {
            std::fs::write(m.join(dir).join("model.onnx"), b"abc").unwrap();
        }
        std::fs::write(root.path().join(".hidden/1/model.onnx"), b"abc").unwrap();
        let first = scan(root.path()).unwrap();
        assert_eq!(first.models.keys().collect::<Vec<_>>(), ["empty", "m"]);
        assert!(first.models["empty"].versions.is_empty());
        assert_eq!(first.models["m"].versions.keys().copied().collect::<Vec<_>>(), [1]);
        assert_eq!(first.models["m"].versions[&1].stamp.config, None);
        assert_eq!(scan(root.path()).unwrap(), first, "nothing changed");

        std::fs::write(m.join("1/model.onnx"), b"abcd").unwrap();
        let resized = scan(root.path()).unwrap();
        assert_ne!(resized.models["m"].versions[&1].stamp, first.models["m"].versions[&1].stamp);

        // Replaced by a rename with the same size: a new inode.
        std::fs::write(m.join("new.onnx"), b"wxyz").unwrap();
        std::fs::rename(m.join("new.onnx"), m.join("1/model.onnx")).unwrap();
        let renamed = scan(root.path()).unwrap();
        assert_ne!(renamed.models["m"].versions[&1].stamp.model, resized.models["m"].versions[&1].stamp.model);

        std::fs::write(m.join("model.toml"), b"max_batch_size = 4\n").unwrap();
        std::fs::write(m.join("3/model.onnx"), b"abc").unwrap();
        let configured = scan(root.path()).unwrap();
        assert!(configured.models["m"].versions[&1].stamp.config.is_some());
        assert_eq!(configured.models["m"].versions.keys().copied().collect::<Vec<_>>(), [1, 3]);

        assert!(scan(&root.path().join("missing")).is_err(), "a missing repository is not an empty one");
    }
}

//! `[repository]`: how the model repository is watched for changes, and a model's `[warmup]` table (in its model.toml):
//! the requests a new version must answer before it takes traffic. See docs/LIFECYCLE.md.

use super::ConfigError;
use serde::Deserialize;
use std::path::Path;
use std::time::Duration;

/// How the model repository on disk is watched. Changes are found by polling: every `poll_interval` the repository
/// directory is listed and each `model.onnx` and `model.toml` is `stat`ed (names, sizes, modification times, inodes),
/// which costs microseconds per model and works on every file system (NFS, overlay, Kubernetes volume mounts).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepositoryConfig {
    /// How often the repository is listed; 0 turns watching off (models then change only through the repository API).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// A change is acted on only once the repository has looked the same for this long, so a file still being copied
    /// is not loaded half-written.
    #[serde(with = "humantime_serde")]
    pub debounce: Duration,
}

impl Default for RepositoryConfig {
    fn default() -> Self {
        RepositoryConfig { poll_interval: Duration::from_secs(2), debounce: Duration::from_millis(500) }
    }
}

impl RepositoryConfig {
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: &str| ConfigError::Invalid { path: path.into(), key, message: message.into() };
        if !self.poll_interval.is_zero() && self.poll_interval < Duration::from_millis(10) {
            return Err(invalid("repository.poll_interval", "must be 0 (off) or at least 10ms"));
        }
        if self.poll_interval > Duration::from_secs(3600) {
            return Err(invalid("repository.poll_interval", "must be at most 1h"));
        }
        if self.debounce > Duration::from_secs(600) {
            return Err(invalid("repository.debounce", "must be at most 10m"));
        }
        Ok(())
    }
}

/// What warm-up inputs hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WarmupData {
    /// Zeros (BYTES: empty strings).
    #[default]
    Zeros,
    /// Floats uniform in [0, 1), integers and booleans 0 or 1, BYTES short ASCII strings.
    Random,
}

/// A model's `[warmup]` table: requests run through a newly loaded version's own scheduler before it is ready and
/// takes traffic (at start, and on every reload). A version whose warm-up fails is not served; at a reload the version
/// it was to replace keeps serving.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WarmupFile {
    /// Requests per batch size; 0 turns warm-up off.
    pub requests: usize,
    /// Rows per warm-up request. Unset: 1 and `max_batch_size` for models that batch; models that do not batch get
    /// requests of their declared shape (and must leave this unset).
    pub batch_sizes: Option<Vec<usize>>,
    pub data: WarmupData,
    /// Longest time for the whole warm-up of one version.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for WarmupFile {
    fn default() -> Self {
        WarmupFile { requests: 0, batch_sizes: None, data: WarmupData::Zeros, timeout: Duration::from_secs(60) }
    }
}

impl WarmupFile {
    /// The rows of each warm-up request, in order, for a model with `max_batch_size` (0 = no batching); empty when
    /// warm-up is off. `path` is the model.toml, for errors.
    pub fn plan(&self, max_batch_size: usize, path: &Path) -> Result<Vec<usize>, ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid { path: path.into(), key, message };
        if self.timeout.is_zero() {
            return Err(invalid("warmup.timeout", "must be above zero".into()));
        }
        if self.requests > 1000 {
            return Err(invalid("warmup.requests", format!("must be at most 1000, got {}", self.requests)));
        }
        let sizes = match (&self.batch_sizes, max_batch_size) {
            (Some(_), 0) => {
                return Err(invalid("warmup.batch_sizes", "must be unset for a model that does not batch (max_batch_size = 0)".into()))
            }
            (Some(sizes), max) => {
                if sizes.is_empty() {
                    return Err(invalid("warmup.batch_sizes", "must list at least one batch size (to turn warm-up off, set warmup.requests = 0)".into()));
                }
                if let Some(bad) = sizes.iter().find(|&&s| s == 0 || s > max) {
                    return Err(invalid("warmup.batch_sizes", format!("{bad} is not between 1 and max_batch_size ({max})")));
                }
                sizes.clone()
            }
            (None, 0) | (None, 1) => vec![1],
            (None, max) => vec![1, max],
        };
        Ok(sizes.iter().flat_map(|&rows| std::iter::repeat_n(rows, self.requests)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_plan_defaults_and_errors() {
        let path = Path::new("m/model.toml");
        assert!(WarmupFile::default().plan(8, path).unwrap().is_empty());
        let file: WarmupFile = toml::from_str("requests = 2").unwrap();
        assert_eq!(file.plan(8, path).unwrap(), vec![1, 1, 8, 8]);
        assert_eq!(file.plan(0, path).unwrap(), vec![1, 1]);
        assert_eq!(file.plan(1, path).unwrap(), vec![1, 1]);
        let file: WarmupFile = toml::from_str("requests = 1\nbatch_sizes = [4, 2]\ndata = \"random\"").unwrap();
        assert_eq!(file.plan(8, path).unwrap(), vec![4, 2]);
        assert_eq!(file.data, WarmupData::Random);
        let err = file.plan(3, path).unwrap_err().to_string();
        assert!(err.contains("`warmup.batch_sizes`") && err.contains("m/model.toml"), "{err}");
        assert!(file.plan(0, path).unwrap_err().to_string().contains("does not batch"));
        let file: WarmupFile = toml::from_str("requests = 1\ntimeout = \"0s\"").unwrap();
        assert!(file.plan(8, path).unwrap_err().to_string().contains("`warmup.timeout`"));
        assert!(toml::from_str::<WarmupFile>("request = 1").is_err());
    }

    #[test]
    fn poll_settings_are_checked() {
        let path = Path::new("sluice.toml");
        assert!(RepositoryConfig::default().validate(path).is_ok());
        let off = RepositoryConfig { poll_interval: Duration::ZERO, ..RepositoryConfig::default() };
        assert!(off.validate(path).is_ok());
        let fast = RepositoryConfig { poll_interval: Duration::from_millis(1), ..RepositoryConfig::default() };
        assert!(fast.validate(path).unwrap_err().to_string().contains("`repository.poll_interval`"));
        let slow = RepositoryConfig { debounce: Duration::from_secs(3600), ..RepositoryConfig::default() };
        assert!(slow.validate(path).unwrap_err().to_string().contains("`repository.debounce`"));
    }

    /// config/sluice.toml shows the defaults of `[repository]`.
    #[test]
    fn shipped_config_shows_the_repository_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sluice.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        let section = table.get("repository").expect("config/sluice.toml has a [repository] section").clone();
        let shipped: RepositoryConfig = section.try_into().unwrap();
        let defaults = RepositoryConfig::default();
        assert_eq!(shipped.poll_interval, defaults.poll_interval);
        assert_eq!(shipped.debounce, defaults.debounce);
    }
}

//! `[[upstreams]]`: pools of remote V2 servers (Triton, KServe predictors, other Sluice instances) whose models this
//! server serves as a gateway or sidecar. See docs/REMOTE.md.

use super::{ConfigError, ModelFile};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// How the gateway talks to a pool's endpoints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// V2 HTTP/REST with the binary tensor extension, over pooled HTTP/1.1 keep-alive connections.
    Http,
    /// V2 gRPC (`inference.GRPCInferenceService`), one HTTP/2 connection per endpoint, requests multiplexed on it.
    Grpc,
}

/// One pool of upstream endpoints and the models served from it.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Names the pool in logs and metrics (`pool` label).
    pub name: String,
    pub protocol: UpstreamProtocol,
    /// `host:port` of each endpoint (the HTTP port for `http`, the gRPC port for `grpc`).
    pub endpoints: Vec<String>,
    /// Instead of `endpoints`: a `host:port` whose name is resolved every `dns_refresh`, each address an endpoint
    /// (a Kubernetes headless Service lists one address per ready pod).
    pub dns: Option<String>,
    #[serde(with = "humantime_serde")]
    pub dns_refresh: Duration,
    /// Models served from this pool, under the same names (each needs the same metadata on every endpoint).
    pub models: Vec<String>,
    /// Gateway-side settings of a model: the keys of a model.toml (`max_batch_size`, `[dynamic_batching]`, `[queue]`,
    /// `[cache]`, `idempotent`). Without them the gateway queues but does not batch (the upstream batches).
    pub model_settings: BTreeMap<String, ModelFile>,
    /// A file holding the API key the gateway presents to the workers (`Authorization: Bearer <key>`) on inference,
    /// health and metadata requests, e.g. a mounted Kubernetes Secret. Read once, at start.
    pub api_key_file: Option<std::path::PathBuf>,
    /// A model's metadata written here instead of asked of the workers at start, so that the gateway can start
    /// while the pool has no worker (scaled to zero). Workers are still checked against it before they get traffic.
    pub signatures: BTreeMap<String, DeclaredSignature>,
    /// Requests in flight to one endpoint at most; past it the balancer picks another one or waits for a slot.
    pub max_concurrency: usize,
    /// Requests (batches) in flight upstream for one model at most; the rest wait in the gateway's queue, where
    /// backpressure (429) applies.
    pub max_outstanding: usize,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for one attempt's answer.
    #[serde(with = "humantime_serde")]
    pub try_timeout: Duration,
    /// Longest time for a request over all its attempts.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Pooled HTTP/1.1 connections idle longer than this are closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Attempts per request at most (1 = no retries).
    pub max_attempts: u32,
    /// Retries may add at most this fraction of the first attempts as extra load (0.2 = 20 %)...
    pub retry_budget: f64,
    /// ...plus this many retries a second, so a quiet gateway can still retry.
    pub min_retries_per_second: f64,
    /// At start, how long to wait for the first endpoint to answer each model's metadata before giving up.
    #[serde(with = "humantime_serde")]
    pub startup_timeout: Duration,
    /// How long a request waits for the pool to have an endpoint it may use, when it has none (every worker gone,
    /// scaled to zero, or not checked yet), before it is answered 503. 0 = answer 503 at once. While requests wait
    /// they count as in flight, so the scaling signal is active and KEDA can scale the workers up from zero. The
    /// pool's `timeout` counts from the end of this wait.
    #[serde(with = "humantime_serde")]
    pub wait_for_endpoint: Duration,
    pub health: HealthCheckConfig,
    pub ejection: EjectionConfig,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            name: String::new(),
            protocol: UpstreamProtocol::Http,
            endpoints: Vec::new(),
            dns: None,
            dns_refresh: Duration::from_secs(5),
            models: Vec::new(),
            model_settings: BTreeMap::new(),
            signatures: BTreeMap::new(),
            api_key_file: None,
            max_concurrency: 64,
            max_outstanding: 256,
            connect_timeout: Duration::from_secs(1),
            try_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            max_attempts: 3,
            retry_budget: 0.2,
            min_retries_per_second: 10.0,
            startup_timeout: Duration::from_secs(60),
            wait_for_endpoint: Duration::ZERO,
            health: HealthCheckConfig::default(),
            ejection: EjectionConfig::default(),
        }
    }
}

/// A remote model's metadata as its workers would report it (`GET /v2/models/<m>`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeclaredSignature {
    /// The upstream version requests go to; unset: the workers' default version (the gateway serves it as 1).
    pub version: Option<String>,
    pub inputs: Vec<DeclaredTensor>,
    pub outputs: Vec<DeclaredTensor>,
}

/// One input or output: its name, V2 datatype (`FP32`, `INT64`, `BYTES`, ...) and shape (-1 for a variable dimension;
/// a leading -1 on every tensor makes the model batchable).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredTensor {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

impl DeclaredSignature {
    /// The signature it declares, checked as a worker's metadata answer is (datatypes, shapes, unique names).
    pub fn signature(&self) -> Result<crate::backend::ModelSignature, crate::protocol::model_metadata::MetadataError> {
        fn fields(t: &DeclaredTensor) -> (&str, &str, &[i64]) {
            (t.name.as_str(), t.datatype.as_str(), t.shape.as_slice())
        }
        crate::protocol::model_metadata::signature_from(self.inputs.iter().map(fields), self.outputs.iter().map(fields))
    }

    /// What is wrong with it, if anything.
    fn problem(&self) -> Option<String> {
        if self.inputs.is_empty() || self.outputs.is_empty() {
            return Some("needs at least one input and one output".into());
        }
        if let Err(e) = self.signature() {
            return Some(e.to_string());
        }
        // Written as the workers spell it in paths: no sign, no leading zero.
        if self.version.as_deref().is_some_and(|v| v.parse::<u64>().map_or(true, |n| n == 0 || n.to_string() != v)) {
            return Some("version must be a positive whole number, as the workers list it (\"2\", not \"02\")".into());
        }
        None
    }
}

/// Active health checks: `GET /v2/health/ready` (HTTP) or `ServerReady` (gRPC) on every endpoint.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckConfig {
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Consecutive passed checks that make an unhealthy endpoint healthy again.
    pub healthy_threshold: u32,
    /// Consecutive failed checks that make an endpoint unhealthy.
    pub unhealthy_threshold: u32,
}

impl Default for HealthCheckConfig {
    fn default() -> Self {
        HealthCheckConfig { interval: Duration::from_secs(1), timeout: Duration::from_millis(500), healthy_threshold: 2, unhealthy_threshold: 2 }
    }
}

/// Passive outlier ejection: requests that fail in a row take an endpoint out of rotation for a while.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EjectionConfig {
    /// Failed attempts in a row (connection errors, timeouts, 5xx, malformed answers) that eject an endpoint.
    pub consecutive_failures: u32,
    /// First ejection time; each ejection in a row doubles it, up to `max_time`. A success resets it.
    #[serde(with = "humantime_serde")]
    pub base_time: Duration,
    #[serde(with = "humantime_serde")]
    pub max_time: Duration,
}

impl Default for EjectionConfig {
    fn default() -> Self {
        EjectionConfig { consecutive_failures: 3, base_time: Duration::from_secs(1), max_time: Duration::from_secs(30) }
    }
}

impl UpstreamConfig {
    /// Checks one pool; `index` is its place in the file, for messages.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: path.into(),
            key,
            message: format!("{message} (upstream pool '{}')", self.name),
        };
        if self.name.trim().is_empty() {
            return Err(invalid("upstreams.name", "is required".into()));
        }
        match (&self.dns, self.endpoints.is_empty()) {
            (None, true) => return Err(invalid("upstreams.endpoints", "must list at least one host:port (or set upstreams.dns)".into())),
            (Some(_), false) => return Err(invalid("upstreams.dns", "and upstreams.endpoints exclude each other".into())),
            _ => {}
        }
        for endpoint in self.endpoints.iter().chain(self.dns.iter()) {
            if let Err(message) = check_host_port(endpoint) {
                return Err(invalid("upstreams.endpoints", message));
            }
        }
        if self.dns_refresh < Duration::from_millis(100) {
            return Err(invalid("upstreams.dns_refresh", "must be at least 100ms".into()));
        }
        if self.models.is_empty() {
            return Err(invalid("upstreams.models", "must name at least one model".into()));
        }
        if let Some(bad) = self.models.iter().find(|m| m.is_empty() || !m.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))) {
            return Err(invalid("upstreams.models", format!("'{bad}' is not a model name (letters, digits, '-', '_', '.')")));
        }
        if let Some(extra) = self.model_settings.keys().find(|k| !self.models.contains(k)) {
            return Err(invalid("upstreams.model_settings", format!("names '{extra}', which is not in upstreams.models")));
        }
        if let Some(extra) = self.signatures.keys().find(|k| !self.models.contains(k)) {
            return Err(invalid("upstreams.signatures", format!("names '{extra}', which is not in upstreams.models")));
        }
        for (model, declared) in &self.signatures {
            if let Some(problem) = declared.problem() {
                return Err(invalid("upstreams.signatures", format!("model '{model}': {problem}")));
            }
        }
        if self.max_concurrency == 0 {
            return Err(invalid("upstreams.max_concurrency", "must be at least 1".into()));
        }
        if self.max_outstanding == 0 || self.max_outstanding > 65536 {
            return Err(invalid("upstreams.max_outstanding", "must be between 1 and 65536".into()));
        }
        for (key, value) in [
            ("upstreams.connect_timeout", self.connect_timeout),
            ("upstreams.try_timeout", self.try_timeout),
            ("upstreams.timeout", self.timeout),
            ("upstreams.idle_timeout", self.idle_timeout),
            ("upstreams.startup_timeout", self.startup_timeout),
            ("upstreams.health.interval", self.health.interval),
            ("upstreams.health.timeout", self.health.timeout),
            ("upstreams.ejection.base_time", self.ejection.base_time),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be above zero".into()));
            }
        }
        // Deadlines are computed as now + these: absurd values would overflow the clock.
        const DAY: Duration = Duration::from_secs(24 * 3600);
        for (key, value, most) in [
            ("upstreams.timeout", self.timeout, DAY),
            ("upstreams.try_timeout", self.try_timeout, DAY),
            ("upstreams.startup_timeout", self.startup_timeout, DAY),
            ("upstreams.wait_for_endpoint", self.wait_for_endpoint, Duration::from_secs(3600)),
        ] {
            if value > most {
                return Err(invalid(key, format!("must be at most {}", humantime::format_duration(most))));
            }
        }
        if self.max_attempts == 0 || self.max_attempts > 10 {
            return Err(invalid("upstreams.max_attempts", "must be between 1 and 10".into()));
        }
        if !(0.0..=1.0).contains(&self.retry_budget) {
            return Err(invalid("upstreams.retry_budget", "must be between 0 and 1".into()));
        }
        if !(self.min_retries_per_second >= 0.0 && self.min_retries_per_second.is_finite()) {
            return Err(invalid("upstreams.min_retries_per_second", "must be a finite number, 0 or more".into()));
        }
        if self.health.healthy_threshold == 0 || self.health.unhealthy_threshold == 0 {
            return Err(invalid("upstreams.health.healthy_threshold", "and unhealthy_threshold must be at least 1".into()));
        }
        if self.ejection.consecutive_failures == 0 {
            return Err(invalid("upstreams.ejection.consecutive_failures", "must be at least 1".into()));
        }
        if self.ejection.max_time < self.ejection.base_time {
            return Err(invalid("upstreams.ejection.max_time", "must be at least upstreams.ejection.base_time".into()));
        }
        Ok(())
    }
}

/// `host:port` with a non-empty host and a numeric port (no scheme, no path).
fn check_host_port(text: &str) -> Result<(), String> {
    let (host, port) = text.rsplit_once(':').ok_or_else(|| format!("'{text}' is not host:port"))?;
    if host.is_empty() || host.contains('/') {
        return Err(format!("'{text}' is not host:port (no scheme or path)"));
    }
    port.parse::<u16>().map_err(|_| format!("'{text}' has no valid port"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(text: &str) -> Result<(), String> {
        let config: UpstreamConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate(Path::new("gateway.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn a_minimal_pool_is_valid_and_mistakes_name_the_key() {
        pool("name = 'w'\nendpoints = ['127.0.0.1:9000']\nmodels = ['identity']").unwrap();
        pool("name = 'w'\ndns = 'workers.ml.svc:8000'\nmodels = ['identity']").unwrap();
        pool("name = 'w'\nendpoints = ['a:1']\nmodels = ['m']\n[signatures.m]\nversion = '2'\ninputs = [{name = 'x', datatype = 'FP32', shape = [-1, 4]}]\noutputs = [{name = 'y', datatype = 'INT64', shape = [-1]}]").unwrap();
        let waiting: UpstreamConfig = toml::from_str("name = 'w'\ndns = 'w:1'\nmodels = ['m']\nwait_for_endpoint = '2m'").unwrap();
        assert_eq!(waiting.wait_for_endpoint, Duration::from_secs(120));
        assert_eq!(UpstreamConfig::default().wait_for_endpoint, Duration::ZERO, "by default a pool with no worker answers at once");
        for (text, key) in [
            ("name = 'w'\nmodels = ['identity']", "upstreams.endpoints"),
            ("name = 'w'\nendpoints = ['http://a:1']\nmodels = ['m']", "upstreams.endpoints"),
            ("name = 'w'\nendpoints = ['a:x']\nmodels = ['m']", "upstreams.endpoints"),
            ("name = 'w'\nendpoints = ['a:1']\ndns = 'b:1'\nmodels = ['m']", "upstreams.dns"),
            ("name = 'w'\nendpoints = ['a:1']", "upstreams.models"),
            ("name = 'w'\nendpoints = ['a:1']\nmodels = ['m']\nretry_budget = 2.0", "upstreams.retry_budget"),
            ("name = 'w'\nendpoints = ['a:1']\nmodels = ['m']\nmax_attempts = 0", "upstreams.max_attempts"),
            ("name = 'w'\nendpoints = ['a:1']\nmodels = ['m']\n[model_settings.other]\nmax_batch_size = 4", "upstreams.model_settings"),
            ("name = 'w'\nendpoints = ['a:1']\nmodels = ['m']\n[ejection]\nbase_time = '2s'\nmax_time = '1s'", "upstreams.ejection.max_time"),
            ("name = 'w'\nendpoints = ['a:1']\nmodels = ['m']\n[signatures.other]\ninputs = [{name = 'x', datatype = 'FP32', shape = [1]}]\noutputs = [{name = 'y', datatype = 'FP32', shape = [1]}]", "upstreams.signatures"),
            ("name = 'w'\nendpoints = ['a:1']\nmodels = ['m']\n[signatures.m]\ninputs = [{name = 'x', datatype = 'FLOAT', shape = [1]}]\noutputs = [{name = 'y', datatype = 'FP32', shape = [1]}]", "upstreams.signatures"),
            ("name = 'w'\nendpoints = ['a:1']\nmodels = ['m']\n[signatures.m]\ninputs = [{name = 'x', datatype = 'FP32', shape = [-2]}]\noutputs = [{name = 'y', datatype = 'FP32', shape = [1]}]", "upstreams.signatures"),
            ("name = 'w'\nendpoints = ['a:1']\nmodels = ['m']\n[signatures.m]\ninputs = [{name = 'x', datatype = 'FP32', shape = [1]}]", "upstreams.signatures"),
            ("name = 'w'\nendpoints = ['a:1']\nmodels = ['m']\nwait_for_endpoint = '2h'", "upstreams.wait_for_endpoint"),
            ("name = 'w'\nendpoints = ['a:1']\nmodels = ['m']\ntimeout = '400000000y'", "upstreams.timeout"),
            ("name = 'w'\nendpoints = ['a:1']\nmodels = ['m']\n[signatures.m]\nversion = '02'\ninputs = [{name = 'x', datatype = 'FP32', shape = [1]}]\noutputs = [{name = 'y', datatype = 'FP32', shape = [1]}]", "upstreams.signatures"),
            ("name = 'w'\nendpoints = ['a:1']\nmodels = ['m']\n[signatures.m]\nversion = '0'\ninputs = [{name = 'x', datatype = 'FP32', shape = [1]}]\noutputs = [{name = 'y', datatype = 'FP32', shape = [1]}]", "upstreams.signatures"),
        ] {
            let err = pool(text).unwrap_err();
            assert!(err.contains(&format!("`{key}`")), "{text}: {err}");
        }
        assert!(pool("name = 'w'\nendpoints = ['a:1']\nmodels = ['m']\nprotocol = 'ftp'").unwrap_err().contains("protocol"));
    }
}

//! Typed, validated configuration: the server file (`config/sluice.toml`) and each model's `model.toml`.
//! Every default lives here; every error names the file and the key.

mod auth;
mod repository;
mod tls;
mod upstream;

pub use auth::{AuthConfig, Scope, TenantConfig};
pub use repository::{RepositoryConfig, WarmupData, WarmupFile};
pub use tls::{ClientAuth, TlsConfig};
pub use upstream::{DeclaredSignature, DeclaredTensor, EjectionConfig, HealthCheckConfig, UpstreamConfig, UpstreamProtocol};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: `{key}` {message}")]
    Invalid { path: PathBuf, key: &'static str, message: String },
}

/// The whole server configuration (`sluice serve --config FILE`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub onnxruntime: OnnxRuntimeConfig,
    pub logging: LoggingConfig,
    /// Defaults for models whose `model.toml` does not say.
    pub model_defaults: ModelDefaults,
    /// The admin listener: `/metrics` and `/scaling`, apart from the data ports.
    pub admin: AdminConfig,
    pub metrics: MetricsConfig,
    /// The scaling signal and where it is published (KEDA external scaler, OCI Monitoring).
    pub scaling: ScalingConfig,
    /// The response cache (models opt in with `[cache] enabled = true` in their model.toml).
    pub cache: CacheConfig,
    /// Pools of remote V2 servers whose models this server serves (gateway / sidecar). See docs/REMOTE.md.
    pub upstreams: Vec<UpstreamConfig>,
    /// Graceful stop on SIGTERM / SIGINT.
    pub shutdown: ShutdownConfig,
    /// Watching the model repository for new, changed and removed versions. See docs/LIFECYCLE.md.
    pub repository: RepositoryConfig,
    /// API keys per tenant, per-route scopes and per-tenant rate limits. See docs/SECURITY.md.
    pub auth: AuthConfig,
}

/// How a stop signal drains the server. The process exits within `pre_stop_delay + drain_timeout` (plus a moment to
/// flush the last answers).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// After the signal, readiness is false at once but requests and new connections are still served this long, so
    /// load balancers notice and stop sending (set it to what their health checks need to see a replica go; 0 when a
    /// Kubernetes preStop hook already waits).
    #[serde(with = "humantime_serde")]
    pub pre_stop_delay: Duration,
    /// Then the listeners close and queued and in-flight requests get this long to finish; whatever is still running
    /// is answered 503 / UNAVAILABLE.
    #[serde(with = "humantime_serde")]
    pub drain_timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { pre_stop_delay: Duration::ZERO, drain_timeout: Duration::from_secs(30) }
    }
}

/// Where cached responses live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheMode {
    /// In this process only.
    Local,
    /// In Redis only, shared between replicas.
    Redis,
    /// In this process, in front of Redis: local hits cost nothing, Redis hits are copied locally.
    Tiered,
}

/// Server-wide limits of the response cache. See docs/CACHE.md.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    pub mode: CacheMode,
    /// Local tier: most bytes of cached outputs (tensor data plus names and shapes), over all models.
    pub max_bytes: u64,
    /// An entry expires this long after it was stored (both tiers). A model's `[cache] ttl` may lower it.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
    /// Responses whose outputs are larger than this are not cached.
    pub max_entry_bytes: usize,
    /// Identical requests in flight at the same time run once and share the answer.
    pub coalesce: bool,
    pub redis: RedisConfig,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            mode: CacheMode::Local,
            max_bytes: 256 * 1024 * 1024,
            ttl: Duration::from_secs(300),
            max_entry_bytes: 4 * 1024 * 1024,
            coalesce: true,
            redis: RedisConfig::default(),
        }
    }
}

/// The shared Redis tier (`mode = "redis"` or `"tiered"`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://` for TLS).
    pub url: String,
    /// Multiplexed connections kept open; requests are spread over them.
    pub pool_size: usize,
    /// Longest wait to (re)connect.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest wait for one GET or SET answer; past it the request is served from the model (fail-open).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// After a failure, Redis is skipped for this long before it is tried again, so an outage costs one timeout per
    /// period instead of one per request.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Prefix of every key Sluice writes.
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            pool_size: 4,
            connect_timeout: Duration::from_millis(500),
            timeout: Duration::from_millis(50),
            retry_after: Duration::from_secs(1),
            key_prefix: "sluice:".into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    pub enabled: bool,
    /// Serves `GET /metrics` (Prometheus) and `GET /scaling` (KEDA metrics-api). Port 0 picks a free port.
    /// Loopback by default; any other address needs `public = true` or [auth] with an admin-scoped key.
    pub listen: SocketAddr,
    /// The admin port may listen on a non-loopback address without authentication (a private pod network, guarded
    /// by a NetworkPolicy).
    pub public: bool,
    /// TLS on the admin listener (`[admin.tls]`, the same keys as `[server.tls]`); absent: plaintext.
    pub tls: Option<TlsConfig>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { enabled: true, listen: SocketAddr::from(([127, 0, 0, 1], 8002)), public: false, tls: None }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Records Prometheus metrics on the request path. Off: `/metrics` answers 404 and recording costs nothing;
    /// the scaling signal (which has its own counters) keeps working.
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig { enabled: true }
    }
}

/// How the desired-capacity figure is computed (see docs/SCALING.md for the formula).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ScalingConfig {
    /// The share of time model instances should be busy at the desired capacity, in (0, 1].
    pub target_utilization: f64,
    /// Service rate, busy ratio and the slow arrival rate are measured over this window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// The fast arrival rate is measured over this shorter window; the larger of the two rates is used, so capacity
    /// follows a load step up within about this time and a step down only as fast as `window` forgets.
    #[serde(with = "humantime_serde")]
    pub fast_window: Duration,
    /// Requests already queued should be cleared within this time: the backlog adds capacity accordingly.
    #[serde(with = "humantime_serde")]
    pub drain_time: Duration,
    /// Arrival rate (requests/s, over `fast_window`) above which a model is active even with an empty queue.
    /// 0 = any arrival in the fast window makes the model active.
    pub activation_rate: f64,
    pub keda: KedaConfig,
    pub oci: OciMonitoringConfig,
}

impl Default for ScalingConfig {
    fn default() -> Self {
        ScalingConfig {
            target_utilization: 0.7,
            window: Duration::from_secs(10),
            fast_window: Duration::from_secs(1),
            drain_time: Duration::from_secs(10),
            activation_rate: 0.0,
            keda: KedaConfig::default(),
            oci: OciMonitoringConfig::default(),
        }
    }
}

/// KEDA's external scaler gRPC service (`externalscaler.ExternalScaler`).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KedaConfig {
    pub enabled: bool,
    /// Port 0 picks a free port.
    pub listen: SocketAddr,
}

impl Default for KedaConfig {
    fn default() -> Self {
        KedaConfig { enabled: true, listen: SocketAddr::from(([0, 0, 0, 0], 9100)) }
    }
}

/// Pushes the scaling signal to OCI Monitoring as custom metrics (PostMetricData), for OCI Autoscaling.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OciMonitoringConfig {
    pub enabled: bool,
    /// The OCI CLI/SDK config file; unset: `OCI_CONFIG_FILE`, else `~/.oci/config`.
    pub config_file: Option<PathBuf>,
    /// The profile (section) of the config file.
    pub profile: String,
    /// The compartment OCID the metrics are posted to (required when enabled).
    pub compartment_id: String,
    /// Metric namespace: a letter first, then letters, digits and `_`; must not start with `oci_` or `oracle_`.
    pub namespace: String,
    pub resource_group: Option<String>,
    /// Overrides the profile's `region`.
    pub region: Option<String>,
    /// Overrides the ingestion endpoint (`https://telemetry-ingestion.{region}.oraclecloud.com`), e.g. for tests.
    pub endpoint: Option<String>,
    /// One datapoint per metric stream is taken this often and posted.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Datapoints kept while the endpoint is unreachable; the oldest are dropped beyond it.
    pub max_buffered_datapoints: usize,
    /// Timeout of one PostMetricData call.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Extra dimensions on every stream (e.g. `{ pool = "gpu-a10" }`); `model` and `instance` are always set.
    pub dimensions: std::collections::BTreeMap<String, String>,
}

impl Default for OciMonitoringConfig {
    fn default() -> Self {
        OciMonitoringConfig {
            enabled: false,
            config_file: None,
            profile: "DEFAULT".into(),
            compartment_id: String::new(),
            namespace: "sluice".into(),
            resource_group: None,
            region: None,
            endpoint: None,
            interval: Duration::from_secs(10),
            max_buffered_datapoints: 10_000,
            timeout: Duration::from_secs(5),
            dimensions: Default::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// KServe V2 HTTP listener.
    pub http: SocketAddr,
    /// KServe V2 gRPC listener (with gRPC health and reflection).
    pub grpc: SocketAddr,
    /// Largest gRPC message accepted or sent (RESOURCE_EXHAUSTED/OUT_OF_RANGE above it).
    pub grpc_max_message_bytes: usize,
    /// The model repository.
    pub models: PathBuf,
    /// Largest request body accepted (413 above it).
    pub max_body_bytes: usize,
    /// Largest element count of a single input tensor (400 above it).
    pub max_tensor_elements: usize,
    /// TLS on the HTTP and gRPC listeners (`[server.tls]`); absent: plaintext. See docs/SECURITY.md.
    pub tls: Option<TlsConfig>,
    /// A request's head (request line and headers) must arrive within this time of its first byte (of the
    /// connection's start for its first request), and a gRPC or HTTP/2 connection's preface within this time of the
    /// connection's start; slower clients are disconnected.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// An HTTP/1 keep-alive connection with no request in progress is closed after this long.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A request body must arrive within this time once the server starts reading it (408 past it).
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Largest request head (HTTP/1: request line and headers, 431 above it; HTTP/2 and gRPC: header list).
    pub max_header_bytes: usize,
    /// Most connections open at once, per listener (HTTP, gRPC, admin); over it, new connections are closed at once.
    pub max_connections: usize,
    /// Most streams (requests) at once on one HTTP/2 or gRPC connection.
    pub max_concurrent_streams: u32,
    /// HTTP/2 and gRPC connections are pinged this often when quiet (0 = never) ...
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// ... and closed when a ping is not answered within this time.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Niceness (Linux, 0..=19) of the async runtime's threads, which read, parse, refuse and answer requests. Above
    /// 0, model compute (instance threads, at `model_defaults.instance_thread_nice`) wins the CPU when they compete:
    /// clients that retry at once after a 429 take less of it (closed-loop goodput 0.88–0.89 of saturation at 10 against
    /// 0.74–0.78 at 0, both with `refused_hold`), but request handling keeps only about a tenth of a busy core and falls
    /// behind an open-loop overload (3× the service rate: rejections answered after p50 0.1 s, p99 0.65 s, against
    /// 145 µs / 5.8 ms at 0; docs/BENCHMARKS.md). Default 0, an equal share. Applied by `sluice serve`.
    pub runtime_thread_nice: i32,
    /// After the HTTP/1.1 lane refuses a request because its model's queue is full (429), and refusals have outrun what
    /// the model serves (more than 3 per request it takes into a batch), the connection is not read again until that
    /// queue has room (one waiting connection per freed place, first come first served) or this long has passed. The
    /// 429 itself goes out at once; what waits is the connection's *next* request, in the kernel's socket buffer,
    /// costing nothing. A client that honours `Retry-After` never notices, nor does an open-loop overload up to about
    /// 4× the service rate; clients that send again at once (closed loop) no longer make the server refuse them tens of
    /// thousands of times a second (goodput 0.11 → 0.74–0.78 of saturation, docs/BENCHMARKS.md). 0 turns it off.
    #[serde(with = "humantime_serde")]
    pub refused_hold: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            http: SocketAddr::from(([0, 0, 0, 0], 8000)),
            grpc: SocketAddr::from(([0, 0, 0, 0], 8001)),
            grpc_max_message_bytes: 64 * 1024 * 1024,
            models: PathBuf::from("models"),
            max_body_bytes: 64 * 1024 * 1024,
            max_tensor_elements: 16 * 1024 * 1024,
            tls: None,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            body_read_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            max_connections: 10_000,
            max_concurrent_streams: 256,
            keepalive_interval: Duration::from_secs(30),
            keepalive_timeout: Duration::from_secs(20),
            runtime_thread_nice: 0,
            refused_hold: Duration::from_millis(50),
        }
    }
}

impl ServerConfig {
    /// The hostile-client limits: every timeout above zero, sizes and counts in a sane range.
    fn validate_connection_limits(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: &str| ConfigError::Invalid { path: path.into(), key, message: message.into() };
        let hour = Duration::from_secs(3600);
        for (key, value) in [
            ("server.header_read_timeout", self.header_read_timeout),
            ("server.idle_timeout", self.idle_timeout),
            ("server.body_read_timeout", self.body_read_timeout),
            ("server.keepalive_timeout", self.keepalive_timeout),
        ] {
            if value.is_zero() || value > hour {
                return Err(invalid(key, "must be above zero and at most 1h"));
            }
        }
        if self.keepalive_interval > hour {
            return Err(invalid("server.keepalive_interval", "must be at most 1h (0 = no pings)"));
        }
        if !(4096..=1024 * 1024).contains(&self.max_header_bytes) {
            return Err(invalid("server.max_header_bytes", "must be between 4096 and 1048576"));
        }
        if self.max_connections == 0 || self.max_connections > 1_000_000 {
            return Err(invalid("server.max_connections", "must be between 1 and 1000000"));
        }
        if self.max_concurrent_streams == 0 {
            return Err(invalid("server.max_concurrent_streams", "must be at least 1"));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OnnxRuntimeConfig {
    /// Path to `libonnxruntime.so`; otherwise `ORT_DYLIB_PATH`, otherwise `.onnxruntime/` (what scripts/setup.sh fetches).
    pub library: Option<PathBuf>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoggingConfig {
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `sluice=debug,info`. `RUST_LOG` wins when set.
    pub level: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig { format: LogFormat::Human, level: "info".into() }
    }
}

/// Server-wide defaults for the per-model settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelDefaults {
    /// Used when a model that can batch (dynamic dim 0 everywhere) does not set `max_batch_size`.
    pub max_batch_size: usize,
    pub queue_capacity: usize,
    #[serde(with = "humantime_serde")]
    pub queue_timeout: Duration,
    pub threads: usize,
    /// Niceness of model instance threads (Linux), 0..=19. Default 0: compute has at least the runtime's share of the
    /// CPU (see `server.runtime_thread_nice`). Above it, request handling wins over compute when they share cores — the
    /// default before 2026-12 was 10, which let a storm of clients retrying after 429s starve the model (goodput 0.09
    /// of saturation, docs/BENCHMARKS.md).
    pub instance_thread_nice: i32,
    /// The batcher ends its waits for a fuller batch with a timerfd, to the microsecond (see `scheduler::timer`);
    /// false: Tokio's timer, which rounds every wait up to the next whole millisecond.
    pub precise_batch_timer: bool,
}

impl Default for ModelDefaults {
    fn default() -> Self {
        ModelDefaults {
            max_batch_size: 32,
            queue_capacity: 1024,
            queue_timeout: Duration::from_secs(10),
            threads: 1,
            instance_thread_nice: 0,
            precise_batch_timer: true,
        }
    }
}

/// Execution providers a model may ask for, tried in order; CPU is always the last resort.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionProviderKind {
    Tensorrt,
    Cuda,
    Cpu,
}

/// A model's `model.toml`, as written (optional fields fall back to [`ModelDefaults`]).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelFile {
    /// Rows per batch; 0 turns batching off. Unset: the server default if the model can batch, else 0.
    pub max_batch_size: Option<usize>,
    /// ONNX Runtime sessions run side by side (each on its own thread).
    pub instances: Option<usize>,
    /// Intra-op threads per session (0 = ONNX Runtime's default).
    pub threads: Option<usize>,
    pub execution_providers: Option<Vec<ExecutionProviderKind>>,
    pub dynamic_batching: DynamicBatchingFile,
    pub queue: QueueFile,
    pub cache: ModelCacheFile,
    /// Whether running a request twice is harmless (remote models: a request may then be retried on another endpoint
    /// after a timeout or a broken connection). Default true; set false for models with side effects.
    pub idempotent: Option<bool>,
    /// Requests a newly loaded version answers before it takes traffic (repository models). See docs/LIFECYCLE.md.
    pub warmup: WarmupFile,
}

/// A model's `[cache]` table: whether its responses are cached.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ModelCacheFile {
    /// Off unless set: only deterministic models whose answers may be shared between clients should turn it on.
    pub enabled: bool,
    /// Lowers the server's `cache.ttl` for this model.
    #[serde(with = "humantime_serde::option")]
    pub ttl: Option<Duration>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DynamicBatchingFile {
    /// How long the oldest request may wait for a fuller batch when an instance is free (e.g. "2ms"; 0 = dispatch at once).
    #[serde(with = "humantime_serde::option")]
    pub max_queue_delay: Option<Duration>,
    /// Batch sizes worth waiting for: reaching one dispatches at once.
    pub preferred_batch_sizes: Vec<usize>,
    /// Whether a lone request waits `max_queue_delay` for company when the model's previous batch was a single request
    /// too. Default false: at low load (one client, or arrivals further apart than a batch's compute) no batch can
    /// form, and the wait only added its whole length to every answer (`wide`, 5 ms delay: c=1 p50 9.1 ms, 3.2 ms
    /// without it; docs/BENCHMARKS.md). As soon as a batch of two or more forms (more clients), waits resume.
    pub wait_when_alone: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueFile {
    /// Most requests waiting at once (429 above it).
    pub capacity: Option<usize>,
    /// Most rows waiting at once (429 above it).
    pub max_rows: Option<usize>,
    /// Longest wait in the queue before 504 (a request's `timeout` parameter may lower it).
    #[serde(with = "humantime_serde::option")]
    pub timeout: Option<Duration>,
    /// Number of priority levels (1 = highest); requests pick one with the `priority` parameter.
    pub priority_levels: Option<u32>,
    /// Level used when a request does not give one.
    pub default_priority: Option<u32>,
}

/// A model's effective settings, after defaults and validation.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelSettings {
    pub max_batch_size: usize,
    pub instances: usize,
    pub threads: usize,
    pub execution_providers: Vec<ExecutionProviderKind>,
    pub max_queue_delay: Duration,
    pub preferred_batch_sizes: Vec<usize>,
    /// See [`DynamicBatchingFile::wait_when_alone`].
    pub wait_when_alone: bool,
    pub queue_capacity: usize,
    pub queue_max_rows: usize,
    pub queue_timeout: Duration,
    pub priority_levels: u32,
    pub default_priority: u32,
    /// See [`ModelDefaults::instance_thread_nice`].
    pub instance_thread_nice: i32,
    /// See [`ModelDefaults::precise_batch_timer`].
    pub precise_batch_timer: bool,
    /// Responses are cached (and identical requests coalesced).
    pub cache_enabled: bool,
    /// This model's entry lifetime when it lowers the server's `cache.ttl`.
    pub cache_ttl: Option<Duration>,
    /// See [`ModelFile::idempotent`].
    pub idempotent: bool,
}

impl ModelFile {
    pub fn load(path: &Path) -> Result<ModelFile, ConfigError> {
        if !path.exists() {
            return Ok(ModelFile::default());
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })
    }

    /// Applies defaults and checks the values. `can_batch` says whether every input and output has a dynamic dim 0.
    pub fn resolve(&self, defaults: &ModelDefaults, can_batch: bool, path: &Path) -> Result<ModelSettings, ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid { path: path.into(), key, message };
        let max_batch_size = match self.max_batch_size {
            Some(n) if n > 0 && !can_batch => {
                return Err(invalid(
                    "max_batch_size",
                    format!("is {n} but the model's inputs and outputs do not all have a dynamic first dimension; set it to 0"),
                ))
            }
            Some(n) => n,
            None if can_batch => defaults.max_batch_size,
            None => 0,
        };
        let instances = self.instances.unwrap_or(1);
        if instances == 0 || instances > 64 {
            return Err(invalid("instances", format!("must be between 1 and 64, got {instances}")));
        }
        let preferred = self.dynamic_batching.preferred_batch_sizes.clone();
        if let Some(&bad) = preferred.iter().find(|&&p| p == 0 || p > max_batch_size.max(1)) {
            return Err(invalid("dynamic_batching.preferred_batch_sizes", format!("{bad} is not between 1 and max_batch_size ({max_batch_size})")));
        }
        let queue_capacity = self.queue.capacity.unwrap_or(defaults.queue_capacity);
        if queue_capacity == 0 {
            return Err(invalid("queue.capacity", "must be at least 1".into()));
        }
        let queue_max_rows = self.queue.max_rows.unwrap_or(queue_capacity.saturating_mul(max_batch_size.max(1)));
        if queue_max_rows < max_batch_size.max(1) {
            return Err(invalid("queue.max_rows", format!("must be at least max_batch_size ({max_batch_size})")));
        }
        let queue_timeout = self.queue.timeout.unwrap_or(defaults.queue_timeout);
        if queue_timeout.is_zero() {
            return Err(invalid("queue.timeout", "must be above zero".into()));
        }
        let priority_levels = self.queue.priority_levels.unwrap_or(1);
        if priority_levels == 0 || priority_levels > 16 {
            return Err(invalid("queue.priority_levels", format!("must be between 1 and 16, got {priority_levels}")));
        }
        let default_priority = self.queue.default_priority.unwrap_or(priority_levels.div_ceil(2));
        if default_priority == 0 || default_priority > priority_levels {
            return Err(invalid("queue.default_priority", format!("must be between 1 and priority_levels ({priority_levels})")));
        }
        if self.cache.ttl.is_some_and(|t| t.is_zero()) {
            return Err(invalid("cache.ttl", "must be above zero (to turn caching off, set cache.enabled = false)".into()));
        }
        let mut execution_providers = self.execution_providers.clone().unwrap_or_else(|| vec![ExecutionProviderKind::Cpu]);
        if execution_providers.is_empty() {
            execution_providers.push(ExecutionProviderKind::Cpu);
        }
        Ok(ModelSettings {
            max_batch_size,
            instances,
            threads: self.threads.unwrap_or(defaults.threads),
            execution_providers,
            max_queue_delay: self.dynamic_batching.max_queue_delay.unwrap_or(Duration::ZERO),
            preferred_batch_sizes: preferred,
            wait_when_alone: self.dynamic_batching.wait_when_alone.unwrap_or(false),
            queue_capacity,
            queue_max_rows,
            queue_timeout,
            priority_levels,
            default_priority,
            instance_thread_nice: defaults.instance_thread_nice,
            precise_batch_timer: defaults.precise_batch_timer,
            cache_enabled: self.cache.enabled,
            cache_ttl: self.cache.ttl,
            idempotent: self.idempotent.unwrap_or(true),
        })
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let config = Config::read(path)?;
        config.validate(path)?;
        Ok(config)
    }

    /// Parses a config file without checking values that command-line flags may still change (the server checks
    /// the final config at start, naming the file's keys).
    pub fn read(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })
    }

    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: &str| ConfigError::Invalid { path: path.into(), key, message: message.into() };
        if self.server.max_body_bytes == 0 {
            return Err(invalid("server.max_body_bytes", "must be above zero"));
        }
        if self.server.grpc_max_message_bytes == 0 {
            return Err(invalid("server.grpc_max_message_bytes", "must be above zero"));
        }
        if self.server.max_tensor_elements == 0 {
            return Err(invalid("server.max_tensor_elements", "must be above zero"));
        }
        self.server.validate_connection_limits(path)?;
        if let Some(tls) = &self.server.tls {
            tls.validate(false, path)?;
        }
        if let Some(tls) = self.admin.tls.as_ref().filter(|_| self.admin.enabled) {
            tls.validate(true, path)?;
        }
        if self.server.refused_hold > Duration::from_secs(60) {
            return Err(invalid("server.refused_hold", "must be at most 60s"));
        }
        if !(0..=19).contains(&self.server.runtime_thread_nice) {
            return Err(invalid("server.runtime_thread_nice", "must be between 0 and 19"));
        }
        if !(0..=19).contains(&self.model_defaults.instance_thread_nice) {
            return Err(invalid("model_defaults.instance_thread_nice", "must be between 0 and 19"));
        }
        if self.model_defaults.queue_capacity == 0 {
            return Err(invalid("model_defaults.queue_capacity", "must be at least 1"));
        }
        if self.model_defaults.queue_timeout.is_zero() {
            return Err(invalid("model_defaults.queue_timeout", "must be above zero"));
        }
        let scaling = &self.scaling;
        if !(scaling.target_utilization > 0.0 && scaling.target_utilization <= 1.0) {
            return Err(invalid("scaling.target_utilization", "must be above 0 and at most 1"));
        }
        if scaling.window < Duration::from_millis(200) || scaling.window > Duration::from_secs(3600) {
            return Err(invalid("scaling.window", "must be between 200ms and 1h"));
        }
        if scaling.fast_window < Duration::from_millis(100) || scaling.fast_window > scaling.window {
            return Err(invalid("scaling.fast_window", "must be at least 100ms and at most scaling.window"));
        }
        if scaling.drain_time.is_zero() {
            return Err(invalid("scaling.drain_time", "must be above zero"));
        }
        if !(scaling.activation_rate >= 0.0 && scaling.activation_rate.is_finite()) {
            return Err(invalid("scaling.activation_rate", "must be a finite number of requests per second, 0 or more"));
        }
        let cache = &self.cache;
        if cache.max_bytes == 0 && cache.mode != CacheMode::Redis {
            return Err(invalid("cache.max_bytes", "must be above zero (the local tier needs room; mode = \"redis\" has no local tier)"));
        }
        if cache.ttl.is_zero() {
            return Err(invalid("cache.ttl", "must be above zero"));
        }
        if cache.max_entry_bytes == 0 {
            return Err(invalid("cache.max_entry_bytes", "must be above zero"));
        }
        if cache.mode != CacheMode::Local {
            let redis = &cache.redis;
            if !(redis.url.starts_with("redis://") || redis.url.starts_with("rediss://") || redis.url.starts_with("redis+unix://") || redis.url.starts_with("unix://")) {
                return Err(invalid("cache.redis.url", "must start with redis://, rediss:// or unix://"));
            }
            if redis.pool_size == 0 || redis.pool_size > 64 {
                return Err(invalid("cache.redis.pool_size", "must be between 1 and 64"));
            }
            if redis.timeout.is_zero() || redis.connect_timeout.is_zero() {
                return Err(invalid("cache.redis.timeout", "timeout and connect_timeout must be above zero"));
            }
            if redis.retry_after < Duration::from_millis(10) {
                return Err(invalid("cache.redis.retry_after", "must be at least 10ms (it paces reconnection attempts)"));
            }
        }
        self.auth.validate(path)?;
        if self.admin.enabled && !self.admin.listen.ip().is_loopback() && !self.admin.public {
            let guarded = self.auth.enabled && self.auth.tenants.iter().any(|t| t.scopes.contains(&Scope::Admin));
            if !guarded {
                return Err(invalid(
                    "admin.listen",
                    "is not a loopback address: the admin port (metrics, scaling, repository API) is kept off public addresses unless [auth] is enabled with an admin-scoped key, or admin.public = true says it is on a private network on purpose",
                ));
            }
        }
        self.repository.validate(path)?;
        if self.shutdown.drain_timeout.is_zero() {
            return Err(invalid("shutdown.drain_timeout", "must be above zero"));
        }
        if self.shutdown.pre_stop_delay > Duration::from_secs(3600) || self.shutdown.drain_timeout > Duration::from_secs(3600) {
            return Err(invalid("shutdown.pre_stop_delay", "and shutdown.drain_timeout must be at most 1h"));
        }
        let mut served = std::collections::BTreeSet::new();
        for (i, pool) in self.upstreams.iter().enumerate() {
            pool.validate(path)?;
            if self.upstreams[..i].iter().any(|p| p.name == pool.name) {
                return Err(invalid("upstreams.name", &format!("'{}' names two pools", pool.name)));
            }
            if let Some(model) = pool.models.iter().find(|m| !served.insert(m.as_str())) {
                return Err(invalid("upstreams.models", &format!("'{model}' is served by two pools (or listed twice)")));
            }
        }
        let oci = &scaling.oci;
        if oci.enabled {
            if oci.compartment_id.trim().is_empty() {
                return Err(invalid("scaling.oci.compartment_id", "is required when scaling.oci.enabled is true"));
            }
            if let Err(message) = check_oci_namespace(&oci.namespace) {
                return Err(invalid("scaling.oci.namespace", &message));
            }
            if oci.interval < Duration::from_secs(1) {
                return Err(invalid("scaling.oci.interval", "must be at least 1s (OCI accepts at most one post a second per stream)"));
            }
            if oci.max_buffered_datapoints == 0 {
                return Err(invalid("scaling.oci.max_buffered_datapoints", "must be at least 1"));
            }
            if oci.timeout.is_zero() {
                return Err(invalid("scaling.oci.timeout", "must be above zero"));
            }
        }
        Ok(())
    }
}

/// OCI Monitoring's rule for custom namespaces.
pub fn check_oci_namespace(namespace: &str) -> Result<(), String> {
    let mut chars = namespace.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphabetic()) {
        return Err(format!("'{namespace}' must start with a letter"));
    }
    if !namespace.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("'{namespace}' may hold only letters, digits and '_'"));
    }
    if namespace.len() > 255 {
        return Err(format!("'{namespace}' is longer than 255 characters"));
    }
    let lower = namespace.to_ascii_lowercase();
    if lower.starts_with("oci_") || lower.starts_with("oracle_") {
        return Err(format!("'{namespace}' must not start with 'oci_' or 'oracle_' (reserved for OCI services)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_file_defaults_and_errors_name_the_key() {
        let path = Path::new("m/model.toml");
        let file: ModelFile = toml::from_str("max_batch_size = 8\n[queue]\ncapacity = 0\n").unwrap();
        let err = file.resolve(&ModelDefaults::default(), true, path).unwrap_err();
        assert!(err.to_string().contains("`queue.capacity`"), "{err}");
        let file: ModelFile = toml::from_str("max_batch_size = 8\n").unwrap();
        let err = file.resolve(&ModelDefaults::default(), false, path).unwrap_err();
        assert!(err.to_string().contains("`max_batch_size`"), "{err}");
        let settings = ModelFile::default().resolve(&ModelDefaults::default(), false, path).unwrap();
        assert_eq!(settings.max_batch_size, 0);
        assert!(toml::from_str::<ModelFile>("max_batch = 8").unwrap_err().to_string().contains("max_batch"));
    }

    /// config/sluice.toml says its values are the defaults: it must load, and a few of each section must match.
    #[test]
    fn shipped_config_loads_and_shows_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/sluice.toml");
        let shipped = Config::load(&path).unwrap();
        let defaults = Config::default();
        assert_eq!(shipped.server.http, defaults.server.http);
        assert_eq!(shipped.admin.listen, defaults.admin.listen);
        assert_eq!(shipped.admin.enabled, defaults.admin.enabled);
        assert_eq!(shipped.metrics.enabled, defaults.metrics.enabled);
        assert_eq!(shipped.scaling.target_utilization, defaults.scaling.target_utilization);
        assert_eq!(shipped.scaling.window, defaults.scaling.window);
        assert_eq!(shipped.scaling.fast_window, defaults.scaling.fast_window);
        assert_eq!(shipped.scaling.drain_time, defaults.scaling.drain_time);
        assert_eq!(shipped.scaling.keda.listen, defaults.scaling.keda.listen);
        assert_eq!(shipped.scaling.oci.enabled, defaults.scaling.oci.enabled);
        assert_eq!(shipped.scaling.oci.interval, defaults.scaling.oci.interval);
        assert_eq!(shipped.scaling.oci.max_buffered_datapoints, defaults.scaling.oci.max_buffered_datapoints);
        assert_eq!(shipped.model_defaults.queue_capacity, defaults.model_defaults.queue_capacity);
        assert_eq!(shipped.cache.mode, defaults.cache.mode);
        assert_eq!(shipped.cache.max_bytes, defaults.cache.max_bytes);
        assert_eq!(shipped.cache.ttl, defaults.cache.ttl);
        assert_eq!(shipped.cache.max_entry_bytes, defaults.cache.max_entry_bytes);
        assert_eq!(shipped.cache.redis.timeout, defaults.cache.redis.timeout);
        assert_eq!(shipped.cache.redis.url, defaults.cache.redis.url);
        assert_eq!(shipped.shutdown.pre_stop_delay, defaults.shutdown.pre_stop_delay);
        assert_eq!(shipped.shutdown.drain_timeout, defaults.shutdown.drain_timeout);
        assert!(shipped.server.tls.is_none() && shipped.admin.tls.is_none());
        assert_eq!(shipped.server.header_read_timeout, defaults.server.header_read_timeout);
        assert_eq!(shipped.server.idle_timeout, defaults.server.idle_timeout);
        assert_eq!(shipped.server.body_read_timeout, defaults.server.body_read_timeout);
        assert_eq!(shipped.server.max_header_bytes, defaults.server.max_header_bytes);
        assert_eq!(shipped.server.max_connections, defaults.server.max_connections);
        assert_eq!(shipped.server.max_concurrent_streams, defaults.server.max_concurrent_streams);
        assert_eq!(shipped.server.keepalive_interval, defaults.server.keepalive_interval);
        assert_eq!(shipped.server.keepalive_timeout, defaults.server.keepalive_timeout);
    }

    #[test]
    fn connection_limits_and_tls_settings_are_checked() {
        let path = Path::new("sluice.toml");
        for (text, key) in [
            ("[server]\nheader_read_timeout = \"0s\"", "`server.header_read_timeout`"),
            ("[server]\nbody_read_timeout = \"2h\"", "`server.body_read_timeout`"),
            ("[server]\nmax_header_bytes = 100", "`server.max_header_bytes`"),
            ("[server]\nmax_connections = 0", "`server.max_connections`"),
            ("[server]\nmax_concurrent_streams = 0", "`server.max_concurrent_streams`"),
            ("[server.tls]\nkey = \"k.pem\"", "`server.tls.cert`"),
            ("[admin.tls]\ncert = \"c.pem\"", "`admin.tls.key`"),
        ] {
            let config: Config = toml::from_str(text).unwrap();
            let err = config.validate(path).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }
}

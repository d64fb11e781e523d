//! Every metric Sluice exports: name, kind, help text and buckets, in one place. docs/METRICS.md mirrors this list.
//! Names follow Prometheus conventions (base units, `_total` on counters) so `promtool check metrics` passes.

/// What kind of series a metric is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

pub struct MetricDef {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
}

const fn def(name: &'static str, kind: Kind, help: &'static str) -> MetricDef {
    MetricDef { name, kind, help }
}

pub const REQUESTS: &str = "sluice_requests_total";
pub const REQUEST_DURATION: &str = "sluice_request_duration_seconds";
pub const QUEUE_DURATION: &str = "sluice_queue_duration_seconds";
pub const COMPUTE_DURATION: &str = "sluice_compute_duration_seconds";
pub const BATCH_SIZE: &str = "sluice_batch_size";
pub const REJECTED: &str = "sluice_rejected_requests_total";
pub const QUEUE_REQUESTS: &str = "sluice_queue_requests";
pub const QUEUE_ROWS: &str = "sluice_queue_rows";
pub const INFLIGHT: &str = "sluice_inflight_requests";
pub const BUSY_RATIO: &str = "sluice_instance_busy_ratio";
pub const ARRIVAL_REQUESTS: &str = "sluice_arrival_requests_per_second";
pub const ARRIVAL_ROWS: &str = "sluice_arrival_rows_per_second";
pub const SERVICE_ROWS: &str = "sluice_service_rows_per_second";
pub const DESIRED_REPLICAS: &str = "sluice_desired_replicas";
pub const DESIRED_REPLICAS_OVERALL: &str = "sluice_desired_replicas_overall";
pub const MODEL_ACTIVE: &str = "sluice_model_active";
pub const OCI_POSTS: &str = "sluice_oci_posts_total";
pub const OCI_DROPPED: &str = "sluice_oci_datapoints_dropped_total";
pub const OCI_BUFFERED: &str = "sluice_oci_buffered_datapoints";
pub const CACHE_REQUESTS: &str = "sluice_cache_requests_total";
pub const CACHE_TIER_HITS: &str = "sluice_cache_tier_hits_total";
pub const CACHE_EVICTIONS: &str = "sluice_cache_evictions_total";
pub const CACHE_NOT_STORED: &str = "sluice_cache_not_stored_total";
pub const CACHE_BYTES: &str = "sluice_cache_bytes";
pub const CACHE_ENTRIES: &str = "sluice_cache_entries";
pub const CACHE_REDIS_ERRORS: &str = "sluice_cache_redis_errors_total";
pub const CACHE_REDIS_DURATION: &str = "sluice_cache_redis_duration_seconds";
pub const MODEL_LOADS: &str = "sluice_model_loads_total";
pub const MODEL_LOAD_DURATION: &str = "sluice_model_load_duration_seconds";
pub const MODEL_UNLOADS: &str = "sluice_model_unloads_total";
pub const UPSTREAM_REQUESTS: &str = "sluice_upstream_requests_total";
pub const UPSTREAM_DURATION: &str = "sluice_upstream_request_duration_seconds";
pub const UPSTREAM_OUTSTANDING: &str = "sluice_upstream_outstanding_requests";
pub const UPSTREAM_AVAILABLE: &str = "sluice_upstream_available";
pub const UPSTREAM_EJECTIONS: &str = "sluice_upstream_ejections_total";
pub const UPSTREAM_RETRIES: &str = "sluice_upstream_retries_total";
pub const UPSTREAM_WAITS: &str = "sluice_upstream_endpoint_waits_total";
pub const AUTH_REJECTED: &str = "sluice_auth_rejected_total";
pub const TENANT_REQUESTS: &str = "sluice_tenant_requests_total";
pub const CONNECTIONS_OPEN: &str = "sluice_connections_open";
pub const CONNECTIONS_REFUSED: &str = "sluice_connections_refused_total";
pub const TLS_RELOADS: &str = "sluice_tls_reloads_total";
pub const BUILD_INFO: &str = "sluice_build_info";
pub const PROCESS_RSS: &str = "process_resident_memory_bytes";
pub const PROCESS_CPU: &str = "process_cpu_seconds_total";
pub const PROCESS_OPEN_FDS: &str = "process_open_fds";
pub const PROCESS_MAX_FDS: &str = "process_max_fds";
pub const PROCESS_START_TIME: &str = "process_start_time_seconds";

pub const ALL: &[MetricDef] = &[
    def(REQUESTS, Kind::Counter, "Inference requests answered, by model, version, protocol (http, grpc) and HTTP-equivalent status code."),
    def(REQUEST_DURATION, Kind::Histogram, "Time from receiving an inference request to its encoded answer, in seconds."),
    def(QUEUE_DURATION, Kind::Histogram, "Time a request waited in its model's queue before its batch formed, in seconds."),
    def(COMPUTE_DURATION, Kind::Histogram, "Time an instance spent on one batch (join inputs, run, split outputs), in seconds."),
    def(BATCH_SIZE, Kind::Histogram, "Rows per batch run by a model instance."),
    def(REJECTED, Kind::Counter, "Requests refused by a model's scheduler, by reason: queue_full (429), queue_timeout (504), shutting_down (503)."),
    def(QUEUE_REQUESTS, Kind::Gauge, "Requests waiting in a model's queue."),
    def(QUEUE_ROWS, Kind::Gauge, "Rows (batch-dimension entries) waiting in a model's queue."),
    def(INFLIGHT, Kind::Gauge, "Requests admitted to a model and not answered yet (queued or running)."),
    def(BUSY_RATIO, Kind::Gauge, "Share of a model's instance time spent running batches over the scaling window (0 to 1)."),
    def(ARRIVAL_REQUESTS, Kind::Gauge, "Requests per second reaching a model's admission, accepted or refused (the larger of the fast and slow windows)."),
    def(ARRIVAL_ROWS, Kind::Gauge, "Rows per second reaching a model's admission, accepted or refused."),
    def(SERVICE_ROWS, Kind::Gauge, "Rows per second this replica serves for a model with every instance busy, measured at the batch sizes that formed; 0 until measured."),
    def(DESIRED_REPLICAS, Kind::Gauge, "Replicas this replica's share of a model's load needs at the target utilization (sum over replicas = fleet size wanted)."),
    def(DESIRED_REPLICAS_OVERALL, Kind::Gauge, "Sum of sluice_desired_replicas over the models of this replica."),
    def(MODEL_ACTIVE, Kind::Gauge, "1 when a model has queued or running requests or arrivals over the activation rate, else 0."),
    def(OCI_POSTS, Kind::Counter, "PostMetricData calls to OCI Monitoring, by outcome: ok, retried (429, 5xx, network), rejected (other 4xx)."),
    def(OCI_DROPPED, Kind::Counter, "Datapoints not delivered to OCI Monitoring, by reason: buffer_full, too_old, rejected."),
    def(OCI_BUFFERED, Kind::Gauge, "Datapoints waiting to be posted to OCI Monitoring."),
    def(CACHE_REQUESTS, Kind::Counter, "Inference requests of cache-enabled models, by model and result: hit, miss (computed and stored), coalesced (shared an identical request's execution), bypass (the client asked for a fresh answer)."),
    def(CACHE_TIER_HITS, Kind::Counter, "Cache hits by the tier that answered: local or redis."),
    def(CACHE_EVICTIONS, Kind::Counter, "Entries removed from the local tier, by reason: size (room for newer entries), expired (TTL), replaced."),
    def(CACHE_NOT_STORED, Kind::Counter, "Computed responses not cached, by reason: too_large (over cache.max_entry_bytes)."),
    def(CACHE_BYTES, Kind::Gauge, "Bytes held by the local cache tier (outputs' data plus names and shapes)."),
    def(CACHE_ENTRIES, Kind::Gauge, "Entries held by the local cache tier."),
    def(CACHE_REDIS_ERRORS, Kind::Counter, "Redis operations that failed and were served without Redis (fail-open), by op (get, set) and kind (timeout, connection, response, corrupt, skipped)."),
    def(CACHE_REDIS_DURATION, Kind::Histogram, "Time of Redis GET and SET operations that got an answer, by op, in seconds."),
    def(MODEL_LOADS, Kind::Counter, "Model versions loaded from the repository (at start, by the watcher or the repository API), by model and result: ok, load_failed (the model file or its model.toml did not load), warmup_failed (a warm-up request failed or timed out). After a failure the version that was serving keeps serving."),
    def(MODEL_LOAD_DURATION, Kind::Histogram, "Time to load a model version and run its warm-up, whether it succeeded or not, in seconds."),
    def(MODEL_UNLOADS, Kind::Counter, "Model versions taken out of service, by model and reason: replaced (a new load of the same version took over), removed (its files left the repository), api (POST /v2/repository/models/{m}/unload). Requests already running on them finish."),
    def(UPSTREAM_REQUESTS, Kind::Counter, "Attempts sent to an upstream endpoint, by pool, endpoint and outcome: ok, connect_error, refused_stream, timeout, unavailable (503), overloaded (429), malformed, refused (other 4xx), failed (other 5xx), client_deadline (the clients' deadline came first; not held against the endpoint)."),
    def(UPSTREAM_DURATION, Kind::Histogram, "Time of one attempt to an upstream endpoint, answered or not, by pool and endpoint, in seconds."),
    def(UPSTREAM_OUTSTANDING, Kind::Gauge, "Attempts in flight to an upstream endpoint."),
    def(UPSTREAM_AVAILABLE, Kind::Gauge, "1 when an upstream endpoint takes traffic (healthy, not ejected, metadata agrees), else 0."),
    def(UPSTREAM_EJECTIONS, Kind::Counter, "Times an upstream endpoint was taken out of rotation: after failed requests in a row (reason failures, passive outlier ejection) or failed active health checks (reason health_check)."),
    def(UPSTREAM_RETRIES, Kind::Counter, "Retries of requests to a pool, by result: sent (to another endpoint), budget_exhausted (not sent: the retry budget was spent), deadline (not sent: no time left)."),
    def(UPSTREAM_WAITS, Kind::Counter, "Requests that found no usable endpoint in their pool and waited for one (upstreams.wait_for_endpoint), by result: found (one became usable in time), timed_out (answered 503)."),
    def(AUTH_REJECTED, Kind::Counter, "Requests refused by authentication, by reason: missing (no key, 401), invalid (unknown key, 401), forbidden (key without the route's scope, 403), rate_limited (the tenant's rate limit, 429; with a tenant label)."),
    def(TENANT_REQUESTS, Kind::Counter, "Requests admitted per authenticated tenant and plane (data, admin)."),
    def(CONNECTIONS_OPEN, Kind::Gauge, "Connections open on a listener (http, grpc, admin), TLS handshakes in progress included; at most server.max_connections."),
    def(CONNECTIONS_REFUSED, Kind::Counter, "Connections refused or cut off by a listener's protections, by listener and reason: limit (over max_connections), tls_handshake (failed or too slow), not_tls (plaintext sent to a TLS port), header_timeout (request head or HTTP/2 preface too slow), body_timeout (request body too slow: 408 or DEADLINE_EXCEEDED)."),
    def(TLS_RELOADS, Kind::Counter, "Certificate reloads after the TLS files changed, by listener (data, admin) and result: ok (new connections use the new certificate), failed (the new files do not load; the previous certificate stays)."),
    def(BUILD_INFO, Kind::Gauge, "Always 1; the version label says which Sluice is running."),
    def(PROCESS_RSS, Kind::Gauge, "Resident memory of the Sluice process, in bytes."),
    def(PROCESS_CPU, Kind::Counter, "User and system CPU time used by the Sluice process, in seconds."),
    def(PROCESS_OPEN_FDS, Kind::Gauge, "Open file descriptors of the Sluice process."),
    def(PROCESS_MAX_FDS, Kind::Gauge, "The process's limit on open file descriptors."),
    def(PROCESS_START_TIME, Kind::Gauge, "Start time of the Sluice process, in seconds since the Unix epoch."),
];

/// Starts a family that is written by hand at render time (process readings, upstream endpoints): a blank line
/// after what came before, then its `# HELP` and `# TYPE` lines from this catalogue. `false`, and nothing written,
/// for a name the catalogue does not hold.
pub fn write_family_header(out: &mut String, name: &str) -> bool {
    let Some(def) = ALL.iter().find(|d| d.name == name) else { return false };
    let kind = match def.kind {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
    };
    if !out.is_empty() && !out.ends_with("\n\n") {
        out.push('\n');
    }
    out.push_str(&format!("# HELP {name} {}\n# TYPE {name} {kind}\n", def.help));
    true
}

/// Buckets for the duration histograms: from 25 µs (a cache hit, a fast 429) to 10 s (a long queue).
pub const DURATION_BUCKETS: &[f64] =
    &[0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Buckets for rows per batch.
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0];

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/METRICS.md says it mirrors this list: every metric has a row there.
    #[test]
    fn every_metric_is_documented() {
        let doc = include_str!("../../docs/METRICS.md");
        let missing: Vec<&str> = ALL.iter().map(|m| m.name).filter(|name| !doc.contains(&format!("| `{name}` |"))).collect();
        assert!(missing.is_empty(), "not in docs/METRICS.md: {missing:?}");
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        let mut seen = std::collections::HashSet::new();
        for m in ALL {
            assert!(seen.insert(m.name), "{} listed twice", m.name);
            assert_eq!(m.kind == Kind::Counter, m.name.ends_with("_total"), "{}: only counters end in _total", m.name);
            assert!(m.name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{}", m.name);
            assert!(!m.help.is_empty());
        }
    }
}

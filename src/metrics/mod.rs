//! Prometheus metrics: a recorder of our own per server (not the process-global one, so several servers in one process
//! — the integration tests — keep separate books), handles registered once per model version for the hot path, and a
//! renderer that adds the scaling gauges and process readings at scrape time.
//!
//! The extern crate is `::metrics`; this module is `crate::metrics`.

pub mod catalogue;
pub mod process;
pub mod upstream;

use crate::scaling::ScalingSnapshot;
use ::metrics::{Counter, Gauge, Histogram, Key, Label, Metadata, Recorder};
use catalogue::Kind;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use parking_lot::Mutex;
use std::sync::Arc;
use std::time::Duration;

/// The protocol a request came in on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Grpc,
}

impl Protocol {
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }
}

/// Why a scheduler refused a request (the `reason` label of `sluice_rejected_requests_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    QueueFull,
    QueueTimeout,
    ShuttingDown,
}

/// The model label for requests that named no loaded model: keeps clients from creating series at will.
pub const UNKNOWN_MODEL: &str = "_unknown";

const METADATA: Metadata<'static> = Metadata::new("sluice", ::metrics::Level::INFO, Some(module_path!()));

struct Enabled {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Upstream endpoints' series, which come and go with the endpoints (see [`upstream`]).
    endpoints: upstream::EndpointRegistry,
}

/// The metrics of one server. Disabled metrics hand out no-op handles and render nothing. Cheap to clone (the
/// recorder is shared).
#[derive(Clone)]
pub struct Metrics {
    enabled: Option<Arc<Enabled>>,
}

fn labels(pairs: &[(&'static str, &str)]) -> Vec<Label> {
    pairs.iter().map(|(k, v)| Label::new(*k, v.to_string())).collect()
}

impl Metrics {
    pub fn new(enabled: bool) -> Metrics {
        if !enabled {
            return Metrics { enabled: None };
        }
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), catalogue::DURATION_BUCKETS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(catalogue::BATCH_SIZE.into()), catalogue::BATCH_BUCKETS));
        // Only an empty bucket list fails, and ours are constants.
        let recorder = match builder {
            Ok(b) => b.build_recorder(),
            Err(_) => PrometheusBuilder::new().build_recorder(),
        };
        // Process and upstream endpoint metrics are written by hand at render time (`process`, `upstream`).
        for m in catalogue::ALL.iter().filter(|m| !m.name.starts_with("process_") && !upstream::FAMILIES.contains(&m.name)) {
            let help = m.help.into();
            match m.kind {
                Kind::Counter => recorder.describe_counter(m.name.into(), None, help),
                Kind::Gauge => recorder.describe_gauge(m.name.into(), None, help),
                Kind::Histogram => recorder.describe_histogram(m.name.into(), None, help),
            }
        }
        let handle = recorder.handle();
        let metrics = Metrics { enabled: Some(Arc::new(Enabled { recorder, handle, endpoints: upstream::EndpointRegistry::default() })) };
        metrics.gauge(catalogue::BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))]).set(1.0);
        metrics
    }

    pub fn is_enabled(&self) -> bool {
        self.enabled.is_some()
    }

    pub fn counter(&self, name: &'static str, pairs: &[(&'static str, &str)]) -> Counter {
        match &self.enabled {
            Some(e) => e.recorder.register_counter(&Key::from_parts(name, labels(pairs)), &METADATA),
            None => Counter::noop(),
        }
    }

    pub fn gauge(&self, name: &'static str, pairs: &[(&'static str, &str)]) -> Gauge {
        match &self.enabled {
            Some(e) => e.recorder.register_gauge(&Key::from_parts(name, labels(pairs)), &METADATA),
            None => Gauge::noop(),
        }
    }

    pub fn histogram(&self, name: &'static str, pairs: &[(&'static str, &str)]) -> Histogram {
        match &self.enabled {
            Some(e) => e.recorder.register_histogram(&Key::from_parts(name, labels(pairs)), &METADATA),
            None => Histogram::noop(),
        }
    }

    /// The numbers of one upstream endpoint, on `/metrics` until the last clone of the returned `Arc` is dropped.
    pub fn upstream_endpoint(&self, pool: &str, endpoint: &str, outcomes: &'static [&'static str]) -> Arc<upstream::EndpointStats> {
        match &self.enabled {
            Some(e) => e.endpoints.register(pool, endpoint, outcomes),
            None => upstream::EndpointRegistry::default().register(pool, endpoint, outcomes),
        }
    }

    /// The handles a model version's scheduler records into.
    pub fn model(&self, model: &str, version: u64) -> ModelMetrics {
        let v = version.to_string();
        let l = [("model", model), ("version", v.as_str())];
        let reason = |r: &'static str| self.counter(catalogue::REJECTED, &[l[0], l[1], ("reason", r)]);
        ModelMetrics {
            queue_duration: self.histogram(catalogue::QUEUE_DURATION, &l),
            compute_duration: self.histogram(catalogue::COMPUTE_DURATION, &l),
            batch_size: self.histogram(catalogue::BATCH_SIZE, &l),
            rejected_queue_full: reason("queue_full"),
            rejected_queue_timeout: reason("queue_timeout"),
            rejected_shutting_down: reason("shutting_down"),
        }
    }

    /// The request handles of a model version, registered now so that counting a request costs no allocation or
    /// registry lookup.
    pub fn requests(&self, model: &str, version: u64) -> RequestMetrics {
        let v = version.to_string();
        let protocol = |p: Protocol| {
            let base = [("model", model), ("version", v.as_str()), ("protocol", p.label())];
            ProtocolRequests {
                duration: self.histogram(catalogue::REQUEST_DURATION, &base),
                ok: self.counter(catalogue::REQUESTS, &[base[0], base[1], base[2], ("code", "200")]),
                other_codes: Mutex::new(Vec::new()),
            }
        };
        RequestMetrics {
            metrics: self.clone(),
            model: model.to_string(),
            version: v.clone(),
            http: protocol(Protocol::Http),
            grpc: protocol(Protocol::Grpc),
        }
    }

    /// Counts one answered inference request and its duration, for requests that did not resolve to a loaded version
    /// (see [`RequestMetrics::record`] for those that did). `model` is [`UNKNOWN_MODEL`] when the request named no
    /// loaded model; `version` is empty when no version was resolved.
    pub fn request(&self, protocol: Protocol, model: &str, version: &str, code: u16, elapsed: Duration) {
        let Some(e) = &self.enabled else { return };
        let mut code_text = itoa::Buffer::new();
        let base = [("model", model), ("version", version), ("protocol", protocol.label())];
        let counter = e.recorder.register_counter(
            &Key::from_parts(catalogue::REQUESTS, labels(&[base[0], base[1], base[2], ("code", code_text.format(code))])),
            &METADATA,
        );
        counter.increment(1);
        e.recorder.register_histogram(&Key::from_parts(catalogue::REQUEST_DURATION, labels(&base)), &METADATA).record(elapsed.as_secs_f64());
    }

    /// Drains histogram samples into their buckets; run every few seconds so memory stays bounded between scrapes.
    pub fn upkeep(&self) {
        if let Some(e) = &self.enabled {
            e.handle.run_upkeep();
        }
    }

    /// The Prometheus text exposition, with the scaling gauges of `snapshot` and the process readings as of now.
    /// `None` when metrics are disabled.
    pub fn render(&self, snapshot: &ScalingSnapshot) -> Option<String> {
        let e = self.enabled.as_ref()?;
        for (name, s) in &snapshot.models {
            let l = [("model", name.as_str())];
            self.gauge(catalogue::QUEUE_REQUESTS, &l).set(s.queue_requests as f64);
            self.gauge(catalogue::QUEUE_ROWS, &l).set(s.queue_rows as f64);
            self.gauge(catalogue::INFLIGHT, &l).set(s.in_flight as f64);
            self.gauge(catalogue::BUSY_RATIO, &l).set(s.busy_ratio);
            self.gauge(catalogue::ARRIVAL_REQUESTS, &l).set(s.arrival_rate);
            self.gauge(catalogue::ARRIVAL_ROWS, &l).set(s.arrival_rows_rate);
            self.gauge(catalogue::SERVICE_ROWS, &l).set(s.service_rows_rate);
            self.gauge(catalogue::DESIRED_REPLICAS, &l).set(s.desired_replicas);
            self.gauge(catalogue::MODEL_ACTIVE, &l).set(if s.active { 1.0 } else { 0.0 });
        }
        self.gauge(catalogue::DESIRED_REPLICAS_OVERALL, &[]).set(snapshot.desired_replicas);
        let mut text = e.handle.render();
        e.endpoints.write_exposition(&mut text);
        process::write_exposition(&mut text, &process::read());
        Some(text)
    }
}

/// The request counters and latency histograms of one model version, per protocol.
pub struct RequestMetrics {
    metrics: Metrics,
    model: String,
    version: String,
    http: ProtocolRequests,
    grpc: ProtocolRequests,
}

struct ProtocolRequests {
    duration: Histogram,
    /// Code 200, registered up front: the common case takes no lock.
    ok: Counter,
    /// Other codes, registered on first use (a handful per model at most).
    other_codes: Mutex<Vec<(u16, Counter)>>,
}

impl RequestMetrics {
    /// Counts one answered request of this version and its duration.
    pub fn record(&self, protocol: Protocol, code: u16, elapsed: Duration) {
        if !self.metrics.is_enabled() {
            return;
        }
        let p = match protocol {
            Protocol::Http => &self.http,
            Protocol::Grpc => &self.grpc,
        };
        p.duration.record(elapsed.as_secs_f64());
        if code == 200 {
            p.ok.increment(1);
            return;
        }
        let mut codes = p.other_codes.lock();
        if let Some((_, counter)) = codes.iter().find(|(c, _)| *c == code) {
            counter.increment(1);
            return;
        }
        let mut text = itoa::Buffer::new();
        let labels = [("model", self.model.as_str()), ("version", self.version.as_str()), ("protocol", protocol.label()), ("code", text.format(code))];
        let counter = self.metrics.counter(catalogue::REQUESTS, &labels);
        counter.increment(1);
        codes.push((code, counter));
    }
}

/// The handles of one model version (no-ops when metrics are disabled). Cheap to clone.
#[derive(Clone)]
pub struct ModelMetrics {
    pub queue_duration: Histogram,
    pub compute_duration: Histogram,
    pub batch_size: Histogram,
    rejected_queue_full: Counter,
    rejected_queue_timeout: Counter,
    rejected_shutting_down: Counter,
}

impl ModelMetrics {
    /// Handles that record nothing (schedulers started without a server, e.g. in tests and benchmarks).
    pub fn noop() -> ModelMetrics {
        Metrics::new(false).model("", 0)
    }

    pub fn rejected(&self, reason: RejectReason) {
        match reason {
            RejectReason::QueueFull => self.rejected_queue_full.increment(1),
            RejectReason::QueueTimeout => self.rejected_queue_timeout.increment(1),
            RejectReason::ShuttingDown => self.rejected_shutting_down.increment(1),
        }
    }
}

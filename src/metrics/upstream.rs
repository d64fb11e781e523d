//! The per-endpoint series of upstream pools, kept out of the `metrics` registry.
//!
//! Why: that registry never forgets a series, and a pool found by DNS (a Kubernetes headless Service) gets new pod
//! addresses at every rollout, so its series count would grow for as long as the gateway runs. Here each endpoint
//! owns its numbers ([`EndpointStats`], plain atomics), the server keeps only a weak reference to them, and they are
//! written at scrape time: an endpoint that has left its pool — and whose last attempt has ended — is gone from the
//! next scrape. Prometheus marks its series stale, as it does for a pod that went away.

use super::catalogue;
use parking_lot::Mutex;
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

/// The families written here; the `metrics` registry does not describe them.
pub const FAMILIES: [&str; 5] = [
    catalogue::UPSTREAM_REQUESTS,
    catalogue::UPSTREAM_DURATION,
    catalogue::UPSTREAM_OUTSTANDING,
    catalogue::UPSTREAM_AVAILABLE,
    catalogue::UPSTREAM_EJECTIONS,
];

/// Why an endpoint was taken out of rotation: the `reason` label of `sluice_upstream_ejections_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ejection {
    /// Failed attempts in a row (passive outlier ejection).
    Failures = 0,
    /// Failed active health checks.
    HealthCheck = 1,
}

/// The `reason` labels, indexed by [`Ejection`].
const EJECTION_REASONS: [&str; 2] = ["failures", "health_check"];

/// One endpoint's numbers. The owner records into it; the server reads it at scrape time while it lives.
pub struct EndpointStats {
    pool: String,
    endpoint: String,
    /// The `outcome` label values, in the order of `outcomes`.
    outcome_names: &'static [&'static str],
    outcomes: Box<[AtomicU64]>,
    /// Attempts per duration bucket (not cumulative); the last slot is for attempts above the largest bound.
    buckets: Box<[AtomicU64]>,
    duration_nanos: AtomicU64,
    outstanding: AtomicU64,
    available: AtomicBool,
    ejections: [AtomicU64; 2],
}

impl EndpointStats {
    fn new(pool: &str, endpoint: &str, outcome_names: &'static [&'static str]) -> EndpointStats {
        let zeros = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect::<Box<[_]>>();
        EndpointStats {
            pool: pool.to_string(),
            endpoint: endpoint.to_string(),
            outcome_names,
            outcomes: zeros(outcome_names.len()),
            buckets: zeros(catalogue::DURATION_BUCKETS.len() + 1),
            duration_nanos: AtomicU64::new(0),
            outstanding: AtomicU64::new(0),
            available: AtomicBool::new(false),
            ejections: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// Counts one attempt: its outcome (an index into the outcome names) and how long it took.
    pub fn attempt(&self, outcome: usize, took: Duration) {
        if let Some(counter) = self.outcomes.get(outcome) {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let seconds = took.as_secs_f64();
        let bucket = catalogue::DURATION_BUCKETS.iter().position(|&bound| seconds <= bound).unwrap_or(catalogue::DURATION_BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.duration_nanos.fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// An attempt began (counted as outstanding until [`EndpointStats::attempt_ended`]). The balancer reads the same
    /// count ([`EndpointStats::outstanding`]), so it is kept once.
    pub fn attempt_began(&self) {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
    }

    pub fn attempt_ended(&self) {
        self.outstanding.fetch_sub(1, Ordering::Relaxed);
    }

    /// Attempts in flight now.
    pub fn outstanding(&self) -> u64 {
        self.outstanding.load(Ordering::Relaxed)
    }

    pub fn set_available(&self, available: bool) {
        self.available.store(available, Ordering::Relaxed);
    }

    pub fn ejected(&self, why: Ejection) {
        self.ejections[why as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// The endpoints of every pool of one server, as weak references: dropping its last `Arc` takes an endpoint out.
#[derive(Default)]
pub struct EndpointRegistry {
    live: Mutex<Vec<Weak<EndpointStats>>>,
}

impl EndpointRegistry {
    /// New numbers for `endpoint` of `pool`, written at each scrape while the returned `Arc` (or a clone) lives.
    pub fn register(&self, pool: &str, endpoint: &str, outcome_names: &'static [&'static str]) -> Arc<EndpointStats> {
        let stats = Arc::new(EndpointStats::new(pool, endpoint, outcome_names));
        let mut live = self.live.lock();
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&stats));
        stats
    }

    /// Appends the families in [`FAMILIES`] for the live endpoints to `out` (nothing when none lives).
    pub fn write_exposition(&self, out: &mut String) {
        let live: Vec<Arc<EndpointStats>> = {
            let mut live = self.live.lock();
            live.retain(|w| w.strong_count() > 0);
            live.iter().filter_map(Weak::upgrade).collect()
        };
        if live.is_empty() {
            return;
        }
        for name in FAMILIES {
            if !catalogue::write_family_header(out, name) {
                continue;
            }
            for stats in &live {
                write_series(out, name, stats);
            }
        }
    }
}

fn write_series(out: &mut String, name: &str, s: &EndpointStats) {
    let labels = format!("pool=\"{}\",endpoint=\"{}\"", escape(&s.pool), escape(&s.endpoint));
    let count = |a: &AtomicU64| a.load(Ordering::Relaxed);
    match name {
        catalogue::UPSTREAM_REQUESTS => {
            for (outcome, counter) in s.outcome_names.iter().zip(s.outcomes.iter()) {
                let _ = writeln!(out, "{name}{{{labels},outcome=\"{outcome}\"}} {}", count(counter));
            }
        }
        catalogue::UPSTREAM_DURATION => {
            // Read once, so the buckets, +Inf and the count agree with each other.
            let per_bucket: Vec<u64> = s.buckets.iter().map(count).collect();
            let mut cumulative = 0;
            for (bound, n) in catalogue::DURATION_BUCKETS.iter().zip(&per_bucket) {
                cumulative += n;
                let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
            }
            cumulative += per_bucket.last().copied().unwrap_or(0);
            let seconds = count(&s.duration_nanos) as f64 / 1e9;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
            let _ = writeln!(out, "{name}_sum{{{labels}}} {seconds}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
        }
        catalogue::UPSTREAM_OUTSTANDING => {
            let _ = writeln!(out, "{name}{{{labels}}} {}", count(&s.outstanding));
        }
        catalogue::UPSTREAM_AVAILABLE => {
            let _ = writeln!(out, "{name}{{{labels}}} {}", u8::from(s.available.load(Ordering::Relaxed)));
        }
        catalogue::UPSTREAM_EJECTIONS => {
            for (reason, counter) in EJECTION_REASONS.iter().zip(&s.ejections) {
                let _ = writeln!(out, "{name}{{{labels},reason=\"{reason}\"}} {}", count(counter));
            }
        }
        _ => {}
    }
}

/// A label value as the text format wants it: backslash, double quote and line feed escaped.
fn escape(value: &str) -> std::borrow::Cow<'_, str> {
    if !value.contains(['\\', '"', '\n']) {
        return value.into();
    }
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n").into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTCOMES: [&str; 2] = ["ok", "timeout"];

    fn line<'a>(text: &'a str, series: &str) -> Option<&'a str> {
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
    }

    #[test]
    fn an_endpoint_is_written_while_it_lives_and_gone_once_dropped() {
        let registry = EndpointRegistry::default();
        let a = registry.register("p", "10.0.0.1:8000", &OUTCOMES);
        let b = registry.register("p", "10.0.0.2:8000", &OUTCOMES);
        a.attempt(0, Duration::from_micros(300));
        a.attempt(1, Duration::from_secs(30));
        for _ in 0..4 {
            a.attempt_began();
        }
        a.attempt_ended();
        a.set_available(true);
        a.ejected(Ejection::HealthCheck);
        let mut text = String::new();
        registry.write_exposition(&mut text);
        let series = |name: &str, endpoint: &str, extra: &str| format!("{name}{{pool=\"p\",endpoint=\"{endpoint}\"{extra}}}");
        let a_requests = |outcome: &str| series(catalogue::UPSTREAM_REQUESTS, "10.0.0.1:8000", &format!(",outcome=\"{outcome}\""));
        assert_eq!(line(&text, &a_requests("ok")), Some("1"), "{text}");
        assert_eq!(line(&text, &a_requests("timeout")), Some("1"), "{text}");
        let bucket = |le: &str| series(&format!("{}_bucket", catalogue::UPSTREAM_DURATION), "10.0.0.1:8000", &format!(",le=\"{le}\""));
        assert_eq!(line(&text, &bucket("0.00025")), Some("0"), "{text}");
        assert_eq!(line(&text, &bucket("0.0005")), Some("1"), "{text}");
        assert_eq!(line(&text, &bucket("10")), Some("1"), "30 s is above every bound: {text}");
        assert_eq!(line(&text, &bucket("+Inf")), Some("2"), "{text}");
        assert_eq!(line(&text, &series(&format!("{}_count", catalogue::UPSTREAM_DURATION), "10.0.0.1:8000", "")), Some("2"));
        assert_eq!(line(&text, &series(&format!("{}_sum", catalogue::UPSTREAM_DURATION), "10.0.0.1:8000", "")), Some("30.0003"));
        assert_eq!(line(&text, &series(catalogue::UPSTREAM_OUTSTANDING, "10.0.0.1:8000", "")), Some("3"));
        assert_eq!(line(&text, &series(catalogue::UPSTREAM_AVAILABLE, "10.0.0.1:8000", "")), Some("1"));
        assert_eq!(line(&text, &series(catalogue::UPSTREAM_AVAILABLE, "10.0.0.2:8000", "")), Some("0"));
        let ejections = |reason: &str| series(catalogue::UPSTREAM_EJECTIONS, "10.0.0.1:8000", &format!(",reason=\"{reason}\""));
        assert_eq!(line(&text, &ejections("health_check")), Some("1"));
        assert_eq!(line(&text, &ejections("failures")), Some("0"));
        // Each family once, its endpoints together under one HELP and TYPE.
        for name in FAMILIES {
            assert_eq!(text.matches(&format!("# TYPE {name} ")).count(), 1, "{text}");
        }

        drop(b);
        let mut text = String::new();
        registry.write_exposition(&mut text);
        assert!(text.contains("10.0.0.1:8000") && !text.contains("10.0.0.2:8000"), "{text}");
        assert_eq!(registry.live.lock().len(), 1, "the dropped endpoint's entry is gone too");
        drop(a);
        let mut text = String::new();
        registry.write_exposition(&mut text);
        assert!(text.is_empty(), "no endpoint, no families: {text}");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("10.0.0.1:80"), "10.0.0.1:80");
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}

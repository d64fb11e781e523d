//! One upstream endpoint: its connection handle, its load (outstanding attempts, peak-EWMA latency), its health
//! (active checks with thresholds, passive ejection with exponential back-off) and its metrics.

use super::transport::EndpointClient;
use crate::config::{EjectionConfig, HealthCheckConfig};
use crate::metrics::upstream::{Ejection, EndpointStats};
use crate::metrics::Metrics;
use parking_lot::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How fast an endpoint's latency estimate forgets: after this long without answers it has decayed to 1/e, so an
/// endpoint once slow is tried again eventually (and one that was never measured looks fast).
const EWMA_DECAY: Duration = Duration::from_secs(10);

/// The latency a failed attempt is taken to have had, at least (see [`Endpoint::finished`]).
const FAILURE_PENALTY: Duration = Duration::from_millis(100);

/// Attempt outcomes, the `outcome` label of `sluice_upstream_requests_total`.
pub const OUTCOMES: [&str; 10] = [
    "ok",
    "connect_error",
    "refused_stream",
    "timeout",
    "unavailable",
    "overloaded",
    "malformed",
    "refused",
    "failed",
    "client_deadline",
];

/// The outcome of an attempt cut short by its clients' deadline: neither a success nor a failure of the endpoint.
const CLIENT_DEADLINE: usize = 9;

/// What the active checks and the passive ejection know about an endpoint.
#[derive(Debug)]
struct Health {
    /// Verdict of the active checks; an endpoint starts healthy so traffic flows at once.
    healthy: bool,
    passes_in_row: u32,
    failures_in_row: u32,
    /// Attempt failures in a row (passive).
    attempt_failures: u32,
    ejected_until: Option<Instant>,
    /// Ejections since the last success: the next ejection lasts `base_time * 2^ejections`.
    ejections: u32,
    /// Its model metadata matches the pool's (checked before the endpoint gets traffic).
    verified: bool,
    /// Its metadata disagreed: never used.
    mismatch: Option<String>,
    /// Why its metadata could not be checked, as last logged.
    unverified_because: Option<String>,
}

pub struct Endpoint {
    /// `host:port` as listed or resolved.
    pub address: String,
    pub client: EndpointClient,
    slots: Arc<Semaphore>,
    /// (estimate in seconds, when it was last updated).
    latency: Mutex<(f64, Instant)>,
    health: Mutex<Health>,
    /// Its counts — the attempts in flight, which the balancer reads too — and its series on `/metrics`, gone once
    /// the endpoint leaves its pool and its last attempt ends.
    metrics: Arc<EndpointStats>,
    /// A health check (and metadata check) of it is running: the next round skips it rather than wait.
    checking: AtomicBool,
}

/// An attempt in flight: counted as outstanding until dropped.
pub struct InFlight<'a> {
    endpoint: &'a Endpoint,
    started: Instant,
    _slot: OwnedSemaphorePermit,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.endpoint.metrics.attempt_ended();
    }
}

impl InFlight<'_> {
    pub fn started(&self) -> Instant {
        self.started
    }
}

impl Endpoint {
    pub fn new(pool: &str, address: String, client: EndpointClient, max_concurrency: usize, metrics: &Metrics) -> Endpoint {
        let endpoint_metrics = metrics.upstream_endpoint(pool, &address, &OUTCOMES);
        Endpoint {
            address,
            client,
            slots: Arc::new(Semaphore::new(max_concurrency)),
            latency: Mutex::new((0.0, Instant::now())),
            health: Mutex::new(Health {
                healthy: true,
                passes_in_row: 0,
                failures_in_row: 0,
                attempt_failures: 0,
                ejected_until: None,
                ejections: 0,
                verified: false,
                mismatch: None,
                unverified_because: None,
            }),
            metrics: endpoint_metrics,
            checking: AtomicBool::new(false),
        }
    }

    /// Takes traffic now: verified, healthy by the active checks, not ejected.
    pub fn is_available(&self, now: Instant) -> bool {
        let h = self.health.lock();
        h.verified && h.mismatch.is_none() && h.healthy && h.ejected_until.is_none_or(|t| now >= t)
    }

    /// Could take traffic if nothing better is left: verified and not mismatched (health and ejection ignored).
    pub fn is_usable(&self) -> bool {
        let h = self.health.lock();
        h.verified && h.mismatch.is_none()
    }

    pub fn is_verified(&self) -> bool {
        self.health.lock().verified
    }

    pub fn is_mismatched(&self) -> bool {
        self.health.lock().mismatch.is_some()
    }

    /// The balancer's cost: the latency estimate (decayed towards zero while unmeasured) times the attempts it would
    /// have in flight with this one (peak-EWMA, as in Finagle and Linkerd).
    pub fn cost(&self, now: Instant) -> f64 {
        let (estimate, at) = *self.latency.lock();
        let decayed = estimate * (-now.saturating_duration_since(at).as_secs_f64() / EWMA_DECAY.as_secs_f64()).exp();
        // A floor keeps outstanding counts meaningful between endpoints that both answer in no measurable time.
        (decayed.max(1e-6)) * (self.metrics.outstanding() + 1) as f64
    }

    pub fn has_free_slot(&self) -> bool {
        self.slots.available_permits() > 0
    }

    /// Claims a concurrency slot, waiting for one if all are taken. `None` only if the semaphore were closed (it
    /// never is).
    pub async fn begin(&self) -> Option<InFlight<'_>> {
        let slot = self.slots.clone().acquire_owned().await.ok()?;
        Some(self.in_flight(slot, Instant::now()))
    }

    /// [`Endpoint::begin`] when a slot is free at `now` (the caller's clock reading), without the future and timer a
    /// wait would need.
    pub fn try_begin(&self, now: Instant) -> Option<InFlight<'_>> {
        let slot = self.slots.clone().try_acquire_owned().ok()?;
        Some(self.in_flight(slot, now))
    }

    fn in_flight(&self, slot: OwnedSemaphorePermit, started: Instant) -> InFlight<'_> {
        self.metrics.attempt_began();
        InFlight { endpoint: self, started, _slot: slot }
    }

    /// Records an attempt's end: its outcome label, its latency, and its effect on passive ejection.
    /// Returns `true` when this failure ejected the endpoint.
    pub fn finished(&self, attempt: InFlight<'_>, outcome: usize, blame: bool, ejection: &EjectionConfig) -> bool {
        let now = Instant::now();
        let rtt = now.saturating_duration_since(attempt.started());
        drop(attempt);
        self.metrics.attempt(outcome, rtt);
        {
            // Peak-EWMA over answers: a slower answer is taken at once, faster ones are blended in. A failed attempt
            // counts as a slow one (at least FAILURE_PENALTY), so an endpoint that fails fast — 429s, refusals —
            // never looks cheaper than the healthy ones.
            let mut latency = self.latency.lock();
            let (estimate, at) = *latency;
            let sample = rtt.as_secs_f64();
            let next = if outcome == CLIENT_DEADLINE {
                // The endpoint was at least this slow, no more is known.
                estimate.max(sample)
            } else if outcome != 0 {
                estimate.max(sample).max(FAILURE_PENALTY.as_secs_f64())
            } else if sample > estimate {
                sample
            } else {
                let w = (-now.saturating_duration_since(at).as_secs_f64() / EWMA_DECAY.as_secs_f64()).exp();
                estimate * w + sample * (1.0 - w)
            };
            *latency = (next, now);
        }
        let mut h = self.health.lock();
        if outcome == 0 {
            h.attempt_failures = 0;
            h.ejections = 0;
            return false;
        }
        if !blame {
            return false;
        }
        h.attempt_failures += 1;
        let still_ejected = h.ejected_until.is_some_and(|t| now < t);
        // Back from an ejection, one failure is enough to go out again (for twice as long).
        let on_probation = h.ejections > 0;
        if still_ejected || (h.attempt_failures < ejection.consecutive_failures && !on_probation) {
            return false;
        }
        let factor = 2u32.saturating_pow(h.ejections.min(16));
        let time = ejection.base_time.saturating_mul(factor).min(ejection.max_time);
        h.ejected_until = Some(now + time);
        h.ejections += 1;
        h.attempt_failures = 0;
        drop(h);
        self.metrics.ejected(Ejection::Failures);
        self.metrics.set_available(false);
        tracing::warn!(endpoint = %self.address, ejected_for = ?time, "upstream endpoint ejected after failures in a row");
        true
    }

    /// Marks a check of this endpoint as running; `false` when one already is.
    pub fn begin_check(&self) -> bool {
        !self.checking.swap(true, Ordering::AcqRel)
    }

    /// The check [`Endpoint::begin_check`] marked has ended.
    pub fn end_check(&self) {
        self.checking.store(false, Ordering::Release);
    }

    /// Applies one active health check's result.
    pub fn checked(&self, passed: bool, config: &HealthCheckConfig) {
        let mut h = self.health.lock();
        if passed {
            h.passes_in_row += 1;
            h.failures_in_row = 0;
            if !h.healthy && h.passes_in_row >= config.healthy_threshold {
                h.healthy = true;
                tracing::info!(endpoint = %self.address, "upstream endpoint healthy again");
            }
        } else {
            h.failures_in_row += 1;
            h.passes_in_row = 0;
            if h.healthy && h.failures_in_row >= config.unhealthy_threshold {
                h.healthy = false;
                // It may come back as another server (a restart, a reused pod IP): check its metadata again then.
                h.verified = false;
                self.metrics.ejected(Ejection::HealthCheck);
                tracing::warn!(endpoint = %self.address, "upstream endpoint failed its health checks");
            }
        }
    }

    /// Its metadata must be checked (again) before it gets traffic.
    pub fn unverify(&self) {
        self.health.lock().verified = false;
    }

    /// It passed its health check but could not answer a model's metadata (the model or the declared version is not
    /// there, or it did not answer in time): no traffic until it can. Logged when the reason changes, not every round.
    pub fn verification_failed(&self, reason: String) {
        let mut h = self.health.lock();
        h.verified = false;
        if h.unverified_because.as_deref() != Some(reason.as_str()) {
            tracing::warn!(endpoint = %self.address, %reason, "upstream endpoint is ready but its metadata cannot be checked: it gets no traffic");
            h.unverified_because = Some(reason);
        }
    }

    /// The endpoint's metadata agrees with the pool's (`Ok`) or not (`Err` with the difference). A later agreement
    /// clears an earlier mismatch (the server behind the address changed).
    pub fn verify(&self, result: Result<(), String>) {
        let mut h = self.health.lock();
        match result {
            Ok(()) => {
                if h.mismatch.take().is_some() {
                    tracing::info!(endpoint = %self.address, "upstream endpoint's metadata agrees again");
                }
                h.unverified_because = None;
                h.verified = true;
            }
            Err(difference) => {
                if h.mismatch.is_none() {
                    tracing::error!(endpoint = %self.address, %difference, "upstream endpoint serves different model metadata; not using it");
                }
                h.verified = true;
                h.mismatch = Some(difference);
            }
        }
    }

    /// The endpoint left the pool (DNS no longer lists it): it shows as unavailable.
    pub fn publish_gone(&self) {
        self.metrics.set_available(false);
    }

    /// Refreshes the `sluice_upstream_available` gauge.
    pub fn publish(&self, now: Instant) {
        self.metrics.set_available(self.is_available(now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamConfig;

    /// An endpoint of pool `p` at 127.0.0.1:9 whose metadata has not been checked yet, recording into `metrics`.
    fn unverified_endpoint(metrics: &Metrics) -> Endpoint {
        let config = UpstreamConfig::default();
        let http = super::super::transport::http_client(&config);
        let client = EndpointClient::new(&config, "127.0.0.1:9", &http, 1 << 20, None).expect("client");
        Endpoint::new("p", "127.0.0.1:9".into(), client, 2, metrics)
    }

    fn endpoint() -> Endpoint {
        let e = unverified_endpoint(&Metrics::new(false));
        e.verify(Ok(()));
        e
    }

    fn fail(e: &Endpoint, ejection: &EjectionConfig) -> bool {
        let flight = futures_lite_block(e.begin()).expect("slot");
        e.finished(flight, 1, true, ejection)
    }

    /// Polls a future that is ready at once (a free semaphore permit).
    fn futures_lite_block<F: std::future::Future>(f: F) -> F::Output {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        runtime.block_on(f)
    }

    /// How long the endpoint stays ejected from now (zero when it is not).
    fn ejected_for(e: &Endpoint) -> Duration {
        e.health.lock().ejected_until.map_or(Duration::ZERO, |t| t.saturating_duration_since(Instant::now()))
    }

    /// Lets the current ejection run out without waiting for it.
    fn expire(e: &Endpoint) {
        if let Some(t) = e.health.lock().ejected_until.as_mut() {
            *t = Instant::now() - Duration::from_millis(1);
        }
    }

    #[test]
    fn failures_in_a_row_eject_and_probation_re_ejects_for_longer() {
        let e = endpoint();
        let ejection = EjectionConfig { consecutive_failures: 3, base_time: Duration::from_secs(10), max_time: Duration::from_secs(25) };
        let near = |d: Duration, secs: u64| d <= Duration::from_secs(secs) && d > Duration::from_secs(secs) - Duration::from_secs(2);
        assert!(e.is_available(Instant::now()));
        assert!(!fail(&e, &ejection));
        assert!(!fail(&e, &ejection));
        assert!(fail(&e, &ejection), "the third failure in a row ejects");
        assert!(!e.is_available(Instant::now()));
        assert!(near(ejected_for(&e), 10), "{:?}", ejected_for(&e));
        assert!(!fail(&e, &ejection), "failures while ejected do not extend it");
        expire(&e);
        assert!(e.is_available(Instant::now()), "back after its ejection time");
        // On probation: one failure is enough, and the ejection doubles...
        assert!(fail(&e, &ejection));
        assert!(near(ejected_for(&e), 20), "{:?}", ejected_for(&e));
        expire(&e);
        // ...up to max_time.
        assert!(fail(&e, &ejection));
        assert!(near(ejected_for(&e), 25), "{:?}", ejected_for(&e));
        expire(&e);
        // A success clears the record: the next ejection needs three failures again and lasts base_time.
        let flight = futures_lite_block(e.begin()).expect("slot");
        e.finished(flight, 0, false, &ejection);
        assert!(!fail(&e, &ejection));
        assert!(!fail(&e, &ejection));
        assert!(fail(&e, &ejection));
        assert!(near(ejected_for(&e), 10), "{:?}", ejected_for(&e));
    }

    #[test]
    fn failures_not_blamed_on_the_endpoint_never_eject() {
        let e = endpoint();
        let ejection = EjectionConfig { consecutive_failures: 1, base_time: Duration::from_secs(1), max_time: Duration::from_secs(1) };
        for _ in 0..5 {
            let flight = futures_lite_block(e.begin()).expect("slot");
            assert!(!e.finished(flight, 5, false, &ejection));
        }
        assert!(e.is_available(Instant::now()));
    }

    #[test]
    fn health_verdicts_need_their_thresholds() {
        let e = endpoint();
        let config = HealthCheckConfig { healthy_threshold: 2, unhealthy_threshold: 3, ..HealthCheckConfig::default() };
        e.checked(false, &config);
        e.checked(false, &config);
        assert!(e.is_available(Instant::now()));
        e.checked(false, &config);
        assert!(!e.is_available(Instant::now()));
        assert!(!e.is_verified(), "an unhealthy endpoint is checked again before it gets traffic");
        e.checked(true, &config);
        assert!(!e.is_available(Instant::now()));
        e.checked(true, &config);
        assert!(!e.is_available(Instant::now()), "healthy but not yet verified");
        e.verify(Ok(()));
        assert!(e.is_available(Instant::now()));
    }

    /// Both ways out of rotation are counted, each under its own reason.
    #[test]
    fn ejections_are_counted_by_reason() {
        let metrics = Metrics::new(true);
        let e = unverified_endpoint(&metrics);
        e.verify(Ok(()));
        let ejection = EjectionConfig { consecutive_failures: 2, base_time: Duration::from_secs(10), max_time: Duration::from_secs(10) };
        assert!(!fail(&e, &ejection));
        assert!(fail(&e, &ejection));
        let health = HealthCheckConfig { unhealthy_threshold: 2, ..HealthCheckConfig::default() };
        e.checked(false, &health);
        e.checked(false, &health);
        e.checked(false, &health);
        let text = metrics.render(&crate::scaling::ScalingSnapshot::empty(0.7)).expect("metrics are enabled");
        let count = |reason: &str| {
            let series = format!("{}{{pool=\"p\",endpoint=\"127.0.0.1:9\",reason=\"{reason}\"}} ", crate::metrics::catalogue::UPSTREAM_EJECTIONS);
            text.lines().find_map(|l| l.strip_prefix(series.as_str())).map(str::to_owned)
        };
        assert_eq!(count("failures").as_deref(), Some("1"), "{text}");
        assert_eq!(count("health_check").as_deref(), Some("1"), "one ejection however many checks fail after it: {text}");
    }

    #[test]
    fn unverified_or_mismatched_endpoints_take_no_traffic() {
        let e = unverified_endpoint(&Metrics::new(false));
        assert!(!e.is_available(Instant::now()) && !e.is_usable());
        e.verify(Err("input 'x' differs".into()));
        assert!(!e.is_available(Instant::now()) && !e.is_usable() && e.is_mismatched());
    }

    #[test]
    fn cost_grows_with_latency_and_outstanding_and_decays_when_idle() {
        let e = endpoint();
        let ejection = EjectionConfig::default();
        let now = Instant::now();
        let idle = e.cost(now);
        *e.latency.lock() = (0.020, now);
        let slow = e.cost(now);
        assert!(slow > idle);
        let flight = futures_lite_block(e.begin()).expect("slot");
        assert!((e.cost(now) - 2.0 * slow).abs() < 1e-9, "one outstanding doubles the cost");
        e.finished(flight, 0, false, &ejection);
        assert!(e.cost(now + Duration::from_secs(30)) < slow / 10.0, "an idle estimate decays");
    }
}

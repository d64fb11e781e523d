//! The scaling signal: every [`SAMPLE_INTERVAL`] the sampler reads each model's [`LoadTracker`] and queue, turns the
//! counters into rates over sliding windows, and publishes a [`ScalingSnapshot`] with a desired-capacity figure per
//! model and overall. `/scaling`, `/metrics`, the KEDA external scaler and the OCI publisher all read the same snapshot.
//!
//! The formula (docs/SCALING.md explains it with an example), per model version on this replica:
//!
//! ```text
//! capacity = served rows / busy instance-seconds × instances          (rows/s this replica serves when fully busy)
//! demand   = arrival rows/s ÷ capacity                                 (replicas' worth of work arriving)
//! backlog  = queued rows ÷ (capacity × drain_time)                     (extra replicas to clear the queue in time)
//! desired  = (demand + backlog) ÷ target_utilization
//! ```
//!
//! The arrival rate is the larger of the rates over `fast_window` and `window`: capacity follows a step up within
//! about `fast_window` and a step down only as the long window forgets it. After a quiet spell the fast rate is
//! measured from the onset of arrivals (at least 300 ms back), so a step up from idle shows at its full rate at once. Capacity is measured over `window` at the
//! batch sizes that actually formed, and remembered through idle periods.

use super::load::{LoadReading, LoadTracker};
use crate::config::ScalingConfig;
use crate::repository::Repository;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// How often the sampler reads the counters. Also the longest delay before a change of activity is published.
pub const SAMPLE_INTERVAL: Duration = Duration::from_millis(100);

/// The signal of one model (all its loaded versions together) on this replica.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ModelSignal {
    /// Replicas this replica's share of the model's load needs at the target utilization (see the module docs).
    pub desired_replicas: f64,
    /// Requests are queued or running, or arrive faster than `activation_rate`.
    pub active: bool,
    pub queue_requests: usize,
    pub queue_rows: usize,
    /// Requests admitted and not answered yet (queued or running).
    pub in_flight: usize,
    /// Requests per second reaching admission (accepted or refused), the larger of the fast and slow windows.
    pub arrival_rate: f64,
    /// Rows per second reaching admission.
    pub arrival_rows_rate: f64,
    /// Rows per second this replica serves with every instance busy; 0 until a batch has been measured.
    pub service_rows_rate: f64,
    /// Share of instance time spent running batches over the window, 0..1.
    pub busy_ratio: f64,
    pub instances: usize,
}

/// Everything the scaling outputs publish, taken at one instant.
#[derive(Clone, Debug, Serialize)]
pub struct ScalingSnapshot {
    #[serde(serialize_with = "rfc3339")]
    pub timestamp: SystemTime,
    pub target_utilization: f64,
    /// Sum over models: models on one replica share its CPUs and accelerators.
    pub desired_replicas: f64,
    pub active: bool,
    pub models: BTreeMap<String, ModelSignal>,
}

fn rfc3339<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*t))
}

impl ScalingSnapshot {
    pub fn empty(target_utilization: f64) -> ScalingSnapshot {
        ScalingSnapshot { timestamp: SystemTime::now(), target_utilization, desired_replicas: 0.0, active: false, models: BTreeMap::new() }
    }

    /// The desired replicas and activity of one model, or of all models when `model` is `None`.
    pub fn for_model(&self, model: Option<&str>) -> Option<(f64, bool)> {
        match model {
            None => Some((self.desired_replicas, self.active)),
            Some(name) => self.models.get(name).map(|m| (m.desired_replicas, m.active)),
        }
    }
}

/// Parameters of the formula, from [`ScalingConfig`].
#[derive(Clone, Copy, Debug)]
pub struct Formula {
    pub target_utilization: f64,
    pub window: Duration,
    pub fast_window: Duration,
    pub drain_time: Duration,
    pub activation_rate: f64,
}

impl From<&ScalingConfig> for Formula {
    fn from(c: &ScalingConfig) -> Formula {
        Formula {
            target_utilization: c.target_utilization,
            window: c.window,
            fast_window: c.fast_window,
            drain_time: c.drain_time,
            activation_rate: c.activation_rate,
        }
    }
}

/// What the sampler measured for one model version over its windows.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Measured {
    pub queue_requests: usize,
    pub queue_rows: usize,
    pub in_flight: usize,
    pub instances: usize,
    pub fast_arrival_rate: f64,
    pub slow_arrival_rate: f64,
    pub fast_arrival_rows_rate: f64,
    pub slow_arrival_rows_rate: f64,
    /// Rows per busy instance-second; `None` until measured.
    pub rows_per_busy_second: Option<f64>,
    pub busy_ratio: f64,
}

impl Formula {
    /// The signal of one model version from its measurements (pure, so the formula is unit-tested directly).
    pub fn signal(&self, m: &Measured) -> ModelSignal {
        let arrival_rate = m.fast_arrival_rate.max(m.slow_arrival_rate);
        let arrival_rows_rate = m.fast_arrival_rows_rate.max(m.slow_arrival_rows_rate);
        let capacity = m.rows_per_busy_second.unwrap_or(0.0) * m.instances as f64;
        let arriving_now = if self.activation_rate > 0.0 { m.fast_arrival_rate > self.activation_rate } else { m.fast_arrival_rate > 0.0 };
        let active = m.queue_requests > 0 || m.in_flight > 0 || arriving_now;
        let desired_replicas = if capacity > 0.0 {
            let demand = arrival_rows_rate / capacity;
            let backlog = m.queue_rows as f64 / (capacity * self.drain_time.as_secs_f64());
            (demand + backlog) / self.target_utilization
        } else if active {
            // Work but no measured batch yet: this replica is needed, how much more cannot be told.
            1.0
        } else {
            0.0
        };
        ModelSignal {
            desired_replicas,
            active,
            queue_requests: m.queue_requests,
            queue_rows: m.queue_rows,
            in_flight: m.in_flight,
            arrival_rate,
            arrival_rows_rate,
            service_rows_rate: capacity,
            busy_ratio: m.busy_ratio,
            instances: m.instances,
        }
    }
}

/// Adds the signal of another version of the same model.
fn merge(into: &mut ModelSignal, other: &ModelSignal) {
    let instances = into.instances + other.instances;
    if instances > 0 {
        into.busy_ratio = (into.busy_ratio * into.instances as f64 + other.busy_ratio * other.instances as f64) / instances as f64;
    }
    into.instances = instances;
    into.desired_replicas += other.desired_replicas;
    into.active |= other.active;
    into.queue_requests += other.queue_requests;
    into.queue_rows += other.queue_rows;
    into.in_flight += other.in_flight;
    into.arrival_rate += other.arrival_rate;
    into.arrival_rows_rate += other.arrival_rows_rate;
    into.service_rows_rate += other.service_rows_rate;
}

/// The readings of one model version over the last window.
struct History {
    tracker: Arc<LoadTracker>,
    readings: VecDeque<(Instant, LoadReading)>,
    rows_per_busy_second: Option<f64>,
}

impl History {
    /// The reading closest to `span` ago (the oldest one when the history is shorter).
    fn since(&self, now: Instant, span: Duration) -> Option<&(Instant, LoadReading)> {
        let from = now.checked_sub(span)?;
        self.readings.iter().find(|(at, _)| *at >= from).or_else(|| self.readings.front())
    }

    /// Where the fast arrival rate is measured from: `span` ago, or later when nothing arrived in the first part of the
    /// window - the last reading before arrivals resumed, but at least [`MIN_ONSET_SPAN`] ago. A step up from quiet
    /// then shows at its full rate within a sample or two instead of ramping up over the whole window; the floor keeps
    /// one lone request from reading as a burst.
    fn onset(&self, now: Instant, span: Duration) -> Option<&(Instant, LoadReading)> {
        let start = self.since(now, span)?;
        let quiet = self
            .readings
            .iter()
            .skip_while(|(at, _)| at < &start.0)
            .take_while(|(at, r)| r.arrived_requests == start.1.arrived_requests && now.duration_since(*at) >= MIN_ONSET_SPAN)
            .last();
        Some(quiet.unwrap_or(start))
    }
}

/// The shortest span a fast arrival rate is measured over (see [`History::onset`]).
pub const MIN_ONSET_SPAN: Duration = Duration::from_millis(300);

fn per_second(delta: u64, elapsed: Duration) -> f64 {
    if elapsed.is_zero() {
        0.0
    } else {
        delta as f64 / elapsed.as_secs_f64()
    }
}

/// Turns readings into snapshots. Keeps a little history per model version; versions that disappear are forgotten.
pub struct Sampler {
    formula: Formula,
    histories: HashMap<(String, u64), History>,
}

impl Sampler {
    pub fn new(formula: Formula) -> Sampler {
        Sampler { formula, histories: HashMap::new() }
    }

    /// Reads every loaded model version now and computes the snapshot.
    pub fn sample(&mut self, repository: &Repository, now: Instant) -> ScalingSnapshot {
        let f = self.formula;
        let mut models: BTreeMap<String, ModelSignal> = BTreeMap::new();
        let mut seen = Vec::new();
        for m in repository.all() {
            let key = (m.name.clone(), m.version);
            let tracker = m.scheduler.load();
            let history = self.histories.entry(key.clone()).or_insert_with(|| History {
                tracker: tracker.clone(),
                readings: VecDeque::new(),
                rows_per_busy_second: None,
            });
            if !Arc::ptr_eq(&history.tracker, tracker) {
                // The version was reloaded: its counters started again.
                *history = History { tracker: tracker.clone(), readings: VecDeque::new(), rows_per_busy_second: None };
            }
            let reading = tracker.read(now);
            history.readings.push_back((now, reading));
            while history.readings.len() > 2 && history.readings.get(1).is_some_and(|(at, _)| now.duration_since(*at) >= f.window) {
                history.readings.pop_front();
            }
            let (requests, rows) = m.scheduler.depth();
            let mut measured = Measured { queue_requests: requests, queue_rows: rows, in_flight: reading.in_flight, instances: tracker.instances(), ..Measured::default() };
            if let Some(&(at, old)) = history.onset(now, f.fast_window) {
                let elapsed = now.duration_since(at);
                measured.fast_arrival_rate = per_second(reading.arrived_requests - old.arrived_requests, elapsed);
                measured.fast_arrival_rows_rate = per_second(reading.arrived_rows - old.arrived_rows, elapsed);
            }
            if let Some(&(at, old)) = history.since(now, f.window) {
                let elapsed = now.duration_since(at);
                measured.slow_arrival_rate = per_second(reading.arrived_requests - old.arrived_requests, elapsed);
                measured.slow_arrival_rows_rate = per_second(reading.arrived_rows - old.arrived_rows, elapsed);
                let busy = reading.busy_ns.saturating_sub(old.busy_ns);
                let served = reading.served_rows.saturating_sub(old.served_rows);
                // Without new batches there is nothing to measure: keep the last measurement through idle periods.
                if busy > 0 && served > 0 {
                    history.rows_per_busy_second = Some(served as f64 / (busy as f64 / 1e9));
                }
                if !elapsed.is_zero() {
                    let possible = elapsed.as_nanos() as f64 * measured.instances as f64;
                    measured.busy_ratio = (busy as f64 / possible).clamp(0.0, 1.0);
                }
            }
            measured.rows_per_busy_second = history.rows_per_busy_second;
            let signal = f.signal(&measured);
            match models.get_mut(&m.name) {
                Some(existing) => merge(existing, &signal),
                None => {
                    models.insert(m.name.clone(), signal);
                }
            }
            seen.push(key);
        }
        self.histories.retain(|k, _| seen.contains(k));
        let desired_replicas = models.values().map(|m| m.desired_replicas).sum();
        let active = models.values().any(|m| m.active);
        ScalingSnapshot { timestamp: SystemTime::now(), target_utilization: f.target_utilization, desired_replicas, active, models }
    }
}

/// Samples every [`SAMPLE_INTERVAL`] and publishes the snapshot until `stop` resolves.
pub async fn run(
    mut sampler: Sampler,
    repository: Arc<Repository>,
    publish: watch::Sender<Arc<ScalingSnapshot>>,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut ticks = tokio::time::interval(SAMPLE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticks.tick() => {
                let snapshot = sampler.sample(&repository, Instant::now());
                publish.send_replace(Arc::new(snapshot));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn formula() -> Formula {
        Formula {
            target_utilization: 0.5,
            window: Duration::from_secs(10),
            fast_window: Duration::from_secs(1),
            drain_time: Duration::from_secs(4),
            activation_rate: 0.0,
        }
    }

    #[test]
    fn demand_and_backlog_over_target() {
        // 1 instance at 100 rows per busy second; 50 rows/s arriving; 200 rows queued.
        let m = Measured {
            queue_requests: 10,
            queue_rows: 200,
            instances: 1,
            fast_arrival_rate: 50.0,
            fast_arrival_rows_rate: 50.0,
            slow_arrival_rate: 20.0,
            slow_arrival_rows_rate: 20.0,
            rows_per_busy_second: Some(100.0),
            ..Measured::default()
        };
        let s = formula().signal(&m);
        // demand 0.5, backlog 200 / (100 × 4) = 0.5, over target 0.5 → 2.0
        assert!((s.desired_replicas - 2.0).abs() < 1e-9, "{s:?}");
        assert!(s.active);
        assert_eq!(s.service_rows_rate, 100.0);
        assert_eq!(s.arrival_rate, 50.0);
    }

    #[test]
    fn slow_window_holds_capacity_after_a_step_down() {
        let m = Measured { instances: 2, slow_arrival_rows_rate: 100.0, rows_per_busy_second: Some(100.0), ..Measured::default() };
        let s = formula().signal(&m);
        assert!((s.desired_replicas - 1.0).abs() < 1e-9, "{s:?}");
        assert!(!s.active, "nothing arrived in the fast window and nothing is queued");
    }

    #[test]
    fn unmeasured_capacity_with_work_wants_this_replica() {
        let m = Measured { queue_requests: 1, queue_rows: 1, instances: 1, ..Measured::default() };
        assert_eq!(formula().signal(&m).desired_replicas, 1.0);
        assert_eq!(formula().signal(&Measured::default()).desired_replicas, 0.0);
    }

    #[test]
    fn activation_rate_threshold() {
        let mut f = formula();
        f.activation_rate = 5.0;
        let m = Measured { fast_arrival_rate: 4.0, instances: 1, ..Measured::default() };
        assert!(!f.signal(&m).active);
        let m = Measured { fast_arrival_rate: 6.0, instances: 1, ..Measured::default() };
        assert!(f.signal(&m).active);
    }

    /// Readings every 100 ms for 1 s, quiet until `first_arrival_ms`, then 10 requests per reading.
    fn history(first_arrival_ms: u64, t0: Instant) -> History {
        let mut readings = VecDeque::new();
        let mut arrived = 0;
        for ms in (0..=1000).step_by(100) {
            if ms >= first_arrival_ms {
                arrived += 10;
            }
            readings.push_back((t0 + Duration::from_millis(ms), LoadReading { arrived_requests: arrived, ..LoadReading::default() }));
        }
        History { tracker: Arc::new(LoadTracker::new(1)), readings, rows_per_busy_second: None }
    }

    #[test]
    fn fast_rate_starts_at_the_onset_of_arrivals() {
        let t0 = Instant::now();
        let now = t0 + Duration::from_millis(1000);
        let rate = |h: &History| {
            let (at, old) = *h.onset(now, Duration::from_secs(1)).unwrap();
            per_second(h.readings.back().unwrap().1.arrived_requests - old.arrived_requests, now.duration_since(at))
        };
        // Arrivals all through the window: the whole window (100 per second).
        assert!((rate(&history(0, t0)) - 100.0).abs() < 1e-9);
        // A step 400 ms ago from quiet: measured from the last quiet reading (500 ms ago), not diluted over 1 s.
        assert!((rate(&history(600, t0)) - 100.0).abs() < 1e-9);
        // A step 100 ms ago: the span does not shrink below MIN_ONSET_SPAN (300 ms), so one sample is not a burst.
        assert!((rate(&history(1000, t0)) - 10.0 / 0.3).abs() < 1e-9);
        // Nothing arrived: zero.
        assert_eq!(rate(&history(2000, t0)), 0.0);
    }

    #[test]
    fn versions_merge_by_sum_and_weighted_busy() {
        let mut a = ModelSignal { desired_replicas: 1.0, busy_ratio: 1.0, instances: 1, queue_rows: 3, ..ModelSignal::default() };
        let b = ModelSignal { desired_replicas: 0.5, busy_ratio: 0.0, instances: 3, active: true, ..ModelSignal::default() };
        merge(&mut a, &b);
        assert_eq!(a.desired_replicas, 1.5);
        assert_eq!(a.busy_ratio, 0.25);
        assert_eq!(a.instances, 4);
        assert!(a.active);
    }
}

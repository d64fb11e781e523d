//! The publisher task: every `interval` it turns the latest scaling snapshot into datapoints, and it posts the buffer
//! oldest first, one call at a time, backing off after failures.
//!
//! It only *reads* the snapshot watch channel (a clone of an `Arc`), so the request path never waits for it; all
//! network I/O happens in this task, and a slow or dead endpoint only fills the bounded buffer. One select loop owns
//! the buffer, so there is no lock: a tick adds points, a finished post removes (or puts back) its batch, and `stop`
//! ends the loop at once, dropping any call in flight and any backoff sleep.

use super::buffer::{Buffer, Dropped};
use super::client::{Client, Outcome};
use super::payload::{self, Datapoint, StreamContext, MAX_POINTS_PER_CALL, MAX_STREAMS_PER_CALL};
use crate::metrics::{catalogue, Metrics};
use crate::scaling::ScalingSnapshot;
use ::metrics::{Counter, Gauge};
use rand::Rng;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

/// Backoff after the first failure (before jitter); it doubles per consecutive failure up to [`BACKOFF_CAP`].
pub const BACKOFF_BASE: Duration = Duration::from_secs(1);
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// At most one log line per kind of trouble per this period; the next line says how many were held back.
pub const LOG_PERIOD: Duration = Duration::from_secs(60);

/// "Full jitter" backoff: uniform in [0, min(cap, base × 2^(failures−1))], so many replicas that failed together
/// do not retry together (OCI's 50 calls per second per tenancy).
pub fn backoff(failures: u32, rng: &mut impl Rng) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    let ceiling = BACKOFF_BASE.saturating_mul(1 << exponent).min(BACKOFF_CAP);
    let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
    Duration::from_millis(rng.random_range(0..=millis))
}

/// Rate-limits log lines by kind.
#[derive(Default)]
pub struct LogLimiter {
    kinds: HashMap<&'static str, (Instant, u64)>,
}

impl LogLimiter {
    /// `Some(held back since the last line)` when a line of `kind` may be logged at `now`.
    pub fn allow(&mut self, kind: &'static str, now: Instant) -> Option<u64> {
        match self.kinds.get_mut(kind) {
            Some((last, held)) if now.saturating_duration_since(*last) < LOG_PERIOD => {
                *held += 1;
                None
            }
            Some((last, held)) => {
                *last = now;
                Some(std::mem::take(held))
            }
            None => {
                self.kinds.insert(kind, (now, 0));
                Some(0)
            }
        }
    }
}

/// The handles of the documented `sluice_oci_*` series.
struct Counters {
    ok: Counter,
    retried: Counter,
    rejected: Counter,
    dropped_buffer_full: Counter,
    dropped_too_old: Counter,
    dropped_rejected: Counter,
    buffered: Gauge,
}

impl Counters {
    fn new(metrics: &Metrics) -> Counters {
        let posts = |outcome| metrics.counter(catalogue::OCI_POSTS, &[("outcome", outcome)]);
        let dropped = |reason| metrics.counter(catalogue::OCI_DROPPED, &[("reason", reason)]);
        Counters {
            ok: posts("ok"),
            retried: posts("retried"),
            rejected: posts("rejected"),
            dropped_buffer_full: dropped("buffer_full"),
            dropped_too_old: dropped("too_old"),
            dropped_rejected: dropped("rejected"),
            buffered: metrics.gauge(catalogue::OCI_BUFFERED, &[]),
        }
    }
}

type PostFuture = Pin<Box<dyn Future<Output = Outcome> + Send>>;

/// A batch being posted.
struct InFlight {
    batch: Vec<Datapoint>,
    post: PostFuture,
}

pub struct Publisher {
    client: Arc<Client>,
    context: StreamContext,
    interval: Duration,
    buffer: Buffer,
    in_flight_len: usize,
    counters: Counters,
    logs: LogLimiter,
    last_snapshot: Option<SystemTime>,
    failures: u32,
}

impl Publisher {
    pub fn new(client: Client, context: StreamContext, interval: Duration, max_buffered: usize, metrics: &Metrics) -> Publisher {
        Publisher {
            client: Arc::new(client),
            context,
            interval,
            buffer: Buffer::new(max_buffered),
            in_flight_len: 0,
            counters: Counters::new(metrics),
            logs: LogLimiter::default(),
            last_snapshot: None,
            failures: 0,
        }
    }

    /// Runs until `stop` resolves. Never fails: delivery problems are logged and counted, not returned.
    pub async fn run(
        mut self,
        scaling: watch::Receiver<Arc<ScalingSnapshot>>,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let mut stop = std::pin::pin!(stop);
        // The first tick is immediate, so the first points leave at start-up.
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut in_flight: Option<InFlight> = None;
        let mut retry_at: Option<tokio::time::Instant> = None;
        loop {
            if in_flight.is_none() && retry_at.is_none() {
                in_flight = self.next_post();
            }
            tokio::select! {
                biased;
                () = stop.as_mut() => break,
                outcome = posted(&mut in_flight) => {
                    if let Some(done) = in_flight.take() {
                        retry_at = self.finish(done.batch, outcome).map(|delay| tokio::time::Instant::now() + delay);
                    }
                }
                () = sleep_until(retry_at) => retry_at = None,
                _ = ticker.tick() => self.collect(&scaling),
            }
        }
        tracing::debug!(buffered = self.buffer.len() + self.in_flight_len, "OCI Monitoring publisher stopped");
        Ok(())
    }

    /// Buffers one datapoint per stream of the latest snapshot (unless it is the one already taken).
    fn collect(&mut self, scaling: &watch::Receiver<Arc<ScalingSnapshot>>) {
        let snapshot = scaling.borrow().clone();
        if self.last_snapshot == Some(snapshot.timestamp) {
            return;
        }
        self.last_snapshot = Some(snapshot.timestamp);
        let dropped = self.buffer.push(payload::datapoints(&snapshot));
        self.count_dropped(dropped);
        self.update_gauge();
    }

    /// Takes the next batch out of the buffer and starts its post; `None` when there is nothing to send.
    fn next_post(&mut self) -> Option<InFlight> {
        let dropped = self.buffer.expire(SystemTime::now());
        self.count_dropped(dropped);
        let n = payload::batch_len(self.buffer.iter(), MAX_STREAMS_PER_CALL, MAX_POINTS_PER_CALL);
        if n == 0 {
            self.update_gauge();
            return None;
        }
        let batch = self.buffer.take_front(n);
        self.in_flight_len = batch.len();
        let body = payload::body(&self.context, &batch);
        let client = self.client.clone();
        Some(InFlight { batch, post: Box::pin(async move { client.post(body).await }) })
    }

    /// Settles a finished post; returns the backoff before the next one after a retryable failure.
    fn finish(&mut self, batch: Vec<Datapoint>, outcome: Outcome) -> Option<Duration> {
        self.in_flight_len = 0;
        let now = Instant::now();
        let delay = match outcome {
            Outcome::Delivered { failed, detail } => {
                self.counters.ok.increment(1);
                if self.failures > 0 {
                    tracing::info!(after_failures = self.failures, "OCI Monitoring accepts posts again");
                }
                self.failures = 0;
                if failed > 0 {
                    if let Some(held_back) = self.logs.allow("failed_metrics", now) {
                        tracing::warn!(failed, held_back, detail, "OCI Monitoring refused some metric objects of a post");
                    }
                }
                None
            }
            Outcome::Rejected { status, detail } => {
                self.counters.rejected.increment(1);
                self.counters.dropped_rejected.increment(batch.len() as u64);
                self.failures = 0;
                if let Some(held_back) = self.logs.allow("rejected", now) {
                    tracing::warn!(
                        status,
                        detail,
                        datapoints = batch.len(),
                        held_back,
                        endpoint = %self.client.endpoint().url,
                        "OCI Monitoring rejected a post; its datapoints are dropped (check the compartment, IAM policy, key and clock)"
                    );
                }
                None
            }
            Outcome::Retry(why) => {
                self.counters.retried.increment(1);
                self.failures = self.failures.saturating_add(1);
                let delay = backoff(self.failures, &mut rand::rng());
                let dropped = self.buffer.put_back(batch);
                self.count_dropped(dropped);
                if let Some(held_back) = self.logs.allow("retry", now) {
                    tracing::warn!(
                        error = %why,
                        retry_in = ?delay,
                        failures = self.failures,
                        buffered = self.buffer.len(),
                        held_back,
                        endpoint = %self.client.endpoint().url,
                        "OCI Monitoring post failed; will retry"
                    );
                }
                Some(delay)
            }
        };
        self.update_gauge();
        delay
    }

    fn count_dropped(&self, dropped: Dropped) {
        if dropped.buffer_full > 0 {
            self.counters.dropped_buffer_full.increment(dropped.buffer_full);
        }
        if dropped.too_old > 0 {
            self.counters.dropped_too_old.increment(dropped.too_old);
        }
    }

    fn update_gauge(&self) {
        self.counters.buffered.set((self.buffer.len() + self.in_flight_len) as f64);
    }
}

/// The outcome of the post in flight; never resolves when there is none.
async fn posted(in_flight: &mut Option<InFlight>) -> Outcome {
    match in_flight {
        Some(f) => f.post.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Resolves at `at`; never when `None`.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scaling::oci::client::Endpoint;
    use crate::scaling::oci::config::{parse_key, tests::PKCS8};
    use crate::scaling::oci::signer::Signer;
    use crate::scaling::ModelSignal;
    use std::collections::BTreeMap;
    use std::sync::Mutex;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A receiver answering each request with the next status of `script` (the last one repeats; 0 = never answer).
    /// Returns its address and the bodies it received.
    async fn receiver(script: Vec<u16>) -> (String, Arc<Mutex<Vec<serde_json::Value>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let seen = bodies.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((mut conn, _)) = listener.accept().await {
                let status = script[n.min(script.len() - 1)];
                n += 1;
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut data = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let body_start = loop {
                        let read = conn.read(&mut chunk).await.unwrap_or(0);
                        if read == 0 {
                            return;
                        }
                        data.extend_from_slice(&chunk[..read]);
                        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                    };
                    let head = String::from_utf8_lossy(&data[..body_start]).to_ascii_lowercase();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map(|v| v.trim().parse().unwrap())
                        .unwrap();
                    while data.len() < body_start + length {
                        let read = conn.read(&mut chunk).await.unwrap_or(0);
                        if read == 0 {
                            return;
                        }
                        data.extend_from_slice(&chunk[..read]);
                    }
                    seen.lock().unwrap().push(serde_json::from_slice(&data[body_start..]).unwrap());
                    if status == 0 {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                    let body = if status == 200 { r#"{"failedMetricsCount":0,"failedMetrics":[]}"# } else { r#"{"code":"X","message":"no"}"# };
                    let response = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(response.as_bytes()).await;
                });
            }
        });
        (addr, bodies)
    }

    fn snapshot(at: SystemTime) -> Arc<ScalingSnapshot> {
        let mut s = ScalingSnapshot::empty(0.7);
        s.timestamp = at;
        s.models.insert("m".into(), ModelSignal { queue_requests: 3, ..Default::default() });
        Arc::new(s)
    }

    fn publisher(addr: &str, timeout: Duration, metrics: &Metrics) -> Publisher {
        let endpoint = Endpoint::parse(&format!("http://{addr}")).unwrap();
        let signer = Signer::new("t/u/f".into(), parse_key(PKCS8.as_bytes()).unwrap());
        let client = Client::new(endpoint, signer, timeout).unwrap();
        let context = StreamContext {
            namespace: "sluice".into(),
            compartment_id: "c".into(),
            resource_group: None,
            dimensions: BTreeMap::from([("instance".to_string(), "test".to_string())]),
        };
        Publisher::new(client, context, Duration::from_millis(50), 1000, metrics)
    }

    fn series(metrics: &Metrics, name: &str, label: &str) -> f64 {
        let text = metrics.render(&ScalingSnapshot::empty(0.7)).unwrap();
        let prefix = if label.is_empty() { format!("{name} ") } else { format!("{name}{{{label}}} ") };
        text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(-1.0, |v| v.parse().unwrap())
    }

    #[tokio::test]
    async fn retries_then_rejects_then_delivers() {
        let (addr, bodies) = receiver(vec![500, 400, 200]).await;
        let metrics = Arc::new(Metrics::new(true));
        let (tx, rx) = watch::channel(snapshot(SystemTime::now()));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(publisher(&addr, Duration::from_secs(5), &metrics).run(rx, async {
            let _ = stop_rx.await;
        }));
        let posts = |outcome: &str| series(&metrics, catalogue::OCI_POSTS, &format!("outcome=\"{outcome}\""));
        // 500 → retried (within the first backoff, ≤ 1 s), then the same batch → 400 → rejected and dropped.
        let deadline = Instant::now() + Duration::from_secs(10);
        while posts("rejected") < 1.0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!((posts("retried"), posts("rejected"), posts("ok")), (1.0, 1.0, 0.0), "-1 = series absent");
        assert_eq!(series(&metrics, catalogue::OCI_DROPPED, "reason=\"rejected\""), 6.0, "1 overall + 5 per-model points");
        // A new snapshot → delivered.
        tx.send(snapshot(SystemTime::now() + Duration::from_millis(1))).unwrap();
        while posts("ok") < 1.0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(posts("ok"), 1.0);
        assert_eq!(series(&metrics, catalogue::OCI_BUFFERED, ""), 0.0);
        {
            let bodies = bodies.lock().unwrap();
            assert_eq!(bodies.len(), 3);
            assert_eq!(bodies[0], bodies[1], "the retried post carries the same datapoints");
            let data = bodies[2]["metricData"].as_array().unwrap();
            let queue = data.iter().find(|d| d["name"] == "queue_requests").unwrap();
            assert_eq!(queue["dimensions"]["model"], "m");
            assert_eq!(queue["datapoints"][0]["value"], 3.0);
        }
        let _ = stop_tx.send(());
        tokio::time::timeout(Duration::from_secs(1), task).await.unwrap().unwrap().unwrap();
    }

    #[tokio::test]
    async fn stops_promptly_while_a_post_hangs() {
        let (addr, bodies) = receiver(vec![0]).await;
        let metrics = Arc::new(Metrics::new(true));
        let (_tx, rx) = watch::channel(snapshot(SystemTime::now()));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(publisher(&addr, Duration::from_secs(60), &metrics).run(rx, async {
            let _ = stop_rx.await;
        }));
        let deadline = Instant::now() + Duration::from_secs(10);
        while bodies.lock().unwrap().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(series(&metrics, catalogue::OCI_BUFFERED, ""), 6.0, "the batch in flight still counts as buffered");
        let _ = stop_tx.send(());
        tokio::time::timeout(Duration::from_secs(1), task).await.expect("stops within 1 s").unwrap().unwrap();
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let mut rng = rand::rng();
        for failures in [0, 1, 2, 3, 6, 40, u32::MAX] {
            let ceiling = BACKOFF_BASE.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(BACKOFF_CAP);
            let delays: Vec<Duration> = (0..200).map(|_| backoff(failures, &mut rng)).collect();
            assert!(delays.iter().all(|d| *d <= ceiling), "{failures}: {delays:?}");
            assert!(delays.iter().any(|d| *d != delays[0]), "jittered");
        }
        assert!((0..200).map(|_| backoff(1, &mut rng)).all(|d| d <= Duration::from_secs(1)));
        assert!((0..200).any(|_| backoff(10, &mut rng) > Duration::from_secs(15)), "reaches toward the 30 s cap");
    }

    #[test]
    fn log_lines_are_rate_limited_per_kind() {
        let mut logs = LogLimiter::default();
        let t0 = Instant::now();
        assert_eq!(logs.allow("a", t0), Some(0));
        assert_eq!(logs.allow("a", t0 + Duration::from_secs(1)), None);
        assert_eq!(logs.allow("b", t0 + Duration::from_secs(1)), Some(0));
        assert_eq!(logs.allow("a", t0 + Duration::from_secs(30)), None);
        assert_eq!(logs.allow("a", t0 + LOG_PERIOD), Some(2));
        assert_eq!(logs.allow("a", t0 + LOG_PERIOD), None);
    }
}

//! The scheduler on its own, with a fake backend that records every batch it is given, can be held (gated) by the test,
//! can fail or panic on request, and returns its inputs as outputs.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use sluice::backend::{BackendError, BackendInstance, ModelSignature, TensorSpec};
use sluice::config::{ExecutionProviderKind, ModelSettings};
use sluice::scheduler::{Job, ScheduleError, Scheduler};
use sluice::tensor::{DataType, Tensor};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Row id that makes the fake backend return an error for its whole batch.
const FAIL: f32 = -1.0;
/// Row id that makes the fake backend panic.
const PANIC: f32 = -2.0;
const LIMIT: Duration = Duration::from_secs(10);

/// What the backend saw of one batch.
#[derive(Clone, Debug)]
struct Batch {
    /// First element of every row of input 0 (the test writes the request id there).
    row_ids: Vec<f32>,
    /// Shape of input 0.
    shape: Vec<usize>,
}

impl Batch {
    /// Requests of the batch in order, as (id, rows), merging consecutive rows of the same id.
    fn requests(&self) -> Vec<(i64, usize)> {
        let mut out: Vec<(i64, usize)> = Vec::new();
        for &id in &self.row_ids {
            match out.last_mut() {
                Some((last, n)) if *last == id as i64 => *n += 1,
                _ => out.push((id as i64, 1)),
            }
        }
        out
    }
    fn ids(&self) -> Vec<i64> {
        self.requests().into_iter().map(|(id, _)| id).collect()
    }
}

type Log = Arc<Mutex<Vec<Batch>>>;
type Gate = Arc<Mutex<std::sync::mpsc::Receiver<()>>>;

struct Fake {
    log: Log,
    started: mpsc::UnboundedSender<()>,
    gate: Option<Gate>,
    sleep: Duration,
}

fn f32_values(t: &Tensor) -> Vec<f32> {
    t.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

impl BackendInstance for Fake {
    fn infer(&mut self, inputs: &[Tensor]) -> Result<Vec<Tensor>, BackendError> {
        let x = &inputs[0];
        let values = f32_values(x);
        let per_row = values.len() / x.rows().max(1);
        let row_ids: Vec<f32> = values.chunks(per_row.max(1)).map(|r| r[0]).collect();
        self.log.lock().unwrap().push(Batch { row_ids: row_ids.clone(), shape: x.shape().to_vec() });
        let _ = self.started.send(());
        if let Some(gate) = &self.gate {
            // Err: the test dropped the sender, i.e. opened the gate for good.
            let _ = gate.lock().unwrap().recv();
        }
        if !self.sleep.is_zero() {
            std::thread::sleep(self.sleep);
        }
        if row_ids.contains(&FAIL) {
            return Err(BackendError::Run("poisoned row in the batch".into()));
        }
        if row_ids.contains(&PANIC) {
            panic!("fake backend panics on purpose");
        }
        Ok(inputs.to_vec())
    }
}

fn settings(max_batch_size: usize) -> ModelSettings {
    ModelSettings {
        max_batch_size,
        instances: 1,
        threads: 1,
        execution_providers: vec![ExecutionProviderKind::Cpu],
        max_queue_delay: Duration::ZERO,
        preferred_batch_sizes: vec![],
        wait_when_alone: true,
        queue_capacity: 1000,
        queue_max_rows: 100_000,
        queue_timeout: Duration::from_secs(30),
        priority_levels: 1,
        default_priority: 1,
        instance_thread_nice: 0,
        precise_batch_timer: true,
        cache_enabled: false,
        cache_ttl: None,
        idempotent: true,
    }
}

fn spec(name: &str, dtype: DataType) -> TensorSpec {
    TensorSpec { name: name.into(), dtype, dims: vec![-1, -1] }
}

/// One F32 input `x` [batch, any] -> output `y`, returned unchanged.
fn signature() -> ModelSignature {
    ModelSignature { inputs: vec![spec("x", DataType::F32)], outputs: vec![spec("y", DataType::F32)] }
}

struct Harness {
    scheduler: Arc<Scheduler>,
    log: Log,
    started: mpsc::UnboundedReceiver<()>,
    gate: Option<std::sync::mpsc::Sender<()>>,
}

impl Harness {
    fn start(settings: ModelSettings, instances: usize, gated: bool, sleep: Duration) -> Harness {
        Harness::start_with(signature(), settings, instances, gated, sleep)
    }

    fn start_with(signature: ModelSignature, settings: ModelSettings, instances: usize, gated: bool, sleep: Duration) -> Harness {
        let log: Log = Arc::default();
        let (started_tx, started) = mpsc::unbounded_channel();
        let (gate_tx, gate_rx) = std::sync::mpsc::channel();
        let gate: Gate = Arc::new(Mutex::new(gate_rx));
        let backends: Vec<Box<dyn BackendInstance>> = (0..instances)
            .map(|_| {
                Box::new(Fake { log: log.clone(), started: started_tx.clone(), gate: gated.then(|| gate.clone()), sleep })
                    as Box<dyn BackendInstance>
            })
            .collect();
        let scheduler = Arc::new(Scheduler::start("fake".into(), &signature, settings, sluice::backend::Executor::Threads(backends), sluice::metrics::ModelMetrics::noop()));
        Harness { scheduler, log, started, gate: Some(gate_tx) }
    }

    fn batches(&self) -> Vec<Batch> {
        self.log.lock().unwrap().clone()
    }

    /// Every element of request `id` is `id` (so the backend can tell requests apart); `cols` values per row.
    fn submit(&self, id: i64, rows: usize, cols: usize, priority: Option<u32>, timeout: Option<Duration>) -> JoinHandle<Result<Vec<Tensor>, ScheduleError>> {
        let input = Tensor::from_slice(DataType::F32, vec![rows, cols], &vec![id as f32; rows * cols]).unwrap();
        self.submit_job(Job { inputs: vec![input], rows, priority, timeout, deadline: None })
    }

    fn submit_job(&self, job: Job) -> JoinHandle<Result<Vec<Tensor>, ScheduleError>> {
        let scheduler = self.scheduler.clone();
        tokio::spawn(async move { scheduler.infer(job).await })
    }

    /// Submits and waits until the request is counted in the queue (so submission order is queue order).
    async fn submit_queued(&self, id: i64, rows: usize, priority: Option<u32>) -> JoinHandle<Result<Vec<Tensor>, ScheduleError>> {
        let before = self.scheduler.depth().0;
        let handle = self.submit(id, rows, 2, priority, None);
        self.wait_depth(before + 1).await;
        handle
    }

    async fn wait_depth(&self, requests: usize) {
        let end = tokio::time::Instant::now() + LIMIT;
        while self.scheduler.depth().0 != requests {
            assert!(tokio::time::Instant::now() < end, "queue depth stuck at {:?}, waiting for {requests}", self.scheduler.depth());
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Waits until `n` more batches have started in the backend.
    async fn wait_started(&mut self, n: usize) {
        for _ in 0..n {
            tokio::time::timeout(LIMIT, self.started.recv()).await.expect("a batch started in time").expect("backend alive");
        }
    }

    /// Lets every held and future batch finish.
    fn open(&mut self) {
        self.gate.take();
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.open();
    }
}

async fn answer(handle: JoinHandle<Result<Vec<Tensor>, ScheduleError>>) -> Result<Vec<Tensor>, ScheduleError> {
    tokio::time::timeout(LIMIT, handle).await.expect("an answer in time").expect("task did not panic")
}

fn input_of(id: i64, rows: usize, cols: usize) -> Tensor {
    Tensor::from_slice(DataType::F32, vec![rows, cols], &vec![id as f32; rows * cols]).unwrap()
}

/// Keeps the fake backend's deliberate panics out of the test output (other threads' panics still print).
fn quiet_fake_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let fake = std::thread::current().name().is_some_and(|n| n.starts_with("sluice-fake"));
            let deliberate = info.payload().downcast_ref::<&str>().is_some_and(|m| m.contains("on purpose"));
            if !(fake && deliberate) {
                default(info);
            }
        }));
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_respect_max_batch_size_and_never_split_requests() {
    let mut s = settings(8);
    s.max_queue_delay = Duration::from_millis(1);
    let h = Harness::start(s, 1, false, Duration::from_millis(1));
    let mut rng = StdRng::seed_from_u64(7);
    let requests: Vec<(i64, usize)> = (1..=150).map(|id| (id, rng.random_range(1..=5))).collect();
    let handles: Vec<_> = requests.iter().map(|&(id, rows)| h.submit(id, rows, 3, None, None)).collect();
    for (handle, &(id, rows)) in handles.into_iter().zip(&requests) {
        let out = answer(handle).await.unwrap_or_else(|e| panic!("request {id}: {e}"));
        assert_eq!(out, vec![input_of(id, rows, 3)], "request {id} got someone else's rows");
    }
    let batches = h.batches();
    let mut seen = std::collections::HashMap::new();
    for b in &batches {
        assert!(b.row_ids.len() <= 8, "a batch of {} rows is over max_batch_size 8", b.row_ids.len());
        for (id, rows) in b.requests() {
            // Consecutive rows of one request: a request seen twice in a batch would have been split or interleaved.
            assert!(seen.insert(id, rows).is_none(), "request {id} appears in more than one place");
        }
    }
    assert_eq!(seen.len(), requests.len());
    for (id, rows) in &requests {
        assert_eq!(seen[id], *rows, "request {id} was split");
    }
    assert!(batches.iter().any(|b| b.requests().len() > 1), "150 concurrent requests never shared a batch");
    let stats = h.scheduler.stats().snapshot();
    assert_eq!(stats.execution_count as usize, batches.len());
    assert_eq!(stats.inference_count as usize, requests.iter().map(|r| r.1).sum::<usize>());
    assert_eq!(stats.success.count as usize, requests.len());
    assert!(stats.batch_sizes.keys().all(|&k| k <= 8));
    assert_eq!(h.scheduler.depth(), (0, 0));

    // A request larger than max_batch_size is refused, not split.
    let err = answer(h.submit(999, 9, 3, None, None)).await.unwrap_err();
    assert!(matches!(err, ScheduleError::TooManyRows { rows: 9, max: 8, .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_delay_dispatches_the_first_request_alone() {
    let mut h = Harness::start(settings(8), 1, true, Duration::ZERO);
    let first = h.submit(1, 1, 2, None, None);
    h.wait_started(1).await;
    assert_eq!(h.batches()[0].ids(), vec![1], "the first request went alone, without waiting for company");
    // While the instance is busy, requests queue and then form one batch.
    let rest = vec![h.submit_queued(2, 1, None).await, h.submit_queued(3, 2, None).await, h.submit_queued(4, 1, None).await];
    h.open();
    answer(first).await.unwrap();
    for r in rest {
        answer(r).await.unwrap();
    }
    let batches = h.batches();
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[1].requests(), vec![(2, 1), (3, 2), (4, 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_queue_delay_waits_for_a_full_batch() {
    let mut s = settings(4);
    s.max_queue_delay = Duration::from_secs(60);
    let h = Harness::start(s, 1, false, Duration::ZERO);
    let mut handles = vec![h.submit_queued(1, 1, None).await];
    for id in 2..=3 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        handles.push(h.submit_queued(id, 1, None).await);
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(h.batches().is_empty(), "an idle instance waited for a fuller batch");
    handles.push(h.submit(4, 1, 2, None, None));
    // Full: dispatched at once, long before the 60 s delay.
    for handle in handles {
        answer(handle).await.unwrap();
    }
    let batches = h.batches();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].ids(), vec![1, 2, 3, 4]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferred_batch_size_dispatches_early() {
    let mut s = settings(8);
    s.max_queue_delay = Duration::from_secs(60);
    s.preferred_batch_sizes = vec![3];
    let h = Harness::start(s, 1, false, Duration::ZERO);
    let a = h.submit_queued(1, 1, None).await;
    let b = h.submit_queued(2, 1, None).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(h.batches().is_empty(), "2 rows is not a preferred size: the batcher waits");
    let c = h.submit(3, 1, 2, None, None);
    for handle in [a, b, c] {
        answer(handle).await.unwrap();
    }
    let batches = h.batches();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].ids(), vec![1, 2, 3]);
    assert_eq!(h.scheduler.stats().snapshot().batch_sizes.keys().copied().collect::<Vec<_>>(), vec![3]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_of_different_shapes_never_share_a_batch() {
    let mut h = Harness::start(settings(8), 1, true, Duration::ZERO);
    let blocker = h.submit(100, 1, 2, None, None);
    h.wait_started(1).await;
    let mut handles = Vec::new();
    for (id, rows, cols) in [(1, 1, 2), (2, 1, 3), (3, 2, 2), (4, 1, 3), (5, 2, 3), (6, 1, 5)] {
        let before = h.scheduler.depth().0;
        handles.push((id, rows, cols, h.submit(id, rows, cols, None, None)));
        h.wait_depth(before + 1).await;
    }
    h.open();
    answer(blocker).await.unwrap();
    for (id, rows, cols, handle) in handles {
        assert_eq!(answer(handle).await.unwrap(), vec![input_of(id, rows, cols)]);
    }
    let batches = h.batches();
    let composition: Vec<(Vec<i64>, usize)> = batches.iter().map(|b| (b.ids(), b.shape[1])).collect();
    assert_eq!(composition, vec![(vec![100], 2), (vec![1, 3], 2), (vec![2, 4, 5], 3), (vec![6], 5)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn higher_priority_requests_run_first() {
    let mut s = settings(2);
    s.priority_levels = 3;
    s.default_priority = 2;
    let mut h = Harness::start(s, 1, true, Duration::ZERO);
    let blocker = h.submit(100, 1, 2, None, None);
    h.wait_started(1).await;
    let mut handles = Vec::new();
    // Low (3), default (2, also via priority 0), then high (1), all queued while the instance is held.
    for (id, priority) in [(1, Some(3)), (2, Some(3)), (3, None), (4, Some(0)), (5, Some(1)), (6, Some(1)), (7, Some(3))] {
        handles.push(h.submit_queued(id, 1, priority).await);
    }
    let err = answer(h.submit(8, 1, 2, Some(4), None)).await.unwrap_err();
    assert!(matches!(err, ScheduleError::BadPriority { given: 4, levels: 3, .. }), "{err}");
    h.open();
    answer(blocker).await.unwrap();
    for handle in handles {
        answer(handle).await.unwrap();
    }
    let order: Vec<Vec<i64>> = h.batches().iter().map(Batch::ids).collect();
    assert_eq!(order, vec![vec![100], vec![5, 6], vec![3, 4], vec![1, 2], vec![7]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_rejects_exactly_at_capacity() {
    let mut s = settings(8);
    s.queue_capacity = 4;
    let mut h = Harness::start(s, 1, true, Duration::ZERO);
    let blocker = h.submit(100, 1, 2, None, None);
    h.wait_started(1).await;
    let mut queued = Vec::new();
    for id in 1..=4 {
        queued.push(h.submit_queued(id, 1, None).await);
    }
    for id in 5..=7 {
        match answer(h.submit(id, 1, 2, None, None)).await {
            Err(ScheduleError::QueueFull { requests, max_requests, retry_after, .. }) => {
                assert_eq!((requests, max_requests), (4, 4));
                assert!(retry_after >= Duration::from_secs(1));
            }
            other => panic!("request {id}: expected QueueFull, got {other:?}"),
        }
    }
    assert_eq!(h.scheduler.stats().snapshot().rejected, 3);
    assert_eq!(h.scheduler.depth(), (4, 4));
    h.open();
    answer(blocker).await.unwrap();
    for handle in queued {
        answer(handle).await.unwrap();
    }
    let ids: Vec<i64> = h.batches().iter().flat_map(Batch::ids).collect();
    assert_eq!(ids, vec![100, 1, 2, 3, 4], "rejected requests never ran");
    // Room again once the queue drained.
    answer(h.submit(8, 1, 2, None, None)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_full_of_rows_rejects_exactly_at_max_rows() {
    let mut s = settings(8);
    s.queue_max_rows = 10;
    let mut h = Harness::start(s, 1, true, Duration::ZERO);
    let blocker = h.submit(100, 1, 2, None, None);
    h.wait_started(1).await;
    let mut queued = vec![h.submit_queued(1, 4, None).await, h.submit_queued(2, 4, None).await];
    match answer(h.submit(3, 3, 2, None, None)).await {
        Err(ScheduleError::QueueFull { rows: 8, max_rows: 10, .. }) => {}
        other => panic!("expected QueueFull on rows, got {other:?}"),
    }
    queued.push(h.submit_queued(4, 2, None).await);
    assert_eq!(h.scheduler.depth(), (3, 10));
    assert!(matches!(answer(h.submit(5, 1, 2, None, None)).await, Err(ScheduleError::QueueFull { .. })));
    h.open();
    answer(blocker).await.unwrap();
    for handle in queued {
        answer(handle).await.unwrap();
    }
    let ids: Vec<i64> = h.batches().iter().flat_map(Batch::ids).collect();
    assert_eq!(ids, vec![100, 1, 2, 4]);
    assert_eq!(h.scheduler.stats().snapshot().rejected, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_requests_are_answered_and_never_run() {
    let mut s = settings(8);
    s.queue_timeout = Duration::from_millis(300);
    let mut h = Harness::start(s, 1, true, Duration::ZERO);
    let blocker = h.submit(100, 1, 2, None, None);
    h.wait_started(1).await;
    let keep = h.submit_queued(1, 1, None).await;
    let short = h.submit(2, 1, 2, None, Some(Duration::from_millis(30)));
    let model_default = h.submit(3, 1, 2, None, None);
    // A longer request timeout does not raise the model's own.
    let capped = h.submit(4, 1, 2, None, Some(Duration::from_secs(3600)));
    match answer(short).await {
        Err(ScheduleError::TimedOut { timeout, .. }) => assert_eq!(timeout, Duration::from_millis(30)),
        other => panic!("expected TimedOut, got {other:?}"),
    }
    for handle in [model_default, capped] {
        match answer(handle).await {
            Err(ScheduleError::TimedOut { timeout, waited, .. }) => {
                assert_eq!(timeout, Duration::from_millis(300));
                assert!(waited >= Duration::from_millis(300), "waited {waited:?}");
            }
            other => panic!("expected TimedOut, got {other:?}"),
        }
    }
    // Request 1 also timed out by now (same 300 ms default); nothing is left queued.
    match answer(keep).await {
        Err(ScheduleError::TimedOut { .. }) => {}
        other => panic!("expected TimedOut, got {other:?}"),
    }
    assert_eq!(h.scheduler.depth(), (0, 0));
    h.open();
    answer(blocker).await.unwrap();
    let fresh = h.submit(5, 1, 2, None, None);
    answer(fresh).await.unwrap();
    let ids: Vec<i64> = h.batches().iter().flat_map(Batch::ids).collect();
    assert_eq!(ids, vec![100, 5], "timed-out requests never reach the backend");
    let stats = h.scheduler.stats().snapshot();
    assert_eq!(stats.timed_out, 4);
    assert_eq!(stats.success.count, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_clients_are_withdrawn_before_they_run() {
    let mut h = Harness::start(settings(8), 1, true, Duration::ZERO);
    let blocker = h.submit(100, 1, 2, None, None);
    h.wait_started(1).await;
    let gone_a = h.submit_queued(1, 3, None).await;
    let kept = h.submit_queued(2, 1, None).await;
    let gone_b = h.submit_queued(3, 2, None).await;
    assert_eq!(h.scheduler.depth(), (3, 6));
    gone_a.abort();
    gone_b.abort();
    let _ = gone_a.await;
    let _ = gone_b.await;
    h.wait_depth(1).await;
    assert_eq!(h.scheduler.depth(), (1, 1), "aborted requests left the queue counters");
    // A future dropped by the caller's own timeout is withdrawn too.
    let scheduler = h.scheduler.clone();
    let dropped = tokio::time::timeout(Duration::from_millis(20), scheduler.infer(Job { inputs: vec![input_of(4, 2, 2)], rows: 2, priority: None, timeout: None, deadline: None })).await;
    assert!(dropped.is_err(), "held instance: the request cannot have finished");
    assert_eq!(h.scheduler.depth(), (1, 1));
    h.open();
    answer(blocker).await.unwrap();
    answer(kept).await.unwrap();
    let ids: Vec<i64> = h.batches().iter().flat_map(Batch::ids).collect();
    assert_eq!(ids, vec![100, 2], "withdrawn requests never reach the backend");
    assert_eq!(h.scheduler.depth(), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_error_reaches_every_request_of_the_batch() {
    let mut h = Harness::start(settings(8), 1, true, Duration::ZERO);
    let blocker = h.submit(100, 1, 2, None, None);
    h.wait_started(1).await;
    let batch = vec![h.submit_queued(1, 1, None).await, h.submit_queued(FAIL as i64, 2, None).await, h.submit_queued(3, 1, None).await];
    h.open();
    answer(blocker).await.unwrap();
    for handle in batch {
        match answer(handle).await {
            Err(ScheduleError::Backend(m)) => assert!(m.contains("poisoned row"), "{m}"),
            other => panic!("expected the backend's error, got {other:?}"),
        }
    }
    assert_eq!(h.batches()[1].ids(), vec![1, FAIL as i64, 3], "the three shared one batch");
    let stats = h.scheduler.stats().snapshot();
    assert_eq!(stats.fail.count, 3);
    assert_eq!(stats.success.count, 1);
    // The next batch is fine.
    assert_eq!(answer(h.submit(4, 2, 2, None, None)).await.unwrap(), vec![input_of(4, 2, 2)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_backend_gives_errors_and_the_scheduler_keeps_working() {
    quiet_fake_panics();
    let mut h = Harness::start(settings(8), 1, true, Duration::ZERO);
    let blocker = h.submit(100, 1, 2, None, None);
    h.wait_started(1).await;
    let batch = vec![h.submit_queued(1, 1, None).await, h.submit_queued(PANIC as i64, 1, None).await];
    h.open();
    answer(blocker).await.unwrap();
    for handle in batch {
        match answer(handle).await {
            Err(ScheduleError::Backend(m)) => assert!(m.contains("panicked"), "{m}"),
            other => panic!("expected a backend error, got {other:?}"),
        }
    }
    // Same instance, still serving; a second panic is handled the same way.
    for id in 10..15 {
        assert_eq!(answer(h.submit(id, 1, 2, None, None)).await.unwrap(), vec![input_of(id, 1, 2)]);
    }
    assert!(matches!(answer(h.submit(PANIC as i64, 1, 2, None, None)).await, Err(ScheduleError::Backend(_))));
    assert_eq!(answer(h.submit(20, 3, 2, None, None)).await.unwrap(), vec![input_of(20, 3, 2)]);
    assert_eq!(h.scheduler.depth(), (0, 0));
}

/// Three inputs of different datatypes (BYTES included) come back to the right request, row for row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_are_split_back_to_their_requests() {
    let signature = ModelSignature {
        inputs: vec![spec("x", DataType::F32), spec("ids", DataType::I64), spec("text", DataType::Bytes)],
        outputs: vec![spec("x_out", DataType::F32), spec("ids_out", DataType::I64), spec("text_out", DataType::Bytes)],
    };
    let mut s = settings(16);
    s.max_queue_delay = Duration::from_millis(2);
    let h = Harness::start_with(signature, s, 1, false, Duration::from_millis(1));
    let mut rng = StdRng::seed_from_u64(11);
    let mut expected = Vec::new();
    let mut handles = Vec::new();
    for id in 1..=80i64 {
        let rows: usize = rng.random_range(1..=4);
        let x: Vec<f32> = (0..rows * 3).map(|i| if i % 3 == 0 { id as f32 } else { rng.random_range(-1e3f32..1e3) }).collect();
        let ids: Vec<i64> = (0..rows * 2).map(|_| rng.random()).collect();
        let text: Vec<String> = (0..rows * 2).map(|i| "é".repeat((id as usize + i) % 5) + &format!("r{id}-{i}")).collect();
        let inputs = vec![
            Tensor::from_slice(DataType::F32, vec![rows, 3], &x).unwrap(),
            Tensor::from_slice(DataType::I64, vec![rows, 2], &ids).unwrap(),
            Tensor::from_byte_strings(vec![rows, 2], &text).unwrap(),
        ];
        expected.push(inputs.clone());
        handles.push(h.submit_job(Job { inputs, rows, priority: None, timeout: None, deadline: None }));
    }
    for (i, handle) in handles.into_iter().enumerate() {
        let out = answer(handle).await.unwrap();
        assert_eq!(out, expected[i], "request {} got the wrong outputs", i + 1);
    }
    assert!(h.batches().iter().any(|b| b.requests().len() > 1), "some requests shared a batch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_run_two_batches_at_once() {
    let mut h = Harness::start(settings(8), 2, true, Duration::ZERO);
    let a = h.submit(1, 1, 2, None, None);
    h.wait_started(1).await;
    let b = h.submit(2, 1, 2, None, None);
    // Both held at the same time: the second instance took the second request while the first was busy.
    h.wait_started(1).await;
    h.open();
    answer(a).await.unwrap();
    answer(b).await.unwrap();
    assert_eq!(h.batches().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_without_batching_runs_one_request_at_a_time() {
    let mut h = Harness::start(settings(0), 1, true, Duration::ZERO);
    let blocker = h.submit(100, 1, 4, None, None);
    h.wait_started(1).await;
    let mut handles = Vec::new();
    for id in 1..=5 {
        handles.push(h.submit_queued(id, 1, None).await);
    }
    h.open();
    answer(blocker).await.unwrap();
    for handle in handles {
        answer(handle).await.unwrap();
    }
    let order: Vec<Vec<i64>> = h.batches().iter().map(Batch::ids).collect();
    assert_eq!(order, vec![vec![100], vec![1], vec![2], vec![3], vec![4], vec![5]]);
    assert_eq!(h.scheduler.stats().snapshot().batch_sizes.keys().copied().collect::<Vec<_>>(), vec![1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_refuses_new_requests_but_runs_queued_ones() {
    let mut h = Harness::start(settings(8), 1, true, Duration::ZERO);
    let blocker = h.submit(100, 1, 2, None, None);
    h.wait_started(1).await;
    let queued = h.submit_queued(1, 1, None).await;
    h.scheduler.close();
    assert!(matches!(answer(h.submit(2, 1, 2, None, None)).await, Err(ScheduleError::ShuttingDown(_))));
    h.open();
    answer(blocker).await.unwrap();
    answer(queued).await.unwrap();
    let ids: Vec<i64> = h.batches().iter().flat_map(Batch::ids).collect();
    assert_eq!(ids, vec![100, 1]);
}

/// A request with more rows than a preferred batch size, alone in the queue of an idle instance, must still run.
/// (`Queue::form` picks the largest preferred size <= the rows available as its target; when that is smaller than the
/// head request, nothing fits, the batch comes out empty and the batcher sleeps until the next admission.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_larger_than_a_preferred_size_still_runs() {
    let mut s = settings(8);
    s.preferred_batch_sizes = vec![2];
    s.queue_timeout = Duration::from_secs(2);
    let h = Harness::start(s, 1, false, Duration::ZERO);
    let result = answer(h.submit(1, 4, 2, None, None)).await;
    assert_eq!(result, Ok(vec![input_of(1, 4, 2)]), "a 4-row request with preferred_batch_sizes = [2] on an idle instance");
}

/// An idle instance waiting out `max_queue_delay` for company must not let the oldest request pass its own deadline:
/// a request whose timeout is shorter than the delay should be dispatched (alone) rather than answered 504.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_fuller_batch_does_not_outlast_a_request_deadline() {
    let mut s = settings(8);
    s.max_queue_delay = Duration::from_millis(500);
    let h = Harness::start(s, 1, false, Duration::ZERO);
    let result = answer(h.submit(1, 1, 2, None, Some(Duration::from_millis(100)))).await;
    assert_eq!(result, Ok(vec![input_of(1, 1, 2)]), "idle instance, 500 ms max_queue_delay, 100 ms request timeout");
}

/// Issue 16's defect: Tokio's timer rounded every batching wait up to the next millisecond (a 3 ms delay became ~4.1 ms
/// of queue time). A lone request now waits the delay to within a fraction of a millisecond: the median over ten lone
/// requests must stay under delay + 0.9 ms (generous for a busy CI machine, and failing at the old overshoot).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batching_wait_ends_on_time() {
    let delay = Duration::from_millis(3);
    let mut s = settings(8);
    s.max_queue_delay = delay;
    let h = Harness::start(s, 1, false, Duration::ZERO);
    let mut waits = Vec::new();
    for id in 1..=10 {
        let before = h.scheduler.stats().snapshot().queue;
        answer(h.submit(id, 1, 2, None, None)).await.unwrap();
        let after = h.scheduler.stats().snapshot().queue;
        assert_eq!(after.count, before.count + 1);
        waits.push(Duration::from_nanos(after.ns - before.ns));
    }
    waits.sort();
    assert!(waits[0] >= delay - Duration::from_micros(100), "a lone request ran before its delay: {waits:?}");
    assert!(waits[5] < delay + Duration::from_micros(900), "batching waits overshot the 3 ms delay: {waits:?}");
    assert_eq!(h.batches().len(), 10);
}

/// With `wait_when_alone = false` (the default), a lone request after a lone batch is not held for company that is
/// not coming; once requests do arrive together, the delay applies again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_request_is_not_held_for_company() {
    let mut s = settings(8);
    s.max_queue_delay = Duration::from_secs(60);
    s.wait_when_alone = false;
    let mut h = Harness::start(s, 1, true, Duration::ZERO);
    h.open();
    for id in 1..=3 {
        // Far inside the 60 s delay: each lone request runs at once.
        let out = tokio::time::timeout(Duration::from_secs(5), h.submit(id, 1, 2, None, None)).await;
        assert!(out.is_ok(), "lone request {id} was held for the batching delay");
    }
    assert_eq!(h.batches().len(), 3);
    // Two requests queued together form a batch of two (and the next lone request waits for company again).
    let mut h = Harness::start(
        ModelSettings { max_queue_delay: Duration::from_millis(300), wait_when_alone: false, ..settings(2) },
        1,
        true,
        Duration::ZERO,
    );
    let first = h.submit(1, 1, 2, None, None);
    h.wait_started(1).await;
    let pair = vec![h.submit_queued(2, 1, None).await, h.submit_queued(3, 1, None).await];
    h.open();
    answer(first).await.unwrap();
    for r in pair {
        answer(r).await.unwrap();
    }
    let started = std::time::Instant::now();
    answer(h.submit(4, 1, 2, None, None)).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(250), "after a batch of two, a lone request waits the delay again");
    let batches = h.batches();
    assert_eq!(batches.iter().map(Batch::ids).collect::<Vec<_>>(), vec![vec![1], vec![2, 3], vec![4]]);
}

//! Running formed batches: instance threads (each owns one blocking backend instance and runs the batches the batcher
//! hands it, off the async runtime) or, for an async backend, one task per batch. Both report and answer the same way.

use super::queue::{Entry, Formed, Queue};
use super::stats::{BatchTiming, ModelStats};
use super::ScheduleError;
use crate::backend::{AsyncBackend, BackendInstance, RawAnswer, RawInfer};
use crate::metrics::ModelMetrics;
use crate::scaling::LoadTracker;
use crate::tensor::Tensor;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::OwnedSemaphorePermit;

pub struct BatchJob {
    pub entries: Vec<Entry>,
    pub formed: Instant,
    /// Released when the batch is done, which lets the batcher form the next one.
    pub _permit: OwnedSemaphorePermit,
}

/// Hands batches from the batcher task to the instance threads.
///
/// A mutex and a condition variable rather than a channel that spins before it sleeps: on small machines the instance
/// threads share cores with the async runtime, and a receiver spinning or yielding there only delays the sender.
#[derive(Default)]
pub struct Handoff {
    state: Mutex<HandoffState>,
    ready: Condvar,
}

#[derive(Default)]
struct HandoffState {
    jobs: VecDeque<BatchJob>,
    closed: bool,
    /// Instance threads still taking jobs.
    takers: usize,
}

impl Handoff {
    /// Queues a job for the next free instance thread; gives it back when no thread is left to run it.
    pub fn push(&self, job: BatchJob) -> Result<(), BatchJob> {
        let mut state = self.state.lock();
        if state.closed || state.takers == 0 {
            return Err(job);
        }
        state.jobs.push_back(job);
        drop(state);
        self.ready.notify_one();
        Ok(())
    }

    /// Blocks until a job arrives; `None` once closed and drained.
    fn pop(&self) -> Option<BatchJob> {
        let mut state = self.state.lock();
        loop {
            if let Some(job) = state.jobs.pop_front() {
                return Some(job);
            }
            if state.closed {
                return None;
            }
            self.ready.wait(&mut state);
        }
    }

    /// No more jobs: instance threads finish what is queued and exit.
    pub fn close(&self) {
        self.state.lock().closed = true;
        self.ready.notify_all();
    }
}

/// Lowers the calling thread's CPU priority (Linux: per-thread niceness). Best effort: failure is logged, not fatal.
pub fn lower_priority(nice: i32) {
    if nice <= 0 {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on the calling thread's own id.
        let result = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, nice)
        };
        if result != 0 {
            tracing::warn!(nice, error = %std::io::Error::last_os_error(), "cannot lower the thread's priority");
        }
    }
}

/// What a batch reports to, whichever executor runs it.
#[derive(Clone)]
pub struct Observers {
    pub stats: Arc<ModelStats>,
    pub load: Arc<LoadTracker>,
    pub metrics: ModelMetrics,
}

/// Where the batcher sends formed batches.
pub enum Dispatch {
    /// To the instance threads.
    Threads(Arc<Handoff>),
    /// To tasks of the async runtime, one per batch.
    Async(AsyncRunner),
}

impl Dispatch {
    /// Starts `job`; gives it back when nothing is left to run it.
    pub fn send(&self, job: BatchJob) -> Result<(), BatchJob> {
        match self {
            Dispatch::Threads(handoff) => handoff.push(job),
            Dispatch::Async(runner) => {
                runner.spawn(job);
                Ok(())
            }
        }
    }

    /// No more batches will come.
    pub fn close(&self) {
        if let Dispatch::Threads(handoff) = self {
            handoff.close();
        }
    }
}

/// Requests and rows an async backend is running now (sent upstream, not answered yet).
#[derive(Default)]
pub struct Outstanding {
    requests: std::sync::atomic::AtomicUsize,
    rows: std::sync::atomic::AtomicUsize,
}

impl Outstanding {
    pub fn read(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering::Acquire;
        (self.requests.load(Acquire), self.rows.load(Acquire))
    }

    fn add(&self, requests: usize, rows: usize) {
        use std::sync::atomic::Ordering::AcqRel;
        self.requests.fetch_add(requests, AcqRel);
        self.rows.fetch_add(rows, AcqRel);
    }

    fn sub(&self, requests: usize, rows: usize) {
        use std::sync::atomic::Ordering::AcqRel;
        self.requests.fetch_sub(requests, AcqRel);
        self.rows.fetch_sub(rows, AcqRel);
    }
}

/// Runs the batches of an [`AsyncBackend`] as tasks; the batcher's permits bound how many run at once.
#[derive(Clone)]
pub struct AsyncRunner {
    /// What is running now, for the queue depth that scaling sees.
    pub outstanding: Arc<Outstanding>,
    backend: Arc<dyn AsyncBackend>,
    observers: Observers,
    output_count: usize,
    /// Indexes of the load tracker's "instances" not in use: each running batch holds one, so busy time is counted
    /// per concurrent slot as it is per instance thread.
    free_slots: Arc<Mutex<Vec<usize>>>,
}

impl AsyncRunner {
    pub fn new(backend: Arc<dyn AsyncBackend>, concurrency: usize, observers: Observers, output_count: usize) -> AsyncRunner {
        let free_slots = Arc::new(Mutex::new((0..concurrency).rev().collect()));
        AsyncRunner { outstanding: Arc::default(), backend, observers, output_count, free_slots }
    }

    /// Runs one request in the caller's task, without a trip through the batcher: for models that do not batch,
    /// when nothing is queued and a slot is free (the caller holds `permit`, one of the batcher's). It is recorded
    /// like a batch of one.
    pub async fn run_one(&self, inputs: Vec<Tensor>, rows: usize, deadline: Option<Instant>, permit: OwnedSemaphorePermit) -> Result<Vec<Tensor>, ScheduleError> {
        let output_count = self.output_count;
        self.run_inline(rows, permit, async move {
            let outputs = guarded(self.backend.infer(inputs, deadline)).await?;
            if outputs.len() == output_count {
                Ok(outputs)
            } else {
                Err(backend_err(format!("the backend returned {} outputs, expected {output_count}", outputs.len())))
            }
        })
        .await
    }

    /// Whether [`AsyncRunner::forward_one`] can be used: the backend passes raw V2 HTTP bodies on.
    pub fn can_forward(&self) -> bool {
        self.backend.can_forward()
    }

    /// [`AsyncRunner::run_one`] for a raw V2 HTTP body that the backend passes on undecoded (one row).
    pub async fn forward_one(&self, request: RawInfer, permit: OwnedSemaphorePermit) -> Result<RawAnswer, ScheduleError> {
        self.run_inline(1, permit, async move {
            use futures_util::FutureExt;
            match AssertUnwindSafe(self.backend.forward(request)).catch_unwind().await {
                Ok(result) => result.map_err(ScheduleError::from_backend),
                Err(_) => Err(backend_err("the backend panicked while forwarding the request".into())),
            }
        })
        .await
    }

    /// Runs `work` in the caller's task as a batch of `rows`: holds a slot, counts it outstanding, records it.
    async fn run_inline<T>(&self, rows: usize, permit: OwnedSemaphorePermit, work: impl Future<Output = Result<T, ScheduleError>>) -> Result<T, ScheduleError> {
        let slot = self.free_slots.lock().pop().unwrap_or(0);
        let now = Instant::now();
        self.observers.load.batch_started(slot, now);
        self.outstanding.add(1, rows);
        self.observers.metrics.queue_duration.record(0.0);
        // Gives the slot back however the request ends (also when the caller's future is dropped mid-flight).
        let guard = SlotGuard { runner: self, slot, rows, _permit: permit };
        let result = work.await;
        guard.finish(now.elapsed(), result.is_ok());
        result
    }

    fn spawn(&self, job: BatchJob) {
        let backend = self.backend.clone();
        let observers = self.observers.clone();
        let output_count = self.output_count;
        let free_slots = self.free_slots.clone();
        let outstanding = self.outstanding.clone();
        // The batcher holds a permit per slot, so a slot is always free here; 0 is a harmless fallback.
        let slot = free_slots.lock().pop().unwrap_or(0);
        tokio::spawn(async move {
            let BatchJob { entries, formed, _permit } = job;
            let begun = Begun::new(&entries, formed, &observers, slot);
            let counted = (entries.len(), begun.total_rows);
            outstanding.add(counted.0, counted.1);
            let mut timing = begun.timing;
            let result = async {
                let started = Instant::now();
                let inputs = join_inputs(&entries)?;
                let ran = Instant::now();
                timing.input = ran - started;
                let outputs = guarded(backend.infer(inputs, batch_deadline(&entries))).await;
                let done = Instant::now();
                timing.infer = done - ran;
                let per_request = split_outputs(outputs?, &begun.rows, output_count);
                timing.output = done.elapsed();
                per_request
            }
            .await;
            begun.finish(entries, result, timing, &observers);
            outstanding.sub(counted.0, counted.1);
            free_slots.lock().push(slot);
        });
    }
}

/// How long a batch's answer is waited for: until its last request's client gives up; none when any request has no
/// deadline of its own.
fn batch_deadline(entries: &[Entry]) -> Option<Instant> {
    let mut latest: Option<Instant> = None;
    for entry in entries {
        let deadline = entry.client_deadline?;
        latest = Some(latest.map_or(deadline, |l| l.max(deadline)));
    }
    latest
}

/// An async backend's answer, with a panic inside it turned into an error for the batch's requests (the slot and
/// its accounting are released as after any other failure).
async fn guarded(run: crate::backend::BackendFuture) -> Result<Vec<Tensor>, ScheduleError> {
    use futures_util::FutureExt;
    match AssertUnwindSafe(run).catch_unwind().await {
        Ok(result) => result.map_err(ScheduleError::from_backend),
        Err(_) => Err(backend_err("the backend panicked while running the batch".into())),
    }
}

/// The slot of a request run by [`AsyncRunner::run_one`]: records it and frees the slot when dropped.
struct SlotGuard<'a> {
    runner: &'a AsyncRunner,
    slot: usize,
    rows: usize,
    _permit: OwnedSemaphorePermit,
}

impl SlotGuard<'_> {
    fn finish(self, infer: std::time::Duration, ok: bool) {
        let observers = &self.runner.observers;
        observers.metrics.compute_duration.record(infer.as_secs_f64());
        observers.metrics.batch_size.record(self.rows as f64);
        observers.stats.record_batch(1, self.rows, BatchTiming { infer, ..BatchTiming::default() }, ok);
        // Drop frees the slot.
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        self.runner.observers.load.batch_finished(self.slot, self.rows, Instant::now());
        self.runner.outstanding.sub(1, self.rows);
        self.runner.free_slots.lock().push(self.slot);
    }
}

/// What an instance thread needs besides its instance.
pub struct InstanceThread {
    pub name: String,
    pub handoff: Arc<Handoff>,
    /// The model's queue: the thread takes its next batch from it itself when one is ready (see [`spawn`]).
    pub queue: Arc<Queue>,
    pub observers: Observers,
    /// The model's instance number.
    pub index: usize,
    pub output_count: usize,
    pub nice: i32,
}

/// Starts the thread that owns `instance` and runs the jobs of its handoff until it closes.
///
/// After each batch the thread asks the queue for the next one itself and runs it at once when one is ready (a full or
/// preferred batch, or requests whose delay is over), keeping the batcher's permit; only when none is ready does it
/// give the permit back and wait for the batcher, which does the waiting for fuller batches. Under load that takes
/// the async runtime out of the loop between batches: before, every batch needed the batcher task to run, and under a
/// rejection storm that task queued behind thousands of connection tasks on the runtime's workers while the instance
/// sat idle (goodput fell to 0.09 of saturation with `wrk -c512` on `wide`, docs/BENCHMARKS.md). It also saves two
/// wake-ups per batch at saturation.
pub fn spawn(mut instance: Box<dyn BackendInstance>, thread: InstanceThread) {
    let InstanceThread { name, handoff, queue, observers, index, output_count, nice } = thread;
    handoff.state.lock().takers += 1;
    let thread_handoff = handoff.clone();
    let spawned = std::thread::Builder::new().name(format!("sluice-{name}")).spawn(move || {
        lower_priority(nice);
        while let Some(mut job) = thread_handoff.pop() {
            loop {
                let permit = run_batch(instance.as_mut(), job, &observers, index, output_count);
                match queue.form(Instant::now()) {
                    Formed::Batch(entries) => job = BatchJob { entries, formed: Instant::now(), _permit: permit },
                    // Dropping the permit hands the next batch (and any wait for it) to the batcher.
                    Formed::Empty | Formed::WaitUntil(_) => break,
                }
            }
        }
        thread_handoff.state.lock().takers -= 1;
    });
    if let Err(e) = spawned {
        handoff.state.lock().takers -= 1;
        tracing::error!(instance = %name, error = %e, "cannot start an instance thread");
    }
}

/// A batch that has started: what its end must report.
struct Begun {
    index: usize,
    rows: Vec<usize>,
    total_rows: usize,
    timing: BatchTiming,
}

impl Begun {
    /// Records each request's queue wait and marks the instance (or slot) `index` busy.
    fn new(entries: &[Entry], formed: Instant, observers: &Observers, index: usize) -> Begun {
        observers.load.batch_started(index, Instant::now());
        let rows: Vec<usize> = entries.iter().map(|e| e.rows).collect();
        let total_rows = rows.iter().sum();
        let mut queue_total = std::time::Duration::ZERO;
        for e in entries {
            let waited = formed.saturating_duration_since(e.enqueued);
            observers.metrics.queue_duration.record(waited.as_secs_f64());
            queue_total += waited;
        }
        Begun { index, rows, total_rows, timing: BatchTiming { queue: queue_total, ..BatchTiming::default() } }
    }

    /// Records the batch and gives every request its one answer.
    fn finish(self, entries: Vec<Entry>, result: Result<Vec<Vec<Tensor>>, ScheduleError>, timing: BatchTiming, observers: &Observers) {
        observers.load.batch_finished(self.index, self.total_rows, Instant::now());
        observers.metrics.compute_duration.record((timing.input + timing.infer + timing.output).as_secs_f64());
        observers.metrics.batch_size.record(self.total_rows as f64);
        observers.stats.record_batch(entries.len(), self.total_rows, timing, result.is_ok());
        match result {
            Ok(per_request) => {
                for (entry, outputs) in entries.into_iter().zip(per_request) {
                    let _ = entry.reply.send(Ok(outputs));
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, batch = entries.len(), "batch failed");
                for entry in entries {
                    let _ = entry.reply.send(Err(err.clone()));
                }
            }
        }
    }
}

/// Runs a batch and answers its requests; gives back the batcher's permit it held.
fn run_batch(instance: &mut dyn BackendInstance, job: BatchJob, observers: &Observers, index: usize, output_count: usize) -> OwnedSemaphorePermit {
    let BatchJob { entries, formed, _permit } = job;
    let begun = Begun::new(&entries, formed, observers, index);
    let mut timing = begun.timing;
    let result = execute(instance, &entries, &begun.rows, output_count, &mut timing);
    begun.finish(entries, result, timing, observers);
    _permit
}

fn backend_err(message: String) -> ScheduleError {
    ScheduleError::Backend(message)
}

/// Joins the requests' inputs along dim 0 (a single request's inputs are shared, not copied).
fn join_inputs(entries: &[Entry]) -> Result<Vec<Tensor>, ScheduleError> {
    let input_count = entries.first().map_or(0, |e| e.inputs.len());
    (0..input_count)
        .map(|i| Tensor::concat(&entries.iter().map(|e| &e.inputs[i]).collect::<Vec<_>>()))
        .collect::<Result<_, _>>()
        .map_err(|e| backend_err(format!("cannot form batch: {e}")))
}

/// Checks the batch's outputs and splits them back per request (slices, no copies).
fn split_outputs(outputs: Vec<Tensor>, rows: &[usize], output_count: usize) -> Result<Vec<Vec<Tensor>>, ScheduleError> {
    if outputs.len() != output_count {
        return Err(backend_err(format!("the backend returned {} outputs, expected {output_count}", outputs.len())));
    }
    if rows.len() == 1 {
        return Ok(vec![outputs]);
    }
    let mut per_request: Vec<Vec<Tensor>> = (0..rows.len()).map(|_| Vec::with_capacity(outputs.len())).collect();
    for output in &outputs {
        let pieces = output.split(rows).map_err(|e| backend_err(format!("cannot split the batch's outputs: {e}")))?;
        for (slot, piece) in per_request.iter_mut().zip(pieces) {
            slot.push(piece);
        }
    }
    Ok(per_request)
}

/// Joins the inputs, runs them on a blocking instance, checks the outputs and splits them back, timing each phase.
fn execute(
    instance: &mut dyn BackendInstance,
    entries: &[Entry],
    rows: &[usize],
    output_count: usize,
    timing: &mut BatchTiming,
) -> Result<Vec<Vec<Tensor>>, ScheduleError> {
    let started = Instant::now();
    let inputs = join_inputs(entries)?;
    let ran = Instant::now();
    timing.input = ran - started;
    let outputs = catch_unwind(AssertUnwindSafe(|| instance.infer(&inputs)));
    let done = Instant::now();
    timing.infer = done - ran;
    let outputs = outputs
        .map_err(|_| backend_err("the backend panicked while running the batch".into()))?
        .map_err(ScheduleError::from_backend)?;
    let per_request = split_outputs(outputs, rows, output_count);
    timing.output = done.elapsed();
    per_request
}

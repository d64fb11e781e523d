//! Instance threads: each owns one backend instance and runs the batches the batcher hands it, off the async runtime.

use super::queue::Entry;
use super::stats::{BatchTiming, ModelStats};
use super::ScheduleError;
use crate::backend::BackendInstance;
use crate::metrics::ModelMetrics;
use crate::scaling::LoadTracker;
use crate::tensor::Tensor;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
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
fn lower_priority(nice: i32) {
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
            tracing::warn!(nice, error = %std::io::Error::last_os_error(), "cannot lower the instance thread's priority");
        }
    }
}

/// What an instance thread reports each batch to.
pub struct Observers {
    pub stats: Arc<ModelStats>,
    pub load: Arc<LoadTracker>,
    pub metrics: ModelMetrics,
    /// This instance's index among the model's instances.
    pub index: usize,
}

/// Starts the thread that owns `instance` and runs the jobs of `handoff` until it closes.
pub fn spawn(
    name: String,
    mut instance: Box<dyn BackendInstance>,
    handoff: Arc<Handoff>,
    observers: Observers,
    output_count: usize,
    nice: i32,
) {
    handoff.state.lock().takers += 1;
    let thread_handoff = handoff.clone();
    let spawned = std::thread::Builder::new().name(format!("sluice-{name}")).spawn(move || {
        lower_priority(nice);
        while let Some(job) = thread_handoff.pop() {
            run_batch(instance.as_mut(), job, &observers, output_count);
        }
        thread_handoff.state.lock().takers -= 1;
    });
    if let Err(e) = spawned {
        handoff.state.lock().takers -= 1;
        tracing::error!(instance = %name, error = %e, "cannot start an instance thread");
    }
}

fn run_batch(instance: &mut dyn BackendInstance, job: BatchJob, observers: &Observers, output_count: usize) {
    let BatchJob { entries, formed, _permit } = job;
    let started = Instant::now();
    observers.load.batch_started(observers.index, started);
    let rows: Vec<usize> = entries.iter().map(|e| e.rows).collect();
    let total_rows: usize = rows.iter().sum();
    let mut queue_total = std::time::Duration::ZERO;
    for e in &entries {
        let waited = formed.saturating_duration_since(e.enqueued);
        observers.metrics.queue_duration.record(waited.as_secs_f64());
        queue_total += waited;
    }
    let mut timing = BatchTiming { queue: queue_total, ..BatchTiming::default() };
    let result = execute(instance, &entries, &rows, output_count, &mut timing);
    observers.load.batch_finished(observers.index, total_rows, Instant::now());
    observers.metrics.compute_duration.record((timing.input + timing.infer + timing.output).as_secs_f64());
    observers.metrics.batch_size.record(total_rows as f64);
    observers.stats.record_batch(entries.len(), total_rows, timing, result.is_ok());
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

/// Joins the inputs, runs them, checks the outputs and splits them back per request, timing each phase.
fn execute(
    instance: &mut dyn BackendInstance,
    entries: &[Entry],
    rows: &[usize],
    output_count: usize,
    timing: &mut BatchTiming,
) -> Result<Vec<Vec<Tensor>>, ScheduleError> {
    let backend_err = |m: String| ScheduleError::Backend(m);
    let started = Instant::now();
    let input_count = entries.first().map_or(0, |e| e.inputs.len());
    let inputs: Vec<Tensor> = (0..input_count)
        .map(|i| Tensor::concat(&entries.iter().map(|e| &e.inputs[i]).collect::<Vec<_>>()))
        .collect::<Result<_, _>>()
        .map_err(|e| backend_err(format!("cannot form batch: {e}")))?;
    let ran = Instant::now();
    timing.input = ran - started;
    let outputs = catch_unwind(AssertUnwindSafe(|| instance.infer(&inputs)));
    let done = Instant::now();
    timing.infer = done - ran;
    let outputs = outputs
        .map_err(|_| backend_err("the backend panicked while running the batch".into()))?
        .map_err(|e| backend_err(e.to_string()))?;
    if outputs.len() != output_count {
        return Err(backend_err(format!("the backend returned {} outputs, expected {output_count}", outputs.len())));
    }
    if entries.len() == 1 {
        timing.output = done.elapsed();
        return Ok(vec![outputs]);
    }
    let mut per_request: Vec<Vec<Tensor>> = (0..entries.len()).map(|_| Vec::with_capacity(outputs.len())).collect();
    for output in &outputs {
        let pieces = output.split(rows).map_err(|e| backend_err(format!("cannot split the batch's outputs: {e}")))?;
        for (slot, piece) in per_request.iter_mut().zip(pieces) {
            slot.push(piece);
        }
    }
    timing.output = done.elapsed();
    Ok(per_request)
}

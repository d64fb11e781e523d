//! Per-model scheduling: a bounded priority queue, the dynamic batcher that groups queued requests along dim 0, and the
//! instance threads that run batches. This is the only place that groups requests.
//!
//! The path of one request: [`Scheduler::infer`] admits it into the queue (or rejects it at once when the queue is full),
//! the batcher task forms a batch as soon as an instance is idle (waiting up to `max_queue_delay` for a fuller one when the
//! model asks for it), an instance thread runs the batch and splits the outputs back, and each caller gets exactly one answer.

mod batcher;
mod queue;
pub mod stats;
mod timer;
mod worker;

use crate::backend::{BackendError, Executor, ModelSignature, RawAnswer, RawInfer, UpstreamError};
use crate::config::ModelSettings;
use crate::metrics::{ModelMetrics, RejectReason};
use crate::scaling::LoadTracker;
use crate::tensor::Tensor;
use queue::{Admission, Entry, Queue, Ticket};
pub use worker::lower_priority as lower_thread_priority;
use stats::ModelStats;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Why a request did not get outputs from the scheduler.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    #[error("model '{model}' is overloaded: its queue holds {requests} requests / {rows} rows (limits {max_requests} / {max_rows}); retry later")]
    QueueFull { model: String, requests: usize, rows: usize, max_requests: usize, max_rows: usize, retry_after: Duration },
    #[error("request waited {waited:?} in the queue of model '{model}', over its timeout of {timeout:?}, and was not run")]
    TimedOut { model: String, waited: Duration, timeout: Duration },
    #[error("model '{0}' is shutting down")]
    ShuttingDown(String),
    #[error("{rows} rows is over model '{model}' max_batch_size of {max}")]
    TooManyRows { model: String, rows: usize, max: usize },
    #[error("priority {given} is not a level of model '{model}' (1 = highest .. {levels})")]
    BadPriority { model: String, given: u32, levels: u32 },
    #[error("{0}")]
    Backend(String),
    #[error(transparent)]
    Upstream(UpstreamError),
    #[error("the request was lost by the scheduler (internal error)")]
    Lost,
}

impl ScheduleError {
    /// Keeps an upstream's failure as it is (its kind decides the client's status); other backend errors are text.
    pub fn from_backend(err: BackendError) -> ScheduleError {
        match err {
            BackendError::Upstream(e) => ScheduleError::Upstream(e),
            other => ScheduleError::Backend(other.to_string()),
        }
    }
}

/// What one request asks of the scheduler.
pub struct Job {
    /// Inputs in the model's order (see [`ModelSignature::validate`]).
    pub inputs: Vec<Tensor>,
    pub rows: usize,
    /// 1 = highest; `None` = the model's default level.
    pub priority: Option<u32>,
    /// Queue timeout requested by the client; only lowers the model's own.
    pub timeout: Option<Duration>,
    /// When the client stops waiting for the whole request (gRPC's `grpc-timeout`), for backends that call out: a
    /// remote pool bounds its attempts and retries by it and tells gRPC workers. `None`: no client deadline.
    pub deadline: Option<Instant>,
}

/// The scheduler of one model version. Cheap to share; dropping the last handle stops its batcher and threads.
pub struct Scheduler {
    queue: Arc<Queue>,
    /// The batcher's slots (instances or async concurrency).
    permits: Arc<tokio::sync::Semaphore>,
    /// For async backends of models that do not batch: requests run in the caller's task when nothing is queued
    /// and a slot is free, skipping two task hand-offs (the proxy case).
    direct: Option<worker::AsyncRunner>,
    /// What an async backend is running (see [`Scheduler::depth`]).
    outstanding: Option<Arc<worker::Outstanding>>,
    stats: Arc<ModelStats>,
    load: Arc<LoadTracker>,
    metrics: ModelMetrics,
}

impl Scheduler {
    /// Starts the batcher task (on the current Tokio runtime) and, for blocking instances, one thread per instance.
    /// `metrics` receives queue waits, batch sizes, compute times and rejections ([`ModelMetrics::noop`] records
    /// nothing).
    pub fn start(model: String, signature: &ModelSignature, settings: ModelSettings, executor: Executor, metrics: ModelMetrics) -> Scheduler {
        let concurrency = executor.concurrency();
        let stats = Arc::new(ModelStats::default());
        let load = Arc::new(LoadTracker::new(concurrency));
        let queue = Arc::new(Queue::new(model.clone(), settings.clone()));
        let permits = Arc::new(tokio::sync::Semaphore::new(concurrency));
        let observers = worker::Observers { stats: stats.clone(), load: load.clone(), metrics: metrics.clone() };
        let output_count = signature.outputs.len();
        let dispatch = match executor {
            Executor::Threads(instances) => {
                let handoff = Arc::new(worker::Handoff::default());
                for (index, instance) in instances.into_iter().enumerate() {
                    let thread = worker::InstanceThread {
                        name: format!("{model}#{index}"),
                        handoff: handoff.clone(),
                        queue: queue.clone(),
                        observers: observers.clone(),
                        index,
                        output_count,
                        nice: settings.instance_thread_nice,
                    };
                    worker::spawn(instance, thread);
                }
                worker::Dispatch::Threads(handoff)
            }
            Executor::Async { backend, concurrency } => {
                worker::Dispatch::Async(worker::AsyncRunner::new(backend, concurrency, observers, output_count))
            }
        };
        let outstanding = match &dispatch {
            worker::Dispatch::Async(runner) => Some(runner.outstanding.clone()),
            worker::Dispatch::Threads(_) => None,
        };
        let direct = match &dispatch {
            worker::Dispatch::Async(runner) if settings.max_batch_size == 0 => Some(runner.clone()),
            _ => None,
        };
        tokio::spawn(batcher::run(queue.clone(), permits.clone(), dispatch));
        Scheduler { queue, permits, direct, outstanding, stats, load, metrics }
    }

    pub fn stats(&self) -> &ModelStats {
        &self.stats
    }

    /// The counters behind the scaling signal.
    pub fn load(&self) -> &Arc<LoadTracker> {
        &self.load
    }

    pub fn settings(&self) -> &ModelSettings {
        self.queue.settings()
    }

    /// Requests and rows waiting now — for async backends (remote upstreams) also those sent and not answered yet,
    /// so a gateway's depth shows the load on the workers behind it, not only its own queue.
    pub fn depth(&self) -> (usize, usize) {
        let (requests, rows) = self.queue.depth();
        match &self.outstanding {
            Some(outstanding) => {
                let (running, running_rows) = outstanding.read();
                (requests + running, rows + running_rows)
            }
            None => (requests, rows),
        }
    }

    /// Stops admitting; what is queued still runs. Idempotent.
    pub fn close(&self) {
        self.queue.close();
    }

    /// The queue level of a request's `priority` parameter (`None` or 0: the model's default), or why it is refused.
    /// Checked before the response cache too, so a bad priority is refused the same way whether or not it would hit,
    /// and never becomes the answer of identical requests sharing its execution.
    pub fn priority_level(&self, priority: Option<u32>) -> Result<u32, ScheduleError> {
        let settings = self.queue.settings();
        match priority {
            None | Some(0) => Ok(settings.default_priority),
            Some(p) if p <= settings.priority_levels => Ok(p),
            Some(p) => Err(ScheduleError::BadPriority { model: self.queue.model().into(), given: p, levels: settings.priority_levels }),
        }
    }

    /// Passes a raw V2 HTTP body on to the backend undecoded, when the model allows it: a backend that forwards, no
    /// batching, nothing queued and a slot free (as for the inline path of [`Scheduler::infer`]). `None`: none of
    /// that holds, and the request takes the decoded path.
    pub async fn forward(&self, request: &RawInfer) -> Option<Result<RawAnswer, ScheduleError>> {
        let direct = self.direct.as_ref().filter(|d| d.can_forward())?;
        let permit = self.inline_permit()?;
        self.load.arrived(1);
        let _in_flight = self.load.in_flight();
        Some(direct.forward_one(request.clone(), permit).await)
    }

    /// A slot to run a request in the caller's task: only when nobody waits (so queued requests keep their order)
    /// and one of the batcher's permits is free.
    fn inline_permit(&self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        if self.queue.depth().0 != 0 || self.queue.is_closed() {
            return None;
        }
        self.permits.clone().try_acquire_owned().ok()
    }

    /// Refuses a request before it is read or decoded when the queue is already full even for one row: the cheap 429
    /// of an overload. Under a rejection storm (clients that send again as soon as they are refused) the work of
    /// refusing competes for the CPU with the model's compute; reading and decoding a body only to refuse it was most
    /// of that work (docs/BENCHMARKS.md, overload). Counted as the queue's own refusal is (stats, metrics, arrivals).
    /// A request that passes here can still be refused by [`Scheduler::infer`] (the check is not a reservation).
    pub fn refuse_if_full(&self) -> Option<ScheduleError> {
        if self.queue.is_closed() {
            return None;
        }
        let full = self.queue.full_for(1)?;
        self.load.arrived(1);
        self.stats.record_rejection();
        self.metrics.rejected(RejectReason::QueueFull);
        Some(full)
    }

    /// Returns when a place in the queue has freed up since the last caller was woken (one caller per place, first
    /// come first served), or at once once the scheduler is closed. For connections refused with 429 (see
    /// `server.refused_hold`).
    pub async fn room(&self) {
        self.queue.room().await;
    }

    /// Whether a connection refused for a full queue should wait for [`Scheduler::room`] before its next request is
    /// read: refusals have outrun what the model serves (see `server.refused_hold`).
    pub fn hold_refused(&self) -> bool {
        self.queue.hold_refused()
    }

    /// Queues one request and waits for its outputs (all of the model's outputs, in signature order).
    /// Dropping the returned future before it finishes withdraws the request if it has not started running.
    pub async fn infer(&self, job: Job) -> Result<Vec<Tensor>, ScheduleError> {
        let settings = self.queue.settings();
        let model = self.queue.model();
        if settings.max_batch_size > 0 && job.rows > settings.max_batch_size {
            return Err(ScheduleError::TooManyRows { model: model.into(), rows: job.rows, max: settings.max_batch_size });
        }
        let level = self.priority_level(job.priority)?;
        if let Some(direct) = &self.direct {
            if let Some(permit) = self.inline_permit() {
                self.load.arrived(job.rows);
                let _in_flight = self.load.in_flight();
                return direct.run_one(job.inputs, job.rows, job.deadline, permit).await;
            }
        }
        let timeout = job.timeout.map_or(settings.queue_timeout, |t| t.min(settings.queue_timeout));
        let now = Instant::now();
        let deadline = now + timeout;
        let (reply, mut answer) = oneshot::channel();
        let ticket = Ticket::new();
        let entry = Entry { inputs: job.inputs, rows: job.rows, enqueued: now, deadline, client_deadline: job.deadline, ticket: ticket.clone(), reply };
        self.load.arrived(job.rows);
        match self.queue.admit(entry, level) {
            Admission::Queued => {}
            Admission::Rejected(err) => {
                self.stats.record_rejection();
                let reason = match err {
                    ScheduleError::ShuttingDown(_) => RejectReason::ShuttingDown,
                    _ => RejectReason::QueueFull,
                };
                self.metrics.rejected(reason);
                return Err(err);
            }
        }
        let _in_flight = self.load.in_flight();
        // Withdraws the request if this future is dropped while it is still queued.
        let guard = queue::WithdrawOnDrop { queue: &self.queue, ticket: &ticket, rows: job.rows };
        let outcome = match tokio::time::timeout_at(deadline.into(), &mut answer).await {
            Ok(received) => received.unwrap_or(Err(ScheduleError::Lost)),
            Err(_elapsed) => {
                if self.queue.withdraw(&ticket, job.rows) {
                    self.stats.record_timeout();
                    self.metrics.rejected(RejectReason::QueueTimeout);
                    Err(ScheduleError::TimedOut {
                        model: model.into(),
                        waited: now.elapsed(),
                        timeout,
                    })
                } else {
                    // Already running (or just expired by the batcher): its answer is on the way.
                    answer.await.unwrap_or(Err(ScheduleError::Lost))
                }
            }
        };
        guard.disarm();
        outcome
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        self.queue.close();
    }
}

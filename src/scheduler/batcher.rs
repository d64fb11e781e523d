//! The batching loop of one model: wait for an idle instance, then for a batch worth running, then hand it over.
//!
//! Taking the instance permit first is what makes the loop work-conserving: while every instance is busy, requests keep
//! queueing, and the moment one frees up whatever has queued becomes the next batch (or waits out `max_queue_delay`
//! when the model asks for fuller batches).

use super::queue::{Formed, Queue};
use super::timer::BatchTimer;
use super::worker::{BatchJob, Dispatch};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::Semaphore;

pub async fn run(queue: Arc<Queue>, permits: Arc<Semaphore>, dispatch: Dispatch) {
    let mut timer = BatchTimer::new(queue.settings().precise_batch_timer);
    tracing::debug!(model = queue.model(), precise = timer.is_precise(), "batcher started");
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let entries = loop {
            match queue.form(Instant::now()) {
                Formed::Batch(entries) => break Some(entries),
                Formed::Empty if queue.is_closed() => break None,
                Formed::Empty => queue.notify.notified().await,
                Formed::WaitUntil(at) => {
                    tokio::select! {
                        _ = queue.notify.notified() => {}
                        _ = timer.sleep_until(at) => {}
                    }
                }
            }
        };
        let Some(entries) = entries else { break };
        // Holding a permit means an instance (thread or async slot) is free to take this job at once.
        let job = BatchJob { entries, formed: Instant::now(), _permit: permit };
        if let Err(job) = dispatch.send(job) {
            // Every instance thread is gone: answer instead of losing the batch.
            for e in job.entries {
                let _ = e.reply.send(Err(super::ScheduleError::Backend(format!("model '{}' has no running instance", queue.model()))));
            }
            break;
        }
    }
    queue.fail_all();
    dispatch.close();
}

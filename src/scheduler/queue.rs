//! The bounded, per-model priority queue. Admission happens under one short lock so the bound is exact; the request and row
//! counters are atomics so that `/metrics` and the batcher read them without locking.
//!
//! Every entry carries a [`Ticket`] whose state moves out of `QUEUED` exactly once: to `TAKEN` (the batcher put it in a
//! batch) or `WITHDRAWN` (its caller timed out or went away). Whoever
//! makes that move also updates the counters, so a request is counted out exactly once whichever side sees it first.

use super::ScheduleError;
use crate::config::ModelSettings;
use crate::tensor::Tensor;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};

const QUEUED: u8 = 0;
const TAKEN: u8 = 1;
const WITHDRAWN: u8 = 2;

/// How long before a queued request's deadline the batcher stops waiting for a fuller batch and dispatches it: a tenth
/// of the request's time budget, within these bounds. A fixed 2 ms was too little on a busy machine, where the batcher's
/// timer can wake a few milliseconds late and the request's own timeout then fires first (a 504 for a request an idle
/// instance could have run); a tenth keeps long deadlines from cutting batches short by more than 20 ms.
const MIN_DEADLINE_MARGIN: Duration = Duration::from_millis(2);
const MAX_DEADLINE_MARGIN: Duration = Duration::from_millis(20);

/// When the batcher dispatches `e` at the latest rather than wait for company (see [`MIN_DEADLINE_MARGIN`]).
fn dispatch_by(e: &Entry) -> Instant {
    let margin = (e.deadline.saturating_duration_since(e.enqueued) / 10).clamp(MIN_DEADLINE_MARGIN, MAX_DEADLINE_MARGIN);
    e.deadline.checked_sub(margin).unwrap_or(e.enqueued)
}

/// Shared between a queued entry and the caller waiting for it.
#[derive(Clone, Default)]
pub struct Ticket(Arc<AtomicU8>);

impl Ticket {
    pub fn new() -> Ticket {
        Ticket(Arc::new(AtomicU8::new(QUEUED)))
    }
    fn leave(&self, to: u8) -> bool {
        self.0.compare_exchange(QUEUED, to, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }
    fn is_queued(&self) -> bool {
        self.0.load(Ordering::Acquire) == QUEUED
    }
}

pub type Reply = oneshot::Sender<Result<Vec<Tensor>, ScheduleError>>;

/// One waiting request.
pub struct Entry {
    pub inputs: Vec<Tensor>,
    pub rows: usize,
    pub enqueued: Instant,
    /// Leaves the queue unrun after this.
    pub deadline: Instant,
    /// The client's deadline for the whole request ([`super::Job::deadline`]).
    pub client_deadline: Option<Instant>,
    pub ticket: Ticket,
    pub reply: Reply,
}

pub enum Admission {
    Queued,
    Rejected(ScheduleError),
}

/// What the batcher may do now.
pub enum Formed {
    /// Run these entries together (already counted out of the queue).
    Batch(Vec<Entry>),
    /// Nothing is waiting.
    Empty,
    /// Requests wait for a fuller batch until this instant (or until more arrive).
    WaitUntil(Instant),
}

pub struct Queue {
    model: String,
    settings: ModelSettings,
    /// One FIFO per priority level; index 0 is level 1, the highest.
    levels: Mutex<Vec<VecDeque<Entry>>>,
    requests: AtomicUsize,
    rows: AtomicUsize,
    closed: AtomicBool,
    /// Requests in the last batch formed (see [`DynamicBatchingFile::wait_when_alone`]); written under the levels' lock.
    ///
    /// [`DynamicBatchingFile::wait_when_alone`]: crate::config::DynamicBatchingFile::wait_when_alone
    last_batch_requests: AtomicUsize,
    pub(super) notify: Notify,
    /// Signalled once per place that frees up (and to everyone at close): connections refused for a full queue wait
    /// on it before their next request is read ([`super::Scheduler::room`]).
    room: Notify,
    /// Refusals that may go without holding their connection (see [`Queue::hold_refused`]): earned as requests are
    /// taken into batches, spent by refusals.
    refusal_credit: AtomicUsize,
}

/// Refusals a request taken into a batch earns (see [`Queue::hold_refused`]). An open-loop overload at 3× the service
/// rate refuses 2 requests per request served; this leaves it room, while a closed loop of clients that send again
/// at once (tens of refusals per request served) runs out of credit and is held.
const REFUSALS_PER_TAKEN: usize = 3;

impl Queue {
    pub fn new(model: String, settings: ModelSettings) -> Queue {
        let levels = (0..settings.priority_levels).map(|_| VecDeque::new()).collect();
        Queue {
            model,
            settings,
            levels: Mutex::new(levels),
            requests: AtomicUsize::new(0),
            rows: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            last_batch_requests: AtomicUsize::new(0),
            notify: Notify::new(),
            room: Notify::new(),
            refusal_credit: AtomicUsize::new(0),
        }
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    pub fn settings(&self) -> &ModelSettings {
        &self.settings
    }

    pub fn depth(&self) -> (usize, usize) {
        (self.requests.load(Ordering::Acquire), self.rows.load(Ordering::Acquire))
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        self.notify.notify_one();
        self.room.notify_waiters();
    }

    /// Whether a connection just refused for a full queue should be left unread for a while before its next request:
    /// true once refusals outrun what the model serves (more than [`REFUSALS_PER_TAKEN`] per request taken into a
    /// batch, with a burst of that many per place in the queue). Refusals within the credit hold nothing.
    pub fn hold_refused(&self) -> bool {
        self.refusal_credit.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| c.checked_sub(1)).is_err()
    }

    fn earn_refusals(&self, taken: usize) {
        let cap = REFUSALS_PER_TAKEN.saturating_mul(self.settings.queue_capacity);
        let _ = self.refusal_credit.fetch_update(Ordering::AcqRel, Ordering::Acquire, |c| {
            Some(c.saturating_add(taken.saturating_mul(REFUSALS_PER_TAKEN)).min(cap))
        });
    }

    /// Returns when a place in the queue frees up (see `room`), or at once after a close.
    pub async fn room(&self) {
        let freed = self.room.notified();
        if self.is_closed() {
            return;
        }
        freed.await;
    }

    /// The refusal a request of `rows` rows gets now because the queue is full; `None` when it fits.
    pub fn full_for(&self, rows: usize) -> Option<ScheduleError> {
        let (requests, queued_rows) = self.depth();
        if requests + 1 > self.settings.queue_capacity || queued_rows + rows > self.settings.queue_max_rows {
            return Some(ScheduleError::QueueFull {
                model: self.model.clone(),
                requests,
                rows: queued_rows,
                max_requests: self.settings.queue_capacity,
                max_rows: self.settings.queue_max_rows,
                retry_after: Duration::from_secs(1),
            });
        }
        None
    }

    /// Admits an entry at `level` (1-based), or rejects it at once when the queue is full or closed.
    pub fn admit(&self, entry: Entry, level: u32) -> Admission {
        let mut levels = self.levels.lock();
        if self.is_closed() {
            return Admission::Rejected(ScheduleError::ShuttingDown(self.model.clone()));
        }
        if let Some(full) = self.full_for(entry.rows) {
            return Admission::Rejected(full);
        }
        // Withdrawn entries stay in place until the batcher passes; sweep them if they pile up behind busy instances.
        let physical: usize = levels.iter().map(VecDeque::len).sum();
        if physical >= 2 * self.settings.queue_capacity {
            for level in levels.iter_mut() {
                level.retain(|e| e.ticket.is_queued());
            }
        }
        self.requests.fetch_add(1, Ordering::AcqRel);
        self.rows.fetch_add(entry.rows, Ordering::AcqRel);
        let last = levels.len() - 1;
        let index = ((level.max(1) - 1) as usize).min(last);
        levels[index].push_back(entry);
        drop(levels);
        self.notify.notify_one();
        Admission::Queued
    }

    fn count_out(&self, rows: usize) {
        self.requests.fetch_sub(1, Ordering::AcqRel);
        self.rows.fetch_sub(rows, Ordering::AcqRel);
        self.room.notify_one();
    }

    /// Takes a still-queued request out (its caller timed out or left). False if the batcher got to it first.
    pub fn withdraw(&self, ticket: &Ticket, rows: usize) -> bool {
        if ticket.leave(WITHDRAWN) {
            self.count_out(rows);
            true
        } else {
            false
        }
    }

    /// Forms the next batch for an idle instance, following the model's batching settings.
    pub fn form(&self, now: Instant) -> Formed {
        // A caller may withdraw the head between the checks and the take; each retry has one fewer entry to find.
        for _ in 0..4 {
            match self.form_once(now) {
                Formed::Empty if self.has_live(now) => continue,
                formed => return formed,
            }
        }
        // Still racing with withdrawals: look again shortly rather than sleep until the next arrival.
        Formed::WaitUntil(now + Duration::from_millis(1))
    }

    fn has_live(&self, now: Instant) -> bool {
        self.levels.lock().iter().flat_map(|l| l.iter()).any(|e| e.ticket.is_queued() && e.deadline > now)
    }

    fn form_once(&self, now: Instant) -> Formed {
        let s = &self.settings;
        let mut levels = self.levels.lock();
        // Withdrawn entries go now. Expired ones stay until their caller's timer withdraws them (and answers 504):
        // they are skipped here, so nothing past its deadline ever runs.
        for level in levels.iter_mut() {
            level.retain(|e| e.ticket.is_queued());
        }
        let live = |e: &Entry| e.deadline > now;
        let Some(head) = levels.iter().flat_map(|l| l.iter()).find(|e| live(e)) else {
            return Formed::Empty;
        };
        if s.max_batch_size == 0 {
            for level in levels.iter_mut() {
                if let Some(e) = level.iter().position(live).and_then(|at| level.remove(at)) {
                    if e.ticket.leave(TAKEN) {
                        self.count_out(e.rows);
                        return Formed::Batch(vec![e]);
                    }
                }
            }
            return Formed::Empty;
        }
        // Requests can share a batch only when every input agrees with the head's on the dims after the first.
        let head_rows = head.rows;
        let head_key: Vec<Vec<usize>> = head.inputs.iter().map(|t| t.shape().get(1..).unwrap_or(&[]).to_vec()).collect();
        let fits = |e: &Entry| {
            e.inputs.len() == head_key.len()
                && e.inputs.iter().zip(&head_key).all(|(t, dims)| t.shape().get(1..).unwrap_or(&[]) == dims.as_slice())
        };
        // Rows available for a batch shaped like the head, taken in priority order, never splitting a request.
        let mut available = 0usize;
        let mut queued = 0usize;
        let mut oldest = head.enqueued;
        let mut dispatch_before = dispatch_by(head);
        for e in levels.iter().flat_map(|l| l.iter()).filter(|e| live(e)) {
            queued += 1;
            oldest = oldest.min(e.enqueued);
            dispatch_before = dispatch_before.min(dispatch_by(e));
            if fits(e) && available + e.rows <= s.max_batch_size {
                available += e.rows;
            }
        }
        let preferred = s.preferred_batch_sizes.iter().copied().filter(|&p| p <= available).max();
        let full = available >= s.max_batch_size;
        // A lone request after a lone batch: nobody has been coming to share a batch, so waiting would only delay it.
        // (No batch yet counts as lone: the first request of a burst runs at once, and the burst's next batch waits.)
        let alone = !s.wait_when_alone && queued <= 1 && self.last_batch_requests.load(Ordering::Relaxed) <= 1;
        if !full && preferred.is_none() && !alone && !s.max_queue_delay.is_zero() && !self.is_closed() {
            // Waiting for a fuller batch must never make a request miss its deadline: stop a little before the earliest.
            let until = (oldest + s.max_queue_delay).min(dispatch_before);
            if now < until {
                return Formed::WaitUntil(until);
            }
        }
        // The head always fits, even when it is larger than the preferred size that was reached.
        let target = if full { s.max_batch_size } else { preferred.unwrap_or(s.max_batch_size).max(head_rows) };
        let mut batch = Vec::new();
        let mut rows = 0usize;
        for level in levels.iter_mut() {
            let mut kept = VecDeque::with_capacity(level.len());
            for e in level.drain(..) {
                if rows + e.rows <= target && live(&e) && fits(&e) && e.ticket.leave(TAKEN) {
                    rows += e.rows;
                    self.count_out(e.rows);
                    batch.push(e);
                } else if e.ticket.is_queued() {
                    kept.push_back(e);
                }
            }
            *level = kept;
        }
        if batch.is_empty() {
            Formed::Empty
        } else {
            self.last_batch_requests.store(batch.len(), Ordering::Relaxed);
            self.earn_refusals(batch.len());
            Formed::Batch(batch)
        }
    }

    /// Answers every entry still queued with `ShuttingDown` (used when the batcher stops for good).
    pub fn fail_all(&self) {
        let mut levels = self.levels.lock();
        for level in levels.iter_mut() {
            for e in level.drain(..) {
                if e.ticket.leave(WITHDRAWN) {
                    self.count_out(e.rows);
                    let _ = e.reply.send(Err(ScheduleError::ShuttingDown(self.model.clone())));
                }
            }
        }
    }
}

/// Withdraws a request whose caller stopped waiting (its future was dropped) while it was still queued.
pub struct WithdrawOnDrop<'a> {
    pub queue: &'a Queue,
    pub ticket: &'a Ticket,
    pub rows: usize,
}

impl WithdrawOnDrop<'_> {
    pub fn disarm(self) {
        std::mem::forget(self);
    }
}

impl Drop for WithdrawOnDrop<'_> {
    fn drop(&mut self) {
        self.queue.withdraw(self.ticket, self.rows);
    }
}

//! Coalescing ("single flight"): identical requests in flight at the same time share one execution.
//!
//! The first request for a key becomes the *flight*'s leader: its execution runs in a task of its own, so it is not
//! cancelled when the leader's client goes away, and its answer (or error) is published on a `watch` channel that
//! every waiter - the leader included - reads with its own deadline. A waiter that gives up or disconnects only stops
//! waiting. Whatever ends a flight (an answer, an error, a panic in the execution) removes it from the table and
//! answers every waiter: nobody waits forever.

use super::key::CacheKey;
use super::Outputs;
use crate::protocol::ApiError;
use axum::http::StatusCode;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::watch;

/// Where a shared answer came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The model ran.
    Computed,
    /// Another tier had it after all (Redis, or a flight that finished just before this one began).
    Cached,
}

/// What a flight publishes.
pub type Shared = Result<(Outputs, Origin), ApiError>;

type Slot = watch::Receiver<Option<Shared>>;

#[derive(Default)]
pub struct Coalescer {
    flights: Mutex<HashMap<CacheKey, Slot>>,
}

/// The result of joining: lead a new flight, or wait on one already in the air.
pub enum Joined {
    Leader(Flight, Slot),
    Follower(Slot),
}

impl Coalescer {
    pub fn join(self: &Arc<Self>, key: CacheKey) -> Joined {
        let mut flights = self.flights.lock();
        if let Some(slot) = flights.get(&key) {
            return Joined::Follower(slot.clone());
        }
        let (tx, rx) = watch::channel(None);
        flights.insert(key, rx.clone());
        Joined::Leader(Flight { key, tx: Some(tx), coalescer: self.clone() }, rx)
    }

    /// Flights in the air (for tests).
    pub fn in_flight(&self) -> usize {
        self.flights.lock().len()
    }
}

/// A leader's handle on its flight. Finishing publishes the answer; dropping it unfinished publishes an error.
pub struct Flight {
    key: CacheKey,
    tx: Option<watch::Sender<Option<Shared>>>,
    coalescer: Arc<Coalescer>,
}

impl Flight {
    /// Ends the flight: later requests start afresh (and find the answer in the cache when it was stored before this
    /// call), and every waiter gets `result`.
    pub fn finish(mut self, result: Shared) {
        self.publish(result);
    }

    fn publish(&mut self, result: Shared) {
        if let Some(tx) = self.tx.take() {
            self.coalescer.flights.lock().remove(&self.key);
            tx.send_replace(Some(result));
        }
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        self.publish(Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "the shared execution of identical requests ended without an answer (internal error)")));
    }
}

/// Waits for a flight's answer. `None` when the flight ended without one (cannot happen while [`Flight`]'s drop
/// publishes an error, but a waiter must not hang on a bug).
pub async fn wait(mut slot: Slot) -> Option<Shared> {
    match slot.wait_for(Option::is_some).await {
        Ok(value) => value.clone(),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> CacheKey {
        CacheKey([b; 32])
    }

    #[tokio::test]
    async fn followers_share_the_leaders_answer_and_the_flight_ends() {
        let c = Arc::new(Coalescer::default());
        let Joined::Leader(flight, lead_slot) = c.join(key(1)) else { panic!("first is the leader") };
        let followers: Vec<Slot> = (0..10)
            .map(|_| match c.join(key(1)) {
                Joined::Follower(s) => s,
                Joined::Leader(..) => panic!("second is a follower"),
            })
            .collect();
        assert!(matches!(c.join(key(2)), Joined::Leader(..)), "another key flies on its own");
        let outputs: Outputs = Arc::from(Vec::new());
        flight.finish(Ok((outputs, Origin::Computed)));
        assert_eq!(c.in_flight(), 0);
        for slot in followers.into_iter().chain([lead_slot]) {
            assert!(matches!(wait(slot).await, Some(Ok((_, Origin::Computed)))));
        }
        assert!(matches!(c.join(key(1)), Joined::Leader(..)), "a finished flight is not joined");
    }

    #[tokio::test]
    async fn a_dropped_flight_answers_with_an_error() {
        let c = Arc::new(Coalescer::default());
        let Joined::Leader(flight, _) = c.join(key(3)) else { panic!() };
        let Joined::Follower(slot) = c.join(key(3)) else { panic!() };
        drop(flight);
        let answer = wait(slot).await.expect("an answer");
        assert_eq!(answer.unwrap_err().status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(c.in_flight(), 0);
    }
}

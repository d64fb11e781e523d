//! A token bucket: tokens accrue at a steady rate up to a cap, and each admitted unit of work takes one. Used for
//! per-tenant request-rate limits and (with extra deposits per request) for the remote backend's retry budget.

use parking_lot::Mutex;
use std::time::{Duration, Instant};

pub struct TokenBucket {
    per_second: f64,
    cap: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// A full bucket of `cap` tokens refilled at `per_second`.
    pub fn new(per_second: f64, cap: f64) -> TokenBucket {
        TokenBucket::with_tokens(per_second, cap, cap)
    }

    pub fn with_tokens(per_second: f64, cap: f64, tokens: f64) -> TokenBucket {
        TokenBucket { per_second, cap, state: Mutex::new((tokens.min(cap), Instant::now())) }
    }

    fn refill(&self, state: &mut (f64, Instant), now: Instant) {
        let elapsed = now.saturating_duration_since(state.1).as_secs_f64();
        state.0 = (state.0 + elapsed * self.per_second).min(self.cap);
        state.1 = state.1.max(now);
    }

    /// Adds `tokens` (up to the cap).
    pub fn deposit(&self, tokens: f64) {
        let mut state = self.state.lock();
        state.0 = (state.0 + tokens).min(self.cap);
    }

    /// Takes one token, or says how long until one is there (`Duration::MAX` when the rate is zero).
    pub fn take(&self, now: Instant) -> Result<(), Duration> {
        let mut state = self.state.lock();
        self.refill(&mut state, now);
        if state.0 >= 1.0 {
            state.0 -= 1.0;
            return Ok(());
        }
        if self.per_second <= 0.0 {
            return Err(Duration::MAX);
        }
        Err(Duration::from_secs_f64((1.0 - state.0) / self.per_second))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_bucket_allows_a_burst_then_the_rate() {
        let bucket = TokenBucket::new(10.0, 5.0);
        let start = Instant::now();
        assert_eq!((0..20).filter(|_| bucket.take(start).is_ok()).count(), 5);
        let wait = bucket.take(start).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::from_millis(90), "{wait:?}");
        assert!(bucket.take(start + Duration::from_millis(100)).is_ok());
        assert!(bucket.take(start + Duration::from_millis(100)).is_err());
        // Time never banks more than the cap.
        let later = start + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| bucket.take(later).is_ok()).count(), 5);
        let empty = TokenBucket::with_tokens(0.0, 3.0, 0.0);
        assert_eq!(empty.take(later), Err(Duration::MAX));
        empty.deposit(1.5);
        assert!(empty.take(later).is_ok());
        assert!(empty.take(later).is_err());
    }
}

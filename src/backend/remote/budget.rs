//! The retry budget: retries may add at most a fixed fraction of the first attempts as extra load (plus a small
//! floor per second), so a failing pool is not hit by a retry storm that makes it fail harder.

use crate::admission::token_bucket::TokenBucket;
use std::time::Instant;

/// Every first attempt deposits `ratio` tokens, time deposits `min_per_second`, a retry takes one.
pub struct RetryBudget {
    ratio: f64,
    bucket: TokenBucket,
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_second: f64) -> RetryBudget {
        // The most tokens kept: about ten seconds of the floor plus a burst of a thousand requests' worth, so a quiet
        // spell does not bank an unbounded burst of retries.
        let cap = (10.0 * min_per_second + 1000.0 * ratio).max(1.0);
        RetryBudget { ratio, bucket: TokenBucket::with_tokens(min_per_second, cap, 10.0 * min_per_second) }
    }

    /// A request's first attempt.
    pub fn deposit(&self) {
        self.bucket.deposit(self.ratio);
    }

    /// Takes a token for a retry; `false` when the budget is spent.
    pub fn withdraw(&self, now: Instant) -> bool {
        self.bucket.take(now).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retries_are_a_fraction_of_requests_plus_a_floor() {
        let budget = RetryBudget::new(0.2, 0.0);
        let now = Instant::now();
        let mut retried = 0;
        for _ in 0..1000 {
            budget.deposit();
            // Every request fails and wants a retry.
            if budget.withdraw(now) {
                retried += 1;
            }
        }
        assert!((195..=200).contains(&retried), "{retried} retries for 1000 requests at 20 %");

        let floor = RetryBudget::new(0.0, 10.0);
        let start = Instant::now();
        let drained = (0..1000).take_while(|_| floor.withdraw(start)).count();
        // Ten seconds of the floor are banked at most (one more may accrue while the test runs).
        assert!((100..=101).contains(&drained), "{drained}");
        assert!(!floor.withdraw(start));
        assert!(floor.withdraw(start + Duration::from_millis(150)), "the floor refills with time");
    }
}

//! Capped exponential backoff with full jitter, for transient failures.
//!
//! Full jitter (a uniform delay between zero and the cap) spreads the retries
//! of many workers that failed together, so a recovering database is not hit
//! by all of them at the same instant.

use std::time::Duration;

pub struct Backoff {
    attempt: u32,
    base: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            attempt: 0,
            base,
            max,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self
            .base
            .saturating_mul(2_u32.saturating_pow(self.attempt.min(20)))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        cap.mul_f64(fastrand::f64())
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(10))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_under_the_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        for attempt in 0..40 {
            let cap =
                Duration::from_millis(100 * 2_u64.pow(attempt.min(4))).min(Duration::from_secs(1));
            assert!(backoff.next_delay() <= cap);
        }
    }
}

//! Backoff arithmetic shared by store writes and forwarding retries.

use std::time::Duration;

/// Waits that grow by `factor` from `initial`, each capped at `max`.
#[derive(Debug, Clone, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub factor: f64,
    pub max: Option<Duration>,
}

impl Backoff {
    /// A wait that never grows.
    pub fn constant(interval: Duration) -> Backoff {
        Backoff {
            initial: interval,
            factor: 1.0,
            max: None,
        }
    }

    /// The wait before retry number `retry` (1 is the first retry).
    pub fn delay(&self, retry: u32) -> Duration {
        let exponent = retry.saturating_sub(1).min(64) as i32;
        let secs = self.initial.as_secs_f64() * self.factor.powi(exponent);
        let wait = Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX);
        self.cap(wait)
    }

    /// `wait`, but no longer than `max`.
    pub fn cap(&self, wait: Duration) -> Duration {
        match self.max {
            Some(max) => wait.min(max),
            None => wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delay_grows_by_factor_and_stops_at_max() {
        let b = Backoff {
            initial: Duration::from_secs(2),
            factor: 1.5,
            max: Some(Duration::from_secs(4)),
        };
        assert_eq!(b.delay(1), Duration::from_secs(2));
        assert_eq!(b.delay(2), Duration::from_secs(3));
        assert_eq!(b.delay(3), Duration::from_secs(4));
        assert_eq!(b.delay(60), Duration::from_secs(4));
    }
}

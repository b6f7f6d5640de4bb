//! Retry decisions as values: why an attempt failed, and what happens next.

use std::time::Duration;

use super::forwarder::ForwardError;
use crate::retry::Backoff;

/// Why one forwarding attempt failed.
#[derive(Debug, Clone)]
pub enum Failure {
    /// The status is a failure (in `retry_statuses`, or non-2xx when that is absent).
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// No response: connection refused, reset, timeout.
    Forward(ForwardError),
    /// The response handler asked to retry (`retryable`) or failed the message.
    Handler { reason: String, retryable: bool },
}

impl Failure {
    /// Whether another attempt may succeed.
    pub fn retryable(&self) -> bool {
        match self {
            Failure::Status { .. } | Failure::Forward(_) => true,
            Failure::Handler { retryable, .. } => *retryable,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Status { status, .. } => write!(f, "endpoint answered {status}"),
            Failure::Forward(e) => write!(f, "{e}"),
            Failure::Handler {
                reason,
                retryable: true,
            } => write!(f, "response handler asked to retry: {reason}"),
            Failure::Handler {
                reason,
                retryable: false,
            } => write!(f, "response handler failed the message: {reason}"),
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Try again after this wait.
    RetryAfter(Duration),
    /// No more attempts: apply the failure action.
    GiveUp,
}

/// The retry rules of one processor.
#[derive(Debug, Clone)]
pub struct RetryRules {
    pub backoff: Backoff,
    pub max_redeliveries: u32,
    pub retry_statuses: Option<Vec<u16>>,
}

impl RetryRules {
    /// Whether a response status counts as a failed attempt.
    pub fn is_failure(&self, status: u16) -> bool {
        match &self.retry_statuses {
            Some(listed) => listed.contains(&status),
            None => !(200..300).contains(&status),
        }
    }

    /// The verdict after failed attempt number `attempt` (1-based).
    pub fn decide(&self, failure: &Failure, attempt: u32) -> Verdict {
        if !failure.retryable() || attempt > self.max_redeliveries {
            return Verdict::GiveUp;
        }
        let planned = self.backoff.delay(attempt);
        match failure {
            // The endpoint said when to come back; max_retry_interval still bounds it.
            Failure::Status {
                status: 429 | 503,
                retry_after: Some(asked),
            } => Verdict::RetryAfter(self.backoff.cap(*asked)),
            _ => Verdict::RetryAfter(planned),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(statuses: Option<Vec<u16>>) -> RetryRules {
        RetryRules {
            backoff: Backoff {
                initial: Duration::from_secs(3),
                factor: 2.0,
                max: Some(Duration::from_secs(10)),
            },
            max_redeliveries: 5,
            retry_statuses: statuses,
        }
    }

    #[test]
    fn five_redeliveries_mean_six_attempts() {
        let r = rules(None);
        let f = Failure::Status {
            status: 500,
            retry_after: None,
        };
        let verdicts: Vec<_> = (1..=6).map(|a| r.decide(&f, a)).collect();
        assert_eq!(verdicts[0], Verdict::RetryAfter(Duration::from_secs(3)));
        assert_eq!(verdicts[1], Verdict::RetryAfter(Duration::from_secs(6)));
        assert_eq!(verdicts[4], Verdict::RetryAfter(Duration::from_secs(10)));
        assert_eq!(verdicts[5], Verdict::GiveUp);
    }

    #[test]
    fn listed_statuses_are_failures_and_others_are_not() {
        assert!(rules(None).is_failure(404));
        assert!(!rules(None).is_failure(202));
        let listed = rules(Some(vec![500, 400]));
        assert!(listed.is_failure(400));
        assert!(!listed.is_failure(404));
    }

    #[test]
    fn retry_after_is_honoured_on_429_and_503_up_to_the_cap() {
        let r = rules(None);
        let asked = |status, secs| Failure::Status {
            status,
            retry_after: Some(Duration::from_secs(secs)),
        };
        assert_eq!(
            r.decide(&asked(503, 1), 1),
            Verdict::RetryAfter(Duration::from_secs(1))
        );
        assert_eq!(
            r.decide(&asked(429, 60), 1),
            Verdict::RetryAfter(Duration::from_secs(10))
        );
        assert_eq!(
            r.decide(&asked(500, 1), 1),
            Verdict::RetryAfter(Duration::from_secs(3))
        );
    }

    #[test]
    fn handler_failure_gives_up_at_once() {
        let f = Failure::Handler {
            reason: "bad".into(),
            retryable: false,
        };
        assert_eq!(rules(None).decide(&f, 1), Verdict::GiveUp);
    }
}

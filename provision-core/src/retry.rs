//! Retries with capped, fully jittered exponential backoff inside one request's time budget.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::UpstreamFailure;

/// When a request must have answered by. Every upstream call and every backoff sleep fits
/// inside it, so a request never hangs past its budget.
#[derive(Clone, Copy, Debug)]
pub struct Deadline(Instant);

impl Deadline {
    pub fn after(budget: Duration) -> Self {
        Deadline(Instant::now() + budget)
    }

    pub fn remaining(&self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }

    /// The same deadline moved `by` later: the time kept back for cleaning up after a failure.
    pub fn extended(&self, by: Duration) -> Self {
        Deadline(self.0 + by)
    }
}

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    /// The first backoff's upper bound; it doubles each attempt.
    pub base_delay: Duration,
    /// No backoff is longer than this (a `Retry-After` may be, within the budget).
    pub max_delay: Duration,
    /// One attempt's time limit (further capped by the deadline).
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(8),
        }
    }
}

impl RetryPolicy {
    /// The default policy with one attempt's time limit set.
    pub fn with_attempt_timeout(attempt_timeout: Duration) -> Self {
        RetryPolicy {
            attempt_timeout,
            ..RetryPolicy::default()
        }
    }
}

/// What one attempt came to.
pub enum Attempt<T> {
    Done(T),
    /// Worth another try (429, 5xx, connection error), after `retry_after` if the upstream said.
    Retry(UpstreamFailure),
}

impl RetryPolicy {
    pub async fn run<T, F, Fut>(
        &self,
        deadline: Deadline,
        mut attempt: F,
    ) -> Result<T, UpstreamFailure>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Attempt<T>>,
    {
        let mut last = UpstreamFailure::Unavailable {
            detail: "the request's time budget was used up".into(),
        };
        for n in 0..self.max_attempts {
            let remaining = deadline.remaining();
            if remaining.is_zero() {
                return Err(last);
            }
            let limit = self.attempt_timeout.min(remaining);
            let failure = match tokio::time::timeout(limit, attempt()).await {
                Ok(Attempt::Done(value)) => return Ok(value),
                Ok(Attempt::Retry(failure)) => failure,
                Err(_) => UpstreamFailure::Unavailable {
                    detail: format!("no answer within {} ms", limit.as_millis()),
                },
            };
            let requested = match &failure {
                UpstreamFailure::Throttled { retry_after } => *retry_after,
                _ => None,
            };
            last = failure;
            if n + 1 == self.max_attempts {
                break;
            }
            let delay = requested.unwrap_or_else(|| self.backoff(n));
            if delay >= deadline.remaining() {
                break;
            }
            tokio::time::sleep(delay).await;
        }
        Err(last)
    }

    /// Full jitter: uniform in [0, min(max_delay, base_delay * 2^n)].
    fn backoff(&self, n: u32) -> Duration {
        let ceiling = self
            .base_delay
            .saturating_mul(1u32 << n.min(16))
            .min(self.max_delay);
        ceiling.mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn quick() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(2),
            attempt_timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn retries_then_succeeds() {
        let calls = AtomicU32::new(0);
        let out = quick()
            .run(Deadline::after(Duration::from_secs(5)), || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    Attempt::Retry(UpstreamFailure::Unavailable {
                        detail: "503".into(),
                    })
                } else {
                    Attempt::Done(7)
                }
            })
            .await;
        assert_eq!(out.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts_keeping_throttle() {
        let calls = AtomicU32::new(0);
        let out: Result<(), _> = quick()
            .run(Deadline::after(Duration::from_secs(5)), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Attempt::Retry(UpstreamFailure::Throttled {
                    retry_after: Some(Duration::from_millis(1)),
                })
            })
            .await;
        assert!(matches!(out, Err(UpstreamFailure::Throttled { .. })));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn retry_after_beyond_the_budget_stops_at_once() {
        let calls = AtomicU32::new(0);
        let out: Result<(), _> = quick()
            .run(Deadline::after(Duration::from_secs(2)), || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Attempt::Retry(UpstreamFailure::Throttled {
                    retry_after: Some(Duration::from_secs(60)),
                })
            })
            .await;
        assert!(
            matches!(out, Err(UpstreamFailure::Throttled { retry_after: Some(d) }) if d.as_secs() == 60)
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_hung_attempt_is_cut_by_its_timeout() {
        let policy = RetryPolicy {
            attempt_timeout: Duration::from_millis(20),
            max_attempts: 2,
            ..quick()
        };
        let out: Result<(), _> = policy
            .run(Deadline::after(Duration::from_secs(5)), || async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Attempt::Done(())
            })
            .await;
        assert!(matches!(out, Err(UpstreamFailure::Unavailable { .. })));
    }
}

//! Retries with exponential backoff and jitter ([`backon`]), one policy shape
//! for every service: the processor's partition claims, the materializer's
//! read-model writes and the command's background partition check. A retry
//! stops on success, on an error its caller calls permanent, or when the
//! shutdown token is cancelled.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};

use crate::engine::shutdown::CancellationToken;

/// Backoff from `first` doubling up to `max`, with jitter (so that instances
/// failing together do not retry together), without a limit on attempts.
pub fn backoff(first: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default().with_min_delay(first).with_max_delay(max).with_jitter().without_max_times()
}

/// Runs `attempt` until it succeeds or fails with an error `retryable` refuses,
/// waiting per `policy` in between and logging each failure as `what` failed.
///
/// Returns `None` when `token` is cancelled first (an attempt in progress is dropped).
pub async fn until_cancelled<T, E, F, Fut>(
    token: &CancellationToken,
    policy: ExponentialBuilder,
    what: &'static str,
    attempt: F,
    retryable: impl FnMut(&E) -> bool,
) -> Option<Result<T, E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Display,
{
    let retried = attempt.retry(policy).when(retryable).notify(|e: &E, wait: Duration| {
        tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "{what} failed; retrying");
    });
    tokio::select! {
        biased;
        _ = token.cancelled() => None,
        result = retried => Some(result),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[derive(Debug, PartialEq)]
    enum Failure {
        Transient,
        Permanent,
    }

    impl Display for Failure {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{self:?}")
        }
    }

    fn fast() -> ExponentialBuilder {
        backoff(Duration::from_millis(1), Duration::from_millis(10))
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_success() {
        let attempts = AtomicU32::new(0);
        let result = until_cancelled(
            &CancellationToken::new(),
            fast(),
            "test",
            || async {
                match attempts.fetch_add(1, Ordering::Relaxed) {
                    0..=4 => Err(Failure::Transient),
                    n => Ok(n),
                }
            },
            |e| *e == Failure::Transient,
        )
        .await;
        assert_eq!(result, Some(Ok(5)), "more attempts than backon's default limit of 3");
    }

    #[tokio::test]
    async fn a_permanent_error_ends_the_retries() {
        let attempts = AtomicU32::new(0);
        let result: Option<Result<(), _>> = until_cancelled(
            &CancellationToken::new(),
            fast(),
            "test",
            || async {
                attempts.fetch_add(1, Ordering::Relaxed);
                Err(Failure::Permanent)
            },
            |e| *e == Failure::Transient,
        )
        .await;
        assert_eq!(result, Some(Err(Failure::Permanent)));
        assert_eq!(attempts.load(Ordering::Relaxed), 1);
    }

    #[tokio::test]
    async fn cancellation_stops_a_retry_that_would_never_succeed() {
        let token = CancellationToken::new();
        let canceller = {
            let token = token.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                token.cancel();
            })
        };
        let result: Option<Result<(), Failure>> =
            until_cancelled(&token, fast(), "test", || async { Err(Failure::Transient) }, |_| true).await;
        assert_eq!(result, None);
        canceller.await.expect("canceller");
    }

    #[tokio::test]
    async fn a_cancelled_token_stops_before_any_attempt_finishes() {
        let token = CancellationToken::new();
        token.cancel();
        let result: Option<Result<(), Failure>> =
            until_cancelled(&token, fast(), "test", std::future::pending, |_| true).await;
        assert_eq!(result, None);
    }
}

//! Background tasks a workload runs inside a service, beside its requests:
//! a watched directory, a janitor that closes what a dead instance left open.
//!
//! A workload hands the engine [`Task`]s (the command's `CommandRole::tasks`);
//! the engine starts each once the service serves, cancels its token at
//! shutdown and waits for it to end, bounded by the service's shutdown drain
//! ([`spawn_tasks`]). A task that returns an error stops the process (it
//! exits non-zero rather than run on without it): a task retries what is
//! transient itself and fails only on what a restart may fix.

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::engine::http::Serving;

/// One background task: runs until its token is cancelled.
pub struct Task {
    /// Names it in logs and in its tracing span.
    pub name: &'static str,
    pub run: Box<dyn FnOnce(CancellationToken) -> Serving + Send>,
}

impl Task {
    /// A task named `name` running `run` (given the token cancelled at shutdown).
    pub fn new<F, Fut>(name: &'static str, run: F) -> Self
    where
        F: FnOnce(CancellationToken) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        Task { name, run: Box::new(move |token| Box::pin(run(token))) }
    }
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task").field("name", &self.name).finish_non_exhaustive()
    }
}

/// Starts every task, each on its own tokio task in a `task` span naming it,
/// until `token` is cancelled; a task's error is logged and cancels `failed`
/// (the service then stops, non-zero). The returned handles end when the
/// tasks did: await them, bounded, after cancelling `token`.
pub fn spawn_tasks(
    tasks: Vec<Task>,
    token: &CancellationToken,
    failed: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    tasks
        .into_iter()
        .map(|t| {
            let (name, token, failed) = (t.name, token.clone(), failed.clone());
            tracing::info!(task = name, "starting a workload task");
            let span = tracing::info_span!("task", name);
            tokio::spawn(
                async move {
                    match (t.run)(token).await {
                        Ok(()) => tracing::debug!(task = name, "task stopped"),
                        Err(e) => {
                            tracing::error!(task = name, error = format!("{e:#}"), "task failed; shutting down");
                            failed.cancel();
                        }
                    }
                }
                .instrument(span),
            )
        })
        .collect()
}

/// Waits for `handles` at most `limit` in all (not each); returns how many did not end in time.
pub async fn join_bounded(handles: Vec<tokio::task::JoinHandle<()>>, limit: std::time::Duration) -> usize {
    let deadline = tokio::time::Instant::now() + limit;
    let mut late = 0;
    for handle in handles {
        if tokio::time::timeout_at(deadline, handle).await.is_err() {
            late += 1;
        }
    }
    late
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn tasks_stop_on_cancel_and_a_failing_one_cancels_the_service() {
        let token = CancellationToken::new();
        let failed = CancellationToken::new();
        let waits = Task::new("waits", |stop: CancellationToken| async move {
            stop.cancelled().await;
            Ok(())
        });
        let handles = spawn_tasks(vec![waits], &token, &failed);
        token.cancel();
        assert_eq!(join_bounded(handles, Duration::from_secs(5)).await, 0);
        assert!(!failed.is_cancelled());

        let fails = Task::new("fails", |_| async { anyhow::bail!("broken") });
        let handles = spawn_tasks(vec![fails], &CancellationToken::new(), &failed);
        assert_eq!(join_bounded(handles, Duration::from_secs(5)).await, 0);
        assert!(failed.is_cancelled(), "a failed task stops the service");
    }

    #[tokio::test]
    async fn a_task_that_ignores_its_token_is_left_after_the_bound() {
        let never = Task::new("never", |_| std::future::pending());
        let handles = spawn_tasks(vec![never], &CancellationToken::new(), &CancellationToken::new());
        assert_eq!(join_bounded(handles, Duration::from_millis(20)).await, 1);
    }
}

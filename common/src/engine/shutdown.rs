//! Process-wide shutdown: one [`CancellationToken`], cancelled on SIGINT or
//! SIGTERM (or when a critical task fails). Every loop selects on it.
//!
//! Services spawn their background tasks with [`spawn_critical`] on a
//! [`TaskTracker`] and wait for them with [`drain`] on the way out, instead
//! of bare `tokio::spawn`.

use std::future::Future;
use std::time::Duration;

pub use tokio_util::sync::CancellationToken;
pub use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// A token cancelled by the first SIGINT or SIGTERM.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
            _ = t.cancelled() => {}
        }
        t.cancel();
    });
    token
}

/// Spawns a named task on `tracker`, in a `task` span carrying its name. If it
/// fails, the whole process shuts down (the token is cancelled) instead of
/// limping on without it.
pub fn spawn_critical<F>(tracker: &TaskTracker, token: &CancellationToken, name: &'static str, fut: F)
where
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let token = token.clone();
    let span = tracing::info_span!("task", name);
    tracker.spawn(
        async move {
            match fut.await {
                Ok(()) => tracing::debug!(task = name, "task finished"),
                Err(e) => {
                    tracing::error!(task = name, error = format!("{e:#}"), "task failed; shutting down");
                    token.cancel();
                }
            }
        }
        .instrument(span),
    );
}

/// Waits for the tracked tasks after cancellation, at most `limit`.
///
/// # Errors
/// When the tasks did not finish in time.
pub async fn drain(tracker: TaskTracker, limit: Duration) -> anyhow::Result<()> {
    tracker.close();
    tokio::time::timeout(limit, tracker.wait())
        .await
        .map_err(|_| anyhow::anyhow!("tasks still running {limit:?} after shutdown began"))
}

/// Runs a service future; once `token` is cancelled it has at most `limit` to finish.
///
/// # Errors
/// The service's own error, or a timeout error if it did not stop in time.
pub async fn bounded<F>(service: F, token: CancellationToken, limit: Duration) -> anyhow::Result<()>
where
    F: Future<Output = anyhow::Result<()>>,
{
    tokio::pin!(service);
    tokio::select! {
        r = &mut service => r,
        _ = token.cancelled() => match tokio::time::timeout(limit, &mut service).await {
            Ok(r) => r,
            Err(_) => anyhow::bail!("did not stop within {limit:?} of the shutdown signal"),
        },
    }
}

//! The tasks the relay cannot serve without (the scheduler, the accept loops, the expiry
//! sweep, …): each is spawned with [`spawn_critical`], which turns its panic or early end
//! into [`RunningRelay::failed`](super::RunningRelay::failed). What it does not do: restart
//! anything (the service manager does, after `sotto-relay run` exits non-zero), or watch
//! sessions (a panic inside one session ends that session only).

use std::pin::Pin;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// A critical task, boxed so that tasks of different types share one spawner.
pub(super) type BoxFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Spawns a task the relay cannot serve without. If it panics or returns while `shutdown`
/// is not cancelled, the error is logged (with the task's name only) and `failed` is
/// cancelled: see [`RunningRelay::failed`](super::RunningRelay::failed).
pub(super) fn spawn_critical(
    tracker: &TaskTracker,
    name: &'static str,
    fut: BoxFuture,
    shutdown: &CancellationToken,
    failed: &CancellationToken,
) {
    use futures_util::FutureExt as _;
    let (shutdown, failed) = (shutdown.clone(), failed.clone());
    tracker.spawn(async move {
        let outcome = std::panic::AssertUnwindSafe(fut).catch_unwind().await;
        if shutdown.is_cancelled() {
            return;
        }
        match outcome {
            Err(_) => tracing::error!(task = name, "a relay task panicked; the relay stops"),
            Ok(()) => tracing::error!(task = name, "a relay task ended early; the relay stops"),
        }
        failed.cancel();
    });
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A critical task that panics or returns before shutdown fails the relay; one that
    /// returns after shutdown does not.
    #[tokio::test]
    async fn a_critical_task_that_stops_fails_the_relay_unless_shutting_down() {
        let tracker = TaskTracker::new();
        let (shutdown, failed) = (CancellationToken::new(), CancellationToken::new());
        spawn_critical(
            &tracker,
            "panicking",
            Box::pin(async { panic!("injected") }),
            &shutdown,
            &failed,
        );
        tokio::time::timeout(Duration::from_secs(10), failed.cancelled())
            .await
            .expect("a panic fails the relay");

        let (shutdown, failed) = (CancellationToken::new(), CancellationToken::new());
        spawn_critical(
            &tracker,
            "returning",
            Box::pin(async {}),
            &shutdown,
            &failed,
        );
        tokio::time::timeout(Duration::from_secs(10), failed.cancelled())
            .await
            .expect("an early return fails the relay");

        let (shutdown, failed) = (CancellationToken::new(), CancellationToken::new());
        let waits = shutdown.clone();
        spawn_critical(
            &tracker,
            "orderly",
            Box::pin(async move { waits.cancelled().await }),
            &shutdown,
            &failed,
        );
        shutdown.cancel();
        tracker.close();
        tracker.wait().await;
        assert!(
            !failed.is_cancelled(),
            "ending at shutdown is not a failure"
        );
    }
}

//! The end of a run, in the order that loses nothing: wait until every dispatched message
//! has resolved (or for `--drain-timeout`), stop the client cover, wait for the ACKs still
//! in flight, and — once the sessions are closed — for the receive loops to end.
//!
//! It does not read the wire counters or close the sessions (the runs in [`super`] do,
//! between these steps) and computes nothing.

use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::accounting::Collector;

/// How long the ACKs still in flight may take once dispatch is over.
const ACK_WAIT: Duration = Duration::from_secs(10);

/// How long a receive loop may take to end once its session is closed.
const RECEIVE_WAIT: Duration = Duration::from_secs(5);

/// Waits until `dispatched` messages have resolved, or for `timeout`.
pub(super) async fn until_resolved(collector: &Collector, dispatched: u64, timeout: Duration) {
    let mut resolved = collector.subscribe_resolved();
    let _ = tokio::time::timeout(timeout, resolved.wait_for(|&r| r >= dispatched)).await;
}

/// Stops the client cover tasks and waits for them.
pub(super) async fn stop_cover(cancel: &CancellationToken, tasks: Vec<JoinHandle<()>>) {
    cancel.cancel();
    for t in tasks {
        let _ = t.await;
    }
}

/// Waits (up to [`ACK_WAIT`]) until no ACK is in flight.
pub(super) async fn wait_acks(collector: &Collector) {
    collector.acks.close();
    let _ = tokio::time::timeout(ACK_WAIT, collector.acks.wait()).await;
}

/// Waits (up to [`RECEIVE_WAIT`] each) for the receive loops of closed sessions to end.
pub(super) async fn join_receivers(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = tokio::time::timeout(RECEIVE_WAIT, t).await;
    }
}

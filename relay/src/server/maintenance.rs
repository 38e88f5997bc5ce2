//! Periodic upkeep, each its own task: TTL and idle-queue expiry, the queue and message
//! gauges, pruning of the handshake limiter. What it does not: expiry's store work itself
//! (`WriteOp::Expire` in the store) or any per-session state.

use std::sync::Arc;
use std::time::Duration;

use super::{Shared, unix_ms};
use crate::store::{WriteOp, WriteOutcome};

/// Queue records the idle-queue sweep examines per store write (≈ 3 ms of the writer's
/// time: one small AEAD open each; keys are decoded only for queues that go).
const IDLE_SCAN_CHUNK: usize = 1024;

/// Longest pause between two chunks of the idle-queue sweep.
const IDLE_SCAN_MAX_PAUSE: Duration = Duration::from_secs(1);

/// TTL and idle-queue expiry. Every `expiry_interval` it walks the store in chunks of
/// [`IDLE_SCAN_CHUNK`] queues, each its own short write, paced to spread one sweep over at
/// most a quarter of the interval: with 1 000 000 queues a sweep costs the writer ≈ 3 s of
/// CPU in ≈ 1 000 slices instead of one ≈ 5 s transaction that stalled every SEND.
pub(super) async fn expiry_task(shared: Arc<Shared>) {
    let q = &shared.config.queues;
    let mut tick = tokio::time::interval(q.expiry_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = unix_ms() / 1000;
        let chunks = shared.store.counts().map_or(1, |(queues, _)| {
            queues.div_ceil(IDLE_SCAN_CHUNK as u64).max(1)
        });
        let pause = (q.expiry_interval / 4)
            .checked_div(u32::try_from(chunks).unwrap_or(u32::MAX))
            .unwrap_or(Duration::ZERO)
            .min(IDLE_SCAN_MAX_PAUSE);
        let (mut messages, mut queues) = (0u64, 0u64);
        let mut scan_after = None;
        loop {
            let op = WriteOp::Expire {
                messages_before: now.saturating_sub(q.message_ttl.as_secs()),
                queues_idle_before: now.saturating_sub(q.idle_expiry.as_secs()),
                max: 1000,
                scan_after,
                scan: IDLE_SCAN_CHUNK,
            };
            match shared.store.write(op).await {
                Ok(WriteOutcome::Expired {
                    messages: m,
                    queues: n,
                    more,
                    next_scan,
                }) => {
                    shared.metrics.messages_expired.inc_by(m);
                    shared.metrics.queues_expired.inc_by(n);
                    messages += m;
                    queues += n;
                    scan_after = next_scan;
                    if !more && next_scan.is_none() {
                        break;
                    }
                }
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "expiry failed; will retry");
                    break;
                }
            }
            tokio::select! {
                _ = shared.shutdown.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
        if messages + queues > 0 {
            tracing::info!(messages, queues, "expired");
        }
    }
}

/// Refreshes the queue, message and blocked-queue gauges every 2 s.
pub(super) async fn gauge_task(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Ok((q, m)) = shared.store.counts() {
            shared
                .metrics
                .queues
                .set(i64::try_from(q).unwrap_or(i64::MAX));
            shared
                .metrics
                .stored_messages
                .set(i64::try_from(m).unwrap_or(i64::MAX));
        }
        if let Ok(b) = shared.store.blocked_count() {
            shared
                .metrics
                .blocked_queues
                .set(i64::try_from(b).unwrap_or(i64::MAX));
        }
    }
}

/// Drops idle entries of the handshake limiter every minute.
pub(super) async fn limiter_prune_task(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        shared.handshake_limiter.retain_recent();
        shared.handshake_limiter.shrink_to_fit();
    }
}

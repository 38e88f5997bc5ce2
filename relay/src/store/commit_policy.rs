//! Which batch is committed durably (fsync) and which is committed relaxed, and how long a
//! relaxed commit may stay non-durable: the rules of the store's # Durability, as pure
//! functions of the batch, the writer's state and the time.
//!
//! What it owns: [`RELAXED_COMMIT_BOUND`], [`RELAXED_HOLD`] and the durable-or-relaxed
//! decision. What it does not: the batching loop that applies it and the commits (`writer`),
//! or which writes need durability ([`WriteOp::needs_durability`], beside the writes).

use std::time::{Duration, Instant};

use super::WriteOp;

/// Longest time a relaxed (non-fsynced) commit stays non-durable: how many ACKs a crash can
/// undo. The next commit after it is durable whatever it holds, and an idle writer makes an
/// empty durable commit when it runs out, so the worst case is this plus one commit in
/// progress. 250 ms costs at most four fsyncs a second on a relay that only deletes; in a
/// load run at 1 500 messages a second (`sotto-loadtest --delay-mode off --rate 1500`) the
/// relay made 70 % fewer `fdatasync` calls than with every commit durable (counted under
/// strace, which slows it: 10 946 → 3 247 for 15 000 messages).
pub const RELAXED_COMMIT_BOUND: Duration = Duration::from_millis(250);

/// How long the writer holds a batch of relaxed-only writes (ACK deletions, expiry) for the
/// next batch to carry, before committing it on its own. Their callers wait this much
/// longer for the outcome; the relay answers ACKs on subscriptions before that anyway.
pub const RELAXED_HOLD: Duration = Duration::from_millis(5);

/// How one transaction is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Commit {
    /// `Durability::Immediate`: on disk (fsync) when the commit returns, with every earlier
    /// commit.
    Durable,
    /// `Durability::None`: visible to reads at once, on disk with the next durable commit.
    Relaxed,
}

/// How a batch of `ops` is committed: relaxed under `unsafe_no_fsync`; otherwise durably if
/// one of them needs it ([`WriteOp::needs_durability`]), if relaxing is not possible
/// (`can_relax` false: the writer has no timer to bound it), or if the oldest relaxed commit
/// not yet durable started `bound` or more before `now`; relaxed otherwise.
pub(super) fn commit_kind<'a>(
    ops: impl IntoIterator<Item = &'a WriteOp>,
    unsafe_no_fsync: bool,
    can_relax: bool,
    unsynced_since: Option<Instant>,
    now: Instant,
    bound: Duration,
) -> Commit {
    if unsafe_no_fsync {
        return Commit::Relaxed;
    }
    let due = unsynced_since.is_some_and(|since| now.saturating_duration_since(since) >= bound);
    if !can_relax || due || ops.into_iter().any(WriteOp::needs_durability) {
        Commit::Durable
    } else {
        Commit::Relaxed
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::OsRng;
    use sotto_protocol::AuthSecretKey;

    use super::*;
    use crate::store::test_support::*;

    #[test]
    fn only_deletion_batches_are_relaxed_and_never_past_the_bound() {
        let q = [1u8; 32];
        let ack = WriteOp::DeleteMessage {
            queue: q,
            seq: 1,
            release_at_ms: 0,
            received_ms: 0,
        };
        let sweep = WriteOp::Expire {
            messages_before: 0,
            queues_idle_before: 0,
            max: 1,
            scan_after: None,
            scan: 1,
        };
        let send = WriteOp::Append {
            queue: q,
            msg: message(1, 0, 0),
            quota: 1,
        };
        let others = [
            WriteOp::CreateQueue(Box::new(record())),
            WriteOp::SetSenderKey {
                queue: q,
                key: AuthSecretKey::generate(&mut OsRng).public(),
            },
            WriteOp::Disable { queue: q },
            WriteOp::DeleteQueue { queue: q },
            WriteOp::Touch { queue: q, now: 0 },
            WriteOp::RecordForward {
                ephemeral: [0; 32],
                expiry: 0,
                now: 0,
            },
            send.clone(),
        ];
        let bound = Duration::from_millis(250);
        let t0 = Instant::now();
        let kind = |ops: &[&WriteOp], unsynced: Option<Instant>, now: Instant| {
            commit_kind(ops.iter().copied(), false, true, unsynced, now, bound)
        };
        assert_eq!(kind(&[&ack], None, t0), Commit::Relaxed);
        assert_eq!(kind(&[&sweep, &ack], None, t0), Commit::Relaxed);
        for other in &others {
            assert_eq!(kind(&[other], None, t0), Commit::Durable, "{other:?}");
            // A mixed batch is durable, whatever it is mixed with.
            assert_eq!(kind(&[&ack, other, &sweep], None, t0), Commit::Durable);
        }
        // Deletions stay relaxed while the oldest relaxed commit is younger than the bound,
        // and the first batch at the bound is durable.
        assert_eq!(kind(&[&ack], Some(t0), t0 + bound / 2), Commit::Relaxed);
        assert_eq!(kind(&[&ack], Some(t0), t0 + bound), Commit::Durable);
        // Without a timer to bound them, no commit is relaxed.
        assert_eq!(
            commit_kind([&ack], false, false, None, t0, bound),
            Commit::Durable
        );
        // unsafe_no_fsync: nothing is durable, as before.
        for op in others.iter().chain([&ack, &sweep]) {
            assert_eq!(
                commit_kind([op], true, true, None, t0, bound),
                Commit::Relaxed
            );
        }
    }
}

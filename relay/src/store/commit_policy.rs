//! The group-commit policy: which batch is committed durably (fsync) and which relaxed,
//! which relaxed-only batch is held for the next one, and when the writer must wake to keep
//! a relaxed commit within its bound — the rules of the store's # Durability, as a plain
//! struct ([`CommitPolicy`]) driven with the time.
//!
//! What it owns: [`RELAXED_COMMIT_BOUND`], [`RELAXED_HOLD`], those decisions, and when the
//! oldest commit not yet durable was made. What it does not: the batching loop, the held
//! writes and the commits (`writer`), or which writes need durability
//! ([`WriteOp::needs_durability`], beside the writes).

use std::time::{Duration, Instant};

use super::{StoreOptions, WriteOp};

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

/// The group-commit policy as the writer applies it: when a batch is committed durably,
/// when a relaxed-only batch is held for the next one, and when the writer must act without
/// a write. A plain struct driven with the time (`now` is always an argument), so tests run
/// it without a thread; the writer keeps the held writes and does the commits.
#[derive(Debug)]
pub(super) struct CommitPolicy {
    /// Benchmark-only ([`StoreOptions::unsafe_no_fsync`]): no commit is ever durable.
    unsafe_no_fsync: bool,
    /// Most writes per batch ([`StoreOptions::max_batch`]): a batch this large is not held.
    max_batch: usize,
    /// Longest time a relaxed commit stays non-durable ([`RELAXED_COMMIT_BOUND`]).
    bound: Duration,
    /// How long a relaxed-only batch waits for the next one ([`StoreOptions::relaxed_hold`]).
    hold: Duration,
    /// When the oldest relaxed commit that no durable commit has followed yet started;
    /// `None` when everything committed is durable.
    unsynced_since: Option<Instant>,
}

impl CommitPolicy {
    /// The policy of a writer with `opts`, whose relaxed commits stay non-durable at most
    /// `bound`.
    pub(super) fn new(opts: &StoreOptions, bound: Duration) -> Self {
        Self {
            unsafe_no_fsync: opts.unsafe_no_fsync,
            max_batch: opts.max_batch,
            bound,
            hold: opts.relaxed_hold,
            unsynced_since: None,
        }
    }

    /// When the writer must act even if no write comes: the oldest relaxed commit reaches
    /// the bound (make it durable), or the hold of the writes held since `held_since` runs
    /// out (commit them), whichever comes first. `None`: wait for the next write.
    pub(super) fn wake_at(&self, held_since: Option<Instant>) -> Option<Instant> {
        let flush_at = self.unsynced_since.map(|since| since + self.bound);
        let release_at = held_since.map(|since| since + self.hold);
        match (flush_at, release_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the writes held since `held_since` have waited out their hold at `now`
    /// (whatever woke the writer).
    pub(super) fn hold_ran_out(&self, held_since: Option<Instant>, now: Instant) -> bool {
        held_since.is_some_and(|h| now >= h + self.hold)
    }

    /// How a batch of `ops` is committed at `now` (see [`commit_kind`]); `can_relax` is
    /// false when the writer has no timer to bound a relaxed commit.
    pub(super) fn kind<'a>(
        &self,
        ops: impl IntoIterator<Item = &'a WriteOp>,
        can_relax: bool,
        now: Instant,
    ) -> Commit {
        commit_kind(
            ops,
            self.unsafe_no_fsync,
            can_relax,
            self.unsynced_since,
            now,
            self.bound,
        )
    }

    /// Whether a batch of `len` writes, to be committed as `kind`, waits for the next batch
    /// instead: only a relaxed one, whose hold has not run out (`waited_out`), not at
    /// shutdown (`closed`), and smaller than a full batch.
    pub(super) fn holds(&self, kind: Commit, len: usize, waited_out: bool, closed: bool) -> bool {
        kind == Commit::Relaxed
            && !self.unsafe_no_fsync
            && !waited_out
            && !closed
            && len < self.max_batch
    }

    /// Records a commit of `kind` whose writes arrived from `started` on. Returns whether a
    /// relaxed commit now waits to be made durable (`CommitStats::flush_pending`).
    pub(super) fn committed(&mut self, kind: Commit, started: Instant) -> bool {
        match kind {
            Commit::Durable => self.unsynced_since = None,
            // Nothing is ever made durable under `unsafe_no_fsync`, so nothing is pending.
            Commit::Relaxed if self.unsafe_no_fsync => {}
            Commit::Relaxed => {
                self.unsynced_since.get_or_insert(started);
            }
        }
        self.unsynced_since.is_some()
    }

    /// A reopen has undone the relaxed commits not yet durable. Returns whether there were
    /// any.
    pub(super) fn undo_relaxed(&mut self) -> bool {
        self.unsynced_since.take().is_some()
    }

    /// Whether a relaxed commit waits to be made durable.
    pub(super) fn flush_pending(&self) -> bool {
        self.unsynced_since.is_some()
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

    fn policy(unsafe_no_fsync: bool) -> CommitPolicy {
        let opts = StoreOptions {
            max_batch: 4,
            unsafe_no_fsync,
            relaxed_hold: Duration::from_millis(5),
            ..StoreOptions::default()
        };
        CommitPolicy::new(&opts, Duration::from_millis(250))
    }

    /// A relaxed-only batch waits for the next one until its hold runs out; a durable, full
    /// or last batch (shutdown) is committed at once, and under `unsafe_no_fsync` nothing
    /// waits.
    #[test]
    fn only_a_small_relaxed_batch_is_held_and_only_until_its_hold_runs_out() {
        let p = policy(false);
        let t0 = Instant::now();
        let hold = Duration::from_millis(5);
        assert!(p.holds(Commit::Relaxed, 1, false, false));
        assert!(p.holds(Commit::Relaxed, 3, false, false));
        assert!(!p.holds(Commit::Relaxed, 4, false, false), "a full batch");
        assert!(!p.holds(Commit::Durable, 1, false, false));
        assert!(!p.holds(Commit::Relaxed, 1, true, false), "hold ran out");
        assert!(!p.holds(Commit::Relaxed, 1, false, true), "shutting down");
        assert!(!policy(true).holds(Commit::Relaxed, 1, false, false));
        assert!(!p.hold_ran_out(None, t0));
        assert!(!p.hold_ran_out(Some(t0), t0 + hold / 2));
        assert!(p.hold_ran_out(Some(t0), t0 + hold));
        assert!(p.hold_ran_out(Some(t0), t0 + 2 * hold));
    }

    /// The writer wakes for the earlier of the hold and the bound, the bound counts from
    /// the oldest relaxed commit not yet durable, and a durable commit or a reopen clears it.
    #[test]
    fn the_bound_runs_from_the_oldest_relaxed_commit_until_a_durable_one() {
        let mut p = policy(false);
        let (t0, hold, bound) = (
            Instant::now(),
            Duration::from_millis(5),
            Duration::from_millis(250),
        );
        let ack = WriteOp::DeleteMessage {
            queue: [1; 32],
            seq: 1,
            release_at_ms: 0,
            received_ms: 0,
        };
        assert_eq!(p.wake_at(None), None, "nothing to do: wait for a write");
        assert_eq!(p.wake_at(Some(t0)), Some(t0 + hold));
        assert!(!p.flush_pending());
        assert!(p.committed(Commit::Relaxed, t0));
        assert!(p.committed(Commit::Relaxed, t0 + bound / 2));
        assert_eq!(p.wake_at(None), Some(t0 + bound), "from the first one");
        assert_eq!(p.wake_at(Some(t0 + bound / 2)), Some(t0 + bound / 2 + hold));
        assert_eq!(p.wake_at(Some(t0 + bound)), Some(t0 + bound));
        assert_eq!(p.kind([&ack], true, t0 + bound / 2), Commit::Relaxed);
        assert_eq!(p.kind([&ack], true, t0 + bound), Commit::Durable);
        assert_eq!(p.kind([&ack], false, t0), Commit::Durable, "no timer");
        assert!(!p.committed(Commit::Durable, t0 + bound));
        assert!(!p.flush_pending());
        assert_eq!(p.wake_at(None), None);
        assert_eq!(p.kind([&ack], true, t0 + 2 * bound), Commit::Relaxed);
        // A reopen undoes relaxed commits: nothing is pending after it.
        assert!(p.committed(Commit::Relaxed, t0 + 2 * bound));
        assert!(p.undo_relaxed());
        assert!(!p.undo_relaxed());
        assert!(!p.flush_pending());
        // Under unsafe_no_fsync nothing is ever pending.
        let mut p = policy(true);
        assert!(!p.committed(Commit::Relaxed, t0));
        assert_eq!(p.wake_at(None), None);
    }
}

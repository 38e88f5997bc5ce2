//! The writer thread: the one place that writes to the database. It takes the writes waiting
//! in its bounded channel (up to `max_batch`) as one batch, holds a relaxed-only batch for
//! the next one or commits it (as `commit_policy` decides), answers each write once its
//! commit has returned, and publishes the commit counts. See the store's # Durability.
//!
//! What it owns: the batching loop, the sequence counter, the idle flush that makes relaxed
//! commits durable, the final flush and the clean-close stamp at shutdown. What it does not:
//! what a write does (`ops`, `expiry`, `replay`), the durable-or-relaxed decision
//! (`commit_policy`), the reopen after a failed batch (`recovery`).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::Durability;
use tokio::sync::{mpsc, oneshot, watch};

use super::commit_policy::{Commit, CommitPolicy};
use super::keys::Keys;
use super::records::{MESSAGES, META, QUEUES};
use super::recovery::{DbSlot, write_clean_stamp};
use super::space::SpaceGuard;
use super::{StoreError, StoreOptions, WriteOp, WriteOutcome, io};

/// Bound of the writer's input channel. Each waiting job holds at most one message
/// (≤ `MAX_BODY` + ~100 bytes), so the channel costs at most ~16 MiB when full; senders
/// wait (backpressure) beyond it.
pub const WRITE_QUEUE: usize = 1024;

/// Positions reserved at a time in the stored counter (see `Writer::seq_reserved`).
const SEQ_BLOCK: u64 = 1 << 16;

/// Histograms the writer fills.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    /// Seconds per durable (fsynced) commit, the empty ones that make relaxed commits
    /// durable included; relaxed commits are not observed here.
    pub commit_seconds: prometheus::Histogram,
    /// Writes per commit, relaxed or durable (the empty durable ones are not observed).
    pub batch_size: prometheus::Histogram,
    /// Relaxed (non-fsynced) commits.
    pub relaxed_commits: prometheus::IntCounter,
    /// 1 while the store is full (new queues and messages refused), 0 otherwise.
    pub full: prometheus::IntGauge,
    /// 1 once the store is read-only after a failed disk write or fsync (until restart).
    pub read_only: prometheus::IntGauge,
}

/// Commits the writer has made since the store was opened (see
/// [`Store::commit_stats`](super::Store::commit_stats)).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Durable commits (fsync), the empty ones that only make relaxed commits durable
    /// included.
    pub durable: u64,
    /// Commits made without fsync: batches of deletions only (see
    /// [`WriteOp::needs_durability`]), and every batch under
    /// [`StoreOptions::unsafe_no_fsync`].
    pub relaxed: u64,
    /// A relaxed commit is waiting for the durable commit that the writer makes within
    /// [`RELAXED_COMMIT_BOUND`](super::RELAXED_COMMIT_BOUND). Cleared by that commit, or when a
    /// reopen after a write failure undoes the relaxed commits. Never set under
    /// [`StoreOptions::unsafe_no_fsync`], where no such commit is made.
    pub flush_pending: bool,
}

/// A write, and where its outcome goes once its batch is committed.
pub(super) struct Job {
    pub(super) op: WriteOp,
    pub(super) reply: oneshot::Sender<Result<WriteOutcome, StoreError>>,
}

/// What the writer thread receives.
// Nearly every message is a `Job`: boxing it would cost an allocation per write to save
// nothing (the rare `Reopen` is the small one).
#[allow(clippy::large_enum_variant)]
pub(super) enum Msg {
    /// A write to apply.
    Job(Job),
    /// A reader found the database unusable even if no write comes: `None` when the slot
    /// was empty (an earlier reopen failed: try again), `Some(instance)` when that instance
    /// (its address) is latched after an I/O error. Stale requests (the instance was
    /// replaced since) are ignored, so that reads failing during a reopen cannot make the
    /// writer reopen again and again.
    Reopen(Option<usize>),
}

/// The writer thread's state: it alone writes to the database (see [`spawn`]).
pub(super) struct Writer {
    pub(super) slot: Arc<DbSlot>,
    pub(super) keys: Arc<Keys>,
    pub(super) next_seq: u64,
    /// The counter as stored: every position handed out is below it. It is raised by
    /// [`SEQ_BLOCK`] at a time, so that most commits do not rewrite it (a page and a tree
    /// path fewer per commit); a restart skips the unused rest of a block.
    pub(super) seq_reserved: u64,
    opts: StoreOptions,
    /// Which batch is committed durably or held, and what is not durable yet.
    pub(super) policy: CommitPolicy,
    /// Published after every commit (see [`Store::commit_stats`](super::Store::commit_stats)).
    pub(super) commits: watch::Sender<CommitStats>,
    /// The full state: budget, free space, reserve file (see the store's # Full disk).
    space: SpaceGuard,
    /// Messages and queues in the database as of the last commit (for the budget).
    counts: (u64, u64),
    /// Set after a failed write that is not a full disk (see the store's # Failing disk):
    /// every later write is refused. Never cleared: only a restart leaves it.
    pub(super) read_only: bool,
    /// The ACK deletions of the relaxed commits made since the last durable commit, already
    /// answered: a reopen after a failed write would undo them, so the writer applies them
    /// again (see the store's # Full disk). Emptied by every durable commit, so it holds at
    /// most what arrives within [`RELAXED_COMMIT_BOUND`](super::RELAXED_COMMIT_BOUND)
    /// (≈ 80 bytes each).
    unsynced_deletions: Vec<WriteOp>,
}

/// What [`spawn`] hands back: the writer's input channel, a receiver that fires once the
/// thread has exited and released the database file, and the commit counts it publishes.
type Handles = (
    mpsc::Sender<Msg>,
    oneshot::Receiver<()>,
    watch::Receiver<CommitStats>,
);

/// Starts the writer thread on the database in `slot`, handing out positions from
/// `next_seq`.
pub(super) fn spawn(
    slot: Arc<DbSlot>,
    keys: Arc<Keys>,
    next_seq: u64,
    opts: StoreOptions,
    relaxed_bound: Duration,
    path: &Path,
) -> Result<Handles, StoreError> {
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    let (done_tx, done_rx) = oneshot::channel();
    let (commits_tx, commits_rx) = watch::channel(CommitStats::default());
    let counts = slot.get().map_or((0, 0), |db| read_counts(&db));
    let mut space = SpaceGuard::new(
        path,
        opts.max_store_bytes,
        opts.reserve_bytes,
        opts.metrics.as_ref().map(|m| m.full.clone()),
    );
    space.update(counts.0, counts.1);
    let writer = Writer {
        space,
        counts,
        read_only: false,
        unsynced_deletions: Vec::new(),
        slot,
        keys,
        next_seq,
        seq_reserved: next_seq,
        policy: CommitPolicy::new(&opts, relaxed_bound),
        opts,
        commits: commits_tx,
    };
    let db_path = path.to_owned();
    std::thread::Builder::new()
        .name("sotto-store-writer".into())
        .spawn(move || {
            // `run` returns once every handle is gone, after dropping the last reference
            // to the database, which closes it.
            if writer.run(rx) {
                write_clean_stamp(&db_path);
            }
            let _ = done_tx.send(());
        })
        .map_err(io)?;
    Ok((tx, done_rx, commits_rx))
}

impl Writer {
    /// Applies writes until every [`Store`](super::Store) handle is gone, then makes the last
    /// commit durable and closes the database. Returns whether it was closed cleanly: open, and the
    /// last batch (and that final durable commit) committed.
    fn run(mut self, mut rx: mpsc::Receiver<Msg>) -> bool {
        // Waiting for the next write no longer than a relaxed commit may stay non-durable
        // needs a timer. The writer is a plain thread and the opener's runtime may be paused
        // (tests) or gone, so it drives its own, which runs nothing else.
        let timer = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => Some(rt),
            Err(e) => {
                tracing::warn!(error = %e, "store writer has no timer: every commit is made durable");
                None
            }
        };
        let mut healthy = true;
        // Relaxed-only writes held for the next batch (at most `max_batch`), and when the
        // first of them arrived.
        let mut held: Vec<Job> = Vec::new();
        let mut held_since: Option<Instant> = None;
        loop {
            let wake_at = self.policy.wake_at(held_since);
            // `None` with `closed` false: the hold ran out (commit what is held, and whatever
            // is queued). `closed`: every handle is gone and nothing is queued any more.
            let (first, closed) = match (wake_at, &timer) {
                (Some(at), Some(rt)) => {
                    let left = at.saturating_duration_since(Instant::now());
                    // The timer is created inside `block_on`: it needs the runtime's context.
                    match rt.block_on(async { tokio::time::timeout(left, rx.recv()).await }) {
                        Ok(Some(m)) => (Some(m), false),
                        Ok(None) => (None, true),
                        Err(_) if !held.is_empty() => (None, false),
                        Err(_) => {
                            // Idle, and a relaxed commit has reached the bound.
                            healthy = self.flush();
                            continue;
                        }
                    }
                }
                _ => {
                    let m = rx.blocking_recv();
                    let closed = m.is_none();
                    (m, closed)
                }
            };
            let mut jobs = std::mem::take(&mut held);
            let hold_started = held_since.take();
            let mut latched = Vec::new();
            let mut take = |m: Msg, jobs: &mut Vec<Job>| match m {
                Msg::Job(j) => jobs.push(j),
                Msg::Reopen(Some(id)) => latched.push(id),
                Msg::Reopen(None) => {}
            };
            // The hold has run out when its deadline has passed, whatever woke the writer.
            let waited_out = self.policy.hold_ran_out(hold_started, Instant::now());
            match first {
                Some(first) => take(first, &mut jobs),
                // Every handle is gone: stop once nothing is held (what is held is committed
                // below like any batch, never held again, and the final flush after the loop
                // makes it durable before the clean-close stamp).
                None if closed && jobs.is_empty() => break,
                // The hold ran out, or shutting down with writes held.
                None => {}
            }
            while jobs.len() < self.opts.max_batch {
                match rx.try_recv() {
                    Ok(m) => take(m, &mut jobs),
                    Err(_) => break,
                }
            }
            // Only the instance that is in the slot now counts as latched.
            let current = self.slot.get().map(|db| Arc::as_ptr(&db) as usize);
            match current {
                Some(id) if latched.contains(&id) => {
                    // A read failed (redb latched it after an I/O error of a read).
                    self.recover(true, true);
                    let undone = std::mem::take(&mut self.unsynced_deletions);
                    self.redo_deletions(&undone, &[]);
                }
                Some(_) => {}
                // An earlier reopen failed. After a full disk the file needs no checksum pass.
                None => self.recover(false, !self.space.full()),
            }
            let jobs = self.refuse(jobs);
            if jobs.is_empty() {
                continue;
            }
            let started = Instant::now();
            // Full: no commit may be undone by a reopen that a failing write would need.
            let can_relax = timer.is_some() && !self.space.full();
            let kind = self
                .policy
                .kind(jobs.iter().map(|j| &j.op), can_relax, started);
            // A relaxed-only batch waits for the next one to carry it (see the store's
            // # Durability), unless its hold has run out or it is as large as a batch gets.
            if self.policy.holds(kind, jobs.len(), waited_out, closed) {
                held = jobs;
                held_since = Some(hold_started.unwrap_or(started));
                continue;
            }
            // The relaxed bound counts from the first held write.
            let started_for_bound = hold_started.map_or(started, |h| h.min(started));
            let seq_before = (self.next_seq, self.seq_reserved);
            match self.apply_batch(&jobs, kind) {
                Ok(outcomes) => {
                    healthy = true;
                    if let Some(m) = &self.opts.metrics {
                        if kind == Commit::Durable {
                            m.commit_seconds.observe(started.elapsed().as_secs_f64());
                        }
                        m.batch_size.observe(jobs.len() as f64);
                    }
                    self.committed(kind, started_for_bound);
                    if kind == Commit::Relaxed && !self.opts.unsafe_no_fsync {
                        self.unsynced_deletions.extend(
                            jobs.iter()
                                .filter(|j| matches!(j.op, WriteOp::DeleteMessage { .. }))
                                .map(|j| j.op.clone()),
                        );
                    }
                    for (job, out) in jobs.into_iter().zip(outcomes) {
                        let _ = job.reply.send(Ok(out));
                    }
                }
                Err(e) => {
                    healthy = false;
                    // Nothing of the batch is committed: positions are reused.
                    (self.next_seq, self.seq_reserved) = seq_before;
                    tracing::error!(error = %e, writes = jobs.len(), "store commit failed; writes refused");
                    // The batch's own deletions are applied again with the undone ones: an
                    // ACK answered early must not come back because a SEND beside it failed.
                    let (deletions, others): (Vec<Job>, Vec<Job>) = jobs
                        .into_iter()
                        .partition(|j| matches!(j.op, WriteOp::DeleteMessage { .. }));
                    let ops: Vec<WriteOp> = deletions.iter().map(|j| j.op.clone()).collect();
                    let redone = self.after_failure(&e, &ops);
                    // A write refused for want of room is answered as one (STORE, not logged
                    // per command).
                    let e = if self.space.full() && !self.read_only {
                        StoreError::Full
                    } else {
                        e
                    };
                    match redone {
                        Some(outcomes) => {
                            for (job, out) in deletions.into_iter().zip(outcomes) {
                                let _ = job.reply.send(Ok(out));
                            }
                        }
                        None => {
                            for job in deletions {
                                let _ = job.reply.send(Err(e.clone()));
                            }
                        }
                    }
                    for job in others {
                        let _ = job.reply.send(Err(e.clone()));
                    }
                }
            }
        }
        // The clean-close stamp vouches for the file as it is: nothing may be left that a
        // crash would undo.
        if self.policy.flush_pending() {
            healthy = self.flush();
        }
        let open = self.slot.get().is_some();
        // The writer holds the last reference to the slot: dropping it closes the database.
        drop(self);
        healthy && open
    }

    /// Records a successful commit and publishes the counts.
    fn committed(&mut self, kind: Commit, started: Instant) {
        let pending = self.policy.committed(kind, started);
        if kind == Commit::Durable {
            self.unsynced_deletions.clear();
        }
        if kind == Commit::Relaxed
            && let Some(m) = &self.opts.metrics
        {
            m.relaxed_commits.inc();
        }
        self.commits.send_modify(|c| {
            match kind {
                Commit::Durable => c.durable += 1,
                Commit::Relaxed => c.relaxed += 1,
            }
            c.flush_pending = pending;
        });
    }

    /// Makes every relaxed commit durable with an empty durable commit. Returns whether it
    /// committed.
    fn flush(&mut self) -> bool {
        let started = Instant::now();
        let result = self
            .slot
            .get()
            .ok_or_else(|| StoreError::Io("the database could not be reopened".into()))
            .and_then(|db| {
                let txn = db.begin_write().map_err(io)?;
                txn.commit().map_err(io)
            });
        match result {
            Ok(()) => {
                if let Some(m) = &self.opts.metrics {
                    m.commit_seconds.observe(started.elapsed().as_secs_f64());
                }
                self.committed(Commit::Durable, started);
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "store commit failed (making deletions durable)");
                self.after_failure(&e, &[]).is_some()
            }
        }
    }

    fn apply_batch(&mut self, jobs: &[Job], kind: Commit) -> Result<Vec<WriteOutcome>, StoreError> {
        let db = self
            .slot
            .get()
            .ok_or_else(|| StoreError::Io("the database could not be reopened".into()))?;
        let mut txn = db.begin_write().map_err(io)?;
        if kind == Commit::Relaxed {
            txn.set_durability(Durability::None).map_err(io)?;
        }
        let mut outcomes = Vec::with_capacity(jobs.len());
        for job in jobs {
            outcomes.push(self.apply(&txn, &job.op)?);
        }
        if self.next_seq > self.seq_reserved {
            let reserved = self.next_seq.saturating_add(SEQ_BLOCK);
            let mut meta = txn.open_table(META).map_err(io)?;
            meta.insert("next_seq", reserved.to_be_bytes().as_slice())
                .map_err(io)?;
            self.seq_reserved = reserved;
        }
        let counts = read_txn_counts(&txn)?;
        txn.commit().map_err(io)?;
        self.counts = counts;
        Ok(outcomes)
    }

    /// Answers the writes the store refuses now, and returns the others: every write while
    /// read-only, new queues and messages while full (re-evaluated here, once per batch).
    fn refuse(&mut self, jobs: Vec<Job>) -> Vec<Job> {
        if jobs.is_empty() {
            return jobs;
        }
        if self.read_only {
            for job in jobs {
                let _ = job.reply.send(Err(StoreError::ReadOnly));
            }
            return Vec::new();
        }
        if !self.space.update(self.counts.0, self.counts.1) {
            return jobs;
        }
        let (refused, kept): (Vec<Job>, Vec<Job>) =
            jobs.into_iter().partition(|j| j.op.takes_room());
        for job in refused {
            let _ = job.reply.send(Err(StoreError::Full));
        }
        kept
    }

    /// After a failed commit: if redb has latched the database (an I/O error, see the
    /// store's # Full disk and # Failing disk), tells a full disk from a failing one, reopens,
    /// and on a full disk applies again, durably, the answered deletions the reopen undid
    /// with `extra` (the failed batch's own). Returns the outcomes of `extra` if they are
    /// committed now.
    fn after_failure(&mut self, e: &StoreError, extra: &[WriteOp]) -> Option<Vec<WriteOutcome>> {
        if !self.latched() {
            // Not an I/O error (a damaged record, a collision): the database is fine and
            // nothing was committed; the deletions can go again on their own.
            return self.redo_deletions(&[], extra);
        }
        if self.space.write_failed(&e.to_string()) {
            // The file is as redb left it at its last commit: no page was altered behind its
            // back, so redb's own repair suffices and the full checksum pass is not needed.
            self.recover(true, false);
        } else {
            if !self.read_only {
                tracing::error!(
                    error = %e,
                    "a write or fsync of the database failed and the disk is not full: the store is read-only from now on (reads go on); check the disk, then restart the relay"
                );
                if let Some(m) = &self.opts.metrics {
                    m.read_only.set(1);
                }
            }
            // As PostgreSQL after a failed fsync: what the kernel holds for the file may not
            // be on disk, so nothing more is acknowledged as durable. The reopen (with the
            // full checksum pass) lets reads go on.
            self.read_only = true;
            self.recover(true, true);
            return None;
        }
        let undone = std::mem::take(&mut self.unsynced_deletions);
        self.redo_deletions(&undone, extra)
    }

    /// Applies `undone` and `extra` (deletions) in one durable commit. Returns the outcomes of
    /// `extra`, or `None` if the commit failed (those ACKed messages are delivered again).
    fn redo_deletions(
        &mut self,
        undone: &[WriteOp],
        extra: &[WriteOp],
    ) -> Option<Vec<WriteOutcome>> {
        if undone.is_empty() && extra.is_empty() {
            return Some(Vec::new());
        }
        let started = Instant::now();
        let result = self.slot.get().ok_or(StoreError::Closed).and_then(|db| {
            let txn = db.begin_write().map_err(io)?;
            for op in undone {
                self.apply(&txn, op)?;
            }
            let mut outcomes = Vec::with_capacity(extra.len());
            for op in extra {
                outcomes.push(self.apply(&txn, op)?);
            }
            let counts = read_txn_counts(&txn)?;
            txn.commit().map_err(io)?;
            self.counts = counts;
            Ok(outcomes)
        });
        match result {
            Ok(outcomes) => {
                self.committed(Commit::Durable, started);
                if !undone.is_empty() {
                    tracing::info!(
                        deletions = undone.len(),
                        "answered deletions undone by the reopen were applied again"
                    );
                }
                Some(outcomes)
            }
            Err(e) => {
                if !undone.is_empty() {
                    tracing::warn!(
                        error = %e,
                        deletions = undone.len(),
                        "cannot apply again the deletions undone by the reopen: those messages will be delivered again"
                    );
                }
                if self.latched() {
                    self.recover(true, false);
                }
                None
            }
        }
    }

    /// Whether redb refuses the database in the slot (latched after an I/O error), or the
    /// slot is empty.
    fn latched(&self) -> bool {
        let Some(db) = self.slot.get() else {
            return true;
        };
        // redb checks its latch first thing here (a read may still be served from its cache);
        // the writer holds no other write transaction, so this does not wait. Dropped at once:
        // an empty transaction rolls back without writing.
        match db.try_begin_write() {
            Ok(_) => false,
            Err(e) => matches!(
                redb::Error::from(e),
                redb::Error::PreviousIo | redb::Error::DatabaseClosed | redb::Error::Io(_)
            ),
        }
    }
}

/// Messages and queues in the database, as a read of it sees them (0 if it cannot be read).
fn read_counts(db: &redb::Database) -> (u64, u64) {
    use redb::{ReadableDatabase as _, ReadableTableMetadata as _};
    let count = || -> Result<(u64, u64), redb::Error> {
        let txn = db.begin_read()?;
        Ok((
            txn.open_table(MESSAGES)?.len()?,
            txn.open_table(QUEUES)?.len()?,
        ))
    };
    count().unwrap_or((0, 0))
}

/// Messages and queues as `txn` would commit them (redb keeps each table's length: no scan).
fn read_txn_counts(txn: &redb::WriteTransaction) -> Result<(u64, u64), StoreError> {
    use redb::ReadableTableMetadata as _;
    let messages = txn.open_table(MESSAGES).map_err(io)?.len().map_err(io)?;
    let queues = txn.open_table(QUEUES).map_err(io)?.len().map_err(io)?;
    Ok((messages, queues))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    use crate::store::recovery::clean_stamp_matches;
    use crate::store::test_support::*;
    use crate::store::*;

    fn histogram() -> prometheus::Histogram {
        prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("h", "h")).unwrap()
    }

    #[tokio::test]
    async fn an_ack_skips_the_fsync_and_is_durable_within_the_bound_when_idle() {
        let dir = tempfile::tempdir().unwrap();
        let (commit_seconds, batch_size) = (histogram(), histogram());
        let relaxed_commits = prometheus::IntCounter::new("r", "r").unwrap();
        let opts = StoreOptions {
            metrics: Some(StoreMetrics {
                commit_seconds: commit_seconds.clone(),
                batch_size: batch_size.clone(),
                relaxed_commits: relaxed_commits.clone(),
                full: prometheus::IntGauge::new("f", "f").unwrap(),
                read_only: prometheus::IntGauge::new("o", "o").unwrap(),
            }),
            ..StoreOptions::default()
        };
        let store = open_with(dir.path(), opts, RELAXED_COMMIT_BOUND);
        let (_, acks) = queue_with_messages(&store, 2).await;
        assert_eq!(
            stats(&store),
            CommitStats {
                durable: 3,
                relaxed: 0,
                flush_pending: false
            }
        );
        let ack = acks.into_iter().next().unwrap();
        assert_eq!(store.write(ack).await.unwrap(), WriteOutcome::Done);
        assert_eq!(
            stats(&store).relaxed,
            1,
            "the ACK was committed without fsync"
        );
        // Nothing else comes: the idle writer makes it durable on its own.
        let mut commits = store.commit_stats();
        let flushed = tokio::time::timeout(
            Duration::from_secs(60),
            commits.wait_for(|c| !c.flush_pending),
        )
        .await
        .expect("the relaxed commit was never made durable")
        .map(|c| *c)
        .unwrap();
        assert_eq!(
            flushed,
            CommitStats {
                durable: 4,
                relaxed: 1,
                flush_pending: false
            },
            "one empty durable commit"
        );
        assert_eq!(
            after_a_crash(&store).await,
            (1, 1),
            "the deletion is on disk"
        );
        // Durable commits (the flush included) are timed; every batch is counted.
        assert_eq!(commit_seconds.get_sample_count(), 4);
        assert_eq!(batch_size.get_sample_count(), 4);
        assert_eq!(
            relaxed_commits.get(),
            1,
            "the ACK's commit is counted as relaxed"
        );
        assert!(store.close(Duration::from_secs(10)).await);
    }

    /// Positions are never handed out twice, across reopens and within a reserved block.
    #[tokio::test]
    async fn positions_stay_unique_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let mut seen = Vec::new();
        let mut q = None;
        for _ in 0..3 {
            let store = open_with(dir.path(), StoreOptions::default(), RELAXED_COMMIT_BOUND);
            let queue = match q {
                Some(q) => q,
                None => queue_with_messages(&store, 0).await.0,
            };
            q = Some(queue);
            for i in 0..3 {
                let out = store
                    .write(WriteOp::Append {
                        queue,
                        msg: message(i, 5_000_000, 5_000_000),
                        quota: 100,
                    })
                    .await
                    .unwrap();
                let WriteOutcome::Appended { seq } = out else {
                    panic!("not appended: {out:?}")
                };
                assert!(
                    seen.iter().all(|&s| s < seq),
                    "position {seq} not above {seen:?}"
                );
                seen.push(seq);
            }
            assert!(store.close(Duration::from_secs(10)).await);
        }
    }

    /// A relaxed-only write waits (at most RELAXED_HOLD) for the next write and commits in
    /// its transaction: one commit for the SEND and the ACK, in the order they were queued.
    #[tokio::test]
    async fn a_held_deletion_rides_with_the_next_write() {
        let dir = tempfile::tempdir().unwrap();
        // A hold no test run outlasts between two submissions, and a short one for the end.
        let store = open_with(
            dir.path(),
            StoreOptions {
                relaxed_hold: Duration::from_secs(3600),
                ..StoreOptions::default()
            },
            Duration::from_secs(24 * 3600),
        );
        let (q, acks) = queue_with_messages(&store, 2).await;
        let before = stats(&store);
        let mut acks = acks.into_iter();
        // Queued, not awaited: the writer holds it and commits nothing meanwhile.
        let mut commits = store.commit_stats();
        commits.mark_unchanged();
        let ack = store.submit(acks.next().unwrap()).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), commits.changed())
                .await
                .is_err(),
            "the deletion was committed on its own"
        );
        let append = store
            .submit(WriteOp::Append {
                queue: q,
                msg: message(9, 5_000_000, 5_000_000),
                quota: 100,
            })
            .await
            .unwrap();
        assert!(matches!(
            append.await.unwrap(),
            WriteOutcome::Appended { .. }
        ));
        assert_eq!(ack.await.unwrap(), WriteOutcome::Done);
        let after = stats(&store);
        assert_eq!(after.durable, before.durable + 1, "one commit for both");
        assert_eq!(after.relaxed, 0);
        assert_eq!(after_a_crash(&store).await, (1, 2), "both on disk");
        // Held and then the store closes: the deletion is committed before the close.
        let last = store.submit(acks.next().unwrap()).await.unwrap();
        assert!(store.close(Duration::from_secs(10)).await);
        assert_eq!(last.await.unwrap(), WriteOutcome::Done);
        let store = open_with(dir.path(), StoreOptions::default(), RELAXED_COMMIT_BOUND);
        assert_eq!(store.message_count(&q).unwrap(), 1);
        // With the default hold, a deletion alone is committed (relaxed) when it runs out.
        let (q2, acks) = queue_with_messages(&store, 1).await;
        let relaxed = stats(&store).relaxed;
        for ack in acks {
            assert_eq!(store.write(ack).await.unwrap(), WriteOutcome::Done);
        }
        assert_eq!(stats(&store).relaxed, relaxed + 1);
        assert_eq!(store.message_count(&q2).unwrap(), 0);
        assert!(store.close(Duration::from_secs(10)).await);
    }

    #[tokio::test]
    async fn a_crash_undoes_relaxed_deletions_until_a_durable_batch_follows() {
        let dir = tempfile::tempdir().unwrap();
        // A bound no test run reaches: the relaxed commits stay relaxed until a durable one.
        let store = open_with(
            dir.path(),
            StoreOptions::default(),
            Duration::from_secs(24 * 3600),
        );
        let (q, acks) = queue_with_messages(&store, 3).await;
        let mut acks = acks.into_iter();
        store.write(acks.next().unwrap()).await.unwrap();
        store
            .write(WriteOp::Expire {
                messages_before: 0,
                queues_idle_before: 0,
                max: 10,
                scan_after: None,
                scan: 10,
            })
            .await
            .unwrap();
        assert_eq!(
            stats(&store),
            CommitStats {
                durable: 4,
                relaxed: 2,
                flush_pending: true
            }
        );
        assert_eq!(
            store.message_count(&q).unwrap(),
            2,
            "reads see the deletion"
        );
        assert_eq!(
            after_a_crash(&store).await,
            (1, 3),
            "a crash now delivers the ACKed message again"
        );
        // A SEND is durable, and takes the earlier deletion to disk with it.
        store
            .write(WriteOp::Append {
                queue: q,
                msg: message(9, 5_000_000, 5_000_000),
                quota: 100,
            })
            .await
            .unwrap();
        assert_eq!(
            stats(&store),
            CommitStats {
                durable: 5,
                relaxed: 2,
                flush_pending: false
            }
        );
        assert_eq!(after_a_crash(&store).await, (1, 3));
        assert_eq!(store.message_count(&q).unwrap(), 3);
        assert!(store.close(Duration::from_secs(10)).await);
    }

    #[tokio::test]
    async fn a_clean_close_makes_relaxed_deletions_durable_before_the_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with(
            dir.path(),
            StoreOptions::default(),
            Duration::from_secs(24 * 3600),
        );
        let path = store.path().to_owned();
        let (q, acks) = queue_with_messages(&store, 3).await;
        for ack in acks.into_iter().take(2) {
            store.write(ack).await.unwrap();
        }
        let commits = store.commit_stats();
        assert!(commits.borrow().flush_pending);
        assert_eq!(after_a_crash(&store).await, (1, 3));
        assert!(store.close(Duration::from_secs(10)).await);
        assert_eq!(
            *commits.borrow(),
            CommitStats {
                durable: 5,
                relaxed: 2,
                flush_pending: false
            },
            "the writer made them durable itself"
        );
        assert!(clean_stamp_matches(&path));
        let store = open(dir.path());
        assert_eq!(store.message_count(&q).unwrap(), 1);
        assert!(store.close(Duration::from_secs(10)).await);
    }

    /// A failed fsync (EIO, not a full disk) is fatal for durability, as in PostgreSQL: the
    /// write is not acknowledged, every later write is refused even once fsync works again,
    /// reads go on, and the file is not stamped clean (the next start checks every page).
    #[tokio::test]
    async fn a_failed_fsync_makes_the_store_read_only_and_reads_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let read_only = prometheus::IntGauge::new("o", "o").unwrap();
        let opts = StoreOptions {
            metrics: Some(StoreMetrics {
                commit_seconds: histogram(),
                batch_size: histogram(),
                relaxed_commits: prometheus::IntCounter::new("r", "r").unwrap(),
                full: prometheus::IntGauge::new("f", "f").unwrap(),
                read_only: read_only.clone(),
            }),
            ..StoreOptions::default()
        };
        let store = open_with(dir.path(), opts, RELAXED_COMMIT_BOUND);
        let path = store.path().to_owned();
        let (q, acks) = queue_with_messages(&store, 2).await;
        let send = |i| WriteOp::Append {
            queue: q,
            msg: message(i, 5_000_000, 5_000_000),
            quota: 100,
        };
        store.inner.slot.fail_syncs.store(true, Ordering::Relaxed);
        let r = store.write(send(7)).await;
        assert!(matches!(r, Err(StoreError::Io(_))), "{r:?}");
        assert_eq!(read_only.get(), 1);
        // The disk answers again: the store still acknowledges nothing.
        store.inner.slot.fail_syncs.store(false, Ordering::Relaxed);
        let r = store.write(send(8)).await;
        assert!(matches!(r, Err(StoreError::ReadOnly)), "{r:?}");
        for ack in acks {
            let r = store.write(ack).await;
            assert!(matches!(r, Err(StoreError::ReadOnly)), "{r:?}");
        }
        assert_eq!(store.message_count(&q).unwrap(), 2, "reads go on");
        assert!(store.close(Duration::from_secs(10)).await);
        assert!(!clean_stamp_matches(&path), "no clean stamp after it");
        let store = open(dir.path());
        assert_eq!(
            store.message_count(&q).unwrap(),
            2,
            "nothing refused is there"
        );
        assert!(store.close(Duration::from_secs(10)).await);
    }

    #[tokio::test]
    async fn unsafe_no_fsync_still_makes_nothing_durable() {
        let dir = tempfile::tempdir().unwrap();
        let opts = StoreOptions {
            unsafe_no_fsync: true,
            ..StoreOptions::default()
        };
        let store = open_with(dir.path(), opts, RELAXED_COMMIT_BOUND);
        let (_, acks) = queue_with_messages(&store, 2).await;
        store.write(acks.into_iter().next().unwrap()).await.unwrap();
        assert_eq!(
            stats(&store),
            CommitStats {
                durable: 0,
                relaxed: 4,
                flush_pending: false
            },
            "no commit is durable and none is scheduled"
        );
        assert_eq!(after_a_crash(&store).await, (0, 0), "not even the SENDs");
        assert!(store.close(Duration::from_secs(10)).await);
    }
}

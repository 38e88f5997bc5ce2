//! The queue store: one redb file, encrypted records, keyed-hash indexes, group commit.
//!
//! What it owns: the database file and the single writer thread. What it does not: queue
//! semantics (who may do what) — sessions decide, the store only applies writes atomically
//! and re-checks the invariants that must hold inside one transaction (queue exists, quota,
//! status).
//!
//! # Layout
//! ```text
//! queues    QueueRef (keyed BLAKE3 of recipient id) → encrypted QueueRecord
//! senders   keyed BLAKE3 of sender id               → QueueRef
//! messages  (QueueRef, seq)                          → release_at_ms (u64) ‖ nonce ‖ encrypted header ‖ body sealed for the recipient
//! pending   (release_at_ms, QueueRef, seq)           → ()   messages not yet released at write time
//! by_time   (received_s, QueueRef, seq)              → ()   for TTL expiry
//! meta      "check" → encrypted constant (detects a wrong storage key); "next_seq" → u64,
//!           above every position handed out (raised a block of 65 536 at a time)
//! ```
//! Wire ids never appear on disk: tables are keyed by `BLAKE3-keyed(index key, "r"|"s" ‖ id)`.
//! Values are XChaCha20-Poly1305 under a key derived from the storage key, with random
//! nonces and the table name and record key as associated data (a record cannot be moved to
//! another key). The one exception is a message's body: it is stored as it will be
//! delivered, already sealed for the recipient ([`SealedBody`]) under the queue's seal key,
//! which is itself stored only inside the encrypted queue record — so without the storage
//! key it is as unreadable as the rest, and delivery needs no second 16 KiB pass. (Version 1
//! message records, written before this, hold the whole message under the storage key; they
//! are still read, and sealed when delivered.) Release and receipt times of *undelivered* messages are visible in keys to
//! someone holding the file without the storage key (documented in the threat model).
//!
//! # Durability
//! Every write goes through one writer thread that groups all writes waiting in its bounded
//! channel (up to `max_batch`) into one transaction: one fsync serves many SENDs. A caller
//! gets its outcome only after that commit returns, so "OK" to a SEND means the message is
//! on disk.
//!
//! Not every batch is worth an fsync. A batch made only of deletions whose loss in a crash
//! is harmless — [`WriteOp::DeleteMessage`] (ACK of a delivered message) and
//! [`WriteOp::Expire`] (TTL and idle sweep) — is committed without one
//! (`Durability::None`): a crash can undo it, and the state after the crash is then what
//! it was before the ACK arrived or the sweep ran. Any other batch is durable, and a durable
//! commit also makes every earlier relaxed commit durable (redb commits in order; a crash
//! recovers the last durable one). No relaxed commit stays non-durable for longer than
//! [`RELAXED_COMMIT_BOUND`]: the next batch after that is durable, and a writer that goes
//! idle makes an empty durable commit when the bound runs out. On shutdown the last commit
//! is made durable before the clean-close stamp is written. The consequence: after a crash,
//! a message whose ACK was answered in the last [`RELAXED_COMMIT_BOUND`] may be delivered
//! again — at least once, never lost. (A write failure does not undo them: see # Full disk.)
//!
//! Such a batch is not even committed at once: the writer holds it for up to
//! [`RELAXED_HOLD`] and puts it in front of the next batch, which usually carries SENDs and
//! is durable anyway. A loaded relay then makes one commit for its SENDs and its ACKs
//! instead of two, and an idle one commits the held deletions (relaxed) when the hold runs
//! out. Held writes stay in order: anything queued after them commits in the same
//! transaction. The bound counts from when the first held write arrived.
//!
//! # Recovery from write failures (disk full, I/O errors)
//! After an I/O error redb refuses every later operation on that `Database`
//! (`StorageError::PreviousIo`), reads included, until it is closed and opened again. The
//! writer therefore treats a failed batch that left redb latched as a reason to reopen: it
//! answers nothing until it has taken the database out of the shared slot, waited for
//! in-flight reads to drop their handles (redb locks the file, so a second `Database` cannot
//! be opened beside the first), closed it and opened the file again (redb repairs it from the
//! last durable commit). Reads that find the slot empty wait for it (up to 1 s) instead of
//! failing. Only then does it answer the failed batch — so by the time a client sees
//! `ERR STORE`, reads are served again. Nothing of a failed batch is acknowledged, except its
//! ACK deletions, which are applied again (below). A failed batch that did not latch redb (a
//! damaged record) needs no reopen. If the reopen itself fails, reads answer an error and
//! every later batch (and any read, through [`Store`]'s reopen request) retries it: the relay
//! recovers by itself once the disk is writable again, without a restart. What kind of
//! failure it was decides the rest:
//!
//! # Full disk
//! The store does not wait for ENOSPC: before each batch it re-evaluates whether it is
//! *full* (`space`): the global budget ([`StoreOptions::max_store_bytes`]) reached, or less
//! free space on the file system than the reserve ([`StoreOptions::reserve_bytes`]). While
//! full, [`WriteOp::takes_room`] writes (new queues and messages) are refused with
//! [`StoreError::Full`] before they reach redb, everything else goes on, and every commit is
//! durable — so a failure cannot undo an answered ACK. One log line and the metric per change
//! of state, never per write.
//!
//! If something else fills the disk anyway and a write fails with ENOSPC, the writer deletes
//! the reserve file ([`RESERVE_SUFFIX`]) so that deletions and redb's repair have room,
//! enters the full state, and reopens *without* the full checksum pass (nothing was written
//! behind redb's back). The reopen undoes the relaxed commits made since the last durable one:
//! their ACK deletions, already answered, are kept in memory by the writer and applied again
//! at once in one durable commit, with the failed batch's own deletions. An ACKed message
//! therefore comes back only if that commit fails too (then at least once, never lost).
//!
//! # Failing disk
//! Any other I/O error (EIO from a write or an fsync) makes the store read-only until the
//! process restarts ([`StoreError::ReadOnly`]), as PostgreSQL treats a failed fsync: after
//! one, the kernel may have dropped dirty pages while reporting them clean, so the writer can
//! no longer vouch for what it acknowledges. The reopen (with the full checksum pass) keeps
//! reads going; every write is refused; no clean-close stamp is written, so the next start
//! verifies every page. (Which call failed is not visible through redb; ENOSPC is the one
//! error treated as a full disk, which on file systems that report it only at fsync — NFS,
//! thin provisioning — is an accepted risk.)
//!
//! # Where things are
//! - `records`: the tables, the stored types and their codecs (what is on disk, byte for
//!   byte).
//! - `keys`: the storage key and what is derived from it: keyed-hash references, sealing.
//! - `reader`: the read side of [`Store`]: lookups and scans on the caller's thread.
//! - `writer`: the writer thread: batches, holds, commits, answers (# Durability).
//! - `commit_policy`: which batch is committed durably and which one is held.
//! - `ops`: what each [`WriteOp`] does inside a batch's transaction.
//! - `expiry`: the TTL and idle sweep ([`WriteOp::Expire`]).
//! - `replay`: the replay memory of forwarded requests ([`WriteOp::RecordForward`]).
//! - `recovery`: the database handle and every (re)opening of it: the checks at open, the
//!   clean-close stamp, the reopen after a write failure (# Recovery from write failures).
//! - `space`: the full state: budget, free-space reserve, reserve file (# Full disk).

mod commit_policy;
mod expiry;
mod keys;
mod ops;
mod reader;
mod records;
mod recovery;
mod replay;
mod space;
#[cfg(test)]
mod test_support;
mod writer;

pub use commit_policy::{RELAXED_COMMIT_BOUND, RELAXED_HOLD};
pub use keys::StorageKey;
pub use ops::{WriteOp, WriteOutcome};
pub use records::{
    MessageHeader, NewMessage, QueueRecord, QueueRef, QueueStatus, SealedBody, StoredMessage,
    decode_legacy_message, decode_queue_record, encode_queue_record,
};
pub use recovery::CLEAN_STAMP_SUFFIX;
pub use replay::MAX_SEEN_FORWARDS;
pub use space::{RESERVE_SUFFIX, STORED_MESSAGE_BYTES, STORED_QUEUE_BYTES};
pub use writer::{CommitStats, StoreMetrics, WRITE_QUEUE};

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use redb::Database;
use sotto_protocol::RecipientId;
use tokio::sync::{mpsc, oneshot, watch};

use keys::Keys;
use records::{BY_TIME, MESSAGES, META, PENDING, QUEUES, SENDERS, seal_check};
use recovery::DbSlot;
use writer::{Job, Msg};

/// Store failures. Messages name the file and the fix where an operator must act.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database file does not exist.
    #[error(
        "database {0} is missing while the relay identity exists: restore it from your backup \
         (a relay never silently starts over with an empty store), or run `sotto-relay init --force`"
    )]
    Missing(PathBuf),
    /// The file exists but cannot be opened as a database.
    #[error(
        "cannot open database {path}: {reason}. The file may be damaged, truncated or unreadable: \
         check its permissions, restore it from your backup; the relay will not start over with an empty store"
    )]
    Open {
        /// File.
        path: PathBuf,
        /// redb's error.
        reason: String,
    },
    /// The storage key does not decrypt this database.
    #[error(
        "database {0} was not written with this storage key (storage.key): restore the matching storage.key from your backup"
    )]
    WrongKey(PathBuf),
    /// A record failed to decrypt or decode.
    #[error("damaged record in the database: {0}")]
    Corrupt(String),
    /// An I/O or redb error during a transaction (e.g. disk full). Nothing of that batch was
    /// committed.
    #[error("database write failed: {0}")]
    Io(String),
    /// A new queue or message refused because the store is full: the storage budget is
    /// reached or the disk is nearly full (see the store's # Full disk). Nothing was written.
    #[error("store full: new queues and messages are refused until deliveries free room")]
    Full,
    /// Every write refused: a write or fsync of the database failed in a way that is not a
    /// full disk, so what is on disk can no longer be vouched for (see the store's # Failing
    /// disk). Reads go on; a restart is needed to accept writes again.
    #[error(
        "store is read-only after a failed disk write or fsync: check the disk and the kernel log, then restart the relay"
    )]
    ReadOnly,
    /// The writer has stopped (shutdown).
    #[error("store is shut down")]
    Closed,
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// Store options.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Most writes per transaction.
    pub max_batch: usize,
    /// Benchmark-only: no fsync.
    pub unsafe_no_fsync: bool,
    /// Page cache in bytes.
    pub cache_bytes: usize,
    /// Commit metrics.
    pub metrics: Option<StoreMetrics>,
    /// How long a relaxed-only batch waits for the next one ([`RELAXED_HOLD`]).
    pub relaxed_hold: Duration,
    /// Global storage budget in bytes, as estimated from what the database holds
    /// ([`STORED_MESSAGE_BYTES`] per message, [`STORED_QUEUE_BYTES`] per queue): at it, new
    /// queues and messages are refused ([`StoreError::Full`]). 0: no budget.
    pub max_store_bytes: u64,
    /// Free space the database's file system must keep, and the size of the emergency
    /// reserve file ([`RESERVE_SUFFIX`]): below it, new queues and messages are refused.
    /// 0: neither.
    pub reserve_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_batch: 256,
            unsafe_no_fsync: false,
            cache_bytes: 64 << 20,
            metrics: None,
            relaxed_hold: RELAXED_HOLD,
            max_store_bytes: 0,
            reserve_bytes: 0,
        }
    }
}

struct Inner {
    slot: Arc<DbSlot>,
    keys: Arc<Keys>,
    /// A sealed queue record of no queue, and its reference (never stored): what a lookup
    /// that finds nothing opens, so that it costs what a hit costs.
    dummy: (QueueRef, Vec<u8>),
    path: PathBuf,
    writer: mpsc::Sender<Msg>,
    /// Fires when the writer thread has exited and released the database file.
    writer_done: std::sync::Mutex<Option<oneshot::Receiver<()>>>,
    /// What the writer has committed, relaxed or durable.
    commits: watch::Receiver<CommitStats>,
}

/// Handle to the store. Cheap to clone; reads run on the caller's thread (redb MVCC), writes
/// go to the writer thread.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.inner.path.display())
    }
}

impl Store {
    /// Creates a new, empty database at `path` (which must not exist).
    ///
    /// # Errors
    /// The file exists or cannot be written.
    pub fn create(path: &Path, key: &StorageKey) -> Result<(), StoreError> {
        use std::os::unix::fs::PermissionsExt as _;
        if path.exists() {
            return Err(StoreError::Open {
                path: path.to_owned(),
                reason: "refusing to create a database over an existing file".into(),
            });
        }
        let db = Database::create(path).map_err(|e| StoreError::Open {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        let keys = Keys::new(key);
        let txn = db.begin_write().map_err(io)?;
        {
            let mut meta = txn.open_table(META).map_err(io)?;
            let check = seal_check(&keys);
            meta.insert("check", check.as_slice()).map_err(io)?;
            meta.insert("next_seq", 1u64.to_be_bytes().as_slice())
                .map_err(io)?;
            txn.open_table(QUEUES).map_err(io)?;
            txn.open_table(SENDERS).map_err(io)?;
            txn.open_table(MESSAGES).map_err(io)?;
            txn.open_table(PENDING).map_err(io)?;
            txn.open_table(BY_TIME).map_err(io)?;
        }
        txn.commit().map_err(io)?;
        // Closed here, cleanly, and stamped as such: the first open of a database just
        // created needs no full page-checksum pass (nor its log line).
        drop(db);
        recovery::write_clean_stamp(path);
        Ok(())
    }

    /// Opens an existing database and starts its writer thread.
    ///
    /// # Errors
    /// [`StoreError::Missing`], [`StoreError::Open`] (damaged, unreadable),
    /// [`StoreError::WrongKey`].
    pub fn open(path: &Path, key: &StorageKey, opts: StoreOptions) -> Result<Store, StoreError> {
        Self::open_with_bound(path, key, opts, RELAXED_COMMIT_BOUND)
    }

    /// [`Store::open`] with another bound than [`RELAXED_COMMIT_BOUND`] (tests that must
    /// look at the file while a relaxed commit is certainly not yet durable).
    fn open_with_bound(
        path: &Path,
        key: &StorageKey,
        opts: StoreOptions,
        relaxed_bound: Duration,
    ) -> Result<Store, StoreError> {
        let (slot, keys, next_seq) = recovery::open_database(path, key, opts.cache_bytes)?;
        let keys = Arc::new(keys);
        let (tx, done_rx, commits_rx) = writer::spawn(
            slot.clone(),
            keys.clone(),
            next_seq,
            opts,
            relaxed_bound,
            path,
        )?;
        let dummy = reader::dummy_record(&keys);
        Ok(Store {
            inner: Arc::new(Inner {
                slot,
                keys,
                dummy,
                path: path.to_owned(),
                writer: tx,
                writer_done: std::sync::Mutex::new(Some(done_rx)),
                commits: commits_rx,
            }),
        })
    }

    /// Releases this handle and waits until every write queued before it is committed and the
    /// writer thread has released the database file. Returns `false` if other handles are
    /// still alive after `timeout` (the file then stays open until they are dropped).
    pub async fn close(self, timeout: std::time::Duration) -> bool {
        let done = self
            .inner
            .writer_done
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        drop(self);
        match done {
            Some(rx) => tokio::time::timeout(timeout, rx).await.is_ok(),
            None => false,
        }
    }

    /// The writer's commit counts, published after every commit and before the writes in it
    /// are answered: `wait_for(|c| !c.flush_pending)` on it waits until every write
    /// *committed* so far is durable. (Writes still queued, or held for the next batch, are
    /// not counted: the relay answers an ACK on a subscription before its deletion reaches
    /// the writer.) The value stays readable after the writer has stopped.
    pub fn commit_stats(&self) -> watch::Receiver<CommitStats> {
        self.inner.commits.clone()
    }

    /// The on-disk reference of a recipient id.
    pub fn queue_ref(&self, id: &RecipientId) -> QueueRef {
        self.inner.keys.recipient_ref(id)
    }

    /// Applies a write and returns its outcome once it is committed: durably, unless
    /// [`WriteOp::needs_durability`] says otherwise (then durable within
    /// [`RELAXED_COMMIT_BOUND`]).
    ///
    /// # Errors
    /// [`StoreError::Io`] if the batch it was part of failed to commit (nothing of it is on
    /// disk), [`StoreError::Closed`] after shutdown.
    pub async fn write(&self, op: WriteOp) -> Result<WriteOutcome, StoreError> {
        self.submit(op).await?.await
    }

    /// Queues `op` for the writer and returns its outcome still to come. Writes are applied
    /// in the order they are queued, so anything queued after this returns (by any session)
    /// commits with it or after it.
    ///
    /// # Errors
    /// [`StoreError::Closed`] after shutdown; the returned future as [`Store::write`].
    pub async fn submit(
        &self,
        op: WriteOp,
    ) -> Result<impl Future<Output = Result<WriteOutcome, StoreError>> + use<>, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .writer
            .send(Msg::Job(Job { op, reply }))
            .await
            .map_err(|_| StoreError::Closed)?;
        Ok(async move { rx.await.map_err(|_| StoreError::Closed)? })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
}

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
//! is made durable before the clean-close stamp is written. The consequence: after a crash
//! (or a write failure, see below), a message whose ACK was answered in the last
//! [`RELAXED_COMMIT_BOUND`] may be delivered again — at least once, never lost.
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
//! writer therefore treats a failed batch as a reason to reopen: it answers nothing until it
//! has taken the database out of the shared slot, waited for in-flight reads to drop their
//! handles (redb locks the file, so a second `Database` cannot be opened beside the first),
//! closed it and opened the file again (redb repairs it from the last durable commit if
//! needed). Only then does it answer the failed batch with [`StoreError::Io`] — so by the
//! time a client sees `ERR STORE`, reads are served again. Nothing of a failed batch is
//! acknowledged. The reopen also undoes relaxed commits not yet made durable, as a crash
//! would: those ACKed messages are delivered again. If the reopen itself fails, reads
//! answer an error and every later batch (and any read, through [`Store`]'s reopen request)
//! retries it: the relay recovers by itself once the disk is writable again, without a
//! restart.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand_core::{CryptoRngCore, RngCore as _};
use redb::{
    Database, Durability, ReadTransaction, ReadableDatabase as _, ReadableTable,
    ReadableTableMetadata as _, TableDefinition, WriteTransaction,
};
use sotto_protocol::aead::{TAG_LEN, XChaCha};
use sotto_protocol::ids::ID_LEN;
use sotto_protocol::keys::KEY_LEN;
use sotto_protocol::seal::BodySealKey;
use sotto_protocol::{AuthPublicKey, DhPublicKey, MessageId, RecipientId, SenderId};
use tokio::sync::{mpsc, oneshot, watch};
use zeroize::Zeroizing;

/// Reference to a queue on disk: the keyed hash of its recipient id.
pub type QueueRef = [u8; 32];

const QUEUES: TableDefinition<'_, QueueRef, &[u8]> = TableDefinition::new("queues");
const SENDERS: TableDefinition<'_, [u8; 32], QueueRef> = TableDefinition::new("senders");
const MESSAGES: TableDefinition<'_, (QueueRef, u64), &[u8]> = TableDefinition::new("messages");
const PENDING: TableDefinition<'_, (u64, QueueRef, u64), ()> = TableDefinition::new("pending");
const BY_TIME: TableDefinition<'_, (u64, QueueRef, u64), ()> = TableDefinition::new("by_time");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
/// Replay memory of forwarded (RFWD) requests: keyed hash of the sealed request's ephemeral
/// key → its expiry (Unix seconds). Created on first use, so older stores need no upgrade.
const FWD_SEEN: TableDefinition<'_, [u8; 32], u64> = TableDefinition::new("fwd_seen");
/// The same entries by expiry, for removing them once they have expired.
const FWD_EXPIRY: TableDefinition<'_, (u64, [u8; 32]), ()> = TableDefinition::new("fwd_expiry");

/// Most forwarded requests the replay memory holds (about 100 bytes of disk each, so
/// ≈ 100 MiB at worst; no memory beyond redb's cache). Entries live at most
/// `forward::MAX_EXPIRY_AHEAD_S` (600 s), so this is more than 1700 forwarded requests per
/// second sustained; beyond it [`WriteOp::RecordForward`] answers
/// [`WriteOutcome::ForwardMemoryFull`].
pub const MAX_SEEN_FORWARDS: u64 = 1 << 20;

/// Expired replay-memory entries removed by each [`WriteOp::RecordForward`]: more than the
/// one it adds, so the memory shrinks back as soon as traffic lets entries expire.
const FWD_CLEANUP_PER_WRITE: usize = 8;

const CHECK_PLAINTEXT: &[u8] = b"sotto relay store v1";
const NONCE_LEN: usize = 24;
const RECORD_VERSION: u8 = 1;

/// Bound of the writer's input channel. Each waiting job holds at most one message
/// (≤ `MAX_BODY` + ~100 bytes), so the channel costs at most ~16 MiB when full; senders
/// wait (backpressure) beyond it.
pub const WRITE_QUEUE: usize = 1024;

/// Longest time a relaxed (non-fsynced) commit stays non-durable: how many ACKs a crash can
/// undo. The next commit after it is durable whatever it holds, and an idle writer makes an
/// empty durable commit when it runs out, so the worst case is this plus one commit in
/// progress. 250 ms costs at most four fsyncs a second on a relay that only deletes; in a
/// load run at 1 500 messages a second (`sotto-loadtest --delay-mode off --rate 1500`) the
/// relay made 70 % fewer `fdatasync` calls than with every commit durable (counted under
/// strace, which slows it: 10 946 → 3 247 for 15 000 messages).
pub const RELAXED_COMMIT_BOUND: Duration = Duration::from_millis(250);

/// Positions reserved at a time in the stored counter (see `Writer::seq_reserved`).
const SEQ_BLOCK: u64 = 1 << 16;

/// How long the writer holds a batch of relaxed-only writes (ACK deletions, expiry) for the
/// next batch to carry, before committing it on its own. Their callers wait this much
/// longer for the outcome; the relay answers ACKs on subscriptions before that anyway.
pub const RELAXED_HOLD: Duration = Duration::from_millis(5);

/// The key that encrypts and indexes the store. Kept in its own file, apart from the database.
#[derive(Clone)]
pub struct StorageKey(Zeroizing<[u8; KEY_LEN]>);

impl StorageKey {
    /// A fresh random key.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut k = [0u8; KEY_LEN];
        rng.fill_bytes(&mut k);
        Self(Zeroizing::new(k))
    }

    /// From raw bytes.
    pub fn from_bytes(b: [u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(b))
    }

    /// Raw bytes (secret).
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl std::fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StorageKey(<redacted>)")
    }
}

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
    /// The writer has stopped (shutdown).
    #[error("store is shut down")]
    Closed,
}

fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Io(e.to_string())
}

/// Whether a queue accepts messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueStatus {
    /// Accepting messages.
    Active,
    /// Disabled by its recipient (OFF).
    Off,
}

/// A queue as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct QueueRecord {
    /// Recipient id.
    pub recipient_id: RecipientId,
    /// Sender id.
    pub sender_id: SenderId,
    /// Verifies the recipient's commands.
    pub recipient_key: AuthPublicKey,
    /// Verifies the sender's SENDs once secured.
    pub sender_key: Option<AuthPublicKey>,
    /// The relay's per-queue DH public key (returned in IDS).
    pub relay_dh_public: DhPublicKey,
    /// Body sealing key shared with the recipient (the DH secret is not kept).
    pub seal_key: BodySealKey,
    /// Accepting or not.
    pub status: QueueStatus,
    /// Creation time, Unix seconds.
    pub created_at: u64,
    /// Last recipient or sender activity, Unix seconds (coarse: updated at most hourly).
    pub last_active: u64,
}

impl std::fmt::Debug for QueueRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueueRecord")
            .field("secured", &self.sender_key.is_some())
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// A message as given to [`WriteOp::Append`].
#[derive(Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Message id (random, unique per queue).
    pub msg_id: MessageId,
    /// Rounded timestamp shown to the recipient, Unix seconds.
    pub timestamp: u64,
    /// Exact receipt time, Unix milliseconds (for expiry and delay metrics; never sent).
    pub received_ms: u64,
    /// When the message becomes visible, Unix milliseconds.
    pub release_at_ms: u64,
    /// SEND flags.
    pub flags: u8,
    /// Body as it will be delivered: sealed for the recipient.
    pub body: SealedBody,
}

impl std::fmt::Debug for NewMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NewMessage({} bytes)", self.body.len())
    }
}

/// A message body sealed for its recipient (`sotto_protocol::seal`, nonce = the message
/// id), as the relay stores and delivers it. Only [`SealedBody::seal`] makes one, so no body
/// reaches the store in the clear. The store keeps these bytes as they are — ciphertext
/// under the queue's seal key, which is itself stored only under the storage key — and
/// encrypts the rest of the record; delivery sends them without another pass over 16 KiB.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedBody(Vec<u8>);

impl SealedBody {
    /// Seals `body` for the recipient of the queue whose seal key is `key`, as message `id`.
    pub fn seal(key: &BodySealKey, id: &MessageId, body: &[u8]) -> Self {
        Self(key.seal(id, body))
    }

    /// The sealed bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The sealed bytes, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }

    /// Length of the sealed bytes (body + 16).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are no bytes (never, for a sealed body).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for SealedBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SealedBody({} bytes)", self.0.len())
    }
}

/// A stored message with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Sequence number within the store (orders messages of a queue).
    pub seq: u64,
    /// The message.
    pub msg: NewMessage,
}

/// A write, applied by the writer thread inside a grouped transaction.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Create a queue (ids must be fresh).
    CreateQueue(Box<QueueRecord>),
    /// KEY/SKEY: set the sender key if none; same key again is accepted.
    SetSenderKey {
        /// Queue.
        queue: QueueRef,
        /// Key.
        key: AuthPublicKey,
    },
    /// OFF.
    Disable {
        /// Queue.
        queue: QueueRef,
    },
    /// DEL: the queue, its sender index and all its messages.
    DeleteQueue {
        /// Queue.
        queue: QueueRef,
    },
    /// SEND.
    Append {
        /// Queue.
        queue: QueueRef,
        /// Message.
        msg: NewMessage,
        /// Most messages the queue may hold.
        quota: u32,
    },
    /// ACK: delete the message at position `seq` of `queue`, which the caller read with
    /// [`Store::first_visible`] (its times come from that authenticated read). Positions are
    /// never reused — the sequence counter is committed with every batch and rolled back only
    /// with a batch that committed nothing — so the position names the message; the stored
    /// release time is compared as a cheap consistency check. The record is not decrypted
    /// again (that cost a 16 KiB decryption per delivered message).
    DeleteMessage {
        /// Queue.
        queue: QueueRef,
        /// Position.
        seq: u64,
        /// Its release time (Unix ms), as read.
        release_at_ms: u64,
        /// Its receipt time (Unix ms), as read: locates its expiry index entry.
        received_ms: u64,
    },
    /// Record activity on a queue (for idle expiry).
    Touch {
        /// Queue.
        queue: QueueRef,
        /// Unix seconds.
        now: u64,
    },
    /// RFWD: remember a sealed request's ephemeral key until `expiry` (Unix seconds), unless
    /// it is already remembered or `expiry` is not after the highest expiry ever forgotten.
    /// Removes up to a few expired entries (expiry before `now`) first.
    RecordForward {
        /// The sealed request's ephemeral public key (stored only as a keyed hash).
        ephemeral: [u8; 32],
        /// When the request expires.
        expiry: u64,
        /// The relay's clock, Unix seconds.
        now: u64,
    },
    /// Delete messages received before `messages_before` (Unix seconds), at most `max` per
    /// call, and sweep on through the queues for ones idle since before
    /// `queues_idle_before`: examine at most `scan` queue records after `scan_after` (from
    /// the first when `None`), deleting at most `max` of them. The sweep is a cursor walk so
    /// that no single transaction reads every queue (with 1 000 000 queues that took the
    /// writer ≈ 5 s, during which no SEND could commit), and no index of activity times has
    /// to be kept on disk in the clear.
    Expire {
        /// Message cutoff.
        messages_before: u64,
        /// Queue cutoff.
        queues_idle_before: u64,
        /// Work bound per call (messages deleted, queues deleted).
        max: usize,
        /// Sweep position: the last queue reference examined by the previous call.
        scan_after: Option<QueueRef>,
        /// Queue records examined per call.
        scan: usize,
    },
}

impl WriteOp {
    /// Whether the batch holding this write must be committed durably (fsync) before any
    /// caller is answered. Only deletions whose loss in a crash merely undoes them are
    /// exempt: an ACK's deletion (the message is delivered again, which clients recognise)
    /// and the expiry sweep (it runs again at the next start). Everything else is a promise
    /// to a client (a stored SEND, a created, secured, disabled or deleted queue, replay
    /// memory of a forwarded request) or feeds a later decision that must not be undone: a
    /// lost [`WriteOp::Touch`] could let the idle sweep delete a queue that is in use.
    pub fn needs_durability(&self) -> bool {
        match self {
            WriteOp::DeleteMessage { .. } | WriteOp::Expire { .. } => false,
            WriteOp::CreateQueue(_)
            | WriteOp::SetSenderKey { .. }
            | WriteOp::Disable { .. }
            | WriteOp::DeleteQueue { .. }
            | WriteOp::Append { .. }
            | WriteOp::Touch { .. }
            | WriteOp::RecordForward { .. } => true,
        }
    }
}

/// What a write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Done.
    Done,
    /// The queue does not exist (any more).
    NoQueue,
    /// SEND to a disabled queue.
    Disabled,
    /// The queue is full.
    QuotaExceeded,
    /// A different sender key is already set.
    KeyConflict,
    /// ACK of a message that is not there (already deleted or another id).
    NoMessage,
    /// SEND stored at this position.
    Appended {
        /// Position.
        seq: u64,
    },
    /// RFWD: the request was seen before, or expires at or before a forgotten one.
    Replayed,
    /// RFWD: the replay memory holds [`MAX_SEEN_FORWARDS`] live entries.
    ForwardMemoryFull,
    /// Expiry results.
    Expired {
        /// Messages deleted.
        messages: u64,
        /// Queues deleted.
        queues: u64,
        /// Whether the message bound was hit (call again).
        more: bool,
        /// Where the queue sweep stopped (pass it as `scan_after`), `None` when it reached
        /// the last queue.
        next_scan: Option<QueueRef>,
    },
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
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_batch: 256,
            unsafe_no_fsync: false,
            cache_bytes: 64 << 20,
            metrics: None,
            relaxed_hold: RELAXED_HOLD,
        }
    }
}

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
}

/// Commits the writer has made since the store was opened (see [`Store::commit_stats`]).
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
    /// [`RELAXED_COMMIT_BOUND`]. Cleared by that commit, or when a reopen after a write
    /// failure undoes the relaxed commits. Never set under [`StoreOptions::unsafe_no_fsync`],
    /// where no such commit is made.
    pub flush_pending: bool,
}

struct Keys {
    index: [u8; 32],
    aead: XChaCha,
}

impl Keys {
    fn new(k: &StorageKey) -> Self {
        let index = blake3::derive_key("sotto v1 store index", k.as_bytes());
        let enc = Zeroizing::new(blake3::derive_key(
            "sotto v1 store encryption",
            k.as_bytes(),
        ));
        Self {
            index,
            aead: XChaCha::new(&enc),
        }
    }

    fn recipient_ref(&self, id: &RecipientId) -> QueueRef {
        let mut h = blake3::Hasher::new_keyed(&self.index);
        h.update(b"r");
        h.update(id.as_bytes());
        *h.finalize().as_bytes()
    }

    fn sender_ref(&self, id: &SenderId) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.index);
        h.update(b"s");
        h.update(id.as_bytes());
        *h.finalize().as_bytes()
    }

    fn forward_ref(&self, ephemeral: &[u8; 32]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.index);
        h.update(b"f");
        h.update(ephemeral);
        *h.finalize().as_bytes()
    }

    fn seal(&self, ad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .aead
            .seal_in_place_detached(&nonce, ad, &mut out[NONCE_LEN..]);
        out.extend_from_slice(&tag);
        out
    }

    fn open(&self, ad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        if sealed.len() < NONCE_LEN {
            return Err(StoreError::Corrupt("record too short".into()));
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce = <[u8; NONCE_LEN]>::try_from(nonce)
            .map_err(|_| StoreError::Corrupt("record too short".into()))?;
        self.aead
            .open(&nonce, ad, ct)
            .map(Zeroizing::new)
            .map_err(|_| StoreError::Corrupt("record failed authentication".into()))
    }
}

fn queue_ad(queue: &QueueRef) -> Vec<u8> {
    let mut ad = b"queues".to_vec();
    ad.extend_from_slice(queue);
    ad
}

fn message_ad(queue: &QueueRef, seq: u64, release_at: u64) -> Vec<u8> {
    let mut ad = b"messages".to_vec();
    ad.extend_from_slice(queue);
    ad.extend_from_slice(&seq.to_be_bytes());
    ad.extend_from_slice(&release_at.to_be_bytes());
    ad
}

/// Encoding of a [`QueueRecord`] (before encryption); decoding lives in
/// [`decode_queue_record`] and is fuzzed.
pub fn encode_queue_record(q: &QueueRecord) -> Vec<u8> {
    let mut v = Vec::with_capacity(256);
    v.push(RECORD_VERSION);
    v.extend_from_slice(q.recipient_id.as_bytes());
    v.extend_from_slice(q.sender_id.as_bytes());
    v.extend_from_slice(&q.recipient_key.to_bytes());
    match &q.sender_key {
        Some(k) => {
            v.push(1);
            v.extend_from_slice(&k.to_bytes());
        }
        None => v.push(0),
    }
    v.extend_from_slice(q.relay_dh_public.as_bytes());
    v.extend_from_slice(q.seal_key.as_bytes());
    v.push(match q.status {
        QueueStatus::Active => 0,
        QueueStatus::Off => 1,
    });
    v.extend_from_slice(&q.created_at.to_be_bytes());
    v.extend_from_slice(&q.last_active.to_be_bytes());
    v
}

/// Decodes a queue record.
///
/// # Errors
/// [`StoreError::Corrupt`] on any malformed input.
pub fn decode_queue_record(b: &[u8]) -> Result<QueueRecord, StoreError> {
    use sotto_protocol::codec::Reader;
    let bad = |e: sotto_protocol::DecodeError| StoreError::Corrupt(format!("queue record: {e}"));
    let mut r = Reader::new(b);
    if r.u8().map_err(bad)? != RECORD_VERSION {
        return Err(StoreError::Corrupt("queue record: unknown version".into()));
    }
    let recipient_id = RecipientId(r.array::<ID_LEN>().map_err(bad)?);
    let sender_id = SenderId(r.array::<ID_LEN>().map_err(bad)?);
    let recipient_key = AuthPublicKey::from_bytes(&r.array().map_err(bad)?).map_err(bad)?;
    let sender_key = match r.u8().map_err(bad)? {
        0 => None,
        1 => Some(AuthPublicKey::from_bytes(&r.array().map_err(bad)?).map_err(bad)?),
        _ => {
            return Err(StoreError::Corrupt(
                "queue record: bad sender key flag".into(),
            ));
        }
    };
    let relay_dh_public = DhPublicKey(r.array().map_err(bad)?);
    let seal_key = BodySealKey::from_bytes(r.array().map_err(bad)?);
    let status = match r.u8().map_err(bad)? {
        0 => QueueStatus::Active,
        1 => QueueStatus::Off,
        _ => return Err(StoreError::Corrupt("queue record: bad status".into())),
    };
    let created_at = r.u64().map_err(bad)?;
    let last_active = r.u64().map_err(bad)?;
    r.finish().map_err(bad)?;
    Ok(QueueRecord {
        recipient_id,
        sender_id,
        recipient_key,
        sender_key,
        relay_dh_public,
        seal_key,
        status,
        created_at,
        last_active,
    })
}

/// `(status, last_active)` of an encoded queue record, read from its tail without decoding
/// (and so without decompressing) its keys: what a SEND's write needs.
fn queue_record_state(b: &[u8]) -> Result<(QueueStatus, u64), StoreError> {
    let (_, last_active) = queue_record_times(b)?;
    let status = match b.len().checked_sub(17).and_then(|at| b.get(at)) {
        Some(0) => QueueStatus::Active,
        Some(1) => QueueStatus::Off,
        _ => return Err(StoreError::Corrupt("queue record: bad status".into())),
    };
    Ok((status, last_active))
}

/// `(created_at, last_active)` of an encoded queue record: its last 16 bytes, once the
/// length is one [`encode_queue_record`] produces (with or without a sender key).
fn queue_record_times(b: &[u8]) -> Result<(u64, u64), StoreError> {
    // version, 2 ids, recipient key, flag, [sender key], DH key, seal key, status, 2 times.
    const UNSECURED: usize = 1 + 2 * ID_LEN + KEY_LEN + 1 + 2 * KEY_LEN + 1 + 16;
    if b.len() != UNSECURED && b.len() != UNSECURED + KEY_LEN {
        return Err(StoreError::Corrupt("queue record: bad length".into()));
    }
    let tail = b
        .len()
        .checked_sub(16)
        .and_then(|at| b.get(at..))
        .ok_or_else(|| StoreError::Corrupt("queue record: too short".into()))?;
    let (c, l) = tail.split_at(8);
    let word = |x: &[u8]| <[u8; 8]>::try_from(x).map(u64::from_be_bytes);
    match (word(c), word(l)) {
        (Ok(c), Ok(l)) => Ok((c, l)),
        _ => Err(StoreError::Corrupt("queue record: too short".into())),
    }
}

/// Version byte of a message record's header (version 1 encrypted the whole message,
/// body included, under the storage key; see [`open_message`]).
const MESSAGE_VERSION: u8 = 2;

/// Length of a message header: version, message id, timestamp, receipt time, flags.
const MESSAGE_HEADER_LEN: usize = 1 + ID_LEN + 8 + 8 + 1;

/// Length of a message header as stored: nonce, encrypted header, tag.
const SEALED_HEADER_LEN: usize = NONCE_LEN + MESSAGE_HEADER_LEN + TAG_LEN;

/// The header of a message record: everything but the release time (stored beside it) and
/// the body (after it, sealed for the recipient). Encrypted under the storage key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MessageHeader {
    /// Message id.
    pub msg_id: MessageId,
    /// Rounded timestamp shown to the recipient, Unix seconds.
    pub timestamp: u64,
    /// Exact receipt time, Unix milliseconds.
    pub received_ms: u64,
    /// SEND flags.
    pub flags: u8,
}

impl MessageHeader {
    /// The header of `m`.
    pub fn of(m: &NewMessage) -> Self {
        Self {
            msg_id: m.msg_id,
            timestamp: m.timestamp,
            received_ms: m.received_ms,
            flags: m.flags,
        }
    }

    /// Version byte ‖ message id ‖ timestamp ‖ receipt time ‖ flags.
    pub fn encode(&self) -> [u8; MESSAGE_HEADER_LEN] {
        let mut v = [0u8; MESSAGE_HEADER_LEN];
        v[0] = MESSAGE_VERSION;
        v[1..1 + ID_LEN].copy_from_slice(self.msg_id.as_bytes());
        v[1 + ID_LEN..9 + ID_LEN].copy_from_slice(&self.timestamp.to_be_bytes());
        v[9 + ID_LEN..17 + ID_LEN].copy_from_slice(&self.received_ms.to_be_bytes());
        v[17 + ID_LEN] = self.flags;
        v
    }

    /// Decodes exactly what [`MessageHeader::encode`] writes.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] for another length or version.
    pub fn decode(b: &[u8]) -> Result<Self, StoreError> {
        if b.len() != MESSAGE_HEADER_LEN || b.first() != Some(&MESSAGE_VERSION) {
            return Err(StoreError::Corrupt("message: bad header".into()));
        }
        decode_header_fields(&b[1..])
    }

    /// The message with this header, released at `release_at_ms`, carrying `body`.
    fn into_message(self, release_at_ms: u64, body: SealedBody) -> NewMessage {
        NewMessage {
            msg_id: self.msg_id,
            timestamp: self.timestamp,
            received_ms: self.received_ms,
            release_at_ms,
            flags: self.flags,
            body,
        }
    }
}

impl std::fmt::Debug for MessageHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The message id links a delivery to a stored record: not for logs.
        f.debug_struct("MessageHeader")
            .field("timestamp", &self.timestamp)
            .finish_non_exhaustive()
    }
}

/// Decodes the plaintext of a version 1 message record (as earlier relays wrote it: version
/// 1 ‖ message id ‖ timestamp ‖ receipt time ‖ flags ‖ body, all under the storage key).
///
/// # Errors
/// [`StoreError::Corrupt`] on another version, truncation, or a body over `MAX_BODY`.
pub fn decode_legacy_message(b: &[u8]) -> Result<(MessageHeader, &[u8]), StoreError> {
    if b.first() != Some(&1) {
        return Err(StoreError::Corrupt("message: unknown version".into()));
    }
    let header = decode_header_fields(&b[1..])?;
    let body = b.get(MESSAGE_HEADER_LEN..).unwrap_or_default();
    if body.len() > sotto_protocol::MAX_BODY {
        return Err(StoreError::Corrupt("message: body too large".into()));
    }
    Ok((header, body))
}

/// A message record's value: release time ‖ header sealed under the storage key (with the
/// record's position as associated data) ‖ sealed body.
fn encode_message_value(keys: &Keys, queue: &QueueRef, seq: u64, m: &NewMessage) -> Vec<u8> {
    let header = keys.seal(
        &message_ad(queue, seq, m.release_at_ms),
        &MessageHeader::of(m).encode(),
    );
    let mut value = Vec::with_capacity(8 + header.len() + m.body.len());
    value.extend_from_slice(&m.release_at_ms.to_be_bytes());
    value.extend_from_slice(&header);
    value.extend_from_slice(m.body.as_bytes());
    value
}

/// What a stored message record holds.
enum OpenedMessage {
    /// Version 2: the message, its body sealed for the recipient.
    Current(NewMessage),
    /// Version 1 (written by earlier relays): the body in the clear, to be sealed with the
    /// queue's seal key.
    Legacy {
        header: MessageHeader,
        release_at_ms: u64,
        body: Zeroizing<Vec<u8>>,
    },
}

impl OpenedMessage {
    fn received_ms(&self) -> u64 {
        match self {
            Self::Current(m) => m.received_ms,
            Self::Legacy { header, .. } => header.received_ms,
        }
    }
}

/// Opens a message record's value at `(queue, seq)`: a version 2 header (and the sealed body
/// after it), or else a version 1 record.
///
/// # Errors
/// [`StoreError::Corrupt`] if neither authenticates or decodes.
fn open_message(
    keys: &Keys,
    queue: &QueueRef,
    seq: u64,
    value: &[u8],
) -> Result<OpenedMessage, StoreError> {
    let (release_at_ms, rest) = split_release(value)?;
    let ad = message_ad(queue, seq, release_at_ms);
    if let Some((head, body)) = rest.split_at_checked(SEALED_HEADER_LEN)
        && let Ok(h) = keys.open(&ad, head)
        && h.first() == Some(&MESSAGE_VERSION)
    {
        let header = MessageHeader::decode(&h)?;
        if body.len() > sotto_protocol::MAX_BODY + TAG_LEN {
            return Err(StoreError::Corrupt("message: body too large".into()));
        }
        return Ok(OpenedMessage::Current(
            header.into_message(release_at_ms, SealedBody(body.to_vec())),
        ));
    }
    let plain = keys.open(&ad, rest)?;
    let (header, body) = decode_legacy_message(&plain)?;
    Ok(OpenedMessage::Legacy {
        header,
        release_at_ms,
        body: Zeroizing::new(body.to_vec()),
    })
}

/// Message id, timestamp, receipt time and flags, from the bytes after the version byte
/// (anything after them is left to the caller).
fn decode_header_fields(b: &[u8]) -> Result<MessageHeader, StoreError> {
    use sotto_protocol::codec::Reader;
    let bad = |e: sotto_protocol::DecodeError| StoreError::Corrupt(format!("message: {e}"));
    let mut r = Reader::new(b);
    Ok(MessageHeader {
        msg_id: MessageId(r.array().map_err(bad)?),
        timestamp: r.u64().map_err(bad)?,
        received_ms: r.u64().map_err(bad)?,
        flags: r.u8().map_err(bad)?,
    })
}

struct Job {
    op: WriteOp,
    reply: oneshot::Sender<Result<WriteOutcome, StoreError>>,
}

/// What the writer thread receives.
// Nearly every message is a `Job`: boxing it would cost an allocation per write to save
// nothing (the rare `Reopen` is the small one).
#[allow(clippy::large_enum_variant)]
enum Msg {
    /// A write to apply.
    Job(Job),
    /// A reader found the database unusable even if no write comes: `None` when the slot
    /// was empty (an earlier reopen failed: try again), `Some(instance)` when that instance
    /// (its address) is latched after an I/O error. Stale requests (the instance was
    /// replaced since) are ignored, so that reads failing during a reopen cannot make the
    /// writer reopen again and again.
    Reopen(Option<usize>),
}

/// How long the writer waits for in-flight reads to release the database before reopening
/// anyway (reads are short: one lookup or one range scan, never held across an await).
const REOPEN_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

/// The open database, swappable so that the writer can close and reopen it after an I/O
/// failure. Readers clone the `Arc` for the length of one read transaction.
struct DbSlot {
    db: std::sync::RwLock<Option<Arc<Database>>>,
    path: PathBuf,
    cache_bytes: usize,
}

impl DbSlot {
    fn get(&self) -> Option<Arc<Database>> {
        self.db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set(&self, db: Option<Arc<Database>>) -> Option<Arc<Database>> {
        let mut slot = self
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::mem::replace(&mut *slot, db)
    }

    /// Opens the file read-write. With `verify`, first checks the checksum of every page of
    /// the committed trees (redb's integrity check): a file altered behind redb's back (a
    /// flipped bit, a page overwritten) fails here instead of being trusted. The check reads
    /// the whole file (≈ 1.6 s for a 544 MiB store of 1 000 000 queues from the page cache,
    /// ≈ 8 s from disk), so it runs only when the file may have changed since this store last
    /// closed it (see [`CLEAN_STAMP_SUFFIX`]).
    fn open(&self, verify: bool) -> Result<Database, redb::DatabaseError> {
        Database::builder()
            .set_cache_size(self.cache_bytes)
            .set_check_integrity_on_open(verify)
            .open(&self.path)
    }
}

/// Suffix of the file beside the database (`queues.redb.clean`) that the store writes when
/// it has closed the database cleanly: the database file's device, inode, length and
/// modification and change times at that moment. At the next open, if the file is the same
/// inode with the same length and times (nothing has written to it since — a restored
/// backup, a copy, an edit or a crash would all change one of them) and redb reports a
/// clean shutdown, the full page-checksum pass is skipped. Otherwise it runs. The stamp is
/// removed once the database is open again, so a crash always leads to a checked open.
/// Records stay authenticated (XChaCha20-Poly1305) either way.
pub const CLEAN_STAMP_SUFFIX: &str = ".clean";

fn clean_stamp_path(db: &Path) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(CLEAN_STAMP_SUFFIX);
    PathBuf::from(p)
}

/// The identity of the database file as [`CLEAN_STAMP_SUFFIX`] records it.
fn file_stamp(db: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(db).ok()?;
    Some(format!(
        "sotto-clean-v1 {} {} {} {}.{:09} {}.{:09}\n",
        m.dev(),
        m.ino(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    ))
}

/// Whether the stamp beside `db` matches the file as it is now.
fn clean_stamp_matches(db: &Path) -> bool {
    match (
        std::fs::read_to_string(clean_stamp_path(db)),
        file_stamp(db),
    ) {
        (Ok(saved), Some(now)) => saved == now,
        _ => false,
    }
}

/// Records that the database at `db` was just closed cleanly (see [`CLEAN_STAMP_SUFFIX`]).
/// Best effort: without a stamp the next open verifies every page, which is only slower.
fn write_clean_stamp(db: &Path) {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let Some(stamp) = file_stamp(db) else {
        return;
    };
    let path = clean_stamp_path(db);
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| {
            f.write_all(stamp.as_bytes())?;
            f.sync_all()
        });
    if let Err(e) = written {
        tracing::warn!(error = %e, "cannot record the clean close; the next start verifies every page");
        let _ = std::fs::remove_file(&path);
    }
}

/// What a read-only look at the database found.
enum Precheck {
    /// The storage key opens the check record.
    KeyMatches,
    /// The file was not closed cleanly: redb must repair it, which needs a read-write open
    /// (the key is checked after it).
    NeedsRepair,
    /// The check record does not open with this key.
    WrongKey,
    /// Not a database, or not a Sotto store.
    Damaged(String),
}

/// Opens the database read-only (no write of any kind) and checks the storage key.
fn precheck(path: &Path, keys: &Keys) -> Precheck {
    let db = match Database::builder().open_read_only(path) {
        Ok(db) => db,
        Err(redb::DatabaseError::RepairAborted) => return Precheck::NeedsRepair,
        Err(e) => return Precheck::Damaged(e.to_string()),
    };
    let check = || -> Result<Option<bool>, redb::Error> {
        let txn = db.begin_read()?;
        let meta = txn.open_table(META)?;
        Ok(meta
            .get("check")?
            .map(|v| matches!(keys.open(b"meta check", v.value()), Ok(p) if p.as_slice() == CHECK_PLAINTEXT)))
    };
    match check() {
        Ok(Some(true)) => Precheck::KeyMatches,
        Ok(Some(false)) => Precheck::WrongKey,
        Ok(None) => Precheck::Damaged("not a Sotto store (no check record)".into()),
        Err(e) => Precheck::Damaged(format!("not a Sotto store ({e})")),
    }
}

/// Runs `f`, turning a panic into an error: redb documents that opening a file altered
/// behind its back "may panic" without the integrity check, and a damaged file must give
/// the operator a message, not a crash.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|p| {
        let what = p
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        format!("the database library panicked reading it ({what})")
    })
}

/// A read transaction with the database handle it came from. Field order matters: the
/// transaction is dropped before the handle.
struct Reader {
    txn: ReadTransaction,
    _db: Arc<Database>,
}

impl std::ops::Deref for Reader {
    type Target = ReadTransaction;
    fn deref(&self) -> &ReadTransaction {
        &self.txn
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
            let check = keys.seal(b"meta check", CHECK_PLAINTEXT);
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
        if !path.exists() {
            return Err(StoreError::Missing(path.to_owned()));
        }
        let open_err = |reason: String| StoreError::Open {
            path: path.to_owned(),
            reason,
        };
        // Check readability ourselves first: redb's error for EACCES is less clear.
        std::fs::File::open(path).map_err(|e| open_err(e.to_string()))?;
        let keys = Keys::new(key);
        // First without writing anything: a wrong key or a damaged file must leave the file
        // exactly as it was (the operator's backup may be this very file).
        // Read before anything touches the file (see [`CLEAN_STAMP_SUFFIX`]).
        let closed_cleanly = clean_stamp_matches(path);
        let verify = match guarded(|| precheck(path, &keys)) {
            Ok(Precheck::KeyMatches) => !closed_cleanly,
            Ok(Precheck::NeedsRepair) => true,
            Ok(Precheck::WrongKey) => return Err(StoreError::WrongKey(path.to_owned())),
            Ok(Precheck::Damaged(reason)) | Err(reason) => return Err(open_err(reason)),
        };
        if verify {
            tracing::info!(
                "verifying every page checksum of the database (not closed cleanly by this relay, or changed since)"
            );
        }
        let slot = Arc::new(DbSlot {
            db: std::sync::RwLock::new(None),
            path: path.to_owned(),
            cache_bytes: opts.cache_bytes,
        });
        let db = guarded(|| slot.open(verify).map_err(|e| e.to_string()))
            .and_then(|r| r)
            .map_err(open_err)?;
        // The file is in use from now on: only the next clean close may vouch for it again.
        let _ = std::fs::remove_file(clean_stamp_path(path));
        let next_seq = {
            let txn = db.begin_read().map_err(|e| open_err(e.to_string()))?;
            let meta = txn
                .open_table(META)
                .map_err(|e| open_err(format!("not a Sotto store ({e})")))?;
            let check = meta
                .get("check")
                .map_err(|e| open_err(e.to_string()))?
                .ok_or_else(|| open_err("not a Sotto store (no check record)".into()))?;
            match keys.open(b"meta check", check.value()) {
                Ok(p) if p.as_slice() == CHECK_PLAINTEXT => {}
                _ => return Err(StoreError::WrongKey(path.to_owned())),
            }
            let seq = meta
                .get("next_seq")
                .map_err(|e| open_err(e.to_string()))?
                .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| open_err("missing sequence counter".into()))?;
            // Tables must all exist; a damaged file fails here rather than mid-traffic.
            txn.open_table(QUEUES)
                .map_err(|e| open_err(e.to_string()))?;
            txn.open_table(MESSAGES)
                .map_err(|e| open_err(e.to_string()))?;
            seq
        };
        slot.set(Some(Arc::new(db)));
        let keys = Arc::new(keys);
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let (done_tx, done_rx) = oneshot::channel();
        let (commits_tx, commits_rx) = watch::channel(CommitStats::default());
        let writer = Writer {
            slot: slot.clone(),
            keys: keys.clone(),
            next_seq,
            seq_reserved: next_seq,
            opts,
            relaxed_bound,
            unsynced_since: None,
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
        let dummy = {
            let mut rng = rand::rngs::OsRng;
            let mut r = [0u8; 32];
            rng.fill_bytes(&mut r);
            let rec = QueueRecord {
                recipient_id: RecipientId::random(&mut rng),
                sender_id: SenderId::random(&mut rng),
                recipient_key: sotto_protocol::AuthSecretKey::generate(&mut rng).public(),
                sender_key: Some(sotto_protocol::AuthSecretKey::generate(&mut rng).public()),
                relay_dh_public: sotto_protocol::DhSecretKey::generate(&mut rng).public(),
                seal_key: BodySealKey::from_bytes([0; 32]),
                status: QueueStatus::Active,
                created_at: 0,
                last_active: 0,
            };
            let sealed = keys.seal(&queue_ad(&r), &encode_queue_record(&rec));
            (r, sealed)
        };
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

    /// Starts a read transaction on the current database. If the database is unusable (being
    /// reopened, or latched after an I/O error) the writer is asked to reopen it and the read
    /// fails with [`StoreError::Io`].
    fn read(&self) -> Result<Reader, StoreError> {
        let Some(db) = self.inner.slot.get() else {
            let _ = self.inner.writer.try_send(Msg::Reopen(None));
            return Err(StoreError::Io(
                "the database is being reopened after a write failure".into(),
            ));
        };
        match db.begin_read() {
            Ok(txn) => Ok(Reader { txn, _db: db }),
            Err(e) => {
                let e = redb::Error::from(e);
                if matches!(e, redb::Error::PreviousIo | redb::Error::DatabaseClosed) {
                    let id = Arc::as_ptr(&db) as usize;
                    let _ = self.inner.writer.try_send(Msg::Reopen(Some(id)));
                }
                Err(io(e))
            }
        }
    }

    /// Maps a read error; asks the writer to reopen a database that redb has latched after an
    /// I/O error.
    fn rd(&self, txn: &Reader, e: impl Into<redb::Error>) -> StoreError {
        let e: redb::Error = e.into();
        if matches!(e, redb::Error::PreviousIo | redb::Error::DatabaseClosed) {
            let id = Arc::as_ptr(&txn._db) as usize;
            let _ = self.inner.writer.try_send(Msg::Reopen(Some(id)));
        }
        io(e)
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

    /// Looks up a queue by recipient id.
    ///
    /// # Errors
    /// Read or decryption failure.
    pub fn queue(&self, id: &RecipientId) -> Result<Option<(QueueRef, QueueRecord)>, StoreError> {
        let r = self.queue_ref(id);
        Ok(self.queue_by_ref(&r)?.map(|q| (r, q)))
    }

    /// Looks up a queue by its reference.
    ///
    /// Takes the same work whether or not the queue exists (see [`Store::queue_by_sender`]).
    ///
    /// # Errors
    /// Read or decryption failure.
    pub fn queue_by_ref(&self, r: &QueueRef) -> Result<Option<QueueRecord>, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(QUEUES).map_err(|e| self.rd(&txn, e))?;
        match t.get(r).map_err(|e| self.rd(&txn, e))? {
            Some(v) => Ok(Some(decode_queue_record(
                &self.inner.keys.open(&queue_ad(r), v.value())?,
            )?)),
            None => {
                self.dummy_work();
                Ok(None)
            }
        }
    }

    /// Looks up a queue by sender id.
    ///
    /// AUTH must take the same time whether or not an id names a queue (DESIGN: a stranger
    /// must not learn which ids exist by timing refusals). A miss therefore does what a hit
    /// does — the second table lookup, and opening and decoding a sealed record (the
    /// in-memory dummy, with a sender key like a secured queue's) — before answering `None`.
    /// The remaining difference is measured in `docs/benchmarks.md` ("AUTH timing").
    ///
    /// # Errors
    /// Read or decryption failure.
    pub fn queue_by_sender(
        &self,
        id: &SenderId,
    ) -> Result<Option<(QueueRef, QueueRecord)>, StoreError> {
        let s = self.inner.keys.sender_ref(id);
        let txn = self.read()?;
        let senders = txn.open_table(SENDERS).map_err(|e| self.rd(&txn, e))?;
        let found = senders
            .get(&s)
            .map_err(|e| self.rd(&txn, e))?
            .map(|v| v.value());
        let t = txn.open_table(QUEUES).map_err(|e| self.rd(&txn, e))?;
        let Some(r) = found else {
            // The lookup a hit would make (a key that is never stored), then the record work.
            let _ = t.get(&self.inner.dummy.0).map_err(|e| self.rd(&txn, e))?;
            self.dummy_work();
            return Ok(None);
        };
        match t.get(&r).map_err(|e| self.rd(&txn, e))? {
            Some(v) => Ok(Some((
                r,
                decode_queue_record(&self.inner.keys.open(&queue_ad(&r), v.value())?)?,
            ))),
            None => Ok(None),
        }
    }

    /// Opens and decodes the dummy record: the work a found queue costs.
    fn dummy_work(&self) {
        let (r, sealed) = &self.inner.dummy;
        let rec = self
            .inner
            .keys
            .open(&queue_ad(r), sealed)
            .and_then(|p| decode_queue_record(&p));
        std::hint::black_box(rec.is_ok());
    }

    /// The first message of a queue (lowest position) that is released at `now_ms`.
    ///
    /// # Errors
    /// Read or decryption failure.
    pub fn first_visible(
        &self,
        queue: &QueueRef,
        now_ms: u64,
    ) -> Result<Option<StoredMessage>, StoreError> {
        self.first_visible_except(queue, &[], now_ms)
    }

    /// As [`Store::first_visible`], passing over the positions in `skip` (a session skips
    /// the messages it has seen acknowledged while their deletions commit).
    ///
    /// # Errors
    /// As [`Store::first_visible`].
    pub fn first_visible_except(
        &self,
        queue: &QueueRef,
        skip: &[u64],
        now_ms: u64,
    ) -> Result<Option<StoredMessage>, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(MESSAGES).map_err(|e| self.rd(&txn, e))?;
        for entry in t
            .range((*queue, 0u64)..=(*queue, u64::MAX))
            .map_err(|e| self.rd(&txn, e))?
        {
            let (k, v) = entry.map_err(|e| self.rd(&txn, e))?;
            let (_, seq) = k.value();
            if skip.contains(&seq) {
                continue;
            }
            let value = v.value();
            let (release, _) = split_release(value)?;
            if release > now_ms {
                continue;
            }
            let msg = match open_message(&self.inner.keys, queue, seq, value)? {
                OpenedMessage::Current(m) => m,
                OpenedMessage::Legacy {
                    header,
                    release_at_ms,
                    body,
                } => {
                    // Written by an earlier relay: seal it now with the queue's key.
                    let queues = txn.open_table(QUEUES).map_err(|e| self.rd(&txn, e))?;
                    let rec = match queues.get(queue).map_err(|e| self.rd(&txn, e))? {
                        Some(r) => decode_queue_record(
                            &self.inner.keys.open(&queue_ad(queue), r.value())?,
                        )?,
                        None => return Err(StoreError::Corrupt("message without queue".into())),
                    };
                    let sealed = SealedBody::seal(&rec.seal_key, &header.msg_id, &body);
                    header.into_message(release_at_ms, sealed)
                }
            };
            return Ok(Some(StoredMessage { seq, msg }));
        }
        Ok(None)
    }

    /// Number of messages in a queue.
    ///
    /// # Errors
    /// Read failure.
    pub fn message_count(&self, queue: &QueueRef) -> Result<usize, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(MESSAGES).map_err(|e| self.rd(&txn, e))?;
        Ok(t.range((*queue, 0u64)..=(*queue, u64::MAX))
            .map_err(|e| self.rd(&txn, e))?
            .count())
    }

    /// Messages whose release time is after `now_ms`, for refilling the scheduler at start:
    /// (queue, release time, receipt time).
    ///
    /// # Errors
    /// Read failure.
    pub fn pending_after(&self, now_ms: u64) -> Result<Vec<(QueueRef, u64, u64)>, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(PENDING).map_err(|e| self.rd(&txn, e))?;
        let mut out = Vec::new();
        for entry in t
            .range((now_ms.saturating_add(1), [0u8; 32], 0u64)..)
            .map_err(|e| self.rd(&txn, e))?
        {
            let (k, _) = entry.map_err(|e| self.rd(&txn, e))?;
            let (release, q, _seq) = k.value();
            out.push((q, release, now_ms));
        }
        Ok(out)
    }

    /// (queues, messages) in the store.
    ///
    /// # Errors
    /// Read failure.
    pub fn counts(&self) -> Result<(u64, u64), StoreError> {
        let txn = self.read()?;
        let q = txn
            .open_table(QUEUES)
            .map_err(|e| self.rd(&txn, e))?
            .len()
            .map_err(|e| self.rd(&txn, e))?;
        let m = txn
            .open_table(MESSAGES)
            .map_err(|e| self.rd(&txn, e))?
            .len()
            .map_err(|e| self.rd(&txn, e))?;
        Ok((q, m))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Number of raw bytes stored for a queue's messages (for tests of encryption).
    #[doc(hidden)]
    pub fn raw_values(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(MESSAGES).map_err(|e| self.rd(&txn, e))?;
        let mut out = Vec::new();
        for e in t.iter().map_err(|e| self.rd(&txn, e))? {
            out.push(e.map_err(|e| self.rd(&txn, e))?.1.value().to_vec());
        }
        Ok(out)
    }
}

fn split_release(value: &[u8]) -> Result<(u64, &[u8]), StoreError> {
    if value.len() < 8 {
        return Err(StoreError::Corrupt("message value too short".into()));
    }
    let (r, rest) = value.split_at(8);
    let mut b = [0u8; 8];
    b.copy_from_slice(r);
    Ok((u64::from_be_bytes(b), rest))
}

/// The committed sequence counter.
fn read_next_seq(db: &Database) -> Option<u64> {
    let txn = db.begin_read().ok()?;
    let meta = txn.open_table(META).ok()?;
    let v = meta.get("next_seq").ok()??;
    <[u8; 8]>::try_from(v.value()).ok().map(u64::from_be_bytes)
}

struct Writer {
    slot: Arc<DbSlot>,
    keys: Arc<Keys>,
    next_seq: u64,
    /// The counter as stored: every position handed out is below it. It is raised by
    /// [`SEQ_BLOCK`] at a time, so that most commits do not rewrite it (a page and a tree
    /// path fewer per commit); a restart skips the unused rest of a block.
    seq_reserved: u64,
    opts: StoreOptions,
    /// Longest time a relaxed commit stays non-durable ([`RELAXED_COMMIT_BOUND`]).
    relaxed_bound: Duration,
    /// When the oldest relaxed commit that no durable commit has followed yet started;
    /// `None` when everything committed is durable.
    unsynced_since: Option<Instant>,
    /// Published after every commit (see [`Store::commit_stats`]).
    commits: watch::Sender<CommitStats>,
}

/// How one transaction is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Commit {
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
fn commit_kind<'a>(
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

impl Writer {
    /// Applies writes until every [`Store`] handle is gone, then makes the last commit
    /// durable and closes the database. Returns whether it was closed cleanly: open, and the
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
            let flush_at = self.unsynced_since.map(|since| since + self.relaxed_bound);
            let release_at = held_since.map(|since| since + self.opts.relaxed_hold);
            let wake_at = match (flush_at, release_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
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
            let waited_out =
                hold_started.is_some_and(|h| Instant::now() >= h + self.opts.relaxed_hold);
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
                Some(id) if latched.contains(&id) => self.recover(true),
                Some(_) => {}
                None => self.recover(false),
            }
            if jobs.is_empty() {
                continue;
            }
            let started = Instant::now();
            let kind = commit_kind(
                jobs.iter().map(|j| &j.op),
                self.opts.unsafe_no_fsync,
                timer.is_some(),
                self.unsynced_since,
                started,
                self.relaxed_bound,
            );
            // A relaxed-only batch waits for the next one to carry it (see the module
            // documentation), unless its hold has run out or it is as large as a batch gets.
            if kind == Commit::Relaxed
                && !self.opts.unsafe_no_fsync
                && !waited_out
                && !closed
                && jobs.len() < self.opts.max_batch
            {
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
                    for (job, out) in jobs.into_iter().zip(outcomes) {
                        let _ = job.reply.send(Ok(out));
                    }
                }
                Err(e) => {
                    healthy = false;
                    // Nothing of the batch is committed: positions are reused.
                    (self.next_seq, self.seq_reserved) = seq_before;
                    tracing::error!(error = %e, writes = jobs.len(), "store commit failed; writes refused");
                    if matches!(e, StoreError::Io(_)) {
                        // redb refuses all further use of a database after an I/O error:
                        // reopen before answering, so that reads work again by the time the
                        // client sees the error.
                        self.recover(true);
                    }
                    for job in jobs {
                        let _ = job.reply.send(Err(e.clone()));
                    }
                }
            }
        }
        // The clean-close stamp vouches for the file as it is: nothing may be left that a
        // crash would undo.
        if self.unsynced_since.is_some() {
            healthy = self.flush();
        }
        let open = self.slot.get().is_some();
        // The writer holds the last reference to the slot: dropping it closes the database.
        drop(self);
        healthy && open
    }

    /// Records a successful commit and publishes the counts.
    fn committed(&mut self, kind: Commit, started: Instant) {
        match kind {
            Commit::Durable => self.unsynced_since = None,
            // Nothing is ever made durable under `unsafe_no_fsync`, so nothing is pending.
            Commit::Relaxed if self.opts.unsafe_no_fsync => {}
            Commit::Relaxed => {
                self.unsynced_since.get_or_insert(started);
            }
        }
        if kind == Commit::Relaxed
            && let Some(m) = &self.opts.metrics
        {
            m.relaxed_commits.inc();
        }
        let pending = self.unsynced_since.is_some();
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
                if matches!(e, StoreError::Io(_)) {
                    self.recover(true);
                }
                false
            }
        }
    }

    /// Closes and reopens the database (see the module documentation). With `force` false,
    /// only opens it if the slot is empty (an earlier reopen failed).
    fn recover(&mut self, force: bool) {
        let old = self.slot.set(None);
        match old {
            Some(db) if force => {
                // redb reopens the file at its last durable commit.
                if self.unsynced_since.take().is_some() {
                    tracing::warn!(
                        "deletions committed without fsync are undone by the reopen: those messages will be delivered again"
                    );
                    self.commits.send_modify(|c| c.flush_pending = false);
                }
                // Wait (bounded) for in-flight reads to drop their handles: redb locks the
                // file, so it must be closed before it can be opened again.
                let deadline = Instant::now() + REOPEN_DRAIN;
                let mut db = db;
                loop {
                    match Arc::try_unwrap(db) {
                        Ok(db) => {
                            if let Err(e) = db.close() {
                                tracing::warn!(error = %e, "closing the failed database");
                            }
                            break;
                        }
                        Err(still_shared) if Instant::now() < deadline => {
                            db = still_shared;
                            std::thread::sleep(std::time::Duration::from_millis(1));
                        }
                        Err(_) => {
                            tracing::warn!("reads still hold the database; reopening anyway");
                            break;
                        }
                    }
                }
            }
            Some(db) => {
                // Not asked to reopen and the database is open: keep it.
                self.slot.set(Some(db));
                return;
            }
            None => {}
        }
        match guarded(|| self.slot.open(true)).and_then(|r| r.map_err(|e| e.to_string())) {
            Ok(db) => {
                match read_next_seq(&db) {
                    Some(seq) => (self.next_seq, self.seq_reserved) = (seq, seq),
                    None => {
                        tracing::error!(
                            "reopened database has no sequence counter; keeping the one in memory"
                        );
                    }
                }
                self.slot.set(Some(Arc::new(db)));
                tracing::warn!("database reopened after a write failure; serving again");
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot reopen the database; will retry on the next write");
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
        txn.commit().map_err(io)?;
        Ok(outcomes)
    }

    fn read_queue(
        &self,
        txn: &WriteTransaction,
        q: &QueueRef,
    ) -> Result<Option<QueueRecord>, StoreError> {
        let t = txn.open_table(QUEUES).map_err(io)?;
        let v = t.get(q).map_err(io)?;
        match v {
            Some(v) => Ok(Some(decode_queue_record(
                &self.keys.open(&queue_ad(q), v.value())?,
            )?)),
            None => Ok(None),
        }
    }

    fn write_queue(
        &self,
        txn: &WriteTransaction,
        q: &QueueRef,
        rec: &QueueRecord,
    ) -> Result<(), StoreError> {
        let mut t = txn.open_table(QUEUES).map_err(io)?;
        let sealed = self.keys.seal(&queue_ad(q), &encode_queue_record(rec));
        t.insert(q, sealed.as_slice()).map_err(io)?;
        Ok(())
    }

    fn apply(&mut self, txn: &WriteTransaction, op: &WriteOp) -> Result<WriteOutcome, StoreError> {
        match op {
            WriteOp::CreateQueue(rec) => {
                let q = self.keys.recipient_ref(&rec.recipient_id);
                let s = self.keys.sender_ref(&rec.sender_id);
                {
                    let senders = txn.open_table(SENDERS).map_err(io)?;
                    if senders.get(&s).map_err(io)?.is_some() {
                        return Err(StoreError::Io("sender id collision".into()));
                    }
                }
                self.write_queue(txn, &q, rec)?;
                txn.open_table(SENDERS)
                    .map_err(io)?
                    .insert(&s, &q)
                    .map_err(io)?;
                Ok(WriteOutcome::Done)
            }
            WriteOp::SetSenderKey { queue, key } => {
                let Some(mut rec) = self.read_queue(txn, queue)? else {
                    return Ok(WriteOutcome::NoQueue);
                };
                if rec.status != QueueStatus::Active {
                    return Ok(WriteOutcome::Disabled);
                }
                match rec.sender_key {
                    Some(k) if k == *key => Ok(WriteOutcome::Done),
                    Some(_) => Ok(WriteOutcome::KeyConflict),
                    None => {
                        rec.sender_key = Some(*key);
                        self.write_queue(txn, queue, &rec)?;
                        Ok(WriteOutcome::Done)
                    }
                }
            }
            WriteOp::Disable { queue } => {
                let Some(mut rec) = self.read_queue(txn, queue)? else {
                    return Ok(WriteOutcome::NoQueue);
                };
                rec.status = QueueStatus::Off;
                self.write_queue(txn, queue, &rec)?;
                Ok(WriteOutcome::Done)
            }
            WriteOp::Touch { queue, now } => {
                let Some(mut rec) = self.read_queue(txn, queue)? else {
                    return Ok(WriteOutcome::NoQueue);
                };
                rec.last_active = *now;
                self.write_queue(txn, queue, &rec)?;
                Ok(WriteOutcome::Done)
            }
            WriteOp::DeleteQueue { queue } => {
                let Some(rec) = self.read_queue(txn, queue)? else {
                    return Ok(WriteOutcome::NoQueue);
                };
                self.delete_queue(txn, queue, &rec)?;
                Ok(WriteOutcome::Done)
            }
            WriteOp::Append { queue, msg, quota } => {
                let plain = {
                    let t = txn.open_table(QUEUES).map_err(io)?;
                    let v = t.get(queue).map_err(io)?;
                    match v {
                        Some(v) => self.keys.open(&queue_ad(queue), v.value())?,
                        None => return Ok(WriteOutcome::NoQueue),
                    }
                };
                let (status, last_active) = queue_record_state(&plain)?;
                if status != QueueStatus::Active {
                    return Ok(WriteOutcome::Disabled);
                }
                let mut messages = txn.open_table(MESSAGES).map_err(io)?;
                let count = messages
                    .range((*queue, 0u64)..=(*queue, u64::MAX))
                    .map_err(io)?
                    .take(*quota as usize)
                    .count();
                if count >= *quota as usize {
                    return Ok(WriteOutcome::QuotaExceeded);
                }
                let seq = self.next_seq;
                self.next_seq += 1;
                let value = encode_message_value(&self.keys, queue, seq, msg);
                messages
                    .insert((*queue, seq), value.as_slice())
                    .map_err(io)?;
                drop(messages);
                if msg.release_at_ms > msg.received_ms {
                    txn.open_table(PENDING)
                        .map_err(io)?
                        .insert((msg.release_at_ms, *queue, seq), ())
                        .map_err(io)?;
                }
                txn.open_table(BY_TIME)
                    .map_err(io)?
                    .insert((msg.received_ms / 1000, *queue, seq), ())
                    .map_err(io)?;
                // Idle-expiry bookkeeping at hourly granularity (not a write per message).
                let now_s = msg.received_ms / 1000;
                if now_s.saturating_sub(last_active) >= 3600 {
                    let mut rec = decode_queue_record(&plain)?;
                    rec.last_active = now_s;
                    self.write_queue(txn, queue, &rec)?;
                }
                Ok(WriteOutcome::Appended { seq })
            }
            WriteOp::DeleteMessage {
                queue,
                seq,
                release_at_ms,
                received_ms,
            } => {
                let mut messages = txn.open_table(MESSAGES).map_err(io)?;
                let found = match messages.get((*queue, *seq)).map_err(io)? {
                    Some(v) => split_release(v.value())?.0 == *release_at_ms,
                    None => false,
                };
                if !found {
                    return Ok(WriteOutcome::NoMessage);
                }
                let (release, received_ms) = (*release_at_ms, *received_ms);
                messages.remove((*queue, *seq)).map_err(io)?;
                drop(messages);
                txn.open_table(PENDING)
                    .map_err(io)?
                    .remove((release, *queue, *seq))
                    .map_err(io)?;
                txn.open_table(BY_TIME)
                    .map_err(io)?
                    .remove((received_ms / 1000, *queue, *seq))
                    .map_err(io)?;
                Ok(WriteOutcome::Done)
            }
            WriteOp::Expire {
                messages_before,
                queues_idle_before,
                max,
                scan_after,
                scan,
            } => self.expire(
                txn,
                *messages_before,
                *queues_idle_before,
                *max,
                (*scan_after, *scan),
            ),
            WriteOp::RecordForward {
                ephemeral,
                expiry,
                now,
            } => self.record_forward(txn, ephemeral, *expiry, *now),
        }
    }

    /// See [`WriteOp::RecordForward`] and `docs/protocol.md` § 10a.5.
    fn record_forward(
        &self,
        txn: &WriteTransaction,
        ephemeral: &[u8; 32],
        expiry: u64,
        now: u64,
    ) -> Result<WriteOutcome, StoreError> {
        let mut seen = txn.open_table(FWD_SEEN).map_err(io)?;
        let mut by_expiry = txn.open_table(FWD_EXPIRY).map_err(io)?;
        let mut meta = txn.open_table(META).map_err(io)?;
        // The highest expiry ever forgotten: requests expiring at or before it are refused
        // whatever the clock says now, so a clock stepped back revives nothing.
        let mut cutoff = meta
            .get("fwd_cutoff")
            .map_err(io)?
            .and_then(|v| <[u8; 8]>::try_from(v.value()).ok())
            .map_or(0, u64::from_be_bytes);
        let expired: Vec<(u64, [u8; 32])> = by_expiry
            .range(..(now, [0u8; 32]))
            .map_err(io)?
            .take(FWD_CLEANUP_PER_WRITE)
            .map(|e| e.map(|(k, _)| k.value()))
            .collect::<Result<_, _>>()
            .map_err(io)?;
        for (e, r) in &expired {
            by_expiry.remove((*e, *r)).map_err(io)?;
            seen.remove(r).map_err(io)?;
            cutoff = cutoff.max(*e);
        }
        if !expired.is_empty() {
            meta.insert("fwd_cutoff", cutoff.to_be_bytes().as_slice())
                .map_err(io)?;
        }
        let r = self.keys.forward_ref(ephemeral);
        if expiry <= cutoff || seen.get(&r).map_err(io)?.is_some() {
            return Ok(WriteOutcome::Replayed);
        }
        if seen.len().map_err(io)? >= MAX_SEEN_FORWARDS {
            return Ok(WriteOutcome::ForwardMemoryFull);
        }
        seen.insert(&r, expiry).map_err(io)?;
        by_expiry.insert((expiry, r), ()).map_err(io)?;
        Ok(WriteOutcome::Done)
    }

    fn delete_queue(
        &self,
        txn: &WriteTransaction,
        queue: &QueueRef,
        rec: &QueueRecord,
    ) -> Result<(), StoreError> {
        txn.open_table(QUEUES)
            .map_err(io)?
            .remove(queue)
            .map_err(io)?;
        txn.open_table(SENDERS)
            .map_err(io)?
            .remove(&self.keys.sender_ref(&rec.sender_id))
            .map_err(io)?;
        let mut messages = txn.open_table(MESSAGES).map_err(io)?;
        let mut doomed = Vec::new();
        for e in messages
            .range((*queue, 0u64)..=(*queue, u64::MAX))
            .map_err(io)?
        {
            let (k, v) = e.map_err(io)?;
            let (_, seq) = k.value();
            let (release, _) = split_release(v.value())?;
            let received = open_message(&self.keys, queue, seq, v.value())
                .map(|m| m.received_ms() / 1000)
                .ok();
            doomed.push((seq, release, received));
        }
        let mut pending = txn.open_table(PENDING).map_err(io)?;
        let mut by_time = txn.open_table(BY_TIME).map_err(io)?;
        for (seq, release, received) in doomed {
            messages.remove((*queue, seq)).map_err(io)?;
            pending.remove((release, *queue, seq)).map_err(io)?;
            if let Some(r) = received {
                by_time.remove((r, *queue, seq)).map_err(io)?;
            }
        }
        Ok(())
    }

    fn expire(
        &self,
        txn: &WriteTransaction,
        messages_before: u64,
        queues_idle_before: u64,
        max: usize,
        (scan_after, scan): (Option<QueueRef>, usize),
    ) -> Result<WriteOutcome, StoreError> {
        let mut n_msgs = 0u64;
        let mut more = false;
        {
            let mut by_time = txn.open_table(BY_TIME).map_err(io)?;
            let mut old = Vec::new();
            for e in by_time
                .range(..(messages_before, [0u8; 32], 0u64))
                .map_err(io)?
            {
                if old.len() >= max {
                    more = true;
                    break;
                }
                old.push(e.map_err(io)?.0.value());
            }
            let mut messages = txn.open_table(MESSAGES).map_err(io)?;
            let mut pending = txn.open_table(PENDING).map_err(io)?;
            for (t, q, seq) in old {
                by_time.remove((t, q, seq)).map_err(io)?;
                let release = match messages.remove((q, seq)).map_err(io)? {
                    Some(v) => split_release(v.value()).map(|(r, _)| r).ok(),
                    None => None,
                };
                if let Some(r) = release {
                    pending.remove((r, q, seq)).map_err(io)?;
                    n_msgs += 1;
                }
            }
        }
        let mut idle = Vec::new();
        let mut next_scan = None;
        {
            let queues = txn.open_table(QUEUES).map_err(io)?;
            let range = match scan_after {
                Some(after) => queues.range::<QueueRef>((
                    std::ops::Bound::Excluded(after),
                    std::ops::Bound::Unbounded,
                )),
                None => queues.range::<QueueRef>(..),
            };
            let mut examined = 0usize;
            for e in range.map_err(io)? {
                if examined >= scan.max(1) || idle.len() >= max {
                    break;
                }
                examined += 1;
                let (k, v) = e.map_err(io)?;
                let q = k.value();
                next_scan = Some(q);
                let plain = self.keys.open(&queue_ad(&q), v.value())?;
                // Only the two times are needed to decide; the keys in the record are
                // decoded (an Ed25519 point decompression each) only for queues that go.
                let (created_at, last_active) = queue_record_times(&plain)?;
                if last_active < queues_idle_before && created_at < queues_idle_before {
                    idle.push((q, decode_queue_record(&plain)?));
                }
            }
            if examined < scan.max(1) && idle.len() < max {
                // The sweep reached the last queue.
                next_scan = None;
            }
        }
        for (q, rec) in &idle {
            self.delete_queue(txn, q, rec)?;
        }
        Ok(WriteOutcome::Expired {
            messages: n_msgs,
            queues: idle.len() as u64,
            more,
            next_scan,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;
    use sotto_protocol::{AuthSecretKey, DhSecretKey};

    fn record() -> QueueRecord {
        let dh = DhSecretKey::generate(&mut OsRng);
        QueueRecord {
            recipient_id: RecipientId::random(&mut OsRng),
            sender_id: SenderId::random(&mut OsRng),
            recipient_key: AuthSecretKey::generate(&mut OsRng).public(),
            sender_key: None,
            relay_dh_public: dh.public(),
            seal_key: BodySealKey::from_bytes([3; 32]),
            status: QueueStatus::Active,
            created_at: 1000,
            last_active: 1000,
        }
    }

    fn message(id: u8, received_ms: u64, release_at_ms: u64) -> NewMessage {
        NewMessage {
            msg_id: MessageId([id; 24]),
            timestamp: received_ms / 1000,
            received_ms,
            release_at_ms,
            flags: 0,
            body: sealed(id, &[id; 100]),
        }
    }

    /// `body` sealed as message `[id; 24]` with the seal key of [`record`].
    fn sealed(id: u8, body: &[u8]) -> SealedBody {
        SealedBody::seal(
            &BodySealKey::from_bytes([3; 32]),
            &MessageId([id; 24]),
            body,
        )
    }

    fn open(dir: &Path) -> Store {
        let key = StorageKey::from_bytes([7; 32]);
        let path = dir.join("q.redb");
        if !path.exists() {
            Store::create(&path, &key).unwrap();
        }
        Store::open(&path, &key, StoreOptions::default()).unwrap()
    }

    #[tokio::test]
    async fn queue_and_message_lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let rec = record();
        assert_eq!(
            store
                .write(WriteOp::CreateQueue(Box::new(rec.clone())))
                .await
                .unwrap(),
            WriteOutcome::Done
        );
        let (q, got) = store.queue(&rec.recipient_id).unwrap().unwrap();
        assert_eq!(got, rec);
        assert_eq!(store.queue_by_sender(&rec.sender_id).unwrap().unwrap().0, q);
        let key = AuthSecretKey::generate(&mut OsRng).public();
        assert_eq!(
            store
                .write(WriteOp::SetSenderKey { queue: q, key })
                .await
                .unwrap(),
            WriteOutcome::Done
        );
        let other = AuthSecretKey::generate(&mut OsRng).public();
        assert_eq!(
            store
                .write(WriteOp::SetSenderKey {
                    queue: q,
                    key: other
                })
                .await
                .unwrap(),
            WriteOutcome::KeyConflict
        );
        for i in 0..3u8 {
            let out = store
                .write(WriteOp::Append {
                    queue: q,
                    msg: message(i, 5_000_000, 5_000_000 + u64::from(i) * 1000),
                    quota: 3,
                })
                .await
                .unwrap();
            assert!(matches!(out, WriteOutcome::Appended { .. }));
        }
        assert_eq!(
            store
                .write(WriteOp::Append {
                    queue: q,
                    msg: message(9, 5_000_000, 5_000_000),
                    quota: 3
                })
                .await
                .unwrap(),
            WriteOutcome::QuotaExceeded
        );
        // Only released messages are visible.
        let first = store.first_visible(&q, 5_000_000).unwrap().unwrap();
        assert_eq!(first.msg.msg_id, MessageId([0; 24]));
        assert_eq!(store.pending_after(5_000_000).unwrap().len(), 2);
        let delete = |seq: u64, release_at_ms: u64| WriteOp::DeleteMessage {
            queue: q,
            seq,
            release_at_ms,
            received_ms: first.msg.received_ms,
        };
        for wrong in [
            delete(first.seq + 1000, first.msg.release_at_ms),
            delete(first.seq, first.msg.release_at_ms + 1),
        ] {
            assert_eq!(store.write(wrong).await.unwrap(), WriteOutcome::NoMessage);
        }
        assert_eq!(
            store
                .write(delete(first.seq, first.msg.release_at_ms))
                .await
                .unwrap(),
            WriteOutcome::Done
        );
        assert_eq!(
            store
                .write(delete(first.seq, first.msg.release_at_ms))
                .await
                .unwrap(),
            WriteOutcome::NoMessage,
            "a second ACK finds nothing"
        );
        assert!(store.first_visible(&q, 5_000_000).unwrap().is_none());
        assert_eq!(
            store
                .first_visible(&q, 5_001_000)
                .unwrap()
                .unwrap()
                .msg
                .body,
            sealed(1, &[1; 100])
        );
        assert_eq!(store.message_count(&q).unwrap(), 2);
        store
            .write(WriteOp::DeleteQueue { queue: q })
            .await
            .unwrap();
        assert!(store.queue(&rec.recipient_id).unwrap().is_none());
        assert!(store.queue_by_sender(&rec.sender_id).unwrap().is_none());
        assert_eq!(store.counts().unwrap(), (0, 0));
        assert!(store.pending_after(0).unwrap().is_empty());
    }

    #[tokio::test]
    async fn nothing_in_the_clear_and_wrong_key_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let rec = record();
        store
            .write(WriteOp::CreateQueue(Box::new(rec.clone())))
            .await
            .unwrap();
        let q = store.queue_ref(&rec.recipient_id);
        let mut m = message(1, 1, 1);
        // What the store keeps in the clear is the body sealed for the recipient; the rest of
        // the record is encrypted under the storage key.
        m.body = sealed(1, b"attack at dawn, attack at dawn");
        store
            .write(WriteOp::Append {
                queue: q,
                msg: m,
                quota: 10,
            })
            .await
            .unwrap();
        assert!(store.close(std::time::Duration::from_secs(10)).await);
        let raw = std::fs::read(dir.path().join("q.redb")).unwrap();
        let has = |needle: &[u8]| raw.windows(needle.len()).any(|w| w == needle);
        assert!(!has(b"attack at dawn"));
        assert!(!has(rec.recipient_id.as_bytes()));
        assert!(!has(rec.sender_id.as_bytes()));
        let e = Store::open(
            &dir.path().join("q.redb"),
            &StorageKey::from_bytes([8; 32]),
            StoreOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(e, StoreError::WrongKey(_)), "{e}");
    }

    #[tokio::test]
    async fn expiry_removes_old_messages_and_idle_queues() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let old = record();
        let mut fresh = record();
        fresh.created_at = 10_000;
        fresh.last_active = 10_000;
        store
            .write(WriteOp::CreateQueue(Box::new(old.clone())))
            .await
            .unwrap();
        store
            .write(WriteOp::CreateQueue(Box::new(fresh.clone())))
            .await
            .unwrap();
        let qf = store.queue_ref(&fresh.recipient_id);
        store
            .write(WriteOp::Append {
                queue: qf,
                msg: message(1, 9_000_000, 9_000_000),
                quota: 9,
            })
            .await
            .unwrap();
        store
            .write(WriteOp::Append {
                queue: qf,
                msg: message(2, 10_000_000, 10_000_000),
                quota: 9,
            })
            .await
            .unwrap();
        let out = store
            .write(WriteOp::Expire {
                messages_before: 9_500,
                queues_idle_before: 5_000,
                max: 100,
                scan_after: None,
                scan: 100,
            })
            .await
            .unwrap();
        assert_eq!(
            out,
            WriteOutcome::Expired {
                messages: 1,
                queues: 1,
                more: false,
                next_scan: None,
            }
        );
        assert!(store.queue(&old.recipient_id).unwrap().is_none());
        assert_eq!(store.message_count(&qf).unwrap(), 1);
    }

    #[tokio::test]
    async fn idle_sweep_walks_the_queues_in_bounded_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let mut fresh = record();
        fresh.created_at = 10_000;
        fresh.last_active = 10_000;
        store
            .write(WriteOp::CreateQueue(Box::new(fresh.clone())))
            .await
            .unwrap();
        for _ in 0..5 {
            store
                .write(WriteOp::CreateQueue(Box::new(record())))
                .await
                .unwrap();
        }
        let (mut scan_after, mut calls, mut deleted) = (None, 0, 0);
        loop {
            calls += 1;
            let out = store
                .write(WriteOp::Expire {
                    messages_before: 0,
                    queues_idle_before: 5_000,
                    max: 100,
                    scan_after,
                    scan: 2,
                })
                .await
                .unwrap();
            let WriteOutcome::Expired {
                queues, next_scan, ..
            } = out
            else {
                panic!("{out:?}");
            };
            assert!(queues <= 2, "a call examines at most `scan` queues");
            deleted += queues;
            scan_after = next_scan;
            if scan_after.is_none() {
                break;
            }
            assert!(calls < 10, "the sweep must end");
        }
        assert_eq!(deleted, 5);
        assert!(calls >= 3, "6 queues in chunks of 2 take 3 calls or more");
        assert_eq!(store.counts().unwrap().0, 1);
        assert!(store.queue(&fresh.recipient_id).unwrap().is_some());
    }

    #[test]
    fn queue_record_times_are_the_last_two_fields() {
        let mut rec = record();
        rec.created_at = 7;
        rec.last_active = 9;
        assert_eq!(
            queue_record_times(&encode_queue_record(&rec)).unwrap(),
            (7, 9)
        );
        rec.sender_key = Some(AuthSecretKey::generate(&mut OsRng).public());
        assert_eq!(
            queue_record_times(&encode_queue_record(&rec)).unwrap(),
            (7, 9)
        );
        assert!(queue_record_times(&[0; 100]).is_err());
        assert_eq!(
            queue_record_state(&encode_queue_record(&rec)).unwrap(),
            (QueueStatus::Active, 9)
        );
        rec.status = QueueStatus::Off;
        rec.sender_key = None;
        assert_eq!(
            queue_record_state(&encode_queue_record(&rec)).unwrap(),
            (QueueStatus::Off, 9)
        );
    }

    #[tokio::test]
    async fn a_clean_close_vouches_only_for_the_same_unchanged_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("q.redb");
        let store = open(dir.path());
        store
            .write(WriteOp::CreateQueue(Box::new(record())))
            .await
            .unwrap();
        assert!(!clean_stamp_path(&path).exists(), "no stamp while open");
        assert!(store.close(std::time::Duration::from_secs(10)).await);
        assert!(
            clean_stamp_matches(&path),
            "a clean close leaves a matching stamp"
        );
        // Opening consumes the stamp: a crash from here on leads to a checked open.
        let store = open(dir.path());
        assert!(!clean_stamp_path(&path).exists());
        assert!(store.close(std::time::Duration::from_secs(10)).await);
        assert!(clean_stamp_matches(&path));
        // The same bytes in another file (a restored backup, a copy) are checked again.
        let copy = dir.path().join("copy.redb");
        std::fs::copy(&path, &copy).unwrap();
        std::fs::rename(&copy, &path).unwrap();
        assert!(!clean_stamp_matches(&path));
    }

    #[tokio::test]
    async fn forwarded_requests_are_remembered_until_expiry_and_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let record = |e: u8, expiry: u64, now: u64| WriteOp::RecordForward {
            ephemeral: [e; 32],
            expiry,
            now,
        };
        assert_eq!(
            store.write(record(1, 1300, 1000)).await.unwrap(),
            WriteOutcome::Done
        );
        assert_eq!(
            store.write(record(2, 1200, 1000)).await.unwrap(),
            WriteOutcome::Done
        );
        // The same ephemeral key again, whatever expiry it claims: a replay.
        assert_eq!(
            store.write(record(1, 1300, 1001)).await.unwrap(),
            WriteOutcome::Replayed
        );
        assert_eq!(
            store.write(record(1, 1500, 1001)).await.unwrap(),
            WriteOutcome::Replayed
        );
        // Nothing of it is in the file in the clear.
        let path = store.path().to_owned();
        assert!(store.close(std::time::Duration::from_secs(10)).await);
        let raw = std::fs::read(&path).unwrap();
        assert!(!raw.windows(32).any(|w| w == [1u8; 32]));
        // Remembered across a reopen.
        let store = open(dir.path());
        assert_eq!(
            store.write(record(1, 1300, 1002)).await.unwrap(),
            WriteOutcome::Replayed
        );
        // Once the clock passes 1200, entry 2 is forgotten, and so is every request expiring
        // at or before it, even if the clock is later stepped back.
        assert_eq!(
            store.write(record(3, 1400, 1250)).await.unwrap(),
            WriteOutcome::Done
        );
        assert_eq!(
            store.write(record(2, 1200, 1100)).await.unwrap(),
            WriteOutcome::Replayed
        );
        assert_eq!(
            store.write(record(4, 1150, 1100)).await.unwrap(),
            WriteOutcome::Replayed
        );
        assert_eq!(
            store.write(record(5, 1201, 1100)).await.unwrap(),
            WriteOutcome::Done
        );
        // Entry 1 is still remembered (it expires at 1300).
        assert_eq!(
            store.write(record(1, 1300, 1250)).await.unwrap(),
            WriteOutcome::Replayed
        );
    }

    #[test]
    fn missing_and_garbage_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let key = StorageKey::from_bytes([1; 32]);
        let p = dir.path().join("none.redb");
        assert!(matches!(
            Store::open(&p, &key, StoreOptions::default()),
            Err(StoreError::Missing(_))
        ));
        std::fs::write(&p, vec![0x5a; 10_000]).unwrap();
        let e = Store::open(&p, &key, StoreOptions::default()).unwrap_err();
        assert!(matches!(e, StoreError::Open { .. }), "{e}");
        assert!(e.to_string().contains("none.redb"));
    }

    #[test]
    fn record_codecs_round_trip_and_reject_garbage() {
        let rec = record();
        assert_eq!(
            decode_queue_record(&encode_queue_record(&rec)).unwrap(),
            rec
        );
        let enc = encode_queue_record(&rec);
        for n in 0..enc.len() {
            assert!(decode_queue_record(&enc[..n]).is_err());
        }
        let keys = Keys::new(&StorageKey::from_bytes([7; 32]));
        let q = [9u8; 32];
        let m = message(4, 1, 2);
        let value = encode_message_value(&keys, &q, 5, &m);
        assert_eq!(value.len(), 8 + SEALED_HEADER_LEN + m.body.len());
        match open_message(&keys, &q, 5, &value).unwrap() {
            OpenedMessage::Current(got) => assert_eq!(got, m),
            OpenedMessage::Legacy { .. } => panic!("read as version 1"),
        }
        // Bound to its position, and every truncation or flipped header byte is refused.
        assert!(open_message(&keys, &q, 6, &value).is_err());
        assert!(open_message(&keys, &[8; 32], 5, &value).is_err());
        for n in 0..8 + SEALED_HEADER_LEN {
            assert!(open_message(&keys, &q, 5, &value[..n]).is_err());
            let mut bad = value.clone();
            bad[n] ^= 1;
            assert!(open_message(&keys, &q, 5, &bad).is_err(), "byte {n}");
        }
        assert!(open_message(&keys, &q, 5, &[]).is_err());
        assert!(open_message(&keys, &q, 5, &[9; 100]).is_err());
    }

    /// A version 1 message record (the whole message under the storage key, as earlier
    /// relays wrote it).
    fn legacy_value(
        keys: &Keys,
        queue: &QueueRef,
        seq: u64,
        m: &NewMessage,
        body: &[u8],
    ) -> Vec<u8> {
        let mut plain = vec![1u8];
        plain.extend_from_slice(m.msg_id.as_bytes());
        plain.extend_from_slice(&m.timestamp.to_be_bytes());
        plain.extend_from_slice(&m.received_ms.to_be_bytes());
        plain.push(m.flags);
        plain.extend_from_slice(body);
        let mut value = m.release_at_ms.to_be_bytes().to_vec();
        value.extend_from_slice(&keys.seal(&message_ad(queue, seq, m.release_at_ms), &plain));
        value
    }

    /// Messages stored by an earlier relay (version 1 records) are still delivered: sealed
    /// with the queue's key when read, byte for byte what a version 2 record would give.
    #[tokio::test]
    async fn version_1_message_records_are_still_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let rec = record();
        let (q, _) = {
            store
                .write(WriteOp::CreateQueue(Box::new(rec.clone())))
                .await
                .unwrap();
            (store.queue_ref(&rec.recipient_id), ())
        };
        assert!(store.close(Duration::from_secs(10)).await);
        let keys = Keys::new(&StorageKey::from_bytes([7; 32]));
        let m = message(6, 1_000, 1_000);
        {
            let db = Database::create(dir.path().join("q.redb")).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(MESSAGES)
                .unwrap()
                .insert(
                    (q, 3u64),
                    legacy_value(&keys, &q, 3, &m, &[6; 100]).as_slice(),
                )
                .unwrap();
            txn.commit().unwrap();
        }
        match open_message(&keys, &q, 3, &legacy_value(&keys, &q, 3, &m, &[6; 100])).unwrap() {
            OpenedMessage::Legacy { header, body, .. } => {
                assert_eq!(body.as_slice(), &[6; 100]);
                assert_eq!(header.received_ms, 1_000);
            }
            OpenedMessage::Current(_) => panic!("read as version 2"),
        }
        let store = open(dir.path());
        let got = store.first_visible(&q, 2_000).unwrap().unwrap();
        assert_eq!(got.seq, 3);
        assert_eq!(
            got.msg, m,
            "sealed at read with the queue's key, as version 2 would"
        );
        assert!(store.close(Duration::from_secs(10)).await);
    }

    // -----------------------------------------------------------------------------------
    // Relaxed commits (see the module documentation, # Durability)
    // -----------------------------------------------------------------------------------

    /// The writer's counts as published now.
    fn stats(store: &Store) -> CommitStats {
        *store.commit_stats().borrow()
    }

    fn open_with(dir: &Path, opts: StoreOptions, bound: Duration) -> Store {
        let key = StorageKey::from_bytes([7; 32]);
        let path = dir.join("q.redb");
        if !path.exists() {
            Store::create(&path, &key).unwrap();
        }
        Store::open_with_bound(&path, &key, opts, bound).unwrap()
    }

    /// (queues, messages) in the database as a crash at this moment would leave it. The file
    /// is copied while the writer is idle: the copy holds every page written, fsynced or not
    /// (the page cache is what a reader sees), and redb recovers the copy to the commit its
    /// header names, which only a durable commit writes.
    async fn after_a_crash(store: &Store) -> (u64, u64) {
        let image = store.path().with_extension("image");
        let _ = std::fs::remove_file(&image);
        std::fs::copy(store.path(), &image).unwrap();
        let copy = Store::open(
            &image,
            &StorageKey::from_bytes([7; 32]),
            StoreOptions::default(),
        )
        .unwrap();
        let counts = copy.counts().unwrap();
        assert!(copy.close(Duration::from_secs(10)).await);
        std::fs::remove_file(&image).unwrap();
        counts
    }

    /// A queue holding `n` messages; returns it with the deletions that ACK them.
    async fn queue_with_messages(store: &Store, n: u8) -> (QueueRef, Vec<WriteOp>) {
        let rec = record();
        store
            .write(WriteOp::CreateQueue(Box::new(rec.clone())))
            .await
            .unwrap();
        let q = store.queue_ref(&rec.recipient_id);
        let mut acks = Vec::new();
        for i in 0..n {
            let msg = message(i, 5_000_000, 5_000_000);
            let WriteOutcome::Appended { seq } = store
                .write(WriteOp::Append {
                    queue: q,
                    msg,
                    quota: 100,
                })
                .await
                .unwrap()
            else {
                panic!("not appended");
            };
            acks.push(WriteOp::DeleteMessage {
                queue: q,
                seq,
                release_at_ms: 5_000_000,
                received_ms: 5_000_000,
            });
        }
        (q, acks)
    }

    fn histogram() -> prometheus::Histogram {
        prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("h", "h")).unwrap()
    }

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

    /// A session skips exactly the positions whose deletions are pending: a message at a
    /// lower position released later is still found.
    #[tokio::test]
    async fn first_visible_passes_over_exactly_the_skipped_positions() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let (q, _) = queue_with_messages(&store, 0).await;
        let mut seqs = Vec::new();
        // Position order: late (released at 9 000), early (1 000), early (2 000).
        for (id, release) in [(1u8, 9_000u64), (2, 1_000), (3, 2_000)] {
            let WriteOutcome::Appended { seq } = store
                .write(WriteOp::Append {
                    queue: q,
                    msg: message(id, 500, release),
                    quota: 100,
                })
                .await
                .unwrap()
            else {
                panic!("not appended")
            };
            seqs.push(seq);
        }
        let first = |skip: &[u64], now| {
            store
                .first_visible_except(&q, skip, now)
                .unwrap()
                .map(|m| m.seq)
        };
        assert_eq!(first(&[], 3_000), Some(seqs[1]));
        assert_eq!(first(&[seqs[1]], 3_000), Some(seqs[2]));
        assert_eq!(first(&[seqs[1], seqs[2]], 3_000), None);
        // The late one, below the skipped positions, once released.
        assert_eq!(first(&[seqs[1], seqs[2]], 9_000), Some(seqs[0]));
        assert_eq!(first(&[seqs[2]], 9_000), Some(seqs[0]));
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

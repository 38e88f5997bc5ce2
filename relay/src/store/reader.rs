//! The read side of [`Store`]: lookups and range scans, each in one short redb read
//! transaction on the caller's thread (MVCC: reads never wait for the writer).
//!
//! What it owns: the queries, the timing equaliser of lookups that find nothing (the dummy
//! record), sealing a version 1 message for delivery, and asking the writer to reopen a
//! database that redb has latched after an I/O error. What it does not: writes (`writer`),
//! or the reopen itself (`recovery`).

use std::sync::Arc;

use rand_core::RngCore as _;
use redb::{
    Database, ReadTransaction, ReadableDatabase as _, ReadableTable, ReadableTableMetadata as _,
};
use sotto_protocol::seal::BodySealKey;
use sotto_protocol::{RecipientId, SenderId};

use super::keys::Keys;
use super::records::{
    BLOCKED, MESSAGES, OpenedMessage, PENDING, QUEUES, SENDERS, decode_queue_record,
    encode_queue_record, open_message, queue_ad, split_release,
};
use super::writer::Msg;
use super::{QueueRecord, QueueRef, QueueStatus, SealedBody, Store, StoreError, StoredMessage, io};

/// Longest a read waits for a reopen in progress before it fails (see
/// [`Store::wait_for_reopen`]).
const READ_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

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

/// A sealed queue record of no queue, and its reference (never stored): what a lookup that
/// finds nothing opens, so that it costs what a hit costs.
pub(super) fn dummy_record(keys: &Keys) -> (QueueRef, Vec<u8>) {
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
}

impl Store {
    /// Starts a read transaction on the current database. If the database is unusable (being
    /// reopened, or latched after an I/O error) the writer is asked to reopen it and the read
    /// fails with [`StoreError::Io`].
    fn read(&self) -> Result<Reader, StoreError> {
        let Some(db) = self.inner.slot.get().or_else(|| self.wait_for_reopen()) else {
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

    /// Waits (at most [`READ_WAIT`], on this thread) for the writer to put the database back
    /// in the slot: a reopen after a full disk takes milliseconds, and a GET that waits for it
    /// is better than one that fails.
    fn wait_for_reopen(&self) -> Option<Arc<Database>> {
        let deadline = std::time::Instant::now() + READ_WAIT;
        while std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(1));
            if let Some(db) = self.inner.slot.get() {
                return Some(db);
            }
        }
        None
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
            return Ok(Some(self.opened(&txn, queue, seq, value)?));
        }
        Ok(None)
    }

    /// The message of a queue at position `seq`, if it is still stored (not acknowledged,
    /// expired or deleted with its queue): a session delivers the message it has in flight
    /// again with it.
    ///
    /// # Errors
    /// Read or decryption failure.
    pub fn message_at(
        &self,
        queue: &QueueRef,
        seq: u64,
    ) -> Result<Option<StoredMessage>, StoreError> {
        let txn = self.read()?;
        let t = txn.open_table(MESSAGES).map_err(|e| self.rd(&txn, e))?;
        let Some(v) = t.get((*queue, seq)).map_err(|e| self.rd(&txn, e))? else {
            return Ok(None);
        };
        Ok(Some(self.opened(&txn, queue, seq, v.value())?))
    }

    /// Opens the stored message `value` at (`queue`, `seq`) for delivery.
    fn opened(
        &self,
        txn: &Reader,
        queue: &QueueRef,
        seq: u64,
        value: &[u8],
    ) -> Result<StoredMessage, StoreError> {
        let msg = match open_message(&self.inner.keys, queue, seq, value)? {
            OpenedMessage::Current(m) => m,
            OpenedMessage::Legacy {
                header,
                release_at_ms,
                body,
            } => {
                // Written by an earlier relay: seal it now with the queue's key.
                let queues = txn.open_table(QUEUES).map_err(|e| self.rd(txn, e))?;
                let rec = match queues.get(queue).map_err(|e| self.rd(txn, e))? {
                    Some(r) => {
                        decode_queue_record(&self.inner.keys.open(&queue_ad(queue), r.value())?)?
                    }
                    None => return Err(StoreError::Corrupt("message without queue".into())),
                };
                let sealed = SealedBody::seal(&rec.seal_key, &header.msg_id, &body);
                header.into_message(release_at_ms, sealed)
            }
        };
        Ok(StoredMessage { seq, msg })
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

    /// The block list: every blocked queue's reference (a keyed hash) and when it was
    /// blocked (Unix seconds), in reference order.
    ///
    /// # Errors
    /// Read failure.
    pub fn blocked(&self) -> Result<Vec<(QueueRef, u64)>, StoreError> {
        let txn = self.read()?;
        let t = match txn.open_table(BLOCKED) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(self.rd(&txn, e)),
        };
        let mut out = Vec::new();
        for e in t.iter().map_err(|e| self.rd(&txn, e))? {
            let (k, v) = e.map_err(|e| self.rd(&txn, e))?;
            out.push((k.value(), v.value()));
        }
        Ok(out)
    }

    /// How many queues are blocked (the length of [`Store::blocked`]).
    ///
    /// # Errors
    /// Read failure.
    pub fn blocked_count(&self) -> Result<u64, StoreError> {
        let txn = self.read()?;
        match txn.open_table(BLOCKED) {
            Ok(t) => t.len().map_err(|e| self.rd(&txn, e)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
            Err(e) => Err(self.rd(&txn, e)),
        }
    }

    /// The reference of the queue whose sender id is `id`, if there is one (for the
    /// operator's tools; sessions use [`Store::queue_by_sender`]).
    ///
    /// # Errors
    /// Read failure.
    pub fn sender_queue_ref(&self, id: &SenderId) -> Result<Option<QueueRef>, StoreError> {
        let s = self.inner.keys.sender_ref(id);
        let txn = self.read()?;
        let senders = txn.open_table(SENDERS).map_err(|e| self.rd(&txn, e))?;
        Ok(senders
            .get(&s)
            .map_err(|e| self.rd(&txn, e))?
            .map(|v| v.value()))
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::store::test_support::*;
    use crate::store::*;

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
}

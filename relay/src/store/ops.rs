//! The writes: what each [`WriteOp`] means, what it answers ([`WriteOutcome`]), and how the
//! writer applies it inside a batch's transaction — re-checking there the invariants that
//! must hold in one transaction (the queue exists, its status, its quota).
//!
//! What it owns: creating, securing, disabling, touching and deleting queues, appending and
//! deleting messages. What it does not: batching and committing (`writer`), the expiry sweep
//! (`expiry`) and the replay memory (`replay`), which [`Writer::apply`] hands on to.

use redb::{ReadableTable, WriteTransaction};
use sotto_protocol::AuthPublicKey;

use super::records::{
    BLOCKED, BY_TIME, MESSAGES, PENDING, QUEUES, SENDERS, decode_queue_record,
    encode_message_value, encode_queue_record, open_message, queue_ad, queue_record_state,
    split_release,
};
use super::writer::Writer;
use super::{NewMessage, QueueRecord, QueueRef, QueueStatus, StoreError, io};

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
    /// [`Store::first_visible`](super::Store::first_visible) (its times come from that
    /// authenticated read). Positions are never reused — the sequence counter is committed with
    /// every batch and rolled back only with a batch that committed nothing — so the position names
    /// the message; the stored release time is compared as a cheap consistency check. The record is
    /// not decrypted again (that cost a 16 KiB decryption per delivered message).
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
    /// The operator blocks a queue (`sotto-relay block`): its status becomes
    /// [`QueueStatus::Blocked`], every message it holds is deleted, and its reference is added
    /// to the block list with the time `now` (Unix seconds).
    Block {
        /// Queue.
        queue: QueueRef,
        /// Unix seconds.
        now: u64,
    },
    /// The operator lifts a block (`sotto-relay unblock`): the queue is active again (empty)
    /// and leaves the block list.
    Unblock {
        /// Queue.
        queue: QueueRef,
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
            | WriteOp::Block { .. }
            | WriteOp::Unblock { .. }
            | WriteOp::RecordForward { .. } => true,
        }
    }

    /// Whether the write makes the store hold more: a new queue or a new message. Only these
    /// are refused while the store is full (see the store's # Full disk); everything else,
    /// deletions above all, goes on.
    pub fn takes_room(&self) -> bool {
        matches!(self, WriteOp::CreateQueue(_) | WriteOp::Append { .. })
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
    /// The queue is blocked by the operator (SEND, KEY, SKEY, OFF refused).
    QueueBlocked,
    /// [`WriteOp::Block`]: the queue is blocked now.
    BlockedNow {
        /// Messages deleted with the block.
        messages: u64,
        /// Whether it was blocked already (nothing changed then).
        already: bool,
    },
    /// [`WriteOp::Unblock`] of a queue that is not blocked (nothing changed).
    NotBlocked,
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
    /// RFWD: the replay memory holds [`MAX_SEEN_FORWARDS`](super::MAX_SEEN_FORWARDS) live entries.
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

impl Writer {
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

    pub(super) fn apply(
        &mut self,
        txn: &WriteTransaction,
        op: &WriteOp,
    ) -> Result<WriteOutcome, StoreError> {
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
                match rec.status {
                    QueueStatus::Active => {}
                    QueueStatus::Off => return Ok(WriteOutcome::Disabled),
                    QueueStatus::Blocked => return Ok(WriteOutcome::QueueBlocked),
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
                if rec.status == QueueStatus::Blocked {
                    return Ok(WriteOutcome::QueueBlocked);
                }
                rec.status = QueueStatus::Off;
                self.write_queue(txn, queue, &rec)?;
                Ok(WriteOutcome::Done)
            }
            WriteOp::Block { queue, now } => {
                let Some(mut rec) = self.read_queue(txn, queue)? else {
                    return Ok(WriteOutcome::NoQueue);
                };
                let already = rec.status == QueueStatus::Blocked;
                // Messages are deleted even when already blocked: a blocked queue holds none,
                // and this makes a block that raced an append (there is none offline) whole.
                let messages = self.delete_messages(txn, queue)?;
                if !already {
                    rec.status = QueueStatus::Blocked;
                    self.write_queue(txn, queue, &rec)?;
                    txn.open_table(BLOCKED)
                        .map_err(io)?
                        .insert(queue, *now)
                        .map_err(io)?;
                }
                Ok(WriteOutcome::BlockedNow { messages, already })
            }
            WriteOp::Unblock { queue } => {
                let listed = txn
                    .open_table(BLOCKED)
                    .map_err(io)?
                    .remove(queue)
                    .map_err(io)?
                    .is_some();
                let Some(mut rec) = self.read_queue(txn, queue)? else {
                    return Ok(if listed {
                        WriteOutcome::Done
                    } else {
                        WriteOutcome::NoQueue
                    });
                };
                if rec.status != QueueStatus::Blocked {
                    return Ok(WriteOutcome::NotBlocked);
                }
                rec.status = QueueStatus::Active;
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
                match status {
                    QueueStatus::Active => {}
                    QueueStatus::Off => return Ok(WriteOutcome::Disabled),
                    QueueStatus::Blocked => return Ok(WriteOutcome::QueueBlocked),
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

    pub(super) fn delete_queue(
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
        if rec.status == QueueStatus::Blocked {
            // Only the idle sweep deletes a blocked queue (its recipient's DEL is refused):
            // the block list holds blocked queues that exist.
            txn.open_table(BLOCKED)
                .map_err(io)?
                .remove(queue)
                .map_err(io)?;
        }
        self.delete_messages(txn, queue)?;
        Ok(())
    }

    /// Deletes every message of `queue` with its index entries; how many.
    fn delete_messages(&self, txn: &WriteTransaction, queue: &QueueRef) -> Result<u64, StoreError> {
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
        let count = doomed.len() as u64;
        for (seq, release, received) in doomed {
            messages.remove((*queue, seq)).map_err(io)?;
            pending.remove((release, *queue, seq)).map_err(io)?;
            if let Some(r) = received {
                by_time.remove((r, *queue, seq)).map_err(io)?;
            }
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::OsRng;
    use sotto_protocol::{AuthSecretKey, MessageId};

    use crate::store::test_support::*;
    use crate::store::*;

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
    async fn a_block_empties_the_queue_refuses_writes_and_ends_with_unblock_or_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let rec = record();
        store
            .write(WriteOp::CreateQueue(Box::new(rec.clone())))
            .await
            .unwrap();
        let q = store.queue_ref(&rec.recipient_id);
        for (id, release) in [(1, 1_000_000), (2, u64::MAX / 2)] {
            let msg = message(id, 1_000_000, release);
            let op = WriteOp::Append {
                queue: q,
                msg,
                quota: 10,
            };
            assert!(matches!(
                store.write(op).await.unwrap(),
                WriteOutcome::Appended { .. }
            ));
        }
        let block = WriteOp::Block { queue: q, now: 77 };
        assert_eq!(
            store.write(block.clone()).await.unwrap(),
            WriteOutcome::BlockedNow {
                messages: 2,
                already: false
            }
        );
        assert_eq!(store.counts().unwrap(), (1, 0));
        assert!(store.pending_after(0).unwrap().is_empty());
        assert_eq!(store.blocked().unwrap(), vec![(q, 77)]);
        assert_eq!(store.blocked_count().unwrap(), 1);
        assert_eq!(
            store.queue(&rec.recipient_id).unwrap().unwrap().1.status,
            QueueStatus::Blocked
        );
        let key = AuthSecretKey::generate(&mut OsRng).public();
        for op in [
            WriteOp::Append {
                queue: q,
                msg: message(3, 1_000_000, 1_000_000),
                quota: 10,
            },
            WriteOp::SetSenderKey { queue: q, key },
            WriteOp::Disable { queue: q },
        ] {
            assert_eq!(store.write(op).await.unwrap(), WriteOutcome::QueueBlocked);
        }
        assert_eq!(
            store.write(block.clone()).await.unwrap(),
            WriteOutcome::BlockedNow {
                messages: 0,
                already: true
            }
        );
        assert_eq!(
            store.write(WriteOp::Unblock { queue: q }).await.unwrap(),
            WriteOutcome::Done
        );
        assert!(store.blocked().unwrap().is_empty());
        assert_eq!(
            store.queue(&rec.recipient_id).unwrap().unwrap().1.status,
            QueueStatus::Active
        );
        assert_eq!(
            store.write(WriteOp::Unblock { queue: q }).await.unwrap(),
            WriteOutcome::NotBlocked
        );
        // Blocked again, then idle for too long: the sweep deletes it, and its entry.
        store.write(block).await.unwrap();
        let out = store
            .write(WriteOp::Expire {
                messages_before: 0,
                queues_idle_before: u64::MAX,
                max: 100,
                scan_after: None,
                scan: 100,
            })
            .await
            .unwrap();
        assert!(
            matches!(out, WriteOutcome::Expired { queues: 1, .. }),
            "{out:?}"
        );
        assert_eq!(store.counts().unwrap(), (0, 0));
        assert_eq!(store.blocked_count().unwrap(), 0);
        assert!(store.sender_queue_ref(&rec.sender_id).unwrap().is_none());
    }
}

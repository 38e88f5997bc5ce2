//! The expiry sweep ([`WriteOp::Expire`](super::WriteOp::Expire)): messages past their TTL, through
//! the `by_time` index, and queues idle past the idle limit, through a bounded cursor walk over the
//! queue records (no activity index is kept on disk in the clear).
//!
//! What it owns: what one sweep call deletes and where the walk stops. What it does not: when
//! the sweep runs and with which cutoffs (the relay's expiry task), or deleting a queue
//! (`ops`).

use redb::{ReadableTable, WriteTransaction};

use super::records::{
    BY_TIME, MESSAGES, PENDING, QUEUES, decode_queue_record, queue_ad, queue_record_times,
    split_release,
};
use super::writer::Writer;
use super::{QueueRef, StoreError, WriteOutcome, io};

impl Writer {
    pub(super) fn expire(
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
    use crate::store::test_support::*;
    use crate::store::*;

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
}

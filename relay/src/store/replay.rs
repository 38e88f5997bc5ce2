//! The replay memory of forwarded requests
//! ([`WriteOp::RecordForward`](super::WriteOp::RecordForward), `docs/protocol.md` § 10a.5): each
//! sealed request's ephemeral key, as a keyed hash, until the request expires, and the highest
//! expiry ever forgotten, so that a clock stepped back revives nothing.
//!
//! What it owns: its two tables, its bound and its cleanup. What it does not: checking the
//! forwarded request itself (`sotto_protocol::forward`, the relay's RFWD handling).

use redb::{ReadableTable, ReadableTableMetadata as _, TableDefinition, WriteTransaction};

use super::records::META;
use super::writer::Writer;
use super::{StoreError, WriteOutcome, io};

/// Replay memory of forwarded (RFWD) requests: keyed hash of the sealed request's ephemeral
/// key → its expiry (Unix seconds). Created on first use, so older stores need no upgrade.
const FWD_SEEN: TableDefinition<'_, [u8; 32], u64> = TableDefinition::new("fwd_seen");
/// The same entries by expiry, for removing them once they have expired.
const FWD_EXPIRY: TableDefinition<'_, (u64, [u8; 32]), ()> = TableDefinition::new("fwd_expiry");

/// Most forwarded requests the replay memory holds (about 100 bytes of disk each, so
/// ≈ 100 MiB at worst; no memory beyond redb's cache). Entries live at most
/// `forward::MAX_EXPIRY_AHEAD_S` (600 s), so this is more than 1700 forwarded requests per
/// second sustained; beyond it [`WriteOp::RecordForward`](super::WriteOp::RecordForward) answers
/// [`WriteOutcome::ForwardMemoryFull`].
pub const MAX_SEEN_FORWARDS: u64 = 1 << 20;

/// Expired replay-memory entries removed by each
/// [`WriteOp::RecordForward`](super::WriteOp::RecordForward): more than the one it adds, so the
/// memory shrinks back as soon as traffic lets entries expire.
const FWD_CLEANUP_PER_WRITE: usize = 8;

impl Writer {
    /// See [`WriteOp::RecordForward`](super::WriteOp::RecordForward) and
    /// `docs/protocol.md` § 10a.5.
    pub(super) fn record_forward(
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
}

#[cfg(test)]
mod tests {
    use crate::store::test_support::*;
    use crate::store::*;

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
}

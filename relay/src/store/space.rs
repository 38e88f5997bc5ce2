//! Storage pressure: the global storage budget, the free-space reserve of the file system
//! that holds the database, the emergency reserve file beside it, and the *full* state they
//! decide (see the store's # Full disk).
//!
//! What it owns: [`SpaceGuard`] (the state, its metric and its one log line per change),
//! [`RESERVE_SUFFIX`], the estimate of what the database holds. What it does not: refusing
//! the writes (the writer does, from [`SpaceGuard::full`]), or the reopen after a failed
//! write (`recovery`).

use std::path::{Path, PathBuf};

/// Suffix of the emergency reserve file beside the database (`queues.redb.reserve`): a file
/// of [`StoreOptions::reserve_bytes`](super::StoreOptions::reserve_bytes) zero bytes that
/// the store keeps while the file system has room, and deletes the moment a write to the
/// database fails for want of space, so that ACK deletions, expiry and redb's own repair
/// have room to run while new messages are refused. It is made again once the file system
/// has room for it and the reserve besides. Deleting it by hand is harmless.
pub const RESERVE_SUFFIX: &str = ".reserve";

/// What one stored message costs the database, as counted against
/// [`StoreOptions::max_store_bytes`](super::StoreOptions::max_store_bytes): its record (a
/// full-size body, every client pads to [`MAX_BODY`](sotto_protocol::MAX_BODY), sealed, with
/// its header) and its two index entries, with redb's page overhead. An estimate: the file
/// itself can be larger (redb keeps freed pages for reuse and grows the file in steps).
pub const STORED_MESSAGE_BYTES: u64 = sotto_protocol::MAX_BODY as u64 + 1024;

/// What one queue costs the database, as [`STORED_MESSAGE_BYTES`] (its record and its sender
/// index entry, with page overhead).
pub const STORED_QUEUE_BYTES: u64 = 512;

/// Why the store refuses new messages and queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Pressure {
    /// Room for everything.
    None,
    /// The database holds its budget ([`StoreOptions::max_store_bytes`](super::StoreOptions::max_store_bytes)).
    Budget,
    /// The file system has less free space than the reserve, or the reserve file had to be
    /// given up.
    Disk,
}

/// The full state, re-evaluated by the writer before each batch (one `statvfs`).
#[derive(Debug)]
pub(super) struct SpaceGuard {
    /// The database file.
    db: PathBuf,
    /// Directory of the database (where `statvfs` looks and the reserve file lives).
    dir: PathBuf,
    /// The reserve file.
    reserve_path: PathBuf,
    /// Global budget in bytes (estimated, see [`STORED_MESSAGE_BYTES`]); 0: none.
    max_bytes: u64,
    /// Free space the file system must keep, and the size of the reserve file; 0: neither.
    reserve: u64,
    /// Whether the reserve file is in place (always true with no reserve).
    reserve_held: bool,
    state: Pressure,
    /// A write failed for want of space since the store was last not full.
    space_failed: bool,
    /// 1 while full, 0 otherwise.
    gauge: Option<prometheus::IntGauge>,
}

impl SpaceGuard {
    /// The guard of the database at `db`, with its budget and reserve. Makes the reserve file
    /// if there is room for it.
    pub(super) fn new(
        db: &Path,
        max_bytes: u64,
        reserve: u64,
        gauge: Option<prometheus::IntGauge>,
    ) -> Self {
        let dir = db
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        let mut reserve_path = db.as_os_str().to_owned();
        reserve_path.push(RESERVE_SUFFIX);
        let mut g = Self {
            db: db.to_owned(),
            dir,
            reserve_path: PathBuf::from(reserve_path),
            max_bytes,
            reserve,
            reserve_held: reserve == 0,
            state: Pressure::None,
            space_failed: false,
            gauge,
        };
        if reserve > 0 {
            g.reserve_held = std::fs::metadata(&g.reserve_path).is_ok_and(|m| m.len() >= reserve);
        }
        g
    }

    /// Whether new messages and queues are refused.
    pub(super) fn full(&self) -> bool {
        self.state != Pressure::None
    }

    /// Re-evaluates the state from what the database holds (`messages`, `queues`) and the
    /// file system's free space; logs and sets the metric when it changes. Returns
    /// [`Self::full`].
    pub(super) fn update(&mut self, messages: u64, queues: u64) -> bool {
        let stored = messages
            .saturating_mul(STORED_MESSAGE_BYTES)
            .saturating_add(queues.saturating_mul(STORED_QUEUE_BYTES));
        let mut free = match self.reserve {
            0 => None,
            // After a write failed for want of space, room inside the file does not count
            // until the disk itself has room again: redb need not allocate where it freed.
            _ if self.space_failed => free_bytes(&self.dir),
            _ => self.free_with_reusable(stored),
        };
        // The reserve file comes back only when the file system has room for it *and* the
        // reserve besides, with a margin, so that making it does not itself fill the disk.
        if !self.reserve_held
            && free.is_some_and(|f| f >= self.reserve.saturating_mul(2) + self.reserve / 4)
        {
            self.reserve_held = self.make_reserve();
            free = free_bytes(&self.dir);
        }
        // Hysteresis (a twentieth of the budget, a quarter of the reserve), so that a store
        // at the edge does not change state with every write.
        let leaving = self.full();
        let budget_hit = self.max_bytes > 0
            && if leaving {
                stored > self.max_bytes - self.max_bytes / 20
            } else {
                stored >= self.max_bytes
            };
        let disk_low = self.reserve > 0
            && (!self.reserve_held
                || free.is_some_and(|f| {
                    if leaving {
                        f < self.reserve + self.reserve / 4
                    } else {
                        f < self.reserve
                    }
                }));
        let next = if disk_low {
            Pressure::Disk
        } else if budget_hit {
            Pressure::Budget
        } else {
            Pressure::None
        };
        if next == Pressure::None {
            self.space_failed = false;
        }
        self.set(next, stored, free);
        self.full()
    }

    /// A write to the database failed with redb latched (an I/O error): gives up the reserve
    /// file if the file system looks full, so that deletions and the reopen have room, and
    /// enters the full state. Returns whether the failure looks like a full disk (ENOSPC,
    /// EDQUOT, or less free space than the reserve) rather than a failing disk.
    pub(super) fn write_failed(&mut self, error: &str) -> bool {
        let free = free_bytes(&self.dir);
        let no_space = error.contains("os error 28")
            || error.contains("os error 122")
            || free.is_some_and(|f| f < self.reserve.max(1 << 20));
        if !no_space {
            return false;
        }
        if self.reserve > 0 && std::fs::remove_file(&self.reserve_path).is_ok() {
            tracing::warn!(
                reserve_bytes = self.reserve,
                "disk full: released the store's reserve file so that deliveries and deletions go on"
            );
        }
        self.reserve_held = self.reserve == 0;
        self.space_failed = true;
        self.set(Pressure::Disk, 0, free_bytes(&self.dir));
        true
    }

    fn set(&mut self, next: Pressure, stored: u64, free: Option<u64>) {
        if next == self.state {
            return;
        }
        match next {
            Pressure::None => {
                tracing::info!("store has room again: new messages and queues are accepted")
            }
            Pressure::Budget => tracing::warn!(
                stored_bytes = stored,
                max_store_bytes = self.max_bytes,
                "store full (store.max_mib reached): new messages and queues are refused with STORE; reads, deliveries and deletions go on"
            ),
            Pressure::Disk => tracing::warn!(
                free_bytes = free.unwrap_or(0),
                reserve_bytes = self.reserve,
                "store full (the disk has less free space than store.reserve_mib): new messages and queues are refused with STORE; reads, deliveries and deletions go on"
            ),
        }
        self.state = next;
        if let Some(g) = &self.gauge {
            g.set(i64::from(self.full()));
        }
    }

    /// The file system's free space, plus the room inside the database file that redb
    /// reuses before it grows the file: the file's allocated size less the estimate of what
    /// it holds (`stored`, an overestimate, so this errs towards less room). A store that
    /// filled up and was drained has room again although the file does not shrink.
    fn free_with_reusable(&self, stored: u64) -> Option<u64> {
        use std::os::unix::fs::MetadataExt as _;
        let fs_free = free_bytes(&self.dir)?;
        let allocated = std::fs::metadata(&self.db)
            .map(|m| m.blocks().saturating_mul(512))
            .unwrap_or(0);
        Some(fs_free.saturating_add(allocated.saturating_sub(stored)))
    }

    /// Makes the reserve file: its blocks allocated (`fallocate`, or zeros written where
    /// the file system cannot), then synced, so that the space is really taken.
    fn make_reserve(&self) -> bool {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&self.reserve_path)
            .and_then(|mut f| {
                let allocated =
                    rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, self.reserve);
                match allocated {
                    Ok(()) => {}
                    Err(rustix::io::Errno::OPNOTSUPP) => {
                        let chunk = vec![0u8; 1 << 20];
                        let mut left = self.reserve;
                        while left > 0 {
                            let n = left.min(chunk.len() as u64) as usize;
                            f.write_all(&chunk[..n])?;
                            left -= n as u64;
                        }
                    }
                    Err(e) => return Err(e.into()),
                }
                f.sync_all()
            });
        if let Err(e) = written {
            tracing::warn!(error = %e, "cannot make the store's reserve file");
            let _ = std::fs::remove_file(&self.reserve_path);
            return false;
        }
        true
    }
}

/// Bytes an unprivileged writer may still use on the file system holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    let st = rustix::fs::statvfs(dir).ok()?;
    Some(st.f_bavail.saturating_mul(st.f_frsize))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_refuses_at_the_limit_and_accepts_again_below_the_margin() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.redb");
        let gauge = prometheus::IntGauge::new("g", "g").unwrap();
        let max = 100 * STORED_MESSAGE_BYTES;
        let mut g = SpaceGuard::new(&db, max, 0, Some(gauge.clone()));
        assert!(!g.update(99, 0));
        assert_eq!(gauge.get(), 0);
        assert!(g.update(100, 0), "at the budget");
        assert_eq!(gauge.get(), 1);
        assert!(g.update(97, 0), "within the margin: still full");
        assert!(!g.update(95, 0), "below the margin");
        assert_eq!(gauge.get(), 0);
    }

    #[test]
    fn the_reserve_file_is_made_and_given_up_on_a_full_disk() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("q.redb");
        let mut g = SpaceGuard::new(&db, 0, 1 << 16, None);
        assert!(!g.update(0, 0), "the temp dir has room");
        let reserve = dir.path().join("q.redb.reserve");
        assert_eq!(std::fs::metadata(&reserve).unwrap().len(), 1 << 16);
        assert!(
            !g.write_failed("Input/output error (os error 5)"),
            "not ENOSPC"
        );
        assert!(reserve.exists());
        assert!(g.write_failed("No space left on device (os error 28)"));
        assert!(!reserve.exists(), "given up");
        assert!(g.full());
        // The disk has room: the reserve comes back, and the store leaves the full state.
        assert!(!g.update(0, 0));
        assert!(reserve.exists());
    }
}

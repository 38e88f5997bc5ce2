//! The database handle and every (re)opening of it: the checks when the store opens (a
//! read-only key check first, then redb's full integrity check unless the clean-close stamp
//! vouches for the file), the stamp itself, and the writer's close-and-reopen after a write
//! failure (see the store's # Recovery from write failures).
//!
//! What it owns: [`DbSlot`], [`CLEAN_STAMP_SUFFIX`], the open-time checks, [`Writer::recover`].
//! What it does not: creating a store (`Store::create`), or deciding when to reopen (the
//! writer, on a failed batch or a reader's request).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use redb::{Database, ReadableDatabase as _};

use super::StoreError;
use super::keys::{Keys, StorageKey};
use super::records::{MESSAGES, META, QUEUES, check_opens};
use super::writer::Writer;

/// The open database, swappable so that the writer can close and reopen it after an I/O
/// failure. Readers clone the `Arc` for the length of one read transaction.
pub(super) struct DbSlot {
    db: std::sync::RwLock<Option<Arc<Database>>>,
    path: PathBuf,
    cache_bytes: usize,
    /// Tests: while set, every fsync of a database this slot opens fails with EIO.
    #[cfg(test)]
    pub(super) fail_syncs: Arc<std::sync::atomic::AtomicBool>,
}

impl DbSlot {
    pub(super) fn get(&self) -> Option<Arc<Database>> {
        self.db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub(super) fn set(&self, db: Option<Arc<Database>>) -> Option<Arc<Database>> {
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
        let mut builder = Database::builder();
        builder
            .set_cache_size(self.cache_bytes)
            .set_check_integrity_on_open(verify);
        #[cfg(test)]
        {
            let file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&self.path)?;
            builder.create_with_backend(test_backend::FailingSyncs {
                inner: redb::backends::FileBackend::new(file)?,
                fail: self.fail_syncs.clone(),
            })
        }
        #[cfg(not(test))]
        builder.open(&self.path)
    }
}

/// Opens the database at `path` for serving with the storage key `key`: the read-only
/// checks, the integrity check when the file may have changed, then the key check and the
/// sequence counter. Returns the slot holding it, the keys and the next position.
///
/// # Errors
/// [`StoreError::Missing`], [`StoreError::Open`] (damaged, unreadable),
/// [`StoreError::WrongKey`].
pub(super) fn open_database(
    path: &Path,
    key: &StorageKey,
    cache_bytes: usize,
) -> Result<(Arc<DbSlot>, Keys, u64), StoreError> {
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
        cache_bytes,
        #[cfg(test)]
        fail_syncs: Arc::default(),
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
        if !check_opens(&keys, check.value()) {
            return Err(StoreError::WrongKey(path.to_owned()));
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
    Ok((slot, keys, next_seq))
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
        Ok(meta.get("check")?.map(|v| check_opens(keys, v.value())))
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
pub(super) fn clean_stamp_matches(db: &Path) -> bool {
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
pub(super) fn write_clean_stamp(db: &Path) {
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

/// How long the writer waits for in-flight reads to release the database before reopening
/// anyway (reads are short: one lookup or one range scan, never held across an await).
const REOPEN_DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

impl Writer {
    /// Closes and reopens the database (see the store's # Recovery from write failures). With
    /// `force` false, only opens it if the slot is empty (an earlier reopen failed). With
    /// `verify`, the reopen checks every page checksum (after a failing disk); without, redb
    /// only repairs the file from its last durable commit (after a full disk, where nothing
    /// was written behind redb's back). The caller applies again the deletions the reopen
    /// undoes (`Writer::unsynced_deletions`).
    pub(super) fn recover(&mut self, force: bool, verify: bool) {
        let old = self.slot.set(None);
        match old {
            Some(db) if force => {
                // redb reopens the file at its last durable commit.
                if self.policy.undo_relaxed() {
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
        let started = Instant::now();
        match guarded(|| self.slot.open(verify)).and_then(|r| r.map_err(|e| e.to_string())) {
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
                tracing::warn!(
                    verified = verify,
                    took_ms = started.elapsed().as_millis() as u64,
                    "database reopened after a write failure; serving again"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot reopen the database; will retry on the next write");
            }
        }
    }
}

/// The committed sequence counter.
fn read_next_seq(db: &Database) -> Option<u64> {
    let txn = db.begin_read().ok()?;
    let meta = txn.open_table(META).ok()?;
    let v = meta.get("next_seq").ok()??;
    <[u8; 8]>::try_from(v.value()).ok().map(u64::from_be_bytes)
}

/// A file backend whose fsyncs fail on demand (EIO), for the tests of a failing disk.
#[cfg(test)]
mod test_backend {
    use std::ops::Bound;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use redb::backends::FileBackend;
    use redb::{BackendError, StorageBackend};

    #[derive(Debug)]
    pub(crate) struct FailingSyncs {
        pub(crate) inner: FileBackend,
        pub(crate) fail: Arc<AtomicBool>,
    }

    impl StorageBackend for FailingSyncs {
        fn len(&self) -> std::io::Result<u64> {
            self.inner.len()
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> std::io::Result<()> {
            self.inner.read(offset, out)
        }
        fn set_len(&self, len: u64) -> std::io::Result<()> {
            self.inner.set_len(len)
        }
        fn sync_data(&self) -> std::io::Result<()> {
            if self.fail.load(Ordering::Relaxed) {
                return Err(std::io::Error::from_raw_os_error(5));
            }
            self.inner.sync_data()
        }
        fn write(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
            self.inner.write(offset, data)
        }
        fn close(&self) -> std::io::Result<()> {
            self.inner.close()
        }
        fn try_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
            self.inner.try_lock_range(s, e)
        }
        fn try_lock_shared_range(
            &self,
            s: Bound<u64>,
            e: Bound<u64>,
        ) -> Result<bool, BackendError> {
            self.inner.try_lock_shared_range(s, e)
        }
        fn lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
            self.inner.lock_range(s, e)
        }
        fn lock_shared_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
            self.inner.lock_shared_range(s, e)
        }
        fn unlock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<(), BackendError> {
            self.inner.unlock_range(s, e)
        }
        fn query_lock_range(&self, s: Bound<u64>, e: Bound<u64>) -> Result<bool, BackendError> {
            self.inner.query_lock_range(s, e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_support::*;
    use crate::store::*;

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
}

//! The profile on disk: one file, encrypted under a key derived from the passphrase, written
//! atomically after every change, with a lock so that several `sotto` processes on one
//! profile take turns.
//!
//! File `profile.sotto` in the profile directory:
//!
//! ```text
//! magic "SOTTOPRF" (8) | format 1 (1) | Argon2id m KiB (u32 BE) | t (u32 BE) | p (u32 BE)
//!   | salt (16) | nonce (24) | XChaCha20-Poly1305(JSON state), associated data = header
//! ```
//!
//! The key is Argon2id(passphrase, salt) with the parameters in the header; a wrong
//! passphrase fails the AEAD and is reported as such. Every write goes to a temporary file
//! that is fsynced, renamed over the old one, and the directory fsynced: a crash leaves the
//! old or the new state, never a mixture. The Olm pickle key is derived from the profile key
//! (BLAKE3 `derive_key`), so Olm state is encrypted twice at rest.
//!
//! Locks (all `flock`, so the kernel releases them when their holder exits or crashes):
//! `lock` is held only for the length of one read-modify-write; `recv.lock` is held by the
//! one process that receives (`recv`, `listen`), since two subscribers on one queue would
//! take it from each other; `outbox-ID.lock` is held by the process doing contact ID's
//! outbox items (one at a time), and names its holder (process id, and whether it
//! receives) for another process that finds it taken.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore as _;
use rand::rngs::OsRng;
use zeroize::Zeroizing;

use super::state::{STATE_VERSION, State};

/// Name of the profile file.
pub const PROFILE_FILE: &str = "profile.sotto";
const LOCK_FILE: &str = "lock";
const RECV_LOCK_FILE: &str = "recv.lock";
/// Longest holder line read from an outbox lock file.
const MAX_HOLDER_LEN: u64 = 64;
const MAGIC: &[u8; 8] = b"SOTTOPRF";
const FORMAT: u8 = 1;
const SALT_LEN: usize = 16;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = 8 + 1 + 12 + SALT_LEN;
/// Largest profile file accepted (bounds what a damaged or hostile file can make us
/// allocate).
const MAX_PROFILE_LEN: u64 = 256 << 20;
/// BLAKE3 context for the Olm pickle key.
const PICKLE_CONTEXT: &str = "sotto v1 olm pickle key";

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_kib: u32,
    /// Iterations.
    pub t: u32,
    /// Parallelism.
    pub p: u32,
}

impl KdfParams {
    /// The default: 64 MiB, 3 passes, 1 lane (about a third of a second on a laptop).
    pub const DEFAULT: KdfParams = KdfParams {
        m_kib: 64 * 1024,
        t: 3,
        p: 1,
    };

    /// The cheapest valid parameters, for tests only: offers no protection.
    pub const INSECURE_FAST: KdfParams = KdfParams {
        m_kib: 8,
        t: 1,
        p: 1,
    };

    /// The most a profile may ask for (memory 1 GiB, 16 passes, 16 lanes): a profile file
    /// with larger values is refused before any derivation, so a crafted one cannot make
    /// opening it take unbounded memory or time.
    pub const MAX: KdfParams = KdfParams {
        m_kib: 1024 * 1024,
        t: 16,
        p: 16,
    };

    /// Whether each parameter is at most [`KdfParams::MAX`]'s.
    pub fn within_bounds(self) -> bool {
        self.m_kib <= Self::MAX.m_kib && self.t <= Self::MAX.t && self.p <= Self::MAX.p
    }
}

impl Default for KdfParams {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Why the profile could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// No profile in this directory.
    #[error("no profile in {0}: run `sotto init` first (or pass --home)")]
    NotInitialised(PathBuf),
    /// A profile already exists here.
    #[error("a profile already exists in {0}")]
    AlreadyInitialised(PathBuf),
    /// The passphrase does not open the profile.
    #[error("wrong passphrase (or the profile file is damaged)")]
    WrongPassphrase,
    /// The file is not a profile, or of a newer format.
    #[error("{0} is not a profile this version of sotto can read")]
    Format(PathBuf),
    /// Another process receives on this profile.
    #[error("another `sotto recv` or `sotto listen` is running on this profile")]
    ReceiverBusy,
    /// File system error.
    #[error("profile I/O failed ({path}): {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The state could not be encoded or decoded.
    #[error("the profile's content is damaged: {0}")]
    Corrupt(String),
}

/// The open profile: its directory, key and header.
#[derive(Clone)]
pub struct Store {
    dir: PathBuf,
    key: Zeroizing<[u8; 32]>,
    pickle_key: Zeroizing<[u8; 32]>,
    header: [u8; HEADER_LEN],
}

/// Holds the profile lock while alive.
struct LockGuard(File);

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

/// Holds the receiver lock while alive (see [`Store::lock_receiver`]).
#[derive(Debug)]
pub struct ReceiverLock(#[allow(dead_code)] File);

/// Holds a contact's outbox lock while alive (see [`Store::try_lock_outbox`]); the kernel
/// releases it if the process dies.
#[derive(Debug)]
pub struct OutboxLock(#[allow(dead_code)] File);

/// Who holds a contact's outbox lock, as its holder wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockHolder {
    /// Its process id (0 if it could not be read).
    pub pid: u32,
    /// Whether it is a receiving process (`sotto recv` or `listen`), which does due outbox
    /// items at its next round.
    pub receiving: bool,
}

impl LockHolder {
    fn line(self) -> String {
        format!(
            "{} {}\n",
            self.pid,
            if self.receiving { "receive" } else { "send" }
        )
    }

    fn parse(text: &str) -> Self {
        let mut words = text.split_whitespace();
        let pid = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
        Self {
            pid,
            receiving: words.next() == Some("receive"),
        }
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Store {
    /// Whether `dir` holds a profile.
    pub fn exists(dir: &Path) -> bool {
        dir.join(PROFILE_FILE).exists()
    }

    /// Creates a profile in `dir` (created with mode 0700 if missing) with an empty state.
    ///
    /// # Errors
    /// [`StoreError::AlreadyInitialised`], or I/O errors.
    pub fn create(dir: &Path, passphrase: &[u8], params: KdfParams) -> Result<Self, StoreError> {
        if Self::exists(dir) {
            return Err(StoreError::AlreadyInitialised(dir.to_owned()));
        }
        fs::create_dir_all(dir).map_err(io(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
        let mut salt = [0u8; SALT_LEN];
        OsRng.fill_bytes(&mut salt);
        let mut header = [0u8; HEADER_LEN];
        write_header(&mut header, params, &salt);
        let store = Self::with_key(dir, header, derive(passphrase, params, &salt)?);
        let _lock = store.lock()?;
        store.save(&State::default())?;
        Ok(store)
    }

    /// Opens the profile in `dir` with `passphrase` and checks that it decrypts.
    ///
    /// # Errors
    /// [`StoreError::NotInitialised`], [`StoreError::WrongPassphrase`],
    /// [`StoreError::Format`], I/O errors.
    pub fn open(dir: &Path, passphrase: &[u8]) -> Result<Self, StoreError> {
        let path = dir.join(PROFILE_FILE);
        if !path.exists() {
            return Err(StoreError::NotInitialised(dir.to_owned()));
        }
        let bytes = read_bounded(&path)?;
        let header: [u8; HEADER_LEN] = bytes
            .get(..HEADER_LEN)
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| StoreError::Format(path.clone()))?;
        let (params, salt) =
            read_header(&header).ok_or_else(|| StoreError::Format(path.clone()))?;
        let store = Self::with_key(dir, header, derive(passphrase, params, &salt)?);
        store.decrypt(&bytes)?;
        Ok(store)
    }

    fn with_key(dir: &Path, header: [u8; HEADER_LEN], key: Zeroizing<[u8; 32]>) -> Self {
        let pickle_key = Zeroizing::new(blake3::derive_key(PICKLE_CONTEXT, &*key));
        Self {
            dir: dir.to_owned(),
            key,
            pickle_key,
            header,
        }
    }

    /// The profile directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Key for vodozemac pickles.
    pub fn pickle_key(&self) -> &[u8; 32] {
        &self.pickle_key
    }

    /// Reads the state (under the lock).
    ///
    /// # Errors
    /// I/O or decryption errors.
    pub fn read(&self) -> Result<State, StoreError> {
        let _lock = self.lock()?;
        self.load()
    }

    /// Read-modify-write under the lock: loads the state, applies `f`, and saves it if `f`
    /// returned `Ok`. An `Err` from `f` leaves the stored state untouched.
    ///
    /// # Errors
    /// `f`'s error, or store errors converted into `E`.
    pub fn update<T, E: From<StoreError>>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, E>,
    ) -> Result<T, E> {
        let _lock = self.lock()?;
        let mut state = self.load()?;
        let out = f(&mut state)?;
        self.save(&state)?;
        Ok(out)
    }

    /// Takes the receiver lock (fails at once if another process holds it).
    ///
    /// # Errors
    /// [`StoreError::ReceiverBusy`], I/O errors.
    pub fn lock_receiver(&self) -> Result<ReceiverLock, StoreError> {
        let path = self.dir.join(RECV_LOCK_FILE);
        let f = lock_file(&path)?;
        match f.try_lock() {
            Ok(()) => Ok(ReceiverLock(f)),
            Err(fs::TryLockError::WouldBlock) => Err(StoreError::ReceiverBusy),
            Err(fs::TryLockError::Error(e)) => Err(io(&path)(e)),
        }
    }

    /// Takes contact `contact`'s outbox lock without waiting, writing `me` into it; if
    /// another holder (another process, or another agent in this one) has it, returns who.
    ///
    /// # Errors
    /// I/O errors.
    pub fn try_lock_outbox(
        &self,
        contact: u64,
        me: LockHolder,
    ) -> Result<Result<OutboxLock, LockHolder>, StoreError> {
        use std::io::{Read as _, Seek as _};
        let path = self.outbox_lock_path(contact);
        let mut f = lock_file(&path)?;
        match f.try_lock() {
            Ok(()) => {
                let written = f
                    .set_len(0)
                    .and_then(|()| f.rewind())
                    .and_then(|()| f.write_all(me.line().as_bytes()));
                written.map_err(io(&path))?;
                Ok(Ok(OutboxLock(f)))
            }
            Err(fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = (&mut f).take(MAX_HOLDER_LEN).read_to_string(&mut text);
                Ok(Err(LockHolder::parse(&text)))
            }
            Err(fs::TryLockError::Error(e)) => Err(io(&path)(e)),
        }
    }

    /// Removes contact `contact`'s outbox lock file (the contact is gone). A holder keeps
    /// its lock on the unlinked file until it ends, which does no harm: nothing is left to
    /// do for that contact.
    pub fn remove_outbox_lock(&self, contact: u64) {
        let _ = fs::remove_file(self.outbox_lock_path(contact));
    }

    fn outbox_lock_path(&self, contact: u64) -> PathBuf {
        self.dir.join(format!("outbox-{contact}.lock"))
    }

    fn lock(&self) -> Result<LockGuard, StoreError> {
        let path = self.dir.join(LOCK_FILE);
        let f = lock_file(&path)?;
        f.lock().map_err(io(&path))?;
        Ok(LockGuard(f))
    }

    fn load(&self) -> Result<State, StoreError> {
        let path = self.dir.join(PROFILE_FILE);
        let bytes = read_bounded(&path)?;
        if bytes.get(..HEADER_LEN) != Some(&self.header[..]) {
            // Someone re-created the profile under us (new salt): our key is stale.
            return Err(StoreError::WrongPassphrase);
        }
        let plain = self.decrypt(&bytes)?;
        let state: State =
            serde_json::from_slice(&plain).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        if state.version != STATE_VERSION {
            return Err(StoreError::Format(path));
        }
        Ok(state)
    }

    fn decrypt(&self, bytes: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let rest = bytes.get(HEADER_LEN..).ok_or(StoreError::WrongPassphrase)?;
        if rest.len() < NONCE_LEN {
            return Err(StoreError::Corrupt("truncated".into()));
        }
        let (nonce, ct) = rest.split_at(NONCE_LEN);
        let aead = XChaCha20Poly1305::new((&*self.key).into());
        aead.decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ct,
                aad: &self.header,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| StoreError::WrongPassphrase)
    }

    fn save(&self, state: &State) -> Result<(), StoreError> {
        let plain = Zeroizing::new(
            serde_json::to_vec(state).map_err(|e| StoreError::Corrupt(e.to_string()))?,
        );
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let aead = XChaCha20Poly1305::new((&*self.key).into());
        let ct = aead
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &self.header,
                },
            )
            .map_err(|_| StoreError::Corrupt("encryption failed".into()))?;
        let path = self.dir.join(PROFILE_FILE);
        let tmp = self.dir.join(format!("{PROFILE_FILE}.tmp"));
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(io(&tmp))?;
            f.write_all(&self.header).map_err(io(&tmp))?;
            f.write_all(&nonce).map_err(io(&tmp))?;
            f.write_all(&ct).map_err(io(&tmp))?;
            f.sync_all().map_err(io(&tmp))?;
        }
        fs::rename(&tmp, &path).map_err(io(&path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io(&self.dir))?;
        Ok(())
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

fn lock_file(path: &Path) -> Result<File, StoreError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io(path))
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, StoreError> {
    let len = fs::metadata(path).map_err(io(path))?.len();
    if len > MAX_PROFILE_LEN {
        return Err(StoreError::Format(path.to_owned()));
    }
    fs::read(path).map_err(io(path))
}

fn write_header(h: &mut [u8; HEADER_LEN], p: KdfParams, salt: &[u8; SALT_LEN]) {
    let mut v = Vec::with_capacity(HEADER_LEN);
    v.extend_from_slice(MAGIC);
    v.push(FORMAT);
    v.extend_from_slice(&p.m_kib.to_be_bytes());
    v.extend_from_slice(&p.t.to_be_bytes());
    v.extend_from_slice(&p.p.to_be_bytes());
    v.extend_from_slice(salt);
    h.copy_from_slice(&v);
}

fn read_header(h: &[u8; HEADER_LEN]) -> Option<(KdfParams, [u8; SALT_LEN])> {
    if h.get(..8)? != MAGIC || *h.get(8)? != FORMAT {
        return None;
    }
    let u32_at = |i: usize| -> Option<u32> {
        h.get(i..i + 4)
            .and_then(|s| <[u8; 4]>::try_from(s).ok())
            .map(u32::from_be_bytes)
    };
    let params = KdfParams {
        m_kib: u32_at(9)?,
        t: u32_at(13)?,
        p: u32_at(17)?,
    };
    let salt = <[u8; SALT_LEN]>::try_from(h.get(21..21 + SALT_LEN)?).ok()?;
    Some((params, salt))
}

fn derive(
    passphrase: &[u8],
    p: KdfParams,
    salt: &[u8; SALT_LEN],
) -> Result<Zeroizing<[u8; 32]>, StoreError> {
    if !p.within_bounds() {
        return Err(StoreError::Corrupt(format!(
            "key derivation parameters out of range ({} KiB, {} passes, {} lanes; at most {} KiB, {}, {})",
            p.m_kib,
            p.t,
            p.p,
            KdfParams::MAX.m_kib,
            KdfParams::MAX.t,
            KdfParams::MAX.p
        )));
    }
    let params = argon2::Params::new(p.m_kib, p.t, p.p, Some(32))
        .map_err(|e| StoreError::Corrupt(format!("key derivation parameters: {e}")))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut key = Zeroizing::new([0u8; 32]);
    argon
        .hash_password_into(passphrase, salt, &mut *key)
        .map_err(|e| StoreError::Corrupt(format!("key derivation: {e}")))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_open_update_and_wrong_passphrase() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("p");
        let s = Store::create(&home, b"pw", KdfParams::INSECURE_FAST).unwrap();
        assert!(matches!(
            Store::create(&home, b"pw", KdfParams::INSECURE_FAST),
            Err(StoreError::AlreadyInitialised(_))
        ));
        s.update(|st| {
            st.relays.push("relay-one".into());
            Ok::<_, StoreError>(())
        })
        .unwrap();
        let again = Store::open(&home, b"pw").unwrap();
        assert_eq!(again.read().unwrap().relays, vec!["relay-one".to_string()]);
        assert!(matches!(
            Store::open(&home, b"wrong"),
            Err(StoreError::WrongPassphrase)
        ));
        assert!(matches!(
            Store::open(&dir.path().join("none"), b"pw"),
            Err(StoreError::NotInitialised(_))
        ));
        // A failed update changes nothing.
        let r: Result<(), StoreError> = s.update(|st| {
            st.relays.clear();
            Err(StoreError::ReceiverBusy)
        });
        assert!(r.is_err());
        assert_eq!(s.read().unwrap().relays.len(), 1);
        // Nothing readable at rest.
        let raw = fs::read(home.join(PROFILE_FILE)).unwrap();
        assert!(!raw.windows(9).any(|w| w == b"relay-one"));
        let mode = fs::metadata(home.join(PROFILE_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn damaged_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        Store::create(dir.path(), b"pw", KdfParams::INSECURE_FAST).unwrap();
        let path = dir.path().join(PROFILE_FILE);
        let mut raw = fs::read(&path).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        fs::write(&path, &raw).unwrap();
        assert!(matches!(
            Store::open(dir.path(), b"pw"),
            Err(StoreError::WrongPassphrase)
        ));
        fs::write(&path, b"not a profile at all, just some text").unwrap();
        assert!(matches!(
            Store::open(dir.path(), b"pw"),
            Err(StoreError::Format(_))
        ));
    }

    #[test]
    fn only_one_receiver_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path(), b"pw", KdfParams::INSECURE_FAST).unwrap();
        let held = s.lock_receiver().unwrap();
        assert!(matches!(s.lock_receiver(), Err(StoreError::ReceiverBusy)));
        drop(held);
        s.lock_receiver().unwrap();
    }

    /// A crafted profile asking for 4 TiB of Argon2 memory (or 2^32 − 1 passes) is refused
    /// at once, before any derivation.
    #[test]
    fn a_profile_with_unbounded_kdf_parameters_is_refused_at_once() {
        for (offset, value) in [(9, u32::MAX), (13, u32::MAX), (17, 1000)] {
            let dir = tempfile::tempdir().unwrap();
            Store::create(dir.path(), b"pw", KdfParams::INSECURE_FAST).unwrap();
            let path = dir.path().join(PROFILE_FILE);
            let mut bytes = fs::read(&path).unwrap();
            bytes[offset..offset + 4].copy_from_slice(&value.to_be_bytes());
            fs::write(&path, &bytes).unwrap();
            let started = std::time::Instant::now();
            match Store::open(dir.path(), b"pw") {
                Err(StoreError::Corrupt(why)) => assert!(why.contains("out of range"), "{why}"),
                other => panic!("{other:?}"),
            }
            assert!(started.elapsed() < std::time::Duration::from_secs(5));
        }
        assert!(KdfParams::DEFAULT.within_bounds());
    }

    const ME: LockHolder = LockHolder {
        pid: 4242,
        receiving: true,
    };

    #[test]
    fn an_outbox_lock_names_its_holder_and_ends_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path(), b"pw", KdfParams::INSECURE_FAST).unwrap();
        let held = s.try_lock_outbox(1, ME).unwrap().unwrap();
        // Another agent (its own open file) finds it taken and learns by whom; another
        // contact's lock is free.
        assert_eq!(s.try_lock_outbox(1, ME).unwrap().unwrap_err(), ME);
        let other = s.try_lock_outbox(2, ME).unwrap().unwrap();
        drop(held);
        let me = LockHolder {
            pid: 7,
            receiving: false,
        };
        let again = s.try_lock_outbox(1, me).unwrap().unwrap();
        assert_eq!(s.try_lock_outbox(1, ME).unwrap().unwrap_err(), me);
        drop((again, other));
    }

    /// Two processes: a copy of this test binary (running [`outbox_lock_holder`]) holds
    /// contact 3's lock, the way another `sotto` would; while it lives the lock is taken and
    /// names it, and once it is killed (SIGKILL: no chance to unlock) the kernel has
    /// released the lock and this process proceeds.
    #[test]
    fn a_killed_holder_process_releases_the_outbox_lock() {
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir().unwrap();
        let s = Store::create(dir.path(), b"pw", KdfParams::INSECURE_FAST).unwrap();
        let ready = dir.path().join("ready");
        let mut holder = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "agent::store::tests::outbox_lock_holder",
                "--include-ignored",
                "--quiet",
            ])
            .env(HOLDER_DIR_ENV, dir.path())
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(60);
        while !ready.exists() {
            assert!(holder.try_wait().unwrap().is_none(), "the holder exited");
            assert!(Instant::now() < until, "the holder never took the lock");
            std::thread::sleep(Duration::from_millis(20));
        }
        let busy = s.try_lock_outbox(3, ME).unwrap().unwrap_err();
        assert_eq!(
            busy,
            LockHolder {
                pid: holder.id(),
                receiving: false
            }
        );
        holder.kill().unwrap();
        holder.wait().unwrap();
        let _lock = s.try_lock_outbox(3, ME).unwrap().expect("released on exit");
    }

    const HOLDER_DIR_ENV: &str = "SOTTO_TEST_OUTBOX_LOCK_HOLDER";

    /// The other process of [`a_killed_holder_process_releases_the_outbox_lock`]: takes
    /// contact 3's outbox lock, says so, and waits to be killed.
    #[test]
    #[ignore = "helper process of a_killed_holder_process_releases_the_outbox_lock"]
    fn outbox_lock_holder() {
        let Some(dir) = std::env::var_os(HOLDER_DIR_ENV) else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        let s = Store::open(&dir, b"pw").unwrap();
        let me = LockHolder {
            pid: std::process::id(),
            receiving: false,
        };
        let _lock = s.try_lock_outbox(3, me).unwrap().unwrap();
        fs::write(dir.join("ready"), b"").unwrap();
        std::thread::sleep(std::time::Duration::from_secs(600));
    }
}

//! The storage key and the keys derived from it: the index key that turns wire ids into
//! keyed-hash references (`BLAKE3-keyed(index key, "r"|"s"|"f" ‖ id)`), and the
//! XChaCha20-Poly1305 key that seals every stored value under a random nonce.
//!
//! What it owns: key derivation, the references, sealing and opening. What it does not: what
//! is sealed and with which associated data (`records`), or where it is stored.

use rand_core::{CryptoRngCore, RngCore as _};
use sotto_protocol::aead::{TAG_LEN, XChaCha};
use sotto_protocol::keys::KEY_LEN;
use sotto_protocol::{RecipientId, SenderId};
use zeroize::Zeroizing;

use super::{QueueRef, StoreError};

pub(super) const NONCE_LEN: usize = 24;

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

pub(super) struct Keys {
    index: [u8; 32],
    aead: XChaCha,
}

impl Keys {
    pub(super) fn new(k: &StorageKey) -> Self {
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

    pub(super) fn recipient_ref(&self, id: &RecipientId) -> QueueRef {
        let mut h = blake3::Hasher::new_keyed(&self.index);
        h.update(b"r");
        h.update(id.as_bytes());
        *h.finalize().as_bytes()
    }

    pub(super) fn sender_ref(&self, id: &SenderId) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.index);
        h.update(b"s");
        h.update(id.as_bytes());
        *h.finalize().as_bytes()
    }

    pub(super) fn forward_ref(&self, ephemeral: &[u8; 32]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.index);
        h.update(b"f");
        h.update(ephemeral);
        *h.finalize().as_bytes()
    }

    pub(super) fn seal(&self, ad: &[u8], plaintext: &[u8]) -> Vec<u8> {
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

    pub(super) fn open(&self, ad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, StoreError> {
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

#[cfg(test)]
mod tests {
    use crate::store::test_support::*;
    use crate::store::*;

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
}

//! Relay → recipient sealing of message bodies.
//!
//! The relay re-encrypts every body it delivers with XChaCha20-Poly1305 ([`crate::aead`]) under
//! `BLAKE3-derive-key("sotto v1 body seal", X25519(relay queue key, recipient DH key))`,
//! nonce = the message id (24 bytes, unique per queue), empty associated data. So the bytes
//! that enter a relay (the sender's end-to-end ciphertext) and the bytes that leave it never
//! match, even for an observer who sees both links.

use crate::aead::XChaCha;
use zeroize::Zeroizing;

use crate::ids::MessageId;
use crate::keys::{DhPublicKey, DhSecretKey, KEY_LEN};

/// BLAKE3 key-derivation context of the body sealing key.
pub const SEAL_CONTEXT: &str = "sotto v1 body seal";

/// Why a sealed body could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("sealed body failed authentication")]
pub struct OpenError;

/// The symmetric key shared by a queue's relay and recipient for body sealing.
#[derive(Clone)]
pub struct BodySealKey(Zeroizing<[u8; KEY_LEN]>);

impl BodySealKey {
    /// Derives the key from one side's DH secret and the other side's public key. `None`
    /// for a low-order public key.
    pub fn derive(own: &DhSecretKey, peer: &DhPublicKey) -> Option<Self> {
        let shared = own.diffie_hellman(peer)?;
        Some(Self(Zeroizing::new(blake3::derive_key(
            SEAL_CONTEXT,
            &*shared,
        ))))
    }

    /// From stored raw bytes.
    pub fn from_bytes(b: [u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(b))
    }

    /// Raw bytes (secret; for the relay's encrypted store).
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Seals `body` for delivery as message `id`. Output is `body.len() + 16` bytes.
    pub fn seal(&self, id: &MessageId, body: &[u8]) -> Vec<u8> {
        XChaCha::new(&self.0).seal(id.as_bytes(), &[], body)
    }

    /// Opens a body sealed for message `id`.
    ///
    /// # Errors
    /// [`OpenError`] when the key, id or ciphertext do not match.
    pub fn open(&self, id: &MessageId, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        XChaCha::new(&self.0)
            .open(id.as_bytes(), &[], sealed)
            .map_err(|_| OpenError)
    }
}

impl PartialEq for BodySealKey {
    fn eq(&self, other: &Self) -> bool {
        use subtle::ConstantTimeEq as _;
        self.0.ct_eq(&*other.0).into()
    }
}

impl Eq for BodySealKey {}

impl std::fmt::Debug for BodySealKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BodySealKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    #[test]
    fn both_sides_derive_the_same_key_and_bytes_change() {
        let relay = DhSecretKey::generate(&mut OsRng);
        let recipient = DhSecretKey::generate(&mut OsRng);
        let k1 = BodySealKey::derive(&relay, &recipient.public()).unwrap();
        let k2 = BodySealKey::derive(&recipient, &relay.public()).unwrap();
        let id = MessageId([5; 24]);
        let body = b"end-to-end ciphertext".to_vec();
        let sealed = k1.seal(&id, &body);
        assert_eq!(sealed.len(), body.len() + 16);
        assert!(!sealed.windows(body.len()).any(|w| w == body.as_slice()));
        assert_eq!(k2.open(&id, &sealed).unwrap(), body);
        assert_eq!(k2.open(&MessageId([6; 24]), &sealed), Err(OpenError));
        let mut bad = sealed.clone();
        bad[0] ^= 1;
        assert_eq!(k2.open(&id, &bad), Err(OpenError));
    }
}

//! Key types: Ed25519 command-signing keys, X25519 DH keys, the relay's static Noise key.
//!
//! Secret types zeroize on drop and never print themselves: their `Debug` is redacted.
//! Public keys are plain 32-byte values with constant-time equality.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::Signer as _;
use rand_core::CryptoRngCore;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::error::DecodeError;

/// Length of every public and secret key here.
pub const KEY_LEN: usize = 32;

/// Length of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// Ed25519 public key that verifies a queue party's commands.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct AuthPublicKey(ed25519_dalek::VerifyingKey);

impl AuthPublicKey {
    /// Parses a compressed Edwards point.
    ///
    /// # Errors
    /// [`DecodeError::BadKey`] if the bytes are not a valid point.
    pub fn from_bytes(b: &[u8; KEY_LEN]) -> Result<Self, DecodeError> {
        ed25519_dalek::VerifyingKey::from_bytes(b)
            .map(Self)
            .map_err(|_| DecodeError::BadKey("Ed25519 public key"))
    }

    /// The 32-byte encoding.
    pub fn to_bytes(&self) -> [u8; KEY_LEN] {
        self.0.to_bytes()
    }

    /// Whether the point has small order (the identity, or one of the other seven points
    /// of order dividing 8). No signature verifies under such a key ([`AuthPublicKey::verify`]
    /// is strict), so commands that install a key refuse it.
    pub fn is_small_order(&self) -> bool {
        self.0.is_weak()
    }

    /// Verifies `sig` over `msg` (strict verification: rejects non-canonical and
    /// small-order encodings, so a signature has one valid form).
    pub fn verify(&self, msg: &[u8], sig: &[u8; SIGNATURE_LEN]) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(sig);
        // `verify_strict` checks the same cofactorless equation as `verify` plus the
        // small-order checks, so it alone decides; a second `verify` only doubled the cost.
        self.0.verify_strict(msg, &sig).is_ok()
    }
}

impl fmt::Debug for AuthPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthPublicKey(<redacted>)")
    }
}

/// Ed25519 secret key that signs a queue party's commands. Zeroized on drop.
#[derive(Clone)]
pub struct AuthSecretKey(ed25519_dalek::SigningKey);

impl AuthSecretKey {
    /// A fresh random key.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self(ed25519_dalek::SigningKey::generate(rng))
    }

    /// From the 32-byte seed.
    pub fn from_bytes(b: &[u8; KEY_LEN]) -> Self {
        Self(ed25519_dalek::SigningKey::from_bytes(b))
    }

    /// The 32-byte seed (secret).
    pub fn to_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The public half.
    pub fn public(&self) -> AuthPublicKey {
        AuthPublicKey(self.0.verifying_key())
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> [u8; SIGNATURE_LEN] {
        self.0.sign(msg).to_bytes()
    }
}

impl fmt::Debug for AuthSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthSecretKey(<redacted>)")
    }
}

/// X25519 public key (queue DH keys).
#[derive(Clone, Copy)]
pub struct DhPublicKey(pub [u8; KEY_LEN]);

impl DhPublicKey {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl PartialEq for DhPublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for DhPublicKey {}

impl fmt::Debug for DhPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DhPublicKey(<redacted>)")
    }
}

/// X25519 secret key. Zeroized on drop.
#[derive(Clone)]
pub struct DhSecretKey(x25519_dalek::StaticSecret);

impl DhSecretKey {
    /// A fresh random key.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self(x25519_dalek::StaticSecret::random_from_rng(rng))
    }

    /// From raw bytes (clamped on use, as X25519 specifies).
    pub fn from_bytes(b: [u8; KEY_LEN]) -> Self {
        Self(x25519_dalek::StaticSecret::from(b))
    }

    /// The raw secret bytes.
    pub fn to_bytes(&self) -> Zeroizing<[u8; KEY_LEN]> {
        Zeroizing::new(self.0.to_bytes())
    }

    /// The public half.
    pub fn public(&self) -> DhPublicKey {
        DhPublicKey(x25519_dalek::PublicKey::from(&self.0).to_bytes())
    }

    /// X25519(self, peer). Returns `None` for a low-order peer key (all-zero output),
    /// which would make the "shared" secret public.
    pub fn diffie_hellman(&self, peer: &DhPublicKey) -> Option<Zeroizing<[u8; KEY_LEN]>> {
        let shared = self
            .0
            .diffie_hellman(&x25519_dalek::PublicKey::from(peer.0));
        if shared.was_contributory() {
            Some(Zeroizing::new(shared.to_bytes()))
        } else {
            None
        }
    }
}

impl fmt::Debug for DhSecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DhSecretKey(<redacted>)")
    }
}

/// The relay's public Noise static key: its identity, pinned in its address.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct RelayPublicKey(pub [u8; KEY_LEN]);

impl RelayPublicKey {
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Unpadded base64url, as in relay addresses.
    pub fn to_base64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.0)
    }
}

impl fmt::Debug for RelayPublicKey {
    // Relay keys are public (they are in the address), so showing them is harmless.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RelayPublicKey({})", self.to_base64())
    }
}

/// The relay's static Noise secret key. Zeroized on drop.
#[derive(Clone)]
pub struct RelayStaticKey {
    secret: Zeroizing<[u8; KEY_LEN]>,
    public: RelayPublicKey,
}

impl RelayStaticKey {
    /// A fresh random key.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        let mut b = [0u8; KEY_LEN];
        rng.fill_bytes(&mut b);
        Self::from_bytes(b)
    }

    /// From the raw secret bytes.
    pub fn from_bytes(b: [u8; KEY_LEN]) -> Self {
        let secret = x25519_dalek::StaticSecret::from(b);
        let public = RelayPublicKey(x25519_dalek::PublicKey::from(&secret).to_bytes());
        Self {
            secret: Zeroizing::new(secret.to_bytes()),
            public,
        }
    }

    /// The raw secret bytes (for storing in the key file).
    pub fn secret_bytes(&self) -> &[u8; KEY_LEN] {
        &self.secret
    }

    /// The public key.
    pub fn public(&self) -> RelayPublicKey {
        self.public
    }

    /// The same key as a DH secret (used to open sealed forwarded transmissions).
    pub fn as_dh(&self) -> DhSecretKey {
        DhSecretKey::from_bytes(*self.secret)
    }
}

impl fmt::Debug for RelayStaticKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "RelayStaticKey(public: {:?}, secret: <redacted>)",
            self.public
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_reject_tampering() {
        let mut rng = rand::rngs::OsRng;
        let k = AuthSecretKey::generate(&mut rng);
        let sig = k.sign(b"hello");
        assert!(k.public().verify(b"hello", &sig));
        assert!(!k.public().verify(b"hellO", &sig));
        let other = AuthSecretKey::generate(&mut rng);
        assert!(!other.public().verify(b"hello", &sig));
    }

    #[test]
    fn dh_agrees_and_rejects_low_order() {
        let mut rng = rand::rngs::OsRng;
        let a = DhSecretKey::generate(&mut rng);
        let b = DhSecretKey::generate(&mut rng);
        assert_eq!(
            *a.diffie_hellman(&b.public()).unwrap(),
            *b.diffie_hellman(&a.public()).unwrap()
        );
        assert!(a.diffie_hellman(&DhPublicKey([0; 32])).is_none());
    }

    #[test]
    fn secrets_do_not_print() {
        let k = RelayStaticKey::from_bytes([9; 32]);
        let s = format!("{k:?}");
        assert!(!s.contains("9, 9"));
        assert!(s.contains("redacted"));
    }
}

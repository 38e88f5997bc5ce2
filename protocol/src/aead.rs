//! ChaCha20-Poly1305 and XChaCha20-Poly1305 on ring's assembly implementation.
//!
//! Every 16 KiB record a relay handles passes through these ciphers several times (Noise
//! on the way in and out, the store, the body seal), so their speed bounds the relay's
//! throughput. ring's ChaCha20-Poly1305 (the BoringSSL/OpenSSL assembly, AVX2 on x86-64,
//! NEON on aarch64) seals a 16 KiB record in ≈ 5.9 µs on the reference machine, against
//! ≈ 13.8 µs for the portable RustCrypto crate (`docs/benchmarks.md`).
//!
//! ring has no XChaCha20-Poly1305, so [`XChaCha`] composes it exactly as
//! draft-irtf-cfrg-xchacha specifies: the subkey is HChaCha20(key, nonce[0..16]) (from the
//! RustCrypto `chacha20` crate), and ChaCha20-Poly1305 runs under that subkey with the
//! nonce `0x00000000 ‖ nonce[16..24]`. The bytes are identical to any other
//! XChaCha20-Poly1305 implementation (a test checks it against RustCrypto's), so nothing on
//! the wire or on disk changes.
//!
//! Key hygiene: ring does not zeroize its expanded keys on drop. Long-lived keys here are
//! per-session Noise keys and the relay's storage key, which stay in memory while the
//! process runs anyway; derived XChaCha subkeys are zeroized.

use chacha20::cipher::consts::U10;
use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, Tag, UnboundKey};
use zeroize::Zeroizing;

/// Key length of both ciphers.
pub const KEY_LEN: usize = 32;
/// Length of the Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Nonce length of ChaCha20-Poly1305 (IETF).
pub const NONCE_LEN: usize = 12;
/// Nonce length of XChaCha20-Poly1305.
pub const XNONCE_LEN: usize = 24;

/// Authentication failed (wrong key, nonce, associated data, or tampered bytes), or the
/// input was shorter than a tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("authenticated decryption failed")]
pub struct AeadError;

/// A ChaCha20-Poly1305 (RFC 8439) key.
pub struct ChaCha(LessSafeKey);

impl ChaCha {
    /// A cipher under `key`.
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        // ring rejects only keys of the wrong length, which the type rules out.
        match UnboundKey::new(&CHACHA20_POLY1305, key) {
            Ok(k) => Self(LessSafeKey::new(k)),
            Err(_) => unreachable!("ChaCha20-Poly1305 takes 32-byte keys"),
        }
    }

    /// Encrypts `buf` in place and returns the tag.
    pub fn seal_in_place_detached(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> [u8; TAG_LEN] {
        // ring fails only past ChaCha20's 256 GiB per-nonce limit; buffers here are < 64 KiB.
        match self.0.seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            buf,
        ) {
            Ok(tag) => tag_bytes(tag),
            Err(_) => unreachable!("input below the ChaCha20 block-counter limit"),
        }
    }

    /// Decrypts `buf` in place after checking `tag`.
    ///
    /// # Errors
    /// [`AeadError`] if authentication fails; `buf` is then unspecified.
    pub fn open_in_place_detached(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadError> {
        self.0
            .open_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                Tag::from(*tag),
                buf,
                0..,
            )
            .map(|_| ())
            .map_err(|_| AeadError)
    }

    /// Encrypts `plaintext` into a new `ciphertext ‖ tag`.
    pub fn seal(&self, nonce: [u8; NONCE_LEN], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(plaintext.len() + TAG_LEN);
        out.extend_from_slice(plaintext);
        let tag = self.seal_in_place_detached(nonce, aad, &mut out);
        out.extend_from_slice(&tag);
        out
    }

    /// Decrypts `ciphertext ‖ tag` into a new plaintext.
    ///
    /// # Errors
    /// [`AeadError`] if `sealed` is shorter than a tag or authentication fails.
    pub fn open(
        &self,
        nonce: [u8; NONCE_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, AeadError> {
        let split = sealed.len().checked_sub(TAG_LEN).ok_or(AeadError)?;
        let (ct, tag) = sealed.split_at(split);
        let tag = <[u8; TAG_LEN]>::try_from(tag).map_err(|_| AeadError)?;
        let mut out = ct.to_vec();
        self.open_in_place_detached(nonce, aad, &mut out, &tag)?;
        Ok(out)
    }
}

impl std::fmt::Debug for ChaCha {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChaCha(<redacted>)")
    }
}

fn tag_bytes(tag: Tag) -> [u8; TAG_LEN] {
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(tag.as_ref());
    out
}

/// An XChaCha20-Poly1305 key (24-byte nonces, safe to draw at random).
#[derive(Clone)]
pub struct XChaCha(Zeroizing<[u8; KEY_LEN]>);

impl XChaCha {
    /// A cipher under `key`.
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(*key))
    }

    /// The ChaCha20-Poly1305 cipher and nonce that XChaCha20-Poly1305 with `nonce` reduces
    /// to.
    fn reduce(&self, nonce: &[u8; XNONCE_LEN]) -> (ChaCha, [u8; NONCE_LEN]) {
        let (head, tail) = nonce.split_at(16);
        let mut subkey = chacha20::hchacha::<U10>(
            chacha20::Key::from_slice(&*self.0),
            chacha20::cipher::generic_array::GenericArray::from_slice(head),
        );
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(subkey.as_slice());
        zeroize::Zeroize::zeroize(subkey.as_mut_slice());
        let mut n = [0u8; NONCE_LEN];
        n[4..].copy_from_slice(tail);
        (ChaCha::new(&key), n)
    }

    /// Encrypts `buf` in place and returns the tag.
    pub fn seal_in_place_detached(
        &self,
        nonce: &[u8; XNONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> [u8; TAG_LEN] {
        let (c, n) = self.reduce(nonce);
        c.seal_in_place_detached(n, aad, buf)
    }

    /// Decrypts `buf` in place after checking `tag`.
    ///
    /// # Errors
    /// [`AeadError`] if authentication fails.
    pub fn open_in_place_detached(
        &self,
        nonce: &[u8; XNONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; TAG_LEN],
    ) -> Result<(), AeadError> {
        let (c, n) = self.reduce(nonce);
        c.open_in_place_detached(n, aad, buf, tag)
    }

    /// Encrypts `plaintext` into a new `ciphertext ‖ tag`.
    pub fn seal(&self, nonce: &[u8; XNONCE_LEN], aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let (c, n) = self.reduce(nonce);
        c.seal(n, aad, plaintext)
    }

    /// Decrypts `ciphertext ‖ tag` into a new plaintext.
    ///
    /// # Errors
    /// [`AeadError`] if `sealed` is shorter than a tag or authentication fails.
    pub fn open(
        &self,
        nonce: &[u8; XNONCE_LEN],
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<Vec<u8>, AeadError> {
        let (c, n) = self.reduce(nonce);
        c.open(n, aad, sealed)
    }
}

impl std::fmt::Debug for XChaCha {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("XChaCha(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chacha20poly1305::aead::{Aead, KeyInit, Payload};
    use proptest::prelude::*;

    proptest! {
        /// Same bytes as RustCrypto's implementations, both directions, for any length and
        /// associated data.
        #[test]
        fn matches_rustcrypto(
            key in any::<[u8; 32]>(),
            xnonce in any::<[u8; 24]>(),
            aad in proptest::collection::vec(any::<u8>(), 0..64),
            msg in proptest::collection::vec(any::<u8>(), 0..2000),
        ) {
            let mut n = [0u8; 12];
            n.copy_from_slice(&xnonce[..12]);
            let theirs = chacha20poly1305::ChaCha20Poly1305::new(&key.into())
                .encrypt(&n.into(), Payload { msg: &msg, aad: &aad })
                .unwrap();
            let ours = ChaCha::new(&key).seal(n, &aad, &msg);
            prop_assert_eq!(&ours, &theirs);
            prop_assert_eq!(ChaCha::new(&key).open(n, &aad, &theirs).unwrap(), msg.clone());

            let theirs = chacha20poly1305::XChaCha20Poly1305::new(&key.into())
                .encrypt(&xnonce.into(), Payload { msg: &msg, aad: &aad })
                .unwrap();
            let ours = XChaCha::new(&key).seal(&xnonce, &aad, &msg);
            prop_assert_eq!(&ours, &theirs);
            prop_assert_eq!(XChaCha::new(&key).open(&xnonce, &aad, &theirs).unwrap(), msg);
        }
    }

    /// draft-irtf-cfrg-xchacha-03, appendix A.3.1.
    #[test]
    fn xchacha_draft_vector() {
        let key: [u8; 32] =
            hex::decode("808182838485868788898a8b8c8d8e8f909192939495969798999a9b9c9d9e9f")
                .unwrap()
                .try_into()
                .unwrap();
        let nonce: [u8; 24] = hex::decode("404142434445464748494a4b4c4d4e4f5051525354555657")
            .unwrap()
            .try_into()
            .unwrap();
        let aad = hex::decode("50515253c0c1c2c3c4c5c6c7").unwrap();
        let pt = b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip for the future, sunscreen would be it.";
        let sealed = XChaCha::new(&key).seal(&nonce, &aad, pt);
        let (ct, tag) = sealed.split_at(pt.len());
        assert_eq!(
            hex::encode(ct),
            "bd6d179d3e83d43b9576579493c0e939572a1700252bfaccbed2902c21396cbb\
             731c7f1b0b4aa6440bf3a82f4eda7e39ae64c6708c54c216cb96b72e1213b452\
             2f8c9ba40db5d945b11b69b982c1bb9e3f3fac2bc369488f76b2383565d3fff9\
             21f9664c97637da9768812f615c68b13b52e"
        );
        assert_eq!(hex::encode(tag), "c0875924c1c7987947deafd8780acf49");
    }

    #[test]
    fn tampering_and_short_input_fail() {
        let c = ChaCha::new(&[7; 32]);
        let mut sealed = c.seal([1; 12], b"ad", b"hello");
        assert_eq!(c.open([1; 12], b"ad", &sealed).unwrap(), b"hello");
        assert_eq!(c.open([2; 12], b"ad", &sealed), Err(AeadError));
        assert_eq!(c.open([1; 12], b"AD", &sealed), Err(AeadError));
        sealed[0] ^= 1;
        assert_eq!(c.open([1; 12], b"ad", &sealed), Err(AeadError));
        assert_eq!(c.open([1; 12], b"ad", &[0; 15]), Err(AeadError));
        let x = XChaCha::new(&[7; 32]);
        assert_eq!(x.open(&[0; 24], b"", &[0; 3]), Err(AeadError));
    }
}

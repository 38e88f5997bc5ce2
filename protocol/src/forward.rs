//! Sealing of forwarded transmissions (FWD / RFWD) and of their answers, sans-IO.
//!
//! A client that wants to hide its address from a destination relay seals its SEND or SKEY
//! transmission to the destination's static key and hands the blob to a forwarding relay
//! of its choice (FWD). The forwarding relay learns only the destination address and the
//! blob's size, which is always [`SEALED_LEN`]. See `docs/protocol.md` § 10a.
//!
//! Construction (standard Noise, one-way pattern `N`, then one transport message):
//!
//! ```text
//! sealed request (SEALED_LEN bytes):
//!     e (32) ‖ tag (16)                       Noise_N handshake message, empty payload
//!     ‖ ChaCha20-Poly1305(k1, nonce 0, ad = ∅,
//!           expiry (u64) ‖ u16 len ‖ transmission ‖ zeros)   (REQUEST_PLAINTEXT_LEN + 16)
//! sealed answer (SEALED_LEN bytes):
//!     nonce (24) ‖ XChaCha20-Poly1305(BLAKE3-derive_key("sotto v1 forward answer", k2),
//!           nonce, ad = ∅, u16 len ‖ response transmission ‖ zeros)
//! ```
//!
//! `(k1, k2)` is the Noise `Split()` of the handshake. The handshake hash `h` after the
//! handshake message is unique per sealed request; signed inner transmissions bind it where
//! a direct session binds its own handshake hash. The destination remembers `e` until
//! `expiry` to refuse replays (that memory lives in the relay, not here).
//!
//! This module does no I/O and reads no clock: the expiry and the current time are passed
//! in. It does not decide what may be forwarded (the relay does).

use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce, XChaCha20Poly1305, XNonce};
use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use crate::codec::Reader;
use crate::command::SEALED_LEN;
use crate::error::DecodeError;
use crate::keys::{KEY_LEN, RelayPublicKey, RelayStaticKey};
use crate::transmission::{HANDSHAKE_HASH_LEN, Transmission};
use crate::{PROTOCOL_VERSION, TAG_LEN};

/// Noise protocol name of the sealing handshake.
pub const FORWARD_NOISE_PARAMS: &str = "Noise_N_25519_ChaChaPoly_BLAKE2s";

/// Label appended to the prologue so a sealed request can never be taken for a session
/// handshake (or the reverse).
pub const FORWARD_LABEL: &[u8; 7] = b"forward";

/// Length of the Noise handshake message at the start of a sealed request: the ephemeral
/// public key and the tag of the empty payload.
pub const HANDSHAKE_MESSAGE_LEN: usize = KEY_LEN + TAG_LEN;

/// Plaintext of a sealed request: expiry, length, transmission, zero padding.
pub const REQUEST_PLAINTEXT_LEN: usize = SEALED_LEN - HANDSHAKE_MESSAGE_LEN - TAG_LEN;

/// Longest transmission a sealed request carries (a signed SEND of `MAX_BODY` bytes is
/// 15 462 bytes).
pub const MAX_SEALED_TRANSMISSION: usize = REQUEST_PLAINTEXT_LEN - 8 - 2;

/// Length of the random XChaCha20 nonce at the start of a sealed answer.
pub const ANSWER_NONCE_LEN: usize = 24;

/// Plaintext of a sealed answer: length, response transmission, zero padding.
pub const ANSWER_PLAINTEXT_LEN: usize = SEALED_LEN - ANSWER_NONCE_LEN - TAG_LEN;

/// Longest response transmission a sealed answer carries.
pub const MAX_ANSWER_TRANSMISSION: usize = ANSWER_PLAINTEXT_LEN - 2;

/// A destination refuses a sealed request whose expiry is more than this many seconds
/// after its own clock.
pub const MAX_EXPIRY_AHEAD_S: u64 = 600;

/// Expiry clients put in their sealed requests: this many seconds after their clock. Half
/// of [`MAX_EXPIRY_AHEAD_S`], so clocks may differ by up to 5 minutes either way.
pub const DEFAULT_EXPIRY_S: u64 = 300;

/// BLAKE3 key-derivation context of the answer key.
pub const ANSWER_KEY_CONTEXT: &str = "sotto v1 forward answer";

/// The prologue: `"sotto"` ‖ version (u16, big-endian) ‖ `"forward"`.
pub fn forward_prologue() -> [u8; 14] {
    let v = PROTOCOL_VERSION.to_be_bytes();
    let mut p = [0u8; 14];
    p[..5].copy_from_slice(b"sotto");
    p[5..7].copy_from_slice(&v);
    p[7..].copy_from_slice(FORWARD_LABEL);
    p
}

/// Whether a destination whose clock reads `now` (Unix seconds) accepts `expiry`: not
/// passed, and at most [`MAX_EXPIRY_AHEAD_S`] ahead.
pub fn expiry_acceptable(expiry: u64, now: u64) -> bool {
    expiry >= now && expiry <= now.saturating_add(MAX_EXPIRY_AHEAD_S)
}

/// Why a sealed request or answer could not be made or opened. Peers are told only an
/// error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// A sealed blob is not exactly [`SEALED_LEN`] bytes.
    #[error("sealed blob is {0} bytes, expected {SEALED_LEN}")]
    WrongLength(usize),
    /// Authentication failed: sealed to another key, another protocol version, tampered, or
    /// an answer opened with the wrong key.
    #[error("sealed blob does not open (another key, tampered or another protocol version)")]
    Open,
    /// It opened, but its plaintext is malformed (length, padding, transmission header).
    #[error("malformed sealed plaintext: {0}")]
    Malformed(DecodeError),
    /// The transmission is too long to seal.
    #[error("transmission of {0} bytes is too long to seal")]
    TooLarge(usize),
    /// The Noise library failed internally.
    #[error("sealing failed: {0}")]
    Internal(String),
}

fn internal(e: impl std::fmt::Display) -> ForwardError {
    ForwardError::Internal(e.to_string())
}

fn builder() -> snow::Builder<'static> {
    // FORWARD_NOISE_PARAMS is a constant valid pattern; parsing it cannot fail.
    #[allow(clippy::expect_used)]
    let params = FORWARD_NOISE_PARAMS.parse().expect("valid noise params");
    snow::Builder::new(params)
}

/// The Noise transport nonce for counter 0: 32 zero bits ‖ 0u64 little-endian.
fn nonce_zero() -> Nonce {
    Nonce::from([0u8; 12])
}

/// Client side: a sealing handshake written to one destination, waiting for the
/// transmission to seal. Its [`Sealer::handshake_hash`] is what a signed inner transmission
/// signs (see [`Sealer::seal_command`]).
pub struct Sealer {
    message: [u8; HANDSHAKE_MESSAGE_LEN],
    handshake_hash: [u8; HANDSHAKE_HASH_LEN],
    k1: Zeroizing<[u8; KEY_LEN]>,
    k2: Zeroizing<[u8; KEY_LEN]>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

impl Sealer {
    /// Writes the handshake message to `destination` with a fresh ephemeral key (from the
    /// operating system's generator, through snow).
    ///
    /// # Errors
    /// Only on internal failure of the Noise library.
    pub fn start(destination: &RelayPublicKey) -> Result<Self, ForwardError> {
        let hs = builder()
            .prologue(&forward_prologue())
            .and_then(|b| b.remote_public_key(destination.as_bytes()))
            .and_then(|b| b.build_initiator())
            .map_err(internal)?;
        Self::write(hs)
    }

    /// As [`Sealer::start`] with a fixed ephemeral secret (test vectors only: a reused
    /// ephemeral is a replay to the destination).
    ///
    /// # Errors
    /// Only on internal failure of the Noise library.
    pub fn start_fixed(
        destination: &RelayPublicKey,
        ephemeral: &[u8; KEY_LEN],
    ) -> Result<Self, ForwardError> {
        let hs = builder()
            .prologue(&forward_prologue())
            .and_then(|b| b.remote_public_key(destination.as_bytes()))
            .map(|b| b.fixed_ephemeral_key_for_testing_only(ephemeral))
            .and_then(|b| b.build_initiator())
            .map_err(internal)?;
        Self::write(hs)
    }

    fn write(mut hs: snow::HandshakeState) -> Result<Self, ForwardError> {
        let mut message = [0u8; HANDSHAKE_MESSAGE_LEN];
        let n = hs.write_message(&[], &mut message).map_err(internal)?;
        if n != HANDSHAKE_MESSAGE_LEN || !hs.is_handshake_finished() {
            return Err(internal("unexpected handshake message"));
        }
        let handshake_hash =
            <[u8; HANDSHAKE_HASH_LEN]>::try_from(hs.get_handshake_hash()).map_err(internal)?;
        let (k1, k2) = hs.dangerously_get_raw_split();
        Ok(Self {
            message,
            handshake_hash,
            k1: Zeroizing::new(k1),
            k2: Zeroizing::new(k2),
        })
    }

    /// The handshake hash `h`: what a signed inner transmission binds instead of a session's
    /// handshake hash. Unique per sealed request.
    pub fn handshake_hash(&self) -> &[u8; HANDSHAKE_HASH_LEN] {
        &self.handshake_hash
    }

    /// The ephemeral public key (the destination's replay key).
    pub fn ephemeral(&self) -> [u8; KEY_LEN] {
        let mut e = [0u8; KEY_LEN];
        e.copy_from_slice(&self.message[..KEY_LEN]);
        e
    }

    /// Seals `transmission` with `expiry` (Unix seconds; see [`DEFAULT_EXPIRY_S`]). Returns
    /// the [`SEALED_LEN`]-byte blob for FWD and the key that opens the answer.
    ///
    /// # Errors
    /// [`ForwardError::TooLarge`] for a transmission over [`MAX_SEALED_TRANSMISSION`].
    pub fn seal(
        self,
        expiry: u64,
        transmission: &Transmission,
    ) -> Result<(Vec<u8>, AnswerKey), ForwardError> {
        let len = transmission.encoded_len();
        if len > MAX_SEALED_TRANSMISSION {
            return Err(ForwardError::TooLarge(len));
        }
        let mut plain = Zeroizing::new(Vec::with_capacity(REQUEST_PLAINTEXT_LEN));
        plain.extend_from_slice(&expiry.to_be_bytes());
        // len ≤ MAX_SEALED_TRANSMISSION < 2^16, checked above.
        plain.extend_from_slice(&u16::try_from(len).map_err(internal)?.to_be_bytes());
        transmission.encode(&mut plain);
        plain.resize(REQUEST_PLAINTEXT_LEN, 0);
        self.seal_plaintext(&plain)
    }

    /// Builds the inner transmission of `cmd` for `entity` — signed with `key` over this
    /// sealer's handshake hash when given — and seals it (see [`Sealer::seal`]).
    ///
    /// # Errors
    /// As [`Sealer::seal`].
    pub fn seal_command(
        self,
        expiry: u64,
        corr_id: crate::CorrId,
        entity: Option<crate::EntityId>,
        cmd: &crate::Command,
        key: Option<&crate::AuthSecretKey>,
    ) -> Result<(Vec<u8>, AnswerKey), ForwardError> {
        let t = match key {
            Some(k) => Transmission::signed(corr_id, entity, cmd, k, &self.handshake_hash),
            None => Transmission::command(corr_id, entity, cmd),
        };
        self.seal(expiry, &t)
    }

    /// Seals an already laid-out plaintext of exactly [`REQUEST_PLAINTEXT_LEN`] bytes (the
    /// layout is not checked: for tests of the destination's checks).
    ///
    /// # Errors
    /// [`ForwardError::Internal`] for a plaintext of another length.
    pub fn seal_plaintext(self, plain: &[u8]) -> Result<(Vec<u8>, AnswerKey), ForwardError> {
        if plain.len() != REQUEST_PLAINTEXT_LEN {
            return Err(internal("request plaintext of the wrong length"));
        }
        let aead = ChaCha20Poly1305::new(Key::from_slice(&*self.k1));
        let ct = aead.encrypt(&nonce_zero(), plain).map_err(internal)?;
        let mut sealed = Vec::with_capacity(SEALED_LEN);
        sealed.extend_from_slice(&self.message);
        sealed.extend_from_slice(&ct);
        debug_assert_eq!(sealed.len(), SEALED_LEN);
        Ok((sealed, AnswerKey::derive(&self.k2)))
    }
}

/// A sealed request as the destination opened it.
pub struct OpenedRequest {
    /// The client's ephemeral public key: the replay key, remembered until `expiry`.
    pub ephemeral: [u8; KEY_LEN],
    /// The handshake hash that a signed inner transmission binds.
    pub handshake_hash: [u8; HANDSHAKE_HASH_LEN],
    /// Unix seconds after which the request must be refused.
    pub expiry: u64,
    /// The inner transmission (its payload is not decoded here).
    pub transmission: Transmission,
    /// Seals the answer back to the client.
    pub answer_key: AnswerKey,
}

impl std::fmt::Debug for OpenedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The inner transmission names a queue: never printed.
        f.debug_struct("OpenedRequest")
            .field("expiry", &self.expiry)
            .finish_non_exhaustive()
    }
}

/// Destination side: opens a sealed request with the relay's static key.
///
/// # Errors
/// [`ForwardError::WrongLength`] (checked before any cryptography), [`ForwardError::Open`]
/// when the blob does not authenticate, [`ForwardError::Malformed`] for a bad length field,
/// non-zero padding or a malformed transmission header.
pub fn open_request(key: &RelayStaticKey, sealed: &[u8]) -> Result<OpenedRequest, ForwardError> {
    if sealed.len() != SEALED_LEN {
        return Err(ForwardError::WrongLength(sealed.len()));
    }
    let (message, ct) = sealed.split_at(HANDSHAKE_MESSAGE_LEN);
    let mut hs = builder()
        .prologue(&forward_prologue())
        .and_then(|b| b.local_private_key(key.secret_bytes()))
        .and_then(|b| b.build_responder())
        .map_err(internal)?;
    let mut empty = [0u8; TAG_LEN];
    let n = hs
        .read_message(message, &mut empty)
        .map_err(|_| ForwardError::Open)?;
    if n != 0 || !hs.is_handshake_finished() {
        return Err(ForwardError::Open);
    }
    let handshake_hash =
        <[u8; HANDSHAKE_HASH_LEN]>::try_from(hs.get_handshake_hash()).map_err(internal)?;
    let (k1, k2) = hs.dangerously_get_raw_split();
    let (k1, k2) = (Zeroizing::new(k1), Zeroizing::new(k2));
    let aead = ChaCha20Poly1305::new(Key::from_slice(&*k1));
    let plain = Zeroizing::new(
        aead.decrypt(&nonce_zero(), ct)
            .map_err(|_| ForwardError::Open)?,
    );
    let mut r = Reader::new(&plain);
    let expiry = r.u64().map_err(ForwardError::Malformed)?;
    let len = usize::from(r.u16().map_err(ForwardError::Malformed)?);
    if len > MAX_SEALED_TRANSMISSION {
        return Err(ForwardError::Malformed(DecodeError::TooLong {
            field: "sealed transmission",
            len,
            max: MAX_SEALED_TRANSMISSION,
        }));
    }
    let t = r.take(len).map_err(ForwardError::Malformed)?;
    if r.rest().iter().any(|b| *b != 0) {
        return Err(ForwardError::Malformed(DecodeError::BadPadding));
    }
    let transmission = Transmission::decode(t).map_err(ForwardError::Malformed)?;
    let mut ephemeral = [0u8; KEY_LEN];
    ephemeral.copy_from_slice(&message[..KEY_LEN]);
    Ok(OpenedRequest {
        ephemeral,
        handshake_hash,
        expiry,
        transmission,
        answer_key: AnswerKey::derive(&k2),
    })
}

/// The key of one sealed answer, derived from the second key of the sealing handshake.
/// Zeroized on drop.
#[derive(Clone)]
pub struct AnswerKey(Zeroizing<[u8; KEY_LEN]>);

impl AnswerKey {
    fn derive(k2: &[u8; KEY_LEN]) -> Self {
        Self(Zeroizing::new(blake3::derive_key(ANSWER_KEY_CONTEXT, k2)))
    }

    /// Raw bytes (secret; for test vectors).
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Seals the destination's response transmission with a random nonce.
    ///
    /// # Errors
    /// [`ForwardError::TooLarge`] for a transmission over [`MAX_ANSWER_TRANSMISSION`].
    pub fn seal(
        &self,
        transmission: &Transmission,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Vec<u8>, ForwardError> {
        let mut nonce = [0u8; ANSWER_NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        self.seal_with_nonce(transmission, &nonce)
    }

    /// As [`AnswerKey::seal`] with a given nonce (test vectors only: a random nonce is what
    /// makes a second answer under the same key safe).
    ///
    /// # Errors
    /// As [`AnswerKey::seal`].
    pub fn seal_with_nonce(
        &self,
        transmission: &Transmission,
        nonce: &[u8; ANSWER_NONCE_LEN],
    ) -> Result<Vec<u8>, ForwardError> {
        let len = transmission.encoded_len();
        if len > MAX_ANSWER_TRANSMISSION {
            return Err(ForwardError::TooLarge(len));
        }
        let mut plain = Vec::with_capacity(ANSWER_PLAINTEXT_LEN);
        plain.extend_from_slice(&u16::try_from(len).map_err(internal)?.to_be_bytes());
        transmission.encode(&mut plain);
        plain.resize(ANSWER_PLAINTEXT_LEN, 0);
        let aead = XChaCha20Poly1305::new((&*self.0).into());
        let ct = aead
            .encrypt(XNonce::from_slice(nonce), plain.as_slice())
            .map_err(internal)?;
        let mut sealed = Vec::with_capacity(SEALED_LEN);
        sealed.extend_from_slice(nonce);
        sealed.extend_from_slice(&ct);
        debug_assert_eq!(sealed.len(), SEALED_LEN);
        Ok(sealed)
    }

    /// Client side: opens the sealed answer of a FWD_ANSWER.
    ///
    /// # Errors
    /// [`ForwardError::WrongLength`], [`ForwardError::Open`] when it does not authenticate
    /// under this key, [`ForwardError::Malformed`] for a bad length, padding or header.
    pub fn open(&self, sealed: &[u8]) -> Result<Transmission, ForwardError> {
        if sealed.len() != SEALED_LEN {
            return Err(ForwardError::WrongLength(sealed.len()));
        }
        let (nonce, ct) = sealed.split_at(ANSWER_NONCE_LEN);
        let aead = XChaCha20Poly1305::new((&*self.0).into());
        let plain = aead
            .decrypt(XNonce::from_slice(nonce), ct)
            .map_err(|_| ForwardError::Open)?;
        let mut r = Reader::new(&plain);
        let len = usize::from(r.u16().map_err(ForwardError::Malformed)?);
        let t = r.take(len).map_err(ForwardError::Malformed)?;
        if r.rest().iter().any(|b| *b != 0) {
            return Err(ForwardError::Malformed(DecodeError::BadPadding));
        }
        Transmission::decode(t).map_err(ForwardError::Malformed)
    }
}

impl std::fmt::Debug for AnswerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AnswerKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::FLAG_NOTIFY;
    use crate::{AuthSecretKey, Command, CorrId, EntityId, MAX_BODY, Response};
    use rand::rngs::OsRng;

    fn relay() -> RelayStaticKey {
        RelayStaticKey::generate(&mut OsRng)
    }

    fn send(body_len: usize) -> Command {
        Command::Send {
            flags: FLAG_NOTIFY,
            body: vec![0x5a; body_len],
        }
    }

    #[test]
    fn a_signed_max_size_send_round_trips_and_binds_the_sealed_handshake() {
        let b = relay();
        let key = AuthSecretKey::generate(&mut OsRng);
        let entity = EntityId([3; 24]);
        let sealer = Sealer::start(&b.public()).unwrap();
        let h = *sealer.handshake_hash();
        let e = sealer.ephemeral();
        let (sealed, answer_key) = sealer
            .seal_command(
                1_700_000_300,
                CorrId::from_u64(9),
                Some(entity),
                &send(MAX_BODY),
                Some(&key),
            )
            .unwrap();
        assert_eq!(sealed.len(), SEALED_LEN);
        let opened = open_request(&b, &sealed).unwrap();
        assert_eq!(opened.handshake_hash, h);
        assert_eq!(opened.ephemeral, e);
        assert_eq!(opened.expiry, 1_700_000_300);
        assert_eq!(opened.transmission.entity, Some(entity));
        assert_eq!(
            opened.transmission.decode_command().unwrap(),
            send(MAX_BODY)
        );
        assert!(opened.transmission.verify(&key.public(), &h));
        assert!(!opened.transmission.verify(&key.public(), &[0; 32]));

        let answer = Transmission::response(CorrId::from_u64(9), Some(entity), &Response::Ok);
        let sealed_answer = opened.answer_key.seal(&answer, &mut OsRng).unwrap();
        assert_eq!(sealed_answer.len(), SEALED_LEN);
        assert_eq!(answer_key.open(&sealed_answer).unwrap(), answer);
        // Two answers under one key never share a nonce.
        let again = opened.answer_key.seal(&answer, &mut OsRng).unwrap();
        assert_ne!(again[..ANSWER_NONCE_LEN], sealed_answer[..ANSWER_NONCE_LEN]);
    }

    #[test]
    fn sealed_requests_are_unlinkable_and_size_constant() {
        let b = relay();
        let t = Transmission::command(CorrId::from_u64(1), None, &Command::Ping);
        let (s1, _) = Sealer::start(&b.public()).unwrap().seal(1, &t).unwrap();
        let (s2, _) = Sealer::start(&b.public()).unwrap().seal(1, &t).unwrap();
        assert_eq!(s1.len(), s2.len());
        assert_ne!(s1[..32], s2[..32], "fresh ephemeral per request");
        assert_ne!(s1[48..], s2[48..]);
    }

    #[test]
    fn another_key_or_any_tampering_does_not_open() {
        let b = relay();
        let t = Transmission::command(CorrId::from_u64(1), Some(EntityId([1; 24])), &send(10));
        let (sealed, answer_key) = Sealer::start(&b.public()).unwrap().seal(5, &t).unwrap();
        assert_eq!(
            open_request(&relay(), &sealed).unwrap_err(),
            ForwardError::Open
        );
        for i in [0, 31, 32, 47, 48, 100, SEALED_LEN - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 0x01;
            assert_eq!(
                open_request(&b, &bad).unwrap_err(),
                ForwardError::Open,
                "byte {i}"
            );
        }
        // X25519 ignores the top bit of a public key, so flipping it gives the same DH
        // output; the handshake hash (the payload's associated data) still catches it, so
        // a replay cannot dodge the destination's memory of `e` by re-encoding it.
        let mut bad = sealed.clone();
        bad[31] ^= 0x80;
        assert_eq!(open_request(&b, &bad).unwrap_err(), ForwardError::Open);
        assert_eq!(
            open_request(&b, &sealed[1..]).unwrap_err(),
            ForwardError::WrongLength(SEALED_LEN - 1)
        );
        // The answer key opens nothing else.
        let other = AnswerKey::derive(&[7; 32]);
        let answer = Transmission::response(CorrId::from_u64(1), None, &Response::Ok);
        let sealed_answer = other.seal(&answer, &mut OsRng).unwrap();
        assert_eq!(
            answer_key.open(&sealed_answer).unwrap_err(),
            ForwardError::Open
        );
    }

    #[test]
    fn malformed_plaintexts_are_rejected_after_opening() {
        let b = relay();
        let seal = |plain: &[u8]| {
            Sealer::start(&b.public())
                .unwrap()
                .seal_plaintext(plain)
                .unwrap()
                .0
        };
        let mut plain = vec![0u8; REQUEST_PLAINTEXT_LEN];
        // Length field over the limit.
        plain[8..10].copy_from_slice(&u16::MAX.to_be_bytes());
        assert!(matches!(
            open_request(&b, &seal(&plain)),
            Err(ForwardError::Malformed(DecodeError::TooLong { .. }))
        ));
        // A valid PING transmission, then a non-zero padding byte.
        let t = Transmission::command(CorrId::from_u64(1), None, &Command::Ping);
        let mut enc = Vec::new();
        t.encode(&mut enc);
        let mut plain = vec![0u8; REQUEST_PLAINTEXT_LEN];
        plain[8..10].copy_from_slice(&(enc.len() as u16).to_be_bytes());
        plain[10..10 + enc.len()].copy_from_slice(&enc);
        assert!(open_request(&b, &seal(&plain)).is_ok());
        plain[REQUEST_PLAINTEXT_LEN - 1] = 1;
        assert_eq!(
            open_request(&b, &seal(&plain)).unwrap_err(),
            ForwardError::Malformed(DecodeError::BadPadding)
        );
        // An empty transmission is not a transmission.
        let plain = vec![0u8; REQUEST_PLAINTEXT_LEN];
        assert!(matches!(
            open_request(&b, &seal(&plain)),
            Err(ForwardError::Malformed(_))
        ));
        assert!(
            Sealer::start(&b.public())
                .unwrap()
                .seal_plaintext(&[0; 10])
                .is_err()
        );
    }

    #[test]
    fn oversized_transmissions_are_refused_before_sealing() {
        let b = relay();
        let t = Transmission {
            signature: None,
            corr_id: CorrId::from_u64(1),
            entity: None,
            payload: vec![0x04; MAX_SEALED_TRANSMISSION],
        };
        assert!(matches!(
            Sealer::start(&b.public()).unwrap().seal(1, &t),
            Err(ForwardError::TooLarge(_))
        ));
    }

    #[test]
    fn expiry_window() {
        assert!(expiry_acceptable(100, 100));
        assert!(expiry_acceptable(100 + MAX_EXPIRY_AHEAD_S, 100));
        assert!(!expiry_acceptable(99, 100));
        assert!(!expiry_acceptable(101 + MAX_EXPIRY_AHEAD_S, 100));
        assert!(expiry_acceptable(u64::MAX, u64::MAX));
    }

    #[test]
    fn the_request_is_a_noise_transport_message_snow_reads() {
        // The handshake message and the first transport message are exactly Noise's: a
        // responder built with snow alone reads them.
        let b = relay();
        let t = Transmission::command(CorrId::from_u64(1), None, &Command::Ping);
        let (sealed, _) = Sealer::start(&b.public()).unwrap().seal(42, &t).unwrap();
        let mut r = builder()
            .prologue(&forward_prologue())
            .unwrap()
            .local_private_key(b.secret_bytes())
            .unwrap()
            .build_responder()
            .unwrap();
        let mut buf = vec![0u8; SEALED_LEN];
        assert_eq!(
            r.read_message(&sealed[..HANDSHAKE_MESSAGE_LEN], &mut buf)
                .unwrap(),
            0
        );
        let mut transport = r.into_transport_mode().unwrap();
        let n = transport
            .read_message(&sealed[HANDSHAKE_MESSAGE_LEN..], &mut buf)
            .unwrap();
        assert_eq!(n, REQUEST_PLAINTEXT_LEN);
        assert_eq!(&buf[..8], &42u64.to_be_bytes());
    }

    #[test]
    fn secrets_do_not_print() {
        let b = relay();
        let s = Sealer::start(&b.public()).unwrap();
        assert!(format!("{s:?}").contains("redacted"));
        let k = AnswerKey::derive(&[9; 32]);
        assert!(!format!("{k:?}").contains('9'));
    }
}

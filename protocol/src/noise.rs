//! The handshake and the transport ciphers, as sans-IO state machines.
//!
//! Pattern `Noise_NKpsk2_25519_ChaChaPoly_BLAKE2s` with a hybrid ML-KEM-768 secret as the
//! PSK (see `docs/protocol.md` § Handshake):
//!
//! ```text
//! message 1 (client → relay), FRAME_LEN bytes:
//!     e (32) ‖ AEAD(ML-KEM-768 encapsulation key (1184) ‖ zeros)         ← es
//! message 2 (relay → client), FRAME_LEN bytes:
//!     ML-KEM ciphertext (1088) ‖ e (32) ‖ AEAD(zeros)                    ← ee, psk
//! ```
//!
//! The client has no static key, so a connection carries no client identity; the relay is
//! authenticated by `es` against the key pinned in its address. The KEM shared secret is
//! mixed in as the psk at position 2, so the session keys depend on X25519 *and* ML-KEM:
//! traffic recorded today stays confidential against a future quantum adversary unless
//! ML-KEM is also broken. The prologue binds the protocol version.
//!
//! After the handshake, each direction has its own [`SendCipher`] / [`RecvCipher`]
//! (ChaCha20-Poly1305, Noise nonces: 32 zero bits ‖ 64-bit little-endian counter, empty
//! associated data), so reading and writing can live in different tasks.

use crate::aead::ChaCha;
use ml_kem::kem::{Decapsulate, Encapsulate};
use ml_kem::{EncodedSizeUser, KemCore, MlKem768};
use rand_core::CryptoRngCore;
use zeroize::Zeroizing;

use crate::keys::{KEY_LEN, RelayPublicKey, RelayStaticKey};
use crate::transmission::HANDSHAKE_HASH_LEN;
use crate::{FRAME_LEN, FRAME_PLAINTEXT_LEN, PROTOCOL_VERSION, TAG_LEN};

/// Noise protocol name.
pub const NOISE_PARAMS: &str = "Noise_NKpsk2_25519_ChaChaPoly_BLAKE2s";

/// ML-KEM-768 encapsulation key length.
pub const KEM_EK_LEN: usize = 1184;

/// ML-KEM-768 ciphertext length.
pub const KEM_CT_LEN: usize = 1088;

/// Length of the Noise ephemeral public key.
const E_LEN: usize = 32;

/// Payload of message 1: the encapsulation key followed by zero padding.
const MSG1_PAYLOAD_LEN: usize = FRAME_LEN - E_LEN - TAG_LEN;

/// Payload of message 2: zero padding only.
const MSG2_PAYLOAD_LEN: usize = FRAME_LEN - KEM_CT_LEN - E_LEN - TAG_LEN;

type DecapsulationKey = <MlKem768 as KemCore>::DecapsulationKey;
type EncapsulationKey = <MlKem768 as KemCore>::EncapsulationKey;

/// The prologue: `"sotto"` ‖ version (u16, big-endian).
pub fn prologue() -> [u8; 7] {
    let v = PROTOCOL_VERSION.to_be_bytes();
    [b's', b'o', b't', b't', b'o', v[0], v[1]]
}

/// Why a handshake or a record failed. Peers learn nothing beyond "the session closed".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// A handshake message or record is not exactly [`FRAME_LEN`] bytes.
    #[error("record is {0} bytes, expected {FRAME_LEN}")]
    WrongLength(usize),
    /// Decryption or authentication failed: wrong relay key, tampering, or a peer that does
    /// not speak this protocol version.
    #[error("decryption failed (wrong relay key, tampered record or other protocol version)")]
    Decrypt,
    /// The handshake payload is malformed (bad KEM key or non-zero padding).
    #[error("malformed handshake payload")]
    Payload,
    /// A Noise or KEM operation failed internally.
    #[error("handshake failed: {0}")]
    Internal(String),
    /// The nonce counter is exhausted; the session must end.
    #[error("nonce counter exhausted")]
    NonceExhausted,
}

fn internal(e: impl std::fmt::Display) -> HandshakeError {
    HandshakeError::Internal(e.to_string())
}

fn builder() -> snow::Builder<'static> {
    // NOISE_PARAMS is a constant valid pattern; parsing it cannot fail.
    #[allow(clippy::expect_used)]
    let params = NOISE_PARAMS.parse().expect("valid noise params");
    snow::Builder::new(params)
}

/// Client side of the handshake, waiting for message 2.
pub struct Initiator {
    hs: snow::HandshakeState,
    kem_dk: DecapsulationKey,
}

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Initiator(<handshake in progress>)")
    }
}

/// Fixed randomness for reproducing the test vectors in `docs/protocol.md`. Never use
/// outside tests.
#[derive(Debug, Clone)]
pub struct FixedInitiatorKeys {
    /// Noise ephemeral secret.
    pub ephemeral: [u8; 32],
    /// ML-KEM-768 key generation seed `d`.
    pub kem_d: [u8; 32],
    /// ML-KEM-768 key generation seed `z`.
    pub kem_z: [u8; 32],
}

/// Fixed randomness for the relay side of the test vectors. Never use outside tests.
#[derive(Debug, Clone)]
pub struct FixedResponderKeys {
    /// Noise ephemeral secret.
    pub ephemeral: [u8; 32],
    /// ML-KEM-768 encapsulation randomness `m`.
    pub kem_m: [u8; 32],
}

impl Initiator {
    /// Starts a handshake with the relay whose key is `relay`; returns message 1.
    ///
    /// # Errors
    /// Only on internal failure of the Noise library.
    pub fn start(
        relay: &RelayPublicKey,
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let (kem_dk, kem_ek) = MlKem768::generate(rng);
        let hs = builder()
            .prologue(&prologue())
            .and_then(|b| b.remote_public_key(relay.as_bytes()))
            .and_then(|b| b.build_initiator())
            .map_err(internal)?;
        Self::write_first(hs, kem_dk, &kem_ek)
    }

    /// As [`Initiator::start`] with fixed randomness (test vectors only).
    ///
    /// # Errors
    /// Only on internal failure of the Noise library.
    pub fn start_fixed(
        relay: &RelayPublicKey,
        keys: &FixedInitiatorKeys,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let (kem_dk, kem_ek) =
            MlKem768::generate_deterministic(&keys.kem_d.into(), &keys.kem_z.into());
        let hs = builder()
            .prologue(&prologue())
            .and_then(|b| b.remote_public_key(relay.as_bytes()))
            .map(|b| b.fixed_ephemeral_key_for_testing_only(&keys.ephemeral))
            .and_then(|b| b.build_initiator())
            .map_err(internal)?;
        Self::write_first(hs, kem_dk, &kem_ek)
    }

    fn write_first(
        mut hs: snow::HandshakeState,
        kem_dk: DecapsulationKey,
        kem_ek: &EncapsulationKey,
    ) -> Result<(Self, Vec<u8>), HandshakeError> {
        let mut payload = vec![0u8; MSG1_PAYLOAD_LEN];
        payload[..KEM_EK_LEN].copy_from_slice(kem_ek.as_bytes().as_slice());
        let mut msg = vec![0u8; FRAME_LEN];
        let n = hs.write_message(&payload, &mut msg).map_err(internal)?;
        debug_assert_eq!(n, FRAME_LEN);
        Ok((Self { hs, kem_dk }, msg))
    }

    /// Reads message 2 and completes the handshake.
    ///
    /// # Errors
    /// [`HandshakeError::WrongLength`], or [`HandshakeError::Decrypt`] when the relay does
    /// not hold the pinned key (or message 2 was tampered with).
    pub fn finish(mut self, msg2: &[u8]) -> Result<Session, HandshakeError> {
        if msg2.len() != FRAME_LEN {
            return Err(HandshakeError::WrongLength(msg2.len()));
        }
        let (ct, noise) = msg2.split_at(KEM_CT_LEN);
        let ct =
            ml_kem::Ciphertext::<MlKem768>::try_from(ct).map_err(|_| HandshakeError::Payload)?;
        let ss = self
            .kem_dk
            .decapsulate(&ct)
            .map_err(|_| HandshakeError::Payload)?;
        self.hs.set_psk(2, ss.as_slice()).map_err(internal)?;
        let mut payload = Zeroizing::new(vec![0u8; FRAME_LEN]);
        let n = self
            .hs
            .read_message(noise, &mut payload)
            .map_err(|_| HandshakeError::Decrypt)?;
        if n != MSG2_PAYLOAD_LEN || payload[..n].iter().any(|b| *b != 0) {
            return Err(HandshakeError::Payload);
        }
        Session::from_handshake(self.hs)
    }
}

/// Relay side of the handshake (one step: read message 1, write message 2).
#[derive(Debug, Clone, Copy)]
pub struct Responder;

impl Responder {
    /// Reads message 1 and answers with message 2.
    ///
    /// # Errors
    /// [`HandshakeError::WrongLength`] (checked before any cryptography),
    /// [`HandshakeError::Decrypt`] for a client that used another relay key or protocol
    /// version, [`HandshakeError::Payload`] for a malformed KEM key or padding.
    pub fn respond(
        key: &RelayStaticKey,
        msg1: &[u8],
        rng: &mut impl CryptoRngCore,
    ) -> Result<(Session, Vec<u8>), HandshakeError> {
        if msg1.len() != FRAME_LEN {
            return Err(HandshakeError::WrongLength(msg1.len()));
        }
        let hs = builder()
            .prologue(&prologue())
            .and_then(|b| b.local_private_key(key.secret_bytes()))
            .and_then(|b| b.build_responder())
            .map_err(internal)?;
        Self::respond_with(hs, msg1, |ek| {
            ek.encapsulate(rng).map_err(|_| HandshakeError::Payload)
        })
    }

    /// As [`Responder::respond`] with fixed randomness (test vectors only).
    ///
    /// # Errors
    /// As [`Responder::respond`].
    pub fn respond_fixed(
        key: &RelayStaticKey,
        msg1: &[u8],
        keys: &FixedResponderKeys,
    ) -> Result<(Session, Vec<u8>), HandshakeError> {
        use ml_kem::EncapsulateDeterministic as _;
        if msg1.len() != FRAME_LEN {
            return Err(HandshakeError::WrongLength(msg1.len()));
        }
        let hs = builder()
            .prologue(&prologue())
            .and_then(|b| b.local_private_key(key.secret_bytes()))
            .map(|b| b.fixed_ephemeral_key_for_testing_only(&keys.ephemeral))
            .and_then(|b| b.build_responder())
            .map_err(internal)?;
        Self::respond_with(hs, msg1, |ek| {
            ek.encapsulate_deterministic(&keys.kem_m.into())
                .map_err(|_| HandshakeError::Payload)
        })
    }

    fn respond_with(
        mut hs: snow::HandshakeState,
        msg1: &[u8],
        encapsulate: impl FnOnce(
            &EncapsulationKey,
        ) -> Result<
            (ml_kem::Ciphertext<MlKem768>, ml_kem::SharedKey<MlKem768>),
            HandshakeError,
        >,
    ) -> Result<(Session, Vec<u8>), HandshakeError> {
        let mut payload = vec![0u8; FRAME_LEN];
        let n = hs
            .read_message(msg1, &mut payload)
            .map_err(|_| HandshakeError::Decrypt)?;
        if n != MSG1_PAYLOAD_LEN || payload[KEM_EK_LEN..n].iter().any(|b| *b != 0) {
            return Err(HandshakeError::Payload);
        }
        let ek_bytes = ml_kem::Encoded::<EncapsulationKey>::try_from(&payload[..KEM_EK_LEN])
            .map_err(|_| HandshakeError::Payload)?;
        let ek = EncapsulationKey::from_bytes(&ek_bytes);
        let (ct, ss) = encapsulate(&ek)?;
        hs.set_psk(2, ss.as_slice()).map_err(internal)?;
        let mut msg = vec![0u8; FRAME_LEN];
        msg[..KEM_CT_LEN].copy_from_slice(ct.as_slice());
        let zeros = [0u8; MSG2_PAYLOAD_LEN];
        let n = hs
            .write_message(&zeros, &mut msg[KEM_CT_LEN..])
            .map_err(internal)?;
        debug_assert_eq!(KEM_CT_LEN + n, FRAME_LEN);
        Ok((Session::from_handshake(hs)?, msg))
    }
}

/// An established session: one cipher per direction and the handshake hash that signed
/// commands bind.
#[derive(Debug)]
pub struct Session {
    /// Cipher for records this side sends.
    pub send: SendCipher,
    /// Cipher for records this side receives.
    pub recv: RecvCipher,
    /// The Noise handshake hash (unique per session).
    pub handshake_hash: [u8; HANDSHAKE_HASH_LEN],
}

impl Session {
    fn from_handshake(mut hs: snow::HandshakeState) -> Result<Self, HandshakeError> {
        if !hs.is_handshake_finished() {
            return Err(internal("handshake not finished"));
        }
        let handshake_hash =
            <[u8; HANDSHAKE_HASH_LEN]>::try_from(hs.get_handshake_hash()).map_err(internal)?;
        let (k1, k2) = hs.dangerously_get_raw_split();
        let (k1, k2) = (Zeroizing::new(k1), Zeroizing::new(k2));
        let (send, recv) = if hs.is_initiator() {
            (k1, k2)
        } else {
            (k2, k1)
        };
        Ok(Session {
            send: SendCipher(CipherState::new(&send)),
            recv: RecvCipher(CipherState::new(&recv)),
            handshake_hash,
        })
    }
}

struct CipherState {
    aead: ChaCha,
    nonce: u64,
}

impl CipherState {
    fn new(key: &[u8; KEY_LEN]) -> Self {
        Self {
            aead: ChaCha::new(key),
            nonce: 0,
        }
    }

    fn next_nonce(&mut self) -> Result<[u8; 12], HandshakeError> {
        // Noise reserves 2^64 − 1.
        if self.nonce == u64::MAX {
            return Err(HandshakeError::NonceExhausted);
        }
        let mut n = [0u8; 12];
        n[4..].copy_from_slice(&self.nonce.to_le_bytes());
        self.nonce += 1;
        Ok(n)
    }
}

impl std::fmt::Debug for CipherState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CipherState(nonce: {}, key: <redacted>)", self.nonce)
    }
}

/// Encrypts outgoing records of one session.
#[derive(Debug)]
pub struct SendCipher(CipherState);

impl SendCipher {
    /// Encrypts a frame's plaintext into a record of exactly [`FRAME_LEN`] bytes.
    ///
    /// # Errors
    /// [`HandshakeError::WrongLength`] if `plaintext` is not [`FRAME_PLAINTEXT_LEN`] bytes;
    /// [`HandshakeError::NonceExhausted`] after 2^64 − 1 records.
    pub fn encrypt_frame(&mut self, plaintext: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        if plaintext.len() != FRAME_PLAINTEXT_LEN {
            return Err(HandshakeError::WrongLength(plaintext.len()));
        }
        let mut buf = Vec::with_capacity(FRAME_LEN);
        buf.extend_from_slice(plaintext);
        self.encrypt_in_place(&mut buf)?;
        Ok(buf)
    }

    /// Encrypts `buf` (exactly [`FRAME_PLAINTEXT_LEN`] bytes) in place and appends the tag.
    ///
    /// # Errors
    /// As [`SendCipher::encrypt_frame`].
    pub fn encrypt_in_place(&mut self, buf: &mut Vec<u8>) -> Result<(), HandshakeError> {
        if buf.len() != FRAME_PLAINTEXT_LEN {
            return Err(HandshakeError::WrongLength(buf.len()));
        }
        let nonce = self.0.next_nonce()?;
        let tag = self.0.aead.seal_in_place_detached(nonce, &[], buf);
        buf.extend_from_slice(&tag);
        Ok(())
    }
}

/// Decrypts incoming records of one session.
#[derive(Debug)]
pub struct RecvCipher(CipherState);

impl RecvCipher {
    /// Decrypts a record of exactly [`FRAME_LEN`] bytes into its frame plaintext.
    ///
    /// # Errors
    /// [`HandshakeError::WrongLength`] for any other length (checked first, before any
    /// cryptography), [`HandshakeError::Decrypt`] if authentication fails. Either error
    /// must end the session.
    pub fn decrypt_frame(&mut self, record: &[u8]) -> Result<Vec<u8>, HandshakeError> {
        let mut buf = record.to_vec();
        self.decrypt_in_place(&mut buf)?;
        Ok(buf)
    }

    /// Decrypts `buf` (a record of exactly [`FRAME_LEN`] bytes) in place, leaving the
    /// [`FRAME_PLAINTEXT_LEN`] bytes of plaintext.
    ///
    /// # Errors
    /// As [`RecvCipher::decrypt_frame`].
    pub fn decrypt_in_place(&mut self, buf: &mut Vec<u8>) -> Result<(), HandshakeError> {
        if buf.len() != FRAME_LEN {
            return Err(HandshakeError::WrongLength(buf.len()));
        }
        let nonce = self.0.next_nonce()?;
        let tag = <[u8; TAG_LEN]>::try_from(&buf[FRAME_PLAINTEXT_LEN..])
            .map_err(|_| HandshakeError::WrongLength(buf.len()))?;
        buf.truncate(FRAME_PLAINTEXT_LEN);
        self.0
            .aead
            .open_in_place_detached(nonce, &[], buf, &tag)
            .map_err(|_| HandshakeError::Decrypt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::OsRng;

    fn pair() -> (Session, Session) {
        let relay = RelayStaticKey::generate(&mut OsRng);
        let (init, m1) = Initiator::start(&relay.public(), &mut OsRng).unwrap();
        assert_eq!(m1.len(), FRAME_LEN);
        let (server, m2) = Responder::respond(&relay, &m1, &mut OsRng).unwrap();
        assert_eq!(m2.len(), FRAME_LEN);
        (init.finish(&m2).unwrap(), server)
    }

    #[test]
    fn handshake_then_1000_frames_each_way() {
        let (mut c, mut s) = pair();
        assert_eq!(c.handshake_hash, s.handshake_hash);
        for i in 0..1000u32 {
            let mut p = vec![0u8; FRAME_PLAINTEXT_LEN];
            p[..4].copy_from_slice(&i.to_be_bytes());
            let rec = c.send.encrypt_frame(&p).unwrap();
            assert_eq!(rec.len(), FRAME_LEN);
            assert_eq!(s.recv.decrypt_frame(&rec).unwrap(), p);
            let rec = s.send.encrypt_frame(&p).unwrap();
            assert_eq!(c.recv.decrypt_frame(&rec).unwrap(), p);
        }
    }

    #[test]
    fn sessions_have_distinct_hashes() {
        let (a, _) = pair();
        let (b, _) = pair();
        assert_ne!(a.handshake_hash, b.handshake_hash);
    }

    #[test]
    fn wrong_relay_key_fails_the_handshake() {
        let relay = RelayStaticKey::generate(&mut OsRng);
        let impostor = RelayStaticKey::generate(&mut OsRng);
        let (_init, m1) = Initiator::start(&relay.public(), &mut OsRng).unwrap();
        assert_eq!(
            Responder::respond(&impostor, &m1, &mut OsRng).unwrap_err(),
            HandshakeError::Decrypt
        );
        // An impostor answering a client that pinned `relay` (a MITM that knows the
        // client's first message was meant for someone else) cannot produce message 2.
        let (init, m1) = Initiator::start(&impostor.public(), &mut OsRng).unwrap();
        let (_s, _m2) = Responder::respond(&impostor, &m1, &mut OsRng).unwrap();
        let (init2, _) = Initiator::start(&relay.public(), &mut OsRng).unwrap();
        let (_s, m2) = Responder::respond(&impostor, &m1, &mut OsRng).unwrap();
        assert!(init2.finish(&m2).is_err());
        drop(init);
    }

    #[test]
    fn tampered_or_short_records_are_rejected() {
        let (mut c, mut s) = pair();
        let p = vec![0u8; FRAME_PLAINTEXT_LEN];
        let mut rec = c.send.encrypt_frame(&p).unwrap();
        rec[100] ^= 1;
        assert_eq!(s.recv.decrypt_frame(&rec), Err(HandshakeError::Decrypt));
        assert_eq!(
            s.recv.decrypt_frame(&[0; 100]),
            Err(HandshakeError::WrongLength(100))
        );
        assert!(c.send.encrypt_frame(&[0; 5]).is_err());
    }

    #[test]
    fn tampered_kem_ciphertext_fails_the_client() {
        let relay = RelayStaticKey::generate(&mut OsRng);
        let (init, m1) = Initiator::start(&relay.public(), &mut OsRng).unwrap();
        let (_s, mut m2) = Responder::respond(&relay, &m1, &mut OsRng).unwrap();
        m2[10] ^= 0x40;
        assert!(init.finish(&m2).is_err());
    }

    #[test]
    fn garbage_and_wrong_lengths_fail_the_responder() {
        let relay = RelayStaticKey::generate(&mut OsRng);
        assert_eq!(
            Responder::respond(&relay, &[0; 10], &mut OsRng).unwrap_err(),
            HandshakeError::WrongLength(10)
        );
        assert!(Responder::respond(&relay, &vec![0x55; FRAME_LEN], &mut OsRng).is_err());
    }

    #[test]
    fn transport_ciphers_match_snow() {
        // Our split ciphers must produce exactly Noise transport messages.
        let relay = RelayStaticKey::generate(&mut OsRng);
        let mut i = builder()
            .prologue(&prologue())
            .unwrap()
            .remote_public_key(relay.public().as_bytes())
            .unwrap()
            .build_initiator()
            .unwrap();
        let mut r = builder()
            .prologue(&prologue())
            .unwrap()
            .local_private_key(relay.secret_bytes())
            .unwrap()
            .build_responder()
            .unwrap();
        let mut buf = vec![0u8; 200];
        let mut out = vec![0u8; 200];
        let n = i.write_message(&[], &mut buf).unwrap();
        r.read_message(&buf[..n], &mut out).unwrap();
        i.set_psk(2, &[7; 32]).unwrap();
        r.set_psk(2, &[7; 32]).unwrap();
        let n = r.write_message(&[], &mut buf).unwrap();
        i.read_message(&buf[..n], &mut out).unwrap();
        let mut ours = Session::from_handshake(i).unwrap();
        let mut snow_r = r.into_transport_mode().unwrap();
        let p = vec![3u8; FRAME_PLAINTEXT_LEN];
        for _ in 0..3 {
            let rec = ours.send.encrypt_frame(&p).unwrap();
            let mut dec = vec![0u8; FRAME_LEN];
            let n = snow_r.read_message(&rec, &mut dec).unwrap();
            assert_eq!(&dec[..n], &p[..]);
            let mut rec = vec![0u8; FRAME_LEN];
            snow_r.write_message(&p, &mut rec).unwrap();
            assert_eq!(ours.recv.decrypt_frame(&rec).unwrap(), p);
        }
    }
}

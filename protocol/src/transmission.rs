//! Transmissions: one command or response with its correlation id, entity id and optional
//! Ed25519 signature.
//!
//! Wire layout (see `docs/protocol.md` § Transmissions):
//!
//! ```text
//! u8  signed (0 or 1) | [64] signature if signed | [8] corr id
//! u8  entity length (0 or 24) | entity id | payload (command or response, to the end)
//! ```
//!
//! The signature is Ed25519 over a 32-byte BLAKE3 digest ([`signing_digest`]) of
//! `handshake hash ‖ corr id ‖ entity length ‖ entity id ‖ payload`, in BLAKE3's key
//! derivation mode with the context [`SIGNATURE_CONTEXT`]. Binding the Noise handshake hash
//! means a signature captured in one session is worthless in any other.
//!
//! Why a digest: Ed25519 hashes its message twice with SHA-512 when signing (nonce, then
//! challenge) and once when verifying, so a maximal SEND (~15.5 KB) cost ~52 µs to sign and
//! ~49 µs to verify, against ~12 µs / ~31 µs for a 32-byte message. One BLAKE3 pass over the
//! same bytes costs ~6 µs, is streamed (the payload is never copied), and the signature
//! still covers every byte through BLAKE3's collision resistance (128-bit, the same level as
//! Ed25519's). Signing a maximal SEND now takes ~23 µs and verifying it ~41 µs
//! (`docs/benchmarks.md`, `send/*`).

use crate::codec::Reader;
use crate::command::{Command, Response};
use crate::error::DecodeError;
use crate::ids::{CORR_ID_LEN, CorrId, EntityId, ID_LEN};
use crate::keys::{AuthPublicKey, AuthSecretKey, SIGNATURE_LEN};

/// Length of the Noise handshake hash that signatures bind.
pub const HANDSHAKE_HASH_LEN: usize = 32;

/// BLAKE3 key-derivation context of the digest that transmission signatures sign
/// (`docs/protocol.md` § 8). Globally unique and fixed for protocol version 1.
pub const SIGNATURE_CONTEXT: &str = "sotto v1 transmission signature";

/// Length of [`signing_digest`], the message Ed25519 signs.
pub const SIGNING_DIGEST_LEN: usize = 32;

/// One transmission as carried in a frame. The payload is kept as bytes so the receiver can
/// verify the signature over exactly what was sent, then decode it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmission {
    /// Ed25519 signature, when the command is signed.
    pub signature: Option<[u8; SIGNATURE_LEN]>,
    /// Correlation id echoed in the answer.
    pub corr_id: CorrId,
    /// Queue id the transmission is about, if any.
    pub entity: Option<EntityId>,
    /// The encoded command or response.
    pub payload: Vec<u8>,
}

impl Transmission {
    /// An unsigned command.
    pub fn command(corr_id: CorrId, entity: Option<EntityId>, cmd: &Command) -> Self {
        Self {
            signature: None,
            corr_id,
            entity,
            payload: cmd.to_bytes(),
        }
    }

    /// A command signed with `key`, bound to the session whose handshake hash is `session`.
    pub fn signed(
        corr_id: CorrId,
        entity: Option<EntityId>,
        cmd: &Command,
        key: &AuthSecretKey,
        session: &[u8; HANDSHAKE_HASH_LEN],
    ) -> Self {
        let payload = cmd.to_bytes();
        let sig = key.sign(&signing_digest(session, corr_id, entity.as_ref(), &payload));
        Self {
            signature: Some(sig),
            corr_id,
            entity,
            payload,
        }
    }

    /// A response (never signed: the Noise session authenticates the relay).
    pub fn response(corr_id: CorrId, entity: Option<EntityId>, resp: &Response) -> Self {
        Self {
            signature: None,
            corr_id,
            entity,
            payload: resp.to_bytes(),
        }
    }

    /// Whether the signature is present and valid for `key` in the session `session`:
    /// strict Ed25519 verification over [`signing_digest`].
    pub fn verify(&self, key: &AuthPublicKey, session: &[u8; HANDSHAKE_HASH_LEN]) -> bool {
        match &self.signature {
            Some(sig) => key.verify(
                &signing_digest(session, self.corr_id, self.entity.as_ref(), &self.payload),
                sig,
            ),
            None => false,
        }
    }

    /// Decodes the payload as a command.
    ///
    /// # Errors
    /// As [`Command::decode`].
    pub fn decode_command(&self) -> Result<Command, DecodeError> {
        Command::decode(&self.payload)
    }

    /// Decodes the payload as a response.
    ///
    /// # Errors
    /// As [`Response::decode`].
    pub fn decode_response(&self) -> Result<Response, DecodeError> {
        Response::decode(&self.payload)
    }

    /// Length of the encoding.
    pub fn encoded_len(&self) -> usize {
        1 + self.signature.map_or(0, |_| SIGNATURE_LEN)
            + CORR_ID_LEN
            + 1
            + self.entity.map_or(0, |_| ID_LEN)
            + self.payload.len()
    }

    /// Appends the encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match &self.signature {
            Some(sig) => {
                out.push(1);
                out.extend_from_slice(sig);
            }
            None => out.push(0),
        }
        out.extend_from_slice(&self.corr_id.0);
        match &self.entity {
            Some(e) => {
                out.push(ID_LEN as u8);
                out.extend_from_slice(e.as_bytes());
            }
            None => out.push(0),
        }
        out.extend_from_slice(&self.payload);
    }

    /// Decodes one transmission occupying all of `bytes`. The payload is not decoded here;
    /// it must be non-empty.
    ///
    /// # Errors
    /// Truncation, a signature flag other than 0/1, an entity length other than 0/24, or an
    /// empty payload.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let signature = match r.u8()? {
            0 => None,
            1 => Some(r.array::<SIGNATURE_LEN>()?),
            _ => return Err(DecodeError::InvalidValue("signature flag")),
        };
        let corr_id = CorrId(r.array()?);
        let entity = match usize::from(r.u8()?) {
            0 => None,
            ID_LEN => Some(EntityId(r.array()?)),
            len => {
                return Err(DecodeError::BadLength {
                    field: "entity id",
                    len,
                });
            }
        };
        let payload = r.rest();
        if payload.is_empty() {
            return Err(DecodeError::Truncated { needed: 1 });
        }
        Ok(Self {
            signature,
            corr_id,
            entity,
            payload: payload.to_vec(),
        })
    }
}

/// The message a transmission signature signs: BLAKE3 in key-derivation mode with the
/// context [`SIGNATURE_CONTEXT`], over
/// `session ‖ corr id ‖ entity length (u8, 0 or 24) ‖ entity id ‖ payload`.
///
/// The pieces are streamed into the hasher in that order; the payload is not copied.
pub fn signing_digest(
    session: &[u8; HANDSHAKE_HASH_LEN],
    corr_id: CorrId,
    entity: Option<&EntityId>,
    payload: &[u8],
) -> [u8; SIGNING_DIGEST_LEN] {
    let mut h = blake3::Hasher::new_derive_key(SIGNATURE_CONTEXT);
    h.update(session);
    h.update(&corr_id.0);
    match entity {
        Some(e) => {
            h.update(&[ID_LEN as u8]);
            h.update(e.as_bytes());
        }
        None => {
            h.update(&[0]);
        }
    }
    h.update(payload);
    *h.finalize().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AuthSecretKey {
        AuthSecretKey::from_bytes(&[1; 32])
    }

    /// `n` bytes counting up from `start`, as in the spec's vectors.
    fn seq<const N: usize>(start: u8) -> [u8; N] {
        let mut b = [0u8; N];
        for (i, x) in b.iter_mut().enumerate() {
            *x = start.wrapping_add(i as u8);
        }
        b
    }

    /// The signing digest's preimage written out by hand, as the spec states it.
    fn preimage(session: &[u8; 32], corr: CorrId, entity: Option<&EntityId>, p: &[u8]) -> Vec<u8> {
        let mut v = session.to_vec();
        v.extend_from_slice(&corr.0);
        match entity {
            Some(e) => {
                v.push(24);
                v.extend_from_slice(e.as_bytes());
            }
            None => v.push(0),
        }
        v.extend_from_slice(p);
        v
    }

    #[test]
    fn signing_digest_matches_independent_vectors() {
        let session: [u8; 32] = seq(0x10);
        let corr = CorrId::from_u64(7);
        let entity = EntityId(seq(0x31));
        let payload = Command::Send {
            flags: crate::command::FLAG_NOTIFY,
            body: b"hello".to_vec(),
        }
        .to_bytes();
        let d = signing_digest(&session, corr, Some(&entity), &payload);
        // One-shot BLAKE3 derive_key over the concatenation: the streamed pieces hash the
        // same bytes in the same order.
        let oneshot = blake3::derive_key(
            SIGNATURE_CONTEXT,
            &preimage(&session, corr, Some(&entity), &payload),
        );
        assert_eq!(d, oneshot);
        // Computed with the Python `blake3` package:
        // blake3(input, derive_key_context="sotto v1 transmission signature") (spec § 15.3).
        assert_eq!(
            hex::encode(d),
            "b2ecfc13623b0af8b181a5a14d8b76f98816bff03b06c4ac82aaab7b7be2ace6"
        );

        // No entity and a payload spanning 16 BLAKE3 chunks at a 41-byte offset.
        let long: Vec<u8> = (0..15_362u32).map(|i| (i * 7) as u8).collect();
        let d2 = signing_digest(&session, corr, None, &long);
        assert_eq!(
            d2,
            blake3::derive_key(SIGNATURE_CONTEXT, &preimage(&session, corr, None, &long))
        );
        assert_eq!(
            hex::encode(d2),
            "f295bf0866007148421eca667328626bff5e0e508907fb05d0bca55d661b4d15"
        );
    }

    #[test]
    fn signature_is_ed25519_over_the_digest() {
        let session: [u8; 32] = seq(0x10);
        let corr = CorrId::from_u64(7);
        let entity = EntityId(seq(0x31));
        let t = Transmission::signed(corr, Some(entity), &Command::Sub, &key(), &session);
        let sig = t.signature.expect("signed");
        let digest = signing_digest(&session, corr, Some(&entity), &t.payload);
        assert!(key().public().verify(&digest, &sig));
        assert_eq!(key().sign(&digest), sig, "Ed25519 is deterministic");
        // The preimage itself is not what is signed.
        let raw = preimage(&session, corr, Some(&entity), &t.payload);
        assert!(!key().public().verify(&raw, &sig));
    }

    #[test]
    fn signature_is_bound_to_session_corr_entity_and_payload() {
        let h1: [u8; 32] = seq(0x10);
        let corr = CorrId::from_u64(5);
        let entity = EntityId([4; 24]);
        let cmd = Command::Send {
            flags: 0,
            body: b"sixteen bytes!!!".to_vec(),
        };
        let t = Transmission::signed(corr, Some(entity), &cmd, &key(), &h1);
        let pk = key().public();
        assert!(t.verify(&pk, &h1));

        for i in 0..h1.len() {
            let mut h2 = h1;
            h2[i] ^= 1;
            assert!(
                !t.verify(&pk, &h2),
                "session byte {i}: replayed in another session"
            );
        }
        for i in 0..corr.0.len() {
            let mut t2 = t.clone();
            t2.corr_id.0[i] ^= 1;
            assert!(!t2.verify(&pk, &h1), "corr id byte {i}");
        }
        for i in 0..ID_LEN {
            let mut t2 = t.clone();
            let mut e = entity;
            e.0[i] ^= 1;
            t2.entity = Some(e);
            assert!(!t2.verify(&pk, &h1), "entity byte {i}");
        }
        let mut t2 = t.clone();
        t2.entity = None;
        assert!(!t2.verify(&pk, &h1), "entity removed");
        for i in 0..t.payload.len() {
            let mut t2 = t.clone();
            t2.payload[i] ^= 1;
            assert!(!t2.verify(&pk, &h1), "payload byte {i}");
        }
        let mut t2 = t.clone();
        t2.payload.push(0);
        assert!(!t2.verify(&pk, &h1), "payload extended");
        let mut t2 = t.clone();
        t2.payload.pop();
        assert!(!t2.verify(&pk, &h1), "payload truncated");
        for i in 0..SIGNATURE_LEN {
            let mut t2 = t.clone();
            if let Some(sig) = t2.signature.as_mut() {
                sig[i] ^= 1;
            }
            assert!(!t2.verify(&pk, &h1), "signature byte {i}");
        }
        let other = AuthSecretKey::from_bytes(&[2; 32]);
        assert!(!t.verify(&other.public(), &h1), "another key");
        let unsigned = Transmission::command(corr, Some(entity), &cmd);
        assert!(!unsigned.verify(&pk, &h1));
    }

    #[test]
    fn malformed_headers_are_rejected() {
        assert_eq!(
            Transmission::decode(&[2]),
            Err(DecodeError::InvalidValue("signature flag"))
        );
        let mut b = vec![0];
        b.extend_from_slice(&[0; 8]);
        b.push(7);
        assert!(matches!(
            Transmission::decode(&b),
            Err(DecodeError::BadLength { len: 7, .. })
        ));
        let mut b = vec![0];
        b.extend_from_slice(&[0; 8]);
        b.push(0);
        assert!(matches!(
            Transmission::decode(&b),
            Err(DecodeError::Truncated { .. })
        ));
    }
}

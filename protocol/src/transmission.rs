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
//! The signature covers `handshake hash ‖ corr id ‖ entity length ‖ entity id ‖ payload`.
//! Binding the Noise handshake hash means a signature captured in one session is worthless
//! in any other.

use crate::codec::Reader;
use crate::command::{Command, Response};
use crate::error::DecodeError;
use crate::ids::{CORR_ID_LEN, CorrId, EntityId, ID_LEN};
use crate::keys::{AuthPublicKey, AuthSecretKey, SIGNATURE_LEN};

/// Length of the Noise handshake hash that signatures bind.
pub const HANDSHAKE_HASH_LEN: usize = 32;

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
        let sig = key.sign(&signing_input(session, corr_id, entity.as_ref(), &payload));
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

    /// Whether the signature is present and valid for `key` in the session `session`.
    pub fn verify(&self, key: &AuthPublicKey, session: &[u8; HANDSHAKE_HASH_LEN]) -> bool {
        match &self.signature {
            Some(sig) => key.verify(
                &signing_input(session, self.corr_id, self.entity.as_ref(), &self.payload),
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

/// The bytes a signature covers: `session ‖ corr id ‖ entity length ‖ entity ‖ payload`.
pub fn signing_input(
    session: &[u8; HANDSHAKE_HASH_LEN],
    corr_id: CorrId,
    entity: Option<&EntityId>,
    payload: &[u8],
) -> Vec<u8> {
    let mut v = Vec::with_capacity(HANDSHAKE_HASH_LEN + CORR_ID_LEN + 1 + ID_LEN + payload.len());
    v.extend_from_slice(session);
    v.extend_from_slice(&corr_id.0);
    match entity {
        Some(e) => {
            v.push(ID_LEN as u8);
            v.extend_from_slice(e.as_bytes());
        }
        None => v.push(0),
    }
    v.extend_from_slice(payload);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> AuthSecretKey {
        AuthSecretKey::from_bytes(&[1; 32])
    }

    #[test]
    fn signature_is_bound_to_session_corr_entity_and_payload() {
        let h1 = [1u8; 32];
        let h2 = [2u8; 32];
        let t = Transmission::signed(
            CorrId::from_u64(5),
            Some(EntityId([4; 24])),
            &Command::Sub,
            &key(),
            &h1,
        );
        assert!(t.verify(&key().public(), &h1));
        assert!(
            !t.verify(&key().public(), &h2),
            "replayed in another session"
        );
        let mut t2 = t.clone();
        t2.corr_id = CorrId::from_u64(6);
        assert!(!t2.verify(&key().public(), &h1));
        let mut t3 = t.clone();
        t3.entity = Some(EntityId([5; 24]));
        assert!(!t3.verify(&key().public(), &h1));
        let mut t4 = t.clone();
        t4.payload = Command::Get.to_bytes();
        assert!(!t4.verify(&key().public(), &h1));
        let unsigned = Transmission::command(CorrId::from_u64(5), None, &Command::Sub);
        assert!(!unsigned.verify(&key().public(), &h1));
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

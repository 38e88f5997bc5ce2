//! What contacts send each other inside a queue, sans-IO: the end-to-end payload, its
//! padding, and the envelope that makes every SEND body exactly [`MAX_BODY`] bytes.
//!
//! Layers, innermost first (normative text in `docs/client.md`):
//!
//! 1. **Payload** — `version (1) | seq (u64 BE) | kind (1) | fields | zero padding`, exactly
//!    [`OLM_PLAINTEXT_LEN`] bytes whatever the kind or text length.
//! 2. **Olm** (vodozemac, double ratchet) encrypts the payload. A pre-key message is
//!    longer than a normal one, and the chain index is a varint, so Olm messages vary by a
//!    few dozen bytes.
//! 3. **Envelope** — `olm type (1) | olm length (u16 BE) | olm message | zero padding`,
//!    [`INNER_LEN`] bytes, sealed with XChaCha20-Poly1305 under the queue's envelope key
//!    (a random 32-byte key the queue's recipient chose and gave its sender inside the
//!    invitation or an encrypted payload): `nonce (24) | ciphertext | tag (16)` =
//!    [`MAX_BODY`]. The relay so sees neither the Olm headers (which would link a
//!    sender's messages across queues by its identity and ratchet keys) nor any length.
//!
//! This module owns no keys or state beyond its arguments; the agent owns sessions.

use chacha20poly1305::aead::{Aead, KeyInit, Payload as AeadPayload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore as _;
use rand::rngs::OsRng;
use serde::{Deserialize, Serialize};
use sotto_protocol::{MAX_BODY, QueueAddress};

use super::secret::Secret32;

/// Envelope nonce length (XChaCha20).
const NONCE_LEN: usize = 24;
/// Envelope tag length (Poly1305).
const TAG_LEN: usize = 16;

/// Length of the envelope's plaintext: the SEND body minus nonce and tag.
pub const INNER_LEN: usize = MAX_BODY - NONCE_LEN - TAG_LEN;

/// Longest Olm message the envelope carries.
pub const MAX_OLM_LEN: usize = INNER_LEN - 3;

/// Length of every Olm plaintext (the padded payload).
///
/// Olm v1 encrypts with AES-256-CBC (PKCS#7: the ciphertext is the plaintext rounded up to
/// the next multiple of 16, plus one block if already a multiple): 15 104 → 15 120 bytes.
/// A normal message adds at most 57 bytes (version, ratchet key, 10-byte chain index
/// varint, ciphertext length, truncated MAC), a pre-key message at most 106 more (three
/// keys and the inner message's length): 15 283 ≤ [`MAX_OLM_LEN`] = 15 317, checked by a
/// test that builds real messages.
pub const OLM_PLAINTEXT_LEN: usize = 15_104;

/// Payload format version.
const PAYLOAD_VERSION: u8 = 1;
/// Version byte, sequence number, kind.
const PAYLOAD_HEADER: usize = 1 + 8 + 1;

/// Longest text, in UTF-8 bytes, one message carries.
pub const MAX_TEXT_LEN: usize = OLM_PLAINTEXT_LEN - PAYLOAD_HEADER - 2;

/// Associated data of the envelope (domain separation).
const ENVELOPE_AD: &[u8] = b"sotto v1 envelope";

/// Kind bytes of [`Payload`].
mod kind {
    pub const TEXT: u8 = 1;
    pub const HELLO: u8 = 2;
    pub const READY: u8 = 3;
    pub const NEW_QUEUE: u8 = 4;
    pub const SWITCHED: u8 = 5;
}

/// Why a payload or envelope could not be read. Deliberately vague: the agent drops such
/// messages, it never shows them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// The envelope did not authenticate under the queue's key.
    #[error("envelope failed authentication")]
    Envelope,
    /// The body or envelope content has the wrong length or layout.
    #[error("malformed envelope")]
    Malformed,
    /// The decrypted payload is malformed.
    #[error("malformed payload: {0}")]
    Payload(&'static str),
    /// The text is longer than [`MAX_TEXT_LEN`] bytes.
    #[error("message is {0} bytes; the most one message carries is {MAX_TEXT_LEN}")]
    TooLong(usize),
    /// An Olm message longer than [`MAX_OLM_LEN`] (cannot happen with padded payloads).
    #[error("end-to-end message does not fit the envelope")]
    OlmTooLong,
}

/// What one end-to-end message says.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Payload {
    /// A text for the user.
    Text(String),
    /// The accepting side's first message: where the inviter sends from now on.
    Hello {
        /// The invitation this answers.
        invitation_id: [u8; 16],
        /// The accepting side's receive queue (`QueueAddress` text).
        reply_queue: String,
        /// Envelope key of that queue.
        envelope_key: Secret32,
    },
    /// The inviter secured the reply queue: the contact is complete.
    Ready,
    /// Rotation: "from now on send to this queue".
    NewQueue {
        /// The new queue (`QueueAddress` text).
        queue: String,
        /// Its envelope key.
        envelope_key: Secret32,
    },
    /// Rotation: the sender has switched; nothing later than this goes to the old queue.
    Switched,
}

/// A payload with its per-contact sequence number (for ordering and de-duplication).
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// Position in the sender's stream to this contact, from 0.
    pub seq: u64,
    /// Content.
    pub payload: Payload,
}

impl Message {
    /// Encodes and pads to exactly [`OLM_PLAINTEXT_LEN`] bytes.
    ///
    /// # Errors
    /// [`WireError::TooLong`] for a text over [`MAX_TEXT_LEN`] bytes;
    /// [`WireError::Payload`] for a queue address too long to encode.
    pub fn encode(&self) -> Result<zeroize::Zeroizing<Vec<u8>>, WireError> {
        let mut out = zeroize::Zeroizing::new(Vec::with_capacity(OLM_PLAINTEXT_LEN));
        out.push(PAYLOAD_VERSION);
        out.extend_from_slice(&self.seq.to_be_bytes());
        match &self.payload {
            Payload::Text(t) => {
                if t.len() > MAX_TEXT_LEN {
                    return Err(WireError::TooLong(t.len()));
                }
                out.push(kind::TEXT);
                put_bytes(&mut out, t.as_bytes())?;
            }
            Payload::Hello {
                invitation_id,
                reply_queue,
                envelope_key,
            } => {
                out.push(kind::HELLO);
                out.extend_from_slice(invitation_id);
                put_bytes(&mut out, reply_queue.as_bytes())?;
                out.extend_from_slice(envelope_key.expose());
            }
            Payload::Ready => out.push(kind::READY),
            Payload::NewQueue {
                queue,
                envelope_key,
            } => {
                out.push(kind::NEW_QUEUE);
                put_bytes(&mut out, queue.as_bytes())?;
                out.extend_from_slice(envelope_key.expose());
            }
            Payload::Switched => out.push(kind::SWITCHED),
        }
        if out.len() > OLM_PLAINTEXT_LEN {
            return Err(WireError::Payload("too long"));
        }
        out.resize(OLM_PLAINTEXT_LEN, 0);
        Ok(out)
    }

    /// Decodes a padded payload. Queue addresses are checked to parse.
    ///
    /// # Errors
    /// [`WireError::Payload`] for a wrong length, version or kind, a truncated field,
    /// text that is not UTF-8, or an unparsable queue address.
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        if b.len() != OLM_PLAINTEXT_LEN {
            return Err(WireError::Payload("wrong length"));
        }
        let mut r = Reader(b);
        if r.u8()? != PAYLOAD_VERSION {
            return Err(WireError::Payload("unknown version"));
        }
        let seq = u64::from_be_bytes(r.array::<8>()?);
        let payload = match r.u8()? {
            kind::TEXT => {
                let t = r.bytes()?;
                Payload::Text(
                    String::from_utf8(t.to_vec()).map_err(|_| WireError::Payload("not UTF-8"))?,
                )
            }
            kind::HELLO => {
                let invitation_id = r.array::<16>()?;
                let reply_queue = r.queue()?;
                let envelope_key = Secret32::new(r.array::<32>()?);
                Payload::Hello {
                    invitation_id,
                    reply_queue,
                    envelope_key,
                }
            }
            kind::READY => Payload::Ready,
            kind::NEW_QUEUE => {
                let queue = r.queue()?;
                let envelope_key = Secret32::new(r.array::<32>()?);
                Payload::NewQueue {
                    queue,
                    envelope_key,
                }
            }
            kind::SWITCHED => Payload::Switched,
            _ => return Err(WireError::Payload("unknown kind")),
        };
        Ok(Message { seq, payload })
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) -> Result<(), WireError> {
    let len = u16::try_from(b.len()).map_err(|_| WireError::Payload("field too long"))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(b);
    Ok(())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Payload("truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let s = self.take(N)?;
        <[u8; N]>::try_from(s).map_err(|_| WireError::Payload("truncated"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], WireError> {
        let len = u16::from_be_bytes(self.array::<2>()?);
        self.take(usize::from(len))
    }

    fn queue(&mut self) -> Result<String, WireError> {
        let b = self.bytes()?;
        let s = std::str::from_utf8(b).map_err(|_| WireError::Payload("queue not UTF-8"))?;
        s.parse::<QueueAddress>()
            .map_err(|_| WireError::Payload("bad queue address"))?;
        Ok(s.to_owned())
    }
}

/// Olm message type as carried in the envelope (vodozemac's numbering: 0 pre-key, 1 normal).
pub type OlmType = u8;

/// Seals an Olm message for a queue: the result is exactly [`MAX_BODY`] bytes.
///
/// # Errors
/// [`WireError::OlmTooLong`] if the message exceeds [`MAX_OLM_LEN`].
pub fn seal_envelope(key: &Secret32, olm_type: OlmType, olm: &[u8]) -> Result<Vec<u8>, WireError> {
    let len = u16::try_from(olm.len()).map_err(|_| WireError::OlmTooLong)?;
    if olm.len() > MAX_OLM_LEN {
        return Err(WireError::OlmTooLong);
    }
    let mut inner = zeroize::Zeroizing::new(Vec::with_capacity(INNER_LEN));
    inner.push(olm_type);
    inner.extend_from_slice(&len.to_be_bytes());
    inner.extend_from_slice(olm);
    inner.resize(INNER_LEN, 0);
    let mut nonce = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut nonce);
    let aead = XChaCha20Poly1305::new(key.expose().into());
    let ct = aead
        .encrypt(
            XNonce::from_slice(&nonce),
            AeadPayload {
                msg: &inner,
                aad: ENVELOPE_AD,
            },
        )
        .map_err(|_| WireError::Envelope)?;
    let mut body = Vec::with_capacity(MAX_BODY);
    body.extend_from_slice(&nonce);
    body.extend_from_slice(&ct);
    Ok(body)
}

/// Opens a SEND body sealed by [`seal_envelope`]: returns the Olm type and message.
///
/// # Errors
/// [`WireError::Malformed`] for a body of the wrong length or a bad inner layout,
/// [`WireError::Envelope`] if it does not authenticate under `key`.
pub fn open_envelope(key: &Secret32, body: &[u8]) -> Result<(OlmType, Vec<u8>), WireError> {
    if body.len() != MAX_BODY {
        return Err(WireError::Malformed);
    }
    let (nonce, ct) = body.split_at(NONCE_LEN);
    let aead = XChaCha20Poly1305::new(key.expose().into());
    let inner = zeroize::Zeroizing::new(
        aead.decrypt(
            XNonce::from_slice(nonce),
            AeadPayload {
                msg: ct,
                aad: ENVELOPE_AD,
            },
        )
        .map_err(|_| WireError::Envelope)?,
    );
    let mut r = Reader(&inner);
    let olm_type = r.u8().map_err(|_| WireError::Malformed)?;
    let olm = r.bytes().map_err(|_| WireError::Malformed)?;
    Ok((olm_type, olm.to_vec()))
}

/// Envelope type byte of a loop message (Olm's are 0 and 1).
const LOOP_TYPE: OlmType = 0x4c;

/// A loop message for a loop queue (`docs/client.md` § Traffic policy): the loop's id sealed
/// in an envelope under the loop queue's own key, so the body is exactly [`MAX_BODY`] bytes
/// as random as any message's.
///
/// # Errors
/// None in practice (the envelope always fits); [`WireError`] as [`seal_envelope`].
pub fn seal_loop(key: &Secret32, id: u64) -> Result<Vec<u8>, WireError> {
    seal_envelope(key, LOOP_TYPE, &id.to_be_bytes())
}

/// The loop id in a body sealed by [`seal_loop`] under `key`; `None` for anything else.
pub fn open_loop(key: &Secret32, body: &[u8]) -> Option<u64> {
    match open_envelope(key, body).ok()? {
        (LOOP_TYPE, id) => Some(u64::from_be_bytes(<[u8; 8]>::try_from(id).ok()?)),
        _ => None,
    }
}

impl std::fmt::Debug for Payload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Texts and keys are secrets; queue addresses link queues.
        let name = match self {
            Payload::Text(_) => "Text",
            Payload::Hello { .. } => "Hello",
            Payload::Ready => "Ready",
            Payload::NewQueue { .. } => "NewQueue",
            Payload::Switched => "Switched",
        };
        write!(f, "Payload::{name}(..)")
    }
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("seq", &self.seq)
            .field("payload", &self.payload)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vodozemac::olm::{Account, OlmMessage, SessionConfig};

    const QUEUE: &str = "sotto://AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8@127.0.0.1:9#BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcH";

    fn all_payloads() -> Vec<Payload> {
        vec![
            Payload::Text(String::new()),
            Payload::Text("x".repeat(MAX_TEXT_LEN)),
            Payload::Hello {
                invitation_id: [4; 16],
                reply_queue: QUEUE.into(),
                envelope_key: Secret32::new([5; 32]),
            },
            Payload::Ready,
            Payload::NewQueue {
                queue: QUEUE.into(),
                envelope_key: Secret32::new([6; 32]),
            },
            Payload::Switched,
        ]
    }

    #[test]
    fn every_payload_round_trips_at_the_fixed_length() {
        for (i, p) in all_payloads().into_iter().enumerate() {
            let m = Message {
                seq: u64::MAX - i as u64,
                payload: p,
            };
            let b = m.encode().unwrap();
            assert_eq!(b.len(), OLM_PLAINTEXT_LEN);
            assert_eq!(Message::decode(&b).unwrap(), m);
        }
    }

    #[test]
    fn malformed_payloads_are_rejected() {
        let good = Message {
            seq: 1,
            payload: Payload::Text("hi".into()),
        }
        .encode()
        .unwrap();
        assert!(Message::decode(&good[..100]).is_err());
        let mut bad = good.clone();
        bad[0] = 9;
        assert!(Message::decode(&bad).is_err());
        let mut bad = good.clone();
        bad[9] = 77;
        assert!(Message::decode(&bad).is_err());
        let mut bad = good.clone();
        bad[10] = 0xff; // text length past the end
        bad[11] = 0xff;
        assert!(Message::decode(&bad).is_err());
        let mut bad = good.clone();
        bad[12] = 0xff; // not UTF-8
        assert!(Message::decode(&bad).is_err());
        let too_long = Message {
            seq: 0,
            payload: Payload::Text("y".repeat(MAX_TEXT_LEN + 1)),
        };
        assert_eq!(
            too_long.encode().unwrap_err(),
            WireError::TooLong(MAX_TEXT_LEN + 1)
        );
        let bad_queue = Message {
            seq: 0,
            payload: Payload::NewQueue {
                queue: "not a queue".into(),
                envelope_key: Secret32::new([1; 32]),
            },
        }
        .encode()
        .unwrap();
        assert!(Message::decode(&bad_queue).is_err());
    }

    /// Real Olm messages, pre-key and normal, at chain indices with long varints, for the
    /// shortest and longest payloads: every envelope is exactly MAX_BODY bytes.
    #[test]
    fn real_olm_messages_fit_and_every_body_has_the_same_length() {
        let mut alice = Account::new();
        let bob = Account::new();
        alice.generate_one_time_keys(1);
        let otk = *alice.one_time_keys().values().next().unwrap();
        let mut bob_session = bob
            .create_outbound_session(SessionConfig::version_1(), alice.curve25519_key(), otk)
            .unwrap();
        let key = Secret32::new([3; 32]);
        let mut lengths = Vec::new();
        let short = Message {
            seq: 0,
            payload: Payload::Text("a".into()),
        };
        let long = Message {
            seq: 1,
            payload: Payload::Text("\u{1F600}".repeat(MAX_TEXT_LEN / 4)),
        };
        let mut first = None;
        for m in [&short, &long] {
            let olm = bob_session.encrypt(m.encode().unwrap().as_slice()).unwrap();
            assert!(matches!(olm, OlmMessage::PreKey(_)));
            let (t, bytes) = olm.to_parts();
            assert!(bytes.len() <= MAX_OLM_LEN, "{}", bytes.len());
            let body = seal_envelope(&key, t as u8, &bytes).unwrap();
            lengths.push(body.len());
            first.get_or_insert(body);
        }
        // Alice answers, so Bob's next messages are normal messages; push the chain index
        // past 2^14 so its varint is long.
        let (t, bytes) = open_envelope(&key, first.as_ref().unwrap()).unwrap();
        let OlmMessage::PreKey(pk) = OlmMessage::from_parts(t.into(), &bytes).unwrap() else {
            panic!("expected a pre-key message")
        };
        let mut inbound = alice
            .create_inbound_session(SessionConfig::version_1(), bob.curve25519_key(), &pk)
            .unwrap();
        assert_eq!(
            Message::decode(&inbound.plaintext).unwrap(),
            short,
            "decrypts to what was sent"
        );
        let reply = inbound.session.encrypt([0u8; 16]).unwrap();
        bob_session.decrypt(&reply).unwrap();
        for _ in 0..20_000 {
            bob_session.encrypt([0u8; 1]).unwrap();
        }
        for m in [&short, &long] {
            let olm = bob_session.encrypt(m.encode().unwrap().as_slice()).unwrap();
            assert!(matches!(olm, OlmMessage::Normal(_)));
            let (t, bytes) = olm.to_parts();
            assert!(bytes.len() <= MAX_OLM_LEN);
            lengths.push(seal_envelope(&key, t as u8, &bytes).unwrap().len());
        }
        assert!(lengths.iter().all(|&l| l == MAX_BODY), "{lengths:?}");
    }

    #[test]
    fn envelopes_reject_tampering_and_wrong_keys() {
        let key = Secret32::new([1; 32]);
        let body = seal_envelope(&key, 1, b"olm bytes").unwrap();
        assert_eq!(body.len(), MAX_BODY);
        assert_eq!(
            open_envelope(&key, &body).unwrap(),
            (1, b"olm bytes".to_vec())
        );
        let mut bad = body.clone();
        bad[100] ^= 1;
        assert_eq!(open_envelope(&key, &bad), Err(WireError::Envelope));
        assert_eq!(
            open_envelope(&Secret32::new([2; 32]), &body),
            Err(WireError::Envelope)
        );
        assert_eq!(
            open_envelope(&key, &body[..MAX_BODY - 1]),
            Err(WireError::Malformed)
        );
        // Two seals of the same message differ (random nonce): a relay cannot match a
        // retried SEND to the first attempt.
        assert_ne!(seal_envelope(&key, 1, b"olm bytes").unwrap(), body);
        assert_eq!(
            seal_envelope(&key, 1, &vec![0; MAX_OLM_LEN + 1]),
            Err(WireError::OlmTooLong)
        );
    }

    #[test]
    fn loop_messages_are_full_size_and_open_only_as_loops_under_their_key() {
        let key = Secret32::new([3; 32]);
        let body = seal_loop(&key, 0xdead_beef).unwrap();
        assert_eq!(body.len(), MAX_BODY, "padded like every message");
        assert_eq!(open_loop(&key, &body), Some(0xdead_beef));
        assert_ne!(seal_loop(&key, 0xdead_beef).unwrap(), body, "random nonce");
        assert_eq!(open_loop(&Secret32::new([4; 32]), &body), None);
        // An ordinary message under the same key is not a loop.
        let olm = seal_envelope(&key, 1, &7u64.to_be_bytes()).unwrap();
        assert_eq!(open_loop(&key, &olm), None);
    }

    #[test]
    fn debug_shows_no_text_or_keys() {
        let m = Message {
            seq: 3,
            payload: Payload::Text("secret words".into()),
        };
        assert!(!format!("{m:?}").contains("secret"));
    }
}

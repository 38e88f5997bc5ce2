//! Commands (client → relay), responses (relay → client) and error codes.
//!
//! Each value encodes as one tag byte followed by its fields; the extent of a command is
//! given by its transmission, so decoders reject trailing bytes. Decoding a value proves
//! it well-formed: lengths are within their limits and keys are valid points.

use crate::address::{MAX_ADDRESS_LEN, RelayAddress};
use crate::codec::{Reader, put_long_bytes, put_short_bytes};
use crate::error::DecodeError;
use crate::ids::{MessageId, RecipientId, SenderId};
use crate::keys::{AuthPublicKey, DhPublicKey};
use crate::{MAX_BODY, TAG_LEN};

/// Longest queue-creation password.
pub const MAX_PASSWORD_LEN: usize = 64;

/// Length of the sealed transmission inside a FWD and of the sealed answer in a FWD
/// response. Fixed so the forwarding relay learns nothing from its size: a signed SEND of
/// [`MAX_BODY`] bytes plus the sealing overhead fits, and every sealed blob is padded to it.
pub const SEALED_LEN: usize = MAX_BODY + 256;

/// Largest sealed body in a MSG (a [`MAX_BODY`] body plus its AEAD tag).
pub const MAX_SEALED_BODY: usize = MAX_BODY + TAG_LEN;

/// SEND/MSG flag: the sender asks the recipient's client to notify its user.
pub const FLAG_NOTIFY: u8 = 0x01;

/// Every defined flag bit; other bits must be zero.
pub const FLAGS_DEFINED: u8 = FLAG_NOTIFY;

/// A request from a client to a relay.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// Create a queue. Unsigned (the queue does not exist yet) and sent without entity id.
    New {
        /// Key that will verify the recipient's signed commands.
        recipient_auth_key: AuthPublicKey,
        /// Recipient's X25519 key for the relay→recipient sealing of bodies.
        recipient_dh_key: DhPublicKey,
        /// Create password of a private relay (empty when none).
        password: Vec<u8>,
    },
    /// Recipient secures its queue with the sender's key.
    Key {
        /// Key that will verify the sender's SENDs.
        sender_key: AuthPublicKey,
    },
    /// Sender secures the queue with its own key (once; signed by that same key).
    SKey {
        /// Key that will verify the sender's SENDs.
        sender_key: AuthPublicKey,
    },
    /// Store a message in the queue.
    Send {
        /// Flag bits ([`FLAG_NOTIFY`]).
        flags: u8,
        /// The message body, at most [`MAX_BODY`] bytes.
        body: Vec<u8>,
    },
    /// Subscribe this session to the queue's messages.
    Sub,
    /// Fetch one message without subscribing.
    Get,
    /// Acknowledge (delete) a delivered message.
    Ack {
        /// The message being acknowledged.
        msg_id: MessageId,
    },
    /// Stop accepting messages.
    Off,
    /// Delete the queue and its messages.
    Del,
    /// Forward a sealed SEND/SKEY to another relay.
    Fwd {
        /// Destination relay.
        relay: RelayAddress,
        /// Transmission sealed to the destination's static key, exactly [`SEALED_LEN`] bytes.
        sealed: Vec<u8>,
    },
    /// Keep-alive.
    Ping,
    /// Cover traffic; discarded.
    Drop,
    /// Pace this session: the relay sends it a frame at each event of a Poisson process of
    /// mean gap `gap_ms` (cover when it has nothing else to send) and holds every answer for
    /// the next frame it sends; 0 turns pacing off. See `docs/protocol.md` § 9.2.
    Pace {
        /// Mean gap between the relay's frames to this session, milliseconds (0: off).
        gap_ms: u32,
    },
    /// Relay to relay: a sealed SEND/SKEY forwarded on a client's behalf. The receiving
    /// relay opens and executes it locally and never forwards it further.
    RFwd {
        /// Transmission sealed to this relay's static key, exactly [`SEALED_LEN`] bytes.
        sealed: Vec<u8>,
    },
}

/// An answer or event from a relay to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Response {
    /// Answer to NEW.
    Ids {
        /// Id for the recipient's commands.
        recipient_id: RecipientId,
        /// Id for the sender's commands.
        sender_id: SenderId,
        /// Relay's per-queue X25519 key for body sealing.
        relay_dh_key: DhPublicKey,
    },
    /// Success.
    Ok,
    /// A message (to GET, or pushed to a subscriber).
    Msg {
        /// Id to ACK.
        msg_id: MessageId,
        /// Receipt time at the relay, seconds since the Unix epoch, rounded down to the
        /// relay's granularity.
        timestamp: u64,
        /// Flags the sender set.
        flags: u8,
        /// Body sealed by the relay to the recipient's DH key (see [`crate::seal`]).
        sealed_body: Vec<u8>,
    },
    /// No message is available.
    NoMsg,
    /// The subscription ended (taken over by another session, or the queue was deleted).
    End,
    /// Answer to PING.
    Pong,
    /// Failure.
    Err(ErrorCode),
    /// Answer to FWD and RFWD: the destination's answer sealed back to the client,
    /// [`SEALED_LEN`] bytes.
    FwdAnswer {
        /// Sealed answer.
        sealed: Vec<u8>,
    },
    /// Cover traffic from the relay; discarded by clients.
    Drop,
}

/// Short error codes sent to clients. They say little on purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
#[repr(u8)]
pub enum ErrorCode {
    /// Missing, wrong or replayed signature, unknown entity, or wrong password. Takes the
    /// same work whether or not the queue exists.
    Auth = 1,
    /// The queue holds its maximum number of messages.
    Quota = 2,
    /// A body or field is too large.
    Large = 3,
    /// Malformed transmission.
    Syntax = 4,
    /// The command is not allowed here (e.g. SEND to a disabled queue, SKEY twice).
    Prohibited = 5,
    /// The relay refuses the queue (blocked by its operator).
    Blocked = 6,
    /// Internal error; nothing was changed.
    Internal = 7,
    /// A rate or resource limit was hit; retry later.
    Limited = 8,
    /// FWD: the destination relay could not be reached.
    Unreachable = 9,
    /// FWD: the destination did not answer in time.
    Timeout = 10,
    /// FWD: the destination presented a different key than its address pins.
    Identity = 11,
    /// FWD: this relay does not forward to that destination.
    FwdRefused = 12,
    /// A forwarded transmission was seen before (or has expired); it had no effect.
    Replay = 13,
    /// The message could not be stored durably (e.g. disk full); it was not accepted.
    Store = 14,
}

impl ErrorCode {
    /// Every code, in tag order.
    pub const ALL: [ErrorCode; 14] = [
        ErrorCode::Auth,
        ErrorCode::Quota,
        ErrorCode::Large,
        ErrorCode::Syntax,
        ErrorCode::Prohibited,
        ErrorCode::Blocked,
        ErrorCode::Internal,
        ErrorCode::Limited,
        ErrorCode::Unreachable,
        ErrorCode::Timeout,
        ErrorCode::Identity,
        ErrorCode::FwdRefused,
        ErrorCode::Replay,
        ErrorCode::Store,
    ];

    /// The code's name as written in the spec (also the metrics label).
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Auth => "AUTH",
            ErrorCode::Quota => "QUOTA",
            ErrorCode::Large => "LARGE",
            ErrorCode::Syntax => "SYNTAX",
            ErrorCode::Prohibited => "PROHIBITED",
            ErrorCode::Blocked => "BLOCKED",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::Limited => "LIMITED",
            ErrorCode::Unreachable => "UNREACHABLE",
            ErrorCode::Timeout => "TIMEOUT",
            ErrorCode::Identity => "IDENTITY",
            ErrorCode::FwdRefused => "FWD_REFUSED",
            ErrorCode::Replay => "REPLAY",
            ErrorCode::Store => "STORE",
        }
    }

    /// Parses a code byte.
    ///
    /// # Errors
    /// [`DecodeError::UnknownTag`] for an undefined code.
    pub fn from_u8(v: u8) -> Result<Self, DecodeError> {
        Self::ALL
            .into_iter()
            .find(|c| *c as u8 == v)
            .ok_or(DecodeError::UnknownTag(v))
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

mod tag {
    pub const NEW: u8 = 0x01;
    pub const KEY: u8 = 0x02;
    pub const SKEY: u8 = 0x03;
    pub const SEND: u8 = 0x04;
    pub const SUB: u8 = 0x05;
    pub const GET: u8 = 0x06;
    pub const ACK: u8 = 0x07;
    pub const OFF: u8 = 0x08;
    pub const DEL: u8 = 0x09;
    pub const FWD: u8 = 0x0a;
    pub const PING: u8 = 0x0b;
    pub const DROP: u8 = 0x0c;
    pub const RFWD: u8 = 0x0d;
    pub const PACE: u8 = 0x0e;

    pub const IDS: u8 = 0x81;
    pub const OK: u8 = 0x82;
    pub const MSG: u8 = 0x83;
    pub const NO_MSG: u8 = 0x84;
    pub const END: u8 = 0x85;
    pub const PONG: u8 = 0x86;
    pub const ERR: u8 = 0x87;
    pub const FWD_ANSWER: u8 = 0x88;
    pub const R_DROP: u8 = 0x8c;
}

/// An auth key carried in NEW, KEY or SKEY. A small-order point (the identity among them)
/// is rejected here: strict verification refuses every signature under it, so a queue
/// given one could never be used (`docs/protocol.md` § 9.1).
fn auth_key(r: &mut Reader<'_>) -> Result<AuthPublicKey, DecodeError> {
    let key = AuthPublicKey::from_bytes(&r.array()?)?;
    if key.is_small_order() {
        return Err(DecodeError::BadKey("small-order Ed25519 public key"));
    }
    Ok(key)
}

/// A `bytes16` sealed transmission of exactly [`SEALED_LEN`] bytes.
fn sealed_blob(r: &mut Reader<'_>) -> Result<Vec<u8>, DecodeError> {
    let sealed = r.long_bytes("sealed transmission", SEALED_LEN)?;
    if sealed.len() != SEALED_LEN {
        return Err(DecodeError::BadLength {
            field: "sealed transmission",
            len: sealed.len(),
        });
    }
    Ok(sealed.to_vec())
}

fn flags(r: &mut Reader<'_>) -> Result<u8, DecodeError> {
    let f = r.u8()?;
    if f & !FLAGS_DEFINED != 0 {
        return Err(DecodeError::InvalidValue("flags"));
    }
    Ok(f)
}

impl Command {
    /// Name as written in the spec (also the metrics label).
    pub fn name(&self) -> &'static str {
        match self {
            Command::New { .. } => "NEW",
            Command::Key { .. } => "KEY",
            Command::SKey { .. } => "SKEY",
            Command::Send { .. } => "SEND",
            Command::Sub => "SUB",
            Command::Get => "GET",
            Command::Ack { .. } => "ACK",
            Command::Off => "OFF",
            Command::Del => "DEL",
            Command::Fwd { .. } => "FWD",
            Command::Ping => "PING",
            Command::Drop => "DROP",
            Command::RFwd { .. } => "RFWD",
            Command::Pace { .. } => "PACE",
        }
    }

    /// Appends the encoding. Values built by callers must respect the field limits
    /// (`body.len() <= MAX_BODY`, `password.len() <= MAX_PASSWORD_LEN`,
    /// `sealed.len() == SEALED_LEN` in FWD and RFWD); [`Command::validate`] checks them.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Command::New {
                recipient_auth_key,
                recipient_dh_key,
                password,
            } => {
                out.push(tag::NEW);
                out.extend_from_slice(&recipient_auth_key.to_bytes());
                out.extend_from_slice(recipient_dh_key.as_bytes());
                put_short_bytes(out, password);
            }
            Command::Key { sender_key } => {
                out.push(tag::KEY);
                out.extend_from_slice(&sender_key.to_bytes());
            }
            Command::SKey { sender_key } => {
                out.push(tag::SKEY);
                out.extend_from_slice(&sender_key.to_bytes());
            }
            Command::Send { flags, body } => {
                out.push(tag::SEND);
                out.push(*flags);
                put_long_bytes(out, body);
            }
            Command::Sub => out.push(tag::SUB),
            Command::Get => out.push(tag::GET),
            Command::Ack { msg_id } => {
                out.push(tag::ACK);
                out.extend_from_slice(msg_id.as_bytes());
            }
            Command::Off => out.push(tag::OFF),
            Command::Del => out.push(tag::DEL),
            Command::Fwd { relay, sealed } => {
                out.push(tag::FWD);
                // u16 prefix: the longest canonical address (MAX_ADDRESS_LEN) exceeds 255.
                put_long_bytes(out, relay.to_string().as_bytes());
                put_long_bytes(out, sealed);
            }
            Command::Ping => out.push(tag::PING),
            Command::Drop => out.push(tag::DROP),
            Command::RFwd { sealed } => {
                out.push(tag::RFWD);
                put_long_bytes(out, sealed);
            }
            Command::Pace { gap_ms } => {
                out.push(tag::PACE);
                out.extend_from_slice(&gap_ms.to_be_bytes());
            }
        }
    }

    /// The encoding as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// Checks the field limits that [`Command::decode`] enforces, for values built locally.
    ///
    /// # Errors
    /// The same [`DecodeError`] decoding the encoded value would give.
    pub fn validate(&self) -> Result<(), DecodeError> {
        Self::decode(&self.to_bytes()).map(|_| ())
    }

    /// Decodes exactly one command from `bytes`.
    ///
    /// # Errors
    /// Unknown tag, truncation, trailing bytes, an over-long field or an invalid key.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let cmd = match r.u8()? {
            tag::NEW => Command::New {
                recipient_auth_key: auth_key(&mut r)?,
                recipient_dh_key: DhPublicKey(r.array()?),
                password: r.short_bytes("password", MAX_PASSWORD_LEN)?.to_vec(),
            },
            tag::KEY => Command::Key {
                sender_key: auth_key(&mut r)?,
            },
            tag::SKEY => Command::SKey {
                sender_key: auth_key(&mut r)?,
            },
            tag::SEND => Command::Send {
                flags: flags(&mut r)?,
                body: r.long_bytes("body", MAX_BODY)?.to_vec(),
            },
            tag::SUB => Command::Sub,
            tag::GET => Command::Get,
            tag::ACK => Command::Ack {
                msg_id: MessageId(r.array()?),
            },
            tag::OFF => Command::Off,
            tag::DEL => Command::Del,
            tag::FWD => {
                let text = r.long_bytes("relay address", MAX_ADDRESS_LEN)?;
                // Only the canonical text form is accepted, so every FWD has exactly one
                // encoding (decode ∘ encode is the identity on bytes).
                let relay = std::str::from_utf8(text)
                    .ok()
                    .and_then(|t| t.parse::<RelayAddress>().ok())
                    .filter(|a| a.to_string().as_bytes() == text)
                    .ok_or(DecodeError::InvalidValue("relay address"))?;
                Command::Fwd {
                    relay,
                    sealed: sealed_blob(&mut r)?,
                }
            }
            tag::PING => Command::Ping,
            tag::DROP => Command::Drop,
            tag::RFWD => Command::RFwd {
                sealed: sealed_blob(&mut r)?,
            },
            tag::PACE => Command::Pace { gap_ms: r.u32()? },
            t => return Err(DecodeError::UnknownTag(t)),
        };
        r.finish()?;
        Ok(cmd)
    }
}

impl Response {
    /// Name as written in the spec.
    pub fn name(&self) -> &'static str {
        match self {
            Response::Ids { .. } => "IDS",
            Response::Ok => "OK",
            Response::Msg { .. } => "MSG",
            Response::NoMsg => "NO_MSG",
            Response::End => "END",
            Response::Pong => "PONG",
            Response::Err(_) => "ERR",
            Response::FwdAnswer { .. } => "FWD_ANSWER",
            Response::Drop => "DROP",
        }
    }

    /// Appends the encoding (field limits as in [`Response::decode`]).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Response::Ids {
                recipient_id,
                sender_id,
                relay_dh_key,
            } => {
                out.push(tag::IDS);
                out.extend_from_slice(recipient_id.as_bytes());
                out.extend_from_slice(sender_id.as_bytes());
                out.extend_from_slice(relay_dh_key.as_bytes());
            }
            Response::Ok => out.push(tag::OK),
            Response::Msg {
                msg_id,
                timestamp,
                flags,
                sealed_body,
            } => {
                out.push(tag::MSG);
                out.extend_from_slice(msg_id.as_bytes());
                out.extend_from_slice(&timestamp.to_be_bytes());
                out.push(*flags);
                put_long_bytes(out, sealed_body);
            }
            Response::NoMsg => out.push(tag::NO_MSG),
            Response::End => out.push(tag::END),
            Response::Pong => out.push(tag::PONG),
            Response::Err(code) => {
                out.push(tag::ERR);
                out.push(*code as u8);
            }
            Response::FwdAnswer { sealed } => {
                out.push(tag::FWD_ANSWER);
                put_long_bytes(out, sealed);
            }
            Response::Drop => out.push(tag::R_DROP),
        }
    }

    /// The encoding as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// Decodes exactly one response from `bytes`.
    ///
    /// # Errors
    /// Unknown tag or error code, truncation, trailing bytes, an over-long field.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let resp = match r.u8()? {
            tag::IDS => Response::Ids {
                recipient_id: RecipientId(r.array()?),
                sender_id: SenderId(r.array()?),
                relay_dh_key: DhPublicKey(r.array()?),
            },
            tag::OK => Response::Ok,
            tag::MSG => Response::Msg {
                msg_id: MessageId(r.array()?),
                timestamp: r.u64()?,
                flags: flags(&mut r)?,
                sealed_body: r.long_bytes("sealed body", MAX_SEALED_BODY)?.to_vec(),
            },
            tag::NO_MSG => Response::NoMsg,
            tag::END => Response::End,
            tag::PONG => Response::Pong,
            tag::ERR => Response::Err(ErrorCode::from_u8(r.u8()?)?),
            tag::FWD_ANSWER => {
                let sealed = r.long_bytes("sealed answer", SEALED_LEN)?;
                if sealed.len() != SEALED_LEN {
                    return Err(DecodeError::BadLength {
                        field: "sealed answer",
                        len: sealed.len(),
                    });
                }
                Response::FwdAnswer {
                    sealed: sealed.to_vec(),
                }
            }
            tag::R_DROP => Response::Drop,
            t => return Err(DecodeError::UnknownTag(t)),
        };
        r.finish()?;
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_body_is_rejected_with_its_field() {
        let c = Command::Send {
            flags: 0,
            body: vec![0; MAX_BODY + 1],
        };
        assert_eq!(
            Command::decode(&c.to_bytes()),
            Err(DecodeError::TooLong {
                field: "body",
                len: MAX_BODY + 1,
                max: MAX_BODY
            })
        );
        assert!(c.validate().is_err());
    }

    #[test]
    fn unknown_tags_and_codes_are_errors() {
        assert_eq!(Command::decode(&[0x7f]), Err(DecodeError::UnknownTag(0x7f)));
        assert_eq!(
            Response::decode(&[0x02]),
            Err(DecodeError::UnknownTag(0x02))
        );
        assert_eq!(
            Response::decode(&[0x87, 99]),
            Err(DecodeError::UnknownTag(99))
        );
        assert!(Command::decode(&[]).is_err());
    }

    #[test]
    fn small_order_auth_keys_are_rejected_in_new_key_and_skey() {
        // The identity (y = 1) and the point of order 2 (y = -1).
        let identity = {
            let mut k = [0u8; 32];
            k[0] = 1;
            k
        };
        let order_two = {
            let mut k = [0xffu8; 32];
            k[0] = 0xec;
            k[31] = 0x7f;
            k
        };
        for key in [identity, order_two] {
            let mut new = vec![tag::NEW];
            new.extend_from_slice(&key);
            new.extend_from_slice(&[9; 32]);
            new.push(0);
            let mut key_cmd = vec![tag::KEY];
            key_cmd.extend_from_slice(&key);
            let mut skey = vec![tag::SKEY];
            skey.extend_from_slice(&key);
            for bytes in [new, key_cmd, skey] {
                assert_eq!(
                    Command::decode(&bytes),
                    Err(DecodeError::BadKey("small-order Ed25519 public key")),
                    "{bytes:02x?}"
                );
            }
        }
    }

    #[test]
    fn trailing_bytes_and_bad_flags_are_errors() {
        assert_eq!(
            Command::decode(&[0x05, 0]),
            Err(DecodeError::TrailingBytes(1))
        );
        assert_eq!(
            Command::decode(&[0x04, 0x80, 0, 0]),
            Err(DecodeError::InvalidValue("flags"))
        );
    }

    #[test]
    fn error_codes_round_trip() {
        for c in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_u8(c as u8), Ok(c));
            let r = Response::Err(c);
            assert_eq!(Response::decode(&r.to_bytes()), Ok(r));
        }
    }
}

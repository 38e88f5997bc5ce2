//! Sotto wire protocol, sans-IO.
//!
//! This crate owns everything two Sotto parties must agree on byte for byte: ids and keys,
//! relay and queue addresses, commands and responses, signed transmissions, the fixed-size
//! frames that carry them, the Noise NK + ML-KEM-768 handshake, the relay→recipient
//! sealing of message bodies, and the sealing of forwarded transmissions (`forward`). It performs no I/O and never reads the clock: sockets live in
//! `sotto-transport`, time is passed in by callers.
//!
//! The normative description is `docs/protocol.md`; its test vectors are checked by this
//! crate's tests.

pub mod address;
pub mod aead;
pub mod codec;
pub mod command;
pub mod error;
pub mod forward;
pub mod frame;
pub mod ids;
pub mod keys;
pub mod noise;
pub mod seal;
pub mod transmission;

pub use address::{AddressError, QueueAddress, RelayAddress};
pub use command::{Command, ErrorCode, Response};
pub use error::DecodeError;
pub use frame::{Frame, FrameBuilder};
pub use ids::{CorrId, EntityId, MessageId, RecipientId, SenderId};
pub use keys::{
    AuthPublicKey, AuthSecretKey, DhPublicKey, DhSecretKey, RelayPublicKey, RelayStaticKey,
};
pub use noise::{HandshakeError, Initiator, RecvCipher, Responder, SendCipher, Session};
pub use transmission::Transmission;

/// Protocol version carried in the Noise prologue. Parties of different versions fail the
/// handshake instead of misreading each other.
pub const PROTOCOL_VERSION: u16 = 1;

/// Length of every record on the wire after (and including) the handshake: Noise ciphertext
/// of [`FRAME_PLAINTEXT_LEN`] bytes plus its 16-byte tag.
pub const FRAME_LEN: usize = 16_384;

/// Length of the Poly1305 tag Noise appends to each record.
pub const TAG_LEN: usize = 16;

/// Plaintext carried by one frame: a transmission count, the transmissions, zero padding.
pub const FRAME_PLAINTEXT_LEN: usize = FRAME_LEN - TAG_LEN;

/// Largest message body a SEND may carry (15 KiB).
///
/// Chosen so that (a) a signed SEND, and a SEND sealed inside a FWD with the longest
/// relay address, always fit one frame; (b) a MSG carrying the sealed body fits one frame;
/// and (c) the relay's stored message record (id, timestamp, flags, body, encryption
/// overhead, ~100 bytes) stays below redb's 16 KiB page limit for values
/// (16384 − 8 − key length), which otherwise doubles page use and slows writes 2–3x.
/// Clients pad every body to exactly this size so relays never learn message lengths.
pub const MAX_BODY: usize = 15 * 1024;

/// Default UDP (QUIC) port of a relay when an address names none. Above 1024, so a relay
/// runs without privileges.
pub const DEFAULT_PORT: u16 = 5443;

/// ALPN protocol id negotiated in the QUIC/TLS layer.
pub const ALPN: &[u8] = b"sotto/1";

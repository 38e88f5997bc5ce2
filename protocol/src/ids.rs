//! Identifiers: queue ids, message ids and correlation ids.
//!
//! Queue and message ids are 24 random bytes. They compare in constant time (a relay must
//! not leak through timing how much of a guessed id matched) and their `Debug` form is
//! redacted so that a stray `{:?}` in a log line never prints one. The text form
//! (`Display`/`FromStr`) is unpadded base64url and is used only where an id must be shown
//! on purpose, e.g. in a queue address.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand_core::CryptoRngCore;
use subtle::ConstantTimeEq;

/// Length of queue and message ids.
pub const ID_LEN: usize = 24;

/// Length of a correlation id.
pub const CORR_ID_LEN: usize = 8;

/// Error parsing the base64url text form of an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a valid id: expected {ID_LEN} bytes in unpadded base64url")]
pub struct IdParseError;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy)]
        pub struct $name(pub [u8; ID_LEN]);

        impl $name {
            /// A fresh random id.
            pub fn random(rng: &mut impl CryptoRngCore) -> Self {
                let mut b = [0u8; ID_LEN];
                rng.fill_bytes(&mut b);
                Self(b)
            }

            /// The raw bytes.
            pub fn as_bytes(&self) -> &[u8; ID_LEN] {
                &self.0
            }

            /// Parses exactly [`ID_LEN`] bytes.
            ///
            /// # Errors
            /// [`crate::DecodeError::BadLength`] for any other length.
            pub fn from_slice(b: &[u8]) -> Result<Self, crate::DecodeError> {
                <[u8; ID_LEN]>::try_from(b)
                    .map(Self)
                    .map_err(|_| crate::DecodeError::BadLength { field: stringify!($name), len: b.len() })
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.0.ct_eq(&other.0).into()
            }
        }

        impl Eq for $name {}

        impl Hash for $name {
            fn hash<H: Hasher>(&self, state: &mut H) {
                self.0.hash(state);
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "(<redacted>)"))
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&URL_SAFE_NO_PAD.encode(self.0))
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                let v = URL_SAFE_NO_PAD.decode(s).map_err(|_| IdParseError)?;
                <[u8; ID_LEN]>::try_from(v.as_slice()).map(Self).map_err(|_| IdParseError)
            }
        }
    };
}

id_type!(
    /// Id a queue's recipient uses in its commands (KEY, SUB, GET, ACK, OFF, DEL).
    RecipientId
);
id_type!(
    /// Id a queue's sender uses (SKEY, SEND). Unrelated to the recipient id, so the two
    /// sides of a queue cannot be matched by id.
    SenderId
);
id_type!(
    /// Id of one stored message, unique within its queue; also the nonce of its sealing.
    MessageId
);
id_type!(
    /// The entity a transmission addresses, as it appears on the wire: a recipient or a
    /// sender id depending on the command.
    EntityId
);

impl From<RecipientId> for EntityId {
    fn from(v: RecipientId) -> Self {
        Self(v.0)
    }
}

impl From<SenderId> for EntityId {
    fn from(v: SenderId) -> Self {
        Self(v.0)
    }
}

impl From<EntityId> for RecipientId {
    fn from(v: EntityId) -> Self {
        Self(v.0)
    }
}

impl From<EntityId> for SenderId {
    fn from(v: EntityId) -> Self {
        Self(v.0)
    }
}

/// Correlation id: chosen by the client, echoed by the relay in the answer. All zero in
/// transmissions the relay sends on its own (MSG to a subscriber, END, cover).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CorrId(pub [u8; CORR_ID_LEN]);

impl CorrId {
    /// The id of unsolicited transmissions.
    pub const NONE: CorrId = CorrId([0; CORR_ID_LEN]);

    /// A correlation id from a counter (clients need only uniqueness per session).
    pub fn from_u64(v: u64) -> Self {
        Self(v.to_be_bytes())
    }

    /// The counter value.
    pub fn as_u64(&self) -> u64 {
        u64::from_be_bytes(self.0)
    }
}

impl fmt::Debug for CorrId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CorrId({})", self.as_u64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_round_trips_and_rejects_bad_input() {
        let id = RecipientId([7; ID_LEN]);
        let s = id.to_string();
        assert_eq!(s.len(), 32);
        assert_eq!(s.parse::<RecipientId>().unwrap(), id);
        assert!("abc".parse::<RecipientId>().is_err());
        assert!("!!!!".parse::<RecipientId>().is_err());
    }

    #[test]
    fn debug_never_shows_the_id() {
        let id = SenderId([0xab; ID_LEN]);
        let dbg = format!("{id:?}");
        assert!(!dbg.contains(&id.to_string()));
        assert!(dbg.contains("redacted"));
    }
}

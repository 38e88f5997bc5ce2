//! The one-line invitation: `sotto:` followed by base64url (no padding) of
//!
//! ```text
//! version        1 byte   = 1
//! invitation id  16 bytes   random; the accepting side echoes it in its first message
//! identity key   32 bytes   the inviter's Olm Curve25519 identity key (per contact)
//! one-time key   32 bytes   the inviter's Olm Curve25519 one-time key
//! envelope key   32 bytes   XChaCha20-Poly1305 key of the inviter's queue envelope
//! queue length   2 bytes    big-endian
//! queue          UTF-8      the inviter's queue address: sotto://<relay key>@<host>[:port]#<sender id>
//! ```
//!
//! Nothing else (no names). An invitation is a secret for one person: whoever uses it first
//! becomes the contact. Parsing is strict and every failure is a [`InvitationError`].

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sotto_protocol::QueueAddress;
use sotto_protocol::address::MAX_ADDRESS_LEN;

use super::secret::Secret32;

/// Prefix of every invitation.
pub const PREFIX: &str = "sotto:";

/// Invitation format version.
const VERSION: u8 = 1;

/// Fixed part: version, id, three keys, queue length.
const FIXED_LEN: usize = 1 + 16 + 32 + 32 + 32 + 2;

/// Longest queue address text (relay address, `#`, 32-character sender id).
const MAX_QUEUE_LEN: usize = MAX_ADDRESS_LEN + 1 + 32;

/// Why an invitation could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvitationError {
    /// It does not start with `sotto:` (or starts with `sotto://`, a relay address).
    #[error("an invitation starts with `sotto:` followed by base64url text")]
    Prefix,
    /// The text after the prefix is not base64url.
    #[error("the invitation is not valid base64url (was it cut or changed?)")]
    Encoding,
    /// A version this client does not understand.
    #[error("invitation version {0} is not supported by this client")]
    Version(u8),
    /// Too short, too long, or the lengths do not add up.
    #[error("the invitation is truncated or has extra data (was it copied whole?)")]
    Length,
    /// The queue address inside does not parse.
    #[error("the queue address inside the invitation is invalid")]
    Queue,
}

/// A parsed invitation.
#[derive(Clone, PartialEq, Eq)]
pub struct Invitation {
    /// Random id, echoed back in the accepting side's first message.
    pub id: [u8; 16],
    /// Inviter's Olm identity key (Curve25519).
    pub identity_key: [u8; 32],
    /// Inviter's Olm one-time key (Curve25519).
    pub one_time_key: [u8; 32],
    /// Envelope key of the inviter's queue.
    pub envelope_key: Secret32,
    /// Where the accepting side sends.
    pub queue: QueueAddress,
}

impl Invitation {
    /// The one-line text form.
    pub fn to_link(&self) -> String {
        let q = self.queue.to_string();
        let mut b = Vec::with_capacity(FIXED_LEN + q.len());
        b.push(VERSION);
        b.extend_from_slice(&self.id);
        b.extend_from_slice(&self.identity_key);
        b.extend_from_slice(&self.one_time_key);
        b.extend_from_slice(self.envelope_key.expose());
        // Queue addresses are at most MAX_QUEUE_LEN (< 65 536) bytes.
        let len = u16::try_from(q.len()).unwrap_or(u16::MAX);
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(q.as_bytes());
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(b))
    }

    /// Parses the text form (surrounding whitespace is ignored).
    ///
    /// # Errors
    /// An [`InvitationError`] naming what is wrong.
    pub fn parse(link: &str) -> Result<Self, InvitationError> {
        let link = link.trim();
        let rest = link.strip_prefix(PREFIX).ok_or(InvitationError::Prefix)?;
        if rest.starts_with("//") {
            return Err(InvitationError::Prefix);
        }
        if rest.len() > (FIXED_LEN + MAX_QUEUE_LEN) * 4 / 3 + 4 {
            return Err(InvitationError::Length);
        }
        let b = URL_SAFE_NO_PAD
            .decode(rest)
            .map_err(|_| InvitationError::Encoding)?;
        let (&version, _) = b.split_first().ok_or(InvitationError::Length)?;
        if version != VERSION {
            return Err(InvitationError::Version(version));
        }
        if b.len() < FIXED_LEN {
            return Err(InvitationError::Length);
        }
        let arr = |at: usize| -> Result<[u8; 32], InvitationError> {
            b.get(at..at + 32)
                .and_then(|s| <[u8; 32]>::try_from(s).ok())
                .ok_or(InvitationError::Length)
        };
        let id = b
            .get(1..17)
            .and_then(|s| <[u8; 16]>::try_from(s).ok())
            .ok_or(InvitationError::Length)?;
        let identity_key = arr(17)?;
        let one_time_key = arr(49)?;
        let envelope_key = Secret32::new(arr(81)?);
        let len = b
            .get(113..115)
            .and_then(|s| <[u8; 2]>::try_from(s).ok())
            .map(|s| usize::from(u16::from_be_bytes(s)))
            .ok_or(InvitationError::Length)?;
        let q = b.get(FIXED_LEN..).ok_or(InvitationError::Length)?;
        if q.len() != len || len > MAX_QUEUE_LEN {
            return Err(InvitationError::Length);
        }
        let queue = std::str::from_utf8(q)
            .ok()
            .and_then(|s| s.parse::<QueueAddress>().ok())
            .ok_or(InvitationError::Queue)?;
        Ok(Invitation {
            id,
            identity_key,
            one_time_key,
            envelope_key,
            queue,
        })
    }
}

impl std::fmt::Debug for Invitation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Invitation")
            .field("relay", &self.queue.relay.host)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Invitation {
        Invitation {
            id: [1; 16],
            identity_key: [2; 32],
            one_time_key: [3; 32],
            envelope_key: Secret32::new([4; 32]),
            queue: "sotto://AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8@relay.example:7000#BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcH"
                .parse()
                .unwrap(),
        }
    }

    #[test]
    fn round_trips() {
        let i = sample();
        let link = i.to_link();
        assert!(link.starts_with("sotto:"));
        assert!(!link.contains(char::is_whitespace));
        assert_eq!(Invitation::parse(&link).unwrap(), i);
        assert_eq!(Invitation::parse(&format!("  {link}\n")).unwrap(), i);
    }

    #[test]
    fn every_malformation_has_an_error() {
        let link = sample().to_link();
        assert_eq!(Invitation::parse("hello"), Err(InvitationError::Prefix));
        assert_eq!(
            Invitation::parse("sotto://AAAA@host"),
            Err(InvitationError::Prefix)
        );
        assert_eq!(
            Invitation::parse("sotto:!!!!"),
            Err(InvitationError::Encoding)
        );
        assert_eq!(Invitation::parse("sotto:"), Err(InvitationError::Length));
        let raw = URL_SAFE_NO_PAD.decode(&link[6..]).unwrap();
        let cut = format!("sotto:{}", URL_SAFE_NO_PAD.encode(&raw[..raw.len() - 3]));
        assert_eq!(Invitation::parse(&cut), Err(InvitationError::Length));
        assert_eq!(
            Invitation::parse(&format!("{link}AAAA")),
            Err(InvitationError::Length)
        );
        let v2 = format!("sotto:{}", URL_SAFE_NO_PAD.encode([2u8; 200]));
        assert_eq!(Invitation::parse(&v2), Err(InvitationError::Version(2)));
        let mut raw = URL_SAFE_NO_PAD.decode(&link[6..]).unwrap();
        let last = raw.len() - 40;
        raw[last] = b'!';
        assert_eq!(
            Invitation::parse(&format!("sotto:{}", URL_SAFE_NO_PAD.encode(&raw))),
            Err(InvitationError::Queue)
        );
        assert_eq!(
            Invitation::parse(&format!("sotto:{}", "A".repeat(5000))),
            Err(InvitationError::Length)
        );
    }
}

//! Frames: the fixed-size plaintext of every record after the handshake.
//!
//! ```text
//! u16 count | count × (u16 length | transmission) | zero padding to FRAME_PLAINTEXT_LEN
//! ```
//!
//! A frame with one DROP transmission is cover traffic. Every frame is exactly
//! [`FRAME_PLAINTEXT_LEN`] bytes, so after encryption every record is [`crate::FRAME_LEN`].

use crate::FRAME_PLAINTEXT_LEN;
use crate::codec::Reader;
use crate::command::{Command, Response};
use crate::error::DecodeError;
use crate::ids::CorrId;
use crate::transmission::Transmission;

/// Bytes of the count header.
const COUNT_LEN: usize = 2;
/// Bytes of each transmission's length prefix.
const LEN_PREFIX: usize = 2;

/// Greedy batching of transmissions into one frame.
#[derive(Debug, Clone)]
pub struct FrameBuilder {
    buf: Vec<u8>,
    count: u16,
}

impl Default for FrameBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameBuilder {
    /// An empty frame.
    pub fn new() -> Self {
        let mut buf = Vec::with_capacity(FRAME_PLAINTEXT_LEN);
        buf.extend_from_slice(&[0, 0]);
        Self { buf, count: 0 }
    }

    /// Whether `t` would fit in what is left of this frame.
    pub fn fits(&self, t: &Transmission) -> bool {
        self.buf.len() + LEN_PREFIX + t.encoded_len() <= FRAME_PLAINTEXT_LEN
    }

    /// Whether a transmission of this length would fit in an empty frame.
    pub fn fits_empty(t: &Transmission) -> bool {
        COUNT_LEN + LEN_PREFIX + t.encoded_len() <= FRAME_PLAINTEXT_LEN
    }

    /// Adds `t` if it fits; returns whether it was added.
    pub fn push(&mut self, t: &Transmission) -> bool {
        if !self.fits(t) || self.count == u16::MAX {
            return false;
        }
        let len = t.encoded_len();
        // `fits` bounds len by FRAME_PLAINTEXT_LEN < u16::MAX.
        self.buf.extend_from_slice(&(len as u16).to_be_bytes());
        t.encode(&mut self.buf);
        self.count += 1;
        true
    }

    /// Number of transmissions added.
    pub fn len(&self) -> usize {
        usize::from(self.count)
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The padded plaintext, exactly [`FRAME_PLAINTEXT_LEN`] bytes.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf[..COUNT_LEN].copy_from_slice(&self.count.to_be_bytes());
        self.buf.resize(FRAME_PLAINTEXT_LEN, 0);
        self.buf
    }

    /// A client cover frame: one DROP.
    pub fn cover_command() -> Vec<u8> {
        let mut b = Self::new();
        b.push(&Transmission::command(CorrId::NONE, None, &Command::Drop));
        b.finish()
    }

    /// A relay cover frame: one DROP response.
    pub fn cover_response() -> Vec<u8> {
        let mut b = Self::new();
        b.push(&Transmission::response(CorrId::NONE, None, &Response::Drop));
        b.finish()
    }
}

/// Decoding of frame plaintext.
#[derive(Debug, Clone, Copy)]
pub struct Frame;

impl Frame {
    /// Splits a frame's plaintext into its transmissions.
    ///
    /// # Errors
    /// Wrong plaintext length, truncated or malformed transmissions, non-zero padding.
    pub fn decode(plaintext: &[u8]) -> Result<Vec<Transmission>, DecodeError> {
        if plaintext.len() != FRAME_PLAINTEXT_LEN {
            return Err(DecodeError::WrongFrameLength(plaintext.len()));
        }
        let mut r = Reader::new(plaintext);
        let count = r.u16()?;
        let mut out = Vec::with_capacity(usize::from(count).min(1024));
        for _ in 0..count {
            let len = usize::from(r.u16()?);
            out.push(Transmission::decode(r.take(len)?)?);
        }
        if r.rest().iter().any(|b| *b != 0) {
            return Err(DecodeError::BadPadding);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MAX_BODY;
    use crate::ids::EntityId;
    use crate::keys::AuthSecretKey;

    #[test]
    fn batches_greedily_and_decodes_in_order() {
        let mut b = FrameBuilder::new();
        let mut n = 0u64;
        loop {
            let t = Transmission::command(CorrId::from_u64(n), None, &Command::Ping);
            if !b.push(&t) {
                break;
            }
            n += 1;
        }
        // 2 (count) + n * (2 + 1 + 8 + 1 + 1) <= 16368
        assert_eq!(n, (FRAME_PLAINTEXT_LEN as u64 - 2) / 13);
        let ts = Frame::decode(&b.finish()).unwrap();
        assert_eq!(ts.len() as u64, n);
        assert!(
            ts.iter()
                .enumerate()
                .all(|(i, t)| t.corr_id.as_u64() == i as u64)
        );
    }

    #[test]
    fn a_signed_max_send_fits_one_frame() {
        let t = Transmission::signed(
            CorrId::from_u64(1),
            Some(EntityId([1; 24])),
            &Command::Send {
                flags: 0,
                body: vec![0xaa; MAX_BODY],
            },
            &AuthSecretKey::from_bytes(&[2; 32]),
            &[0; 32],
        );
        assert!(FrameBuilder::fits_empty(&t));
    }

    #[test]
    fn rejects_wrong_length_padding_and_truncation() {
        assert_eq!(
            Frame::decode(&[0; 10]),
            Err(DecodeError::WrongFrameLength(10))
        );
        let mut p = FrameBuilder::new().finish();
        *p.last_mut().unwrap() = 1;
        assert_eq!(Frame::decode(&p), Err(DecodeError::BadPadding));
        let mut p = FrameBuilder::new().finish();
        p[1] = 1; // count 1, then a zero-length transmission
        assert!(Frame::decode(&p).is_err());
        let mut p = FrameBuilder::new().finish();
        p[0] = 0xff; // count far larger than the frame can hold
        p[1] = 0xff;
        assert!(Frame::decode(&p).is_err());
    }

    #[test]
    fn cover_frames_have_full_length_and_decode() {
        let c = FrameBuilder::cover_command();
        assert_eq!(c.len(), FRAME_PLAINTEXT_LEN);
        let ts = Frame::decode(&c).unwrap();
        assert_eq!(ts[0].decode_command().unwrap(), Command::Drop);
        let ts = Frame::decode(&FrameBuilder::cover_response()).unwrap();
        assert_eq!(ts[0].decode_response().unwrap(), Response::Drop);
    }
}

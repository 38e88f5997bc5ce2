//! Decoding errors shared by every wire structure.
//!
//! Errors here describe malformed input precisely for logs and tests; what is sent to a
//! peer is only an [`crate::ErrorCode`], which says much less.

/// Why bytes could not be decoded into a protocol value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ended before the value did.
    #[error("truncated input: needed {needed} more bytes")]
    Truncated {
        /// How many more bytes the field needed.
        needed: usize,
    },
    /// Bytes remained after a complete value.
    #[error("{0} trailing bytes after a complete value")]
    TrailingBytes(usize),
    /// A tag byte names no known command, response or error code.
    #[error("unknown tag 0x{0:02x}")]
    UnknownTag(u8),
    /// A length field exceeds the limit for that field.
    #[error("{field} is {len} bytes, more than the limit of {max}")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its declared length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A field has a length that is not allowed.
    #[error("{field} has invalid length {len}")]
    BadLength {
        /// Which field.
        field: &'static str,
        /// Its declared length.
        len: usize,
    },
    /// A key field does not hold a valid key.
    #[error("invalid {0}")]
    BadKey(&'static str),
    /// A record is not exactly [`crate::FRAME_LEN`] bytes.
    #[error("record is {0} bytes, every record must be exactly FRAME_LEN")]
    WrongFrameLength(usize),
    /// Padding after the last transmission is not all zero.
    #[error("non-zero frame padding")]
    BadPadding,
    /// A field holds a value outside its domain (e.g. a flag bit that is not defined).
    #[error("invalid value in {0}")]
    InvalidValue(&'static str),
}

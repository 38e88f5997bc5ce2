//! [`TransportError`]: why a connection could not be made, or failed.
//!
//! Owns the error type of the whole crate's transport layer and its stable metrics names
//! ([`TransportError::kind`]); it does not decide what to do about an error (retry, fall back
//! to TCP — that is [`crate::dial`]'s choice, through [`TransportError::udp_may_be_blocked`]).

use sotto_protocol::{FRAME_LEN, FRAME_PLAINTEXT_LEN, HandshakeError};

use crate::socks5::ProxyError;

/// Why a connection could not be made, or failed.
///
/// Display texts are meant for users and operators: they say what happened and, where
/// possible, what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The relay's host name did not resolve to any address.
    #[error("could not resolve the relay's host name; check the address and your network")]
    Resolve,
    /// The QUIC connection could not be established.
    #[error("relay unreachable ({0}); check the address and that the relay is running")]
    Connect(#[source] quinn::ConnectionError),
    /// The TCP connection could not be established.
    #[error(
        "relay unreachable over TCP ({0}); check the address, that the relay accepts TCP \
         (`listen_tcp`), and your network"
    )]
    TcpConnect(#[source] std::io::Error),
    /// The TLS handshake over TCP failed.
    #[error("TLS handshake with the relay failed ({0})")]
    TlsHandshake(#[source] std::io::Error),
    /// The SOCKS5 proxy did not connect us to the relay.
    #[error("{0}")]
    Proxy(#[source] ProxyError),
    /// The relay is a Tor onion service and no SOCKS5 proxy is configured. The client never
    /// dials (or looks up) an onion name directly.
    #[error(
        "this relay is a Tor onion service (.onion): it can only be reached through Tor; \
         run Tor and pass --socks5 127.0.0.1:9050 (Tor's SOCKS port)"
    )]
    OnionNeedsProxy,
    /// Neither transport reached the relay (automatic transport choice).
    #[error("relay unreachable over UDP (QUIC: {quic}) and over TCP ({tcp})")]
    Unreachable {
        /// Why QUIC failed.
        quic: Box<TransportError>,
        /// Why TCP failed.
        tcp: Box<TransportError>,
    },
    /// The connection or handshake did not complete in time.
    #[error("relay did not answer in time; it may be down, or the network may block UDP")]
    Timeout,
    /// The Noise handshake failed for a reason other than the relay's identity.
    #[error("handshake failed: {0}")]
    Handshake(#[source] HandshakeError),
    /// The relay did not prove that it holds the key pinned in its address.
    #[error(
        "wrong relay key: the relay at this address does not hold the key in its address \
         (or speaks another protocol version); check the address, or ask the relay's \
         operator for the current one"
    )]
    IdentityMismatch,
    /// A record after the handshake failed to decrypt, or the nonce counter ran out.
    #[error("invalid record from the peer: {0}")]
    Record(#[source] HandshakeError),
    /// The peer ended the stream in the middle of a record.
    #[error("the peer ended the stream inside a record ({0} of {FRAME_LEN} bytes)")]
    TruncatedRecord(usize),
    /// The peer began a record and did not finish it within the receiver's record timeout
    /// ([`FrameReceiver::set_record_timeout`](crate::FrameReceiver::set_record_timeout)).
    #[error("the peer did not finish a record in time ({0} of {FRAME_LEN} bytes)")]
    RecordTimeout(usize),
    /// A local I/O error (for example binding the UDP socket).
    #[error("network I/O failed: {0}")]
    Io(#[source] std::io::Error),
    /// The QUIC connection was lost after it was established.
    #[error("connection to the relay lost ({0})")]
    ConnectionLost(#[source] quinn::ConnectionError),
    /// The TCP connection failed after it was established.
    #[error("connection to the relay lost ({0})")]
    Lost(#[source] std::io::Error),
    /// The connection or stream was closed (locally, or by the peer in an orderly way).
    #[error("connection closed")]
    Closed,
    /// TLS could not be configured.
    #[error("TLS configuration failed: {0}")]
    Tls(String),
    /// The QUIC options are inconsistent, or quinn refused them.
    #[error("invalid QUIC configuration: {0}")]
    Config(String),
    /// A frame passed to [`FrameSender::send_frame`](crate::FrameSender::send_frame) is not [`FRAME_PLAINTEXT_LEN`] bytes.
    #[error("frame plaintext is {0} bytes, must be {FRAME_PLAINTEXT_LEN}")]
    FrameLength(usize),
}

impl TransportError {
    /// A short, stable name of the error kind, suitable as a metrics label (never contains
    /// addresses or other identifying data).
    pub fn kind(&self) -> &'static str {
        match self {
            TransportError::Resolve => "resolve",
            TransportError::Connect(_) | TransportError::TcpConnect(_) => "connect",
            TransportError::TlsHandshake(_) => "tls",
            TransportError::Proxy(_) => "proxy",
            TransportError::OnionNeedsProxy => "onion_needs_proxy",
            TransportError::Unreachable { .. } => "unreachable",
            TransportError::Timeout => "timeout",
            TransportError::Handshake(_) => "handshake",
            TransportError::IdentityMismatch => "identity",
            TransportError::Record(_) => "record",
            TransportError::TruncatedRecord(_) => "truncated",
            TransportError::RecordTimeout(_) => "record_timeout",
            TransportError::Io(_) => "io",
            TransportError::ConnectionLost(_) | TransportError::Lost(_) => "lost",
            TransportError::Closed => "closed",
            TransportError::Tls(_) => "tls",
            TransportError::Config(_) => "config",
            TransportError::FrameLength(_) => "frame_length",
        }
    }

    /// Whether an automatic transport choice should try TCP after this QUIC failure: the
    /// relay did not answer over UDP (as opposed to answering with the wrong key, or the
    /// name not resolving, which TCP would not change).
    pub(crate) fn udp_may_be_blocked(&self) -> bool {
        matches!(
            self,
            TransportError::Timeout
                | TransportError::Connect(_)
                | TransportError::ConnectionLost(_)
                | TransportError::Io(_)
                | TransportError::Closed
        )
    }

    pub(crate) fn from_connection(e: quinn::ConnectionError) -> Self {
        match e {
            quinn::ConnectionError::LocallyClosed
            | quinn::ConnectionError::ApplicationClosed(_) => TransportError::Closed,
            e => TransportError::ConnectionLost(e),
        }
    }

    pub(crate) fn from_read(e: quinn::ReadError) -> Self {
        match e {
            quinn::ReadError::ConnectionLost(e) => Self::from_connection(e),
            _ => TransportError::Closed,
        }
    }

    pub(crate) fn from_write(e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::ConnectionLost(e) => Self::from_connection(e),
            _ => TransportError::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_texts_tell_the_user_what_to_do() {
        assert!(
            TransportError::IdentityMismatch
                .to_string()
                .contains("wrong relay key")
        );
        assert!(
            TransportError::Timeout
                .to_string()
                .contains("did not answer")
        );
        assert_eq!(TransportError::IdentityMismatch.kind(), "identity");
    }
}

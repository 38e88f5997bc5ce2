//! [`Link`]: a handle on the connection under a session, whichever the byte pipe.
//!
//! Owns closing, waiting for the close, the peer address and byte counts of a QUIC connection
//! or a TLS-over-TCP socket. It does not carry records ([`crate::framed`]).

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::VarInt;

use crate::CLOSE_PROTOCOL;
use crate::tcp;

/// Which byte pipe carries a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinkKind {
    /// QUIC over UDP.
    Quic,
    /// TLS 1.3 over TCP (possibly through a SOCKS5 proxy).
    Tcp,
}

impl std::fmt::Display for LinkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LinkKind::Quic => "QUIC",
            LinkKind::Tcp => "TCP",
        })
    }
}

/// A handle on the connection under a session, whichever the transport: for closing it,
/// waiting for it to close, its peer address and its byte counts. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Link(pub(crate) LinkInner);

#[derive(Debug, Clone)]
pub(crate) enum LinkInner {
    Quic(quinn::Connection),
    Tcp(Arc<tcp::TcpShared>),
}

/// Bytes a connection has carried, as the network sees them (UDP payloads for QUIC, TLS
/// bytes for TCP).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
}

impl Link {
    /// The transport.
    pub fn kind(&self) -> LinkKind {
        match &self.0 {
            LinkInner::Quic(_) => LinkKind::Quic,
            LinkInner::Tcp(_) => LinkKind::Tcp,
        }
    }

    /// The QUIC connection, for QUIC links (its detailed statistics, datagram counts, …).
    pub fn as_quic(&self) -> Option<&quinn::Connection> {
        match &self.0 {
            LinkInner::Quic(c) => Some(c),
            LinkInner::Tcp(_) => None,
        }
    }

    /// Closes the connection now. QUIC sends `code` ([`CLOSE_NORMAL`](crate::CLOSE_NORMAL) or
    /// [`CLOSE_PROTOCOL`]) and `reason`; TCP has no close codes and shuts the socket down in
    /// both directions (for an orderly end of the stream use [`FrameSender::shutdown`](crate::FrameSender::shutdown)
    /// first). Idempotent.
    pub fn close(&self, code: VarInt, reason: &[u8]) {
        match &self.0 {
            LinkInner::Quic(c) => c.close(code, reason),
            LinkInner::Tcp(t) => t.close(),
        }
    }

    /// The peer's address (for a connection through a SOCKS5 proxy: the proxy's).
    pub fn remote_address(&self) -> SocketAddr {
        match &self.0 {
            LinkInner::Quic(c) => c.remote_address(),
            LinkInner::Tcp(t) => t.remote(),
        }
    }

    /// Resolves when the connection is closed: for QUIC, by either side; for TCP, once it
    /// was closed here, a read or write on it failed, or both halves were dropped.
    pub async fn closed(&self) {
        match &self.0 {
            LinkInner::Quic(c) => {
                c.closed().await;
            }
            LinkInner::Tcp(t) => t.closed().await,
        }
    }

    /// Bytes carried so far.
    pub fn stats(&self) -> LinkStats {
        match &self.0 {
            LinkInner::Quic(c) => {
                let s = c.stats();
                LinkStats {
                    bytes_sent: s.udp_tx.bytes,
                    bytes_received: s.udp_rx.bytes,
                }
            }
            LinkInner::Tcp(t) => LinkStats {
                bytes_sent: t.sent(),
                bytes_received: t.received(),
            },
        }
    }

    pub(crate) fn close_protocol(&self) {
        self.close(VarInt::from_u32(CLOSE_PROTOCOL), b"");
    }
}

impl From<quinn::Connection> for Link {
    fn from(c: quinn::Connection) -> Self {
        Link(LinkInner::Quic(c))
    }
}

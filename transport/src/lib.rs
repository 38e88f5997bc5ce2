//! The framed connection shared by the relay, the client and the load tester: Noise over
//! QUIC, or over TLS + TCP.
//!
//! This module owns the sockets: QUIC configuration (quinn over rustls/ring), the second
//! byte pipe for Tor and UDP-hostile networks (TLS 1.3 over TCP, [`tcp`], optionally through
//! a SOCKS5 proxy, [`socks5`]), the Noise handshake, and the fixed-size encrypted records
//! that follow it. Both pipes carry exactly the same bytes: one session implementation,
//! two transports. It does not know what frames contain (that is
//! [`sotto_protocol::frame`]) and keeps no per-session state beyond the two ciphers.
//!
//! # Wire shape
//!
//! Over QUIC the client opens one bidirectional stream; over TCP the TLS stream is the
//! pipe. The client writes Noise message 1 ([`FRAME_LEN`](sotto_protocol::FRAME_LEN) bytes), reads message 2
//! ([`FRAME_LEN`](sotto_protocol::FRAME_LEN) bytes); after that every record in each direction is exactly
//! [`FRAME_LEN`](sotto_protocol::FRAME_LEN) bytes of ciphertext. A short record, a record that fails to decrypt or a
//! stream that ends inside a record closes the connection ([`CLOSE_PROTOCOL`] over QUIC; a
//! TCP connection is shut down, TCP has no close codes).
//!
//! # Choosing a transport
//!
//! [`dial`] picks the pipe from [`DialOptions`]: QUIC, TCP, or automatically QUIC first and
//! TCP when UDP gets no answer within [`DialOptions::quic_fallback_after`] (the QUIC attempt
//! keeps running, and whichever completes first is used; the switch is logged at `info`).
//! With a SOCKS5 proxy every connection is TCP through the proxy, and the proxy resolves the
//! relay's host name. A `.onion` host is never dialled without a proxy and never looked up
//! locally ([`TransportError::OnionNeedsProxy`]).
//!
//! A relay that cannot read message 1 (the client pinned another key, speaks another
//! protocol version, or sent garbage) still answers with [`FRAME_LEN`](sotto_protocol::FRAME_LEN) random bytes shaped
//! like message 2. The client's only signal is then that message 2 does not decrypt, which
//! it reports as [`TransportError::IdentityMismatch`]; a prober learns no more than that.
//!
//! # QUIC settings and why
//!
//! - **The TLS certificate is not the identity.** Relays present a self-signed certificate
//!   ([`self_signed_cert`]); the relay is authenticated by the Noise handshake against the
//!   key pinned in its address. The client therefore skips certificate *chain* validation,
//!   but still checks the TLS 1.3 `CertificateVerify` signature with the ring provider
//!   (`rustls::crypto::verify_tls13_signature`), so the TLS layer is at least a well-formed,
//!   key-confirmed TLS 1.3 handshake.
//! - **No SNI.** The client passes the relay's resolved IP address as the TLS server name;
//!   rustls sends no `server_name` extension for IP addresses, so the ClientHello does not
//!   name the host the user dials.
//! - **0-RTT off, no resumption, no address-validation tokens.** 0-RTT data can be replayed
//!   by a network attacker, and session tickets and `NEW_TOKEN` tokens are identifiers a
//!   relay could use to link a client's connections to each other. The server sets
//!   `max_early_data_size = 0`, sends no tickets and no tokens; the client disables
//!   resumption and keeps no token store.
//! - **Spin bit off** (`allow_spin(false)`): the latency spin bit lets on-path observers
//!   measure the RTT of a connection, which helps locate its endpoints.
//! - **Datagrams padded to the MTU** (`pad_to_mtu`, on by default on both ends): without it a
//!   16 KiB record is 12 datagrams of which the last is short, so an observer sees where every
//!   record ends, and ACK-only datagrams are tiny. With it every 1-RTT datagram, ACK-only
//!   ones included, is the current MTU.
//! - **The padding stall and the initial window.** quinn counts *padded* ACK-only packets as
//!   bytes in flight, yet nothing acknowledges them until the peer sends an ACK of its own.
//!   On the receiving side of a bulk stream those packets can fill a default-sized congestion
//!   window; the receiver then cannot send `MAX_STREAM_DATA`, the sender runs out of credit
//!   and the connection freezes until the idle timeout (measured: 8 runs in 10 with default
//!   settings). A large initial congestion window ([`QuicOptions::initial_window`], default
//!   256 KiB, ≥ 200 000 bytes was measured to fix it) leaves room for the ACK-only packets
//!   between two of the peer's bundled ACKs. The tests under `tests/transport.rs` run bulk
//!   streams in both directions, and one way only, with padding on both ends. (With quinn-proto
//!   0.11.19 and these stream windows those tests also passed with a 14 720-byte window on the
//!   development machine, so they guard against regressions rather than reproduce the stall.)
//! - **MTU.** The default is the safe choice on unknown paths: `initial_mtu = min_mtu = 1200`
//!   with MTU discovery on. Datagrams then grow as discovery proceeds (1200 → … → 1452 on
//!   Ethernet), so datagram sizes change early in a connection, and loss probes are clamped
//!   to `min_mtu`. [`QuicOptions::uniform_mtu`] fixes `initial_mtu = min_mtu` with discovery
//!   off, so every datagram has the same size (e.g. 1452); the trade-off is no fallback when
//!   a path's MTU is smaller than that: connections there fail instead of shrinking.
//! - **Idle timeout and keep-alive** close dead connections and keep NAT bindings open.
//! - **Bounded buffers.** The session's one stream has a receive window of
//!   [`QuicOptions::stream_window`] bytes and the connection's send buffer is the same size,
//!   so a connection buffers at most about twice that in quinn (2 MiB by default) plus
//!   packets in flight. Each side lets its peer open one bidirectional stream (only the
//!   client does) and no unidirectional ones; unreliable datagrams are disabled.
//!
//! TLS over TCP uses the same TLS settings (certificate not the identity, no SNI at all,
//! TLS 1.3 only, ALPN `sotto/1`, no resumption); see [`tcp`] for how records map to TLS
//! records and how connections close.
//!
//! The TLS layer uses X25519 only: the ring provider has no post-quantum hybrid group. The
//! Noise handshake above it mixes ML-KEM-768 into the session keys, which is what protects
//! recorded traffic against a future quantum adversary.

pub mod client;
mod dial;
mod error;
mod framed;
mod handshake;
mod link;
mod quic;
pub mod socks5;
pub mod tcp;
mod tls;

pub use client::{ClientError, ClientOptions, Pushed, QueueCredentials, RelayClient};
pub use dial::{DialOptions, TransportChoice, dial};
pub use error::TransportError;
pub use framed::{FrameReceiver, FrameSender, FramedConnection};
pub use link::{Link, LinkKind, LinkStats};
pub use quic::{
    QUIC_MIN_MTU, QuicOptions, accept, client_config, client_endpoint, connect, connect_with,
    server_config, transport_config,
};
pub use socks5::{BadProxyAddress, ProxyError, Socks5Proxy};
pub use tcp::{TcpAcceptor, accept_tcp, connect_tcp};
pub use tls::self_signed_cert;

/// Application close code of an orderly shutdown.
pub const CLOSE_NORMAL: u32 = 0;

/// Application close code for a protocol violation: a record of the wrong length, a record
/// that fails to decrypt, a failed handshake or an undecodable frame. Says nothing more, on
/// purpose.
pub const CLOSE_PROTOCOL: u32 = 1;

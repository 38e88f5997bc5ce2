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
//! pipe. The client writes Noise message 1 ([`FRAME_LEN`] bytes), reads message 2
//! ([`FRAME_LEN`] bytes); after that every record in each direction is exactly
//! [`FRAME_LEN`] bytes of ciphertext. A short record, a record that fails to decrypt or a
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
//! protocol version, or sent garbage) still answers with [`FRAME_LEN`] random bytes shaped
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

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, MtuDiscoveryConfig, TransportConfig, VarInt};
use rand::rngs::OsRng;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use sotto_protocol::noise::KEM_CT_LEN;
use sotto_protocol::{
    ALPN, FRAME_LEN, FRAME_PLAINTEXT_LEN, HandshakeError, Initiator, RecvCipher, RelayAddress,
    RelayPublicKey, RelayStaticKey, Responder, SendCipher, Session,
};

pub mod socks5;
pub mod tcp;

pub use socks5::{BadProxyAddress, ProxyError, Socks5Proxy};
pub use tcp::TcpAcceptor;

/// Application close code of an orderly shutdown.
pub const CLOSE_NORMAL: u32 = 0;

/// Application close code for a protocol violation: a record of the wrong length, a record
/// that fails to decrypt, a failed handshake or an undecodable frame. Says nothing more, on
/// purpose.
pub const CLOSE_PROTOCOL: u32 = 1;

/// Smallest UDP payload QUIC allows (and quinn's default MTU).
pub const QUIC_MIN_MTU: u16 = 1200;

/// Tunables of the QUIC layer, shared by both ends. See the module documentation for why
/// each setting matters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicOptions {
    /// Close a connection after this long without any packet from the peer.
    pub idle_timeout: Duration,
    /// Send a keep-alive (an ack-eliciting padded packet) after this long without sending.
    /// Must be shorter than `idle_timeout`.
    pub keep_alive: Duration,
    /// Pad every 1-RTT datagram to the current MTU so datagram sizes reveal nothing.
    pub pad_to_mtu: bool,
    /// UDP payload size at the start of a connection (at least [`QUIC_MIN_MTU`]).
    pub initial_mtu: u16,
    /// UDP payload size the path is assumed to carry in every case; loss probes use it.
    /// At least [`QUIC_MIN_MTU`], at most `initial_mtu`.
    pub min_mtu: u16,
    /// Probe for a larger MTU (up to 1452) during the connection.
    pub mtu_discovery: bool,
    /// Initial congestion window in bytes (Cubic). Must be large enough that padded ACK-only
    /// packets do not fill it (see the module documentation); at least 200 000.
    pub initial_window: u64,
    /// Receive window of the session's stream and size of the connection's send buffer, in
    /// bytes. Bounds what one connection buffers (about twice this) and the throughput of
    /// one connection (this much per round trip).
    pub stream_window: u64,
}

impl Default for QuicOptions {
    fn default() -> Self {
        Self {
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(10),
            pad_to_mtu: true,
            initial_mtu: QUIC_MIN_MTU,
            min_mtu: QUIC_MIN_MTU,
            mtu_discovery: true,
            initial_window: 256 * 1024,
            stream_window: 1024 * 1024,
        }
    }
}

impl QuicOptions {
    /// Smallest accepted [`QuicOptions::initial_window`]: below this the padding stall was
    /// measured to occur.
    pub const MIN_INITIAL_WINDOW: u64 = 200_000;

    /// Smallest accepted [`QuicOptions::stream_window`]: four records.
    pub const MIN_STREAM_WINDOW: u64 = 4 * FRAME_LEN as u64;

    /// Defaults with a fixed MTU: `initial_mtu = min_mtu = mtu`, no MTU discovery, so every
    /// padded datagram of a connection has the same size. Fails on paths whose MTU is smaller.
    pub fn uniform_mtu(mtu: u16) -> Self {
        Self {
            initial_mtu: mtu,
            min_mtu: mtu,
            mtu_discovery: false,
            ..Self::default()
        }
    }

    /// Checks that the options are consistent.
    ///
    /// # Errors
    /// [`TransportError::Config`] naming the offending setting.
    pub fn validate(&self) -> Result<(), TransportError> {
        let bad = |what: &str| Err(TransportError::Config(what.to_owned()));
        if self.min_mtu < QUIC_MIN_MTU {
            return bad("min_mtu must be at least 1200");
        }
        if self.initial_mtu < self.min_mtu {
            return bad("initial_mtu must be at least min_mtu");
        }
        if self.idle_timeout.is_zero() || IdleTimeout::try_from(self.idle_timeout).is_err() {
            return bad("idle_timeout must be positive and below 2^62 ms");
        }
        if self.keep_alive.is_zero() || self.keep_alive >= self.idle_timeout {
            return bad("keep_alive must be positive and shorter than idle_timeout");
        }
        if self.initial_window < Self::MIN_INITIAL_WINDOW {
            return bad("initial_window must be at least 200000 bytes");
        }
        if self.stream_window < Self::MIN_STREAM_WINDOW
            || VarInt::from_u64(self.stream_window).is_err()
        {
            return bad("stream_window must be at least four records (65536 bytes)");
        }
        Ok(())
    }
}

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
    /// A frame passed to [`FrameSender::send_frame`] is not [`FRAME_PLAINTEXT_LEN`] bytes.
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
    fn udp_may_be_blocked(&self) -> bool {
        matches!(
            self,
            TransportError::Timeout
                | TransportError::Connect(_)
                | TransportError::ConnectionLost(_)
                | TransportError::Io(_)
                | TransportError::Closed
        )
    }

    fn from_connection(e: quinn::ConnectionError) -> Self {
        match e {
            quinn::ConnectionError::LocallyClosed
            | quinn::ConnectionError::ApplicationClosed(_) => TransportError::Closed,
            e => TransportError::ConnectionLost(e),
        }
    }

    fn from_read(e: quinn::ReadError) -> Self {
        match e {
            quinn::ReadError::ConnectionLost(e) => Self::from_connection(e),
            _ => TransportError::Closed,
        }
    }

    fn from_write(e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::ConnectionLost(e) => Self::from_connection(e),
            _ => TransportError::Closed,
        }
    }
}

/// Generates a self-signed TLS certificate for a relay: `(certificate DER, PKCS#8 key DER)`.
///
/// The certificate only satisfies TLS; clients do not validate it (see the module docs).
/// `hostname` becomes its subject alternative name.
///
/// # Errors
/// If rcgen cannot create the key or the certificate (for example an invalid name).
pub fn self_signed_cert(hostname: &str) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let ck = rcgen::generate_simple_self_signed(vec![hostname.to_owned()])?;
    Ok((ck.cert.der().to_vec(), ck.key_pair.serialize_der()))
}

fn provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    // One group keeps ClientHellos uniform; ring has no post-quantum hybrid to prefer.
    p.kx_groups = vec![rustls::crypto::ring::kx_group::X25519];
    Arc::new(p)
}

/// The relay's TLS settings, for QUIC and for TCP: its certificate, ALPN, TLS 1.3 only, no
/// 0-RTT, no session tickets, no resumption.
fn tls_server_config(
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig, TransportError> {
    let tls_err = |e: rustls::Error| TransportError::Tls(e.to_string());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_single_cert(vec![cert], key)
        .map_err(tls_err)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    tls.send_tls13_tickets = 0;
    tls.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(tls)
}

/// The client's TLS settings, for QUIC and for TCP: any certificate (TLS 1.3 signature
/// still verified), ALPN, TLS 1.3 only, no 0-RTT, no resumption, no SNI.
fn tls_client_config() -> Result<rustls::ClientConfig, TransportError> {
    let provider = provider();
    let verifier = Arc::new(AnyCertificate {
        provider: provider.clone(),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TransportError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.enable_early_data = false;
    tls.resumption = rustls::client::Resumption::disabled();
    // QUIC passes an IP literal as server name (no SNI either way); over TCP through a
    // proxy the client does not know the relay's address, so SNI is simply off.
    tls.enable_sni = false;
    Ok(tls)
}

/// The QUIC transport parameters both ends use.
///
/// Exposed so a caller can adjust a setting [`QuicOptions`] does not cover and install the
/// result with `transport_config` on a quinn client or server config.
///
/// # Errors
/// [`TransportError::Config`] if the options are inconsistent.
pub fn transport_config(opts: &QuicOptions) -> Result<TransportConfig, TransportError> {
    opts.validate()?;
    let idle = IdleTimeout::try_from(opts.idle_timeout)
        .map_err(|e| TransportError::Config(e.to_string()))?;
    let window =
        VarInt::from_u64(opts.stream_window).map_err(|e| TransportError::Config(e.to_string()))?;
    let mut cubic = quinn::congestion::CubicConfig::default();
    cubic.initial_window(opts.initial_window);
    let mut t = TransportConfig::default();
    t.max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(opts.keep_alive))
        .allow_spin(false)
        .pad_to_mtu(opts.pad_to_mtu)
        .initial_mtu(opts.initial_mtu)
        .min_mtu(opts.min_mtu)
        .mtu_discovery_config(opts.mtu_discovery.then(MtuDiscoveryConfig::default))
        .congestion_controller_factory(Arc::new(cubic))
        // The client opens the session's single stream; the relay opens none.
        .max_concurrent_bidi_streams(VarInt::from_u32(1))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .stream_receive_window(window)
        .receive_window(window)
        .send_window(opts.stream_window)
        .datagram_receive_buffer_size(None);
    Ok(t)
}

/// A QUIC server configuration for a relay: the given certificate, ALPN
/// [`sotto_protocol::ALPN`], TLS 1.3 only, no 0-RTT, no session tickets, no address
/// validation tokens, and [`transport_config`].
///
/// The relay may further set limits on the result (`max_incoming`, `migration`, …).
///
/// # Errors
/// [`TransportError::Tls`] for an unusable certificate or key, [`TransportError::Config`]
/// for inconsistent options.
pub fn server_config(
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
    opts: &QuicOptions,
) -> Result<quinn::ServerConfig, TransportError> {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der));
    let tls = tls_server_config(CertificateDer::from(cert_der), key)?;
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(Arc::new(transport_config(opts)?));
    let mut tokens = quinn::ValidationTokenConfig::default();
    tokens.sent(0).log(Arc::new(quinn::NoneTokenLog));
    server.validation_token_config(tokens);
    Ok(server)
}

/// The QUIC client configuration: any certificate (TLS 1.3 signature still verified), ALPN
/// [`sotto_protocol::ALPN`], no 0-RTT, no resumption, no token store, [`transport_config`].
///
/// # Errors
/// As [`server_config`].
pub fn client_config(opts: &QuicOptions) -> Result<quinn::ClientConfig, TransportError> {
    let tls = tls_client_config()?;
    let crypto = QuicClientConfig::try_from(tls).map_err(|e| TransportError::Tls(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(transport_config(opts)?));
    client.token_store(Arc::new(quinn::NoneTokenStore));
    Ok(client)
}

/// A client endpoint bound to `bind` (e.g. `0.0.0.0:0`) with [`client_config`] installed as
/// its default. Must be called inside a tokio runtime.
///
/// # Errors
/// [`TransportError::Io`] if the socket cannot be bound, or as [`client_config`].
pub fn client_endpoint(
    bind: SocketAddr,
    opts: &QuicOptions,
) -> Result<quinn::Endpoint, TransportError> {
    let config = client_config(opts)?;
    let mut endpoint = quinn::Endpoint::client(bind).map_err(TransportError::Io)?;
    endpoint.set_default_client_config(config);
    Ok(endpoint)
}

/// Accepts any server certificate, but still verifies that the TLS 1.3 handshake was signed
/// by the key in the certificate presented. The relay's identity is checked by Noise.
#[derive(Debug)]
struct AnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The certificate is self-signed and is not the relay's identity (DESIGN.md).
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is enabled; QUIC requires it.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

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
pub struct Link(LinkInner);

#[derive(Debug, Clone)]
enum LinkInner {
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

    /// Closes the connection now. QUIC sends `code` ([`CLOSE_NORMAL`] or
    /// [`CLOSE_PROTOCOL`]) and `reason`; TCP has no close codes and shuts the socket down in
    /// both directions (for an orderly end of the stream use [`FrameSender::shutdown`]
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

    fn close_protocol(&self) {
        self.close(VarInt::from_u32(CLOSE_PROTOCOL), b"");
    }
}

impl From<quinn::Connection> for Link {
    fn from(c: quinn::Connection) -> Self {
        Link(LinkInner::Quic(c))
    }
}

/// An established session: the connection, the two halves of its record stream and the
/// Noise handshake hash (which signed commands bind).
#[derive(Debug)]
pub struct FramedConnection {
    /// The connection (for closing it, its stats, or waiting for it to close).
    pub connection: Link,
    /// Writes encrypted records.
    pub sender: FrameSender,
    /// Reads and decrypts records.
    pub receiver: FrameReceiver,
    /// The Noise handshake hash, identical on both ends and unique per session.
    pub handshake_hash: [u8; 32],
}

impl FramedConnection {
    fn new(writer: Writer, reader: Reader, connection: Link, session: Session) -> Self {
        FramedConnection {
            sender: FrameSender {
                writer,
                cipher: session.send,
            },
            receiver: FrameReceiver {
                reader,
                cipher: session.recv,
                connection: connection.clone(),
            },
            connection,
            handshake_hash: session.handshake_hash,
        }
    }
}

/// The sending byte pipe of a session.
enum Writer {
    Quic(quinn::SendStream),
    Tcp(tcp::TcpWriter),
}

impl Writer {
    /// Writes one whole record (waits while the send buffer is full).
    async fn write_record(&mut self, record: &[u8]) -> Result<(), TransportError> {
        match self {
            Writer::Quic(s) => s
                .write_all(record)
                .await
                .map_err(TransportError::from_write),
            Writer::Tcp(w) => w.write_record(record).await,
        }
    }

    fn finish(&mut self) -> Result<(), TransportError> {
        match self {
            Writer::Quic(s) => s.finish().map_err(|_| TransportError::Closed),
            Writer::Tcp(w) => w.finish(),
        }
    }

    async fn shutdown(&mut self) -> Result<(), TransportError> {
        match self {
            Writer::Quic(s) => s.finish().map_err(|_| TransportError::Closed),
            Writer::Tcp(w) => w.shutdown().await,
        }
    }
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Writer::Quic(s) => f.debug_tuple("Quic").field(s).finish(),
            Writer::Tcp(_) => f.write_str("Tcp"),
        }
    }
}

/// The receiving byte pipe of a session.
enum Reader {
    Quic(quinn::RecvStream),
    Tcp(tcp::TcpReader),
}

impl Reader {
    /// Reads exactly one record into `buf`. `Ok(false)` on an orderly end before the first
    /// byte.
    async fn read_record(&mut self, buf: &mut [u8]) -> Result<bool, TransportError> {
        match self {
            Reader::Quic(stream) => match stream.read_exact(buf).await {
                Ok(()) => Ok(true),
                Err(quinn::ReadExactError::FinishedEarly(0)) => Ok(false),
                Err(quinn::ReadExactError::FinishedEarly(n)) => {
                    Err(TransportError::TruncatedRecord(n))
                }
                Err(quinn::ReadExactError::ReadError(e)) => Err(TransportError::from_read(e)),
            },
            Reader::Tcp(r) => r.read_record(buf).await,
        }
    }

    /// Reads one record into a buffer that is allocated only once the record's first bytes
    /// have arrived, so that a session waiting for its peer holds no record buffer (16 KiB
    /// of an idle relay session's ≈ 72 KiB, measured with 10 000 idle sessions; see
    /// `docs/benchmarks.md`). `Ok(None)` on an orderly end before the first byte.
    async fn read_record_owned(&mut self) -> Result<Option<Vec<u8>>, TransportError> {
        match self {
            Reader::Quic(stream) => {
                let first = match stream.read_chunk(FRAME_LEN, true).await {
                    Ok(Some(chunk)) => chunk.bytes,
                    Ok(None) => return Ok(None),
                    Err(e) => return Err(TransportError::from_read(e)),
                };
                let n = first.len();
                let mut buf = vec![0u8; FRAME_LEN];
                // `read_chunk` returns at most `FRAME_LEN` bytes, so both slices exist.
                let (head, rest) = buf.split_at_mut(n.min(FRAME_LEN));
                head.copy_from_slice(first.get(..head.len()).unwrap_or_default());
                drop(first);
                match stream.read_exact(rest).await {
                    Ok(()) => Ok(Some(buf)),
                    Err(quinn::ReadExactError::FinishedEarly(k)) => {
                        Err(TransportError::TruncatedRecord(n + k))
                    }
                    Err(quinn::ReadExactError::ReadError(e)) => Err(TransportError::from_read(e)),
                }
            }
            Reader::Tcp(r) => {
                let mut first = [0u8; 1];
                if !r.read_record(&mut first).await? {
                    return Ok(None);
                }
                let mut buf = vec![0u8; FRAME_LEN];
                let [b0] = first;
                if let Some(b) = buf.first_mut() {
                    *b = b0;
                }
                r.fill(&mut buf, 1).await?;
                Ok(Some(buf))
            }
        }
    }

    /// Waits until the peer ends the connection (after a decoy message 2).
    async fn wait_for_peer_close(&mut self, link: &Link) {
        match self {
            Reader::Quic(_) => link.closed().await,
            Reader::Tcp(r) => {
                let mut scratch = vec![0u8; FRAME_LEN];
                while let Ok(true) = r.read_record(&mut scratch).await {}
            }
        }
    }
}

impl std::fmt::Debug for Reader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reader::Quic(s) => f.debug_tuple("Quic").field(s).finish(),
            Reader::Tcp(_) => f.write_str("Tcp"),
        }
    }
}

/// Sending half of a session: encrypts frames and writes them as [`FRAME_LEN`]-byte records.
#[derive(Debug)]
pub struct FrameSender {
    writer: Writer,
    cipher: SendCipher,
}

impl FrameSender {
    /// Encrypts `plaintext` (exactly [`FRAME_PLAINTEXT_LEN`] bytes, e.g. from
    /// [`sotto_protocol::FrameBuilder::finish`]) and writes the [`FRAME_LEN`]-byte record.
    ///
    /// Waits while the connection's send buffer is full (backpressure).
    ///
    /// # Errors
    /// [`TransportError::FrameLength`] for a wrong-sized plaintext (nothing is written),
    /// [`TransportError::Record`] if the nonce counter is exhausted,
    /// [`TransportError::Closed`] / [`TransportError::ConnectionLost`] /
    /// [`TransportError::Lost`] when the connection is gone.
    pub async fn send_frame(&mut self, plaintext: Vec<u8>) -> Result<(), TransportError> {
        if plaintext.len() != FRAME_PLAINTEXT_LEN {
            return Err(TransportError::FrameLength(plaintext.len()));
        }
        let mut buf = plaintext;
        self.cipher
            .encrypt_in_place(&mut buf)
            .map_err(TransportError::Record)?;
        debug_assert_eq!(buf.len(), FRAME_LEN);
        self.writer.write_record(&buf).await
    }

    /// Ends the stream after the records written so far (the peer's
    /// [`FrameReceiver::recv_frame`] then returns `Ok(None)`). Synchronous: over TCP the
    /// TLS `close_notify` is sent by a background task; prefer [`FrameSender::shutdown`]
    /// where the caller can wait.
    ///
    /// # Errors
    /// [`TransportError::Closed`] if the stream was already finished or reset.
    pub fn finish(&mut self) -> Result<(), TransportError> {
        self.writer.finish()
    }

    /// As [`FrameSender::finish`], and waits until the end of the stream has been handed to
    /// the network (over TCP: `close_notify` written and the sending direction shut down),
    /// so that closing the [`Link`] right after it cannot cut it off.
    ///
    /// # Errors
    /// As [`FrameSender::finish`], or a write error.
    pub async fn shutdown(&mut self) -> Result<(), TransportError> {
        self.writer.shutdown().await
    }
}

/// Receiving half of a session: reads [`FRAME_LEN`]-byte records and decrypts them.
#[derive(Debug)]
pub struct FrameReceiver {
    reader: Reader,
    cipher: RecvCipher,
    connection: Link,
}

impl FrameReceiver {
    /// Reads exactly one record and returns its [`FRAME_PLAINTEXT_LEN`]-byte plaintext;
    /// `Ok(None)` when the peer finished the stream at a record boundary.
    ///
    /// Cancel-safety: not cancel-safe (a cancelled call may have consumed part of a record);
    /// drive it from one task.
    ///
    /// # Errors
    /// [`TransportError::TruncatedRecord`] if the stream ends inside a record,
    /// [`TransportError::Record`] if a record fails to decrypt — both close the connection
    /// with [`CLOSE_PROTOCOL`], as the protocol requires; [`TransportError::Closed`] /
    /// [`TransportError::ConnectionLost`] / [`TransportError::Lost`] when the connection is
    /// gone.
    pub async fn recv_frame(&mut self) -> Result<Option<Vec<u8>>, TransportError> {
        let mut buf = match self.reader.read_record_owned().await {
            Ok(Some(buf)) => buf,
            Ok(None) => return Ok(None),
            Err(e) => {
                if matches!(e, TransportError::TruncatedRecord(_)) {
                    self.connection.close_protocol();
                }
                return Err(e);
            }
        };
        if let Err(e) = self.cipher.decrypt_in_place(&mut buf) {
            self.connection.close_protocol();
            return Err(TransportError::Record(e));
        }
        Ok(Some(buf))
    }
}

/// Client side of the Noise handshake over an open pipe.
async fn initiate(
    writer: &mut Writer,
    reader: &mut Reader,
    key: &RelayPublicKey,
) -> Result<Session, TransportError> {
    let (initiator, msg1) = Initiator::start(key, &mut OsRng).map_err(TransportError::Handshake)?;
    writer.write_record(&msg1).await?;
    let mut msg2 = vec![0u8; FRAME_LEN];
    if !reader.read_record(&mut msg2).await? {
        return Err(TransportError::Closed);
    }
    initiator.finish(&msg2).map_err(|e| match e {
        // Only the pinned key's holder can produce a message 2 that decrypts.
        HandshakeError::Decrypt => TransportError::IdentityMismatch,
        e => TransportError::Handshake(e),
    })
}

enum AcceptFailure {
    /// Fail and close at once.
    Plain(TransportError),
    /// A decoy message 2 was sent; wait (bounded) for the client to close.
    Decoyed(HandshakeError),
}

impl From<TransportError> for AcceptFailure {
    fn from(e: TransportError) -> Self {
        AcceptFailure::Plain(e)
    }
}

/// Relay side of the Noise handshake over an open pipe: message 1 is read whole (exactly
/// [`FRAME_LEN`] bytes) before any cryptography.
async fn respond(
    writer: &mut Writer,
    reader: &mut Reader,
    key: &RelayStaticKey,
) -> Result<Session, AcceptFailure> {
    let mut msg1 = vec![0u8; FRAME_LEN];
    if !reader.read_record(&mut msg1).await? {
        return Err(TransportError::TruncatedRecord(0).into());
    }
    match Responder::respond(key, &msg1, &mut OsRng) {
        Ok((session, msg2)) => {
            writer.write_record(&msg2).await?;
            Ok(session)
        }
        Err(e) => {
            send_decoy(writer).await;
            Err(AcceptFailure::Decoyed(e))
        }
    }
}

/// Runs [`respond`] until `deadline` and turns the outcome into a session, closing the
/// connection on failure (after letting the client read a decoy, see [`accept`]).
async fn respond_until(
    link: Link,
    mut writer: Writer,
    mut reader: Reader,
    key: &RelayStaticKey,
    deadline: tokio::time::Instant,
) -> Result<FramedConnection, TransportError> {
    let result = tokio::time::timeout_at(deadline, respond(&mut writer, &mut reader, key))
        .await
        .unwrap_or(Err(AcceptFailure::Plain(TransportError::Timeout)));
    match result {
        Ok(session) => Ok(FramedConnection::new(writer, reader, link, session)),
        Err(AcceptFailure::Plain(e)) => {
            link.close_protocol();
            Err(e)
        }
        Err(AcceptFailure::Decoyed(e)) => {
            // Let the client read the decoy and close first: closing now could discard it
            // before the client's application read it, and the client would see a closed
            // connection instead of a message 2 that fails to decrypt.
            let _ = tokio::time::timeout_at(deadline, reader.wait_for_peer_close(&link)).await;
            link.close_protocol();
            Err(TransportError::Handshake(e))
        }
    }
}

/// Answers a message 1 that failed (another relay key, another protocol version, garbage)
/// with random bytes shaped like a message 2. A client then fails exactly as it would
/// against an impostor — its message 2 does not decrypt — and reports
/// [`TransportError::IdentityMismatch`]; nothing else tells the two apart.
async fn send_decoy(writer: &mut Writer) {
    use rand::RngCore as _;
    let mut decoy = vec![0u8; FRAME_LEN];
    OsRng.fill_bytes(&mut decoy);
    // The ephemeral key after the KEM ciphertext is an X25519 public key, whose top bit is
    // always clear.
    if let Some(b) = decoy.get_mut(KEM_CT_LEN + 31) {
        *b &= 0x7f;
    }
    if writer.write_record(&decoy).await.is_ok() {
        let _ = writer.shutdown().await;
    }
}

/// Picks the address to dial: the first one of the endpoint's address family, else the first.
fn choose_address(endpoint: &quinn::Endpoint, addrs: &[SocketAddr]) -> Option<SocketAddr> {
    let v6 = endpoint.local_addr().map(|a| a.is_ipv6()).unwrap_or(false);
    addrs
        .iter()
        .find(|a| a.is_ipv6() == v6)
        .or_else(|| addrs.first())
        .copied()
}

/// Connects to `relay` over QUIC: resolves its host, opens a QUIC connection and the session
/// stream, and runs the Noise handshake against the key pinned in the address.
///
/// `timeout` bounds the whole operation. On any failure the QUIC connection is closed.
///
/// # Errors
/// [`TransportError::OnionNeedsProxy`] for a `.onion` host (never looked up),
/// [`TransportError::Resolve`], [`TransportError::Connect`], [`TransportError::Timeout`],
/// [`TransportError::IdentityMismatch`] when the relay does not hold the pinned key,
/// [`TransportError::Handshake`] for other handshake failures, [`TransportError::Config`]
/// if the endpoint has no client configuration.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    relay: &RelayAddress,
    timeout: Duration,
) -> Result<FramedConnection, TransportError> {
    connect_with(endpoint, None, relay, timeout).await
}

/// As [`connect`], with `config` (e.g. from [`client_config`]) instead of the endpoint's
/// default client configuration when it is `Some`.
///
/// # Errors
/// As [`connect`].
pub async fn connect_with(
    endpoint: &quinn::Endpoint,
    config: Option<quinn::ClientConfig>,
    relay: &RelayAddress,
    timeout: Duration,
) -> Result<FramedConnection, TransportError> {
    if relay.host.is_onion() {
        return Err(TransportError::OnionNeedsProxy);
    }
    let mut dialled: Option<quinn::Connection> = None;
    let result = tokio::time::timeout(
        timeout,
        connect_inner(endpoint, config, relay, &mut dialled),
    )
    .await;
    let result = result.unwrap_or(Err(TransportError::Timeout));
    if let (Err(_), Some(c)) = (&result, dialled) {
        Link::from(c).close_protocol();
    }
    result
}

async fn connect_inner(
    endpoint: &quinn::Endpoint,
    config: Option<quinn::ClientConfig>,
    relay: &RelayAddress,
    dialled: &mut Option<quinn::Connection>,
) -> Result<FramedConnection, TransportError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(relay.host_port())
        .await
        .map_err(|_| TransportError::Resolve)?
        .collect();
    let addr = choose_address(endpoint, &addrs).ok_or(TransportError::Resolve)?;
    // An IP address as server name: rustls then sends no SNI.
    let server_name = ip_server_name(addr.ip());
    let connecting = match config {
        Some(c) => endpoint.connect_with(c, addr, &server_name),
        None => endpoint.connect(addr, &server_name),
    }
    .map_err(|e| TransportError::Config(e.to_string()))?;
    let connection = connecting.await.map_err(TransportError::Connect)?;
    *dialled = Some(connection.clone());
    let (send, recv) = connection
        .open_bi()
        .await
        .map_err(TransportError::from_connection)?;
    let (mut writer, mut reader) = (Writer::Quic(send), Reader::Quic(recv));
    let session = initiate(&mut writer, &mut reader, &relay.key).await?;
    Ok(FramedConnection::new(
        writer,
        reader,
        Link::from(connection),
        session,
    ))
}

/// Connects to `relay` over TLS + TCP on [`RelayAddress::tcp_port`] — through `proxy` when
/// given (the proxy resolves the host name; nothing is looked up locally), else directly —
/// and runs the Noise handshake. `timeout` bounds the whole operation.
///
/// # Errors
/// [`TransportError::OnionNeedsProxy`] for a `.onion` host without a proxy,
/// [`TransportError::Proxy`], [`TransportError::Resolve`], [`TransportError::TcpConnect`],
/// [`TransportError::TlsHandshake`], [`TransportError::Timeout`],
/// [`TransportError::IdentityMismatch`], [`TransportError::Handshake`].
pub async fn connect_tcp(
    relay: &RelayAddress,
    proxy: Option<&Socks5Proxy>,
    timeout: Duration,
) -> Result<FramedConnection, TransportError> {
    if relay.host.is_onion() && proxy.is_none() {
        return Err(TransportError::OnionNeedsProxy);
    }
    tokio::time::timeout(timeout, async {
        let stream = tcp::open(relay, proxy).await?;
        let (writer, reader, shared) = tcp::client_tls(stream).await?;
        let link = Link(LinkInner::Tcp(shared));
        let (mut writer, mut reader) = (Writer::Tcp(writer), Reader::Tcp(reader));
        match initiate(&mut writer, &mut reader, &relay.key).await {
            Ok(session) => Ok(FramedConnection::new(writer, reader, link, session)),
            Err(e) => {
                link.close_protocol();
                Err(e)
            }
        }
    })
    .await
    .unwrap_or(Err(TransportError::Timeout))
}

/// Which transport a client uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum TransportChoice {
    /// QUIC, and TLS over TCP when UDP gets no answer (see [`dial`]).
    #[default]
    Auto,
    /// QUIC only.
    Quic,
    /// TLS over TCP only.
    Tcp,
}

impl std::fmt::Display for TransportChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportChoice::Auto => "auto",
            TransportChoice::Quic => "quic",
            TransportChoice::Tcp => "tcp",
        })
    }
}

impl FromStr for TransportChoice {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(TransportChoice::Auto),
            "quic" => Ok(TransportChoice::Quic),
            "tcp" => Ok(TransportChoice::Tcp),
            _ => Err(format!("unknown transport `{s}`: use auto, quic or tcp")),
        }
    }
}

/// How [`dial`] reaches a relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialOptions {
    /// QUIC, TCP, or QUIC with TCP fallback.
    pub transport: TransportChoice,
    /// Route every connection through this SOCKS5 proxy (Tor), over TCP.
    pub socks5: Option<Socks5Proxy>,
    /// With [`TransportChoice::Auto`]: how long QUIC may go unanswered before TCP is tried
    /// alongside it (at most half of `timeout`, so that TCP gets time too).
    pub quic_fallback_after: Duration,
    /// Bound on the whole attempt (resolving, connecting, handshakes).
    pub timeout: Duration,
}

impl Default for DialOptions {
    fn default() -> Self {
        Self {
            transport: TransportChoice::Auto,
            socks5: None,
            quic_fallback_after: Duration::from_secs(3),
            timeout: Duration::from_secs(10),
        }
    }
}

/// Connects to `relay` as `opts` say:
///
/// - with a SOCKS5 proxy: TLS over TCP through the proxy ([`connect_tcp`]), whatever the
///   transport choice (QUIC cannot go through SOCKS5; choosing it with a proxy is an error);
/// - a `.onion` host without a proxy is refused ([`TransportError::OnionNeedsProxy`]);
/// - [`TransportChoice::Quic`] / [`TransportChoice::Tcp`]: that transport only;
/// - [`TransportChoice::Auto`]: QUIC; if it has not completed after
///   [`DialOptions::quic_fallback_after`] (or failed in a way that suggests UDP is blocked),
///   TCP too, while the QUIC attempt goes on; the first to complete wins. Using TCP is
///   logged at `info` ("UDP unreachable, using TCP").
///
/// `quic_config` is as in [`connect_with`].
///
/// # Errors
/// As [`connect_with`] and [`connect_tcp`]; with [`TransportChoice::Auto`],
/// [`TransportError::Unreachable`] when both fail; [`TransportError::Config`] for QUIC with
/// a proxy.
pub async fn dial(
    endpoint: &quinn::Endpoint,
    quic_config: Option<quinn::ClientConfig>,
    relay: &RelayAddress,
    opts: &DialOptions,
) -> Result<FramedConnection, TransportError> {
    if let Some(proxy) = &opts.socks5 {
        if opts.transport == TransportChoice::Quic {
            return Err(TransportError::Config(
                "QUIC cannot go through a SOCKS5 proxy: use the tcp (or auto) transport with \
                 --socks5"
                    .into(),
            ));
        }
        return connect_tcp(relay, Some(proxy), opts.timeout).await;
    }
    if relay.host.is_onion() {
        return Err(TransportError::OnionNeedsProxy);
    }
    match opts.transport {
        TransportChoice::Quic => connect_with(endpoint, quic_config, relay, opts.timeout).await,
        TransportChoice::Tcp => connect_tcp(relay, None, opts.timeout).await,
        TransportChoice::Auto => dial_auto(endpoint, quic_config, relay, opts).await,
    }
}

async fn dial_auto(
    endpoint: &quinn::Endpoint,
    quic_config: Option<quinn::ClientConfig>,
    relay: &RelayAddress,
    opts: &DialOptions,
) -> Result<FramedConnection, TransportError> {
    let deadline = tokio::time::Instant::now() + opts.timeout;
    let quic = connect_with(endpoint, quic_config, relay, opts.timeout);
    tokio::pin!(quic);
    // `quic_pending` says whether the QUIC attempt is still running (the fallback timer
    // fired first); a finished attempt must never be polled again.
    let (quic_failed, quic_pending) = tokio::select! {
        r = &mut quic => match r {
            Ok(f) => return Ok(f),
            Err(e) if e.udp_may_be_blocked() => (e, false),
            Err(e) => return Err(e),
        },
        () = tokio::time::sleep(opts.quic_fallback_after.min(opts.timeout / 2)) => {
            // QUIC keeps trying below; TCP starts alongside it.
            (TransportError::Timeout, true)
        }
    };
    tracing::debug!("no answer over UDP (QUIC) yet; trying TCP");
    let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
    let tcp = connect_tcp(relay, None, remaining);
    tokio::pin!(tcp);
    let using_tcp = |f: FramedConnection| {
        tracing::info!("relay unreachable over UDP (QUIC); using TCP");
        f
    };
    if !quic_pending {
        return match tcp.await {
            Ok(f) => Ok(using_tcp(f)),
            Err(t) => Err(TransportError::Unreachable {
                quic: Box::new(quic_failed),
                tcp: Box::new(t),
            }),
        };
    }
    tokio::select! {
        r = &mut quic => match r {
            Ok(f) => Ok(f),
            Err(q) if !q.udp_may_be_blocked() => Err(q),
            Err(q) => match tcp.await {
                Ok(f) => Ok(using_tcp(f)),
                Err(t) => Err(TransportError::Unreachable { quic: Box::new(q), tcp: Box::new(t) }),
            },
        },
        r = &mut tcp => match r {
            Ok(f) => Ok(using_tcp(f)),
            // TCP was only the fallback: QUIC's outcome decides.
            Err(t) => match quic.await {
                Ok(f) => Ok(f),
                Err(q) if !q.udp_may_be_blocked() => Err(q),
                Err(q) => Err(TransportError::Unreachable { quic: Box::new(q), tcp: Box::new(t) }),
            },
        },
    }
}

/// Relay side of a QUIC session: accepts the client's stream on an established QUIC
/// connection, reads Noise message 1 (exactly [`FRAME_LEN`] bytes, before any cryptography),
/// answers with message 2.
///
/// `timeout` bounds the whole operation. On any failure the connection is closed with
/// [`CLOSE_PROTOCOL`] (or was already closed by the peer); after a decoy message 2 (see
/// below) the peer is first given until the timeout to read it and close.
///
/// # Errors
/// [`TransportError::Timeout`], [`TransportError::TruncatedRecord`] for a short first
/// record, [`TransportError::Handshake`] for a message 1 that does not decrypt under `key`
/// or is malformed (the peer is first sent a decoy message 2 of random bytes, so a client
/// that pinned another key sees [`TransportError::IdentityMismatch`]),
/// [`TransportError::Closed`] / [`TransportError::ConnectionLost`].
pub async fn accept(
    connection: quinn::Connection,
    key: &RelayStaticKey,
    timeout: Duration,
) -> Result<FramedConnection, TransportError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let link = Link::from(connection.clone());
    let streams = tokio::time::timeout_at(deadline, connection.accept_bi())
        .await
        .map_err(|_| TransportError::Timeout)
        .and_then(|r| r.map_err(TransportError::from_connection));
    let (send, recv) = match streams {
        Ok(s) => s,
        Err(e) => {
            link.close_protocol();
            return Err(e);
        }
    };
    respond_until(link, Writer::Quic(send), Reader::Quic(recv), key, deadline).await
}

/// Relay side of a TCP session: TLS with `acceptor` (ALPN `sotto/1` required), then the same
/// Noise handshake as [`accept`], decoy included. `timeout` bounds TLS and Noise together.
/// On failure the connection is shut down.
///
/// # Errors
/// [`TransportError::TlsHandshake`], and as [`accept`].
pub async fn accept_tcp(
    stream: tokio::net::TcpStream,
    acceptor: &TcpAcceptor,
    key: &RelayStaticKey,
    timeout: Duration,
) -> Result<FramedConnection, TransportError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let (writer, reader, shared) =
        tokio::time::timeout_at(deadline, tcp::server_tls(stream, acceptor))
            .await
            .unwrap_or(Err(TransportError::Timeout))?;
    let link = Link(LinkInner::Tcp(shared));
    respond_until(
        link,
        Writer::Tcp(writer),
        Reader::Tcp(reader),
        key,
        deadline,
    )
    .await
}

fn ip_server_name(ip: IpAddr) -> String {
    // `ServerName::try_from` parses bare IPv6 text (no brackets) as an IP address.
    ip.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_pad() {
        let o = QuicOptions::default();
        o.validate().unwrap();
        assert!(o.pad_to_mtu);
        assert!(o.initial_window >= QuicOptions::MIN_INITIAL_WINDOW);
        assert_eq!(
            (o.initial_mtu, o.min_mtu, o.mtu_discovery),
            (1200, 1200, true)
        );
        let u = QuicOptions::uniform_mtu(1452);
        u.validate().unwrap();
        assert_eq!(
            (u.initial_mtu, u.min_mtu, u.mtu_discovery),
            (1452, 1452, false)
        );
    }

    #[test]
    fn inconsistent_options_are_rejected() {
        let cases = [
            QuicOptions {
                min_mtu: 1000,
                ..QuicOptions::default()
            },
            QuicOptions {
                initial_mtu: 1300,
                min_mtu: 1400,
                ..QuicOptions::default()
            },
            QuicOptions {
                keep_alive: Duration::from_secs(30),
                ..QuicOptions::default()
            },
            QuicOptions {
                initial_window: 14_720,
                ..QuicOptions::default()
            },
            QuicOptions {
                stream_window: 1000,
                ..QuicOptions::default()
            },
        ];
        for c in cases {
            assert!(
                matches!(c.validate(), Err(TransportError::Config(_))),
                "{c:?}"
            );
            assert!(transport_config(&c).is_err());
        }
    }

    #[test]
    fn configs_build_with_a_generated_certificate() {
        let (cert, key) = self_signed_cert("relay.example").unwrap();
        server_config(cert, key, &QuicOptions::default()).unwrap();
        client_config(&QuicOptions::default()).unwrap();
        assert!(matches!(
            server_config(vec![1, 2, 3], vec![4, 5], &QuicOptions::default()),
            Err(TransportError::Tls(_))
        ));
    }

    #[test]
    fn ip_server_names_send_no_sni() {
        for ip in ["127.0.0.1", "::1"] {
            let name = ip_server_name(ip.parse().unwrap());
            assert!(matches!(
                ServerName::try_from(name.as_str()).unwrap(),
                ServerName::IpAddress(_)
            ));
        }
    }

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

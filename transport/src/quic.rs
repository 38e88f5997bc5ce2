//! The QUIC byte pipe: quinn configuration for both ends, and opening a session over QUIC.
//!
//! Owns [`QuicOptions`] (padding, MTU, congestion window, idle timeout, buffers: why each
//! matters is in the crate documentation), the quinn transport, server and client
//! configurations, the client endpoint, and [`connect`] / [`accept`] — a QUIC connection plus
//! its one bidirectional stream plus the Noise handshake ([`crate::handshake`]). It does not
//! choose between QUIC and TCP ([`crate::dial`]) and does not read or write records after the
//! handshake ([`crate::framed`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{IdleTimeout, MtuDiscoveryConfig, TransportConfig, VarInt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sotto_protocol::{FRAME_LEN, RelayAddress, RelayStaticKey};

use crate::TransportError;
use crate::framed::{FramedConnection, Reader, Writer};
use crate::handshake::{initiate, respond_until};
use crate::link::Link;
use crate::tls::{ip_server_name, tls_client_config, tls_server_config};

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

/// Relay side of a QUIC session: accepts the client's stream on an established QUIC
/// connection, reads Noise message 1 (exactly [`FRAME_LEN`] bytes, before any cryptography),
/// answers with message 2.
///
/// `timeout` bounds the whole operation. On any failure the connection is closed with
/// [`CLOSE_PROTOCOL`](crate::CLOSE_PROTOCOL) (or was already closed by the peer); after a decoy message 2 (see
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::self_signed_cert;

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
}

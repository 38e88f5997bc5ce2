//! [`dial`]: reaching a relay over the transport a client chose.
//!
//! Owns [`TransportChoice`] and [`DialOptions`], and the automatic choice: QUIC first, TLS
//! over TCP alongside it when UDP gets no answer, the first to complete wins; SOCKS5 proxies
//! (always TCP) and `.onion` hosts (never dialled without a proxy). Opening each pipe is
//! [`crate::quic::connect_with`] and [`crate::tcp::connect_tcp`].

use std::str::FromStr;
use std::time::Duration;

use sotto_protocol::RelayAddress;

use crate::TransportError;
use crate::framed::FramedConnection;
use crate::quic::connect_with;
use crate::socks5::Socks5Proxy;
use crate::tcp::connect_tcp;

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

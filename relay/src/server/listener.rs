//! The listeners: binding the QUIC endpoint and the TLS-over-TCP socket, the accept loops,
//! admission and the handshake, then one task per connection.
//!
//! What it owns: the checks made before any cryptography (tracked sources, handshakes per
//! source, sessions in all and per source — boringtun's rate limiter before a DH), the count
//! of open sessions ([`SessionGuard`]), the handshake timeout and the session metrics. A
//! refused connection is counted under its limit (`sotto_rate_limited_total`) rather than
//! left waiting in accept. What it does not: anything after the handshake (that is
//! [`super::session`], the same for both transports), or pruning the handshake limiter
//! periodically (`maintenance`; here it is pruned only when full).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sotto_transport::{self as transport, FramedConnection};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;

use super::{Shared, lock, session};
use crate::config::Config;
use crate::datadir::Identity;

/// Most source addresses the handshake limiter tracks at once (≈ 80 bytes each in governor's
/// map, so ≤ ≈ 5 MiB). From half of it on, unvalidated sources must first answer a QUIC
/// Retry; at the cap, idle entries are pruned and, if it is still full, handshakes are
/// refused (`sotto_rate_limited_total{limit="tracked_sources"}`).
pub(super) const MAX_TRACKED_SOURCES: usize = 65_536;

/// Most connection attempts quinn holds before the accept loop takes them (each is refused
/// or admitted at once, so this only fills under a burst).
const MAX_INCOMING: usize = 4096;

/// Bytes quinn buffers for one not-yet-accepted connection, and for all of them.
const INCOMING_BUFFER: u64 = 64 << 10;
/// See [`INCOMING_BUFFER`]; bounds the whole pre-accept backlog to 16 MiB.
const INCOMING_BUFFER_TOTAL: u64 = 16 << 20;

/// The key limits are counted under for a source address: the IPv4 address, or the /64
/// prefix of an IPv6 address (one host usually holds a whole /64, so keying by full address
/// would give it 2^64 separate budgets). IPv4-mapped IPv6 addresses count as IPv4.
pub(super) fn source_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let [a, b, c, d, ..] = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(a, b, c, d, 0, 0, 0, 0))
            }
        },
    }
}

/// The QUIC endpoint, bound to `listen`, with the pre-accept backlog bounded
/// ([`MAX_INCOMING`], [`INCOMING_BUFFER_TOTAL`]).
///
/// # Errors
/// An invalid TLS identity or QUIC options; an address that cannot be bound.
pub(super) fn bind_quic(identity: &Identity, config: &Config) -> anyhow::Result<quinn::Endpoint> {
    use anyhow::Context as _;
    let mut server_config = transport::server_config(
        identity.tls_cert.clone(),
        identity.tls_key.clone(),
        &config.quic.options(),
    )?;
    server_config
        .max_incoming(MAX_INCOMING)
        .incoming_buffer_size(INCOMING_BUFFER)
        .incoming_buffer_size_total(INCOMING_BUFFER_TOTAL);
    let socket = std::net::UdpSocket::bind(config.listen)
        .with_context(|| format!("cannot listen on UDP {}", config.listen))?;
    let runtime = quinn::default_runtime().context("no async runtime for QUIC")?;
    quinn::Endpoint::new(
        endpoint_config(identity),
        Some(server_config),
        socket,
        runtime,
    )
    .with_context(|| format!("cannot listen on UDP {}", config.listen))
}

/// QUIC endpoint settings: quinn's defaults, but a stateless-reset key derived from the
/// relay's TLS key (BLAKE3 `derive_key`) instead of a random one per start. After a
/// restart, the relay then answers packets of its clients' old connections with a reset
/// they recognise, so they reconnect at once instead of after the idle timeout (RFC 9000
/// § 10.3; the key stays secret and stable, as § 10.3.2 asks).
fn endpoint_config(identity: &Identity) -> quinn::EndpointConfig {
    let key = zeroize::Zeroizing::new(blake3::derive_key(
        "sotto relay 2026-12 QUIC stateless reset key",
        &identity.tls_key,
    ));
    let hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.as_slice());
    quinn::EndpointConfig::new(Arc::new(hmac))
}

/// The TLS-over-TCP listener (`listen_tcp`), if on: the socket, the TLS acceptor and the
/// bound address.
///
/// # Errors
/// An address that cannot be bound; an invalid TLS identity.
pub(super) async fn bind_tcp(
    identity: &Identity,
    config: &Config,
) -> anyhow::Result<Option<(tokio::net::TcpListener, transport::TcpAcceptor, SocketAddr)>> {
    use anyhow::Context as _;
    let Some(a) = config.listen_tcp_addr() else {
        return Ok(None);
    };
    let listener = tokio::net::TcpListener::bind(a).await.with_context(|| {
        format!("cannot listen on TCP {a} (set listen_tcp to \"off\" or another address)")
    })?;
    let acceptor =
        transport::TcpAcceptor::new(identity.tls_cert.clone(), identity.tls_key.clone())?;
    let bound = listener.local_addr()?;
    Ok(Some((listener, acceptor, bound)))
}

/// What both accept loops share (after mini-redis `Listener`): admission, then one task per
/// admitted connection. Each loop has its own.
struct Listener {
    shared: Arc<Shared>,
    /// Every connection's task, so that shutdown waits for them.
    tracker: TaskTracker,
    /// When the full tracked-sources table was last pruned (at most once a second).
    last_prune: Instant,
}

impl Listener {
    fn new(shared: Arc<Shared>, tracker: TaskTracker) -> Self {
        Self {
            shared,
            tracker,
            last_prune: Instant::now(),
        }
    }

    /// The admission checks both listeners share, cheapest first and before any
    /// cryptography (boringtun's rate limiter before a DH): tracked sources, handshakes per
    /// source, sessions in all, sessions per source. Counts a refusal under its limit and
    /// returns `None`; otherwise counts the session from now on (so half-open handshakes are
    /// capped too, and a burst cannot overshoot the caps before the next accept).
    fn admit(&mut self, source: IpAddr) -> Option<SessionGuard> {
        let shared = &self.shared;
        if shared.handshake_limiter.len() >= MAX_TRACKED_SOURCES {
            if self.last_prune.elapsed() >= Duration::from_secs(1) {
                self.last_prune = Instant::now();
                shared.handshake_limiter.retain_recent();
            }
            if shared.handshake_limiter.len() >= MAX_TRACKED_SOURCES {
                shared.limited("tracked_sources");
                return None;
            }
        }
        if shared.handshake_limiter.check_key(&source).is_err() {
            shared.limited("handshakes_per_ip");
            return None;
        }
        if shared.sessions.load(Ordering::Relaxed) >= shared.config.limits.max_sessions {
            shared.limited("max_sessions");
            return None;
        }
        {
            let per_ip = lock(&shared.per_ip);
            if per_ip.get(&source).copied().unwrap_or(0) >= shared.config.limits.max_sessions_per_ip
            {
                drop(per_ip);
                shared.limited("max_sessions_per_ip");
                return None;
            }
        }
        Some(SessionGuard::new(shared, source))
    }

    /// Spawns the task of an admitted connection from `remote`: the handshake `handshake`
    /// builds (given the shared state, for the relay's key and the handshake timeout), then
    /// the session.
    fn spawn<H>(
        &self,
        guard: SessionGuard,
        remote: SocketAddr,
        handshake: impl FnOnce(Arc<Shared>) -> H,
    ) where
        H: Future<Output = Result<FramedConnection, transport::TransportError>> + Send + 'static,
    {
        let handshake = handshake(self.shared.clone());
        self.tracker
            .spawn(serve(self.shared.clone(), guard, remote, handshake));
    }
}

/// The QUIC listener.
pub(super) async fn quic_accept_loop(
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
    tracker: TaskTracker,
) {
    let mut listener = Listener::new(shared.clone(), tracker);
    loop {
        let incoming = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => break,
            },
        };
        // Cheap checks before any cryptography (boringtun's rate limiter before a DH).
        let source = source_key(incoming.remote_address().ip());
        let tracked = shared.handshake_limiter.len();
        if tracked >= MAX_TRACKED_SOURCES / 2
            && !incoming.remote_address_validated()
            && incoming.may_retry()
        {
            // Many distinct sources: make each prove its address with a stateless Retry
            // before it may take a limiter entry, so spoofed sources cannot fill the table.
            shared
                .metrics
                .handshakes
                .with_label_values(&["retry"])
                .inc();
            if let Err(e) = incoming.retry() {
                e.into_incoming().refuse();
            }
            continue;
        }
        let Some(guard) = listener.admit(source) else {
            incoming.refuse();
            continue;
        };
        let remote = incoming.remote_address();
        listener.spawn(guard, remote, |owner| async move {
            let conn = incoming.await.map_err(transport::TransportError::Connect)?;
            transport::accept(conn, &owner.key, owner.config.limits.handshake_timeout).await
        });
    }
}

/// The TLS-over-TCP listener (`listen_tcp`): the same admission checks as QUIC, then TLS and
/// the same Noise handshake, then the same session code.
pub(super) async fn tcp_accept_loop(
    tcp: tokio::net::TcpListener,
    acceptor: transport::TcpAcceptor,
    shared: Arc<Shared>,
    tracker: TaskTracker,
) {
    let mut listener = Listener::new(shared.clone(), tracker);
    loop {
        let (stream, remote) = tokio::select! {
            _ = shared.shutdown.cancelled() => break,
            r = tcp.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors or a transient error: back off instead of spinning.
                    tracing::warn!(error = %e, "TCP accept failed; pausing accepts for 100 ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Cheap checks before any cryptography (the TCP handshake already proved the
        // address, so there is no Retry step).
        let source = source_key(remote.ip());
        let Some(guard) = listener.admit(source) else {
            // Refused: the connection is closed before TLS.
            drop(stream);
            continue;
        };
        let acceptor = acceptor.clone();
        listener.spawn(guard, remote, |owner| async move {
            let timeout = owner.config.limits.handshake_timeout;
            transport::accept_tcp(stream, &acceptor, &owner.key, timeout).await
        });
    }
}

/// How much longer than `limits.handshake_timeout` [`serve`] waits for a handshake that
/// bounds itself by it (see there).
const HANDSHAKE_BACKSTOP: Duration = Duration::from_secs(1);

/// One admitted connection, whichever the transport: the handshake (bounded by
/// `limits.handshake_timeout`), then the session.
async fn serve(
    shared: Arc<Shared>,
    guard: SessionGuard,
    remote: SocketAddr,
    handshake: impl Future<Output = Result<FramedConnection, transport::TransportError>>,
) {
    let _guard = guard;
    // The handshake bounds itself by `limits.handshake_timeout` and then closes with code 1
    // (`docs/protocol.md` § 4, § 5.4: also after a decoy message 2). This bound, a little
    // later, only catches what it does not bound (the QUIC handshake before it): cutting
    // the handshake off here drops the connection, which QUIC closes with code 0.
    let timeout = shared.config.limits.handshake_timeout + HANDSHAKE_BACKSTOP;
    // Boxed: the handshake's state (QUIC accept, Noise, a 16 KiB message buffer) is freed
    // when it ends instead of staying part of the session task for the session's lifetime.
    let handshake = Box::pin(handshake);
    let framed = tokio::select! {
        _ = shared.shutdown.cancelled() => return,
        r = tokio::time::timeout(timeout, handshake) => match r {
            Ok(Ok(f)) => f,
            Ok(Err(transport::TransportError::Timeout)) => {
                shared.metrics.handshakes.with_label_values(&["timeout"]).inc();
                return;
            }
            Ok(Err(e)) => {
                shared.metrics.handshakes.with_label_values(&["failed"]).inc();
                tracing::debug!(peer = %shared.peer(remote), error = %e, "handshake failed");
                return;
            }
            Err(_) => {
                shared.metrics.handshakes.with_label_values(&["timeout"]).inc();
                return;
            }
        },
    };
    shared.metrics.handshakes.with_label_values(&["ok"]).inc();
    shared.metrics.sessions.inc();
    let tcp = framed.connection.kind() == transport::LinkKind::Tcp;
    if tcp {
        shared.metrics.sessions_tcp.inc();
    }
    let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(
        session = id,
        peer = %shared.peer(remote),
        transport = %framed.connection.kind(),
        "session open"
    );
    session::run_session(shared.clone(), framed, id).await;
    shared.metrics.sessions.dec();
    if tcp {
        shared.metrics.sessions_tcp.dec();
    }
    tracing::debug!(session = id, "session closed");
}

/// Counts a session (total and per address) for its lifetime.
struct SessionGuard {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl SessionGuard {
    fn new(shared: &Arc<Shared>, ip: IpAddr) -> Self {
        shared.sessions.fetch_add(1, Ordering::Relaxed);
        *lock(&shared.per_ip).entry(ip).or_insert(0) += 1;
        Self {
            shared: shared.clone(),
            ip,
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.shared.sessions.fetch_sub(1, Ordering::Relaxed);
        let mut per_ip = lock(&self.shared.per_ip);
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_keyed_by_ipv4_address_or_ipv6_prefix() {
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(source_key(v4), v4);
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(source_key(mapped), v4);
        let a: IpAddr = "2001:db8:1:2:aaaa:bbbb:cccc:dddd".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source_key(a), source_key(b));
        assert_eq!(source_key(a), "2001:db8:1:2::".parse::<IpAddr>().unwrap());
        assert_ne!(source_key(a), source_key(other));
    }
}

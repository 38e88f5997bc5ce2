//! The TLS-over-TCP byte pipe: the second way to carry a session, for Tor (which carries
//! only TCP) and for networks that block or throttle UDP.
//!
//! This module owns the TCP socket and its TLS 1.3 layer (tokio-rustls, the same provider,
//! certificate and ALPN as QUIC), and splits the TLS stream into the two halves the
//! session's [`crate::FrameSender`] and [`crate::FrameReceiver`] drive. It knows nothing
//! of Noise or records: those are the same code for both transports (see the parent
//! module).
//!
//! # Record boundaries on the wire
//!
//! Every write is one whole [`sotto_protocol::FRAME_LEN`]-byte record followed by a flush.
//! rustls cuts plaintext into TLS records of at most 16 384 bytes, and the connection's
//! buffer limit is lifted so a write is never accepted in part: each record therefore
//! becomes exactly one TLS application-data record of the same length
//! (16 384 + 1 content-type byte + 16 tag + 5 header = 16 406 bytes), and an observer of
//! the TCP stream sees a run of identical records, as over QUIC. The flush after each
//! record is also the backpressure: rustls never buffers more than one record.
//!
//! # Closing
//!
//! TCP has no application close codes. `TcpWriter::shutdown` (and
//! `TcpWriter::finish`) end the sending direction in an orderly way: TLS `close_notify`,
//! then FIN; the peer's reader sees the end at a record boundary. `Link::close` (any code)
//! shuts the socket down at once in both directions, without `close_notify`; the peer's
//! reader sees the connection end ([`TransportError::Closed`]), or a truncated record. The
//! socket is also shut down when both halves have been dropped.
//!
//! # Dead peers
//!
//! QUIC closes a connection after its idle timeout; here TCP keep-alive does the same job:
//! probes after [`KEEPALIVE_TIME`] without traffic, every [`KEEPALIVE_INTERVAL`], and the
//! kernel drops the connection after [`KEEPALIVE_RETRIES`] unanswered probes (about 30 s,
//! like QUIC's default idle timeout). Through a SOCKS5 proxy the probes only reach the
//! proxy; the proxy (Tor) notices a dead circuit itself.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use sotto_protocol::{ALPN, RelayAddress};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;
use tokio_util::sync::CancellationToken;

use sotto_protocol::RelayStaticKey;

use crate::TransportError;
use crate::framed::{FramedConnection, Reader, Writer};
use crate::handshake::{initiate, respond_until};
use crate::link::{Link, LinkInner};
use crate::socks5::{self, Socks5Proxy};
use crate::tls::{tls_client_config, tls_server_config};

/// Idle time before the first keep-alive probe.
pub const KEEPALIVE_TIME: Duration = Duration::from_secs(10);
/// Time between keep-alive probes.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(5);
/// Unanswered probes after which the kernel drops the connection.
pub const KEEPALIVE_RETRIES: u32 = 4;

/// How long a background `close_notify` (from [`TcpWriter::finish`]) may take.
const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

type Tls = TlsStream<Counted>;

/// Byte counters of one TCP connection (TLS bytes, as the network sees them).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) sent: AtomicU64,
    pub(crate) received: AtomicU64,
}

/// What the link handle and both halves of one TCP connection share.
#[derive(Debug)]
pub(crate) struct TcpShared {
    remote: SocketAddr,
    /// Cancelled when the link is closed, a read or write fails, or both halves are gone.
    closed: CancellationToken,
    /// A second handle on the socket, only to shut it down from `Link::close` while the
    /// halves are elsewhere. Taken (and dropped) by the first close.
    handle: Mutex<Option<socket2::Socket>>,
    counters: Arc<Counters>,
    /// Halves not yet dropped (2, then 1, then 0 closes the link).
    halves: AtomicUsize,
}

impl TcpShared {
    /// Shuts the socket down in both directions (no `close_notify`) and marks the link
    /// closed. Idempotent.
    pub(crate) fn close(&self) {
        self.closed.cancel();
        let handle = self
            .handle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(s) = handle {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    pub(crate) fn remote(&self) -> SocketAddr {
        self.remote
    }

    pub(crate) async fn closed(&self) {
        self.closed.cancelled().await;
    }

    pub(crate) fn sent(&self) -> u64 {
        self.counters.sent.load(Ordering::Relaxed)
    }

    pub(crate) fn received(&self) -> u64 {
        self.counters.received.load(Ordering::Relaxed)
    }
}

/// One half of the TLS stream; dropping the last half closes the link.
struct Half<T> {
    io: T,
    shared: Arc<TcpShared>,
}

impl<T> Drop for Half<T> {
    fn drop(&mut self) {
        if self.shared.halves.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.close();
        }
    }
}

/// The sending half of a TLS-over-TCP session.
pub(crate) struct TcpWriter {
    /// `None` once finished.
    half: Option<Half<WriteHalf<Tls>>>,
    shared: Arc<TcpShared>,
}

impl TcpWriter {
    /// Writes one whole record and flushes it, so it leaves as exactly one TLS record.
    pub(crate) async fn write_record(&mut self, record: &[u8]) -> Result<(), TransportError> {
        let Some(half) = self.half.as_mut() else {
            return Err(TransportError::Closed);
        };
        let io = &mut half.io;
        let written = tokio::select! {
            biased;
            () = self.shared.closed.cancelled() => return Err(TransportError::Closed),
            r = async {
                io.write_all(record).await?;
                io.flush().await
            } => r,
        };
        written.map_err(|e| {
            self.shared.close();
            io_error(e)
        })
    }

    /// Ends the sending direction in the background (TLS `close_notify`, then FIN), so that
    /// it can be called from synchronous code. Prefer [`TcpWriter::shutdown`].
    pub(crate) fn finish(&mut self) -> Result<(), TransportError> {
        let Some(mut half) = self.half.take() else {
            return Err(TransportError::Closed);
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = tokio::time::timeout(FINISH_TIMEOUT, half.io.shutdown()).await;
            });
        }
        // Without a runtime the half is dropped here: the peer sees the end without
        // `close_notify`.
        Ok(())
    }

    /// Ends the sending direction: TLS `close_notify`, then FIN. The peer's reader then
    /// sees the end at a record boundary.
    pub(crate) async fn shutdown(&mut self) -> Result<(), TransportError> {
        let Some(mut half) = self.half.take() else {
            return Err(TransportError::Closed);
        };
        tokio::select! {
            biased;
            () = self.shared.closed.cancelled() => Err(TransportError::Closed),
            r = half.io.shutdown() => r.map_err(io_error),
        }
    }
}

/// The receiving half of a TLS-over-TCP session.
pub(crate) struct TcpReader {
    half: Half<ReadHalf<Tls>>,
}

impl TcpReader {
    /// Fills `buf` with exactly one record. `Ok(false)` when the peer ended the stream in
    /// an orderly way (`close_notify`) before the first byte.
    pub(crate) async fn read_record(&mut self, buf: &mut [u8]) -> Result<bool, TransportError> {
        self.fill(buf, 0).await
    }

    /// As [`TcpReader::read_record`] for a record whose first `filled` bytes are already in
    /// `buf`: an end or error from here on is a truncated record.
    pub(crate) async fn fill(
        &mut self,
        buf: &mut [u8],
        mut filled: usize,
    ) -> Result<bool, TransportError> {
        let shared = self.half.shared.clone();
        while let Some(dst) = buf.get_mut(filled..).filter(|d| !d.is_empty()) {
            let read = tokio::select! {
                biased;
                () = shared.closed.cancelled() => return Err(TransportError::Closed),
                r = self.half.io.read(dst) => r,
            };
            match read {
                Ok(0) if filled == 0 => return Ok(false),
                Ok(0) => return Err(TransportError::TruncatedRecord(filled)),
                Ok(n) => filled += n,
                Err(e) => {
                    shared.close();
                    return Err(if filled > 0 {
                        TransportError::TruncatedRecord(filled)
                    } else {
                        io_error(e)
                    });
                }
            }
        }
        Ok(true)
    }
}

/// An I/O error on an established connection: the peer going away (reset, or an end
/// without `close_notify`) is [`TransportError::Closed`], anything else
/// [`TransportError::Lost`].
fn io_error(e: io::Error) -> TransportError {
    use io::ErrorKind::*;
    match e.kind() {
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe | NotConnected => {
            TransportError::Closed
        }
        _ => TransportError::Lost(e),
    }
}

/// The relay's TLS acceptor for TCP connections: the relay's self-signed certificate,
/// TLS 1.3 only, ALPN [`sotto_protocol::ALPN`], no tickets, no resumption.
#[derive(Clone)]
pub struct TcpAcceptor(tokio_rustls::TlsAcceptor);

impl TcpAcceptor {
    /// An acceptor with the relay's certificate and key (the same ones QUIC uses).
    ///
    /// # Errors
    /// [`TransportError::Tls`] for an unusable certificate or key.
    pub fn new(cert_der: Vec<u8>, key_der: Vec<u8>) -> Result<Self, TransportError> {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der));
        let tls = tls_server_config(CertificateDer::from(cert_der), key)?;
        Ok(Self(tokio_rustls::TlsAcceptor::from(Arc::new(tls))))
    }
}

impl std::fmt::Debug for TcpAcceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpAcceptor").finish_non_exhaustive()
    }
}

/// The halves and the shared state of an established TLS connection.
pub(crate) type Established = (TcpWriter, TcpReader, Arc<TcpShared>);

/// Sets `TCP_NODELAY` (a record is flushed whole; Nagle would hold back its tail) and
/// keep-alive (see the module docs).
fn tune(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_TIME)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive);
}

/// Opens the TCP connection to `relay`: through `proxy` when given (the proxy resolves the
/// host), else directly to the host's addresses (resolved locally), on
/// [`RelayAddress::tcp_port`].
pub(crate) async fn open(
    relay: &RelayAddress,
    proxy: Option<&Socks5Proxy>,
) -> Result<TcpStream, TransportError> {
    if let Some(proxy) = proxy {
        return socks5::connect(proxy, &relay.host, relay.tcp_port())
            .await
            .map_err(TransportError::Proxy);
    }
    if relay.host.is_onion() {
        return Err(TransportError::OnionNeedsProxy);
    }
    let target = format!("{}:{}", relay.host, relay.tcp_port());
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&target)
        .await
        .map_err(|_| TransportError::Resolve)?
        .collect();
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or(TransportError::Resolve, TransportError::TcpConnect))
}

/// Runs the client side of TLS over `tcp` and splits the stream.
pub(crate) async fn client_tls(tcp: TcpStream) -> Result<Established, TransportError> {
    tune(&tcp);
    let counters = Arc::new(Counters::default());
    let remote = tcp
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    let config = tls_client_config()?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    // SNI is disabled in the configuration, so the name is never sent; the certificate
    // verifier ignores it too.
    let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::UNSPECIFIED).into());
    let mut tls = connector
        .connect(name, Counted::new(tcp, counters.clone()))
        .await
        .map_err(TransportError::TlsHandshake)?;
    // No send-buffer limit: a record is always accepted whole and becomes one TLS record
    // (see the module docs); the flush after each record bounds the buffer.
    tls.get_mut().1.set_buffer_limit(None);
    Ok(split(TlsStream::Client(tls), counters, remote))
}

/// Runs the relay side of TLS over `tcp`, requires ALPN [`sotto_protocol::ALPN`], and
/// splits the stream.
pub(crate) async fn server_tls(
    tcp: TcpStream,
    acceptor: &TcpAcceptor,
) -> Result<Established, TransportError> {
    tune(&tcp);
    let counters = Arc::new(Counters::default());
    let remote = tcp
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    let mut tls = acceptor
        .0
        .accept(Counted::new(tcp, counters.clone()))
        .await
        .map_err(TransportError::TlsHandshake)?;
    if tls.get_ref().1.alpn_protocol() != Some(ALPN) {
        return Err(TransportError::TlsHandshake(io::Error::other(
            "the client did not ask for ALPN sotto/1",
        )));
    }
    tls.get_mut().1.set_buffer_limit(None);
    Ok(split(TlsStream::Server(tls), counters, remote))
}

fn split(tls: Tls, counters: Arc<Counters>, remote: SocketAddr) -> Established {
    let handle = socket2::SockRef::from(&tls.get_ref().0.tcp)
        .try_clone()
        .ok();
    let shared = Arc::new(TcpShared {
        remote,
        closed: CancellationToken::new(),
        handle: Mutex::new(handle),
        counters,
        halves: AtomicUsize::new(2),
    });
    let (r, w) = tokio::io::split(tls);
    let writer = TcpWriter {
        half: Some(Half {
            io: w,
            shared: shared.clone(),
        }),
        shared: shared.clone(),
    };
    let reader = TcpReader {
        half: Half {
            io: r,
            shared: shared.clone(),
        },
    };
    (writer, reader, shared)
}

/// A TCP stream that counts the bytes it carries.
#[derive(Debug)]
pub(crate) struct Counted {
    tcp: TcpStream,
    counters: Arc<Counters>,
}

impl Counted {
    fn new(tcp: TcpStream, counters: Arc<Counters>) -> Self {
        Self { tcp, counters }
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            let n = buf.filled().len().saturating_sub(before);
            self.counters
                .received
                .fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.tcp).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.counters.sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.counters.sent.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
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
        let stream = open(relay, proxy).await?;
        let (writer, reader, shared) = client_tls(stream).await?;
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

/// Relay side of a TCP session: TLS with `acceptor` (ALPN `sotto/1` required), then the same
/// Noise handshake as [`accept`](crate::accept), decoy included. `timeout` bounds TLS and Noise together.
/// On failure the connection is shut down.
///
/// # Errors
/// [`TransportError::TlsHandshake`], and as [`accept`](crate::accept).
pub async fn accept_tcp(
    stream: tokio::net::TcpStream,
    acceptor: &TcpAcceptor,
    key: &RelayStaticKey,
    timeout: Duration,
) -> Result<FramedConnection, TransportError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let (writer, reader, shared) = tokio::time::timeout_at(deadline, server_tls(stream, acceptor))
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

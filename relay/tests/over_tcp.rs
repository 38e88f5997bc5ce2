//! The relay over its TLS-over-TCP listener (`listen_tcp`).
//!
//! - The queue and delivery suites run again, unchanged, over TCP: `queues.rs` and
//!   `delivery.rs` are included as modules of this binary, where `common::OVER_TCP` makes the
//!   test relays listen on TCP and the clients use TCP only.
//! - What only TCP has: a SOCKS5 proxy (written here) that sees the relay's host name, which
//!   the client never resolves (the name does not resolve at all); `.onion` relays refused
//!   without a proxy and reached through one; QUIC→TCP fallback when UDP is black-holed;
//!   hostile input inside TLS; ALPN required; and TLS record sizes on the wire (a recording
//!   TCP forwarder parses the raw stream: every application-data record after the handshake
//!   is one whole 16 384-byte record).

#![allow(clippy::unwrap_used)]
// `common` is loaded once here and once inside each included suite, on purpose: every copy
// sees the same `OVER_TCP`.
#![allow(clippy::duplicate_mod)]

#[path = "delivery.rs"]
mod delivery;
#[path = "queues.rs"]
mod queues;

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use sotto_protocol::{
    ALPN, Command, CorrId, FRAME_LEN, FrameBuilder, Initiator, RelayAddress, Session, Transmission,
};
use sotto_transport::Socks5Proxy;
use sotto_transport::{ClientError, ClientOptions, LinkKind, TransportChoice, TransportError};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const BOUND: Duration = Duration::from_secs(30);

async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(BOUND, f)
        .await
        .expect("did not complete within the test bound")
}

fn tcp_port(relay: &TestRelay) -> u16 {
    relay.running().local_tcp_addr.unwrap().port()
}

fn tcp_options() -> ClientOptions {
    ClientOptions {
        transport: TransportChoice::Tcp,
        ..client_options()
    }
}

/// Create, send, get and acknowledge through `c`.
async fn round_trip(c: &sotto_transport::RelayClient, body: &[u8]) {
    let q = c.create_queue(None).await.unwrap();
    c.send(q.sender_id, None, 0, body.to_vec()).await.unwrap();
    let m = c.get(&q).await.unwrap().unwrap();
    assert_eq!(m.body, body);
    assert!(c.ack(&q, m.msg_id).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_address_announces_the_tcp_listener() {
    let relay = TestRelay::start().await;
    let a = relay.address();
    assert_eq!(a.tcp, Some(tcp_port(&relay)));
    assert!(a.to_string().contains("?tcp"), "{a}");
    let (c, _p, _e) = connect(&a).await;
    assert_eq!(c.transport(), LinkKind::Tcp);
    assert_eq!(c.connection().kind(), LinkKind::Tcp);
    round_trip(&c, b"over tcp").await;
    let stats = c.connection().stats();
    assert!(stats.bytes_sent >= 3 * FRAME_LEN as u64, "{stats:?}");
    assert!(stats.bytes_received >= 3 * FRAME_LEN as u64, "{stats:?}");
    // The relay counts it among its sessions, and among those over TCP.
    let m = &relay.running().metrics;
    assert_eq!(
        m.sessions_tcp.get(),
        m.sessions.get(),
        "every session here is TCP"
    );
    assert!(m.sessions_tcp.get() >= 1);
}

// ---------------------------------------------------------------------------------------
// SOCKS5

/// What the test proxy saw.
#[derive(Debug, Default, Clone)]
struct ProxyLog {
    /// (ATYP, host, port) of each CONNECT.
    connects: Vec<(u8, String, u16)>,
    /// Usernames offered (RFC 1929).
    users: Vec<String>,
    /// Bytes the client sent after CONNECT (the TLS stream).
    tunnelled: Vec<u8>,
}

/// A SOCKS5 proxy that connects every CONNECT, whatever the name, to 127.0.0.1 at the
/// requested port, and records what it was asked.
async fn spawn_socks5() -> (Socks5Proxy, Arc<Mutex<ProxyLog>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(ProxyLog::default()));
    let l = log.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(socks5_session(s, l.clone()));
        }
    });
    (format!("127.0.0.1:{}", addr.port()).parse().unwrap(), log)
}

async fn socks5_session(mut s: TcpStream, log: Arc<Mutex<ProxyLog>>) {
    let mut head = [0u8; 2];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0], 5);
    let mut methods = vec![0u8; head[1] as usize];
    s.read_exact(&mut methods).await.unwrap();
    if methods.contains(&2) {
        s.write_all(&[5, 2]).await.unwrap();
        let ver = s.read_u8().await.unwrap();
        assert_eq!(ver, 1);
        let mut user = vec![0u8; s.read_u8().await.unwrap() as usize];
        s.read_exact(&mut user).await.unwrap();
        let mut pass = vec![0u8; s.read_u8().await.unwrap() as usize];
        s.read_exact(&mut pass).await.unwrap();
        log.lock()
            .unwrap()
            .users
            .push(String::from_utf8(user).unwrap());
        s.write_all(&[1, 0]).await.unwrap();
    } else {
        s.write_all(&[5, 0]).await.unwrap();
    }
    let mut req = [0u8; 4];
    s.read_exact(&mut req).await.unwrap();
    assert_eq!(req[..3], [5, 1, 0]);
    let host = match req[3] {
        3 => {
            let mut name = vec![0u8; s.read_u8().await.unwrap() as usize];
            s.read_exact(&mut name).await.unwrap();
            String::from_utf8(name).unwrap()
        }
        1 => {
            let mut a = [0u8; 4];
            s.read_exact(&mut a).await.unwrap();
            std::net::Ipv4Addr::from(a).to_string()
        }
        other => panic!("unexpected ATYP {other}"),
    };
    let port = s.read_u16().await.unwrap();
    log.lock().unwrap().connects.push((req[3], host, port));
    let Ok(upstream) = TcpStream::connect(("127.0.0.1", port)).await else {
        let _ = s.write_all(&[5, 5, 0, 1, 0, 0, 0, 0, 0, 0]).await;
        return;
    };
    s.write_all(&[5, 0, 0, 1, 127, 0, 0, 1, 0, 0])
        .await
        .unwrap();
    let (cr, cw) = s.into_split();
    let (ur, uw) = upstream.into_split();
    let up = tokio::spawn(pump(cr, uw, Some(log.clone())));
    pump(ur, cw, None).await;
    let _ = up.await;
}

/// Copies `from` to `to` until the end, recording the bytes in the proxy log when given.
async fn pump(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    log: Option<Arc<Mutex<ProxyLog>>>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(l) = &log {
            l.lock().unwrap().tunnelled.extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_proxy_resolves_the_relay_name_never_the_client() {
    bounded(async {
        // `relay.test` does not resolve (RFC 2606): the session can only work if the client
        // leaves the name to the proxy.
        let relay = TestRelay::start_with(|c| c.host = "relay.test".into()).await;
        let addr = relay.address();
        assert_eq!(addr.host.to_string(), "relay.test");
        let (proxy, log) = spawn_socks5().await;
        let opts = ClientOptions {
            socks5: Some(proxy),
            // The default (auto) with a proxy means TCP through it.
            transport: TransportChoice::Auto,
            ..client_options()
        };
        let ep = endpoint();
        let (c1, _p1) = sotto_transport::RelayClient::connect(&ep, &addr, &opts)
            .await
            .unwrap();
        assert_eq!(c1.transport(), LinkKind::Tcp);
        round_trip(&c1, b"through the proxy").await;
        let (c2, _p2) = sotto_transport::RelayClient::connect(&ep, &addr, &opts)
            .await
            .unwrap();
        c2.ping().await.unwrap();
        c1.close().await;
        c2.close().await;

        let log = log.lock().unwrap().clone();
        assert_eq!(
            log.connects,
            vec![
                (3, "relay.test".to_owned(), tcp_port(&relay)),
                (3, "relay.test".to_owned(), tcp_port(&relay)),
            ],
            "the proxy got the name as a DOMAINNAME, at the TCP port"
        );
        assert_eq!(log.users.len(), 2);
        assert_ne!(
            log.users[0], log.users[1],
            "each connection has its own credentials (one Tor circuit each)"
        );
        // No SNI: the TLS stream itself never names the host.
        assert!(!log.tunnelled.is_empty());
        assert!(
            !log.tunnelled
                .windows(b"relay.test".len())
                .any(|w| w == b"relay.test")
        );

        // Without the proxy the name cannot be used at all: a local lookup fails.
        let direct = ClientOptions {
            connect_timeout: Duration::from_secs(5),
            ..tcp_options()
        };
        assert!(
            sotto_transport::RelayClient::connect(&ep, &addr, &direct)
                .await
                .is_err()
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onion_relays_only_through_the_proxy() {
    bounded(async {
        let onion = "sottotestxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx.onion";
        let relay = TestRelay::start_with(|c| c.host = onion.into()).await;
        let addr = relay.address();
        assert!(addr.host.is_onion());
        let ep = endpoint();
        for transport in [
            TransportChoice::Auto,
            TransportChoice::Quic,
            TransportChoice::Tcp,
        ] {
            let opts = ClientOptions {
                transport,
                ..client_options()
            };
            let err = sotto_transport::RelayClient::connect(&ep, &addr, &opts)
                .await
                .unwrap_err();
            assert!(
                matches!(err, ClientError::Transport(TransportError::OnionNeedsProxy)),
                "{transport}: {err}"
            );
            assert!(err.to_string().contains("--socks5"), "{err}");
        }
        let (proxy, log) = spawn_socks5().await;
        let opts = ClientOptions {
            socks5: Some(proxy.clone()),
            ..client_options()
        };
        let (c, _p) = sotto_transport::RelayClient::connect(&ep, &addr, &opts)
            .await
            .unwrap();
        round_trip(&c, b"onion").await;
        assert_eq!(log.lock().unwrap().connects[0].1, onion);
        // QUIC cannot go through a SOCKS5 proxy: asking for it is an error, not a leak.
        let quic = ClientOptions {
            socks5: Some(proxy),
            transport: TransportChoice::Quic,
            ..client_options()
        };
        assert!(matches!(
            sotto_transport::RelayClient::connect(&ep, &addr, &quic).await,
            Err(ClientError::Transport(TransportError::Config(_)))
        ));
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Automatic fallback

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_falls_back_to_tcp_when_udp_is_black_holed() {
    bounded(async {
        let relay = TestRelay::start().await;
        // A UDP port that swallows everything: QUIC never gets an answer.
        let black_hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = RelayAddress {
            port: black_hole.local_addr().unwrap().port(),
            ..relay.address()
        };
        let opts = ClientOptions {
            transport: TransportChoice::Auto,
            quic_fallback_after: Duration::from_millis(200),
            ..client_options()
        };
        let ep = endpoint();
        let (c, _p) = sotto_transport::RelayClient::connect(&ep, &addr, &opts)
            .await
            .unwrap();
        assert_eq!(c.transport(), LinkKind::Tcp);
        round_trip(&c, b"fell back").await;

        // Both closed: the error names both transports.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let nowhere = RelayAddress {
            tcp: Some(closed_port),
            ..addr.clone()
        };
        let opts = ClientOptions {
            connect_timeout: Duration::from_secs(2),
            ..opts
        };
        let err = sotto_transport::RelayClient::connect(&ep, &nowhere, &opts)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Transport(TransportError::Unreachable { .. })
            ),
            "{err}"
        );
        let text = err.to_string();
        assert!(text.contains("UDP") && text.contains("TCP"), "{text}");

        // With a working QUIC port, auto stays on QUIC.
        let opts = ClientOptions {
            quic_fallback_after: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(30),
            ..opts
        };
        let (c, _p) = sotto_transport::RelayClient::connect(&ep, &relay.address(), &opts)
            .await
            .unwrap();
        assert_eq!(c.transport(), LinkKind::Quic);
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Hostile input inside TLS

/// Accepts any certificate: the tests speak TLS to the relay by hand.
#[derive(Debug)]
struct AnyCert;

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

type RawTls = tokio_rustls::client::TlsStream<TcpStream>;

/// A TLS connection to the relay's TCP listener, without any Noise.
async fn raw_tls(relay: &TestRelay, alpn: bool) -> RawTls {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth();
    if alpn {
        config.alpn_protocols = vec![ALPN.to_vec()];
    }
    let tcp = TcpStream::connect(("127.0.0.1", tcp_port(relay)))
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap()
}

/// A real Noise handshake by hand over raw TLS.
async fn handshaken(relay: &TestRelay) -> (Session, RawTls) {
    let mut tls = raw_tls(relay, true).await;
    let (init, m1) = Initiator::start(&relay.address().key, &mut rand::rngs::OsRng).unwrap();
    tls.write_all(&m1).await.unwrap();
    tls.flush().await.unwrap();
    let mut m2 = vec![0u8; FRAME_LEN];
    tls.read_exact(&mut m2).await.unwrap();
    (init.finish(&m2).unwrap(), tls)
}

/// Waits until the relay ends the connection (bounded); at most one decoy message 2 may
/// come first, and nothing after a handshake.
async fn closed_by_relay(tls: &mut RawTls, decoy_allowed: bool) {
    let mut buf = vec![0u8; FRAME_LEN];
    let mut records = 0;
    loop {
        let r = tokio::time::timeout(Duration::from_secs(15), tls.read_exact(&mut buf)).await;
        match r {
            Ok(Err(_)) => return,
            Ok(Ok(_)) if decoy_allowed && records == 0 => records += 1,
            Ok(Ok(_)) => panic!("relay answered a hostile session with a record"),
            Err(_) => panic!("relay did not close the hostile session"),
        }
    }
}

async fn second_client_still_works(relay: &TestRelay) {
    let (c, _p, _e) = connect(&relay.address()).await;
    round_trip(&c, b"still here").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_inside_tls_closes_only_that_session() {
    bounded(async {
        let relay = TestRelay::start().await;

        // Garbage instead of message 1: one decoy, then the end.
        let mut tls = raw_tls(&relay, true).await;
        tls.write_all(&vec![0x42; FRAME_LEN]).await.unwrap();
        tls.flush().await.unwrap();
        closed_by_relay(&mut tls, true).await;
        drop(tls);

        // A short message 1, then close_notify.
        let mut tls = raw_tls(&relay, true).await;
        tls.write_all(&[1; 100]).await.unwrap();
        tls.shutdown().await.unwrap();
        closed_by_relay(&mut tls, true).await;

        // After the handshake: a record cut short.
        let (_s, mut tls) = handshaken(&relay).await;
        tls.write_all(&[7; 1000]).await.unwrap();
        tls.shutdown().await.unwrap();
        closed_by_relay(&mut tls, false).await;

        // After the handshake: a record that does not decrypt.
        let (_s, mut tls) = handshaken(&relay).await;
        tls.write_all(&vec![9; FRAME_LEN]).await.unwrap();
        tls.flush().await.unwrap();
        closed_by_relay(&mut tls, false).await;

        // Without ALPN sotto/1: refused before any record.
        let mut tls = raw_tls(&relay, false).await;
        let _ = tls.write_all(&vec![0; FRAME_LEN]).await;
        let _ = tls.flush().await;
        closed_by_relay(&mut tls, false).await;

        second_client_still_works(&relay).await;
        assert!(relay.running().metrics.protocol_errors.get() >= 1);
        eventually("failed handshakes counted", async || {
            relay
                .running()
                .metrics
                .handshakes
                .with_label_values(&["failed"])
                .get()
                >= 3
        })
        .await;

        // A well-framed session by hand still gets answers.
        let (mut s, mut tls) = handshaken(&relay).await;
        let mut fb = FrameBuilder::new();
        assert!(fb.push(&Transmission::command(
            CorrId::from_u64(5),
            None,
            &Command::Ping
        )));
        tls.write_all(&s.send.encrypt_frame(&fb.finish()).unwrap())
            .await
            .unwrap();
        tls.flush().await.unwrap();
        let mut rec = vec![0u8; FRAME_LEN];
        tls.read_exact(&mut rec).await.unwrap();
        let ts = sotto_protocol::Frame::decode(&s.recv.decrypt_frame(&rec).unwrap()).unwrap();
        assert_eq!(ts[0].corr_id, CorrId::from_u64(5));
        assert_eq!(
            ts[0].decode_response().unwrap(),
            sotto_protocol::Response::Pong
        );
    })
    .await;
}

/// `docs/protocol.md` § 4, § 4a: a client that ends its direction in order (`close_notify`)
/// right after its last commands still gets their answers, then the relay's own
/// `close_notify` at a record boundary (an orderly end, not a bare close).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_notify_after_commands_is_answered_then_ended_in_order() {
    bounded(async {
        let relay = TestRelay::start().await;
        let (mut s, mut tls) = handshaken(&relay).await;
        let new = Command::New {
            recipient_auth_key: sotto_protocol::AuthSecretKey::generate(&mut rand::rngs::OsRng)
                .public(),
            recipient_dh_key: sotto_protocol::DhSecretKey::generate(&mut rand::rngs::OsRng)
                .public(),
            password: vec![],
        };
        let mut fb = FrameBuilder::new();
        assert!(fb.push(&Transmission::command(
            CorrId::from_u64(1),
            None,
            &Command::Ping
        )));
        assert!(fb.push(&Transmission::command(CorrId::from_u64(2), None, &new)));
        tls.write_all(&s.send.encrypt_frame(&fb.finish()).unwrap())
            .await
            .unwrap();
        tls.shutdown().await.unwrap();
        let mut got = Vec::new();
        loop {
            // One record, or the end of the stream at a record boundary.
            let mut rec = vec![0u8; FRAME_LEN];
            let mut filled = 0;
            while filled < FRAME_LEN {
                let n = tls
                    .read(&mut rec[filled..])
                    .await
                    .expect("the relay ended the stream without close_notify");
                if n == 0 {
                    break;
                }
                filled += n;
            }
            if filled == 0 {
                break;
            }
            assert_eq!(filled, FRAME_LEN, "the stream ended inside a record");
            got.extend(
                sotto_protocol::Frame::decode(&s.recv.decrypt_frame(&rec).unwrap()).unwrap(),
            );
        }
        let answer = |corr: u64| {
            got.iter()
                .find(|t| t.corr_id == CorrId::from_u64(corr))
                .map(|t| t.decode_response().unwrap())
        };
        assert_eq!(answer(1), Some(sotto_protocol::Response::Pong));
        assert!(matches!(
            answer(2),
            Some(sotto_protocol::Response::Ids { .. })
        ));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_pinning_another_key_sees_a_wrong_key_over_tcp() {
    bounded(async {
        let relay = TestRelay::start().await;
        let impostor = RelayAddress {
            key: sotto_protocol::RelayStaticKey::generate(&mut rand::rngs::OsRng).public(),
            ..relay.address()
        };
        let ep = endpoint();
        let err = sotto_transport::RelayClient::connect(&ep, &impostor, &tcp_options())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Transport(TransportError::IdentityMismatch)
            ),
            "{err}"
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------
// Record sizes on the wire

/// Forwards one TCP connection to `target`, recording the raw bytes of each direction.
async fn spawn_recorder(target: u16) -> (u16, Arc<Mutex<(Vec<u8>, Vec<u8>)>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new((Vec::new(), Vec::new())));
    let s = seen.clone();
    tokio::spawn(async move {
        let (client, _) = listener.accept().await.unwrap();
        let relay = TcpStream::connect(("127.0.0.1", target)).await.unwrap();
        let (cr, cw) = client.into_split();
        let (rr, rw) = relay.into_split();
        let s2 = s.clone();
        let up = tokio::spawn(record(cr, rw, s2, true));
        record(rr, cw, s, false).await;
        let _ = up.await;
    });
    (port, seen)
}

async fn record(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    seen: Arc<Mutex<(Vec<u8>, Vec<u8>)>>,
    upstream: bool,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        {
            let mut s = seen.lock().unwrap();
            let log = if upstream { &mut s.0 } else { &mut s.1 };
            log.extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// `(content type, length)` of every whole TLS record in `bytes`. A partial record at the
/// end is left out: the capture may stop in the middle of one when the connection is torn
/// down.
fn tls_records(bytes: &[u8]) -> Vec<(u8, usize)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 5 {
        let len = u16::from_be_bytes([rest[3], rest[4]]) as usize;
        if rest.len() < 5 + len {
            break;
        }
        out.push((rest[0], len));
        rest = &rest[5 + len..];
    }
    out
}

/// TLS 1.3 application data: 16 384 bytes of record + 1 content-type byte + 16 tag.
const FULL: usize = FRAME_LEN + 1 + 16;
/// A TLS 1.3 `close_notify` alert: 2 bytes + 1 content-type byte + 16 tag.
const CLOSE_NOTIFY: usize = 2 + 1 + 16;

/// Checks one direction: application-data records are a few short handshake records, then
/// only full records, then at most a `close_notify`. Returns the number of full records.
fn check_direction(what: &str, bytes: &[u8]) -> usize {
    let records = tls_records(bytes);
    let app: Vec<usize> = records
        .iter()
        .filter(|(t, _)| *t == 23)
        .map(|(_, l)| *l)
        .collect();
    let first_full = app
        .iter()
        .position(|l| *l == FULL)
        .unwrap_or_else(|| panic!("{what}: no full record in {app:?}"));
    let mut body = &app[first_full..];
    if body.last() == Some(&CLOSE_NOTIFY) {
        body = &body[..body.len() - 1];
    }
    assert!(
        body.iter().all(|l| *l == FULL),
        "{what}: a record of another size after the handshake: {body:?}"
    );
    assert!(
        first_full <= 4 && app[..first_full].iter().all(|l| *l < FULL),
        "{what}: handshake records {:?}",
        &app[..first_full]
    );
    // Nothing but handshake, change-cipher-spec and application data.
    assert!(
        records.iter().all(|(t, _)| matches!(t, 20 | 22 | 23)),
        "{what}: {records:?}"
    );
    body.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_after_the_tls_handshake_has_the_same_length() {
    bounded(async {
        let relay = TestRelay::start_with(|c| c.delivery.cover_rate = 20.0).await;
        let (port, seen) = spawn_recorder(tcp_port(&relay)).await;
        let addr = RelayAddress {
            tcp: Some(port),
            ..relay.address()
        };
        let ep = endpoint();
        let (c, mut pushes) = sotto_transport::RelayClient::connect(&ep, &addr, &tcp_options())
            .await
            .unwrap();
        let q = c.create_queue(None).await.unwrap();
        c.subscribe(&q).await.unwrap();
        let bodies: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 1 + 700 * i as usize]).collect();
        for b in &bodies {
            c.send(q.sender_id, None, 0, b.clone()).await.unwrap();
        }
        for _ in &bodies {
            let sotto_transport::Pushed::Msg { msg, .. } = next_push(&mut pushes).await else {
                panic!("expected MSG");
            };
            let m = msg.open(&q).unwrap();
            assert!(c.ack(&q, m.msg_id).await.unwrap());
        }
        c.send_cover().await.unwrap();
        c.ping().await.unwrap();
        c.close().await;
        // Wait until the relay's side has ended too, so both logs are complete.
        eventually("both directions recorded and closed", async || {
            relay.running().metrics.sessions.get() == 0
        })
        .await;
        let (up, down) = seen.lock().unwrap().clone();
        // The client sent message 1, then at least one frame per command.
        let sent = check_direction("client → relay", &up);
        assert!(sent > 2 * bodies.len(), "{sent}");
        let received = check_direction("relay → client", &down);
        assert!(received > bodies.len(), "{received}");
    })
    .await;
}

/// The TCP listener's address, for the operator's view.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_and_quic_listen_side_by_side() {
    let relay = TestRelay::start().await;
    let r = relay.running();
    let tcp: SocketAddr = r.local_tcp_addr.unwrap();
    assert_eq!(tcp.ip(), r.local_addr.ip());
    // One client per transport on the same relay, same queue.
    let (quic, _p, _e) = {
        let ep = endpoint();
        let opts = ClientOptions {
            transport: TransportChoice::Quic,
            ..client_options()
        };
        let (c, p) = sotto_transport::RelayClient::connect(&ep, &relay.address(), &opts)
            .await
            .unwrap();
        (c, p, ep)
    };
    let (tcp_client, _p2, _e2) = connect(&relay.address()).await;
    assert_eq!(quic.transport(), LinkKind::Quic);
    assert_eq!(tcp_client.transport(), LinkKind::Tcp);
    let q = quic.create_queue(None).await.unwrap();
    tcp_client
        .send(q.sender_id, None, 0, b"across transports".to_vec())
        .await
        .unwrap();
    assert_eq!(
        quic.get(&q).await.unwrap().unwrap().body,
        b"across transports"
    );
}

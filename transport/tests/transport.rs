//! The QUIC + Noise transport over real sockets on 127.0.0.1: handshake, fixed-size records,
//! identity pinning, malformed handshakes, and bulk streams with MTU padding that must not
//! stall. No relay is needed: each test builds its own responder from
//! `transport::server_config` + `transport::accept`.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use rand::rngs::OsRng;
use sotto_protocol::address::Host;
use sotto_protocol::{
    FRAME_LEN, FRAME_PLAINTEXT_LEN, HandshakeError, Initiator, RelayAddress, RelayStaticKey,
    Responder,
};
use sotto_transport::{
    self as transport, FramedConnection, QuicOptions, TransportError, client_endpoint,
    server_config,
};
use tokio::sync::mpsc;

/// Generous bound on whole tests: a stall fails the test instead of hanging it. Not a
/// performance threshold (these streams take well under a second when they work).
const TEST_BOUND: Duration = Duration::from_secs(120);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const LOCALHOST: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// What the test responder does after the handshake.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Sends every frame back, finishes when the client finishes.
    Echo,
    /// Reads every frame until the client finishes, then sends one frame holding the count.
    Sink,
    /// Sends `n` frames (frame i starts with i), then finishes.
    Source(u32),
}

/// The outcome of one accepted connection on the server side.
type Accepted = Result<[u8; 32], TransportError>;

struct Server {
    endpoint: quinn::Endpoint,
    address: RelayAddress,
    accepted: mpsc::Receiver<Accepted>,
}

fn relay_address(key: &RelayStaticKey, addr: SocketAddr) -> RelayAddress {
    RelayAddress {
        key: key.public(),
        host: Host::Ipv4(Ipv4Addr::LOCALHOST),
        port: addr.port(),
        tcp: None,
    }
}

fn spawn_server(opts: &QuicOptions, mode: Mode) -> Server {
    let key = RelayStaticKey::generate(&mut OsRng);
    let (cert, tls_key) = transport::self_signed_cert("relay.test").unwrap();
    let config = server_config(cert, tls_key, opts).unwrap();
    let endpoint = quinn::Endpoint::server(config, LOCALHOST).unwrap();
    let address = relay_address(&key, endpoint.local_addr().unwrap());
    let (tx, accepted) = mpsc::channel(16);
    let ep = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let key = key.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                match transport::accept(conn, &key, HANDSHAKE_TIMEOUT).await {
                    Ok(framed) => {
                        let _ = tx.send(Ok(framed.handshake_hash)).await;
                        serve(framed, mode).await;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e)).await;
                    }
                }
            });
        }
    });
    Server {
        endpoint,
        address,
        accepted,
    }
}

fn numbered(i: u32) -> Vec<u8> {
    let mut p = vec![0u8; FRAME_PLAINTEXT_LEN];
    p[..4].copy_from_slice(&i.to_be_bytes());
    // Vary the tail too, so a shifted record boundary could not decrypt to a valid frame.
    p[FRAME_PLAINTEXT_LEN - 4..].copy_from_slice(&(!i).to_be_bytes());
    p
}

fn number_of(p: &[u8]) -> u32 {
    assert_eq!(p.len(), FRAME_PLAINTEXT_LEN);
    let i = u32::from_be_bytes(p[..4].try_into().unwrap());
    let tail = u32::from_be_bytes(p[FRAME_PLAINTEXT_LEN - 4..].try_into().unwrap());
    assert_eq!(tail, !i, "frame {i} corrupted");
    i
}

async fn serve(framed: FramedConnection, mode: Mode) {
    let FramedConnection {
        mut sender,
        mut receiver,
        connection,
        ..
    } = framed;
    match mode {
        Mode::Echo => {
            while let Ok(Some(p)) = receiver.recv_frame().await {
                if sender.send_frame(p).await.is_err() {
                    return;
                }
            }
            let _ = sender.finish();
        }
        Mode::Sink => {
            let mut n = 0u32;
            while let Ok(Some(p)) = receiver.recv_frame().await {
                assert_eq!(number_of(&p), n);
                n += 1;
            }
            let _ = sender.send_frame(numbered(n)).await;
            let _ = sender.finish();
        }
        Mode::Source(count) => {
            for i in 0..count {
                if sender.send_frame(numbered(i)).await.is_err() {
                    return;
                }
            }
            let _ = sender.finish();
        }
    }
    // Keep the connection until the peer closes it, so finished streams are delivered.
    connection.closed().await;
}

fn client(opts: &QuicOptions) -> quinn::Endpoint {
    client_endpoint(LOCALHOST, opts).unwrap()
}

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TEST_BOUND, f)
        .await
        .expect("stalled: did not complete within the test bound")
}

/// Sends `n` numbered frames and reads `n` echoes concurrently; checks order and content and
/// that the peer then finishes the stream at a record boundary.
async fn echo_exchange(framed: FramedConnection, n: u32) {
    let FramedConnection {
        mut sender,
        mut receiver,
        connection,
        ..
    } = framed;
    let writer = tokio::spawn(async move {
        for i in 0..n {
            sender.send_frame(numbered(i)).await.unwrap();
        }
        sender.finish().unwrap();
        sender
    });
    for i in 0..n {
        let p = receiver
            .recv_frame()
            .await
            .unwrap()
            .expect("echo ended early");
        assert_eq!(number_of(&p), i);
    }
    // The responder finishes after our finish: a clean end exactly at a record boundary.
    assert!(receiver.recv_frame().await.unwrap().is_none());
    let _sender = writer.await.unwrap();
    connection.close(0u32.into(), b"");
}

#[tokio::test]
async fn echo_500_frames_each_way() {
    bounded(async {
        let opts = QuicOptions::default();
        let mut server = spawn_server(&opts, Mode::Echo);
        let ep = client(&opts);
        let framed = transport::connect(&ep, &server.address, HANDSHAKE_TIMEOUT)
            .await
            .unwrap();
        let server_hash = server.accepted.recv().await.unwrap().unwrap();
        assert_eq!(framed.handshake_hash, server_hash);
        echo_exchange(framed, 500).await;
        server.endpoint.close(0u32.into(), b"");
    })
    .await;
}

#[tokio::test]
async fn every_record_on_the_stream_is_exactly_frame_len() {
    bounded(async {
        let opts = QuicOptions::default();
        let key = RelayStaticKey::generate(&mut OsRng);
        let (cert, tls_key) = transport::self_signed_cert("relay.test").unwrap();
        let server_ep =
            quinn::Endpoint::server(server_config(cert, tls_key, &opts).unwrap(), LOCALHOST)
                .unwrap();
        let address = relay_address(&key, server_ep.local_addr().unwrap());

        // A raw server: handshake by hand, then read the client's whole stream as bytes.
        let raw_server = tokio::spawn(async move {
            let conn = server_ep.accept().await.unwrap().await.unwrap();
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let mut msg1 = vec![0u8; FRAME_LEN];
            recv.read_exact(&mut msg1).await.unwrap();
            let (mut session, msg2) = Responder::respond(&key, &msg1, &mut OsRng).unwrap();
            send.write_all(&msg2).await.unwrap();
            // Three records of our own, raw, for the client to read with `recv_frame`.
            for i in 0..3 {
                let rec = session.send.encrypt_frame(&numbered(i)).unwrap();
                send.write_all(&rec).await.unwrap();
            }
            send.finish().unwrap();
            let bytes = recv.read_to_end(64 * FRAME_LEN).await.unwrap();
            conn.close(0u32.into(), b"");
            (bytes, session)
        });

        let ep = client(&opts);
        let mut framed = transport::connect(&ep, &address, HANDSHAKE_TIMEOUT)
            .await
            .unwrap();
        for i in 0..3 {
            let p = framed.receiver.recv_frame().await.unwrap().unwrap();
            assert_eq!(number_of(&p), i);
        }
        assert!(framed.receiver.recv_frame().await.unwrap().is_none());
        for i in 0..20 {
            framed.sender.send_frame(numbered(i)).await.unwrap();
        }
        framed.sender.finish().unwrap();

        let (bytes, mut session) = raw_server.await.unwrap();
        assert_eq!(
            bytes.len(),
            20 * FRAME_LEN,
            "only whole records on the stream"
        );
        for (i, rec) in bytes.chunks(FRAME_LEN).enumerate() {
            let p = session.recv.decrypt_frame(rec).unwrap();
            assert_eq!(number_of(&p), i as u32);
        }
        // A plaintext of the wrong size is refused before anything is written.
        assert!(matches!(
            framed.sender.send_frame(vec![0; 10]).await,
            Err(TransportError::FrameLength(10))
        ));
    })
    .await;
}

#[tokio::test]
async fn a_relay_without_the_pinned_key_is_refused() {
    bounded(async {
        let opts = QuicOptions::default();
        let mut server = spawn_server(&opts, Mode::Echo);
        let mut pinned = server.address.clone();
        pinned.key = RelayStaticKey::generate(&mut OsRng).public();
        let ep = client(&opts);
        let err = transport::connect(&ep, &pinned, HANDSHAKE_TIMEOUT)
            .await
            .unwrap_err();
        assert!(
            matches!(err, TransportError::IdentityMismatch),
            "expected IdentityMismatch, got {err:?}"
        );
        assert!(err.to_string().contains("wrong relay key"));
        // The server saw a message 1 it could not decrypt.
        let server_side = server.accepted.recv().await.unwrap();
        assert!(matches!(
            server_side,
            Err(TransportError::Handshake(HandshakeError::Decrypt))
        ));
        // The same client endpoint still works with the right key.
        let framed = transport::connect(&ep, &server.address, HANDSHAKE_TIMEOUT)
            .await
            .unwrap();
        assert!(server.accepted.recv().await.unwrap().is_ok());
        echo_exchange(framed, 3).await;
    })
    .await;
}

/// Opens a raw QUIC connection and stream to the server and writes `bytes`.
async fn raw_client(
    ep: &quinn::Endpoint,
    server: &RelayAddress,
    bytes: &[u8],
    finish: bool,
) -> (quinn::Connection, quinn::SendStream, quinn::RecvStream) {
    let addr: SocketAddr = server.host_port().parse().unwrap();
    let conn = ep.connect(addr, "127.0.0.1").unwrap().await.unwrap();
    let (mut send, recv) = conn.open_bi().await.unwrap();
    send.write_all(bytes).await.unwrap();
    if finish {
        send.finish().unwrap();
    }
    (conn, send, recv)
}

fn assert_closed_for_protocol_error(reason: quinn::ConnectionError) {
    assert!(
        matches!(&reason, quinn::ConnectionError::ApplicationClosed(c)
            if c.error_code == transport::CLOSE_PROTOCOL.into()),
        "{reason:?}"
    );
}

#[tokio::test]
async fn garbage_and_short_handshakes_fail_on_the_server_without_panic() {
    bounded(async {
        let opts = QuicOptions::default();
        let mut server = spawn_server(&opts, Mode::Echo);
        let ep = client(&opts);

        // A full-length message 1 of garbage: the server rejects it and answers with a decoy
        // message 2 of the same length, so the client learns nothing else.
        let (conn, _send, mut recv) =
            raw_client(&ep, &server.address, &vec![0x5a; FRAME_LEN], true).await;
        let decoy = recv.read_to_end(4 * FRAME_LEN).await.unwrap();
        assert_eq!(decoy.len(), FRAME_LEN);
        conn.close(0u32.into(), b"");
        let got = server.accepted.recv().await.unwrap();
        assert!(
            matches!(got, Err(TransportError::Handshake(HandshakeError::Decrypt))),
            "{got:?}"
        );

        // A short first record, then the stream ends.
        let (conn, _send, _recv) = raw_client(&ep, &server.address, &[1, 2, 3], true).await;
        let got = server.accepted.recv().await.unwrap();
        assert!(
            matches!(got, Err(TransportError::TruncatedRecord(3))),
            "{got:?}"
        );
        assert_closed_for_protocol_error(conn.closed().await);

        // A valid handshake, then a record cut short and the stream finished: the server's
        // `recv_frame` fails and closes the connection.
        let (initiator, msg1) = Initiator::start(&server.address.key, &mut OsRng).unwrap();
        let (conn, mut send, mut recv) = raw_client(&ep, &server.address, &msg1, false).await;
        assert!(server.accepted.recv().await.unwrap().is_ok());
        let mut msg2 = vec![0u8; FRAME_LEN];
        recv.read_exact(&mut msg2).await.unwrap();
        let mut session = initiator.finish(&msg2).unwrap();
        let rec = session.send.encrypt_frame(&numbered(0)).unwrap();
        send.write_all(&rec[..100]).await.unwrap();
        send.finish().unwrap();
        assert_closed_for_protocol_error(conn.closed().await);

        // The server still serves well-behaved clients afterwards.
        let framed = transport::connect(&ep, &server.address, HANDSHAKE_TIMEOUT)
            .await
            .unwrap();
        assert!(server.accepted.recv().await.unwrap().is_ok());
        echo_exchange(framed, 2).await;
    })
    .await;
}

#[tokio::test]
async fn a_record_cut_short_is_an_error_and_closes_the_connection() {
    bounded(async {
        let opts = QuicOptions::default();
        let key = RelayStaticKey::generate(&mut OsRng);
        let (cert, tls_key) = transport::self_signed_cert("relay.test").unwrap();
        let server_ep =
            quinn::Endpoint::server(server_config(cert, tls_key, &opts).unwrap(), LOCALHOST)
                .unwrap();
        let address = relay_address(&key, server_ep.local_addr().unwrap());
        let raw_server = tokio::spawn(async move {
            let conn = server_ep.accept().await.unwrap().await.unwrap();
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let mut msg1 = vec![0u8; FRAME_LEN];
            recv.read_exact(&mut msg1).await.unwrap();
            let (mut session, msg2) = Responder::respond(&key, &msg1, &mut OsRng).unwrap();
            send.write_all(&msg2).await.unwrap();
            let good = session.send.encrypt_frame(&numbered(0)).unwrap();
            send.write_all(&good).await.unwrap();
            // A record whose ciphertext was tampered with, then a partial record.
            let mut bad = session.send.encrypt_frame(&numbered(1)).unwrap();
            bad[7] ^= 1;
            send.write_all(&bad).await.unwrap();
            send.finish().unwrap();
            conn.closed().await
        });
        let ep = client(&opts);
        let mut framed = transport::connect(&ep, &address, HANDSHAKE_TIMEOUT)
            .await
            .unwrap();
        assert_eq!(
            number_of(&framed.receiver.recv_frame().await.unwrap().unwrap()),
            0
        );
        let err = framed.receiver.recv_frame().await.unwrap_err();
        assert!(
            matches!(err, TransportError::Record(HandshakeError::Decrypt)),
            "{err:?}"
        );
        assert_closed_for_protocol_error(raw_server.await.unwrap());
    })
    .await;
}

#[tokio::test]
async fn a_stream_ending_inside_a_record_is_reported() {
    bounded(async {
        let opts = QuicOptions::default();
        let key = RelayStaticKey::generate(&mut OsRng);
        let (cert, tls_key) = transport::self_signed_cert("relay.test").unwrap();
        let server_ep =
            quinn::Endpoint::server(server_config(cert, tls_key, &opts).unwrap(), LOCALHOST)
                .unwrap();
        let address = relay_address(&key, server_ep.local_addr().unwrap());
        let raw_server = tokio::spawn(async move {
            let conn = server_ep.accept().await.unwrap().await.unwrap();
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let mut msg1 = vec![0u8; FRAME_LEN];
            recv.read_exact(&mut msg1).await.unwrap();
            let (_session, msg2) = Responder::respond(&key, &msg1, &mut OsRng).unwrap();
            send.write_all(&msg2).await.unwrap();
            send.write_all(&[0u8; 1000]).await.unwrap();
            send.finish().unwrap();
            conn.closed().await
        });
        let ep = client(&opts);
        let mut framed = transport::connect(&ep, &address, HANDSHAKE_TIMEOUT)
            .await
            .unwrap();
        let err = framed.receiver.recv_frame().await.unwrap_err();
        assert!(
            matches!(err, TransportError::TruncatedRecord(1000)),
            "{err:?}"
        );
        raw_server.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_silent_peer_times_out_the_handshake() {
    bounded(async {
        let opts = QuicOptions::default();
        let key = RelayStaticKey::generate(&mut OsRng);
        let (cert, tls_key) = transport::self_signed_cert("relay.test").unwrap();
        let server_ep =
            quinn::Endpoint::server(server_config(cert, tls_key, &opts).unwrap(), LOCALHOST)
                .unwrap();
        let address = relay_address(&key, server_ep.local_addr().unwrap());
        // Accepts the QUIC connection but never answers message 1.
        let silent = tokio::spawn(async move {
            let conn = server_ep.accept().await.unwrap().await.unwrap();
            let _stream = conn.accept_bi().await;
            conn.closed().await
        });
        let ep = client(&opts);
        let err = transport::connect(&ep, &address, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::Timeout), "{err:?}");
        // connect closed the half-made connection.
        silent.await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn an_unresolvable_host_is_a_resolve_error() {
    let ep = client(&QuicOptions::default());
    let mut address = relay_address(&RelayStaticKey::generate(&mut OsRng), LOCALHOST);
    address.host = Host::Domain("no-such-host.invalid".into());
    let err = transport::connect(&ep, &address, Duration::from_secs(30))
        .await
        .unwrap_err();
    assert!(
        matches!(err, TransportError::Resolve | TransportError::Timeout),
        "{err:?}"
    );
}

/// Padding on both ends, default options: bulk streams in both directions at once.
#[tokio::test]
async fn bulk_both_directions_with_padding_does_not_stall() {
    bounded(async {
        let opts = QuicOptions::default();
        assert!(opts.pad_to_mtu);
        let mut server = spawn_server(&opts, Mode::Echo);
        let ep = client(&opts);
        let framed = transport::connect(&ep, &server.address, HANDSHAKE_TIMEOUT)
            .await
            .unwrap();
        assert!(server.accepted.recv().await.unwrap().is_ok());
        echo_exchange(framed, 3000).await;
    })
    .await;
}

/// Frames per one-way run (four runs: two MTU settings, two directions).
const ONE_WAY: u32 = 2000;

/// The case the stall was measured in: the receiving side sends only (padded) ACKs.
#[tokio::test]
async fn bulk_one_way_with_padding_does_not_stall() {
    bounded(async {
        for opts in [QuicOptions::default(), QuicOptions::uniform_mtu(1452)] {
            // Client → server.
            let mut server = spawn_server(&opts, Mode::Sink);
            let ep = client(&opts);
            let mut framed = transport::connect(&ep, &server.address, HANDSHAKE_TIMEOUT)
                .await
                .unwrap();
            assert!(server.accepted.recv().await.unwrap().is_ok());
            for i in 0..ONE_WAY {
                framed.sender.send_frame(numbered(i)).await.unwrap();
            }
            framed.sender.finish().unwrap();
            let count = framed.receiver.recv_frame().await.unwrap().unwrap();
            assert_eq!(number_of(&count), ONE_WAY);

            // Server → client.
            let mut server = spawn_server(&opts, Mode::Source(ONE_WAY));
            let mut framed = transport::connect(&ep, &server.address, HANDSHAKE_TIMEOUT)
                .await
                .unwrap();
            assert!(server.accepted.recv().await.unwrap().is_ok());
            for i in 0..ONE_WAY {
                let p = framed.receiver.recv_frame().await.unwrap().unwrap();
                assert_eq!(number_of(&p), i);
            }
            assert!(framed.receiver.recv_frame().await.unwrap().is_none());
            framed.connection.close(0u32.into(), b"");
        }
    })
    .await;
}

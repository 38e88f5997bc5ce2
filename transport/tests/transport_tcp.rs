//! The TLS-over-TCP pipe of the shared transport, against a server built from the same
//! module (`transport::TcpAcceptor` + `transport::accept_tcp`): bulk records both ways with
//! backpressure, orderly ends at record boundaries, closes, a wrong key, and how SOCKS5
//! failures are reported.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::Ipv4Addr;
use std::time::Duration;

use sotto_protocol::address::Host;
use sotto_protocol::{FRAME_PLAINTEXT_LEN, RelayAddress, RelayStaticKey};
use sotto_transport::{
    self as transport, FramedConnection, ProxyError, TcpAcceptor, TransportError,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const TIMEOUT: Duration = Duration::from_secs(10);
const TEST_BOUND: Duration = Duration::from_secs(60);

async fn bounded<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(TEST_BOUND, f)
        .await
        .expect("stalled: did not complete within the test bound")
}

fn numbered(i: u32) -> Vec<u8> {
    let mut p = vec![0u8; FRAME_PLAINTEXT_LEN];
    p[..4].copy_from_slice(&i.to_be_bytes());
    p[FRAME_PLAINTEXT_LEN - 4..].copy_from_slice(&(!i).to_be_bytes());
    p
}

fn number_of(p: &[u8]) -> u32 {
    let i = u32::from_be_bytes(p[..4].try_into().unwrap());
    let tail = u32::from_be_bytes(p[FRAME_PLAINTEXT_LEN - 4..].try_into().unwrap());
    assert_eq!(tail, !i, "frame {i} corrupted");
    i
}

struct Server {
    address: RelayAddress,
    /// Handshake hashes of accepted sessions, or the accept error.
    accepted: mpsc::Receiver<Result<[u8; 32], String>>,
    /// What each session's receiver finally returned.
    ended: mpsc::Receiver<Result<(), String>>,
}

/// An echo server on TCP: every record comes back; when the client ends its stream, the
/// server ends its own.
async fn spawn_echo() -> Server {
    let key = RelayStaticKey::generate(&mut rand::rngs::OsRng);
    let (cert, tls_key) = transport::self_signed_cert("relay.test").unwrap();
    let acceptor = TcpAcceptor::new(cert, tls_key).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let address = RelayAddress {
        key: key.public(),
        host: Host::Ipv4(Ipv4Addr::LOCALHOST),
        port,
        tcp: Some(port),
    };
    let (acc_tx, accepted) = mpsc::channel(16);
    let (end_tx, ended) = mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, key, acc_tx, end_tx) = (
                acceptor.clone(),
                key.clone(),
                acc_tx.clone(),
                end_tx.clone(),
            );
            tokio::spawn(async move {
                match transport::accept_tcp(stream, &acceptor, &key, TIMEOUT).await {
                    Ok(f) => {
                        let _ = acc_tx.send(Ok(f.handshake_hash)).await;
                        let _ = end_tx.send(echo(f).await).await;
                    }
                    Err(e) => {
                        let _ = acc_tx.send(Err(e.to_string())).await;
                    }
                }
            });
        }
    });
    Server {
        address,
        accepted,
        ended,
    }
}

async fn echo(framed: FramedConnection) -> Result<(), String> {
    let FramedConnection {
        mut sender,
        mut receiver,
        ..
    } = framed;
    loop {
        match receiver.recv_frame().await {
            Ok(Some(p)) => sender.send_frame(p).await.map_err(|e| e.to_string())?,
            Ok(None) => {
                sender.shutdown().await.map_err(|e| e.to_string())?;
                return Ok(());
            }
            Err(e) => return Err(format!("{e:?}")),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_records_each_way_then_orderly_ends() {
    bounded(async {
        let mut server = spawn_echo().await;
        let framed = transport::connect_tcp(&server.address, None, TIMEOUT)
            .await
            .unwrap();
        assert_eq!(framed.connection.kind(), sotto_transport::LinkKind::Tcp);
        assert_eq!(
            Ok(framed.handshake_hash),
            server.accepted.recv().await.unwrap()
        );
        let FramedConnection {
            mut sender,
            mut receiver,
            connection,
            ..
        } = framed;
        let n = 1000;
        // Writing and reading at once: the echo can only keep up if both directions flow,
        // so a backpressure bug would stall here.
        let writer = tokio::spawn(async move {
            for i in 0..n {
                sender.send_frame(numbered(i)).await.unwrap();
            }
            sender.shutdown().await.unwrap();
        });
        for i in 0..n {
            let p = receiver
                .recv_frame()
                .await
                .unwrap()
                .expect("echo ended early");
            assert_eq!(number_of(&p), i);
        }
        // The server ends its stream after ours: a clean end at a record boundary.
        assert!(receiver.recv_frame().await.unwrap().is_none());
        writer.await.unwrap();
        assert_eq!(server.ended.recv().await.unwrap(), Ok(()));
        let stats = connection.stats();
        // Each record is one TLS record of 16 406 bytes on the wire.
        assert!(stats.bytes_sent >= u64::from(n) * 16_406, "{stats:?}");
        assert!(stats.bytes_received >= u64::from(n) * 16_406, "{stats:?}");
        connection.close(0u32.into(), b"");
        connection.closed().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_link_ends_the_peers_session_without_an_orderly_end() {
    bounded(async {
        let mut server = spawn_echo().await;
        let framed = transport::connect_tcp(&server.address, None, TIMEOUT)
            .await
            .unwrap();
        server.accepted.recv().await.unwrap().unwrap();
        let FramedConnection {
            mut sender,
            connection,
            receiver,
            ..
        } = framed;
        sender.send_frame(numbered(1)).await.unwrap();
        connection.close(transport::CLOSE_NORMAL.into(), b"");
        connection.closed().await;
        // The peer sees the connection go, not a finished stream.
        let end = server.ended.recv().await.unwrap();
        assert!(end.is_err(), "{end:?}");
        // And this side's halves fail from now on.
        assert!(matches!(
            sender.send_frame(numbered(2)).await,
            Err(TransportError::Closed)
        ));
        drop(receiver);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_is_reported_as_such_over_tcp() {
    bounded(async {
        let mut server = spawn_echo().await;
        let pinned = RelayAddress {
            key: RelayStaticKey::generate(&mut rand::rngs::OsRng).public(),
            ..server.address.clone()
        };
        let err = transport::connect_tcp(&pinned, None, TIMEOUT)
            .await
            .unwrap_err();
        assert!(matches!(err, TransportError::IdentityMismatch), "{err:?}");
        assert!(server.accepted.recv().await.unwrap().is_err());
    })
    .await;
}

/// A one-shot SOCKS5 server that answers CONNECT with `reply`.
async fn refusing_proxy(reply: u8) -> sotto_transport::Socks5Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut greeting = [0u8; 4];
        s.read_exact(&mut greeting).await.unwrap();
        assert_eq!(
            greeting,
            [5, 2, 0, 2],
            "offers no-auth and username/password"
        );
        s.write_all(&[5, 0]).await.unwrap();
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(head[..4], [5, 1, 0, 3]);
        let mut rest = vec![0u8; head[4] as usize + 2];
        s.read_exact(&mut rest).await.unwrap();
        s.write_all(&[5, reply, 0, 1, 0, 0, 0, 0, 0, 0])
            .await
            .unwrap();
    });
    format!("127.0.0.1:{port}").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_failures_say_what_went_wrong() {
    bounded(async {
        let key = RelayStaticKey::generate(&mut rand::rngs::OsRng);
        let onion = RelayAddress {
            key: key.public(),
            host: "nowhere.onion".parse().unwrap(),
            port: 5443,
            tcp: None,
        };
        // The proxy cannot reach the onion service.
        let proxy = refusing_proxy(4).await;
        let err = transport::connect_tcp(&onion, Some(&proxy), TIMEOUT)
            .await
            .unwrap_err();
        assert!(
            matches!(err, TransportError::Proxy(ProxyError::Refused(_))),
            "{err:?}"
        );
        assert!(err.to_string().contains("host unreachable"), "{err}");
        // No proxy listening.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dead: sotto_transport::Socks5Proxy =
            format!("127.0.0.1:{}", closed.local_addr().unwrap().port())
                .parse()
                .unwrap();
        drop(closed);
        let err = transport::connect_tcp(&onion, Some(&dead), TIMEOUT)
            .await
            .unwrap_err();
        assert!(
            matches!(err, TransportError::Proxy(ProxyError::Unreachable { .. })),
            "{err:?}"
        );
        assert!(err.to_string().contains("is Tor running?"), "{err}");
        // And never directly.
        assert!(matches!(
            transport::connect_tcp(&onion, None, TIMEOUT).await,
            Err(TransportError::OnionNeedsProxy)
        ));
    })
    .await;
}

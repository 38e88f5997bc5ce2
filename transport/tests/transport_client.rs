//! `RelayClient` over real QUIC on 127.0.0.1 against a small in-test responder (not the
//! relay): answers are routed by correlation id even when answered out of order, commands
//! are signed with the session's handshake hash, sealed bodies open, pushes arrive on the
//! pushed channel, cover frames are sent alone and the relay's are discarded, timeouts and
//! closes end requests cleanly. End-to-end tests against the real relay live in `relay/`.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use rand::rngs::OsRng;
use sotto_protocol::address::Host;
use sotto_protocol::seal::BodySealKey;
use sotto_protocol::{
    AuthPublicKey, Command, CorrId, DhSecretKey, EntityId, ErrorCode, Frame, FrameBuilder,
    MAX_BODY, MessageId, RecipientId, RelayAddress, RelayStaticKey, Response, SenderId,
    Transmission,
};
use sotto_transport::ClientError;
use sotto_transport::client::{ClientOptions, Pushed, RelayClient};
use sotto_transport::{self as transport, FramedConnection, QuicOptions};
use tokio::sync::mpsc;

const TEST_BOUND: Duration = Duration::from_secs(120);
const LOCALHOST: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
const BODY: &[u8] = b"end-to-end ciphertext, padded by the sender";

/// What the responder saw: one entry per transmission.
#[derive(Debug, Clone)]
struct Seen {
    corr: CorrId,
    cmd: &'static str,
    /// Transmissions in the frame this one came in.
    frame_count: usize,
}

struct Responder {
    address: RelayAddress,
    seen: mpsc::Receiver<Seen>,
    /// Per ended session, the QUIC application error code the client closed it with
    /// (`None`: ended another way).
    closes: mpsc::Receiver<Option<u64>>,
    _endpoint: quinn::Endpoint,
}

struct Queue {
    recipient_key: AuthPublicKey,
    seal: BodySealKey,
    delivered: Vec<MessageId>,
}

fn spawn_responder() -> Responder {
    let key = RelayStaticKey::generate(&mut OsRng);
    let opts = QuicOptions::default();
    let (cert, tls_key) = transport::self_signed_cert("relay.test").unwrap();
    let endpoint = quinn::Endpoint::server(
        transport::server_config(cert, tls_key, &opts).unwrap(),
        LOCALHOST,
    )
    .unwrap();
    let address = RelayAddress {
        key: key.public(),
        host: Host::Ipv4(Ipv4Addr::LOCALHOST),
        port: endpoint.local_addr().unwrap().port(),
        tcp: None,
    };
    let (tx, seen) = mpsc::channel(4096);
    let (close_tx, closes) = mpsc::channel(64);
    let ep = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let key = key.clone();
            let tx = tx.clone();
            let close_tx = close_tx.clone();
            tokio::spawn(async move {
                let conn = incoming.await.unwrap();
                let framed = transport::accept(conn.clone(), &key, Duration::from_secs(10))
                    .await
                    .unwrap();
                respond(framed, tx).await;
                let code = match conn.closed().await {
                    quinn::ConnectionError::ApplicationClosed(c) => Some(c.error_code.into_inner()),
                    _ => None,
                };
                let _ = close_tx.send(code).await;
            });
        }
    });
    Responder {
        address,
        seen,
        closes,
        _endpoint: endpoint,
    }
}

/// Packs transmissions into as few frames as they fit.
fn frames(ts: &[Transmission]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut b = FrameBuilder::new();
    for t in ts {
        if !b.push(t) {
            out.push(std::mem::take(&mut b).finish());
            assert!(b.push(t));
        }
    }
    if !b.is_empty() {
        out.push(b.finish());
    }
    out
}

/// A tiny stand-in for a relay: enough of NEW/SUB/GET/ACK to exercise the client.
async fn respond(framed: FramedConnection, seen: mpsc::Sender<Seen>) {
    let FramedConnection {
        mut sender,
        mut receiver,
        connection,
        handshake_hash,
    } = framed;
    let mut queues: HashMap<RecipientId, Queue> = HashMap::new();
    let mut next_msg = 0u8;
    while let Ok(Some(plaintext)) = receiver.recv_frame().await {
        let ts = Frame::decode(&plaintext).unwrap();
        let frame_count = ts.len();
        let mut answers = Vec::new();
        let mut pushes = Vec::new();
        let mut cover_first = false;
        for t in ts {
            let cmd = t.decode_command().unwrap();
            seen.send(Seen {
                corr: t.corr_id,
                cmd: cmd.name(),
                frame_count,
            })
            .await
            .unwrap();
            let entity = t.entity;
            let mut answer =
                |r: Response| answers.push(Transmission::response(t.corr_id, entity, &r));
            // Recipient commands must be signed by the queue's key over this session's hash.
            let queue = entity
                .map(RecipientId::from)
                .and_then(|id| queues.get_mut(&id).map(|q| (id, q)))
                .filter(|(_, q)| t.verify(&q.recipient_key, &handshake_hash));
            match cmd {
                Command::Ping => {
                    cover_first = true;
                    answer(Response::Pong);
                }
                Command::Drop | Command::Off => {}
                Command::New {
                    recipient_auth_key,
                    recipient_dh_key,
                    ..
                } => {
                    assert!(t.signature.is_none() && entity.is_none());
                    let relay_dh = DhSecretKey::generate(&mut OsRng);
                    let recipient_id = RecipientId::random(&mut OsRng);
                    queues.insert(
                        recipient_id,
                        Queue {
                            recipient_key: recipient_auth_key,
                            seal: BodySealKey::derive(&relay_dh, &recipient_dh_key).unwrap(),
                            delivered: Vec::new(),
                        },
                    );
                    answer(Response::Ids {
                        recipient_id,
                        sender_id: SenderId::random(&mut OsRng),
                        relay_dh_key: relay_dh.public(),
                    });
                }
                Command::Sub | Command::Get => match queue {
                    Some((id, q)) => {
                        next_msg += 1;
                        let msg_id = MessageId([next_msg; 24]);
                        q.delivered.push(msg_id);
                        let msg = Response::Msg {
                            msg_id,
                            timestamp: 1_700_000_000,
                            flags: 1,
                            sealed_body: q.seal.seal(&msg_id, BODY),
                        };
                        if matches!(cmd, Command::Sub) {
                            answer(Response::Ok);
                            let e = Some(EntityId::from(id));
                            pushes.push(Transmission::response(CorrId::NONE, e, &msg));
                            pushes.push(Transmission::response(CorrId::NONE, e, &Response::End));
                        } else {
                            answer(msg);
                        }
                    }
                    None => answer(Response::Err(ErrorCode::Auth)),
                },
                Command::Ack { msg_id } => match queue {
                    Some((_, q)) if q.delivered.contains(&msg_id) => {
                        q.delivered.retain(|m| *m != msg_id);
                        answer(Response::Ok);
                    }
                    Some(_) => answer(Response::NoMsg),
                    None => answer(Response::Err(ErrorCode::Auth)),
                },
                Command::Key { .. } => {
                    // Answered with a response that does not decode (error code 255).
                    let mut bad = Transmission::response(t.corr_id, entity, &Response::Ok);
                    bad.payload = vec![0x87, 0xff];
                    answers.push(bad);
                }
                Command::Del => {
                    // Ends the session from the relay's side, unanswered.
                    connection.close(0u32.into(), b"");
                    return;
                }
                _ => answer(Response::Err(ErrorCode::Prohibited)),
            }
        }
        if cover_first
            && sender
                .send_frame(FrameBuilder::cover_response())
                .await
                .is_err()
        {
            return;
        }
        // Answer out of order: routing must go by correlation id.
        answers.reverse();
        for f in frames(&answers).into_iter().chain(frames(&pushes)) {
            if sender.send_frame(f).await.is_err() {
                return;
            }
        }
    }
}

fn options() -> ClientOptions {
    ClientOptions {
        request_timeout: Duration::from_secs(30),
        ..ClientOptions::default()
    }
}

async fn connect(r: &Responder, opts: &ClientOptions) -> (RelayClient, mpsc::Receiver<Pushed>) {
    let ep = transport::client_endpoint(LOCALHOST, &opts.quic).unwrap();
    RelayClient::connect(&ep, &r.address, opts).await.unwrap()
}

async fn bounded<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(TEST_BOUND, f)
        .await
        .expect("did not complete within the test bound")
}

#[tokio::test]
async fn concurrent_pings_are_routed_by_correlation_id() {
    bounded(async {
        let mut r = spawn_responder();
        let (client, _pushed) = connect(&r, &options()).await;
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..200 {
            let c = client.clone();
            tasks.spawn(async move { c.ping().await });
        }
        while let Some(res) = tasks.join_next().await {
            res.unwrap().unwrap();
        }
        let mut corrs = std::collections::HashSet::new();
        for _ in 0..200 {
            let s = r.seen.recv().await.unwrap();
            assert_eq!(s.cmd, "PING");
            assert_ne!(s.corr, CorrId::NONE);
            assert!(corrs.insert(s.corr), "correlation id reused");
        }
        let stats = client.stats();
        assert_eq!(stats.requests, 200);
        assert_eq!(stats.late_answers, 0);
        // Every frame with a PING was preceded by a relay cover frame, discarded.
        assert!(stats.cover_received >= 1);
        client.close().await;
    })
    .await;
}

#[tokio::test]
async fn queue_commands_are_signed_and_sealed_bodies_open() {
    bounded(async {
        let r = spawn_responder();
        let (client, mut pushed) = connect(&r, &options()).await;
        let creds = client.create_queue(None).await.unwrap();
        assert_eq!(&creds.relay, client.relay());

        client.subscribe(&creds).await.unwrap();
        let Some(Pushed::Msg { recipient_id, msg }) = pushed.recv().await else {
            panic!("expected a pushed MSG");
        };
        assert_eq!(recipient_id, creds.recipient_id);
        let opened = msg.open(&creds).unwrap();
        assert_eq!(opened.body, BODY);
        assert_eq!((opened.timestamp, opened.flags), (1_700_000_000, 1));
        let Some(Pushed::End { recipient_id }) = pushed.recv().await else {
            panic!("expected END");
        };
        assert_eq!(recipient_id, creds.recipient_id);
        assert!(client.ack(&creds, opened.msg_id).await.unwrap());
        // A second ACK of the same message: NO_MSG, reported as `false`.
        assert!(!client.ack(&creds, opened.msg_id).await.unwrap());

        let got = client.get(&creds).await.unwrap().expect("a message");
        assert_eq!(got.body, BODY);

        // Another queue's credentials cannot open this queue's bodies.
        let other = client.create_queue(Some(b"pw")).await.unwrap();
        assert!(matches!(msg.open(&other), Err(ClientError::Open(_))));

        // Signed with a key the responder does not know for this queue: AUTH.
        let mut forged = creds.clone();
        forged.recipient_key = other.recipient_key.clone();
        assert!(matches!(
            client.get(&forged).await,
            Err(ClientError::Relay(ErrorCode::Auth))
        ));

        // Debug output of credentials and messages carries no ids, keys or bodies.
        let dbg = format!("{creds:?} {msg:?} {got:?}");
        assert!(!dbg.contains(&creds.recipient_id.to_string()));
        assert!(!dbg.contains(&creds.sender_id.to_string()));
    })
    .await;
}

#[tokio::test]
async fn oversized_commands_are_refused_before_sending() {
    bounded(async {
        let mut r = spawn_responder();
        let (client, _pushed) = connect(&r, &options()).await;
        let err = client
            .send(SenderId([1; 24]), None, 0, vec![0; MAX_BODY + 1])
            .await
            .unwrap_err();
        assert!(matches!(err, ClientError::Protocol(_)), "{err:?}");
        client.ping().await.unwrap();
        // The responder saw only the PING.
        assert_eq!(r.seen.recv().await.unwrap().cmd, "PING");
        assert_eq!(client.stats().requests, 1);
    })
    .await;
}

#[tokio::test]
async fn an_unanswered_request_times_out_and_the_session_goes_on() {
    bounded(async {
        let r = spawn_responder();
        let opts = ClientOptions {
            request_timeout: Duration::from_millis(300),
            ..ClientOptions::default()
        };
        let (client, _pushed) = connect(&r, &opts).await;
        let creds = client.create_queue(None).await.unwrap();
        // The responder never answers OFF.
        assert!(matches!(
            client.off(&creds).await,
            Err(ClientError::Timeout)
        ));
        client.ping().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn cover_frames_go_alone_and_relay_cover_is_discarded() {
    bounded(async {
        let mut r = spawn_responder();
        let (client, _pushed) = connect(&r, &options()).await;
        for _ in 0..3 {
            client.send_cover().await.unwrap();
        }
        client.ping().await.unwrap();
        for _ in 0..3 {
            let s = r.seen.recv().await.unwrap();
            assert_eq!((s.cmd, s.corr, s.frame_count), ("DROP", CorrId::NONE, 1));
        }
        assert_eq!(r.seen.recv().await.unwrap().cmd, "PING");
        let stats = client.stats();
        assert_eq!(stats.cover_sent, 3);
        // The relay's cover frame came before the PONG on the same stream.
        assert_eq!(stats.cover_received, 1);
    })
    .await;
}

#[tokio::test]
async fn poisson_cover_traffic_runs_until_close() {
    bounded(async {
        let mut r = spawn_responder();
        let (client, mut pushed) = connect(&r, &options()).await;
        let cover = client.start_cover_traffic(200.0);
        for _ in 0..5 {
            let s = r.seen.recv().await.unwrap();
            assert_eq!((s.cmd, s.frame_count), ("DROP", 1));
        }
        client.close().await;
        cover.await.unwrap();
        assert!(client.is_closed());
        assert!(matches!(client.ping().await, Err(ClientError::Closed)));
        assert!(matches!(
            pushed.recv().await,
            Some(Pushed::Closed(ClientError::Closed))
        ));
        assert!(pushed.recv().await.is_none());
        // A rate that is not positive starts nothing.
        client.start_cover_traffic(0.0).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_session_closed_by_the_relay_fails_waiters_and_says_so() {
    bounded(async {
        let r = spawn_responder();
        let (client, mut pushed) = connect(&r, &options()).await;
        let creds = client.create_queue(None).await.unwrap();
        // The responder closes the connection instead of answering DEL.
        let err = client.delete(&creds).await.unwrap_err();
        assert!(
            matches!(err, ClientError::Closed | ClientError::Transport(_)),
            "{err:?}"
        );
        let Some(Pushed::Closed(reason)) = pushed.recv().await else {
            panic!("expected Closed");
        };
        assert!(
            matches!(reason, ClientError::Closed | ClientError::Transport(_)),
            "{reason:?}"
        );
        assert!(client.is_closed());
        assert!(matches!(client.ping().await, Err(ClientError::Closed)));
    })
    .await;
}

/// `docs/protocol.md` § 9.3: a response the client cannot decode ends the session, and the
/// client closes it with QUIC application error code 1 (protocol violation, § 4).
#[tokio::test]
async fn an_undecodable_response_ends_the_session_with_code_1() {
    bounded(async {
        let mut r = spawn_responder();
        let (client, mut pushed) = connect(&r, &options()).await;
        let creds = client.create_queue(None).await.unwrap();
        let sender_key = sotto_protocol::AuthSecretKey::generate(&mut OsRng).public();
        let err = client.secure(&creds, sender_key).await.unwrap_err();
        assert!(
            matches!(err, ClientError::Closed | ClientError::Protocol(_)),
            "{err:?}"
        );
        let Some(Pushed::Closed(reason)) = pushed.recv().await else {
            panic!("expected Closed");
        };
        assert!(matches!(reason, ClientError::Protocol(_)), "{reason:?}");
        assert_eq!(r.closes.recv().await.unwrap(), Some(1));
    })
    .await;
}

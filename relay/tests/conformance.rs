//! Conformance: what `docs/protocol.md` says a relay does, read on the wire of a real relay
//! over real QUIC. Each test is named in the document's conformance section (§ 17), and
//! each guards a rule that an implementation written from the document alone relies on.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::raw::RawSession;
use common::*;
use rand::rngs::OsRng;
use sotto_protocol::{
    AuthPublicKey, AuthSecretKey, Command, CorrId, DhSecretKey, ErrorCode, FRAME_LEN,
    FRAME_PLAINTEXT_LEN, FrameBuilder, Response, Transmission,
};
use sotto_transport::{Pushed, QueueCredentials};

/// QUIC application error code of a protocol violation (§ 4).
const CLOSE_PROTOCOL: u64 = 1;

/// A frame plaintext holding `transmission` (already encoded, with any length prefix it
/// should have) after a count of 1, zero-padded to full length.
fn frame_with(bytes: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; FRAME_PLAINTEXT_LEN];
    p[..2].copy_from_slice(&1u16.to_be_bytes());
    p[2..2 + bytes.len()].copy_from_slice(bytes);
    p
}

/// `len ‖ transmission` for a transmission whose header fields are given raw.
fn prefixed(t: &[u8]) -> Vec<u8> {
    let mut v = (t.len() as u16).to_be_bytes().to_vec();
    v.extend_from_slice(t);
    v
}

/// A PING transmission with a raw signed flag and entity length (no entity bytes beyond
/// what `entity` gives).
fn ping_header(signed: u8, entity_len: u8, entity: &[u8]) -> Vec<u8> {
    let mut t = vec![signed];
    t.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 1]);
    t.push(entity_len);
    t.extend_from_slice(entity);
    t.push(0x0b);
    t
}

/// § 4, § 7, § 8: every error at the frame or transmission-header level ends the session
/// with QUIC application error code 1, as record-level errors do; nothing is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_and_header_errors_close_with_code_1() {
    let relay = TestRelay::start().await;
    let mut padding = FrameBuilder::new();
    assert!(padding.push(&Transmission::command(
        CorrId::from_u64(1),
        None,
        &Command::Ping
    )));
    let mut padding = padding.finish();
    *padding.last_mut().unwrap() = 1;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        // count 1, length 0xffff: runs past the end of the frame.
        ("length past the end", {
            let mut p = vec![0u8; FRAME_PLAINTEXT_LEN];
            p[..4].copy_from_slice(&[0, 1, 0xff, 0xff]);
            p
        }),
        // count 0xffff: more transmissions than the frame holds.
        ("count past the end", {
            let mut p = vec![0u8; FRAME_PLAINTEXT_LEN];
            p[..2].copy_from_slice(&[0xff, 0xff]);
            p
        }),
        ("non-zero padding", padding),
        ("signed = 2", frame_with(&prefixed(&ping_header(2, 0, &[])))),
        (
            "entity length 5",
            frame_with(&prefixed(&ping_header(0, 5, &[1, 2, 3, 4, 5]))),
        ),
        ("empty payload", {
            let mut t = ping_header(0, 0, &[]);
            t.pop();
            frame_with(&prefixed(&t))
        }),
        ("zero-length transmission", frame_with(&prefixed(&[]))),
    ];
    for (what, plaintext) in cases {
        let mut s = RawSession::open(&relay).await;
        // A PING in the same flight, before the bad frame, so that the close is not a
        // reaction to an idle session.
        s.send(&[Transmission::command(
            CorrId::from_u64(9),
            None,
            &Command::Ping,
        )])
        .await;
        s.send_plaintext(&plaintext).await;
        assert_eq!(s.close_code().await, Some(CLOSE_PROTOCOL), "{what}");
    }
    // Record level, for comparison (already so): a unit that does not decrypt, and a stream
    // that ends inside a unit.
    let mut s = RawSession::open(&relay).await;
    s.send_raw(&vec![9u8; FRAME_LEN]).await;
    assert_eq!(
        s.close_code().await,
        Some(CLOSE_PROTOCOL),
        "undecryptable unit"
    );
    let mut s = RawSession::open(&relay).await;
    s.send_raw(&[7u8; 1000]).await;
    s.finish();
    assert_eq!(
        s.close_code().await,
        Some(CLOSE_PROTOCOL),
        "stream ends inside a unit"
    );
    // The relay still serves a well-behaved session.
    let mut s = RawSession::open(&relay).await;
    let pong = s
        .request(Transmission::command(
            CorrId::from_u64(1),
            None,
            &Command::Ping,
        ))
        .await;
    assert_eq!(pong, Response::Pong);
}

/// A relay whose messages are released after Poisson delays short enough for a test, so
/// that two messages sent in a row are released in either order.
async fn poisson_relay() -> TestRelay {
    TestRelay::start_with(|c| {
        c.delivery.mode = "poisson".into();
        c.delivery.mean = Duration::from_millis(100);
        c.delivery.cap = Duration::from_millis(1000);
    })
    .await
}

/// Attempts at sending X then Y before giving up on seeing Y released first: each attempt
/// sees it with probability 1/2, so all of them miss with probability 2^-40.
const ATTEMPTS: usize = 40;

/// Waits until a GET on a new session (which has nothing in flight on the queue) answers
/// `body`: the oldest released message is then `body`, so it is visible.
async fn released(relay: &TestRelay, creds: &QueueCredentials, body: &[u8]) {
    eventually("the older message is released", async || {
        let (probe, _p, _e) = connect(&relay.address()).await;
        let got = probe.get(creds).await.unwrap();
        probe.close().await;
        got.is_some_and(|m| m.body == body)
    })
    .await;
}

/// § 9.2 SUB, § 12: a SUB again on the session that holds the subscription pushes the
/// message in flight itself — even when a message at an earlier position (sent earlier,
/// released later) became visible meanwhile — and the ACK of its id answers OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sub_again_pushes_the_message_in_flight_under_poisson_delays() {
    let relay = poisson_relay().await;
    let (c, mut pushes, _e) = connect(&relay.address()).await;
    let creds = c.create_queue(None).await.unwrap();
    c.subscribe(&creds).await.unwrap();
    let mut hits = 0;
    for i in 0..ATTEMPTS {
        let (x, y) = (format!("x{i}").into_bytes(), format!("y{i}").into_bytes());
        c.send(creds.sender_id, None, 0, x.clone()).await.unwrap();
        c.send(creds.sender_id, None, 0, y.clone()).await.unwrap();
        let Pushed::Msg { msg, .. } = next_push(&mut pushes).await else {
            panic!("expected MSG")
        };
        let first = msg.open(&creds).unwrap();
        if first.body == x {
            // Released in send order: not the case under test.
            assert!(c.ack(&creds, first.msg_id).await.unwrap());
            let Pushed::Msg { msg, .. } = next_push(&mut pushes).await else {
                panic!("expected MSG")
            };
            let second = msg.open(&creds).unwrap();
            assert_eq!(second.body, y);
            assert!(c.ack(&creds, second.msg_id).await.unwrap());
            continue;
        }
        assert_eq!(first.body, y);
        released(&relay, &creds, &x).await;
        // SUB again: OK, and Y — the message this session holds — again, same id.
        c.subscribe(&creds).await.unwrap();
        let Pushed::Msg { msg, .. } = next_push(&mut pushes).await else {
            panic!("expected MSG")
        };
        let again = msg.open(&creds).unwrap();
        assert_eq!(again.body, y, "SUB again pushed another message");
        assert_eq!(again.msg_id, first.msg_id);
        assert!(
            c.ack(&creds, first.msg_id).await.unwrap(),
            "the ACK of the message in flight answered NO_MSG"
        );
        // Then X, and nothing is lost.
        let Pushed::Msg { msg, .. } = next_push(&mut pushes).await else {
            panic!("expected MSG")
        };
        let next = msg.open(&creds).unwrap();
        assert_eq!(next.body, x);
        assert!(c.ack(&creds, next.msg_id).await.unwrap());
        hits += 1;
        if hits == 2 {
            break;
        }
    }
    assert!(hits > 0, "Y was never released before X");
    assert!(c.get(&creds).await.unwrap().is_none());
}

/// § 9.2 GET and ACK: GET answers the same message again until it is acknowledged, even
/// when a message at an earlier position was released after the first GET; the (signed)
/// ACK of its id answers OK, and the next GET gives the other one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_again_answers_the_message_in_flight_under_poisson_delays() {
    let relay = poisson_relay().await;
    let (c, _pushes, _e) = connect(&relay.address()).await;
    let creds = c.create_queue(None).await.unwrap();
    let mut hits = 0;
    for i in 0..ATTEMPTS {
        let (x, y) = (format!("x{i}").into_bytes(), format!("y{i}").into_bytes());
        c.send(creds.sender_id, None, 0, x.clone()).await.unwrap();
        c.send(creds.sender_id, None, 0, y.clone()).await.unwrap();
        let mut first = None;
        eventually("a message is released", async || {
            first = c.get(&creds).await.unwrap();
            first.is_some()
        })
        .await;
        let first = first.unwrap();
        if first.body == x {
            assert!(c.ack(&creds, first.msg_id).await.unwrap());
            let mut second = None;
            eventually("the second message is released", async || {
                second = c.get(&creds).await.unwrap();
                second.is_some()
            })
            .await;
            let second = second.unwrap();
            assert_eq!(second.body, y);
            assert!(c.ack(&creds, second.msg_id).await.unwrap());
            continue;
        }
        assert_eq!(first.body, y);
        released(&relay, &creds, &x).await;
        let again = c.get(&creds).await.unwrap().unwrap();
        assert_eq!(again.body, y, "GET again answered another message");
        assert_eq!(again.msg_id, first.msg_id);
        assert!(
            c.ack(&creds, first.msg_id).await.unwrap(),
            "the ACK of the message GET gave answered NO_MSG"
        );
        let next = c.get(&creds).await.unwrap().unwrap();
        assert_eq!(next.body, x);
        assert!(c.ack(&creds, next.msg_id).await.unwrap());
        hits += 1;
        if hits == 2 {
            break;
        }
    }
    assert!(hits > 0, "Y was never released before X");
    assert!(c.get(&creds).await.unwrap().is_none());
}

/// § 4: a client that ends its stream (FIN) at a unit boundary right after its last
/// commands still gets their answers — a PING's PONG, and a NEW's IDS, which waits for a
/// store write — then the end of the relay's stream, then the orderly close (code 0).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fin_after_commands_is_answered_then_closed_with_code_0() {
    let relay = TestRelay::start().await;
    let new = Command::New {
        recipient_auth_key: AuthSecretKey::generate(&mut OsRng).public(),
        recipient_dh_key: DhSecretKey::generate(&mut OsRng).public(),
        password: vec![],
    };
    for round in 0..5 {
        let mut s = RawSession::open(&relay).await;
        s.send(&[
            Transmission::command(CorrId::from_u64(1), None, &Command::Ping),
            Transmission::command(CorrId::from_u64(2), None, &new),
        ])
        .await;
        s.finish();
        let mut got = Vec::new();
        while let Some(ts) = s.try_recv_frame().await {
            got.extend(ts);
        }
        let answer = |corr: u64| {
            got.iter()
                .find(|t| t.corr_id == CorrId::from_u64(corr))
                .map(|t| t.decode_response().unwrap())
        };
        assert_eq!(answer(1), Some(Response::Pong), "round {round}: no PONG");
        assert!(
            matches!(answer(2), Some(Response::Ids { .. })),
            "round {round}: no IDS"
        );
        assert_eq!(s.close_code().await, Some(0), "round {round}");
    }
}

/// A NEW with the given auth key and password and a fresh DH key.
fn new_queue(corr: u64, key: AuthPublicKey, password: Vec<u8>) -> Transmission {
    let cmd = Command::New {
        recipient_auth_key: key,
        recipient_dh_key: DhSecretKey::generate(&mut OsRng).public(),
        password,
    };
    Transmission::command(CorrId::from_u64(corr), None, &cmd)
}

/// Small-order Ed25519 points: the identity (y = 1) and the point of order 2 (y = −1).
fn small_order_keys() -> [AuthPublicKey; 2] {
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let mut order_two = [0xffu8; 32];
    order_two[0] = 0xec;
    order_two[31] = 0x7f;
    [identity, order_two].map(|b| AuthPublicKey::from_bytes(&b).unwrap())
}

/// § 9.1, § 9.2: NEW, KEY and SKEY carrying a small-order auth key are answered
/// `ERR SYNTAX` and change nothing (such a key verifies no signature, so the queue or the
/// sender key would be unusable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_order_auth_keys_are_refused_with_syntax() {
    let relay = TestRelay::start().await;
    let mut s = RawSession::open(&relay).await;
    let recipient = AuthSecretKey::generate(&mut OsRng);
    let Response::Ids {
        recipient_id,
        sender_id,
        ..
    } = s.request(new_queue(1, recipient.public(), vec![])).await
    else {
        panic!("NEW with a good key must be answered IDS")
    };
    let (queues_before, _) = relay.running().store.counts().unwrap();
    let mut corr = 10;
    for bad in small_order_keys() {
        corr += 1;
        assert_eq!(
            s.request(new_queue(corr, bad, vec![])).await,
            Response::Err(ErrorCode::Syntax),
            "NEW"
        );
        corr += 1;
        let key = Transmission::signed(
            CorrId::from_u64(corr),
            Some(recipient_id.into()),
            &Command::Key { sender_key: bad },
            &recipient,
            &s.hash(),
        );
        assert_eq!(
            s.request(key).await,
            Response::Err(ErrorCode::Syntax),
            "KEY"
        );
        corr += 1;
        // SKEY cannot be signed by a small-order key's secret (there is none); unsigned.
        let skey = Transmission::command(
            CorrId::from_u64(corr),
            Some(sender_id.into()),
            &Command::SKey { sender_key: bad },
        );
        assert_eq!(
            s.request(skey).await,
            Response::Err(ErrorCode::Syntax),
            "SKEY"
        );
    }
    assert_eq!(relay.running().store.counts().unwrap().0, queues_before);
    // The queue is still unsecured: an unsigned SEND is accepted.
    let send = Transmission::command(
        CorrId::from_u64(99),
        Some(sender_id.into()),
        &Command::Send {
            flags: 0,
            body: b"still open".to_vec(),
        },
    );
    assert_eq!(s.request(send).await, Response::Ok);
}

/// § 9.1, § 9.2 table: a NEW whose password is over `MAX_PASSWORD_LEN` is answered
/// `ERR LARGE` (a length over its limit), one at the limit is accepted by a relay without
/// a password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_with_an_over_long_password_is_answered_large() {
    let relay = TestRelay::start().await;
    let mut s = RawSession::open(&relay).await;
    let key = AuthSecretKey::generate(&mut OsRng).public();
    let mut long = new_queue(1, key, vec![]);
    // Built by hand: the encoder would refuse it. NEW ‖ key ‖ DH key ‖ u8 65 ‖ 65 bytes.
    long.payload.truncate(1 + 32 + 32);
    long.payload.push(65);
    long.payload.extend_from_slice(&[b'p'; 65]);
    assert_eq!(s.request(long).await, Response::Err(ErrorCode::Large));
    let at_limit = new_queue(
        2,
        key,
        vec![b'p'; sotto_protocol::command::MAX_PASSWORD_LEN],
    );
    assert!(matches!(s.request(at_limit).await, Response::Ids { .. }));
}

/// § 2: a command with the all-zero correlation id (which marks pushes) is refused with ERR
/// SYNTAX under correlation id zero and not executed: a NEW so sent makes no queue (before,
/// its answer was dropped as an internal write's and the queue was left orphaned), and the
/// session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_with_correlation_id_zero_is_refused_and_not_executed() {
    let relay = TestRelay::start().await;
    let mut s = RawSession::open(&relay).await;
    let key = AuthSecretKey::generate(&mut OsRng).public();
    let (before, _) = relay.running().store.counts().unwrap();
    let ping = Transmission::command(CorrId::NONE, None, &Command::Ping);
    for (name, t) in [("PING", ping), ("NEW", new_queue(0, key, Vec::new()))] {
        let got = s.exchange(&[t], |got| !got.is_empty()).await;
        assert_eq!(got.len(), 1, "{name}");
        assert_eq!(got[0].corr_id, CorrId::NONE);
        assert_eq!(
            got[0].decode_response().unwrap(),
            Response::Err(ErrorCode::Syntax),
            "{name}"
        );
    }
    assert_eq!(
        relay.running().store.counts().unwrap().0,
        before,
        "no queue was made"
    );
    let ping = Transmission::command(CorrId::from_u64(1), None, &Command::Ping);
    assert_eq!(s.request(ping).await, Response::Pong);
}

/// § 4, § 5.4: a message 1 that is short (the stream ends inside it) or does not decrypt
/// ends the session with code 1; the one that does not decrypt is first answered with a
/// decoy message 2 of full length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_errors_close_with_code_1() {
    // After a decoy the relay waits for the client to close, bounded by this.
    let relay =
        TestRelay::start_with(|c| c.limits.handshake_timeout = Duration::from_secs(2)).await;
    for (what, bytes, decoy) in [
        ("short message 1", vec![1u8; 100], false),
        (
            "message 1 that does not decrypt",
            vec![0x42u8; FRAME_LEN],
            true,
        ),
    ] {
        let ep = endpoint();
        let conn = ep
            .connect(relay.running().local_addr, "127.0.0.1")
            .unwrap()
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&bytes).await.unwrap();
        send.finish().unwrap();
        let mut m2 = vec![0u8; FRAME_LEN];
        let got_m2 = recv.read_exact(&mut m2).await.is_ok();
        assert_eq!(got_m2, decoy, "{what}: decoy message 2");
        let reason = tokio::time::timeout(Duration::from_secs(20), conn.closed())
            .await
            .expect("the relay did not close the connection");
        assert!(
            matches!(&reason, quinn::ConnectionError::ApplicationClosed(c)
                if c.error_code.into_inner() == CLOSE_PROTOCOL),
            "{what}: {reason:?}"
        );
    }
}

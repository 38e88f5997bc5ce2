//! Conformance: what `docs/protocol.md` says a relay does, read on the wire of a real relay
//! over real QUIC. Each test is named in the document's conformance section (§ 17), and
//! each guards a rule that an implementation written from the document alone relies on.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::raw::RawSession;
use common::*;
use sotto_protocol::{
    Command, CorrId, FRAME_LEN, FRAME_PLAINTEXT_LEN, FrameBuilder, Response, Transmission,
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

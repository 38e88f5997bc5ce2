//! Hostile input: each bad session is closed or answered on its own while a second client's
//! session keeps working.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use sotto_protocol::{
    Command, CorrId, FRAME_LEN, FrameBuilder, Initiator, RelayAddress, Session, Transmission,
};

/// Opens a raw QUIC stream to the relay, without any Noise.
async fn raw_stream(
    addr: &RelayAddress,
    port: u16,
) -> (
    quinn::Connection,
    quinn::SendStream,
    quinn::RecvStream,
    quinn::Endpoint,
) {
    let _ = addr;
    let ep = endpoint();
    let conn = ep
        .connect(format!("127.0.0.1:{port}").parse().unwrap(), "127.0.0.1")
        .unwrap()
        .await
        .unwrap();
    let (send, recv) = conn.open_bi().await.unwrap();
    (conn, send, recv, ep)
}

/// Completes a real Noise handshake by hand, leaving the raw stream to the test.
async fn handshaken(
    relay: &TestRelay,
) -> (
    Session,
    quinn::SendStream,
    quinn::RecvStream,
    quinn::Connection,
    quinn::Endpoint,
) {
    let addr = relay.address();
    let (conn, mut send, mut recv, ep) = raw_stream(&addr, relay.running().local_addr.port()).await;
    let (init, m1) = Initiator::start(&addr.key, &mut rand::rngs::OsRng).unwrap();
    send.write_all(&m1).await.unwrap();
    let mut m2 = vec![0u8; FRAME_LEN];
    recv.read_exact(&mut m2).await.unwrap();
    let session = init.finish(&m2).unwrap();
    (session, send, recv, conn, ep)
}

/// Waits until the relay ends the stream or the connection (bounded). A failed handshake is
/// answered with one decoy message 2 (random bytes, so a client cannot tell garbage from a
/// wrong key); after a handshake nothing may be answered.
async fn closed_by_relay(recv: &mut quinn::RecvStream, decoy_allowed: bool) {
    let mut buf = vec![0u8; FRAME_LEN];
    let mut records = 0;
    loop {
        let r = tokio::time::timeout(Duration::from_secs(15), recv.read_exact(&mut buf)).await;
        match r {
            Ok(Err(_)) => return,
            Ok(Ok(())) if decoy_allowed && records == 0 => records += 1,
            Ok(Ok(())) => panic!("relay answered a hostile session with a record"),
            Err(_) => panic!("relay did not close the hostile session"),
        }
    }
}

async fn second_client_still_works(relay: &TestRelay) {
    let (c, _p, _e) = connect(&relay.address()).await;
    let q = c.create_queue(None).await.unwrap();
    c.send(q.sender_id, None, 0, b"still here".to_vec())
        .await
        .unwrap();
    assert_eq!(c.get(&q).await.unwrap().unwrap().body, b"still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_instead_of_a_handshake() {
    let relay = TestRelay::start().await;
    let (conn, mut send, mut recv, _e) =
        raw_stream(&relay.address(), relay.running().local_addr.port()).await;
    send.write_all(&vec![0x42; FRAME_LEN]).await.unwrap();
    closed_by_relay(&mut recv, true).await;
    conn.close(0u32.into(), b"");
    second_client_still_works(&relay).await;
    eventually("failed handshake counted", async || {
        relay
            .running()
            .metrics
            .handshakes
            .with_label_values(&["failed"])
            .get()
            >= 1
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_handshake_then_finish() {
    let relay = TestRelay::start().await;
    let (_c, mut send, mut recv, _e) =
        raw_stream(&relay.address(), relay.running().local_addr.port()).await;
    send.write_all(&[1; 100]).await.unwrap();
    send.finish().unwrap();
    closed_by_relay(&mut recv, true).await;
    second_client_still_works(&relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_length_record_after_handshake() {
    let relay = TestRelay::start().await;
    let (_s, mut send, mut recv, _c, _e) = handshaken(&relay).await;
    send.write_all(&[7; 1000]).await.unwrap();
    send.finish().unwrap();
    closed_by_relay(&mut recv, false).await;
    second_client_still_works(&relay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecryptable_record_after_handshake() {
    let relay = TestRelay::start().await;
    let (_s, mut send, mut recv, _c, _e) = handshaken(&relay).await;
    send.write_all(&vec![9; FRAME_LEN]).await.unwrap();
    closed_by_relay(&mut recv, false).await;
    second_client_still_works(&relay).await;
    assert!(relay.running().metrics.protocol_errors.get() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_frame_with_malformed_transmissions_answers_syntax() {
    let relay = TestRelay::start().await;
    let (mut s, mut send, mut recv, _c, _e) = handshaken(&relay).await;
    let mut fb = FrameBuilder::new();
    // An unknown command tag, an oversized SEND and a NEW with a bad key, all well framed.
    let mut unknown = Transmission::command(CorrId::from_u64(1), None, &Command::Ping);
    unknown.payload = vec![0x7e];
    assert!(fb.push(&unknown));
    let mut large = Transmission::command(
        CorrId::from_u64(2),
        Some(sotto_protocol::EntityId([1; 24])),
        &Command::Send {
            flags: 0,
            body: vec![],
        },
    );
    large.payload = {
        let mut p = vec![0x04, 0];
        p.extend_from_slice(&((sotto_protocol::MAX_BODY + 1) as u16).to_be_bytes());
        p.extend(std::iter::repeat_n(0u8, 100));
        p
    };
    assert!(fb.push(&large));
    let ping = Transmission::command(CorrId::from_u64(3), None, &Command::Ping);
    assert!(fb.push(&ping));
    send.write_all(&s.send.encrypt_frame(&fb.finish()).unwrap())
        .await
        .unwrap();
    // Collect answers until all three corr ids are answered.
    let mut answers = std::collections::HashMap::new();
    while answers.len() < 3 {
        let mut rec = vec![0u8; FRAME_LEN];
        tokio::time::timeout(Duration::from_secs(10), recv.read_exact(&mut rec))
            .await
            .unwrap()
            .unwrap();
        let plain = s.recv.decrypt_frame(&rec).unwrap();
        for t in sotto_protocol::Frame::decode(&plain).unwrap() {
            answers.insert(t.corr_id.as_u64(), t.decode_response().unwrap());
        }
    }
    use sotto_protocol::{ErrorCode, Response};
    assert_eq!(answers[&1], Response::Err(ErrorCode::Syntax));
    assert_eq!(answers[&2], Response::Err(ErrorCode::Large));
    assert_eq!(answers[&3], Response::Pong);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_commands_in_a_burst() {
    let relay = TestRelay::start_with(|c| c.limits.commands_per_session_per_s = 500).await;
    let (mut s, mut send, mut recv, _c, _e) = handshaken(&relay).await;
    // 4 frames packed with PINGs: ~5000 commands at once.
    let mut sent = 0u64;
    for _ in 0..4 {
        let mut fb = FrameBuilder::new();
        while fb.push(&Transmission::command(
            CorrId::from_u64(sent + 1),
            None,
            &Command::Ping,
        )) {
            sent += 1;
        }
        send.write_all(&s.send.encrypt_frame(&fb.finish()).unwrap())
            .await
            .unwrap();
    }
    assert!(sent > 4000);
    let reader = async {
        let mut pongs = 0u64;
        let mut limited = 0u64;
        while pongs + limited < sent {
            let mut rec = vec![0u8; FRAME_LEN];
            recv.read_exact(&mut rec).await.unwrap();
            for t in sotto_protocol::Frame::decode(&s.recv.decrypt_frame(&rec).unwrap()).unwrap() {
                match t.decode_response().unwrap() {
                    sotto_protocol::Response::Pong => pongs += 1,
                    sotto_protocol::Response::Err(sotto_protocol::ErrorCode::Limited) => {
                        limited += 1
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        (pongs, limited)
    };
    // Meanwhile a second client is served.
    let (r, ()) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(30), reader),
        second_client_still_works(&relay)
    );
    let (pongs, limited) = r.expect("every command answered");
    assert!(pongs >= 500, "the burst allowance was served: {pongs}");
    assert!(limited > 0, "the excess was refused with LIMITED");
    assert!(
        relay
            .running()
            .metrics
            .rate_limited
            .with_label_values(&["commands_per_session"])
            .get()
            > 0
    );
}

/// Issue 22 M3: a session that only keeps its connection alive (QUIC keep-alives, not a
/// single frame) is closed after `limits.idle_timeout` (orderly, counted under
/// `idle_session`), so it cannot hold its place under `max_sessions` for ever; a subscribed
/// session that is just as quiet stays, since it waits for messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_without_frames_are_closed_but_quiet_subscribers_stay() {
    let relay = TestRelay::start_with(|c| c.limits.idle_timeout = Duration::from_secs(2)).await;
    let m = relay.running().metrics.clone();
    let idle = common::raw::RawSession::open(&relay).await;
    let (client, _pushes, _ep) = connect(&relay.address()).await;
    let creds = client.create_queue(None).await.unwrap();
    client.subscribe(&creds).await.unwrap();
    assert_eq!(idle.close_code().await, Some(0), "closed in an orderly way");
    assert_eq!(m.rate_limited.with_label_values(&["idle_session"]).get(), 1);
    // Three idle timeouts later the subscriber is still there and answers.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(!client.is_closed());
    client.ping().await.unwrap();
    assert_eq!(m.sessions.get(), 1);
    second_client_still_works(&relay).await;
}

/// Issue 22 M3: a session that sends the first bytes of a record and stalls is closed with
/// code 1 after `limits.record_timeout` (counted under `record_timeout`); before, it held
/// its session, and a record buffer, for as long as QUIC kept the connection alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_a_record_does_not_hold_a_session() {
    let relay = TestRelay::start_with(|c| c.limits.record_timeout = Duration::from_secs(1)).await;
    let m = relay.running().metrics.clone();
    let mut s = common::raw::RawSession::open(&relay).await;
    s.send_raw(&[0u8; 100]).await;
    assert_eq!(s.close_code().await, Some(1));
    assert_eq!(
        m.rate_limited.with_label_values(&["record_timeout"]).get(),
        1
    );
    second_client_still_works(&relay).await;
}

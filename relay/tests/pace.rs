//! PACE (`docs/protocol.md` § 9.2) on real sessions of a real relay: a paced session gets a
//! frame from the relay only at its ticks or with a pushed MSG or END, never for answers
//! alone; its answers are held for the next frame; `0` ends pacing and sends what is held;
//! refusals are sent at once and leave the session unpaced.
//!
//! Everything here is counted, not timed: the relay counts its ticks
//! (`sotto_pace_ticks_total`), so a test can tell how many of the frames it received were
//! ticks. A gap of `u32::MAX` ms makes the first tick an hour away (the longest gap a pacer
//! draws), which a test never reaches: a frame that arrives then is not a tick, and the test
//! checks that the tick counter stayed at zero.

#![allow(clippy::unwrap_used, clippy::field_reassign_with_default)]

mod common;

use std::time::Duration;

use common::raw::RawSession;
use common::*;
use sotto_protocol::{Command, CorrId, EntityId, ErrorCode, Response, Transmission};
use sotto_relay::config::Config;

/// Sessions may pace down to 10 ms (the default minimum is 1 s).
fn fast_pacing(c: &mut Config) {
    c.delivery.min_pace_gap = Duration::from_millis(10);
}

/// A gap whose first tick is an hour away.
const NEVER: u32 = u32::MAX;

fn command(corr: u64, cmd: &Command) -> Transmission {
    Transmission::command(CorrId::from_u64(corr), None, cmd)
}

fn ticks(relay: &TestRelay) -> u64 {
    relay.running().metrics.pace_ticks.get()
}

fn paced_sessions(relay: &TestRelay) -> i64 {
    relay.running().metrics.paced_sessions.get()
}

fn is_cover(ts: &[Transmission]) -> bool {
    matches!(ts, [t] if t.corr_id == CorrId::NONE
        && t.decode_response().unwrap() == Response::Drop)
}

/// Reads frames until one answers `corr`; returns how many frames that took and everything
/// they carried, in order.
async fn until_answered(s: &mut RawSession, corr: u64) -> (u64, Vec<Transmission>) {
    let corr = CorrId::from_u64(corr);
    let (mut frames, mut got) = (0, Vec::new());
    while !got.iter().any(|t: &Transmission| t.corr_id == corr) {
        got.extend(s.recv_frame().await);
        frames += 1;
    }
    (frames, got)
}

/// The answer to `corr` among `got`.
fn answer(got: &[Transmission], corr: u64) -> Response {
    got.iter()
        .find(|t| t.corr_id == CorrId::from_u64(corr))
        .unwrap()
        .decode_response()
        .unwrap()
}

fn position(got: &[Transmission], corr: u64) -> usize {
    got.iter()
        .position(|t| t.corr_id == CorrId::from_u64(corr))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_session_gets_frames_only_at_its_ticks() {
    let relay = TestRelay::start_with(fast_pacing).await;
    let mut s = RawSession::open(&relay).await;

    // Unpaced (the contrast): every PING is answered in a frame of its own, and no tick.
    let mut frames = 0;
    for corr in 1..=5 {
        s.send(&[command(corr, &Command::Ping)]).await;
        let (n, got) = until_answered(&mut s, corr).await;
        assert_eq!(answer(&got, corr), Response::Pong);
        frames += n;
    }
    assert_eq!(
        (frames, ticks(&relay)),
        (5, 0),
        "frames sent for answers alone"
    );

    // Paced: the PACE's OK and every PONG come at ticks; nothing else is sent.
    s.send(&[command(10, &Command::Pace { gap_ms: 50 })]).await;
    let (mut frames, got) = until_answered(&mut s, 10).await;
    assert_eq!(answer(&got, 10), Response::Ok);
    assert_eq!(paced_sessions(&relay), 1);
    for corr in 11..=15 {
        s.send(&[command(corr, &Command::Ping)]).await;
        let (n, got) = until_answered(&mut s, corr).await;
        assert_eq!(answer(&got, corr), Response::Pong);
        for t in &got {
            // Cover ticks, and answers; this session has no subscription to push to.
            assert!(
                is_cover(std::slice::from_ref(t)) || t.corr_id != CorrId::NONE,
                "{t:?}"
            );
        }
        frames += n;
    }
    // Ending the pace: its OK is the first frame that is not a tick (nothing was held).
    s.send(&[command(20, &Command::Pace { gap_ms: 0 })]).await;
    let (n, got) = until_answered(&mut s, 20).await;
    assert_eq!(answer(&got, 20), Response::Ok);
    frames += n;
    let ticks = ticks(&relay);
    assert_eq!(
        frames,
        ticks + 1,
        "every frame of the paced session but the last was a tick"
    );
    // One tick at least for the PACE's OK and for each PONG, each sent only after the last
    // answer came.
    assert!(ticks >= 6, "{ticks} ticks");
    assert_eq!(paced_sessions(&relay), 0);
    let m = &relay.running().metrics;
    assert!(m.pace_cover.get() <= ticks);
    assert_eq!(
        m.cover_sent.get(),
        0,
        "paced ticks are not relay-wide cover"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pace_zero_sends_the_held_answers_at_once() {
    let relay = TestRelay::start_with(fast_pacing).await;
    let mut s = RawSession::open(&relay).await;
    // Paced with no tick in sight: the PACE's own OK and the PONG are held.
    s.send(&[
        command(1, &Command::Pace { gap_ms: NEVER }),
        command(2, &Command::Ping),
    ])
    .await;
    eventually("the session is paced", async || paced_sessions(&relay) == 1).await;
    // PACE 0 ends pacing: what was held comes now, in order, then its own OK.
    s.send(&[command(3, &Command::Pace { gap_ms: 0 })]).await;
    let (_, got) = until_answered(&mut s, 3).await;
    let got = [got.clone(), until_all(&mut s, &got, &[1, 2]).await].concat();
    assert_eq!(answer(&got, 1), Response::Ok);
    assert_eq!(answer(&got, 2), Response::Pong);
    assert_eq!(answer(&got, 3), Response::Ok);
    assert!(position(&got, 1) < position(&got, 2));
    assert!(position(&got, 2) < position(&got, 3));
    assert_eq!(ticks(&relay), 0, "no tick sent them");
    assert_eq!(paced_sessions(&relay), 0);
    // Unpaced again: answers come without ticks.
    assert_eq!(s.request(command(4, &Command::Ping)).await, Response::Pong);
    assert_eq!(ticks(&relay), 0);
}

/// Reads more frames until every corr id of `corrs` is among `got` and what they bring.
async fn until_all(s: &mut RawSession, got: &[Transmission], corrs: &[u64]) -> Vec<Transmission> {
    let mut more = Vec::new();
    let seen = |all: &[Transmission], c: u64| all.iter().any(|t| t.corr_id == CorrId::from_u64(c));
    while !corrs.iter().all(|&c| seen(got, c) || seen(&more, c)) {
        more.extend(s.recv_frame().await);
    }
    more
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_paces_are_answered_at_once_and_leave_the_session_unpaced() {
    // The default minimum gap, 1 s.
    let relay = TestRelay::start().await;
    let mut s = RawSession::open(&relay).await;
    let limited = || {
        relay
            .running()
            .metrics
            .rate_limited
            .with_label_values(&["min_pace_gap"])
            .get()
    };
    assert_eq!(
        s.request(command(1, &Command::Pace { gap_ms: 50 })).await,
        Response::Err(ErrorCode::Limited)
    );
    assert_eq!(limited(), 1);
    assert_eq!(s.request(command(2, &Command::Ping)).await, Response::Pong);
    // PACE concerns the session: with an entity it is malformed.
    let with_entity = Transmission::command(
        CorrId::from_u64(3),
        Some(EntityId::from(sotto_protocol::RecipientId([7; 24]))),
        &Command::Pace { gap_ms: 1000 },
    );
    assert_eq!(
        s.request(with_entity).await,
        Response::Err(ErrorCode::Syntax)
    );
    // A paced session whose next PACE is refused stops being paced: the held OK comes with
    // the refusal, without a tick.
    s.send(&[command(4, &Command::Pace { gap_ms: NEVER })])
        .await;
    s.send(&[command(5, &Command::Pace { gap_ms: 999 })]).await;
    let (_, got) = until_answered(&mut s, 5).await;
    let got = [got.clone(), until_all(&mut s, &got, &[4, 5]).await].concat();
    assert_eq!(answer(&got, 4), Response::Ok);
    assert_eq!(answer(&got, 5), Response::Err(ErrorCode::Limited));
    assert!(position(&got, 4) < position(&got, 5));
    assert_eq!(ticks(&relay), 0);
    assert_eq!(paced_sessions(&relay), 0);
    assert_eq!(s.request(command(6, &Command::Ping)).await, Response::Pong);

    // A relay that does not pace.
    let off = TestRelay::start_with(|c| c.delivery.pacing = false).await;
    let mut s = RawSession::open(&off).await;
    assert_eq!(
        s.request(command(1, &Command::Pace { gap_ms: 1000 })).await,
        Response::Err(ErrorCode::Prohibited)
    );
    assert_eq!(s.request(command(2, &Command::Ping)).await, Response::Pong);
    // Asking for no pacing is always granted.
    assert_eq!(
        s.request(command(3, &Command::Pace { gap_ms: 0 })).await,
        Response::Ok
    );
    assert_eq!((ticks(&off), paced_sessions(&off)), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_subscriber_gets_messages_pushed_at_release_with_its_held_answers() {
    let relay = TestRelay::start_with(fast_pacing).await;
    let (client, _pushes, _ep) = connect(&relay.address()).await;
    let creds = client.create_queue(None).await.unwrap();
    let rid: EntityId = creds.recipient_id.into();
    let mut s = RawSession::open(&relay).await;
    let sub = Transmission::signed(
        CorrId::from_u64(2),
        Some(rid),
        &Command::Sub,
        &creds.recipient_key,
        &s.hash(),
    );
    s.send(&[command(1, &Command::Pace { gap_ms: NEVER }), sub])
        .await;
    eventually("the session is paced and subscribed", async || {
        paced_sessions(&relay) == 1
            && relay
                .running()
                .metrics
                .commands
                .with_label_values(&["SUB"])
                .get()
                == 1
    })
    .await;

    // Released at once (delivery is off in tests): the MSG is pushed, not held for a tick,
    // and the PACE's and the SUB's held OKs ride in its frame.
    client
        .send(creds.sender_id, None, 0, b"one".to_vec())
        .await
        .unwrap();
    let frame = s.recv_frame().await;
    let pushed = |ts: &[Transmission]| {
        ts.iter().find_map(|t| match t.decode_response().unwrap() {
            Response::Msg { msg_id, .. } if t.corr_id == CorrId::NONE && t.entity == Some(rid) => {
                Some(msg_id)
            }
            _ => None,
        })
    };
    let first = pushed(&frame).expect("the frame carries the pushed MSG");
    assert_eq!(answer(&frame, 1), Response::Ok);
    assert_eq!(answer(&frame, 2), Response::Ok);

    // The ACK's OK is held, and rides with the next push.
    s.send(&[Transmission::command(
        CorrId::from_u64(3),
        Some(rid),
        &Command::Ack { msg_id: first },
    )])
    .await;
    client
        .send(creds.sender_id, None, 0, b"two".to_vec())
        .await
        .unwrap();
    let frame = s.recv_frame().await;
    let second = pushed(&frame).expect("the frame carries the next pushed MSG");
    assert_ne!(second, first);
    assert_eq!(answer(&frame, 3), Response::Ok);
    assert_eq!(ticks(&relay), 0, "both frames were pushes, not ticks");

    assert_eq!(
        s.request(command(4, &Command::Pace { gap_ms: 0 })).await,
        Response::Ok
    );
}

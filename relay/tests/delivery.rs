//! Delayed delivery and cover traffic over a real relay: messages stay invisible until their
//! release time, pooled messages survive a restart with their release times, and cover
//! frames (both directions) never reach the application.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use sotto_transport::Pushed;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_is_invisible_until_released_and_survives_restart_pooled() {
    // Mean one hour: nothing is released during the test.
    let mut relay = TestRelay::start_with(|c| {
        c.delivery.mode = "poisson".into();
        c.delivery.mean = Duration::from_secs(3600);
        c.delivery.cap = Duration::from_secs(7200);
    })
    .await;
    let (c, mut pushes, _e) = connect(&relay.address()).await;
    let creds = c.create_queue(None).await.unwrap();
    c.subscribe(&creds).await.unwrap();
    // OK comes at once: the answer never waits for delivery.
    c.send(creds.sender_id, None, 0, b"later".to_vec())
        .await
        .unwrap();
    assert!(
        c.get(&creds).await.unwrap().is_none(),
        "visible before release"
    );
    eventually("message pooled", async || {
        relay.running().metrics.pool_size.get() == 1
    })
    .await;
    assert!(pushes.try_recv().is_err(), "pushed before release");
    c.close().await;

    relay.restart().await;
    // The message is still pooled with its release time (not re-drawn, not released).
    eventually("pool restored", async || {
        relay.running().metrics.pool_size.get() == 1
    })
    .await;
    let (c, _p, _e) = connect(&relay.address()).await;
    assert!(
        c.get(&creds).await.unwrap().is_none(),
        "released early after restart"
    );
    assert_eq!(relay.running().store.counts().unwrap().1, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poisson_and_rounds_deliver_everything_through_the_pool() {
    for (mode, mean) in [("poisson", 30u64), ("rounds", 100)] {
        let relay = TestRelay::start_with(|c| {
            c.delivery.mode = mode.into();
            c.delivery.mean = Duration::from_millis(mean);
            c.delivery.cap = Duration::from_millis(mean * 10);
            c.delivery.round = Duration::from_millis(mean);
        })
        .await;
        let (c, mut pushes, _e) = connect(&relay.address()).await;
        let creds = c.create_queue(None).await.unwrap();
        c.subscribe(&creds).await.unwrap();
        let mut expected: Vec<u8> = (0..20).collect();
        for i in &expected {
            c.send(creds.sender_id, None, 0, vec![*i]).await.unwrap();
        }
        let mut got = Vec::new();
        while got.len() < expected.len() {
            let Pushed::Msg { msg, .. } = next_push(&mut pushes).await else {
                panic!("expected MSG")
            };
            let m = msg.open(&creds).unwrap();
            got.push(m.body[0]);
            c.ack(&creds, m.msg_id).await.unwrap();
        }
        got.sort_unstable();
        expected.sort_unstable();
        assert_eq!(got, expected, "{mode}: every message exactly once");
        assert_eq!(
            relay.running().metrics.delay_seconds.get_sample_count(),
            20,
            "{mode}"
        );
        assert_eq!(relay.running().metrics.pool_size.get(), 0, "{mode}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cover_frames_are_discarded_on_both_sides() {
    let relay = TestRelay::start_with(|c| c.delivery.cover_rate = 50.0).await;
    let (c, mut pushes, _e) = connect(&relay.address()).await;
    let creds = c.create_queue(None).await.unwrap();
    // The relay sends cover only to subscribed sessions.
    c.subscribe(&creds).await.unwrap();
    let cover = c.start_cover_traffic(50.0);
    eventually("relay cover frames reached the client", async || {
        c.stats().cover_received >= 5
    })
    .await;
    eventually("client cover frames reached the relay", async || {
        relay.running().metrics.cover_received.get() >= 5
    })
    .await;
    assert!(relay.running().metrics.cover_sent.get() >= 5);
    // Nothing of it reached the application, and real traffic still flows.
    assert!(
        pushes.try_recv().is_err(),
        "a cover frame reached the application"
    );
    c.send(creds.sender_id, None, 0, b"real".to_vec())
        .await
        .unwrap();
    let Pushed::Msg { msg, .. } = next_push(&mut pushes).await else {
        panic!("expected MSG")
    };
    assert_eq!(msg.open(&creds).unwrap().body, b"real");
    cover.abort();
}

//! Queue semantics over real QUIC against a real relay with a real store.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sotto_protocol::{AuthSecretKey, Command, ErrorCode, MAX_BODY};
use sotto_transport::{ClientError, Pushed};

fn relay_err(r: Result<impl std::fmt::Debug, ClientError>) -> ErrorCode {
    match r {
        Err(ClientError::Relay(code)) => code,
        other => panic!("expected a relay error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_lifecycle_of_a_queue() {
    let relay = TestRelay::start().await;
    let (recipient, mut pushes, _ep1) = connect(&relay.address()).await;
    let (sender, _p2, _ep2) = connect(&relay.address()).await;

    let creds = recipient.create_queue(None).await.unwrap();
    // Unsigned SEND is accepted while the queue is unsecured.
    sender
        .send(creds.sender_id, None, 0, b"hello".to_vec())
        .await
        .unwrap();
    // The sender secures the queue; from now on only its signed SENDs are accepted.
    let skey = AuthSecretKey::generate(&mut rand::rngs::OsRng);
    sender.sender_secure(creds.sender_id, &skey).await.unwrap();
    assert_eq!(
        relay_err(
            sender
                .send(creds.sender_id, None, 0, b"unsigned".to_vec())
                .await
        ),
        ErrorCode::Auth
    );
    let other = AuthSecretKey::generate(&mut rand::rngs::OsRng);
    assert_eq!(
        relay_err(
            sender
                .send(creds.sender_id, Some(&other), 0, b"wrong key".to_vec())
                .await
        ),
        ErrorCode::Auth
    );
    for i in 0..3u8 {
        sender
            .send(creds.sender_id, Some(&skey), 0, vec![i; 10])
            .await
            .unwrap();
    }

    // GET sees the first message again until it is acknowledged.
    let m = recipient.get(&creds).await.unwrap().unwrap();
    assert_eq!(m.body, b"hello");
    let again = recipient.get(&creds).await.unwrap().unwrap();
    assert_eq!(again.msg_id, m.msg_id);
    assert!(recipient.ack(&creds, m.msg_id).await.unwrap());
    assert!(
        !recipient.ack(&creds, m.msg_id).await.unwrap(),
        "second ACK is NO_MSG"
    );

    // SUB streams the rest, one unacknowledged message at a time.
    recipient.subscribe(&creds).await.unwrap();
    for i in 0..3u8 {
        let Pushed::Msg { recipient_id, msg } = next_push(&mut pushes).await else {
            panic!("expected MSG")
        };
        assert_eq!(recipient_id, creds.recipient_id);
        let opened = msg.open(&creds).unwrap();
        assert_eq!(opened.body, vec![i; 10]);
        // Bytes in and out never match: the body is sealed to the recipient.
        assert_ne!(msg.sealed_body, vec![i; 10]);
        assert!(recipient.ack(&creds, opened.msg_id).await.unwrap());
    }
    assert!(
        recipient.get(&creds).await.unwrap().is_none(),
        "queue is empty"
    );

    // OFF: no more messages accepted.
    recipient.off(&creds).await.unwrap();
    assert_eq!(
        relay_err(
            sender
                .send(creds.sender_id, Some(&skey), 0, b"late".to_vec())
                .await
        ),
        ErrorCode::Prohibited
    );
    // DEL: the queue is gone.
    recipient.delete(&creds).await.unwrap();
    assert_eq!(relay_err(recipient.get(&creds).await), ErrorCode::Auth);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_subscription_takes_over_and_del_ends_it() {
    let relay = TestRelay::start().await;
    let (a, mut a_push, _e1) = connect(&relay.address()).await;
    let (b, mut b_push, _e2) = connect(&relay.address()).await;
    let (sender, _p, _e3) = connect(&relay.address()).await;
    let creds = a.create_queue(None).await.unwrap();
    a.subscribe(&creds).await.unwrap();
    b.subscribe(&creds).await.unwrap();
    match next_push(&mut a_push).await {
        Pushed::End { recipient_id } => assert_eq!(recipient_id, creds.recipient_id),
        other => panic!("expected END, got {other:?}"),
    }
    sender
        .send(creds.sender_id, None, 0, b"to b".to_vec())
        .await
        .unwrap();
    let Pushed::Msg { msg, .. } = next_push(&mut b_push).await else {
        panic!("expected MSG")
    };
    assert_eq!(msg.open(&creds).unwrap().body, b"to b");
    // A deletes the queue: B, the subscriber, gets END.
    a.delete(&creds).await.unwrap();
    assert!(matches!(next_push(&mut b_push).await, Pushed::End { .. }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_message_is_delivered_again_after_reconnect() {
    let relay = TestRelay::start().await;
    let (r1, mut p1, _e1) = connect(&relay.address()).await;
    let (sender, _p, _e2) = connect(&relay.address()).await;
    let creds = r1.create_queue(None).await.unwrap();
    sender
        .send(creds.sender_id, None, 0, b"once".to_vec())
        .await
        .unwrap();
    r1.subscribe(&creds).await.unwrap();
    let Pushed::Msg { msg: first, .. } = next_push(&mut p1).await else {
        panic!()
    };
    r1.close().await;
    let (r2, mut p2, _e3) = connect(&relay.address()).await;
    r2.subscribe(&creds).await.unwrap();
    let Pushed::Msg { msg: again, .. } = next_push(&mut p2).await else {
        panic!()
    };
    assert_eq!(again.msg_id, first.msg_id);
    assert!(r2.ack(&creds, again.msg_id).await.unwrap());
    assert!(r2.get(&creds).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_in_one_test_and_persistence_across_restart() {
    let mut r1 = TestRelay::start().await;
    let r2 = TestRelay::start().await;
    assert_ne!(r1.address().key, r2.address().key);
    let (c1, _p1, _e1) = connect(&r1.address()).await;
    let (c2, _p2, _e2) = connect(&r2.address()).await;
    let q1 = c1.create_queue(None).await.unwrap();
    let q2 = c2.create_queue(None).await.unwrap();
    // Ids of one relay mean nothing on the other.
    assert_eq!(relay_err(c2.get(&q1).await), ErrorCode::Auth);
    for i in 0..5u8 {
        c2.send(q1.sender_id, None, 0, vec![i]).await.unwrap_err();
        c1.send(q1.sender_id, None, 0, vec![i]).await.unwrap();
        c2.send(q2.sender_id, None, 0, vec![i]).await.unwrap();
    }
    c1.close().await;
    r1.restart().await;
    let (c1, _p1, _e3) = connect(&r1.address()).await;
    for i in 0..5u8 {
        let m = c1
            .get(&q1)
            .await
            .unwrap()
            .expect("message survived the restart");
        assert_eq!(m.body, vec![i]);
        assert!(c1.ack(&q1, m.msg_id).await.unwrap());
    }
    assert!(c1.get(&q1).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_failures() {
    let relay = TestRelay::start().await;
    let (c, _p, _e) = connect(&relay.address()).await;
    let creds = c.create_queue(None).await.unwrap();
    let skey = AuthSecretKey::generate(&mut rand::rngs::OsRng);
    c.sender_secure(creds.sender_id, &skey).await.unwrap();

    // Recipient command signed with the wrong key.
    let wrong = AuthSecretKey::generate(&mut rand::rngs::OsRng);
    let r = c
        .request(Some(creds.recipient_id.into()), Command::Get, Some(&wrong))
        .await;
    assert_eq!(relay_err(r), ErrorCode::Auth);
    // Unsigned recipient command.
    let r = c
        .request(Some(creds.recipient_id.into()), Command::Get, None)
        .await;
    assert_eq!(relay_err(r), ErrorCode::Auth);
    // The sender trying recipient commands with its own id and key.
    for cmd in [
        Command::Sub,
        Command::Get,
        Command::Del,
        Command::Ack {
            msg_id: sotto_protocol::MessageId([0; 24]),
        },
    ] {
        let r = c
            .request(Some(creds.sender_id.into()), cmd, Some(&skey))
            .await;
        assert_eq!(relay_err(r), ErrorCode::Auth);
    }
    // A second SKEY with another key is refused; the same key again is accepted.
    assert_eq!(
        relay_err(c.sender_secure(creds.sender_id, &wrong).await),
        ErrorCode::Prohibited
    );
    c.sender_secure(creds.sender_id, &skey).await.unwrap();
    // Ids guessed at random.
    let guess = sotto_protocol::RecipientId::random(&mut rand::rngs::OsRng);
    let r = c
        .request(Some(guess.into()), Command::Sub, Some(&creds.recipient_key))
        .await;
    assert_eq!(relay_err(r), ErrorCode::Auth);
    // Oversized body: LARGE, and the session keeps working.
    let r = c
        .request(
            Some(creds.sender_id.into()),
            Command::Send {
                flags: 0,
                body: vec![0; MAX_BODY + 1],
            },
            Some(&skey),
        )
        .await;
    assert!(
        r.is_err(),
        "the client library refuses to build an oversized SEND"
    );
    c.ping().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_is_enforced() {
    let relay = TestRelay::start_with(|c| c.queues.quota = 3).await;
    let (c, _p, _e) = connect(&relay.address()).await;
    let creds = c.create_queue(None).await.unwrap();
    for i in 0..3u8 {
        c.send(creds.sender_id, None, 0, vec![i]).await.unwrap();
    }
    assert_eq!(
        relay_err(c.send(creds.sender_id, None, 0, vec![9]).await),
        ErrorCode::Quota
    );
    let m = c.get(&creds).await.unwrap().unwrap();
    c.ack(&creds, m.msg_id).await.unwrap();
    c.send(creds.sender_id, None, 0, vec![9]).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_and_idle_queue_expiry() {
    let relay = TestRelay::start_with(|c| {
        c.queues.message_ttl = std::time::Duration::from_secs(1);
        c.queues.idle_expiry = std::time::Duration::from_secs(2);
        c.queues.expiry_interval = std::time::Duration::from_millis(200);
    })
    .await;
    let (c, _p, _e) = connect(&relay.address()).await;
    let creds = c.create_queue(None).await.unwrap();
    c.send(creds.sender_id, None, 0, b"short-lived".to_vec())
        .await
        .unwrap();
    assert!(c.get(&creds).await.unwrap().is_some());
    eventually("message expired by TTL", async || {
        relay.running().metrics.messages_expired.get() >= 1
    })
    .await;
    assert!(c.get(&creds).await.unwrap().is_none());
    eventually("idle queue removed", async || {
        relay.running().metrics.queues_expired.get() >= 1
    })
    .await;
    assert_eq!(relay_err(c.get(&creds).await), ErrorCode::Auth);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_relay_requires_the_create_password() {
    let relay = TestRelay::start_with(|c| c.create_password = "s3cret".into()).await;
    let (c, _p, _e) = connect(&relay.address()).await;
    assert_eq!(relay_err(c.create_queue(None).await), ErrorCode::Auth);
    assert_eq!(
        relay_err(c.create_queue(Some(b"wrong")).await),
        ErrorCode::Auth
    );
    c.create_queue(Some(b"s3cret")).await.unwrap();
}

/// On a subscription the relay sends the next message as soon as an ACK is accepted, while
/// the deletion commits (the ACK's OK follows). With ACKs issued concurrently with the
/// deliveries, every message still arrives exactly once, in order, and the queue ends empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_arrive_once_in_order_while_deletions_commit() {
    const N: u32 = 100; // below the default quota of 128
    let relay = TestRelay::start().await;
    let (recipient, mut pushes, _e1) = connect(&relay.address()).await;
    let (sender, _p, _e2) = connect(&relay.address()).await;
    let creds = recipient.create_queue(None).await.unwrap();
    for i in 0..N {
        sender
            .send(creds.sender_id, None, 0, i.to_be_bytes().to_vec())
            .await
            .unwrap();
    }
    recipient.subscribe(&creds).await.unwrap();
    let mut acks = tokio::task::JoinSet::new();
    let mut seen = Vec::new();
    while seen.len() < N as usize {
        let Pushed::Msg { msg, .. } = next_push(&mut pushes).await else {
            panic!("expected MSG")
        };
        let body = msg.open(&creds).unwrap().body;
        seen.push(u32::from_be_bytes(body.as_slice().try_into().unwrap()));
        // Not awaited here: the next delivery may overtake this ACK's answer.
        let (c, creds, id) = (recipient.clone(), creds.clone(), msg.msg_id);
        acks.spawn(async move { c.ack(&creds, id).await });
    }
    assert_eq!(seen, (0..N).collect::<Vec<_>>());
    while let Some(r) = acks.join_next().await {
        assert!(r.unwrap().unwrap(), "every ACK deletes its message");
    }
    // Nothing more is pushed, and nothing is left.
    assert!(
        tokio::time::timeout(std::time::Duration::from_millis(300), pushes.recv())
            .await
            .is_err(),
        "no message is delivered twice"
    );
    assert!(recipient.get(&creds).await.unwrap().is_none());
}

/// A session remembers the sender keys of secured queues it has sent to (skipping the
/// lookup); what changes a queue afterwards still decides: a wrong signature is AUTH, a
/// disabled queue PROHIBITED, a deleted one AUTH, in that same session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_senders_remembered_queue_still_obeys_off_and_del() {
    let relay = TestRelay::start().await;
    let (recipient, _pr, _e1) = connect(&relay.address()).await;
    let (sender, _ps, _e2) = connect(&relay.address()).await;
    let creds = recipient.create_queue(None).await.unwrap();
    let key = AuthSecretKey::generate(&mut rand::rngs::OsRng);
    sender.sender_secure(creds.sender_id, &key).await.unwrap();
    for _ in 0..2 {
        sender
            .send(creds.sender_id, Some(&key), 0, b"ok".to_vec())
            .await
            .unwrap();
    }
    let other = AuthSecretKey::generate(&mut rand::rngs::OsRng);
    assert_eq!(
        relay_err(
            sender
                .send(creds.sender_id, Some(&other), 0, b"x".to_vec())
                .await
        ),
        ErrorCode::Auth
    );
    assert_eq!(
        relay_err(sender.send(creds.sender_id, None, 0, b"x".to_vec()).await),
        ErrorCode::Auth
    );
    recipient.off(&creds).await.unwrap();
    assert_eq!(
        relay_err(
            sender
                .send(creds.sender_id, Some(&key), 0, b"x".to_vec())
                .await
        ),
        ErrorCode::Prohibited
    );
    recipient.delete(&creds).await.unwrap();
    assert_eq!(
        relay_err(
            sender
                .send(creds.sender_id, Some(&key), 0, b"x".to_vec())
                .await
        ),
        ErrorCode::Auth
    );
}

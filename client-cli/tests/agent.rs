//! The contact agent against real relays on loopback: contacts across two relays, ordering
//! and durability across a relay restart, queue rotation to a third relay, fixed-size SEND
//! bodies, no plaintext at rest on relays, and a message redelivered after a crash shown once.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod agent_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_support::*;
use sotto_client::agent::{
    Agent, AgentError, ContactStatus, Event, MAX_TEXT_LEN, ReceiveOptions, StoreError,
};
use sotto_client::{ClientError, ClientOptions, RelayClient, transport};
use sotto_protocol::{ErrorCode, MAX_BODY};

fn marker(who: &str, i: usize) -> String {
    format!("plaintext-marker-from-{who}-{i:03}-never-on-a-relay-disk")
}

async fn send_all(agent: &mut Agent, to: &str, who: &str, range: std::ops::Range<usize>) {
    for i in range {
        agent.send(to, &marker(who, i)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_100_messages_each_way_in_order_across_a_restart() {
    // Random release delays on the relays, so messages can leave a queue out of order.
    let poisson = |c: &mut sotto_relay::Config| {
        c.delivery.mode = "poisson".into();
        c.delivery.mean = Duration::from_millis(5);
        c.delivery.cap = Duration::from_millis(50);
    };
    let mut r1 = TestRelay::start_with(poisson).await;
    let mut r2 = TestRelay::start_with(poisson).await;
    let homes = tempfile::tempdir().unwrap();
    let mut alice = agent(&homes.path().join("alice"), &r1.address(), options());
    let mut bob = agent(&homes.path().join("bob"), &r2.address(), options());
    connect(&mut alice, &mut bob).await;

    // Alice receives on relay 1, Bob on relay 2.
    let info = alice.contacts().unwrap();
    assert_eq!(info[0].status, ContactStatus::Connected);
    assert_eq!(info[0].receive_relays, vec![r1.address().host_port()]);
    assert_eq!(info[0].send_relay, Some(r2.address().host_port()));

    send_all(&mut alice, "bob", "alice", 0..50).await;
    send_all(&mut bob, "alice", "bob", 0..50).await;
    let all: Vec<String> = (0..100)
        .flat_map(|i| [marker("alice", i), marker("bob", i)])
        .collect();
    // Stored, not yet delivered: the relays hold them, sealed.
    assert_no_plaintext(r1.dir.path(), &all);
    assert_no_plaintext(r2.dir.path(), &all);

    // Both relays restart with the messages stored; nothing is lost.
    r1.restart().await;
    r2.restart().await;

    let got = receive_until(&mut alice, |ev| texts_from(ev, "bob").len() >= 50).await;
    let mut from_bob = texts_from(&got, "bob");
    let got = receive_until(&mut bob, |ev| texts_from(ev, "alice").len() >= 50).await;
    let mut from_alice = texts_from(&got, "alice");

    // The agents' connections broke with the restart: sending reconnects.
    send_all(&mut alice, "bob", "alice", 50..100).await;
    send_all(&mut bob, "alice", "bob", 50..100).await;
    let got = receive_until(&mut alice, |ev| texts_from(ev, "bob").len() >= 50).await;
    from_bob.extend(texts_from(&got, "bob"));
    let got = receive_until(&mut bob, |ev| texts_from(ev, "alice").len() >= 50).await;
    from_alice.extend(texts_from(&got, "alice"));

    let expect = |who| (0..100).map(|i| marker(who, i)).collect::<Vec<_>>();
    assert_eq!(from_bob, expect("bob"), "in order, each once");
    assert_eq!(from_alice, expect("alice"), "in order, each once");

    assert_no_plaintext(r1.dir.path(), &all);
    assert_no_plaintext(r2.dir.path(), &all);
    // The profiles are encrypted at rest too.
    assert_no_plaintext(&homes.path().join("alice"), &all);
    assert_no_plaintext(&homes.path().join("bob"), &all);

    alice.close().await;
    bob.close().await;
    r1.stop().await;
    r2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotate_moves_a_queue_to_a_third_relay_while_messages_flow() {
    let mut r1 = TestRelay::start().await;
    let mut r2 = TestRelay::start().await;
    let mut r3 = TestRelay::start().await;
    let homes = tempfile::tempdir().unwrap();
    let mut alice = agent(&homes.path().join("alice"), &r1.address(), options());
    let mut bob = agent(&homes.path().join("bob"), &r2.address(), options());
    connect(&mut alice, &mut bob).await;
    let old = alice.receive_credentials("bob").unwrap();
    assert_eq!(old.len(), 1);

    send_all(&mut bob, "alice", "bob", 0..10).await;
    alice
        .rotate("bob", &r3.address().to_string())
        .await
        .unwrap();
    assert_eq!(alice.contacts().unwrap()[0].status, ContactStatus::Rotating);
    // Bob has not seen the request yet: these still go to the old queue.
    send_all(&mut bob, "alice", "bob", 10..20).await;
    send_all(&mut alice, "bob", "alice", 0..5).await;

    // Bob learns of the new queue (and gets Alice's texts), then switches.
    let got = receive_until(&mut bob, |ev| {
        ev.iter()
            .any(|e| matches!(e, Event::Moved { contact } if contact == "alice"))
            && texts_from(ev, "alice").len() >= 5
    })
    .await;
    assert_eq!(
        texts_from(&got, "alice"),
        (0..5).map(|i| marker("alice", i)).collect::<Vec<_>>()
    );
    // His next send first does the switch (SKEY on the new queue, SWITCHED).
    send_all(&mut bob, "alice", "bob", 20..30).await;
    assert_eq!(
        bob.contacts().unwrap()[0].send_relay,
        Some(r3.address().host_port())
    );

    let got = receive_until(&mut alice, |ev| {
        texts_from(ev, "bob").len() >= 30
            && ev
                .iter()
                .any(|e| matches!(e, Event::Rotated { contact } if contact == "bob"))
    })
    .await;
    assert_eq!(
        texts_from(&got, "bob"),
        (0..30).map(|i| marker("bob", i)).collect::<Vec<_>>(),
        "no message lost or repeated across the rotation"
    );
    // Deleting the old queue is an automatic action: do it.
    flush(&mut alice).await;
    let info = alice.contacts().unwrap();
    assert_eq!(info[0].status, ContactStatus::Connected);
    assert_eq!(info[0].receive_relays, vec![r3.address().host_port()]);
    assert_eq!(info[0].queued, 0);

    // The old queue is gone from relay 1.
    let ep = transport::client_endpoint(
        "127.0.0.1:0".parse().unwrap(),
        &transport::QuicOptions::default(),
    )
    .unwrap();
    let (client, _pushes) = RelayClient::connect(&ep, &r1.address(), &ClientOptions::default())
        .await
        .unwrap();
    match client.get(&old[0]).await {
        Err(ClientError::Relay(ErrorCode::Auth)) => {}
        other => panic!("old queue should be deleted, got {other:?}"),
    }

    // Messages keep flowing on the new queue.
    send_all(&mut bob, "alice", "bob", 30..31).await;
    let got = receive_until(&mut alice, |ev| !texts_from(ev, "bob").is_empty()).await;
    assert_eq!(texts_from(&got, "bob"), vec![marker("bob", 30)]);

    client.close().await;
    alice.close().await;
    bob.close().await;
    for r in [&mut r1, &mut r2, &mut r3] {
        r.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_and_maximum_messages_make_send_bodies_of_the_same_length() {
    let mut r1 = TestRelay::start().await;
    let homes = tempfile::tempdir().unwrap();
    let bodies: Arc<Mutex<Vec<usize>>> = Arc::default();
    let tap_into = bodies.clone();
    let mut opts = options();
    opts.send_tap = Some(Arc::new(move |b: &[u8]| {
        tap_into.lock().unwrap().push(b.len());
    }));
    let mut alice = agent(&homes.path().join("alice"), &r1.address(), opts.clone());
    let mut bob = agent(&homes.path().join("bob"), &r1.address(), opts);
    let link = alice.invite(None, Some("bob")).await.unwrap();
    bob.accept(&link, "alice", None).await.unwrap();
    // Bob's session has not heard from Alice: these are Olm pre-key messages.
    let big = "é".repeat(MAX_TEXT_LEN / 2);
    bob.send("alice", "x").await.unwrap();
    bob.send("alice", &big).await.unwrap();
    assert!(matches!(
        bob.send("alice", &"y".repeat(MAX_TEXT_LEN + 1)).await,
        Err(AgentError::TooLong(_))
    ));
    let got = receive_until(&mut alice, |ev| texts_from(ev, "bob").len() >= 2).await;
    assert_eq!(texts_from(&got, "bob"), vec!["x".to_string(), big.clone()]);
    flush(&mut alice).await;
    // Alice's are normal messages.
    alice.send("bob", "z").await.unwrap();
    alice.send("bob", &big).await.unwrap();
    let got = receive_until(&mut bob, |ev| texts_from(ev, "alice").len() >= 2).await;
    assert_eq!(texts_from(&got, "alice"), vec!["z".to_string(), big]);

    let lengths = bodies.lock().unwrap().clone();
    // HELLO, x, big, READY, z, big.
    assert_eq!(lengths.len(), 6, "{lengths:?}");
    assert!(lengths.iter().all(|&l| l == MAX_BODY), "{lengths:?}");
    alice.close().await;
    bob.close().await;
    r1.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_redelivered_after_a_crash_before_ack_is_shown_once() {
    let mut r1 = TestRelay::start().await;
    let homes = tempfile::tempdir().unwrap();
    let alice_home = homes.path().join("alice");
    let mut alice = agent(&alice_home, &r1.address(), options());
    let mut bob = agent(&homes.path().join("bob"), &r1.address(), options());
    connect(&mut alice, &mut bob).await;
    bob.send("alice", "only once").await.unwrap();

    let mut shown = Vec::new();
    let crash = ReceiveOptions {
        wait: Some(RECEIVE_BOUND),
        stop_before_ack: true,
        ..ReceiveOptions::default()
    };
    let r = alice
        .receive(crash, |e| {
            shown.push(e.clone());
            std::ops::ControlFlow::Continue(())
        })
        .await;
    assert!(matches!(r, Err(AgentError::StoppedBeforeAck)), "{r:?}");
    assert_eq!(texts_from(&shown, "alice"), Vec::<String>::new());
    assert_eq!(texts_from(&shown, "bob"), vec!["only once".to_string()]);
    // The process "dies": its connections go without an ACK.
    alice.close().await;

    // A new process on the same profile: the relay delivers the message again.
    let mut alice = Agent::open(&alice_home, b"test passphrase", options()).unwrap();
    bob.send("alice", "after the crash").await.unwrap();
    let got = receive_until(&mut alice, |ev| !texts_from(ev, "bob").is_empty()).await;
    assert_eq!(
        texts_from(&got, "bob"),
        vec!["after the crash".to_string()],
        "the redelivered message is recognised and not shown again"
    );
    // And the relay's queue is empty now (everything acknowledged).
    let creds = alice.receive_credentials("bob").unwrap();
    let ep = transport::client_endpoint(
        "127.0.0.1:0".parse().unwrap(),
        &transport::QuicOptions::default(),
    )
    .unwrap();
    let (client, _p) = RelayClient::connect(&ep, &r1.address(), &ClientOptions::default())
        .await
        .unwrap();
    assert!(client.get(&creds[0]).await.unwrap().is_none());

    assert!(matches!(
        Agent::open(&alice_home, b"wrong", options()),
        Err(AgentError::Store(StoreError::WrongPassphrase))
    ));
    client.close().await;
    alice.close().await;
    bob.close().await;
    r1.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_send_and_recording_it_resends_once_and_keeps_the_ratchet_in_step() {
    let mut r1 = TestRelay::start().await;
    let homes = tempfile::tempdir().unwrap();
    let alice_home = homes.path().join("alice");
    let mut alice = agent(&alice_home, &r1.address(), options());
    let mut bob = agent(&homes.path().join("bob"), &r1.address(), options());
    connect(&mut alice, &mut bob).await;
    alice.close().await;

    // Alice's process "dies" right after the relay accepted the SEND, before its profile
    // recorded the message as sent.
    let crashing = sotto_client::agent::AgentOptions {
        stop_after_send: true,
        ..options()
    };
    let mut alice = Agent::open(&alice_home, b"test passphrase", crashing).unwrap();
    let r = alice.send("bob", "sent just before the crash").await;
    assert!(matches!(r, Err(AgentError::StoppedAfterSend)), "{r:?}");
    alice.close().await;

    // The next process on the profile sends the same ciphertext again, then a new message.
    let mut alice = Agent::open(&alice_home, b"test passphrase", options()).unwrap();
    alice.send("bob", "after the restart").await.unwrap();
    let got = receive_until(&mut bob, |ev| texts_from(ev, "alice").len() >= 2).await;
    assert_eq!(
        texts_from(&got, "alice"),
        vec![
            "sent just before the crash".to_string(),
            "after the restart".to_string()
        ],
        "nothing lost, nothing shown twice"
    );
    // The ratchets are in step both ways.
    bob.send("alice", "reply").await.unwrap();
    let got = receive_until(&mut alice, |ev| !texts_from(ev, "bob").is_empty()).await;
    assert_eq!(texts_from(&got, "bob"), vec!["reply".to_string()]);
    alice.send("bob", "and again").await.unwrap();
    let got = receive_until(&mut bob, |ev| !texts_from(ev, "alice").is_empty()).await;
    assert_eq!(texts_from(&got, "alice"), vec!["and again".to_string()]);
    alice.close().await;
    bob.close().await;
    r1.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_messages_are_rejected_and_errors_are_clear() {
    let mut r1 = TestRelay::start().await;
    let homes = tempfile::tempdir().unwrap();
    let mut alice = agent(&homes.path().join("alice"), &r1.address(), options());
    let mut bob = agent(&homes.path().join("bob"), &r1.address(), options());
    let link = alice.invite(None, Some("bob")).await.unwrap();

    // Someone who saw the invitation's queue sends garbage to it before Bob accepts: it is
    // dropped, and makes no contact.
    let queue = sotto_client::agent::invitation::Invitation::parse(&link)
        .unwrap()
        .queue;
    let ep = transport::client_endpoint(
        "127.0.0.1:0".parse().unwrap(),
        &transport::QuicOptions::default(),
    )
    .unwrap();
    let (client, _p) = RelayClient::connect(&ep, &r1.address(), &ClientOptions::default())
        .await
        .unwrap();
    client
        .send(queue.sender_id, None, 0, vec![7; MAX_BODY])
        .await
        .unwrap();
    let got = receive_until(&mut alice, |ev| {
        ev.iter().any(|e| matches!(e, Event::Rejected { .. }))
    })
    .await;
    assert!(texts_from(&got, "bob").is_empty());
    assert_eq!(alice.contacts().unwrap()[0].status, ContactStatus::Invited);

    bob.accept(&link, "alice", None).await.unwrap();
    receive_until(&mut alice, |ev| connected(ev, "bob")).await;
    // The invitation is used up.
    let mut carol = agent(&homes.path().join("carol"), &r1.address(), options());
    let r = carol.accept(&link, "alice", None).await;
    assert!(matches!(r, Err(AgentError::InvitationUsed)), "{r:?}");
    // A secured queue refuses the forger.
    assert!(matches!(
        client
            .send(queue.sender_id, None, 0, vec![7; MAX_BODY])
            .await,
        Err(ClientError::Relay(ErrorCode::Auth))
    ));

    assert!(matches!(
        alice.send("nobody", "hi").await,
        Err(AgentError::UnknownContact(_))
    ));
    assert!(matches!(
        bob.accept("sotto:not-an-invitation", "x", None).await,
        Err(AgentError::Invitation(_))
    ));
    assert!(matches!(
        alice.invite(None, Some("bob")).await,
        Err(AgentError::NameTaken(_))
    ));

    client.close().await;
    alice.close().await;
    bob.close().await;
    carol.close().await;
    r1.stop().await;
}

/// A private relay creates queues only for NEWs that carry its create password: without
/// one, or with a wrong one, `invite` fails with an error that says so and how to fix it;
/// with the saved password, contacts on it work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_relay_needs_its_create_password_saved_in_the_profile() {
    let mut private = TestRelay::start_with(|c| c.create_password = "s3cret".into()).await;
    let homes = tempfile::tempdir().unwrap();
    let addr = private.address().to_string();
    let mut alice = agent(&homes.path().join("alice"), &private.address(), options());
    match alice.invite(None, Some("bob")).await {
        Err(
            e @ AgentError::CreateRefused {
                had_password: false,
                ..
            },
        ) => assert!(e.to_string().contains("--create-password"), "{e}"),
        other => panic!("expected CreateRefused, got {other:?}"),
    }
    alice.add_relay_with_password(&addr, Some("wrong")).unwrap();
    assert!(matches!(
        alice.invite(None, Some("bob")).await,
        Err(AgentError::CreateRefused {
            had_password: true,
            ..
        })
    ));
    alice
        .add_relay_with_password(&addr, Some("s3cret"))
        .unwrap();
    // Adding it again without a password keeps the saved one.
    alice.add_relay(&addr).unwrap();
    let link = alice.invite(None, Some("bob")).await.unwrap();

    let mut bob = Agent::create(&homes.path().join("bob"), b"test passphrase", options()).unwrap();
    bob.add_relay_with_password(&addr, Some("s3cret")).unwrap();
    bob.accept(&link, "alice", None).await.unwrap();
    bob.send("alice", "hello from a private relay")
        .await
        .unwrap();
    let got = receive_until(&mut alice, |ev| !texts_from(ev, "bob").is_empty()).await;
    assert_eq!(
        texts_from(&got, "bob"),
        vec!["hello from a private relay".to_string()]
    );
    alice.close().await;
    bob.close().await;
    private.stop().await;
}

//! A queue blocked by its relay's operator (`sotto-relay block`, ERR BLOCKED): the agent says
//! so in words, the recipient is told to rotate, and the rotation away from the blocked
//! queue completes (its DEL, answered BLOCKED, counts as done).

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod agent_support;

use agent_support::*;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::ops::ControlFlow;
use std::time::Duration;

use sotto_client::agent::{AgentError, ContactStatus, Event, ReceiveOptions};

/// Stops `relay`, blocks the queue with recipient id `id` offline, starts it again on its
/// port.
async fn block(relay: &mut TestRelay, id: &[u8; 24]) {
    let port = relay.relay.as_ref().unwrap().local_addr.port();
    relay.stop().await;
    let (store, key) = sotto_relay::abuse::open_offline(relay.dir.path()).unwrap();
    let b = sotto_relay::abuse::block(&store, &key, &URL_SAFE_NO_PAD.encode(id))
        .await
        .unwrap();
    assert!(!b.already);
    assert!(store.close(std::time::Duration::from_secs(10)).await);
    let mut config = relay.config.clone();
    config.listen = format!("127.0.0.1:{port}").parse().unwrap();
    relay.relay = Some(sotto_relay::start(relay.dir.path(), config).await.unwrap());
}

fn warnings(events: &[Event]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Warning { message } => Some(message.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_queue_is_explained_and_rotated_away_from() {
    let mut r1 = TestRelay::start().await;
    let mut r2 = TestRelay::start().await;
    let mut r3 = TestRelay::start().await;
    let homes = tempfile::tempdir().unwrap();
    let mut alice = agent(&homes.path().join("alice"), &r1.address(), options());
    let mut bob = agent(&homes.path().join("bob"), &r2.address(), options());
    connect(&mut alice, &mut bob).await;

    // Alice's queue for Bob (on relay 1) is reported and blocked.
    let old = alice.receive_credentials("bob").unwrap();
    block(&mut r1, old[0].recipient_id.as_bytes()).await;
    // Warnings do not end a receive run: run short ones until it comes.
    let mut got = Vec::new();
    for _ in 0..30 {
        let opts = ReceiveOptions {
            wait: Some(Duration::from_secs(1)),
            ..ReceiveOptions::default()
        };
        alice
            .receive(opts, |e| {
                got.push(e.clone());
                ControlFlow::Continue(())
            })
            .await
            .unwrap();
        if !warnings(&got).is_empty() {
            break;
        }
    }
    let w = warnings(&got).first().copied().unwrap_or_default();
    assert!(
        w.contains("relay operator")
            && w.contains("blocked your queue for `bob`")
            && w.contains("sotto rotate bob"),
        "{w}"
    );

    // The rotation it offers: Bob learns of the new queue and switches to it.
    alice
        .rotate("bob", &r3.address().to_string())
        .await
        .unwrap();
    receive_until(&mut bob, |ev| {
        ev.iter()
            .any(|e| matches!(e, Event::Moved { contact } if contact == "alice"))
    })
    .await;
    bob.send("alice", "after the block").await.unwrap();
    let got = receive_until(&mut alice, |ev| {
        ev.iter()
            .any(|e| matches!(e, Event::Rotated { contact } if contact == "bob"))
            && !texts_from(ev, "bob").is_empty()
    })
    .await;
    assert_eq!(texts_from(&got, "bob"), vec!["after the block".to_owned()]);
    // Deleting the blocked queue (answered BLOCKED) counts as done.
    flush(&mut alice).await;
    let info = alice.contacts().unwrap();
    assert_eq!(info[0].status, ContactStatus::Connected);
    assert_eq!(info[0].receive_relays, vec![r3.address().host_port()]);

    // The sending side: Bob's queue for Alice (on relay 2) is blocked.
    let bobs = bob.receive_credentials("alice").unwrap();
    block(&mut r2, bobs[0].recipient_id.as_bytes()).await;
    let e = alice.send("bob", "refused").await.unwrap_err();
    assert!(
        matches!(&e, AgentError::QueueBlocked(n) if n == "bob"),
        "{e:?}"
    );
    let text = e.to_string();
    assert!(
        text.contains("relay operator blocked `bob`'s queue") && text.contains("stays queued"),
        "{text}"
    );

    alice.close().await;
    bob.close().await;
    for r in [&mut r1, &mut r2, &mut r3] {
        r.stop().await;
    }
}

//! `sotto … --through RELAY` and `sotto relay through`: contact set-up and messages reach
//! the contact's relay through a relay of the sender's choosing (FWD, `docs/protocol.md`
//! § 10a), so that the contact's relay sees that relay instead of the sender.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod agent_support;

use agent_support::TestRelay;
use agent_support::cli::Profile;

fn rfwd_count(relay: &TestRelay) -> u64 {
    relay
        .relay
        .as_ref()
        .unwrap()
        .metrics
        .commands
        .with_label_values(&["RFWD"])
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_up_and_messages_go_through_the_chosen_relay() {
    let alice_relay = TestRelay::start().await;
    let bob_relay = TestRelay::start().await;
    // The relay Bob sends through, on its own loopback address.
    let through = TestRelay::start_with(|c| {
        c.listen = "127.0.0.3:0".parse().unwrap();
        c.host = "127.0.0.3".into();
        c.forwarding.allow_private = true;
    })
    .await;
    let root = tempfile::tempdir().unwrap();
    let alice = Profile::new(root.path(), "alice");
    let bob = Profile::new(root.path(), "bob");
    alice.ok(&["init"]).await;
    bob.ok(&["init"]).await;
    alice
        .ok(&["relay", "add", &alice_relay.address().to_string()])
        .await;
    bob.ok(&["relay", "add", &bob_relay.address().to_string()])
        .await;
    let t = through.address().to_string();
    bob.ok(&["relay", "add", &t]).await;
    assert_eq!(
        bob.ok(&["relay", "through"]).await.trim(),
        "sending directly"
    );
    assert_eq!(
        bob.ok(&["relay", "through", &t]).await.trim(),
        format!("sending through {t}")
    );

    // Bob's SKEY and HELLO to Alice's queue go through the chosen relay.
    let link = alice.ok(&["invite", "--name", "bob"]).await;
    bob.ok(&["accept", link.trim(), "--name", "alice"]).await;
    assert!(rfwd_count(&alice_relay) >= 2, "set-up went directly");
    alice.recv_until_connected("bob").await;
    bob.recv_until_connected("alice").await;

    let before = rfwd_count(&alice_relay);
    bob.ok(&["send", "alice", "through the relay of my choosing"])
        .await;
    assert!(
        alice
            .recv_until(&[], "bob: through the relay of my choosing")
            .await
            .contains("bob: through the relay of my choosing")
    );
    assert_eq!(rfwd_count(&alice_relay), before + 1);

    // Directly again by default; `--through` for one command.
    bob.ok(&["relay", "through", "--off"]).await;
    bob.ok(&["send", "alice", "direct"]).await;
    assert_eq!(rfwd_count(&alice_relay), before + 1);
    bob.ok(&["send", "alice", "once more through", "--through", &t])
        .await;
    assert_eq!(rfwd_count(&alice_relay), before + 2);
    let got = alice.recv_until(&[], "bob: once more through").await;
    assert!(got.contains("bob: direct"), "{got}");
    // The forwarding relay executed nothing itself.
    assert_eq!(rfwd_count(&through), 0);
}

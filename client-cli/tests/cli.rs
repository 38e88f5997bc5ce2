//! The `sotto` binary driven as a person would: two profiles, two relays on loopback, a
//! conversation, the error messages, and `recv` stopped between showing a message and
//! acknowledging it.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod agent_support;

use agent_support::TestRelay;
use agent_support::cli::{Profile, RECV_ATTEMPTS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_through_the_cli() {
    let mut r1 = TestRelay::start().await;
    let mut r2 = TestRelay::start().await;
    let root = tempfile::tempdir().unwrap();
    let alice = Profile::new(root.path(), "alice");
    let bob = Profile::new(root.path(), "bob");
    alice.ok(&["init"]).await;
    bob.ok(&["init"]).await;
    assert!(
        alice
            .fails_in_one_line(&["init"])
            .await
            .contains("already exists")
    );
    let r1a = r1.address().to_string();
    let r2a = r2.address().to_string();
    assert!(
        alice
            .ok(&["relay", "add", &r1a])
            .await
            .contains("(default)")
    );
    bob.ok(&["relay", "add", &r2a]).await;
    assert_eq!(
        alice.ok(&["relay", "list"]).await.trim(),
        format!("{r1a} (default)")
    );

    let link = alice.ok(&["invite", "--name", "bob"]).await;
    let link = link.trim();
    assert!(link.starts_with("sotto:") && !link.contains('\n'));
    assert_eq!(alice.contact_status("bob").await, "invited");
    bob.ok(&["accept", link, "--name", "alice"]).await;
    assert_eq!(bob.contact_status("alice").await, "connecting");

    // Alice's recv completes the set-up (SKEY and READY on Bob's queue).
    for _ in 0..RECV_ATTEMPTS {
        alice.ok(&["recv", "--wait", "10", "--idle", "1"]).await;
        if alice.contact_status("bob").await == "connected" {
            break;
        }
    }
    assert_eq!(alice.contact_status("bob").await, "connected");

    alice.ok(&["send", "bob", "hello bob, it is alice"]).await;
    let got = bob.recv_until(&[], "alice: hello bob, it is alice").await;
    assert_eq!(got.matches("hello bob").count(), 1);
    assert_eq!(bob.contact_status("alice").await, "connected");
    bob.ok(&["send", "alice", "hi alice\nfake: line"]).await;
    let got = alice.recv_until(&["--json"], "hi alice").await;
    let line = got.lines().find(|l| l.contains("hi alice")).unwrap();
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["event"], "message");
    assert_eq!(v["contact"], "bob");
    assert_eq!(v["text"], "hi alice\nfake: line");

    // A text cannot fake a second line in the plain output.
    bob.ok(&["send", "alice", "one\ntwo"]).await;
    let got = alice.recv_until(&[], "one").await;
    assert!(got.contains("bob: one\\ntwo"), "{got:?}");

    // Killed between receipt and ACK (the test hook stops `recv` there): the message comes
    // again and is shown once.
    bob.ok(&["send", "alice", "exactly once please"]).await;
    let mut first = String::new();
    for _ in 0..RECV_ATTEMPTS {
        let out = alice
            .run_env(
                &["recv", "--wait", "10", "--idle", "1"],
                &[("SOTTO_TEST_STOP_BEFORE_ACK", "1")],
            )
            .await;
        first.push_str(&String::from_utf8_lossy(&out.stdout));
        if out.status.code() == Some(3) {
            break;
        }
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(first.matches("exactly once please").count(), 1, "{first:?}");
    bob.ok(&["send", "alice", "and then this"]).await;
    let later = alice.recv_until(&[], "and then this").await;
    assert!(!later.contains("exactly once"), "shown twice: {later:?}");

    // Errors: one line, non-zero exit.
    assert!(
        alice
            .fails_in_one_line(&["send", "carol", "hi"])
            .await
            .contains("unknown contact `carol`")
    );
    assert!(
        bob.fails_in_one_line(&["accept", "sotto:AAAA", "--name", "x"])
            .await
            .contains("malformed invitation")
    );
    assert!(
        bob.fails_in_one_line(&["accept", "https://example.org", "--name", "x"])
            .await
            .contains("malformed invitation")
    );
    let wrong = alice
        .run_env(&["contacts"], &[("SOTTO_PASSPHRASE", "nope")])
        .await;
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong passphrase"));
    let nobody = Profile::new(root.path(), "nobody");
    assert!(
        nobody
            .fails_in_one_line(&["contacts"])
            .await
            .contains("sotto init")
    );

    // A relay address whose key is not the relay's.
    let other_key = TestRelay::start().await;
    let mut forged = other_key.address();
    forged.port = r1.address().port;
    let forged = forged.to_string();
    assert!(
        alice
            .fails_in_one_line(&["invite", "--via", &forged])
            .await
            .contains("wrong relay key")
    );
    // A relay that is not running.
    let mut gone = TestRelay::start().await;
    let gone_addr = gone.address().to_string();
    gone.stop().await;
    assert!(
        alice
            .fails_in_one_line(&["invite", "--via", &gone_addr])
            .await
            .contains("unreachable")
    );
    assert!(
        alice
            .fails_in_one_line(&["relay", "add", "sotto://short@host"])
            .await
            .contains("invalid relay address")
    );

    // Delete: the contact is gone; Bob's sends now fail with a clear line.
    alice.ok(&["delete", "bob"]).await;
    assert!(alice.ok(&["contacts"]).await.trim().is_empty());
    let err = bob
        .fails_in_one_line(&["send", "alice", "are you there?"])
        .await;
    assert!(
        err.contains("`alice`'s queue refuses our messages"),
        "{err}"
    );

    r1.stop().await;
    r2.stop().await;
}

/// `relay add --create-password` saves a private relay's create password (from
/// SOTTO_CREATE_PASSWORD); without it `invite` fails with one line saying how to fix it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_relay_through_the_cli() {
    let mut private = TestRelay::start_with(|c| c.create_password = "s3cret".into()).await;
    let root = tempfile::tempdir().unwrap();
    let alice = Profile::new(root.path(), "alice");
    let addr = private.address().to_string();
    alice.ok(&["init"]).await;
    alice.ok(&["relay", "add", &addr]).await;
    let err = alice.fails_in_one_line(&["invite", "--name", "bob"]).await;
    assert!(
        err.contains("private relay") && err.contains("--create-password"),
        "{err}"
    );
    let out = alice
        .run_env(
            &["relay", "add", &addr, "--create-password"],
            &[("SOTTO_CREATE_PASSWORD", "s3cret")],
        )
        .await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("create password saved"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let link = alice.ok(&["invite", "--name", "bob"]).await;
    assert!(link.contains("sotto:"), "{link}");
    private.stop().await;
}
